/**
 * The API bench's load generator, in its own process so that autocannon does not
 * share the served process's event loop (it did: every request the bench made cost
 * the API's thread too, the trivial route's as much as ours).
 *
 *   tsx bench/api/cannon.ts '<json>'   json: autocannon options plus `paths` (optional),
 *                                      request paths used in turn, one per request
 *
 * Prints autocannon's result as one JSON line on stdout.
 */
import autocannon from "autocannon";

const { paths, ...options } = JSON.parse(process.argv[2]!) as autocannon.Options & { paths?: string[] };
let next = 0;
const result = await autocannon(
  paths === undefined
    ? options
    : {
        ...options,
        requests: [
          {
            ...(options.method === undefined ? {} : { method: options.method }),
            ...(options.headers === undefined ? {} : { headers: options.headers }),
            ...(options.body === undefined ? {} : { body: options.body }),
            setupRequest: (request) => ({ ...request, path: paths[next++ % paths.length] }),
          },
        ],
      },
);
console.log(JSON.stringify(result));
