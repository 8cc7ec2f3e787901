/**
 * The payer: opens channels and signs cumulative vouchers for x402 `batch-settlement`.
 *
 * Concurrency: requests through one payer on the same channel are serialized (a per-channel queue held
 * from signing a voucher until its response is verified), because a cumulative voucher is only valid
 * for the charge that immediately follows the previous one. Parallel requests to different payees run
 * in parallel. A caller that needs parallelism towards one payee creates payers with different salts
 * (one channel each).
 */
import {
  type Account,
  type Address,
  type Chain,
  type Hex,
  type PublicClient,
  type Transport,
  type WalletClient,
  keccak256,
  recoverTypedDataAddress,
  toHex,
  zeroAddress,
  getAddress,
} from "viem";
import { batchSettlementAbi } from "../chain/abi";
import { ChainError, ErrorCodes, PolicyError, ServerMisbehaviorError, TollwayError } from "../protocol/errors";
import { erc3009DepositNonce } from "../protocol/collectorData";
import {
  BATCH_SETTLEMENT_SCHEME,
  CANONICAL_ADDRESSES,
  type ChannelConfig,
  computeChannelId,
  escrowDomain,
  receiveWithAuthorizationTypes,
  voucherTypes,
  type EscrowDomain,
} from "../protocol/typedData";
import { encodeBase64Json, requirementsToWire, type PaymentRequirements } from "../protocol/wire";
import type { PayerChannel, PayerStore } from "./store";

/** Anything that signs EIP-712 typed data: a viem LocalAccount or a wallet client (EIP-1193 in browsers). */
export type TypedDataSigner =
  | { address: Address; signTypedData: (args: any) => Promise<Hex> }
  | WalletClient<Transport, Chain | undefined, Account>;

export type PayerPolicy = {
  /** Most one request may cost (atomic units; default 1,000,000: $1 of a 6-decimal stablecoin). */
  maxPerRequest?: bigint;
  /** Largest single deposit (atomic units; default 20,000,000: $20 of a 6-decimal stablecoin). */
  maxDeposit?: bigint;
  /** A new deposit covers this many requests at the current price (default 50). */
  depositMultiplier?: number;
  /** Most this payer pays in total over all channels (atomic units). */
  budget?: bigint;
  /**
   * Longest withdraw delay (seconds) of a channel this payer deposits into: the time its money is locked
   * if the payee stops cooperating (the payee chooses it, 15 min to 30 days). Default: no limit.
   */
  maxWithdrawDelay?: number;
  allowedPayTo?: readonly Address[];
  allowedAssets?: readonly Address[];
};

export type CreatePayerParameters = {
  /** Owns the funds: signs deposits (ERC-3009) and, without a session key, vouchers. */
  account: TypedDataSigner;
  /** The channel's payer when it is not `account` (an ERC-1271 smart wallet that `account` controls). */
  payerAddress?: Address;
  /** A hot key that becomes the channel's payerAuthorizer and signs vouchers silently. */
  sessionKey?: { address: Address; signTypedData: (args: any) => Promise<Hex> };
  store: PayerStore;
  chainId: number;
  escrow?: Address;
  erc3009Collector?: Address;
  /** Reads the chain for recovery after state loss (optional). */
  publicClient?: PublicClient<Transport, Chain>;
  /** Sends initiateWithdraw / finalizeWithdraw (the payer's own transactions). */
  walletClient?: WalletClient<Transport, Chain, Account>;
  /** Distinguishes this payer's channels from its others with the same payee (default 0). */
  salt?: Hex;
  policy?: PayerPolicy;
  /**
   * Serializes the requests of one channel (a voucher is valid only for the next charge). Default: one
   * lock per store object in this process (payers built on the same store share it). Payers that share a
   * store from several processes or browser tabs pass a lock that spans them (the browser build uses the
   * Web Locks API).
   */
  lock?: ChannelLock;
};

/** A per-channel mutex: `acquire` resolves, once the channel is free, with the function that frees it. */
export type ChannelLock = { acquire(channelId: string): Promise<() => void> };

