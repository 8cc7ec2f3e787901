/**
 * Deploys Tollway's escrow and deposit collectors with plain viem, against any JSON-RPC endpoint (a node on
 * http://127.0.0.1:8545, a testnet, or Hardhat's in-process network), and records the result in
 * deployments/<chainId>.json. On a local development chain it can also place the contracts at the canonical
 * x402 addresses that stock x402 clients hard-code, and install Multicall3 for the stock facilitator.
 */
import fs from "node:fs";
import path from "node:path";
import {
  type Account,
  type Address,
  type Chain,
  type Hash,
  type Hex,
  type PublicClient,
  type TransactionReceipt,
  type Transport,
  type WalletClient,
  createTestClient,
  custom,
  getAddress,
  isAddress,
  multicall3Abi,
  parseAbi,
} from "viem";
import { CANONICAL_ADDRESSES } from "../protocol/typedData";
import { ChainSetupError, type TollwayContractName, loadArtifact } from "./artifacts";

/** Where Multicall3 lives on every chain that has it (and where the stock x402 facilitator looks for it). */
export const MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11" as const satisfies Address;

/** viem's `multicall3Abi` covers only what its multicall action uses; this is the probe run after installing. */
const multicall3GetChainIdAbi = parseAbi(["function getChainId() view returns (uint256 chainid)"]);

// -------------------------------------------------------------------------------------------------
// Errors
// -------------------------------------------------------------------------------------------------

/** An option of `deployTollway` is unknown or inconsistent with another. */
export class InvalidDeployOptionError extends ChainSetupError {
  override name = "InvalidDeployOptionError";
  readonly option: string;
  constructor({ option, reason, hint }: { option: string; reason: string; hint?: string }) {
    super("INVALID_DEPLOY_OPTION", `deployTollway: ${reason}`, { metaMessages: hint ? [hint] : [] });
    this.option = option;
  }
}

/** `canonical: true` (or Multicall3 installation) asked of a chain that cannot rewrite code at an address. */
export class CanonicalPlacementUnsupportedError extends ChainSetupError {
  override name = "CanonicalPlacementUnsupportedError";
  readonly chainId: number;
  readonly clientVersion: string | undefined;
  constructor({ chainId, clientVersion, cause }: { chainId: number; clientVersion?: string; cause?: unknown }) {
    super(
      "CANONICAL_PLACEMENT_UNSUPPORTED",
      `Cannot place contracts at fixed addresses on chain ${chainId}: only a local Hardhat or Anvil chain can.`,
      {
        metaMessages: [
          `Node reports: ${clientVersion ?? "(web3_clientVersion unavailable)"}`,
          "Deploy without `canonical` on a real network, or pass a `testClient` for a local chain.",
        ],
        cause,
      },
    );
    this.chainId = chainId;
    this.clientVersion = clientVersion;
  }
}

/** The wallet client is bound to another chain than the one the public client talks to. */
export class ChainMismatchError extends ChainSetupError {
  override name = "ChainMismatchError";
  readonly walletChainId: number;
  readonly rpcChainId: number;
  constructor({ walletChainId, rpcChainId }: { walletChainId: number; rpcChainId: number }) {
    super("CHAIN_MISMATCH", `The wallet client is on chain ${walletChainId} but the RPC serves chain ${rpcChainId}.`);
    this.walletChainId = walletChainId;
    this.rpcChainId = rpcChainId;
  }
}

/** A deployment or setup transaction reverted, or code did not land where expected. */
export class DeploymentFailedError extends ChainSetupError {
  override name = "DeploymentFailedError";
  readonly step: string;
  readonly transactionHash: Hash | undefined;
  constructor({ step, transactionHash, reason }: { step: string; transactionHash?: Hash; reason: string }) {
    super("DEPLOYMENT_FAILED", `Deployment step "${step}" failed: ${reason}.`, {
      metaMessages: transactionHash ? [`Transaction: ${transactionHash}`] : [],
    });
    this.step = step;
    this.transactionHash = transactionHash;
  }
}

