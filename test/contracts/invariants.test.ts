/**
 * Property-based invariants of the escrow (BatchSettlement), model-based with fast-check.
 *
 * Each run starts from one snapshot (3 payers, 2 receivers, 2 receiverAuthorizers, 2 relayers, 7 channels in
 * mixed states) and executes a random sequence of 3..12 operations: gasless ERC-3009 deposits (relayed),
 * payer-side voucher signatures (off-chain), claims by the receiver side (batches mixing channels, no-op rows,
 * rows above ceiling / balance, forged vouchers), relayed claimWithSignature, settle, refund,
 * refundWithSignature (stale nonces, wrong signers, amounts above what is available), initiateWithdraw /
 * finalizeWithdraw around the delay boundary (time moves) and operations that must revert. An off-chain model
 * (bigint) predicts every result; a predicted revert must happen with the predicted custom error.
 * After every operation:
 *   1. escrow token balance == sum(channel.balance) - sum(receiver.totalSettled);
 *   2. per channel totalClaimed <= balance and <= the highest voucher ceiling the payer side signed, and each
 *      receiver's totalClaimed (settled + unsettled) == the sum of the totalClaimed of its channels;
 *   3. model == chain for channels(), receivers(), pendingWithdrawals(), refundNonce() and the escrow balance.
 *   (also every payer's and receiver's token balance == model)
 * At the end of a run everything is closed (some claims, finalized withdrawals, refunds of all the rest in one
 * escrow.multicall per receiver, settle): 4. each payer's token balance == initial - sum claimed from its
 * channels, each receiver's == initial + sum claimed from its channels, and the escrow holds nothing.
 *
 * Mechanics (speed: it runs inside `npm test`): runs are reset with evm_revert to one snapshot; transactions are
 * plain eth_sendTransaction with a fixed gas limit (automine; a reverting transaction is mined and its revert
 * data decoded through viem's ContractFunctionRevertedError); state is read once per operation straight from
 * storage (see "Reading chain state") and once per run through the view functions. initiateWithdraw and
 * finalizeWithdraw pin their block timestamp (latest + 1), so the model knows initiatedAt and can aim time moves
 * at finalizeAfter - 1 / exactly / + 1.
 *
 * TOLLWAY_FUZZ_RUNS scales the number of sequences (default 1000). A failure prints fast-check's seed, path and
 * shrunk counterexample (a list of operations) plus the first diverging value.
 */
import { expect } from "chai";
import fc from "fast-check";
import hre from "hardhat";
import { time } from "@nomicfoundation/hardhat-network-helpers";
import {
  type Abi,
  type Address,
  type Hex,
  type WalletClient,
  ContractFunctionRevertedError,
  concat,
  decodeFunctionResult,
  encodeAbiParameters,
  keccak256,
  encodeFunctionData,
  maxUint128,
  pad,
  toHex,
  zeroAddress,
} from "viem";
import type { PrivateKeyAccount } from "viem/accounts";
import { type ChannelConfig, type VoucherClaim, claimBatchTypes } from "../../node/protocol/typedData";
import {
  type Fixture,
  computeChannelId,
  erc3009CollectorData,
  loadEscrow,
  makeConfig,
  signRefund,
  signVoucher,
} from "../helpers/fixture";

const RUNS = (() => {
  const raw = process.env.TOLLWAY_FUZZ_RUNS;
  // Under solidity-coverage (instrumented, ~10x slower) a short run is enough to cover the paths.
  const fallback = process.env.SOLIDITY_COVERAGE === "true" ? 60 : 1000;
  const n = raw === undefined || raw === "" ? fallback : Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`TOLLWAY_FUZZ_RUNS must be a positive integer, got ${raw}`);
  return n;
})();

type Signer = WalletClient | PrivateKeyAccount;

// ------------------------------------------------------------------------------------------------
// Model
// ------------------------------------------------------------------------------------------------

type ChM = {
  bal: bigint;
  claimed: bigint;
  wAmt: bigint;
  wAt: bigint;
  nonce: bigint;
  /** Highest ceiling the payer side has signed for this channel (0 = none). */
  highest: bigint;
  /** All ceilings signed (distinct). */
  ceilings: bigint[];
  /** Last successful deposit (amount and collectorData), replayed by "replay" deposits. */
  lastDep: { amount: bigint; data: Hex } | null;
};

type Model = {
  ch: ChM[];
  rc: { claimed: bigint; settled: bigint }[];
  payerTok: bigint[];
  recvTok: bigint[];
  escrowTok: bigint;
};

type Chan = {
  idx: number;
  cfg: ChannelConfig;
  id: Hex;
  payer: number;
  recv: number;
  ra: number;
  delay: bigint;
  /** Signs vouchers: the payer (payerAuthorizer == 0) or the payerAuthorizer. */
  voucherSigner: Signer;
  /** Signs a voucher that must be rejected: an outsider, or the payer when a payerAuthorizer is set. */
  forgerSigner: Signer;
  /** payer-side senders (payer, and the payerAuthorizer when it is a funded account). */
  payerSide: WalletClient[];
};

// ------------------------------------------------------------------------------------------------
// Operations (selectors are interpreted against the model when the operation runs)
// ------------------------------------------------------------------------------------------------

type RowSpec = {
  ch: number;
  any: boolean; // false: the channel is re-picked among those the caller / authorizer may claim
  v: "highest" | "other" | "forged";
  // edge: leave the channel's unclaimed escrow at its pending withdrawal's amount -1 / +0 / +1 (else at 0..2)
  t: "noop" | "partial" | "max" | "edge" | "overCeil" | "overBal" | "huge";
  r: number;
};

type Op =
  | {
      op: "deposit";
      ch: number;
      kind: "some" | "big" | "zero" | "overBalance" | "replay" | "badSig";
      r: number;
      relayer: number;
    }
  | { op: "sign"; ch: number; kind: "raise" | "toBalance" | "lower"; r: number }
  | { op: "claim"; caller: "receiver" | "ra" | "outsider"; clean: boolean; rows: RowSpec[] }
  | { op: "claimSig"; ra: number; signer: "ra" | "wrong"; relayer: number; clean: boolean; rows: RowSpec[] }
  | { op: "settle"; recv: number; caller: number }
  | { op: "refund"; ch: number; caller: "receiver" | "ra" | "outsider"; kind: AmountKind; r: number }
  | {
      op: "refundSig";
      ch: number;
      kind: AmountKind;
      r: number;
      nonce: "current" | "stale" | "future";
      signer: "ra" | "wrong";
      relayer: number;
    }
  | {
      op: "initiate";
      ch: number;
      caller: "payer" | "auth" | "outsider";
      kind: "zero" | "some" | "all" | "edge" | "over";
      r: number;
    }
  | { op: "finalize"; ch: number; caller: "payer" | "auth" | "outsider"; r: number }
  | { op: "time"; ch: number; kind: "before2" | "before1" | "exact" | "after" | "random"; r: number };

/** edge: the channel's pending withdrawal amount -1 / +0 / +1 (else: unclaimed escrow -1 / +0 / +1). */
type AmountKind = "zero" | "some" | "all" | "over" | "max" | "edge";