export type PreparedPayment = {
  header: string;
  channelId: Hex;
  requirements: PaymentRequirements;
  kind: "deposit" | "voucher";
  max: bigint;
  /** The channel's signed ceiling before this voucher (`max` above it: this voucher adds exposure). */
  ceiling: bigint;
  deposit?: bigint;
  /** Releases the channel without recording a charge. */
  release(): void;
};

/** Default caps (atomic units): $1 a request and $20 a deposit of a 6-decimal stablecoin. Set others explicitly. */
export const DEFAULT_MAX_PER_REQUEST = 1_000_000n;
export const DEFAULT_MAX_DEPOSIT = 20_000_000n;

/** The PAYMENT-RESPONSE (settle response) a payer checks. */
export type SettleResponseBody = {
  success: boolean;
  /** Why it failed, with success false. */
  errorReason?: string;
  transaction?: string;
  amount?: string;
  extra?: { chargedAmount?: string; channelState?: { channelId: string; balance: string; totalClaimed?: string; chargedCumulativeAmount?: string } };
};

/**
 * A server-sent amount: a non-negative decimal string (a negative one would pass every comparison the
 * payer makes), else undefined.
 */
function decimalAmount(v: unknown): bigint | undefined {
  return typeof v === "string" && /^(0|[1-9]\d{0,77})$/.test(v) ? BigInt(v) : undefined;
}

/** Longest life of a deposit's ERC-3009 authorization (s) for a payer that reads the chain's clock, whatever the payee's maxTimeoutSeconds. */
export const DEPOSIT_AUTHORIZATION_TTL_S = 600;

const ERC6492_SUFFIX = "6492".repeat(16);

/**
 * What every payer in this process built on one store object shares: the default channel lock, and the
 * prices of payments being prepared (the budget check sees them before their signedMax is stored).
 */
const perStore = new WeakMap<object, { queue: Queue; reserved: { amount: bigint } }>();
function sharedOf(store: object): { queue: Queue; reserved: { amount: bigint } } {
  let s = perStore.get(store);
  if (!s) perStore.set(store, (s = { queue: new Queue(), reserved: { amount: 0n } }));
  return s;
}

class Queue implements ChannelLock {
  private tails = new Map<string, Promise<void>>();
  async acquire(key: string): Promise<() => void> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    };
  }
}

async function signTyped(signer: TypedDataSigner, args: any): Promise<Hex> {
  if ("transport" in signer) return signer.signTypedData({ account: signer.account!, ...args });
  return signer.signTypedData(args);
}

function signerAddress(signer: TypedDataSigner): Address {
  return "transport" in signer ? signer.account!.address : signer.address;
}

export class Payer {
  readonly payer: Address;
  readonly payerAuthorizer: Address;
  readonly domain: EscrowDomain;
  readonly network: string;
  readonly policy: PayerPolicy;
  private readonly queue: ChannelLock;
  private readonly escrow: Address;
  private readonly collector: Address;
  private readonly salt: Hex;

  constructor(readonly params: CreatePayerParameters) {
    this.queue = params.lock ?? sharedOf(params.store).queue;
    this.escrow = params.escrow ?? CANONICAL_ADDRESSES.batchSettlement;
    this.collector = params.erc3009Collector ?? CANONICAL_ADDRESSES.erc3009DepositCollector;
    this.domain = escrowDomain(params.chainId, this.escrow);
    this.network = `eip155:${params.chainId}`;
    const owner = signerAddress(params.account);
    this.payer = getAddress(params.payerAddress ?? owner);
    this.payerAuthorizer = params.sessionKey
      ? getAddress(params.sessionKey.address)
      : params.payerAddress && getAddress(params.payerAddress) !== getAddress(owner)
        ? zeroAddress // smart wallet: vouchers are checked by ERC-1271 on the payer
        : this.payer;
    this.salt = params.salt ?? toHex(0, { size: 32 });
    // Caps by default: a payee's 402 names the price, and vouchers are signed without a prompt.
    const policy = params.policy ?? {};
    this.policy = { ...policy, maxPerRequest: policy.maxPerRequest ?? DEFAULT_MAX_PER_REQUEST, maxDeposit: policy.maxDeposit ?? DEFAULT_MAX_DEPOSIT };
  }

  get store(): PayerStore {
    return this.params.store;
  }

