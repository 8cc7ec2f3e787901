/**
 * Assertion and encoding helpers for the contract tests (test/contracts/escrow|collectors|safety.test.ts).
 *
 * - `expectRevert` decodes a revert by custom error name AND arguments, whichever contract raised it
 *   (escrow, collector, token, wallet): viem's ContractFunctionRevertedError is used when it already decoded
 *   the error, otherwise its raw data (or the raw RPC revert data of a plain sendTransaction) is decoded
 *   against the errors of every project artifact.
 * - `send` / `eventsOf` / `expectEvents` / `expectNoEvent` read events from a receipt, filtered by emitter.
 * - Collector-data builders for any escrow / collector / token (the fixture's builders are tied to the
 *   fixture's escrow and collector).
 */
import hre from "hardhat";
import { expect } from "chai";
import {
  type Abi,
  type Address,
  type Hex,
  type TransactionReceipt,
  type WalletClient,
  BaseError,
  ContractFunctionRevertedError,
  concat,
  decodeErrorResult,
  encodeAbiParameters,
  keccak256,
  pad,
  parseEventLogs,
  parseSignature,
  toHex,
} from "viem";
import { formatAbiItem } from "viem/utils";
import {
  PERMIT_COLLECTOR_DOMAIN,
  depositAuthorizationTypes,
  permitTypes,
  receiveWithAuthorizationTypes,
} from "../../node/protocol/typedData";
import { encodePermitCollectorData, erc3009DepositNonce } from "../../node/protocol/collectorData";

type AbiError = Extract<Abi[number], { type: "error" }>;

// -------------------------------------------------------------------------------------------------
// Revert decoding
// -------------------------------------------------------------------------------------------------

const ARTIFACTS = [
  "BatchSettlement",
  "ERC3009DepositCollector",
  "PermitDepositCollector",
  "TestUSDC",
  "FeeOnTransferToken",
  "NoReturnToken",
  "BlacklistToken",
  "TestERC1271Wallet",
  "ReentrantToken",
] as const;

let allErrorsCache: AbiError[] | undefined;

/** Every custom error declared by the project's contracts (deduplicated by signature). */
export function allErrors(): AbiError[] {
  if (allErrorsCache) return allErrorsCache;
  const seen = new Map<string, AbiError>();
  for (const name of ARTIFACTS) {
    for (const item of hre.artifacts.readArtifactSync(name).abi as Abi) {
      if (item.type !== "error") continue;
      const sig = formatAbiItem(item);
      if (!seen.has(sig)) seen.set(sig, item);
    }
  }
  allErrorsCache = [...seen.values()];
  return allErrorsCache;
}

export type DecodedRevert = { errorName: string; args: readonly unknown[]; raw: Hex };

function findRawRevertData(err: unknown): Hex | undefined {
  // Walk the cause chain; viem puts revert data on ContractFunctionRevertedError.raw, the Hardhat provider on
  // `.data` (a hex string, or an object with `.data`).
  let e: any = err;
  for (let depth = 0; e && depth < 20; depth++) {
    if (e instanceof ContractFunctionRevertedError && e.raw) return e.raw;
    if (typeof e.data === "string" && e.data.startsWith("0x")) return e.data as Hex;
    if (e.data && typeof e.data === "object" && typeof e.data.data === "string" && e.data.data.startsWith("0x")) {
      return e.data.data as Hex;
    }
    e = e.cause;
  }
  return undefined;
}

/** Decodes raw revert data (e.g. recorded by a contract) against every project error. */
export function decodeRevertData(raw: Hex): DecodedRevert {
  if (raw === "0x") return { errorName: "<empty revert data>", args: [], raw };
  try {
    const decoded = decodeErrorResult({ abi: allErrors(), data: raw });
    return { errorName: decoded.errorName, args: (decoded.args ?? []) as readonly unknown[], raw };
  } catch {
    return { errorName: `<unknown selector ${raw.slice(0, 10)}>`, args: [], raw };
  }
}