const NCH = 7;
const rArb = fc.nat({ max: 1_000_000 });
const chArb = fc.nat({ max: NCH - 1 });
const rowArb: fc.Arbitrary<RowSpec> = fc.record({
  ch: chArb,
  any: fc.nat({ max: 9 }).map((x) => x === 0),
  v: fc.constantFrom(
    "highest",
    "highest",
    "highest",
    "highest",
    "highest",
    "highest",
    "other",
    "other",
    "forged",
  ) as fc.Arbitrary<RowSpec["v"]>,
  t: fc.constantFrom(
    "noop",
    "partial",
    "partial",
    "partial",
    "partial",
    "max",
    "max",
    "edge",
    "edge",
    "overCeil",
    "overBal",
    "huge",
  ) as fc.Arbitrary<RowSpec["t"]>,
  r: rArb,
});
const rowsArb = fc.oneof(
  { weight: 1, arbitrary: fc.constant([] as RowSpec[]) },
  { weight: 24, arbitrary: fc.array(rowArb, { minLength: 1, maxLength: 4 }) },
);
const amountKindArb = fc.constantFrom(
  "zero",
  "some",
  "some",
  "some",
  "all",
  "all",
  "edge",
  "edge",
  "over",
  "over",
  "max",
) as fc.Arbitrary<AmountKind>;

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("deposit" as const),
      ch: chArb,
      kind: fc.constantFrom(
        "some",
        "some",
        "some",
        "some",
        "some",
        "some",
        "big",
        "big",
        "zero",
        "overBalance",
        "replay",
        "badSig",
      ) as fc.Arbitrary<"some" | "big" | "zero" | "overBalance" | "replay" | "badSig">,
      r: rArb,
      relayer: fc.nat({ max: 1 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant("sign" as const),
      ch: chArb,
      kind: fc.constantFrom("raise", "raise", "toBalance", "lower") as fc.Arbitrary<"raise" | "toBalance" | "lower">,
      r: rArb,
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("claim" as const),
      caller: fc.constantFrom("receiver", "receiver", "receiver", "ra", "ra", "outsider") as fc.Arbitrary<
        "receiver" | "ra" | "outsider"
      >,
      clean: fc.boolean(),
      rows: rowsArb,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant("claimSig" as const),
      ra: fc.nat({ max: 1 }),
      signer: fc.constantFrom("ra", "ra", "ra", "ra", "ra", "wrong") as fc.Arbitrary<"ra" | "wrong">,
      relayer: fc.nat({ max: 1 }),
      clean: fc.boolean(),
      rows: rowsArb,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ op: fc.constant("settle" as const), recv: fc.nat({ max: 1 }), caller: fc.nat({ max: 4 }) }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("refund" as const),
      ch: chArb,
      caller: fc.constantFrom("receiver", "receiver", "receiver", "ra", "ra", "outsider") as fc.Arbitrary<
        "receiver" | "ra" | "outsider"
      >,
      kind: amountKindArb,
      r: rArb,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("refundSig" as const),
      ch: chArb,
      kind: amountKindArb,
      r: rArb,
      nonce: fc.constantFrom(
        "current",
        "current",
        "current",
        "current",
        "current",
        "current",
        "stale",
        "future",
      ) as fc.Arbitrary<"current" | "stale" | "future">,
      signer: fc.constantFrom("ra", "ra", "ra", "ra", "ra", "ra", "wrong") as fc.Arbitrary<"ra" | "wrong">,
      relayer: fc.nat({ max: 1 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("initiate" as const),
      ch: chArb,
      caller: fc.constantFrom("payer", "payer", "payer", "auth", "auth", "outsider") as fc.Arbitrary<
        "payer" | "auth" | "outsider"
      >,
      kind: fc.constantFrom(
        "zero",
        "some",
        "some",
        "some",
        "some",
        "some",
        "all",
        "all",
        "edge",
        "over",
      ) as fc.Arbitrary<"zero" | "some" | "all" | "edge" | "over">,
      r: rArb,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("finalize" as const),
      ch: chArb,
      caller: fc.constantFrom("payer", "payer", "payer", "auth", "auth", "outsider") as fc.Arbitrary<
        "payer" | "auth" | "outsider"
      >,
      r: rArb,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("time" as const),
      ch: chArb,
      kind: fc.constantFrom("before2", "before1", "exact", "after", "after", "random") as fc.Arbitrary<
        "before2" | "before1" | "exact" | "after" | "random"
      >,
      r: rArb,
    }),
  },
);

const closeArb = fc.record({ claimMask: fc.nat({ max: 127 }), finalizeMask: fc.nat({ max: 127 }) });
const runArb = fc.record({ ops: fc.array(opArb, { minLength: 3, maxLength: 12 }), close: closeArb });

// ------------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------------

const big = (n: number) => BigInt(n);
const min = (a: bigint, b: bigint) => (a < b ? a : b);

function fail(msg: string): never {
  throw new Error(msg);
}

function eq(actual: bigint, expected: bigint, what: string) {
  if (actual !== expected) fail(`${what}: chain ${actual} != model ${expected}`);
}

/** The revert's custom error name, through viem's ContractFunctionRevertedError. */
function revertName(e: unknown, errorAbi: Abi, functionName: string): string | undefined {
  let c: any = e;
  const seen = new Set<unknown>();
  while (c && typeof c === "object" && !seen.has(c)) {
    seen.add(c);
    if (c instanceof ContractFunctionRevertedError && c.data?.errorName) return c.data.errorName;
    // Hardhat's automined eth_sendTransaction rejects with the raw revert data (SolidityError.data).
    if (typeof c.data === "string" && /^0x[0-9a-fA-F]{8}/.test(c.data)) {
      const decoded = new ContractFunctionRevertedError({ abi: errorAbi, data: c.data as Hex, functionName });
      if (decoded.data?.errorName) return decoded.data.errorName;
      return `unknown(${c.data.slice(0, 10)})`;
    }
    c = c.cause;
  }
  return undefined;
}

// ------------------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------------------