  /** The channel config this payer uses with a payee's requirements. */
  configFor(r: PaymentRequirements): ChannelConfig {
    return {
      payer: this.payer,
      payerAuthorizer: this.payerAuthorizer,
      receiver: r.payTo,
      receiverAuthorizer: r.extra.receiverAuthorizer,
      token: r.asset,
      withdrawDelay: r.extra.withdrawDelay,
      salt: this.salt,
    };
  }

  channelIdFor(r: PaymentRequirements): Hex {
    return computeChannelId(this.domain, this.configFor(r));
  }

  /** Picks the batch-settlement requirement on this payer's network that its policy allows. */
  select(accepts: readonly PaymentRequirements[], o: { forRefund?: boolean } = {}): PaymentRequirements {
    const candidates = accepts.filter((a) => a.scheme === BATCH_SETTLEMENT_SCHEME && a.network === this.network);
    if (candidates.length === 0) {
      throw new PolicyError("no_matching_requirement", `no batch-settlement requirement on ${this.network}`);
    }
    let lastError: PolicyError | undefined;
    for (const a of candidates) {
      try {
        this.checkPolicy(a, o.forRefund);
        return a;
      } catch (e) {
        lastError = e as PolicyError;
      }
    }
    throw lastError!;
  }

  /** Payee and asset allow-lists; the price cap too, except for a (zero-charge) refund. */
  private checkPolicy(a: PaymentRequirements, forRefund = false) {
    const p = this.policy;
    if (p.allowedPayTo && !p.allowedPayTo.some((x) => getAddress(x) === a.payTo)) {
      throw new PolicyError("pay_to_not_allowed", `payTo ${a.payTo} is not in the allowed list`);
    }
    if (p.allowedAssets && !p.allowedAssets.some((x) => getAddress(x) === a.asset)) {
      throw new PolicyError("asset_not_allowed", `asset ${a.asset} is not in the allowed list`);
    }
    if (!forRefund && p.maxPerRequest !== undefined && a.amount > p.maxPerRequest) {
      throw new PolicyError("max_per_request", `price ${a.amount} exceeds the maximum per request ${p.maxPerRequest}`);
    }
    if (!forRefund && p.maxWithdrawDelay !== undefined && a.extra.withdrawDelay > p.maxWithdrawDelay) {
      throw new PolicyError("withdraw_delay", `the payee's withdraw delay of ${a.extra.withdrawDelay} s exceeds the maximum ${p.maxWithdrawDelay} s`);
    }
  }

