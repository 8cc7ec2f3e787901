/**
 * Claim every charged voucher and settle, for operators' own automation (cron, CI):
 *   TOLLWAY_NODE_URL=http://127.0.0.1:4020 TOLLWAY_ADMIN_TOKEN=... npx ts-node scripts/claim-and-settle.ts
 * (or `npx hardhat run scripts/claim-and-settle.ts`). The same functions as `tollway claim --all` and
 * `tollway settle`; exits non-zero when a channel could not be claimed.
 */
import { claim, settle } from "../node/cli/commands/operator";

async function main() {
  const o = { node: process.env.TOLLWAY_NODE_URL ?? "http://127.0.0.1:4020", token: process.env.TOLLWAY_ADMIN_TOKEN, json: process.env.JSON === "1" };
  const code = await claim({ ...o, all: true });
  await settle(o);
  process.exitCode = code;
}

main().catch((err) => {
  console.error(`claim-and-settle: ${err.shortMessage ?? err.message}`);
  process.exitCode = 1;
});