describe("escrow invariants (fast-check, model-based)", function () {
  it(`hold over ${RUNS} random operation sequences`, async function () {
    this.timeout(Math.max(120_000, RUNS * 300));
    const t0 = Date.now();

    const f: Fixture = await loadEscrow();
    const wallets = await hre.viem.getWalletClients();
    // Hot path: the Hardhat provider directly (viem's transport and error wrapping cost more than the EVM).
    const rpc = (method: string, params: unknown[] = []) =>
      hre.network.provider.request({ method, params }) as Promise<any>;
    const outerSnapshot = (await rpc("evm_snapshot")) as Hex;

    // Actors
    const payers = [f.payer, f.payer2, wallets[8]];
    const receivers = [f.receiver, f.receiver2];
    const ras = [f.receiverAuthorizer, wallets[9]];
    const relayers = [f.relayer, wallets[10]];
    const outsider = f.other;
    const k0 = wallets[11]; // funded payerAuthorizer (can also initiate / finalize)
    const k1 = f.sessionKey; // unfunded session key: signs vouchers only
    const addr = (w: WalletClient) => w.account!.address;
    await f.usdc.write.mint([addr(payers[2]), 1_000_000_000n]);

    // Channels: payer / payerAuthorizer / receiver / receiverAuthorizer / withdrawDelay / salt
    const specs: { p: number; pa: "self" | "k0" | "k1"; r: number; ra: number; delay: number; salt: number }[] = [
      { p: 0, pa: "self", r: 0, ra: 0, delay: 900, salt: 0 },
      { p: 0, pa: "k0", r: 1, ra: 1, delay: 3600, salt: 0 },
      { p: 1, pa: "self", r: 0, ra: 0, delay: 900, salt: 0 },
      { p: 1, pa: "k1", r: 1, ra: 1, delay: 1800, salt: 0 },
      { p: 2, pa: "k0", r: 0, ra: 1, delay: 900, salt: 0 }, // receiver 0 under receiverAuthorizer 1
      { p: 2, pa: "self", r: 1, ra: 0, delay: 7200, salt: 0 }, // receiver 1 under receiverAuthorizer 0
      { p: 0, pa: "self", r: 0, ra: 0, delay: 900, salt: 1 }, // second channel of (payer 0, receiver 0)
    ];
    const chans: Chan[] = specs.map((s, idx) => {
      const payerAuthorizer = s.pa === "self" ? zeroAddress : s.pa === "k0" ? addr(k0) : k1.address;
      const cfg = makeConfig(f, {
        payer: addr(payers[s.p]),
        payerAuthorizer,
        receiver: addr(receivers[s.r]),
        receiverAuthorizer: addr(ras[s.ra]),
        withdrawDelay: s.delay,
        salt: pad(toHex(s.salt), { size: 32 }),
      });
      return {
        idx,
        cfg,
        id: computeChannelId(f.domain, cfg),
        payer: s.p,
        recv: s.r,
        ra: s.ra,
        delay: big(s.delay),
        voucherSigner: s.pa === "self" ? payers[s.p] : s.pa === "k0" ? k0 : k1,
        forgerSigner: s.pa === "self" ? outsider : payers[s.p],
        payerSide: s.pa === "k0" ? [payers[s.p], k0] : [payers[s.p]],
      };
    });
    expect(new Set(chans.map((c) => c.id)).size).to.equal(NCH);

    const errorAbi = [...f.escrow.abi, ...f.usdc.abi, ...f.erc3009Collector.abi].filter(
      (x) => x.type === "error",
    ) as Abi;

    // --------------------------------------------------------------------------------------------
    // Reading chain state
    // --------------------------------------------------------------------------------------------
    // After every operation the escrow's and the token's storage is read in ONE eth_call with state overrides
    // (nothing is written): the escrow's code is replaced by ESCROW_READER, which returns SLOAD(slot) for its
    // slots and appends what the token (its code replaced by READER, SLOAD per calldata word) returns for the
    // token slots. The slots of `channels`, `pendingWithdrawals`, `refundNonce`, `receivers` and the token's
    // balances are located once by matching the view functions; at the end of every sequence (before closing)
    // the comparison is also made through the views themselves (channels(), pendingWithdrawals(),
    // refundNonce(), receivers() in one escrow.multicall, and token.balanceOf(escrow)).
    // (Hardhat: the multicall of 23 views costs ~1.5 ms, this storage read ~0.2 ms.)
    //
    // READER:        i = 0; while (i < calldatasize) { mem[i] = sload(calldataload(i)); i += 32 } return mem[0:cds]
    // ESCROW_READER: calldata = token . n . slot[0..n) . tokenSlot[..];
    //                mem[32k] = sload(slot[k]); staticcall(token, tokenSlots) -> mem[32n..]; return mem[0:32n+len]
    const READER: Hex = "0x5f5b803611600c57365ff3005b8035548152602001600156";
    const ESCROW_READER: Hex =
      "0x6020355f5b818110600e576021565b8060051b80604001355490526001016004565b5060051b8060400180360380918337808281815f355afa50015ff3";
    const tokenHolders: Address[] = [f.escrow.address, ...payers.map(addr), ...receivers.map(addr)];
    const ethCall = async (to: Address, data: Hex) => (await rpc("eth_call", [{ to, data }, "latest"])) as Hex;
    const word = (h: Hex, i: number) => BigInt("0x" + h.slice(2 + 64 * i, 66 + 64 * i));
    const M128 = (1n << 128n) - 1n;
    const M40 = (1n << 40n) - 1n;
    const mapSlot = (key: Hex, slot: bigint): Hex =>
      keccak256(encodeAbiParameters([{ type: "bytes32" }, { type: "uint256" }], [pad(key, { size: 32 }), slot]));
    const storageAt = async (a: Address, slot: Hex) => BigInt(await rpc("eth_getStorageAt", [a, slot, "latest"]));

    type ChainState = {
      ch: { bal: bigint; claimed: bigint; wAmt: bigint; wAt: bigint; nonce: bigint }[];
      rc: { claimed: bigint; settled: bigint }[];
      tok: bigint[]; // escrow, payers..., receivers...
    };

    let readerCall: Hex = "0x"; // set by locateSlots
    /** Through the escrow's view functions (one escrow.multicall) and token.balanceOf(escrow); other token
     *  balances from storage. */
    const viewCalls: Hex[] = [
      ...chans.map((c) => encodeFunctionData({ abi: f.escrow.abi, functionName: "channels", args: [c.id] })),
      ...chans.map((c) => encodeFunctionData({ abi: f.escrow.abi, functionName: "pendingWithdrawals", args: [c.id] })),
      ...chans.map((c) => encodeFunctionData({ abi: f.escrow.abi, functionName: "refundNonce", args: [c.id] })),
      ...receivers.map((r) =>
        encodeFunctionData({ abi: f.escrow.abi, functionName: "receivers", args: [addr(r), f.usdc.address] }),
      ),
    ];
    const viewMulticall = encodeFunctionData({ abi: f.escrow.abi, functionName: "multicall", args: [viewCalls] });
    const balanceCall = (a: Address) => encodeFunctionData({ abi: f.usdc.abi, functionName: "balanceOf", args: [a] });
    const tokenBalance = async (a: Address) => BigInt(await ethCall(f.usdc.address, balanceCall(a)));
    async function readViews(allBalances = readerCall === "0x"): Promise<ChainState> {
      const res = decodeFunctionResult({
        abi: f.escrow.abi,
        functionName: "multicall",
        data: await ethCall(f.escrow.address, viewMulticall),
      }) as readonly Hex[];
      const tok = allBalances ? [] : (await readStorage()).tok;
      for (let k = 0; k < (allBalances ? tokenHolders.length : 1); k++) tok[k] = await tokenBalance(tokenHolders[k]);
      return {
        ch: chans.map((_, i) => ({
          bal: word(res[i], 0),
          claimed: word(res[i], 1),
          wAmt: word(res[NCH + i], 0),
          wAt: word(res[NCH + i], 1),
          nonce: word(res[2 * NCH + i], 0),
        })),
        rc: receivers.map((_, j) => ({ claimed: word(res[3 * NCH + j], 0), settled: word(res[3 * NCH + j], 1) })),
        tok,
      };
    }

    /** Through storage (slots located by `locateSlots`). */
    const overrides = { [f.escrow.address]: { code: ESCROW_READER }, [f.usdc.address]: { code: READER } };
    const NE = 3 * NCH + receivers.length; // escrow words
    async function readStorage(): Promise<ChainState> {
      const e = (await rpc("eth_call", [{ to: f.escrow.address, data: readerCall }, "latest", overrides])) as Hex;
      if (e.length !== 2 + 64 * (NE + tokenHolders.length)) fail(`storage reader returned ${e.length} hex chars`);
      return {
        ch: chans.map((_, i) => {
          const c = word(e, i);
          const w = word(e, NCH + i);
          return {
            bal: c & M128,
            claimed: c >> 128n,
            wAmt: w & M128,
            wAt: (w >> 128n) & M40,
            nonce: word(e, 2 * NCH + i),
          };
        }),
        rc: receivers.map((_, j) => {
          const r = word(e, 3 * NCH + j);
          return { claimed: r & M128, settled: r >> 128n };
        }),
        tok: tokenHolders.map((_, k) => word(e, NE + k)),
      };
    }

    /** Finds the mapping slots by comparing storage with the views (needs non-zero values in every mapping). */
    async function locateSlots() {
      const v = await readViews(true);
      const find = async (what: string, target: Address, key: (s: bigint) => Hex, expected: bigint) => {
        if (expected === 0n) fail(`locateSlots: ${what} is zero in the base state`);
        for (let s = 0n; s < 32n; s++) if ((await storageAt(target, key(s))) === expected) return s;
        fail(`locateSlots: no storage slot holds ${what}`);
      };
      const ci = v.ch.findIndex((c) => c.bal > 0n && c.claimed > 0n);
      const wi = v.ch.findIndex((c) => c.wAt > 0n);
      const ni = v.ch.findIndex((c) => c.nonce > 0n);
      const ri = v.rc.findIndex((r) => r.settled > 0n);
      const sCh = await find(
        "channels",
        f.escrow.address,
        (s) => mapSlot(chans[ci].id, s),
        (v.ch[ci].claimed << 128n) | v.ch[ci].bal,
      );
      const sW = await find(
        "pendingWithdrawals",
        f.escrow.address,
        (s) => mapSlot(chans[wi].id, s),
        (v.ch[wi].wAt << 128n) | v.ch[wi].wAmt,
      );
      const sN = await find("refundNonce", f.escrow.address, (s) => mapSlot(chans[ni].id, s), v.ch[ni].nonce);
      const rcSlot = (r: Address, s: bigint) => mapSlot(f.usdc.address, BigInt(mapSlot(r, s)));
      const sR = await find(
        "receivers",
        f.escrow.address,
        (s) => rcSlot(addr(receivers[ri]), s),
        (v.rc[ri].settled << 128n) | v.rc[ri].claimed,
      );
      const sB = await find("balanceOf", f.usdc.address, (s) => mapSlot(tokenHolders[1], s), v.tok[1]);
      readerCall = concat([
        pad(f.usdc.address, { size: 32 }),
        toHex(NE, { size: 32 }),
        ...chans.map((c) => mapSlot(c.id, sCh)),
        ...chans.map((c) => mapSlot(c.id, sW)),
        ...chans.map((c) => mapSlot(c.id, sN)),
        ...receivers.map((r) => rcSlot(addr(r), sR)),
        ...tokenHolders.map((a) => mapSlot(a, sB)),
      ]);
      expect(await readStorage()).to.deep.equal(v);
    }

    const stats = { sequences: 0, ops: 0, txs: 0, expectedReverts: 0, closingTxs: 0, viewChecks: 0 };
    const txCounts: Record<string, { ok: number; reverted: number }> = {};

    /** Invariants 1-3 (and model == chain for all token balances) after every operation. */
    async function check(m: Model, where: string, viaViews = false): Promise<ChainState> {
      const st = viaViews ? await readViews() : await readStorage();
      if (viaViews) stats.viewChecks++;
      const src = viaViews ? "views" : "storage";
      let sumBal = 0n;
      const recvClaimedFromChannels = receivers.map(() => 0n);
      for (let i = 0; i < NCH; i++) {
        const { bal, claimed, wAmt, wAt, nonce } = st.ch[i];
        const mc = m.ch[i];
        eq(bal, mc.bal, `${where}: channels(c${i}).balance [${src}]`);
        eq(claimed, mc.claimed, `${where}: channels(c${i}).totalClaimed [${src}]`);
        eq(wAmt, mc.wAmt, `${where}: pendingWithdrawals(c${i}).amount [${src}]`);
        eq(wAt, mc.wAt, `${where}: pendingWithdrawals(c${i}).initiatedAt [${src}]`);
        eq(nonce, mc.nonce, `${where}: refundNonce(c${i}) [${src}]`);
        // invariant 2
        if (claimed > bal) fail(`${where}: c${i} totalClaimed ${claimed} > balance ${bal}`);
        if (claimed > mc.highest)
          fail(`${where}: c${i} totalClaimed ${claimed} > highest signed voucher ${mc.highest}`);
        sumBal += bal;
        recvClaimedFromChannels[chans[i].recv] += claimed;
      }
      let sumSettled = 0n;
      for (let j = 0; j < receivers.length; j++) {
        const { claimed, settled } = st.rc[j];
        eq(claimed, m.rc[j].claimed, `${where}: receivers(r${j}).totalClaimed [${src}]`);
        eq(settled, m.rc[j].settled, `${where}: receivers(r${j}).totalSettled [${src}]`);
        if (claimed !== recvClaimedFromChannels[j]) {
          fail(
            `${where}: receiver r${j} settled+unsettled ${claimed} != sum of its channels' claims ${recvClaimedFromChannels[j]}`,
          );
        }
        if (settled > claimed) fail(`${where}: receiver r${j} settled ${settled} > claimed ${claimed}`);
        sumSettled += settled;
      }
      // invariant 1
      const escrowTok = st.tok[0];
      if (escrowTok !== sumBal - sumSettled) {
        fail(`${where}: escrow token balance ${escrowTok} != sum(balance) ${sumBal} - sum(totalSettled) ${sumSettled}`);
      }
      eq(escrowTok, m.escrowTok, `${where}: escrow token balance [${src}]`);
      for (let p = 0; p < payers.length; p++) eq(st.tok[1 + p], m.payerTok[p], `${where}: payer p${p} tokens [${src}]`);
      for (let r = 0; r < receivers.length; r++)
        eq(st.tok[1 + payers.length + r], m.recvTok[r], `${where}: receiver r${r} tokens [${src}]`);
      return st;
    }

    const GAS = toHex(5_000_000);
    /**
     * Sends `escrow.<fn>(args)` from `from` (automined); asserts it reverts with `expected` (custom error name,
     * decoded by viem's ContractFunctionRevertedError) or succeeds when `expected` is null. Plain
     * eth_sendTransaction with a fixed gas limit: a reverting transaction is mined, no gas estimation runs.
     */
    async function tx(
      expected: string | null,
      from: WalletClient,
      fn: string,
      args: readonly unknown[],
      ctx: string,
    ): Promise<boolean> {
      stats.txs++;
      const counts = (txCounts[fn] ??= { ok: 0, reverted: 0 });
      const data = encodeFunctionData({ abi: f.escrow.abi, functionName: fn, args } as any);
      try {
        await rpc("eth_sendTransaction", [{ from: addr(from), to: f.escrow.address, data, gas: GAS }]);
      } catch (e) {
        const name = revertName(e, errorAbi, fn);
        if (expected === null)
          fail(`${ctx}: unexpected revert ${name ?? "(no custom error)"}: ${(e as Error).message}`);
        if (name !== expected)
          fail(`${ctx}: expected revert ${expected}, got ${name ?? "(none)"}: ${(e as Error).message}`);
        stats.expectedReverts++;
        counts.reverted++;
        return false;
      }
      if (expected !== null) fail(`${ctx}: expected revert ${expected}, but the transaction succeeded`);
      counts.ok++;
      return true;
    }

    /** Pins the next block's timestamp (latest + 1) and returns it. */
    async function nextTimestamp(): Promise<bigint> {
      const t = big(await time.latest()) + 1n;
      await time.setNextBlockTimestamp(t);
      return t;
    }

    // Signature caches (the chain is reset between runs; these digests do not depend on chain state).
    const voucherSigs = new Map<string, Hex>();
    async function voucherSig(i: number, ceiling: bigint, forged: boolean): Promise<Hex> {
      const key = `${forged ? "f" : "v"}${i}:${ceiling}`;
      let s = voucherSigs.get(key);
      if (!s) {
        const signer = forged ? chans[i].forgerSigner : chans[i].voucherSigner;
        s = await signVoucher(signer, f.domain, chans[i].id, ceiling);
        voucherSigs.set(key, s);
      }
      return s;
    }

    // --------------------------------------------------------------------------------------------
    // Model transitions shared by the operations
    // --------------------------------------------------------------------------------------------

    function modelRefund(m: Model, i: number, amount: bigint) {
      const c = m.ch[i];
      c.nonce += 1n;
      const refunded = min(amount, c.bal - c.claimed);
      if (refunded === 0n) return;
      c.bal -= refunded;
      if (c.wAt !== 0n) {
        if (refunded >= c.wAmt) {
          c.wAmt = 0n;
          c.wAt = 0n;
        } else c.wAmt -= refunded;
      }
      m.payerTok[chans[i].payer] += refunded;
      m.escrowTok -= refunded;
    }

    type PlannedRow = { ch: number; ceiling: bigint; valid: boolean; target: bigint; row: VoucherClaim };

    /** Builds claim rows; targets are chosen against the state the earlier rows would leave. */
    async function planRows(
      m: Model,
      rowSpecs: RowSpec[],
      pick: (spec: RowSpec, k: number) => number,
      clean = false,
    ): Promise<PlannedRow[]> {
      const claimed = m.ch.map((c) => c.claimed);
      const out: PlannedRow[] = [];
      for (let k = 0; k < rowSpecs.length; k++) {
        // A clean batch keeps each row's channel but signs honestly and stays within ceiling and balance.
        const s: RowSpec = clean
          ? {
              ...rowSpecs[k],
              v: rowSpecs[k].v === "forged" ? "highest" : rowSpecs[k].v,
              t: ["overCeil", "overBal", "huge"].includes(rowSpecs[k].t) ? "partial" : rowSpecs[k].t,
            }
          : rowSpecs[k];
        const i = pick(s, k);
        const mc = m.ch[i];
        const rr = big(s.r);
        let ceiling: bigint;
        let valid = true;
        if (s.v === "forged" || mc.ceilings.length === 0) {
          valid = false;
          ceiling =
            mc.ceilings.length > 0 && s.r % 2 === 0
              ? mc.ceilings[s.r % mc.ceilings.length]
              : mc.highest + 1n + (rr % 3000n);
        } else if (s.v === "highest") ceiling = mc.highest;
        else ceiling = mc.ceilings[s.r % mc.ceilings.length];
        const cur = claimed[i];
        const limit = min(ceiling, mc.bal);
        let target: bigint;
        switch (s.t) {
          case "noop":
            target = rr % (cur + 1n);
            break;
          case "partial":
            target = limit > cur ? cur + 1n + (rr % (limit - cur)) : cur + 1n + (rr % 100n);
            break;
          case "max":
            target = limit;
            break;
          case "overCeil": // just above (half the time exactly one above)
            target = ceiling + 1n + (s.r % 2 === 0 ? 0n : rr % 100n);
            break;
          case "overBal":
            target = mc.bal + 1n + (s.r % 2 === 0 ? 0n : rr % 100n);
            break;
          case "huge":
            target = maxUint128;
            break;
          case "edge": {
            const keep = mc.wAt !== 0n ? mc.wAmt + big(s.r % 3) - 1n : big(s.r % 3);
            target = mc.bal > keep ? mc.bal - keep : 0n;
            break;
          }
        }
        if (target > maxUint128) target = maxUint128;
        if (clean && (!valid || target > limit)) target = min(cur, limit); // nothing honest to claim: a no-op row
        if (target > cur && target <= ceiling && target <= mc.bal && valid) claimed[i] = target;
        out.push({
          ch: i,
          ceiling,
          valid,
          target,
          row: {
            voucher: { channel: chans[i].cfg, maxClaimableAmount: ceiling },
            signature: await voucherSig(i, ceiling, !valid),
            totalClaimed: target,
          },
        });
      }
      return out;
    }

    /** The escrow's claim loop, in its order of checks. Returns the error name or the new totals. */
    function evalRows(m: Model, rows: PlannedRow[], pre: (row: PlannedRow, k: number) => string | null) {
      const claimed = m.ch.map((c) => c.claimed);
      const rcAdd = receivers.map(() => 0n);
      for (let k = 0; k < rows.length; k++) {
        const row = rows[k];
        const e = pre(row, k);
        if (e) return { err: e, claimed, rcAdd };
        const cur = claimed[row.ch];
        if (row.target <= cur) continue;
        if (row.target > row.ceiling) return { err: "BatchSettlementClaimExceedsCeiling", claimed, rcAdd };
        if (row.target > m.ch[row.ch].bal) return { err: "BatchSettlementClaimExceedsBalance", claimed, rcAdd };
        if (!row.valid) return { err: "BatchSettlementInvalidVoucherSignature", claimed, rcAdd };
        rcAdd[chans[row.ch].recv] += row.target - cur;
        claimed[row.ch] = row.target;
      }
      return { err: null as string | null, claimed, rcAdd };
    }

    function commitClaims(m: Model, claimed: bigint[], rcAdd: bigint[]) {
      for (let i = 0; i < NCH; i++) m.ch[i].claimed = claimed[i];
      for (let j = 0; j < receivers.length; j++) m.rc[j].claimed += rcAdd[j];
    }

    const isReceiverSide = (a: Address, i: number) =>
      a === chans[i].cfg.receiver || a === chans[i].cfg.receiverAuthorizer;
    const isPayerSide = (a: Address, i: number) => a === chans[i].cfg.payer || a === chans[i].cfg.payerAuthorizer;

    // --------------------------------------------------------------------------------------------
    // Operations
    // --------------------------------------------------------------------------------------------

    async function deposit(
      m: Model,
      i: number,
      amount: bigint,
      mode: "fresh" | "replay" | "badSig",
      relayer: number,
      ctx: string,
    ) {
      const c = chans[i];
      const mc = m.ch[i];
      let data: Hex = "0x";
      let sent = amount;
      let expected: string | null = null;
      if (mode === "replay" && mc.lastDep) {
        sent = mc.lastDep.amount;
        data = mc.lastDep.data;
      } else if (amount > 0n) {
        data = await erc3009CollectorData(f, payers[c.payer], c.cfg, amount);
        if (mode === "badSig") sent = amount + 1n; // signed for `amount`, relayed for one more
      }
      if (sent === 0n) expected = "BatchSettlementZeroDeposit";
      else if (mode === "replay" && mc.lastDep) expected = "AuthorizationAlreadyUsed";
      else if (mode === "badSig") expected = "InvalidAuthorizationSignature";
      else if (sent > m.payerTok[c.payer]) expected = "ERC20InsufficientBalance";
      const ok = await tx(expected, relayers[relayer], "deposit", [c.cfg, sent, f.erc3009Collector.address, data], ctx);
      if (ok) {
        mc.bal += sent;
        mc.lastDep = { amount: sent, data };
        m.payerTok[c.payer] -= sent;
        m.escrowTok += sent;
      }
    }

    async function sign(m: Model, i: number, ceiling: bigint) {
      const mc = m.ch[i];
      await voucherSig(i, ceiling, false);
      if (!mc.ceilings.includes(ceiling)) mc.ceilings.push(ceiling);
      if (ceiling > mc.highest) mc.highest = ceiling;
    }

    async function claim(m: Model, caller: WalletClient, rows: PlannedRow[], ctx: string) {
      const a = addr(caller);
      const r =
        rows.length === 0
          ? { err: "BatchSettlementEmptyBatch", claimed: [], rcAdd: [] }
          : evalRows(m, rows, (row) => (isReceiverSide(a, row.ch) ? null : "BatchSettlementNotReceiverSide"));
      const ok = await tx(r.err, caller, "claim", [rows.map((x) => x.row)], ctx);
      if (ok) commitClaims(m, r.claimed, r.rcAdd);
    }

    async function claimWithSignature(m: Model, signer: number, relayer: number, rows: PlannedRow[], ctx: string) {
      let r: { err: string | null; claimed: bigint[]; rcAdd: bigint[] };
      if (rows.length === 0) r = { err: "BatchSettlementEmptyBatch", claimed: [], rcAdd: [] };
      else {
        const authorizer = chans[rows[0].ch].ra;
        if (authorizer !== signer) r = { err: "BatchSettlementInvalidAuthorizerSignature", claimed: [], rcAdd: [] };
        else
          r = evalRows(m, rows, (row) => (chans[row.ch].ra === authorizer ? null : "BatchSettlementMixedAuthorizer"));
      }
      const claimRows = rows.map((x) => x.row);
      // Same typed data as the fixture's signClaimBatch, with the channel ids precomputed.
      const sig = await ras[signer].signTypedData({
        account: ras[signer].account!,
        domain: f.domain,
        types: claimBatchTypes,
        primaryType: "ClaimBatch",
        message: {
          claims: rows.map((x) => ({
            channelId: chans[x.ch].id,
            maxClaimableAmount: x.ceiling,
            totalClaimed: x.target,
          })),
        },
      });
      const ok = await tx(r.err, relayers[relayer], "claimWithSignature", [claimRows, sig], ctx);
      if (ok) commitClaims(m, r.claimed, r.rcAdd);
    }

    async function settle(m: Model, recv: number, caller: WalletClient, ctx: string) {
      await tx(null, caller, "settle", [addr(receivers[recv]), f.usdc.address], ctx);
      const rc = m.rc[recv];
      const amount = rc.claimed - rc.settled;
      rc.settled = rc.claimed;
      m.recvTok[recv] += amount;
      m.escrowTok -= amount;
    }

    async function refund(m: Model, i: number, caller: WalletClient, amount: bigint, ctx: string) {
      const expected = !isReceiverSide(addr(caller), i)
        ? "BatchSettlementNotReceiverSide"
        : amount === 0n
          ? "BatchSettlementZeroRefund"
          : null;
      const ok = await tx(expected, caller, "refund", [chans[i].cfg, amount], ctx);
      if (ok) modelRefund(m, i, amount);
    }

    async function refundWithSignature(
      m: Model,
      i: number,
      amount: bigint,
      nonce: bigint,
      signer: Signer,
      signerAddr: Address,
      relayer: number,
      ctx: string,
    ) {
      const c = chans[i];
      const sig = await signRefund(signer, f.domain, c.id, nonce, amount);
      const expected =
        nonce !== m.ch[i].nonce
          ? "BatchSettlementInvalidRefundNonce"
          : signerAddr !== c.cfg.receiverAuthorizer
            ? "BatchSettlementInvalidAuthorizerSignature"
            : amount === 0n
              ? "BatchSettlementZeroRefund"
              : null;
      const ok = await tx(expected, relayers[relayer], "refundWithSignature", [c.cfg, amount, nonce, sig], ctx);
      if (ok) modelRefund(m, i, amount);
    }

    async function initiate(m: Model, i: number, caller: WalletClient, amount: bigint, ctx: string) {
      const mc = m.ch[i];
      const ts = await nextTimestamp();
      const expected = !isPayerSide(addr(caller), i)
        ? "BatchSettlementNotPayerSide"
        : amount === 0n
          ? "BatchSettlementNothingToWithdraw"
          : mc.wAt !== 0n
            ? "BatchSettlementWithdrawalPending"
            : amount > mc.bal - mc.claimed
              ? "BatchSettlementWithdrawExceedsAvailable"
              : null;
      const ok = await tx(expected, caller, "initiateWithdraw", [chans[i].cfg, amount], ctx);
      if (ok) {
        mc.wAmt = amount;
        mc.wAt = ts;
      }
    }

    async function finalize(m: Model, i: number, caller: WalletClient, ctx: string) {
      const mc = m.ch[i];
      const ts = await nextTimestamp();
      const expected = !isPayerSide(addr(caller), i)
        ? "BatchSettlementNotPayerSide"
        : mc.wAt === 0n
          ? "BatchSettlementWithdrawalNotPending"
          : ts < mc.wAt + chans[i].delay
            ? "BatchSettlementWithdrawDelayNotElapsed"
            : null;
      const ok = await tx(expected, caller, "finalizeWithdraw", [chans[i].cfg], ctx);
      if (ok) {
        const amount = min(mc.wAmt, mc.bal - mc.claimed);
        mc.wAmt = 0n;
        mc.wAt = 0n;
        mc.bal -= amount;
        m.payerTok[chans[i].payer] += amount;
        m.escrowTok -= amount;
      }
    }

    function pickAmount(kind: AmountKind, r: number, available: bigint, pending: bigint): bigint {
      const rr = big(r);
      switch (kind) {
        case "edge": {
          const x = (pending > 0n ? pending : available) + big(r % 3) - 1n;
          return x > 0n ? x : 0n;
        }
        case "zero":
          return 0n;
        case "some":
          return available > 0n ? 1n + (rr % available) : 1n + (rr % 1000n);
        case "all":
          return available;
        case "over":
          return available + 1n + (r % 2 === 0 ? 0n : rr % 1000n);
        case "max":
          return maxUint128;
      }
    }

    function pickPayerSideCaller(i: number, caller: "payer" | "auth" | "outsider", r: number): WalletClient {
      const c = chans[i];
      if (caller === "payer") return payers[c.payer];
      if (caller === "auth") return c.payerSide[c.payerSide.length - 1];
      const others = [outsider, payers[(c.payer + 1) % payers.length], ...(c.payerSide.includes(k0) ? [] : [k0])];
      return others[r % others.length];
    }

    async function runOp(m: Model, op: Op, ctx: string): Promise<boolean /* touched the chain */> {
      /** 4 times in 5, re-picks `ch` among the channels matching `pred` (when there are any). */
      const steer = (ch: number, r: number, pred: (mc: ChM) => boolean) => {
        const cands = m.ch.flatMap((mc, i) => (pred(mc) ? [i] : []));
        return cands.length > 0 && r % 5 !== 0 ? cands[ch % cands.length] : ch;
      };
      switch (op.op) {
        case "deposit": {
          const amount =
            op.kind === "zero"
              ? 0n
              : op.kind === "big"
                ? 1n + big(op.r % 200_000)
                : op.kind === "overBalance"
                  ? m.payerTok[chans[op.ch].payer] + 1n + big(op.r % 2 === 0 ? 0 : op.r % 1000)
                  : 1n + big(op.r % 5000);
          const mode = op.kind === "replay" ? "replay" : op.kind === "badSig" ? "badSig" : "fresh";
          await deposit(m, op.ch, amount, mode, op.relayer, ctx);
          return true;
        }
        case "sign": {
          const mc = m.ch[op.ch];
          const rr = big(op.r);
          const ceiling =
            op.kind === "raise"
              ? mc.highest + 1n + (rr % 4000n)
              : op.kind === "toBalance" && mc.bal > 0n
                ? mc.bal
                : mc.highest > 1n
                  ? 1n + (rr % mc.highest)
                  : 1n + (rr % 1000n);
          await sign(m, op.ch, ceiling);
          return false;
        }
        case "claim": {
          const first = op.rows.length > 0 ? op.rows[0].ch : 0;
          const caller =
            op.caller === "receiver"
              ? receivers[chans[first].recv]
              : op.caller === "ra"
                ? ras[chans[first].ra]
                : outsider;
          const a = addr(caller);
          const allowed = chans.filter((c) => isReceiverSide(a, c.idx)).map((c) => c.idx);
          const rows = await planRows(
            m,
            op.rows,
            (s, k) => (k === 0 || s.any || allowed.length === 0 ? s.ch : allowed[s.ch % allowed.length]),
            op.clean,
          );
          await claim(m, caller, rows, ctx);
          return true;
        }
        case "claimSig": {
          const allowed = chans.filter((c) => c.ra === op.ra).map((c) => c.idx);
          const rows = await planRows(m, op.rows, (s) => (s.any ? s.ch : allowed[s.ch % allowed.length]), op.clean);
          const authorizer = rows.length > 0 ? chans[rows[0].ch].ra : op.ra;
          const signer = op.signer === "ra" ? authorizer : 1 - authorizer;
          await claimWithSignature(m, signer, op.relayer, rows, ctx);
          return true;
        }
        case "settle": {
          const callers = [relayers[0], relayers[1], outsider, receivers[op.recv], payers[0]];
          await settle(m, op.recv, callers[op.caller % callers.length], ctx);
          return true;
        }
        case "refund": {
          const c = chans[op.ch];
          const caller =
            op.caller === "receiver"
              ? receivers[c.recv]
              : op.caller === "ra"
                ? ras[c.ra]
                : [outsider, payers[c.payer], receivers[1 - c.recv], ras[1 - c.ra]][op.r % 4];
          const mc = m.ch[op.ch];
          await refund(m, op.ch, caller, pickAmount(op.kind, op.r, mc.bal - mc.claimed, mc.wAmt), ctx);
          return true;
        }
        case "refundSig": {
          const c = chans[op.ch];
          const mc = m.ch[op.ch];
          const nonce =
            op.nonce === "current"
              ? mc.nonce
              : op.nonce === "stale" && mc.nonce > 0n
                ? mc.nonce - 1n
                : mc.nonce + 1n + big(op.r % 3);
          const signer: WalletClient =
            op.signer === "ra" ? ras[c.ra] : op.r % 2 === 0 ? ras[1 - c.ra] : receivers[c.recv];
          const amount = pickAmount(op.kind, op.r, mc.bal - mc.claimed, mc.wAmt);
          await refundWithSignature(m, op.ch, amount, nonce, signer, addr(signer), op.relayer, ctx);
          return true;
        }
        case "initiate": {
          // Mostly a channel where a withdrawal can start.
          const i = steer(op.ch, op.r, (mc) => mc.wAt === 0n && mc.bal > mc.claimed);
          const mc = m.ch[i];
          const kind: AmountKind = op.kind;
          await initiate(
            m,
            i,
            pickPayerSideCaller(i, op.caller, op.r),
            pickAmount(kind, op.r, mc.bal - mc.claimed, 0n),
            ctx,
          );
          return true;
        }
        case "finalize": {
          const i = steer(op.ch, op.r, (mc) => mc.wAt !== 0n);
          await finalize(m, i, pickPayerSideCaller(i, op.caller, op.r), ctx);
          return true;
        }
        case "time": {
          const i = steer(op.ch, op.r, (c) => c.wAt !== 0n);
          const mc = m.ch[i];
          const latest = big(await time.latest());
          let dt: bigint;
          if (op.kind === "random" || mc.wAt === 0n) dt = 1n + big(op.r % 5000);
          else {
            // Aim the next transaction's timestamp (latest + 1) at the withdrawal's finalizeAfter boundary.
            const fa = mc.wAt + chans[i].delay;
            const nextTx =
              op.kind === "before2"
                ? fa - 2n
                : op.kind === "before1"
                  ? fa - 1n
                  : op.kind === "exact"
                    ? fa
                    : fa + 1n + big(op.r % 500);
            dt = nextTx - 1n - latest;
            if (dt < 1n) dt = 1n + big(op.r % 50);
          }
          await time.increase(dt);
          return false;
        }
      }
    }

    /** Invariant 4: close everything and compare token balances with deposits and claims. */
    async function closeAll(
      m: Model,
      close: { claimMask: number; finalizeMask: number },
      initial: { payers: bigint[]; recvs: bigint[] },
    ) {
      let st = await check(m, "before closing", true);
      // 1. The receiver side claims what it wants: up to the highest voucher, within the balance.
      for (let a = 0; a < ras.length; a++) {
        const rows: PlannedRow[] = [];
        for (const c of chans) {
          const mc = m.ch[c.idx];
          if (c.ra !== a || !(close.claimMask & (1 << c.idx)) || mc.highest === 0n) continue;
          const target = min(mc.highest, mc.bal);
          if (target <= mc.claimed) continue;
          rows.push({
            ch: c.idx,
            ceiling: mc.highest,
            valid: true,
            target,
            row: {
              voucher: { channel: c.cfg, maxClaimableAmount: mc.highest },
              signature: await voucherSig(c.idx, mc.highest, false),
              totalClaimed: target,
            },
          });
        }
        if (rows.length === 0) continue;
        stats.closingTxs++;
        await claim(m, ras[a], rows, `closing claim by ra${a}`);
        await check(m, `after closing claim by ra${a}`);
      }
      // 2. Some pending withdrawals are finalized after their delay.
      const toFinalize = chans.filter((c) => m.ch[c.idx].wAt !== 0n && close.finalizeMask & (1 << c.idx));
      if (toFinalize.length > 0) {
        const lastDeadline = toFinalize.reduce((acc, c) => {
          const fa = m.ch[c.idx].wAt + c.delay;
          return fa > acc ? fa : acc;
        }, 0n);
        const latest = big(await time.latest());
        if (latest + 1n < lastDeadline) await time.increase(lastDeadline - 1n - latest);
        for (const c of toFinalize) {
          stats.closingTxs++;
          await finalize(m, c.idx, payers[c.payer], `closing finalize c${c.idx}`);
          await check(m, `after closing finalize c${c.idx}`);
        }
      }
      // 3. Each receiver refunds all unclaimed escrow of its channels and everyone is settled (one multicall each).
      for (let r = 0; r < receivers.length; r++) {
        const calls: Hex[] = [];
        for (const c of chans) {
          const mc = m.ch[c.idx];
          if (c.recv !== r || mc.bal === mc.claimed) continue;
          calls.push(encodeFunctionData({ abi: f.escrow.abi, functionName: "refund", args: [c.cfg, maxUint128] }));
          modelRefund(m, c.idx, maxUint128);
        }
        for (let s = 0; s < receivers.length; s++) {
          calls.push(
            encodeFunctionData({
              abi: f.escrow.abi,
              functionName: "settle",
              args: [addr(receivers[s]), f.usdc.address],
            }),
          );
          const rc = m.rc[s];
          m.recvTok[s] += rc.claimed - rc.settled;
          m.escrowTok -= rc.claimed - rc.settled;
          rc.settled = rc.claimed;
        }
        stats.closingTxs++;
        await tx(null, receivers[r], "multicall", [calls], `closing multicall by r${r}`);
        st = await check(m, `after closing multicall by r${r}`);
      }
      // 4. Token balances against deposits and claims, on the chain's numbers (the model agrees with them).
      const claimedBy = (pred: (c: Chan) => boolean) =>
        chans.filter(pred).reduce((acc, c) => acc + st.ch[c.idx].claimed, 0n);
      for (let i = 0; i < NCH; i++) {
        if (st.ch[i].bal !== st.ch[i].claimed)
          fail(`after closing: c${i} balance ${st.ch[i].bal} != totalClaimed ${st.ch[i].claimed}`);
      }
      for (let p = 0; p < payers.length; p++) {
        const expected = initial.payers[p] - claimedBy((c) => c.payer === p);
        eq(st.tok[1 + p], expected, `after closing: payer p${p} tokens == initial - claimed from its channels`);
      }
      for (let r = 0; r < receivers.length; r++) {
        const expected = initial.recvs[r] + claimedBy((c) => c.recv === r);
        eq(
          st.tok[1 + payers.length + r],
          expected,
          `after closing: receiver r${r} tokens == initial + claimed from its channels`,
        );
      }
      eq(st.tok[0], 0n, "after closing: escrow token balance");
      for (let j = 0; j < receivers.length; j++)
        eq(st.rc[j].settled, st.rc[j].claimed, `after closing: receiver r${j} fully settled`);
    }

    // --------------------------------------------------------------------------------------------
    // Base state (driven through the same model-checked operations)
    // --------------------------------------------------------------------------------------------

    const initial = {
      payers: await Promise.all(payers.map((p) => tokenBalance(addr(p)))),
      recvs: await Promise.all(receivers.map((r) => tokenBalance(addr(r)))),
    };
    const model0: Model = {
      ch: chans.map(() => ({
        bal: 0n,
        claimed: 0n,
        wAmt: 0n,
        wAt: 0n,
        nonce: 0n,
        highest: 0n,
        ceilings: [],
        lastDep: null,
      })),
      rc: receivers.map(() => ({ claimed: 0n, settled: 0n })),
      payerTok: [...initial.payers],
      recvTok: [...initial.recvs],
      escrowTok: await tokenBalance(f.escrow.address),
    };
    expect(model0.escrowTok).to.equal(0n);
    await check(model0, "fresh escrow", true);
    {
      const m = model0;
      const deposits = [5000n, 8000n, 3000n, 6000n, 4000n];
      for (let i = 0; i < deposits.length; i++) await deposit(m, i, deposits[i], "fresh", i % 2, `base deposit c${i}`);
      const ceilings = [3000n, 2000n, 3000n, 10_000n, 1000n];
      for (let i = 0; i < ceilings.length; i++) await sign(m, i, ceilings[i]);
      await claim(
        m,
        receivers[0],
        await planRows(m, [{ ch: 0, any: true, v: "highest", t: "partial", r: 999 }], (s) => s.ch),
        "base claim c0",
      );
      await claimWithSignature(
        m,
        1,
        0,
        await planRows(m, [{ ch: 1, any: true, v: "highest", t: "max", r: 0 }], (s) => s.ch),
        "base claimSig c1",
      );
      await settle(m, 1, relayers[1], "base settle r1");
      await initiate(m, 2, payers[1], 1000n, "base initiate c2");
      await initiate(m, 4, k0, 2500n, "base initiate c4");
      await refund(m, 3, receivers[1], 500n, "base refund c3");
      await check(m, "base state", true);
      await locateSlots();
      await check(m, "base state");
    }
    let baseSnapshot = (await rpc("evm_snapshot")) as Hex;

    // --------------------------------------------------------------------------------------------
    // The property
    // --------------------------------------------------------------------------------------------

    try {
      await fc.assert(
        fc.asyncProperty(runArb, async ({ ops, close }) => {
          if (!(await rpc("evm_revert", [baseSnapshot]))) fail("evm_revert failed");
          baseSnapshot = (await rpc("evm_snapshot")) as Hex;
          const m: Model = structuredClone(model0);
          stats.sequences++;
          for (let k = 0; k < ops.length; k++) {
            const ctx = `op #${k} ${JSON.stringify(ops[k])}`;
            stats.ops++;
            const touched = await runOp(m, ops[k], ctx);
            if (touched) await check(m, `after ${ctx}`);
          }
          await closeAll(m, close, initial);
        }),
        { numRuns: RUNS },
      );
    } finally {
      await rpc("evm_revert", [outerSnapshot]);
    }

    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    const perFn = Object.entries(txCounts)
      .map(([fn, c]) => `${fn} ${c.ok}/${c.reverted}`)
      .join(", ");
    console.log(
      `      invariants: ${stats.sequences} sequences, ${stats.ops} ops, ${stats.txs} txs ` +
        `(${stats.expectedReverts} expected reverts, ${stats.closingTxs} closing), ${stats.viewChecks} view checks, ` +
        `${secs} s; ok/reverted per function: ${perFn}`,
    );
  });
});
