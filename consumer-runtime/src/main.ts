/** Entry of the runtime process (`npm start`); see process.ts. */
import { startRuntimeProcess } from "./process.ts";

startRuntimeProcess().catch((error: Error) => {
  console.error(`chatbus runtime: ${error.message}`);
  process.exit(1);
});