/** viem's Multicall3 creation code could not be found in the installed viem package. */
export class Multicall3BytecodeUnavailableError extends ChainSetupError {
  override name = "Multicall3BytecodeUnavailableError";
  constructor({ cause }: { cause?: unknown } = {}) {
    super("MULTICALL3_BYTECODE_UNAVAILABLE", "Multicall3 creation code not found in the installed viem package.", {
      metaMessages: ["Expected `multicall3Bytecode` in viem/_cjs/constants/contracts.js (viem 2.x)."],
      cause,
    });
  }
}

/** No deployments/<chainId>.json in the given folder. */
export class DeploymentNotFoundError extends ChainSetupError {
  override name = "DeploymentNotFoundError";
  readonly chainId: number;
  readonly path: string;
  constructor({ chainId, path: file, cause }: { chainId: number; path: string; cause?: unknown }) {
    super("DEPLOYMENT_NOT_FOUND", `No deployment recorded for chain ${chainId}: run scripts/deploy.ts first.`, {
      metaMessages: [`Looked for: ${file}`],
      cause,
    });
    this.chainId = chainId;
    this.path = file;
  }
}

/** A deployments file exists but does not hold a valid deployment. */
export class InvalidDeploymentFileError extends ChainSetupError {
  override name = "InvalidDeploymentFileError";
  readonly path: string;
  constructor({ path: file, reason, cause }: { path: string; reason: string; cause?: unknown }) {
    super("INVALID_DEPLOYMENT_FILE", `Invalid deployment file: ${reason}.`, { metaMessages: [`File: ${file}`], cause });
    this.path = file;
  }
}

export type DeployTollwayErrorType =
  | InvalidDeployOptionError
  | CanonicalPlacementUnsupportedError
  | ChainMismatchError
  | DeploymentFailedError
  | Multicall3BytecodeUnavailableError
  | ChainSetupError;

// -------------------------------------------------------------------------------------------------
// deployTollway
// -------------------------------------------------------------------------------------------------

/** Addresses and provenance of one Tollway deployment. */
export type Deployment = {
  chainId: number;
  /** BatchSettlement (at CANONICAL_ADDRESSES.batchSettlement when `canonical`). */
  escrow: Address;
  /** ERC3009DepositCollector (at CANONICAL_ADDRESSES.erc3009DepositCollector when `canonical`). */
  erc3009Collector: Address;
  /** PermitDepositCollector (always at its deployed address; it has no canonical slot). */
  permitCollector: Address;
  /** TestUSDC, when one was deployed. */
  token?: Address;
  /** Multicall3, when present on the chain after deployment. */
  multicall3?: Address;
  /** Whether the escrow and ERC-3009 collector sit at the canonical x402 addresses. */
  canonical: boolean;
  deployer: Address;
  /** Block of the escrow's deployment transaction: where event scans start. */
  blockNumber: bigint;
  /** Timestamp (unix seconds) of that block. */
  deployedAt: number;
};

/** Anything that can overwrite an account's code (a viem TestClient in hardhat or anvil mode). */
export type SetCodeClient = { setCode: (args: { address: Address; bytecode: Hex }) => Promise<void> };

export type DeployTollwayParameters = {
  /** Sends the deployment transactions (its account pays). */
  walletClient: WalletClient<Transport, Chain | undefined, Account>;
  /** Reads code, receipts and blocks on the same chain. */
  publicClient: PublicClient;
  /**
   * Place the escrow and the ERC-3009 collector at CANONICAL_ADDRESSES (local Hardhat/Anvil chains only).
   * Re-placing over an earlier canonical deployment keeps that deployment's storage; restart the chain for a clean slate.
   */
  canonical?: boolean;
  /** Overwrites code for canonical placement; by default a test client on the public client's transport. */
  testClient?: SetCodeClient;
  /** Install Multicall3 at its usual address when absent (local chains only). Default: `canonical`. */
  installMulticall3?: boolean;
  /** Deploy TestUSDC as well (implied by `mintTestToken`). */
  deployTestToken?: boolean;
  /** Mint TestUSDC to these addresses after deploying it. */
  mintTestToken?: { to: readonly Address[]; amount: bigint } | undefined;
  /** Hardhat's artifacts folder (default `<repo root>/artifacts`). */
  artifactsDir?: string;
  /** Progress lines for long runs (one per step). */
  onProgress?: (message: string) => void;
};
export type DeployTollwayReturnType = Deployment;