  /**
   * Signs the payment for one request under `r` (a voucher, or a deposit plus voucher when the channel
   * is missing or too low) and holds the channel until `complete` or `release`.
   */
  async prepare(r: PaymentRequirements, opts: { deposit?: bigint; maxAmount?: bigint } = {}): Promise<PreparedPayment> {
    this.checkPolicy(r);
    // This call's own cap (a page showing "unlock for 1c" pays no more than 1c, whatever the 402 asks).
    if (opts.maxAmount !== undefined && r.amount > opts.maxAmount) {
      throw new PolicyError("max_per_request", `price ${r.amount} exceeds this request's maximum ${opts.maxAmount}`);
    }
    const config = this.configFor(r);
    const channelId = computeChannelId(this.domain, config);
    const unlock = await this.queue.acquire(channelId);
    // The budget counts this payment's price from here until it completes or is released: payments
    // prepared in parallel on other channels see it.
    const { reserved } = sharedOf(this.store);
    let held = 0n;
    const release = () => {
      reserved.amount -= held;
      held = 0n;
      unlock();
    };
    try {
      let ch = await this.loadChannel(channelId, config);
      if (ch.halted) throw new PolicyError("channel_halted", `channel ${channelId} is halted: ${ch.halted}`);
      let budgetLeft: bigint | undefined;
      if (this.policy.budget !== undefined) {
        // What payees could claim: what was charged, plus every voucher signed above it (a request that
        // got no answer, a metered charge below its ceiling), plus payments in flight on other channels.
        let committed = 0n;
        for (const c of await this.store.channels()) committed += c.spent + (c.channelId !== channelId && c.signedMax > c.charged ? c.signedMax - c.charged : 0n);
        const own = ch.signedMax > ch.charged + r.amount ? ch.signedMax - ch.charged : r.amount;
        if (committed + reserved.amount + own > this.policy.budget) {
          throw new PolicyError("budget", `paying ${r.amount} would exceed the budget ${this.policy.budget} (spent or signed ${committed}, in flight ${reserved.amount})`);
        }
        budgetLeft = this.policy.budget - committed - reserved.amount;
        held = r.amount;
        reserved.amount += held;
      }
      const max = ch.charged + r.amount;
      let deposit: bigint | undefined = opts.deposit;
      if (deposit !== undefined && this.policy.maxDeposit !== undefined && deposit > this.policy.maxDeposit) {
        throw new PolicyError("max_deposit", `a deposit of ${deposit} exceeds the maximum ${this.policy.maxDeposit}`);
      }
      if (deposit !== undefined && ch.balance + deposit < max) {
        throw new PolicyError("max_deposit", `a deposit of ${deposit} does not cover the next charge (needs ${max - ch.balance})`);
      }
      if (deposit === undefined && max > ch.balance) {
        // The chain first: a deposit can be there unrecorded (the payee relayed it, then the request
        // failed and its answer carried no PAYMENT-RESPONSE). A higher balance on chain is money of ours.
        const onchain = await this.chainBalance(channelId);
        if (onchain !== undefined && onchain > ch.balance) {
          ch = { ...ch, balance: onchain, updatedAt: Date.now() };
          await this.store.putChannel(ch);
        }
      }
      if (deposit === undefined && max > ch.balance) {
        const needed = max - ch.balance;
        const target = r.amount * BigInt(this.policy.depositMultiplier ?? 50);
        deposit = target > needed ? target : needed;
        // No more into escrow than the budget can still spend (at least what the next charge needs).
        if (budgetLeft !== undefined && deposit > budgetLeft) deposit = budgetLeft > needed ? budgetLeft : needed;
        if (this.policy.maxDeposit !== undefined && deposit > this.policy.maxDeposit) {
          if (needed > this.policy.maxDeposit) {
            throw new PolicyError("max_deposit", `a deposit of at least ${needed} is needed; the maximum is ${this.policy.maxDeposit}`);
          }
          deposit = this.policy.maxDeposit;
        }
      }
      if (deposit) {
        // A payee this payer caught breaking the rules gets no new deposit on another channel (a changed
        // receiverAuthorizer or withdrawDelay makes a new channel id).
        const halted = (await this.store.channels()).find((c) => c.halted && c.channelId !== channelId && getAddress(c.config.receiver) === getAddress(config.receiver) && getAddress(c.config.token) === getAddress(config.token));
        if (halted) throw new PolicyError("payee_halted", `payee ${config.receiver} broke the rules on channel ${halted.channelId} (${halted.halted}): no new deposit to it`);
      }
      const voucher = await this.signVoucher(channelId, max);
      const payload = deposit
        ? {
            type: "deposit",
            channelConfig: config,
            voucher,
            deposit: { amount: deposit.toString(), authorization: { erc3009Authorization: await this.signDeposit(r, config, channelId, deposit) } },
          }
        : { type: "voucher", channelConfig: config, voucher };
      if (max > ch.signedMax) await this.store.putChannel({ ...ch, signedMax: max, updatedAt: Date.now() });
      // From here the store's signedMax carries this payment for the budget: the reservation is done.
      reserved.amount -= held;
      held = 0n;
      const header = encodeBase64Json({ x402Version: 2, accepted: requirementsToWire(r), payload });
      return { header, channelId, requirements: r, kind: deposit ? "deposit" : "voucher", max, ceiling: ch.signedMax, deposit, release };
    } catch (e) {
      release();
      throw e;
    }
  }

