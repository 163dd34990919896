/**
 * Vite build of the two web pages (`index.html`: chat, `ops.html`: operations):
 * plain TypeScript, no framework, bundled into `web/dist/` and served by the API
 * (`src/web-pages.ts`). Run with `npm run -w api build:web`.
 */
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  base: "/",
  logLevel: "warn",
  build: {
    outDir: fileURLToPath(new URL("./dist/", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
    sourcemap: true,
    // Served with a strict CSP (no inline script or style), so nothing is inlined.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    rollupOptions: {
      input: {
        chat: fileURLToPath(new URL("./index.html", import.meta.url)),
        ops: fileURLToPath(new URL("./ops.html", import.meta.url)),
      },
    },
  },
});