const KNOWN_OPTIONS = [
  "walletClient",
  "publicClient",
  "canonical",
  "testClient",
  "installMulticall3",
  "deployTestToken",
  "mintTestToken",
  "artifactsDir",
  "onProgress",
] as const satisfies readonly (keyof DeployTollwayParameters)[];

/** Levenshtein distance, for "did you mean" hints on misspelt options. */
function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0];
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j];
      prev[j] = Math.min(prev[j] + 1, prev[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length];
}

function validateOptions(parameters: DeployTollwayParameters): void {
  for (const key of Object.keys(parameters)) {
    if ((KNOWN_OPTIONS as readonly string[]).includes(key)) continue;
    const best = [...KNOWN_OPTIONS].sort(
      (x, y) => editDistance(key.toLowerCase(), x.toLowerCase()) - editDistance(key.toLowerCase(), y.toLowerCase()),
    )[0];
    const close = editDistance(key.toLowerCase(), best.toLowerCase()) <= 3;
    throw new InvalidDeployOptionError({
      option: key,
      reason: `unknown option "${key}".`,
      hint: close ? `Did you mean "${best}"?` : `Known options: ${KNOWN_OPTIONS.join(", ")}.`,
    });
  }
  if (parameters.mintTestToken && parameters.deployTestToken === false) {
    throw new InvalidDeployOptionError({
      option: "mintTestToken",
      reason: "mintTestToken needs the test token, but deployTestToken is false.",
    });
  }
  if (parameters.mintTestToken && parameters.mintTestToken.amount <= 0n) {
    throw new InvalidDeployOptionError({ option: "mintTestToken", reason: "mintTestToken.amount must be positive." });
  }
}

/** Builds a code-overwriting client for a local chain, or explains why the chain has none. */
async function localSetCodeClient(publicClient: PublicClient, chainId: number): Promise<SetCodeClient> {
  const clientVersion = await publicClient
    .request({ method: "web3_clientVersion" })
    .catch((cause: unknown) => {
      throw new CanonicalPlacementUnsupportedError({ chainId, cause });
    });
  const mode = /hardhat/i.test(clientVersion) ? "hardhat" : /anvil/i.test(clientVersion) ? "anvil" : undefined;
  if (mode === undefined) throw new CanonicalPlacementUnsupportedError({ chainId, clientVersion });
  return createTestClient({
    mode,
    chain: publicClient.chain,
    transport: custom({ request: (args) => publicClient.request(args as never) }),
  });
}

/** Multicall3's creation code as shipped inside viem (used by its deployless multicall; not a public export). */
function multicall3CreationCode(): Hex {
  try {
    const viemDir = path.dirname(require.resolve("viem/package.json"));
    const constants = require(path.join(viemDir, "_cjs", "constants", "contracts.js")) as { multicall3Bytecode?: unknown };
    const code = constants.multicall3Bytecode;
    if (typeof code === "string" && /^0x[0-9a-fA-F]+$/.test(code)) return code as Hex;
  } catch (cause) {
    throw new Multicall3BytecodeUnavailableError({ cause });
  }
  throw new Multicall3BytecodeUnavailableError();
}

type Context = {
  walletClient: WalletClient<Transport, Chain | undefined, Account>;
  publicClient: PublicClient;
  artifactsDir: string | undefined;
  progress: (message: string) => void;
};

/** Waits for a transaction and insists it succeeded. */
async function confirm(ctx: Context, step: string, hash: Hash): Promise<TransactionReceipt> {
  const receipt = await ctx.publicClient.waitForTransactionReceipt({ hash });
  if (receipt.status !== "success") throw new DeploymentFailedError({ step, transactionHash: hash, reason: "reverted" });
  return receipt;
}

