/**
 * Deploys Tollway's escrow and deposit collectors and writes deployments/<chainId>.json.
 * A thin wrapper over node/chain/deploy.ts: it only turns the environment into clients and options.
 *
 * Usage:
 *   npx hardhat run scripts/deploy.ts --network localhost        # inside Hardhat (the --network flag decides)
 *   npx ts-node scripts/deploy.ts                                # standalone viem over TOLLWAY_RPC_URL
 *   CANONICAL=1 TOLLWAY_TEST_TOKEN=1 npx ts-node scripts/deploy.ts --json
 *
 * Environment:
 *   TOLLWAY_RPC_URL          JSON-RPC endpoint of a standalone run (default http://127.0.0.1:8545)
 *   TOLLWAY_DEPLOYER_KEY     0x-prefixed private key of the deployer (never printed); without it the node's
 *                            first unlocked account deploys (a local Hardhat/Anvil node has some)
 *   CANONICAL=1              place the escrow and the ERC-3009 collector at the canonical x402 addresses and
 *                            install Multicall3 (local chains only)
 *   TOLLWAY_TEST_TOKEN=1     also deploy TestUSDC
 *   TOLLWAY_DEPLOYMENTS_DIR  where <chainId>.json goes (default <repo>/deployments)
 * Flags: --json prints the deployment as JSON on stdout (progress always goes to stderr).
 */
import path from "node:path";
import {
  type Account,
  type Address,
  type EIP1193Provider,
  type Transport,
  createPublicClient,
  createWalletClient,
  custom,
  defineChain,
  http,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { type Deployment, deployTollway, writeDeployment } from "../node/chain/deploy";
import { TollwayError } from "../node/protocol/errors";

/** A failure the script reports as one line and exit code 1. */
class ExitError extends Error {
  override name = "ExitError";
  constructor(
    readonly shortMessage: string,
    readonly exitCode = 1,
  ) {
    super(shortMessage);
  }
}

const DEFAULT_RPC_URL = "http://127.0.0.1:8545";

/** The transport and a human label of where it points: Hardhat's provider under `hardhat run`, else HTTP. */
async function resolveTransport(): Promise<{ transport: Transport; label: string; ephemeral: boolean; url?: string }> {
  // `hardhat run` preloads hardhat/register, which puts `hre` on the global object (and sets HARDHAT_NETWORK when
  // --network is given). Loading Hardhat outside it would silently start a throwaway in-process chain.
  if ("hre" in globalThis || process.env.HARDHAT_NETWORK !== undefined) {
    const hre = (await import("hardhat")).default;
    const name = hre.network.name;
    const url = "url" in hre.network.config ? hre.network.config.url : undefined;
    return {
      transport: custom(hre.network.provider as unknown as EIP1193Provider),
      label: url ? `hardhat network "${name}" (${url})` : `hardhat network "${name}" (in-process)`,
      ephemeral: name === "hardhat",
      url,
    };
  }
  const url = process.env.TOLLWAY_RPC_URL ?? DEFAULT_RPC_URL;
  return { transport: http(url), label: url, ephemeral: false, url };
}

/** The deployer: TOLLWAY_DEPLOYER_KEY if set, else the node's first unlocked account. */
async function resolveAccount(unlockedAccounts: () => Promise<readonly Address[]>): Promise<Account | Address> {
  const key = process.env.TOLLWAY_DEPLOYER_KEY;
  if (key !== undefined && key !== "") {
    if (!/^0x[0-9a-fA-F]{64}$/.test(key)) {
      throw new ExitError("TOLLWAY_DEPLOYER_KEY must be a 0x-prefixed 32-byte hex private key.");
    }
    return privateKeyToAccount(key as `0x${string}`);
  }
  const accounts = await unlockedAccounts();
  const first = accounts[0];
  if (!first) {
    throw new ExitError("Set TOLLWAY_DEPLOYER_KEY: the node has no unlocked account to deploy from.");
  }
  return first;
}

function printHuman(deployment: Deployment, file: string | undefined): void {
  const rows: [string, string][] = [
    ["chain id", String(deployment.chainId)],
    ["escrow (BatchSettlement)", deployment.escrow],
    ["ERC-3009 deposit collector", deployment.erc3009Collector],
    ["permit deposit collector", deployment.permitCollector],
  ];
  if (deployment.token) rows.push(["test token (TestUSDC)", deployment.token]);
  if (deployment.multicall3) rows.push(["Multicall3", deployment.multicall3]);
  rows.push(
    ["canonical addresses", deployment.canonical ? "yes" : "no"],
    ["deployer", deployment.deployer],
    ["block", `${deployment.blockNumber} (${new Date(deployment.deployedAt * 1000).toISOString()})`],
  );
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) console.log(`${k.padEnd(width)}  ${v}`);
  console.log(file ? `\nwritten to ${file}` : "\nnot written: the in-process network ends with this script");
}

async function main(): Promise<void> {
  const json = process.argv.includes("--json");
  const canonical = process.env.CANONICAL === "1" || process.env.CANONICAL === "true";
  const deployTestToken = process.env.TOLLWAY_TEST_TOKEN === "1" || process.env.TOLLWAY_TEST_TOKEN === "true";
  const dir = process.env.TOLLWAY_DEPLOYMENTS_DIR ?? path.join(__dirname, "..", "deployments");

  const { transport, label, ephemeral, url } = await resolveTransport();
  const publicClient = createPublicClient({ transport });
  const chainId = await publicClient.getChainId().catch((cause: unknown) => {
    throw new ExitError(`Cannot reach ${label}: ${(cause as { shortMessage?: string }).shortMessage ?? String(cause)}`);
  });
  const chain = defineChain({
    id: chainId,
    name: `chain ${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: url ? [url] : [] } },
  });
  const account = await resolveAccount(() => createWalletClient({ chain, transport }).getAddresses());
  const walletClient = createWalletClient({ account, chain, transport });

  console.error(`deploying to ${label}, chain ${chainId}${canonical ? ", canonical addresses" : ""}`);
  const deployment = await deployTollway({
    walletClient,
    publicClient,
    canonical,
    deployTestToken,
    onProgress: (message) => console.error(`  ${message}`),
  });
  const file = ephemeral ? undefined : writeDeployment(dir, deployment);

  if (json) {
    console.log(JSON.stringify({ ...deployment, blockNumber: deployment.blockNumber.toString(), file: file ?? null }, null, 2));
  } else {
    printHuman(deployment, file);
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    if (error instanceof ExitError) {
      console.error(`error: ${error.shortMessage}`);
      process.exit(error.exitCode);
    }
    if (error instanceof TollwayError) {
      console.error(`error: ${error.shortMessage}`);
      for (const line of error.metaMessages) console.error(`  ${line}`);
      process.exit(1);
    }
    // viem errors carry a shortMessage; anything else is a bug worth its stack.
    const short = (error as { shortMessage?: unknown }).shortMessage;
    console.error(typeof short === "string" ? `error: ${short}` : error);
    process.exit(1);
  },
);