  /**
   * Applies the scheme's client verification rules to a paid response and records the charge; on a
   * violation the channel is halted and ServerMisbehaviorError thrown. Releases the channel.
   */
  async complete(p: PreparedPayment, body: SettleResponseBody): Promise<{ charged: bigint; balance: bigint }> {
    try {
      const ch = (await this.store.getChannel(p.channelId))!;
      const state = body.extra?.channelState;
      const halt = async (why: string): Promise<never> => {
        await this.store.putChannel({ ...ch, halted: why, updatedAt: Date.now() });
        throw new ServerMisbehaviorError(p.channelId, why);
      };
      // Amounts are non-negative decimal strings: a negative charge would pass every comparison below.
      const charged = decimalAmount(body.extra?.chargedAmount);
      if (!body.success || charged === undefined || !state) return halt("paid response without a valid chargedAmount and channelState");
      if (decimalAmount(state.chargedCumulativeAmount) === undefined || decimalAmount(state.balance) === undefined) return halt("paid response with malformed channel amounts");
      if (charged > p.requirements.amount) return halt(`charged ${charged} exceeds the price ${p.requirements.amount}`);
      if (state.channelId.toLowerCase() !== p.channelId.toLowerCase()) return halt(`response is for channel ${state.channelId}`);
      const cumulative = BigInt(state.chargedCumulativeAmount ?? "-1");
      if (cumulative !== ch.charged + charged) return halt(`cumulative ${cumulative} is not ${ch.charged} + ${charged}`);
      const balance = BigInt(state.balance);
      if (balance < cumulative) return halt(`balance ${balance} is below the charged ${cumulative}`);
      // Rule 3: the balance only goes down by this payer's own withdrawal or refund (recorded in its store).
      // A lower report is not taken on the payee's word (it could make the payer deposit again and again),
      // nor a reason to halt (a payee's mirror can lag a top-up): the chain decides, else what we expect.
      const expected = ch.balance + (p.deposit ?? 0n);
      let kept = balance;
      if (balance < expected) {
        const onchain = await this.chainBalance(p.channelId);
        kept = onchain !== undefined && onchain >= cumulative ? onchain : expected;
      }
      if (p.deposit !== undefined && (body.amount !== p.deposit.toString() || !body.transaction)) {
        return halt(`deposit of ${p.deposit} not confirmed by the response (amount ${body.amount})`);
      }
      await this.store.putChannel({ ...ch, charged: cumulative, balance: kept, spent: ch.spent + charged, updatedAt: Date.now() });
      return { charged, balance: kept };
    } finally {
      p.release();
    }
  }

  /**
   * Adopts the server's state from a corrective 402, but only if its proof is the payer's own signature
   * over the claimed cumulative amount, or the amount is no more than this payer already signed for, or
   * it equals the claimed total read from the chain (never the server's word for it). Returns the
   * channel's charges after it (wrapFetch's `Exchange` says what a request does with them).
   */
  async correct(r: PaymentRequirements, extra: Record<string, any>): Promise<bigint> {
    const config = this.configFor(r);
    const channelId = computeChannelId(this.domain, config);
    const release = await this.queue.acquire(channelId);
    try {
      const ch = await this.loadChannel(channelId, config);
      const state = extra.channelState;
      if (!state || String(state.channelId).toLowerCase() !== channelId.toLowerCase()) {
        throw new ServerMisbehaviorError(channelId, "corrective 402 without this channel's state");
      }
      const claimed = decimalAmount(state.chargedCumulativeAmount);
      const reported = decimalAmount(state.balance);
      if (claimed === undefined || reported === undefined) throw new ServerMisbehaviorError(channelId, "corrective 402 with malformed amounts");
      // As in complete(): a lower balance only from the chain.
      let balance = reported >= ch.balance ? reported : ((await this.chainBalance(channelId)) ?? ch.balance);
      const proof = extra.voucherState as { signedMaxClaimable?: string; signature?: Hex } | undefined;
      let ok = false;
      let proven: bigint | undefined;
      if (proof?.signature && proof.signedMaxClaimable !== undefined) {
        const signedMax = decimalAmount(proof.signedMaxClaimable);
        if (signedMax === undefined) throw new ServerMisbehaviorError(channelId, "corrective 402 with a malformed voucher proof");
        ok = claimed <= signedMax && (await this.isOwnVoucher(channelId, signedMax, proof.signature));
        proven = signedMax;
      } else if (claimed <= ch.signedMax) {
        // No proof, but no more than this payer has already signed for: its exposure does not grow
        // (a server that lost its state going back to the on-chain baseline lands here).
        ok = true;
      } else {
        // No proof and above what we signed: only the chain's own claimed total is a baseline (the
        // server's `totalClaimed` field is its word, not the chain's).
        const chain = await this.chainChannel(channelId, { strict: true });
        ok = chain !== undefined && claimed === chain.totalClaimed;
        if (chain) balance = chain.balance;
      }
      if (!ok) {
        throw new ServerMisbehaviorError(channelId, `corrective 402 claims ${claimed} without a valid voucher of ours or the chain's claimed total`);
      }
      // What the correction adds counts against the budget like any charge.
      const spent = ch.spent + (claimed > ch.charged ? claimed - ch.charged : 0n);
      // The exposure is the highest ceiling signed: the proof's, if it is above what this store knew.
      const ceiling = [claimed, proven ?? 0n, ch.signedMax].reduce((a, b) => (a > b ? a : b));
      await this.store.putChannel({ ...ch, charged: claimed, balance, spent, signedMax: ceiling, updatedAt: Date.now() });
      return claimed;
    } finally {
      release();
    }
  }

