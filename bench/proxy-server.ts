/** Tollway in reverse-proxy mode for the benchmark (startPayeeNode with a proxy route). Prints READY <port>. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { parseNodeConfig } from "../node/payee/config";
import { startPayeeNode } from "../node/payee/server";

async function main() {
  const cfg = JSON.parse(process.env.TOLLWAY_BENCH ?? "{}") as { rpcUrl: string; escrow: string; erc3009Collector: string; token: string; upstream: string; key: `0x${string}` };
  const node = await startPayeeNode(
    parseNodeConfig({
      rpcUrl: cfg.rpcUrl, escrow: cfg.escrow, erc3009Collector: cfg.erc3009Collector, asset: { address: cfg.token }, listen: { port: 0 },
      storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-proxy-bench-")), claims: { onShutdown: false },
      proxy: { "GET /api/*": { upstream: cfg.upstream, price: "$0.001" } }, logLevel: "silent",
    }, {}),
    { key: cfg.key, logger: pino({ level: "silent" }) },
  );
  process.stdout.write(`READY ${new URL(node.url).port}\n`);
  process.on("SIGTERM", () => void node.stop().then(() => process.exit(0)));
}
void main();
