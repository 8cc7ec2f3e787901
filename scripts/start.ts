/**
 * `npm start`: the demo on an embedded local chain. Prints the URLs, writes .tollway/demo.json,
 * stops everything cleanly on Ctrl-C.
 */
import { startDemo } from "../node/web/demo";

async function main() {
  const port = Number(process.env.PORT ?? 4020);
  console.log("Starting a local chain, deploying Tollway, starting the publisher's node…");
  const dir = process.env.TOLLWAY_DEMO_DIR; // default: .tollway/ in the repository
  const demo = await startDemo({
    port,
    ...(dir ? { infoFile: `${dir}/demo.json`, storePath: `${dir}/store`, webDir: `${dir}/web` } : {}),
  });
  console.log(`
Tollway demo is running (local chain, test USDC; nothing here touches a real network).

  Reader page          ${demo.urls.reader}
  Operator dashboard   ${demo.urls.dashboard}#token=${demo.adminToken}
  Payee node           ${demo.urls.payee}   (x402 batch-settlement, eip155:31337)
  Chain RPC            ${demo.urls.rpc}

  Deployment and demo wallet: ${demo.infoFile}
  Try the CLI:  TOLLWAY_PAYER_KEY=<key> npx tollway pay --rpc ${demo.urls.rpc} ${demo.urls.payee}/articles/brief/heatwave

Press Ctrl-C to stop (outstanding vouchers are claimed and settled first).`);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    console.log("\nStopping: claiming and settling, then shutting down the chain…");
    await demo.stop();
    console.log("Stopped.");
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main().catch((err) => {
  console.error(`tollway: ${err?.shortMessage ?? err?.message ?? err}`);
  process.exit(1);
});
