/**
 * Shut a service down: claim, settle and refund every channel (same functions as `tollway close-all`):
 *   TOLLWAY_NODE_URL=http://127.0.0.1:4020 TOLLWAY_ADMIN_TOKEN=... npx ts-node scripts/close-channels.ts
 * Safe to re-run after an interruption.
 */
import { closeAll } from "../node/cli/commands/operator";

closeAll({ node: process.env.TOLLWAY_NODE_URL ?? "http://127.0.0.1:4020", token: process.env.TOLLWAY_ADMIN_TOKEN, json: process.env.JSON === "1" })
  .then((code) => (process.exitCode = code))
  .catch((err) => {
    console.error(`close-channels: ${err.shortMessage ?? err.message}`);
    process.exitCode = 1;
  });