  /** The refund payload (cooperative close) for the channel under `r`; `amount` omitted = full refund. */
  async refundHeader(r: PaymentRequirements, amount?: bigint): Promise<{ header: string; channelId: Hex }> {
    const config = this.configFor(r);
    const channelId = computeChannelId(this.domain, config);
    const ch = await this.loadChannel(channelId, config);
    const voucher = await this.signVoucher(channelId, ch.charged);
    const payload = { type: "refund", channelConfig: config, voucher, ...(amount !== undefined ? { amount: amount.toString() } : {}) };
    return { header: encodeBase64Json({ x402Version: 2, accepted: requirementsToWire(r), payload }), channelId };
  }

  /** Records a completed refund (the server's post-refund channel state). */
  async refunded(channelId: Hex, body: SettleResponseBody): Promise<void> {
    if (!body.success) throw new TollwayError(`the refund of channel ${channelId} failed${body.errorReason ? ` (${body.errorReason})` : ""}: nothing was refunded`);
    const ch = await this.store.getChannel(channelId);
    if (!ch) return;
    const state = body.extra?.channelState;
    if (!body.transaction || (state && state.channelId.toLowerCase() !== channelId.toLowerCase())) {
      throw new ServerMisbehaviorError(channelId, "refund answer without a transaction for this channel");
    }
    // The chain says what the balance is now, once the refund is in; the server's word only without it.
    let balance: bigint | undefined;
    if (this.params.publicClient) {
      const receipt = await this.params.publicClient.waitForTransactionReceipt({ hash: body.transaction as Hex, timeout: 60_000 }).catch(() => undefined);
      if (receipt?.status === "reverted") throw new ServerMisbehaviorError(channelId, `the refund transaction ${body.transaction} reverted: nothing was refunded`);
      if (receipt?.status === "success") balance = await this.chainBalance(channelId);
    }
    balance ??= BigInt(state?.balance ?? ch.balance);
    await this.store.putChannel({ ...ch, balance, updatedAt: Date.now() });
  }

  /**
   * Re-reads the channel from the chain after a refusal that says the local view is off
   * (`cumulative_exceeds_balance`, `channel_not_found`, `cumulative_below_claimed`): a lower balance is
   * taken (the next payment deposits what is missing), and a claimed total above the local charges
   * becomes the charges (the chain claims only vouchers this payer signed: that money is spent either
   * way). Without a chain client only `cumulative_exceeds_balance` is acted on, by taking the balance as
   * spent (the payee's word, but all it can cause is a deposit into the payer's own channel). Returns
   * the channel's charges after it.
   */
  async resyncFromChain(r: PaymentRequirements, code: string): Promise<bigint | undefined> {
    const config = this.configFor(r);
    const channelId = computeChannelId(this.domain, config);
    const release = await this.queue.acquire(channelId);
    try {
      const ch = await this.store.getChannel(channelId);
      if (!ch) return undefined;
      const chain = await this.chainChannel(channelId);
      if (!chain && code !== ErrorCodes.cumulativeExceedsBalance) return ch.charged;
      const balance = chain?.balance ?? ch.charged;
      const claimed = chain && chain.totalClaimed > ch.charged ? chain.totalClaimed : ch.charged;
      if (balance >= ch.balance && claimed === ch.charged) return ch.charged;
      await this.store.putChannel({
        ...ch,
        balance: balance < ch.balance ? balance : ch.balance,
        charged: claimed,
        spent: ch.spent + (claimed - ch.charged),
        signedMax: claimed > ch.signedMax ? claimed : ch.signedMax,
        updatedAt: Date.now(),
      });
      return claimed;
    } finally {
      release();
    }
  }