/** Sends a creation transaction and returns the new contract's address and receipt. */
async function deployCode(
  ctx: Context,
  step: string,
  abi: ReturnType<typeof loadArtifact>["abi"],
  bytecode: Hex,
  args: readonly unknown[],
): Promise<{ address: Address; receipt: TransactionReceipt }> {
  const { walletClient } = ctx;
  const hash = await walletClient.deployContract({
    abi,
    bytecode,
    args,
    account: walletClient.account,
    chain: walletClient.chain ?? null,
  });
  const receipt = await confirm(ctx, step, hash);
  if (!receipt.contractAddress) {
    throw new DeploymentFailedError({ step, transactionHash: hash, reason: "no contract address in the receipt" });
  }
  const address = getAddress(receipt.contractAddress);
  ctx.progress(`${step}: ${address} (block ${receipt.blockNumber}, gas ${receipt.gasUsed})`);
  return { address, receipt };
}

async function deployArtifact(ctx: Context, name: TollwayContractName, args: readonly unknown[] = []) {
  const { abi, bytecode } = loadArtifact(name, { artifactsDir: ctx.artifactsDir });
  return deployCode(ctx, `deploy ${name}`, abi, bytecode, args);
}

/** Copies the runtime code of `from` to `to` and checks it arrived. Storage is not copied. */
async function copyCode(ctx: Context, setCodeClient: SetCodeClient, step: string, from: Address, to: Address) {
  const code = await ctx.publicClient.getCode({ address: from });
  if (!code || code === "0x") throw new DeploymentFailedError({ step, reason: `no code at ${from}` });
  await setCodeClient.setCode({ address: to, bytecode: code });
  const placed = await ctx.publicClient.getCode({ address: to });
  if (placed?.toLowerCase() !== code.toLowerCase()) {
    throw new DeploymentFailedError({ step, reason: `code at ${to} differs after setCode` });
  }
  ctx.progress(`${step}: ${from} -> ${to}`);
}

/** Installs Multicall3 at its usual address unless code is already there. */
async function ensureMulticall3(ctx: Context, setCodeClient: SetCodeClient, chainId: number): Promise<Address> {
  const existing = await ctx.publicClient.getCode({ address: MULTICALL3_ADDRESS });
  if (existing && existing !== "0x") {
    ctx.progress(`Multicall3 already at ${MULTICALL3_ADDRESS}`);
    return MULTICALL3_ADDRESS;
  }
  const { address } = await deployCode(ctx, "deploy Multicall3", multicall3Abi, multicall3CreationCode(), []);
  await copyCode(ctx, setCodeClient, "place Multicall3", address, MULTICALL3_ADDRESS);
  const reportedChainId = await ctx.publicClient.readContract({
    address: MULTICALL3_ADDRESS,
    abi: multicall3GetChainIdAbi,
    functionName: "getChainId",
  });
  if (reportedChainId !== BigInt(chainId)) {
    throw new DeploymentFailedError({ step: "place Multicall3", reason: `getChainId() returned ${reportedChainId}` });
  }
  return MULTICALL3_ADDRESS;
}

/**
 * Deploys BatchSettlement, ERC3009DepositCollector and PermitDepositCollector (and optionally TestUSDC).
 *
 * With `canonical: true` (local Hardhat/Anvil chains only) the escrow's runtime code is copied to
 * `CANONICAL_ADDRESSES.batchSettlement`, the ERC-3009 collector is constructed with that address and copied to
 * `CANONICAL_ADDRESSES.erc3009DepositCollector`, the permit collector is constructed with it too (and stays where
 * it was deployed), and Multicall3 is installed when absent. The contracts hold no constructor-written storage,
 * so copying runtime code is enough; immutables travel inside it.
 *
 * @param parameters See {@link DeployTollwayParameters}.
 * @returns The {@link Deployment}: chain id, final addresses, deployment block and its timestamp.
 * @throws {CanonicalPlacementUnsupportedError} `canonical` on a chain that cannot overwrite code.
 * @throws {DeploymentFailedError} a transaction reverted or code did not land.
 * @throws {ArtifactNotFoundError} the contracts are not compiled.
 * @example
 * const publicClient = createPublicClient({ transport: http("http://127.0.0.1:8545") });
 * const walletClient = createWalletClient({ account: privateKeyToAccount(key), chain, transport: http(url) });
 * const deployment = await deployTollway({ walletClient, publicClient, canonical: true, deployTestToken: true });
 * writeDeployment("deployments", deployment);
 */
