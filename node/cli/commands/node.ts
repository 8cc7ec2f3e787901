/** `tollway deploy` and `tollway serve`: thin fronts over node/chain/deploy and node/payee/server. */
import path from "node:path";
import { privateKeyToAccount } from "viem/accounts";
import { createChainClients } from "../../chain/clients";
import { deployTollway, writeDeployment } from "../../chain/deploy";
import { loadNodeConfig, loadNodeKey } from "../../payee/config";
import { startPayeeNode } from "../../payee/server";
import { readKey } from "../payerContext";

export async function deploy(
  o: { rpc: string; chainId: string; keyFile?: string; canonical?: boolean; testToken?: boolean; out?: string; json?: boolean },
  out: NodeJS.WritableStream = process.stdout,
): Promise<number> {
  const account = privateKeyToAccount(readKey(o.keyFile, "TOLLWAY_DEPLOYER_KEY"));
  const { publicClient, walletClient } = createChainClients({ rpcUrl: o.rpc, chainId: Number(o.chainId) }, account);
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
  const node = await startPayeeNode(config, { key: loadNodeKey(config) });
  process.stderr.write(`tollway: serving on ${node.url} (Ctrl-C to stop)\n`);
  await new Promise<void>((resolve) => {
    const stop = () => void node.stop().then(resolve);
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
  });
  return 0;
}
