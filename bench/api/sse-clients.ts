/**
 * Child process of bench/api/run.ts: opens one SSE stream per token (read from the
 * JSON file named in argv[2]) against argv[3], in batches of 100, then:
 *   prints `open <n>` once every stream has its response headers;
 *   on stdin `watch <marker>`, prints `got <json epoch-ms list>` once every stream
 *   received a chunk containing the marker (or on `report`, with what arrived),
 *   preceded by `lag {"p99":ms,"max":ms}`: this process's event-loop delay since the
 *   `watch`, so that a run can tell its own client's lateness from the server's.
 * Kept out of the server's process so that the server's memory per stream is its own.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";

const [tokensFile, baseUrl] = process.argv.slice(2) as [string, string];
const tokens = JSON.parse(readFileSync(tokensFile, "utf8")) as string[];
const agent = new http.Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
const now = () => performance.timeOrigin + performance.now();
let opened = 0;
let marker: string | undefined;
let received: number[] = [];
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();
const report = () => {
  const ms = (ns: number) => Math.round(ns / 1e5) / 10;
  const lag = { p99: ms(loopDelay.percentile(99)), max: ms(loopDelay.max) };
  process.stdout.write(`lag ${JSON.stringify(lag)}\ngot ${JSON.stringify(received)}\n`);
};

function open(token: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${baseUrl}/v1/me/events?access_token=${token}`, { agent }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`stream answered ${res.statusCode}`));
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (marker !== undefined && chunk.includes(marker)) {
          received.push(now());
          if (received.length === tokens.length) report();
        }
      });
      opened++;
      resolve();
    });
    req.on("error", reject);
  });
}

for (let i = 0; i < tokens.length; i += 100) {
  await Promise.all(tokens.slice(i, i + 100).map(open));
}
process.stdout.write(`open ${opened}\n`);
createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.startsWith("watch ")) {
    marker = line.slice("watch ".length);
    received = [];
    loopDelay.reset();
  } else if (line === "report") report();
});
