/**
 * The web pages: the chat page at `/` and the operations page at `/ops`, built by
 * Vite from `api/web/` into `api/web/dist/` (`npm run -w api build:web`). The two
 * HTML files are read once at start; the hashed bundles under `/assets/` are served
 * by @fastify/static with a long cache life. Pages carry a strict Content Security
 * Policy: same-origin scripts, styles and connections only (no CDN, nothing inline).
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import fastifyStatic from "@fastify/static";
import type { FastifyInstance } from "fastify";

/** Options of the `webPages` plugin. */
export interface WebPagesOptions {
  /** Folder of the built pages; default `api/web/dist`. */
  root?: string;
}

/** Where `npm run -w api build:web` writes the pages (same from `src/` and `dist/`). */
export const defaultWebRoot = fileURLToPath(new URL("../web/dist/", import.meta.url));

const contentSecurityPolicy = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join("; ");

const notBuilt = (root: string) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chatbus: pages not built</title></head>
<body><h1>The web pages are not built</h1>
<p>No pages in <code>${root.replace(/[<>&]/g, "")}</code>. Run <code>npm run -w api build:web</code>, then reload.</p>
</body></html>`;

/**
 * Serves the pages. When they are not built, `/` and `/ops` answer 503 with a page
 * that says how to build them, and the API works as before.
 */
export async function webPages(app: FastifyInstance, options: WebPagesOptions = {}): Promise<void> {
  const root = options.root ?? defaultWebRoot;
  const pages = { "/": "index.html", "/ops": "ops.html" } as const;
  const built = existsSync(join(root, "index.html")) && existsSync(join(root, "ops.html"));
  for (const [url, file] of Object.entries(pages)) {
    const html = built ? readFileSync(join(root, file), "utf8") : notBuilt(root);
    app.get(url, { schema: { hide: true } }, async (_request, reply) =>
      reply
        .status(built ? 200 : 503)
        .type("text/html; charset=utf-8")
        .header("content-security-policy", contentSecurityPolicy)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-cache")
        .send(html),
    );
  }
  if (!built) {
    app.log.warn({ root }, "web pages are not built: run `npm run -w api build:web`");
    return;
  }
  await app.register(fastifyStatic, {
    root: join(root, "assets"),
    prefix: "/assets/",
    decorateReply: false,
    index: false,
    // File names carry a content hash: a changed file is a new URL.
    immutable: true,
    maxAge: "365d",
  });
}