export async function deployTollway(parameters: DeployTollwayParameters): Promise<DeployTollwayReturnType> {
  validateOptions(parameters);
  const { walletClient, publicClient, canonical = false, deployTestToken = false, mintTestToken } = parameters;
  const installMulticall3 = parameters.installMulticall3 ?? canonical;
  const ctx: Context = {
    walletClient,
    publicClient,
    artifactsDir: parameters.artifactsDir,
    progress: parameters.onProgress ?? (() => {}),
  };

  const chainId = await publicClient.getChainId();
  if (walletClient.chain && walletClient.chain.id !== chainId) {
    throw new ChainMismatchError({ walletChainId: walletClient.chain.id, rpcChainId: chainId });
  }
  // Fail before spending gas if code cannot be placed.
  const setCodeClient =
    canonical || installMulticall3
      ? (parameters.testClient ?? (await localSetCodeClient(publicClient, chainId)))
      : undefined;

  const escrowDeployed = await deployArtifact(ctx, "BatchSettlement");
  let escrow = escrowDeployed.address;
  if (canonical && setCodeClient) {
    escrow = getAddress(CANONICAL_ADDRESSES.batchSettlement);
    await copyCode(ctx, setCodeClient, "place BatchSettlement", escrowDeployed.address, escrow);
  }

  // Collectors keep the escrow address in an immutable: construct them with its final address.
  let { address: erc3009Collector } = await deployArtifact(ctx, "ERC3009DepositCollector", [escrow]);
  if (canonical && setCodeClient) {
    const target = getAddress(CANONICAL_ADDRESSES.erc3009DepositCollector);
    await copyCode(ctx, setCodeClient, "place ERC3009DepositCollector", erc3009Collector, target);
    erc3009Collector = target;
  }
  const { address: permitCollector } = await deployArtifact(ctx, "PermitDepositCollector", [escrow]);

  let multicall3: Address | undefined;
  if (installMulticall3 && setCodeClient) {
    multicall3 = await ensureMulticall3(ctx, setCodeClient, chainId);
  } else {
    const code = await publicClient.getCode({ address: MULTICALL3_ADDRESS });
    if (code && code !== "0x") multicall3 = MULTICALL3_ADDRESS;
  }

  let token: Address | undefined;
  if (deployTestToken || mintTestToken) {
    const usdc = loadArtifact("TestUSDC", { artifactsDir: ctx.artifactsDir });
    token = (await deployCode(ctx, "deploy TestUSDC", usdc.abi, usdc.bytecode, [])).address;
    if (mintTestToken) {
      // One at a time: a single key cannot have several transactions in flight on an automining chain.
      for (const to of mintTestToken.to) {
        const hash = await walletClient.writeContract({
          address: token,
          abi: usdc.abi,
          functionName: "mint",
          args: [to, mintTestToken.amount],
          account: walletClient.account,
          chain: walletClient.chain ?? null,
        });
        await confirm(ctx, `mint TestUSDC to ${to}`, hash);
      }
      ctx.progress(`minted ${mintTestToken.amount} TestUSDC units to ${mintTestToken.to.length} address(es)`);
    }
  }

  const block = await publicClient.getBlock({ blockNumber: escrowDeployed.receipt.blockNumber });
  return {
    chainId,
    escrow,
    erc3009Collector,
    permitCollector,
    ...(token ? { token } : {}),
    ...(multicall3 ? { multicall3 } : {}),
    canonical,
    deployer: getAddress(walletClient.account.address),
    blockNumber: escrowDeployed.receipt.blockNumber,
    deployedAt: Number(block.timestamp),
  };
}

// -------------------------------------------------------------------------------------------------
// deployments/<chainId>.json
// -------------------------------------------------------------------------------------------------

/** The JSON shape of deployments/<chainId>.json (bigints as decimal strings). */
export type DeploymentFile = Omit<Deployment, "blockNumber"> & { blockNumber: string };

/** Path of the deployment file of `chainId` inside `dir`. */
export function deploymentPath(dir: string, chainId: number): string {
  return path.join(dir, `${chainId}.json`);
}