  /** The channel's balance on chain, or undefined without a chain client or when the read fails. */
  private async chainBalance(channelId: Hex): Promise<bigint | undefined> {
    return (await this.chainChannel(channelId))?.balance;
  }

  /**
   * The channel's balance and claimed total on chain; undefined without a chain client, and when the read
   * fails unless `strict` (then a ChainError: an RPC failure must not read as the server's fault).
   */
  private async chainChannel(channelId: Hex, o: { strict?: boolean } = {}): Promise<{ balance: bigint; totalClaimed: bigint } | undefined> {
    if (!this.params.publicClient) return undefined;
    try {
      const [balance, totalClaimed] = await this.params.publicClient.readContract({ address: this.escrow, abi: batchSettlementAbi, functionName: "channels", args: [channelId] });
      return { balance, totalClaimed };
    } catch (cause) {
      if (o.strict) throw new ChainError(ErrorCodes.rpcReadFailed, "could not read the channel from the chain", { cause });
      return undefined;
    }
  }

  /** Waits for `hash` (when a public client is configured) and throws if it reverted. */
  private async confirmed(hash: Hex, what: string): Promise<void> {
    const receipt = await this.params.publicClient?.waitForTransactionReceipt({ hash });
    if (receipt && receipt.status !== "success") throw new ChainError(ErrorCodes.transactionReverted, `${what} reverted`, { metaMessages: [`tx: ${hash}`] });
  }

  /**
   * What a timed withdrawal asks for: everything not claimed on chain. That is the scheme's rule, and it
   * costs an honest payee nothing: the escrow pays out only what is still unclaimed at finalize, and the
   * payee claims its charges during the delay (a Tollway node's watcher does). A payee that is gone, or
   * never claims, forfeits them. One rule for every front (CLI, browser).
   */
  async withdrawable(channelId: Hex): Promise<bigint> {
    const chain = await this.chainChannel(channelId, { strict: true });
    if (!chain) throw new TollwayError("a publicClient is needed to read the channel's balance");
    return chain.balance - chain.totalClaimed;
  }

  /** The timed withdrawal, for when the payee does not cooperate: initiate, then finalize after the delay. */
  async initiateWithdraw(config: ChannelConfig, amount: bigint): Promise<Hex> {
    const w = this.requireWallet();
    const hash = await w.writeContract({ address: this.escrow, abi: batchSettlementAbi, functionName: "initiateWithdraw", args: [config, amount], chain: w.chain, account: w.account });
    await this.confirmed(hash, "initiateWithdraw");
    return hash;
  }

  async finalizeWithdraw(config: ChannelConfig): Promise<Hex> {
    const w = this.requireWallet();
    const hash = await w.writeContract({ address: this.escrow, abi: batchSettlementAbi, functionName: "finalizeWithdraw", args: [config], chain: w.chain, account: w.account });
    await this.confirmed(hash, "finalizeWithdraw");
    // The stored balance follows the chain, under the channel's lock (as a payment's record is written).
    // The money has moved: a lock that cannot be had (another tab paying) skips the update, never the hash.
    const id = computeChannelId(this.domain, config);
    let release: () => void;
    try {
      release = await this.queue.acquire(id);
    } catch {
      return hash;
    }
    try {
      const ch = await this.store.getChannel(id);
      const chain = ch ? await this.chainChannel(id) : undefined; // unread: the next payment's checks resync it
      if (ch && chain) await this.store.putChannel({ ...ch, balance: chain.balance, updatedAt: Date.now() });
    } catch {
      // The withdrawal is done either way: the stored balance is resynchronised by the next payment's checks.
    } finally {
      release();
    }
    return hash;
  }

  // -------------------------------------------------------------------------------------------

  private requireWallet() {
    if (!this.params.walletClient) throw new TollwayError("a walletClient is needed for on-chain withdrawals");
    return this.params.walletClient;
  }

