/**
 * Child process of bench/api/run.ts: opens one SSE stream per token (read from the
 * JSON file named in argv[2]) against argv[3], in batches, then reports on stdout:
 *   `open <n>` once every stream got its response headers, and
 *   `got <epochMs>` per stream when the first chunk containing argv[4] arrives.
 * Kept out of the server's process so that the server's memory per stream is its own.
 */
import { readFileSync } from "node:fs";
import http from "node:http";

const [tokensFile, baseUrl, marker] = process.argv.slice(2) as [string, string, string];
const tokens = JSON.parse(readFileSync(tokensFile, "utf8")) as string[];
const agent = new http.Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
const now = () => performance.timeOrigin + performance.now();
let opened = 0;
const received: number[] = [];

function open(token: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${baseUrl}/v1/me/events?access_token=${token}`, { agent }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`stream answered ${res.statusCode}`));
      let seen = false;
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        if (!seen && chunk.includes(marker)) {
          seen = true;
          received.push(now());
          if (received.length === tokens.length) {
            process.stdout.write(`got ${JSON.stringify(received)}\n`);
          }
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
process.stdin.on("data", () => {
  process.stdout.write(`got ${JSON.stringify(received)}\n`);
});