/** Decodes the revert carried by a rejected call or transaction; throws if it is not a revert. */
export function decodeRevert(err: unknown): DecodedRevert {
  if (err instanceof BaseError) {
    const reverted = err.walk((e) => e instanceof ContractFunctionRevertedError) as
      | ContractFunctionRevertedError
      | null;
    if (reverted?.data?.errorName) {
      return { errorName: reverted.data.errorName, args: reverted.data.args ?? [], raw: reverted.raw ?? "0x" };
    }
  }
  const raw = findRawRevertData(err);
  if (raw === undefined) throw new Error(`not a revert with data: ${(err as Error)?.message ?? String(err)}`);
  return decodeRevertData(raw);
}

/** Normalises decoded values for comparison: addresses/hex lower-cased, numbers as bigint, structs recursively. */
export function norm(v: unknown): unknown {
  if (typeof v === "string") return v.startsWith("0x") ? v.toLowerCase() : v;
  if (typeof v === "number") return BigInt(v);
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, norm(x)]));
  }
  return v;
}

/**
 * Asserts that `promise` rejects with the custom error `errorName(...args)` (name and every argument).
 * @example await expectRevert(escrow.write.claim([[]]), "BatchSettlementEmptyBatch", [])
 */
export async function expectRevert(promise: Promise<unknown>, errorName: string, args: readonly unknown[]): Promise<void> {
  let err: unknown;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  if (err === undefined) expect.fail(`expected revert ${errorName}(${args.map(String).join(", ")}), but it succeeded`);
  const decoded = decodeRevert(err);
  expect(decoded.errorName, `revert error name (raw ${decoded.raw})`).to.equal(errorName);
  expect(norm(decoded.args), `arguments of ${errorName}`).to.deep.equal(norm(args));
}

// -------------------------------------------------------------------------------------------------
// Receipts and events
// -------------------------------------------------------------------------------------------------

type HasPublicClient = { publicClient: { waitForTransactionReceipt(a: { hash: Hex }): Promise<TransactionReceipt> } };

/** Awaits a write and returns its receipt, asserting success. */
export async function send(f: HasPublicClient, write: Promise<Hex>): Promise<TransactionReceipt> {
  const hash = await write;
  const receipt = await f.publicClient.waitForTransactionReceipt({ hash });
  expect(receipt.status).to.equal("success");
  return receipt;
}

/** Args of every `eventName` log emitted by `address` in the receipt, in order. */
export function eventsOf(
  receipt: TransactionReceipt,
  contract: { address: Address; abi: Abi },
  eventName: string,
): Record<string, unknown>[] {
  const logs = receipt.logs.filter((l) => l.address.toLowerCase() === contract.address.toLowerCase());
  return parseEventLogs({ abi: contract.abi, logs, eventName: eventName as any }).map(
    (l) => (l as unknown as { args: Record<string, unknown> }).args,
  );
}

/** Asserts the receipt carries exactly these `eventName` events (args deep-equal, normalised) from `contract`. */
export function expectEvents(
  receipt: TransactionReceipt,
  contract: { address: Address; abi: Abi },
  eventName: string,
  expected: Record<string, unknown>[],
): void {
  expect(norm(eventsOf(receipt, contract, eventName)), `${eventName} events`).to.deep.equal(norm(expected));
}

/** Asserts the receipt carries no `eventName` event from `contract`. */
export function expectNoEvent(receipt: TransactionReceipt, contract: { address: Address; abi: Abi }, eventName: string) {
  expect(eventsOf(receipt, contract, eventName), `no ${eventName} event`).to.have.length(0);
}

/** The names of all events `contract` emitted in the receipt, in order. */
export function eventNames(receipt: TransactionReceipt, contract: { address: Address; abi: Abi }): string[] {
  const logs = receipt.logs.filter((l) => l.address.toLowerCase() === contract.address.toLowerCase());
  return parseEventLogs({ abi: contract.abi, logs }).map((l) => (l as unknown as { eventName: string }).eventName);
}

// -------------------------------------------------------------------------------------------------
// Signatures
// -------------------------------------------------------------------------------------------------

/** secp256k1 group order. */
export const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

/** The malleated twin of a 65-byte signature: s' = n - s, v flipped (valid for plain ecrecover, high s). */
export function malleate(signature: Hex): Hex {
  const { r, s, v } = parseSignature(signature);
  const sHigh = SECP256K1_N - BigInt(s);
  const vFlipped = v === 27n ? 28 : 27;
  return concat([r, pad(toHex(sHigh), { size: 32 }), toHex(vFlipped, { size: 1 })]);
}