  private async loadChannel(channelId: Hex, config: ChannelConfig): Promise<PayerChannel> {
    const known = await this.store.getChannel(channelId);
    if (known) return known;
    // Cold start: the channel id is deterministic; the chain says what is deposited and claimed.
    let balance = 0n;
    let totalClaimed = 0n;
    if (this.params.publicClient) {
      [balance, totalClaimed] = await this.params.publicClient.readContract({ address: this.escrow, abi: batchSettlementAbi, functionName: "channels", args: [channelId] });
    }
    const ch: PayerChannel = { channelId, config, network: this.network, charged: totalClaimed, signedMax: totalClaimed, balance, spent: 0n, updatedAt: Date.now() };
    await this.store.putChannel(ch);
    return ch;
  }

  private voucherSigner() {
    return this.params.sessionKey ?? this.params.account;
  }

  private async signVoucher(channelId: Hex, max: bigint) {
    const signature = await signTyped(this.voucherSigner(), {
      domain: this.domain,
      types: voucherTypes,
      primaryType: "Voucher",
      message: { channelId, maxClaimableAmount: max },
    });
    return { channelId, maxClaimableAmount: max.toString(), signature };
  }

  private async isOwnVoucher(channelId: Hex, max: bigint, signature: Hex): Promise<boolean> {
    // ERC-6492 wraps a signature of a wallet not deployed yet; the escrow's ERC-1271 check does not unwrap it.
    if (signature.toLowerCase().endsWith(ERC6492_SUFFIX)) return false;
    // A smart-wallet payer (payerAuthorizer 0) signs in its wallet's own format (a Safe's, a passkey
    // wallet's): its voucher is whatever the wallet's ERC-1271 check accepts, as the escrow asks it.
    if (this.payerAuthorizer === zeroAddress && this.params.publicClient) {
      const valid = await this.params.publicClient
        .verifyTypedData({ address: this.payer, domain: this.domain, types: voucherTypes, primaryType: "Voucher", message: { channelId, maxClaimableAmount: max }, signature })
        .catch(() => false);
      if (valid) return true;
    }
    try {
      const signer = await recoverTypedDataAddress({
        domain: this.domain,
        types: voucherTypes,
        primaryType: "Voucher",
        message: { channelId, maxClaimableAmount: max },
        signature,
      });
      return getAddress(signer) === getAddress(signerAddress(this.voucherSigner()));
    } catch {
      return false;
    }
  }

  private async signDeposit(r: PaymentRequirements, config: ChannelConfig, channelId: Hex, amount: bigint) {
    if (!r.extra.name || !r.extra.version) {
      throw new PolicyError("no_matching_requirement", "the requirement lacks the token's EIP-712 name and version");
    }
    const salt = keccak256(toHex(`${channelId}:${amount}:${Date.now()}:${Math.random()}`));
    // Short-lived: the payee relays a deposit at once, and an authorization it kept instead (a refused or
    // unanswered request) is anyone's to relay until it expires. The token checks it against the chain's
    // clock: from the chain's time where it can be read; without a chain view, an hour allows for skew.
    const wall = Math.floor(Date.now() / 1000);
    const chainTime = this.params.publicClient ? await this.params.publicClient.getBlock().then((b) => Number(b.timestamp), () => undefined) : undefined;
    const ttl = chainTime === undefined ? 3_600 : DEPOSIT_AUTHORIZATION_TTL_S;
    const validBefore = BigInt(Math.max(wall, chainTime ?? 0) + Math.max(60, Math.min(r.maxTimeoutSeconds, ttl)));
    const signature = await signTyped(this.params.account, {
      domain: { name: r.extra.name, version: r.extra.version, chainId: this.params.chainId, verifyingContract: r.asset },
      types: receiveWithAuthorizationTypes,
      primaryType: "ReceiveWithAuthorization",
      message: { from: config.payer, to: this.collector, value: amount, validAfter: 0n, validBefore, nonce: erc3009DepositNonce(channelId, BigInt(salt)) },
    });
    return { validAfter: "0", validBefore: validBefore.toString(), salt, signature };
  }
}

/**
 * Creates a payer.
 * @example const payer = createPayer({ account, sessionKey, store: await openPayerStore(".tollway/payer"), chainId: 31337 })
 */
export function createPayer(params: CreatePayerParameters): Payer {
  return new Payer(params);
}