/**
 * Writes `<dir>/<chainId>.json` (creating `dir`), atomically via a temporary file. A record already
 * there that names other contracts is kept as `<chainId>.<its block>.json` first: it may be the escrow
 * that still holds funds.
 *
 * @param dir The deployments folder, e.g. "deployments".
 * @param deployment What `deployTollway` returned.
 * @returns The path written.
 * @example
 * const file = writeDeployment(path.join(repoRoot, "deployments"), deployment);
 */
export function writeDeployment(dir: string, deployment: Deployment): string {
  const file = deploymentPath(dir, deployment.chainId);
  const json: DeploymentFile = { ...deployment, blockNumber: deployment.blockNumber.toString() };
  fs.mkdirSync(dir, { recursive: true });
  if (fs.existsSync(file)) {
    // Kept whatever it holds (the contracts are deployed by now: this must not fail the write).
    let previous: Partial<DeploymentFile> | undefined;
    try {
      previous = JSON.parse(fs.readFileSync(file, "utf8")) as Partial<DeploymentFile>;
    } catch {
      previous = undefined;
    }
    if (previous?.escrow !== json.escrow || previous?.blockNumber !== json.blockNumber) {
      const tag = previous?.blockNumber !== undefined && /^\d+$/.test(String(previous.blockNumber)) ? String(previous.blockNumber) : `previous-${Date.now()}`;
      fs.copyFileSync(file, path.join(dir, `${deployment.chainId}.${tag}.json`));
    }
  }
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(json, null, 2)}\n`);
  fs.renameSync(tmp, file);
  return file;
}

/**
 * Reads and validates `<dir>/<chainId>.json`.
 *
 * @param dir The deployments folder.
 * @param chainId The chain whose deployment to read.
 * @throws {DeploymentNotFoundError} no file for that chain.
 * @throws {InvalidDeploymentFileError} the file is malformed or names another chain.
 * @example
 * const { escrow, erc3009Collector } = readDeployment("deployments", 31337);
 */
export function readDeployment(dir: string, chainId: number): Deployment {
  const file = deploymentPath(dir, chainId);
  let raw: string;
  try {
    raw = fs.readFileSync(file, "utf8");
  } catch (cause) {
    throw new DeploymentNotFoundError({ chainId, path: file, cause });
  }
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(raw) as Record<string, unknown>;
  } catch (cause) {
    throw new InvalidDeploymentFileError({ path: file, reason: "not valid JSON", cause });
  }
  if (json === null || typeof json !== "object") throw new InvalidDeploymentFileError({ path: file, reason: "not an object" });

  const address = (key: string, required: boolean): Address | undefined => {
    const value = json[key];
    if (value === undefined && !required) return undefined;
    if (typeof value !== "string" || !isAddress(value, { strict: false })) {
      throw new InvalidDeploymentFileError({ path: file, reason: `"${key}" is not an address` });
    }
    return getAddress(value);
  };
  if (json.chainId !== chainId) {
    throw new InvalidDeploymentFileError({ path: file, reason: `"chainId" is ${String(json.chainId)}, expected ${chainId}` });
  }
  if (typeof json.blockNumber !== "string" || !/^\d+$/.test(json.blockNumber)) {
    throw new InvalidDeploymentFileError({ path: file, reason: `"blockNumber" is not a decimal string` });
  }
  if (typeof json.deployedAt !== "number" || !Number.isSafeInteger(json.deployedAt)) {
    throw new InvalidDeploymentFileError({ path: file, reason: `"deployedAt" is not a unix timestamp` });
  }
  if (typeof json.canonical !== "boolean") {
    throw new InvalidDeploymentFileError({ path: file, reason: `"canonical" is not a boolean` });
  }
  const token = address("token", false);
  const multicall3 = address("multicall3", false);
  return {
    chainId,
    escrow: address("escrow", true)!,
    erc3009Collector: address("erc3009Collector", true)!,
    permitCollector: address("permitCollector", true)!,
    ...(token ? { token } : {}),
    ...(multicall3 ? { multicall3 } : {}),
    canonical: json.canonical,
    deployer: address("deployer", true)!,
    blockNumber: BigInt(json.blockNumber),
    deployedAt: json.deployedAt,
  };
}