/** EIP-2098 compact (64-byte) form of a 65-byte signature. */
export function toCompact(signature: Hex): Hex {
  const { r, s, yParity } = parseSignature(signature);
  const yParityAndS = BigInt(s) | (BigInt(yParity ?? 0) << 255n);
  return concat([r, pad(toHex(yParityAndS), { size: 32 })]);
}

// -------------------------------------------------------------------------------------------------
// Collector data for any escrow / collector / token
// -------------------------------------------------------------------------------------------------

/** The ERC-3009 nonce the collector derives: keccak256(abi.encode(channelId, salt)). */
export const erc3009Nonce = erc3009DepositNonce;

/**
 * collectorData for an ERC3009DepositCollector, signed by `signer` (the payer EOA, or the owner of an ERC-1271
 * payer) for `channelId` (not necessarily the channel the data will be used with).
 */
export async function erc3009Data(p: {
  signer: WalletClient;
  from: Address;
  chainId: number;
  token: Address;
  collector: Address;
  channelId: Hex;
  amount: bigint;
  salt?: bigint;
  validAfter?: bigint;
  validBefore?: bigint;
  tokenName?: string;
  tokenVersion?: string;
}): Promise<{ data: Hex; nonce: Hex; salt: bigint; signature: Hex }> {
  const salt = p.salt ?? BigInt(keccak256(toHex(`${p.channelId}-${p.amount}-${Math.random()}`)));
  const validAfter = p.validAfter ?? 0n;
  const validBefore = p.validBefore ?? 2n ** 40n;
  const nonce = erc3009Nonce(p.channelId, salt);
  const signature = await p.signer.signTypedData({
    account: p.signer.account!,
    domain: { name: p.tokenName ?? "USDC", version: p.tokenVersion ?? "2", chainId: p.chainId, verifyingContract: p.token },
    types: receiveWithAuthorizationTypes,
    primaryType: "ReceiveWithAuthorization",
    message: { from: p.from, to: p.collector, value: p.amount, validAfter, validBefore, nonce },
  });
  const data = encodeAbiParameters(
    [{ type: "uint256" }, { type: "uint256" }, { type: "uint256" }, { type: "bytes" }],
    [validAfter, validBefore, salt, signature],
  );
  return { data, nonce, salt, signature };
}

/** Signs the PermitDepositCollector's DepositAuthorization. */
export function signDepositAuthorization(p: {
  signer: WalletClient;
  chainId: number;
  collector: Address;
  channelId: Hex;
  amount: bigint;
  nonce: Hex;
  deadline: bigint;
}): Promise<Hex> {
  return p.signer.signTypedData({
    account: p.signer.account!,
    domain: { ...PERMIT_COLLECTOR_DOMAIN, chainId: p.chainId, verifyingContract: p.collector },
    types: depositAuthorizationTypes,
    primaryType: "DepositAuthorization",
    message: { channelId: p.channelId, amount: p.amount, nonce: p.nonce, deadline: p.deadline },
  });
}

/** Signs an EIP-2612 permit of `owner` to `spender`. */
export async function signPermit(p: {
  signer: WalletClient;
  chainId: number;
  token: Address;
  tokenName: string;
  tokenVersion: string;
  owner: Address;
  spender: Address;
  value: bigint;
  nonce: bigint;
  deadline: bigint;
}): Promise<{ v: number; r: Hex; s: Hex; signature: Hex }> {
  const signature = await p.signer.signTypedData({
    account: p.signer.account!,
    domain: { name: p.tokenName, version: p.tokenVersion, chainId: p.chainId, verifyingContract: p.token },
    types: permitTypes,
    primaryType: "Permit",
    message: { owner: p.owner, spender: p.spender, value: p.value, nonce: p.nonce, deadline: p.deadline },
  });
  const { r, s, v } = parseSignature(signature);
  return { v: Number(v), r, s, signature };
}

/** Encodes PermitDepositCollector collectorData. */
export const encodePermitDepositData = encodePermitCollectorData;

/** A random 32-byte value (nonces, salts). */
export function randomBytes32(label = ""): Hex {
  return keccak256(toHex(`${label}-${Math.random()}-${Date.now()}`));
}
