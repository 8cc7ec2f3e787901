/** `tollway deploy` and `tollway serve`: thin fronts over node/chain/deploy and node/payee/server. */
import path from "node:path";
import { privateKeyToAccount } from "viem/accounts";
import { createChainClients } from "../../chain/clients";
import { deployTollway, writeDeployment } from "../../chain/deploy";
import { activeEnvOverrides, loadNodeConfig, loadNodeKey } from "../../payee/config";
import type { ShutdownReport } from "../../payee/claims";
import { startPayeeNode } from "../../payee/server";
import { readKey } from "../payerContext";

export async function deploy(
  o: { rpc: string; chainId: number; keyFile?: string; canonical?: boolean; testToken?: boolean; out?: string; json?: boolean },
  out: NodeJS.WritableStream = process.stdout,
): Promise<number> {
  const account = privateKeyToAccount(readKey(o.keyFile, "TOLLWAY_DEPLOYER_KEY"));
  const { publicClient, walletClient } = createChainClients({ rpcUrl: o.rpc, chainId: o.chainId }, account);
  const deployment = await deployTollway({
    walletClient: walletClient!,
    publicClient: publicClient as never,
    canonical: o.canonical,
    deployTestToken: o.testToken,
    onProgress: o.json ? undefined : (m) => process.stderr.write(`${m}\n`),
  });
  const file = writeDeployment(o.out ?? path.join(process.cwd(), "deployments"), deployment);
  if (o.json) out.write(JSON.stringify({ ...deployment, blockNumber: deployment.blockNumber.toString(), file }) + "\n");
  else out.write(`escrow            ${deployment.escrow}\nerc3009Collector  ${deployment.erc3009Collector}\npermitCollector   ${deployment.permitCollector}\n${deployment.token ? `token             ${deployment.token}\n` : ""}wrote ${file}\n`);
  return 0;
}

export async function serve(o: { config: string }): Promise<number> {
  const config = loadNodeConfig(o.config);
  const key = loadNodeKey(config);
  // TOLLWAY_RPC_URL / TOLLWAY_CHAIN_ID are also the payer commands' defaults: say when they retarget the node.
  const overrides = activeEnvOverrides();
  if (overrides.length) process.stderr.write(`tollway: the environment overrides ${o.config}: ${overrides.join(", ")}\n`);
  // Signals are taken from the start: one that arrives while the node starts (a first chain poll can take
  // a while on a dead RPC) stops it as soon as it is up, store closed. A second one exits at once.
  let signals = 0;
  let onSignal = () => undefined as void;
  const handler = (signal: NodeJS.Signals) => {
    if (++signals > 1) {
      process.stderr.write("tollway: second signal, exiting now (charges already on disk are kept)\n");
      process.exit(signal === "SIGINT" ? 130 : 143);
    }
    process.stderr.write("tollway: stopping (requests in flight finish, outstanding vouchers are claimed)…\n");
    onSignal();
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
  try {
    process.stderr.write(`tollway: starting (checks the chain, opens the store)\n`);
    const node = await startPayeeNode(config, { key });
    process.stderr.write(`tollway: serving on ${node.url} (Ctrl-C to stop); eip155:${config.chainId} via ${rpcHost(config.rpcUrl)}, store ${path.resolve(config.storePath)}\n`);
    const left = await new Promise<ShutdownReport>((resolve, reject) => {
      onSignal = () => void node.stop().then(resolve, reject);
      if (signals > 0) onSignal();
    });
    if (left.unclaimed > 0 || left.error) {
      // Charged but unclaimed vouchers are still in the store: a payer's withdrawal can take them once the
      // node is gone. Not a clean stop, whatever else went well.
      const what = [left.unclaimed > 0 ? `${left.unclaimed} channel(s) could not be claimed` : "", left.error ?? ""].filter(Boolean).join("; ");
      process.stderr.write(`tollway: stopped, but the shutdown claim is incomplete: ${what}. The vouchers are in the store: run \`tollway claim --all\` once the chain is reachable.\n`);
      return 1;
    }
    process.stderr.write(left.skipped ? "tollway: stopped (claims.onShutdown is off: nothing was claimed)\n" : "tollway: stopped; outstanding vouchers claimed and settled\n");
    return 0;
  } finally {
    process.off("SIGINT", handler);
    process.off("SIGTERM", handler);
  }
}

/** The RPC's host only: the rest of the URL often carries the provider's API key. */
function rpcHost(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return "(unparsable RPC URL)";
  }
}
