/**
 * The payee: verifies batch-settlement payments, holds per-channel state, commits charges durably,
 * relays deposits and performs cooperative refunds. HTTP-agnostic (the express middleware, the reverse
 * proxy and the facilitator API are fronts over it).
 */
import {
  type Abi,
  type Address,
  type Chain,
  type ContractFunctionName,
  type Hex,
  type Log,
  type PublicClient,
  type Transport,
  encodeFunctionData,
  erc20Abi,
  getAddress,
  zeroAddress,
} from "viem";
import type { Logger } from "pino";
import { batchSettlementAbi } from "../chain/abi";
import { amountMoved, claimAndRefundCalls, readChannel, readChannelCautious, type OnchainChannel } from "../chain/escrow";
import type { SendParameters, SendResult, TxSender } from "../chain/sender";
import { claimable, finalizeAtMs } from "./claims";
import { ChainError, CumulativeMismatchError, ErrorCodes, PaymentError, errorSummary } from "../protocol/errors";
import { ERC1271_MAGIC_VALUE, encodeErc3009CollectorData, erc1271Abi } from "../protocol/collectorData";
import { createDigester, type Digester } from "../protocol/fastDigest";
import {
  BATCH_SETTLEMENT_SCHEME,
  MAX_WITHDRAW_DELAY,
  MIN_WITHDRAW_DELAY,
  type ChannelConfig,
  escrowDomain,
} from "../protocol/typedData";
import type {
  ChannelStateWire,
  DepositPayload,
  PaymentPayload,
  PaymentRequirements,
  RefundPayload,
  SchemePayload,
} from "../protocol/wire";
import type { ChannelRecord, ChannelStore } from "../store/channelStore";
import { ChannelLocks } from "./lock";
import { keccak256Fast } from "./recover";
import { configureRecoveryThreads, defaultRecoveryThreads, recoverSignerAsync } from "./recoverPool";
import { DEFAULT_RELAY_LIMITS, RelayBudget, type RelayLimits } from "./relayBudget";

export type AssetInfo = { address: Address; name: string; version: string; decimals: number; symbol?: string };

export type PayeeOptions = {
  store: ChannelStore;
  publicClient: PublicClient<Transport, Chain>;
  /** Sends deposits, claims, refunds. Its account is the receiverAuthorizer (or the receiver). */
  sender: TxSender;
  chainId: number;
  escrow: Address;
  erc3009Collector: Address;
  /** payTo: where settled funds go. */
  receiver: Address;
  /** Signs claim batches and refunds; defaults to the sender's address. */
  receiverAuthorizer?: Address;
  asset: AssetInfo;
  withdrawDelay?: number;
  maxTimeoutSeconds?: number;
  /** Keep serving known channels while the chain view is at most this old (ms). Default 5 min. */
  riskWindowMs?: number;
  /** Blocks a channel's deposits must be buried under before they count (reorg safety). Default 0. */
  confirmations?: number;
  /** Refuse vouchers on a channel whose withdrawal finalizes within this margin (s). Default 300. */
  withdrawalSafetyMarginS?: number;
  /** Wait this long for a busy channel before answering channel_busy (ms). */
  lockTimeoutMs?: number;
  logger?: Logger;
  /** Clock (ms), replaceable in tests. */
  now?: () => number;
  /**
   * Worker threads that recover voucher signers (process-wide, shared by every Payee). Default: all
   * cores but one, at most 4; 0 recovers on the main thread.
   */
  recoveryThreads?: number;
  /** Called after a charge is durably committed. */
  onCharge?: (rec: ChannelRecord, amount: bigint, route: string) => void;
  /** Limits on the deposits and refunds payers can make the node send (see RelayBudget); each unset one is DEFAULT_RELAY_LIMITS'. */
  relay?: RelayLimits;
};

/** A verified payment holding its channel's lock until commit or release. */
export type Reservation = {
  readonly channelId: Hex;
  readonly payer: Address;
  /** Most the request may be charged (the requirement's amount). */
  readonly maxCharge: bigint;
  readonly voucherMax: bigint;
  readonly signature: Hex;
  /** Deposit made for this request (tx hash, amount), if any. */
  readonly deposit?: { txHash: Hex; amount: bigint };
  settled: boolean;
};

type InternalReservation = Reservation & { release: () => void; record: ChannelRecord };

/** SettleResponse (PAYMENT-RESPONSE) for a paid request. */
export type PaymentResponseBody = {
  success: true;
  transaction: string;
  network: string;
  payer: Address;
  amount: string;
  extra: { chargedAmount?: string; channelState: ChannelStateWire };
};

/** ERC-1271's answer for a valid signature as a full return word: the selector, zero-padded. */
const ERC1271_MAGIC_WORD = ERC1271_MAGIC_VALUE + "0".repeat(56);
/**
 * How long a payer's "has code" answer is reused: an EOA that gains code later (an EIP-7702 delegation)
 * is checked as the escrow checks it within this time.
 */
const PAYER_CODE_TTL_MS = 30_000;
/** After a request's re-read of an unmirrored channel failed, the next ones on it are refused at once for this long (ms). */
const RESYNC_COOLDOWN_MS = 2_000;
/** Longest a request's re-read of an unmirrored channel may take (ms). */
const RESYNC_TIMEOUT_MS = 2_000;
/** Unclaimable marks kept at most (the oldest gives way). */
const MAX_UNCLAIMABLE = 10_000;
/** Meta key prefix of the channels the chain refused to claim (Payee.unclaimable): one entry per channel. */
const UNCLAIMABLE_META = "unclaimable:";
/** m:refundpending:<channelId> -> "<relayer address>:<nonce>": a refund signed for the channel, not known to be mined or dropped. */
const REFUND_PENDING_META = "refundpending:";

/** `p`, or a rejection after `ms` (a hung RPC read becomes an error the caller can answer). */
export function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
/** How stale the chain view may be before new charges are refused, unless configured (ms). */
export const DEFAULT_RISK_WINDOW_MS = 300_000;

export class Payee {
  readonly locks = new ChannelLocks();
  readonly digester: Digester;
  readonly network: string;
  readonly receiverAuthorizer: Address;
  readonly withdrawDelay: number;
  /** Last time the chain view was confirmed current (ms); set by the mirror. */
  chainSyncedAt: number;
  private readonly payerSignatureCache = new Map<string, boolean>();
  /** Whether a payer's address has code, and when that was read (payerHasCode). */
  private readonly payerCode = new Map<Address, { hasCode: boolean; at: number }>();
  /**
   * Channels whose claim the chain refused although its simulation passed (a payer's ERC-1271 wallet that
   * answers an eth_call and not a mined transaction): no new charges until one of their claims lands
   * (ClaimEngine marks and clears them), so what such a payer gets unpaid stops at the claim threshold.
   * Kept in the store (`m:unclaimable:<channelId>`): a restart does not give such a payer another threshold's worth.
   * Change it with markUnclaimable / clearUnclaimable.
   */
  private readonly unclaimableSet = new Set<Hex>();
  get unclaimable(): ReadonlySet<Hex> {
    return this.unclaimableSet;
  }
  /** The deposits and cooperative refunds payers may still make the node send (its gas) this hour. */
  readonly relayBudget: RelayBudget;
  private readonly now: () => number;

  constructor(readonly opts: PayeeOptions) {
    this.digester = createDigester(escrowDomain(opts.chainId, opts.escrow), keccak256Fast);
    this.network = `eip155:${opts.chainId}`;
    this.receiverAuthorizer = getAddress(opts.receiverAuthorizer ?? opts.sender.address);
    this.withdrawDelay = opts.withdrawDelay ?? 900;
    if (this.withdrawDelay < MIN_WITHDRAW_DELAY || this.withdrawDelay > MAX_WITHDRAW_DELAY) {
      throw new PaymentError(ErrorCodes.withdrawDelayOutOfRange, `withdrawDelay ${this.withdrawDelay} is outside 900 s .. 30 days`);
    }
    this.now = opts.now ?? Date.now;
    this.relayBudget = new RelayBudget({ ...DEFAULT_RELAY_LIMITS, ...opts.relay }, this.now);
    this.chainSyncedAt = this.now();
    configureRecoveryThreads(opts.recoveryThreads ?? defaultRecoveryThreads());
  }

  get store(): ChannelStore {
    return this.opts.store;
  }

  private readonly requirementsCache = new Map<bigint, PaymentRequirements>();

  /** Payment requirements for a price (atomic units); one frozen object per price. */
  requirements(amount: bigint): PaymentRequirements {
    const hit = this.requirementsCache.get(amount);
    if (hit) return hit;
    const r: PaymentRequirements = {
      scheme: BATCH_SETTLEMENT_SCHEME,
      network: this.network,
      amount,
      asset: this.opts.asset.address,
      payTo: this.opts.receiver,
      maxTimeoutSeconds: this.opts.maxTimeoutSeconds ?? 3600,
      extra: {
        receiverAuthorizer: this.receiverAuthorizer,
        withdrawDelay: this.withdrawDelay,
        name: this.opts.asset.name,
        version: this.opts.asset.version,
      },
    };
    Object.freeze(r.extra);
    Object.freeze(r);
    if (this.requirementsCache.size < 1_000) this.requirementsCache.set(amount, r);
    return r;
  }

  /**
   * Verifies a deposit or voucher payment for `required` and reserves its channel. For deposits the
   * deposit is submitted and confirmed first. The caller must `commit` or `release` the reservation.
   */
  async authorize(payment: PaymentPayload, required: PaymentRequirements): Promise<Reservation> {
    const p = payment.payload;
    if (p.type === "refund") {
      throw new PaymentError(ErrorCodes.payloadType, "a refund payload is not a payment for a resource", { status: 400 });
    }
    this.checkRequirements(payment.accepted, required);
    this.checkConfig(p.channelConfig, required);
    const channelId = this.checkChannelId(p);
    await this.checkVoucherSignature(p.channelConfig, channelId, p.voucher.maxClaimableAmount, p.voucher.signature);
    if (p.type === "deposit") this.checkDepositAuthorization(p);

    // A free lock and a cached record are taken without a promise (the common case of a paid request).
    const release = this.locks.tryAcquire(channelId) ?? (await this.locks.acquire(channelId, this.opts.lockTimeoutMs));
    try {
      let rec = this.store.cachedChannel(channelId) ?? (await this.loadOrCreate(channelId, p.channelConfig, p.type === "deposit"));
      if (this.unsynced.size > 0 && this.unsynced.has(channelId)) rec = await this.resync(rec);
      const expected = rec.chargedCumulative + required.amount;
      if (p.voucher.maxClaimableAmount !== expected) {
        throw new CumulativeMismatchError(expected, p.voucher.maxClaimableAmount, this.correctiveFor(rec));
      }
      let deposit: Reservation["deposit"];
      if (p.type === "deposit") {
        if (p.voucher.maxClaimableAmount > rec.balance + p.deposit.amount) {
          throw new PaymentError(ErrorCodes.cumulativeExceedsBalance, "voucher exceeds balance plus deposit", {
            metaMessages: [`max ${p.voucher.maxClaimableAmount}`, `balance ${rec.balance}`, `deposit ${p.deposit.amount}`],
          });
        }
        // What does not depend on the deposit is refused before it goes on chain (gas, the payer's tokens).
        this.checkChainTiming(rec);
        this.checkWithdrawalReserve(rec, p.voucher.maxClaimableAmount, p.deposit.amount);
        await this.checkPayerFunds(p);
        const result = await this.submitDeposit(p, channelId, rec);
        deposit = result;
        rec = result.record;
      }
      this.checkChannelState(rec, p.voucher.maxClaimableAmount);
      const reservation: InternalReservation = {
        channelId,
        payer: p.channelConfig.payer,
        maxCharge: required.amount,
        voucherMax: p.voucher.maxClaimableAmount,
        signature: p.voucher.signature,
        deposit: deposit ? { txHash: deposit.txHash, amount: deposit.amount } : undefined,
        settled: false,
        release,
        record: rec,
      };
      return reservation;
    } catch (err) {
      release();
      throw err;
    }
  }

  /**
   * Commits `amount` (<= the reservation's max) durably, then releases the channel. Resolves only once
   * the charge is fsync'd; returns the PAYMENT-RESPONSE body.
   */
  async commit(r: Reservation, amount: bigint, ctx: { route: string; resource: string }): Promise<PaymentResponseBody> {
    const res = r as InternalReservation;
    if (res.settled) throw new Error("reservation already settled");
    try {
      if (amount < 0n || amount > res.maxCharge) {
        throw new PaymentError(ErrorCodes.chargeExceedsSignedCumulative, `charge ${amount} exceeds the signed maximum ${res.maxCharge}`);
      }
      // A channel first seen by this request is persisted only now, with its first charge.
      const current = this.store.cachedChannel(res.channelId) ?? (await this.store.getChannel(res.channelId)) ?? res.record;
      if (current.chargedCumulative !== res.voucherMax - res.maxCharge) {
        // Cannot happen while the channel's lock is held; if it ever does, charge nothing rather than go backwards.
        throw new PaymentError(ErrorCodes.channelBusy, "the channel changed while the request ran; nothing was charged", { status: 503 });
      }
      const now = this.now();
      const next: ChannelRecord = {
        ...current,
        chargedCumulative: current.chargedCumulative + amount,
        signedMaxClaimable: res.voucherMax,
        signature: res.signature,
        lastRequestAt: now,
      };
      if (next.chargedCumulative > res.voucherMax) {
        throw new PaymentError(ErrorCodes.chargeExceedsSignedCumulative, "charge would exceed the signed cumulative amount");
      }
      await this.store.putChannel(
        next,
        amount > 0n ? { at: now, channelId: res.channelId, payer: res.payer, route: ctx.route, resource: ctx.resource, amount } : undefined,
      );
      res.settled = true;
      try {
        this.opts.onCharge?.(next, amount, ctx.route);
      } catch (err) {
        // The charge is on disk: a failing hook must not turn it into "nothing was charged".
        this.opts.logger?.error({ err: errorSummary(err), channelId: res.channelId }, "onCharge hook failed");
      }
      return {
        success: true,
        transaction: res.deposit?.txHash ?? "",
        network: this.network,
        payer: res.payer,
        amount: res.deposit ? res.deposit.amount.toString() : "",
        extra: { chargedAmount: amount.toString(), channelState: this.channelState(next) },
      };
    } finally {
      res.settled = true;
      res.release();
    }
  }

  /** Releases a reservation without charging (the handler failed). */
  release(r: Reservation): void {
    const res = r as InternalReservation;
    res.settled = true;
    res.release();
  }

  /** Channel snapshot as the wire carries it. */
  channelState(rec: ChannelRecord): ChannelStateWire {
    return {
      channelId: rec.channelId,
      balance: rec.balance.toString(),
      totalClaimed: rec.totalClaimed.toString(),
      withdrawRequestedAt: rec.withdrawRequestedAt,
      refundNonce: rec.refundNonce.toString(),
      chargedCumulativeAmount: rec.chargedCumulative.toString(),
    };
  }

  /**
   * The corrective `extra` for a 402 after a cumulative mismatch: channel state plus the last voucher
   * the payer signed, so the client can check it and resynchronise.
   */
  async correctiveExtra(channelId: Hex): Promise<Record<string, unknown> | undefined> {
    const rec = await this.store.getChannel(channelId);
    return rec && this.correctiveFor(rec);
  }

  /**
   * The corrective `extra` of a record. A channel the node has no charges for (first sight, or after
   * losing its state) carries the on-chain claimed total as its charged total and no voucher: the
   * spec's baseline, which a client accepts without a proof.
   */
  correctiveFor(rec: ChannelRecord): Record<string, unknown> {
    return {
      channelState: this.channelState(rec),
      voucherState: rec.signature !== "0x" ? { signedMaxClaimable: rec.signedMaxClaimable.toString(), signature: rec.signature } : undefined,
    };
  }

  /** Cooperative refund: claim what was charged, refund the rest (or `amount`), in one transaction. */
  async refund(payment: PaymentPayload, required: PaymentRequirements): Promise<PaymentResponseBody> {
    const p = payment.payload as RefundPayload;
    this.checkRequirements(payment.accepted, required, { ignoreAmount: true });
    this.checkConfig(p.channelConfig, required);
    const channelId = this.checkChannelId(p);
    await this.checkVoucherSignature(p.channelConfig, channelId, p.voucher.maxClaimableAmount, p.voucher.signature);
    let requested: bigint | undefined;
    if (p.amount !== undefined) {
      if (!/^[1-9]\d{0,38}$/.test(p.amount)) {
        throw new PaymentError(ErrorCodes.refundAmountInvalid, `refund amount "${p.amount}" is not a positive integer`, { status: 400 });
      }
      requested = BigInt(p.amount);
    }
    return this.locks.with(
      channelId,
      async () => {
        this.checkNoRefundPending(channelId);
        const rec = await this.loadOrCreate(channelId, p.channelConfig, false, true);
        if (p.voucher.maxClaimableAmount !== rec.chargedCumulative) {
          throw new CumulativeMismatchError(rec.chargedCumulative, p.voucher.maxClaimableAmount, this.correctiveFor(rec));
        }
        if (p.voucher.maxClaimableAmount < rec.totalClaimed) {
          throw new PaymentError(ErrorCodes.cumulativeBelowClaimed, "refund voucher is below the claimed total");
        }
        const available = rec.balance - rec.chargedCumulative;
        if (available <= 0n) throw new PaymentError(ErrorCodes.refundNoBalance, "no refundable balance remains");
        const amount = requested === undefined || requested > available ? available : requested;
        const voucher = { maxClaimableAmount: p.voucher.maxClaimableAmount, signature: p.voucher.signature };
        const { hash, next, refunded } = await this.claimAndRefund(rec, voucher, amount, () => this.relayBudget.take(p.channelConfig.payer, "refund"));
        return {
          success: true as const,
          transaction: hash,
          network: this.network,
          payer: p.channelConfig.payer,
          amount: refunded.toString(),
          extra: { channelState: this.channelState(next) },
        };
      },
      this.opts.lockTimeoutMs,
    );
  }

  /**
   * Operator-initiated close (shutting a service down): claims what the channel was charged with the
   * last voucher and refunds the rest to the payer, in one transaction. Safe to re-run: a closed or
   * empty channel is a no-op (returns undefined).
   */
  async closeChannel(id: Hex): Promise<{ hash: Hex; refunded: bigint; claimed: bigint } | undefined> {
    const channelId = id.toLowerCase() as Hex;
    return this.locks.with(channelId, async () => {
      this.checkNoRefundPending(channelId);
      const stored = await this.store.getChannel(channelId);
      if (!stored) return undefined;
      const rec = this.withChain(stored, await readChannel(this.opts.publicClient, this.opts.escrow, channelId));
      // Never above the balance (a finalized withdrawal can leave less than was charged).
      const claimed = rec.signature !== "0x" ? rec.totalClaimed + claimable(rec) : rec.totalClaimed;
      const refund = rec.balance - claimed;
      if (refund <= 0n && claimed <= rec.totalClaimed) {
        await this.store.putChannel(rec);
        return undefined;
      }
      const { hash, refunded } = await this.claimAndRefund(rec, { maxClaimableAmount: rec.signedMaxClaimable, signature: rec.signature }, refund);
      return { hash, refunded, claimed };
    });
  }

  /** One multicall: claim the charged total with `voucher` (when above the claimed total), then refund. `beforeSend`: see SendParameters. */
  private async claimAndRefund(rec: ChannelRecord, voucher: { maxClaimableAmount: bigint; signature: Hex }, amount: bigint, beforeSend?: () => void) {
    const upTo = rec.totalClaimed + claimable(rec);
    const claims =
      upTo > rec.totalClaimed && voucher.signature !== "0x"
        ? [{ voucher: { channel: rec.config, maxClaimableAmount: voucher.maxClaimableAmount }, signature: voucher.signature, totalClaimed: upTo }]
        : [];
    if (claims.length === 0 && amount <= 0n) throw new PaymentError(ErrorCodes.refundNoBalance, "nothing to claim or refund");
    const calls = claimAndRefundCalls(rec.config, claims, amount);
    const { hash, receipt } = await this.sendRefund(rec.channelId, {
      address: this.opts.escrow,
      abi: batchSettlementAbi,
      functionName: "multicall",
      args: [calls],
      simulationError: ErrorCodes.refundSimulationFailed,
      transactionError: ErrorCodes.refundTransactionFailed,
      beforeSend,
    });
    const { next, refunded } = await this.recordRefund(rec, hash, receipt);
    return { hash, next, refunded };
  }

  /**
   * After a refund transaction (under the channel's lock): the record follows the chain, the history
   * gets the refund (what the receipt's events moved: the contract caps a refund at what is unclaimed),
   * and a fully refunded channel's record is dropped (its charges are in the ledger, its claims on chain).
   */
  async recordRefund(rec: ChannelRecord, hash: Hex, receipt: { logs: Log[]; gasUsed: bigint; blockNumber: bigint }): Promise<{ next: ChannelRecord; refunded: bigint; chain: OnchainChannel }> {
    const refunded = amountMoved(receipt.logs, "Refunded");
    const chain = await this.readBack(rec.channelId, receipt.blockNumber, `the refund (${hash})`, "the node's record follows the chain shortly");
    const next = this.withChain(rec, chain);
    await this.store.appendHistory({ at: this.now(), kind: "refund", txHash: hash, channels: [rec.channelId], amount: refunded, gasUsed: receipt.gasUsed });
    if (chain.balance === chain.totalClaimed) await this.store.deleteChannel(rec.channelId);
    else await this.store.putChannel(next);
    this.noteApplied(hash, rec.channelId, receipt.blockNumber, true);
    await this.clearRefundPending(rec.channelId); // the record now has the refund
    // A refund claims the node's charges first, in the same transaction: the chain took this channel's vouchers.
    this.clearUnclaimable(rec.channelId);
    return { next, refunded, chain };
  }

  /**
   * Records claimed totals taken from a claim receipt's `Claimed` events (no RPC round trip), under
   * each channel's lock, writing all records in one group commit.
   */
  async applyClaimed(totals: ReadonlyMap<Hex, bigint>, tx?: { hash: Hex; blockNumber: bigint }): Promise<void> {
    await Promise.all(
      [...totals].map(([channelId, total]) =>
        this.locks
          .with(channelId, async () => {
            const rec = await this.store.getChannel(channelId);
            this.clearUnclaimable(channelId); // a claim of it landed, whoever sent it
            if (!rec || rec.totalClaimed >= total) return;
            await this.store.putChannel({ ...rec, totalClaimed: total, syncedAt: this.now() });
            if (tx) this.noteApplied(tx.hash, channelId, tx.blockNumber, false);
          })
          .catch((err: Error) => {
            // The claim is on chain either way (a channel busy with a long request, say): the watcher
            // mirrors its Claimed event on the next poll. Not a reason to fail the claim run.
            this.opts.logger?.warn({ channelId, err: errorSummary(err) }, "claimed total not recorded yet; the mirror will catch up");
          }),
      ),
    );
  }

  /**
   * Channels with chain events the mirror could not apply yet (their sync failed), with the block of the
   * newest such event: their next request reads them again at that block or later (resync), or is
   * refused. Kept by the watcher.
   */
  readonly unsynced = new Map<Hex, bigint>();
  /**
   * `<txHash>:<channelId>` of this node's own transactions whose effect on the channel is in the store
   * already (read back, or taken from the receipt, after it was mined): the mirror skips their events,
   * so an RPC that fails right after a deposit, claim or refund does not leave the channel refused.
   */
  readonly applied = new Set<string>();
  /** Channels with a refund transaction signed and not known to be mined or dropped: its relayer and nonce (see sendRefund). */
  readonly refundsPending = new Map<Hex, { from: Address; nonce: number }>();

  /** Whether this node's own transaction `txHash` is stored as applied to `channelId` (see `applied`). */
  isApplied(txHash: Hex | null | undefined, channelId: Hex): boolean {
    return txHash != null && this.applied.has(appliedKey(txHash, channelId));
  }

  /**
   * Notes that `txHash`'s effect on `channelId` is stored. `fullRead`: the whole channel was read at
   * `block` (not only a claimed total from the receipt), so an event the mirror could not apply at or
   * before that block is in the record too.
   */
  private noteApplied(txHash: Hex, channelId: Hex, block: bigint, fullRead: boolean) {
    if (this.applied.size >= 10_000) this.applied.clear();
    this.applied.add(appliedKey(txHash, channelId));
    const missed = this.unsynced.get(channelId);
    if (fullRead && missed !== undefined && missed <= block) this.unsynced.delete(channelId);
  }
  /** When a request's resync of a channel last failed (ms): the next ones are refused at once for a while. */
  private readonly resyncFailedAt = new Map<Hex, number>();

  /** Updates a channel's mirrored chain fields under its lock (used by the mirror and claim engine). */
  async syncChannel(channelId: Hex, chain?: OnchainChannel | (() => Promise<OnchainChannel>)): Promise<ChannelRecord | undefined> {
    return this.locks.with(channelId, () => this.syncLocked(channelId, chain));
  }

  /** syncChannel's work, for a caller holding the channel's lock. */
  private async syncLocked(channelId: Hex, chain?: OnchainChannel | (() => Promise<OnchainChannel>)): Promise<ChannelRecord | undefined> {
    const rec = await this.store.getChannel(channelId);
    if (!rec) {
      this.clearUnclaimable(channelId);
      return undefined;
    }
    // Read under the lock: a state read before it could predate a deposit or claim made meanwhile.
    const state = typeof chain === "function" ? await chain() : (chain ?? (await readChannel(this.opts.publicClient, this.opts.escrow, channelId)));
    if (state.totalClaimed > rec.totalClaimed) this.clearUnclaimable(channelId); // a claim of it landed, whoever sent it
    const next = this.withChain(rec, state);
    await this.store.putChannel(next);
    return next;
  }

  // -------------------------------------------------------------------------------------------
  // checks
  // -------------------------------------------------------------------------------------------

  private checkRequirements(accepted: PaymentRequirements, required: PaymentRequirements, o: { ignoreAmount?: boolean } = {}) {
    if (accepted.scheme !== BATCH_SETTLEMENT_SCHEME) {
      throw new PaymentError(ErrorCodes.scheme, `scheme "${accepted.scheme}" is not batch-settlement`);
    }
    if (accepted.network !== required.network) {
      throw new PaymentError(ErrorCodes.networkMismatch, `network ${accepted.network} is not ${required.network}`);
    }
    if (accepted.asset !== required.asset) {
      throw new PaymentError(ErrorCodes.tokenMismatch, `asset ${accepted.asset} is not ${required.asset}`);
    }
    if (accepted.payTo !== required.payTo) {
      throw new PaymentError(ErrorCodes.receiverMismatch, `payTo ${accepted.payTo} is not ${required.payTo}`);
    }
    if (accepted.extra.receiverAuthorizer !== required.extra.receiverAuthorizer) {
      throw new PaymentError(ErrorCodes.receiverAuthorizerMismatch, `receiverAuthorizer ${accepted.extra.receiverAuthorizer} is not ${required.extra.receiverAuthorizer}`);
    }
    if (accepted.extra.withdrawDelay !== required.extra.withdrawDelay) {
      throw new PaymentError(ErrorCodes.withdrawDelayMismatch, `withdrawDelay ${accepted.extra.withdrawDelay} is not ${required.extra.withdrawDelay}`);
    }
    if (!o.ignoreAmount && accepted.amount !== required.amount) {
      // The price changed (or the client is stale): a fresh 402 carries the current price.
      throw new PaymentError(ErrorCodes.paymentRequired, `accepted amount ${accepted.amount} is not the current price ${required.amount}`);
    }
  }

  /** The config must match the requirements (token, receiver, receiverAuthorizer, withdrawDelay). */
  checkConfig(c: ChannelConfig, required: PaymentRequirements) {
    if (c.token !== required.asset) throw new PaymentError(ErrorCodes.tokenMismatch, `channel token ${c.token} is not ${required.asset}`);
    if (c.receiver !== required.payTo) throw new PaymentError(ErrorCodes.receiverMismatch, `channel receiver ${c.receiver} is not ${required.payTo}`);
    if (c.receiverAuthorizer !== required.extra.receiverAuthorizer) {
      throw new PaymentError(ErrorCodes.receiverAuthorizerMismatch, `channel receiverAuthorizer ${c.receiverAuthorizer} is not ${required.extra.receiverAuthorizer}`);
    }
    if (c.withdrawDelay < MIN_WITHDRAW_DELAY || c.withdrawDelay > MAX_WITHDRAW_DELAY) {
      throw new PaymentError(ErrorCodes.withdrawDelayOutOfRange, `withdrawDelay ${c.withdrawDelay} is outside 900 s .. 30 days`);
    }
    if (c.withdrawDelay !== required.extra.withdrawDelay) {
      throw new PaymentError(ErrorCodes.withdrawDelayMismatch, `channel withdrawDelay ${c.withdrawDelay} is not ${required.extra.withdrawDelay}`);
    }
    if (c.payer === zeroAddress) throw new PaymentError(ErrorCodes.voucherPayload, "payer is the zero address", { status: 400 });
  }

  /** The config must hash to the claimed id; a cached record with the identical config skips the hash. */
  private checkChannelId(p: SchemePayload): Hex {
    const claimed = p.voucher.channelId;
    const cached = this.store.cachedChannel(claimed);
    if (cached && sameConfig(cached.config, p.channelConfig)) return claimed;
    const id = this.digester.channelId(p.channelConfig);
    if (id !== claimed) {
      throw new PaymentError(ErrorCodes.channelIdMismatch, "channel config does not hash to the voucher's channelId", {
        metaMessages: [`computed ${id}`, `claimed ${claimed}`],
      });
    }
    return id;
  }

  /** The voucher must be signed by the payerAuthorizer (ECDSA) or, when that is zero, the payer (EOA or ERC-1271). */
  async checkVoucherSignature(c: ChannelConfig, channelId: Hex, max: bigint, signature: Hex) {
    const digest = this.digester.voucherDigest(channelId, max);
    if (c.payerAuthorizer !== zeroAddress) {
      const signer = await recoverSignerAsync(digest, signature);
      if (signer !== c.payerAuthorizer.toLowerCase()) {
        throw new PaymentError(ErrorCodes.voucherSignature, "voucher signature does not recover to the payerAuthorizer (ECDSA, 65 bytes, low s)");
      }
      return;
    }
    // payerAuthorizer = 0: the payer signs, checked as the escrow checks it (OpenZeppelin's
    // SignatureChecker): ERC-1271 when the payer has code (a smart wallet, or an EOA delegated with
    // EIP-7702), ECDSA otherwise. An ECDSA signature from a payer with code would not claim on chain.
    const key = `${channelId}:${max}:${signature}`;
    const cached = this.payerSignatureCache.get(key);
    if (cached === true) return;
    let ok: boolean;
    if (!(await this.payerHasCode(c.payer))) {
      ok = (await recoverSignerAsync(digest, signature)) === c.payer.toLowerCase();
    } else {
      // The whole first return word must be the selector, zero-padded, as OpenZeppelin's SignatureChecker
      // requires (a decoded bytes4 would also take a word with trailing bytes that the escrow refuses).
      ok = await this.opts.publicClient
        .call({
          to: c.payer,
          data: encodeFunctionData({ abi: erc1271Abi, functionName: "isValidSignature", args: [`0x${Buffer.from(digest).toString("hex")}`, signature] }),
        })
        .then(({ data }) => data !== undefined && data.length >= 66 && data.slice(0, 66).toLowerCase() === ERC1271_MAGIC_WORD)
        .catch(() => false);
    }
    if (!ok) throw new PaymentError(ErrorCodes.voucherSignature, "voucher signature is not valid for the payer (EOA or ERC-1271)");
    if (this.payerSignatureCache.size > 10_000) this.payerSignatureCache.clear();
    this.payerSignatureCache.set(key, true);
  }

  /**
   * Whether the payer's address has code, as the escrow will see it: read at most every
   * PAYER_CODE_TTL_MS per payer (not an RPC per voucher), and when the RPC fails the last answer serves
   * within the risk window, as known channels are served.
   */
  private async payerHasCode(payer: Address): Promise<boolean> {
    const known = this.payerCode.get(payer);
    const now = this.now();
    if (known && now - known.at < PAYER_CODE_TTL_MS) return known.hasCode;
    try {
      const code = await this.opts.publicClient.getCode({ address: payer });
      const hasCode = code !== undefined && code !== "0x";
      if (this.payerCode.size >= 10_000) this.payerCode.clear();
      this.payerCode.set(payer, { hasCode, at: now });
      return hasCode;
    } catch (cause) {
      if (known && now - known.at < (this.opts.riskWindowMs ?? DEFAULT_RISK_WINDOW_MS)) return known.hasCode;
      throw new PaymentError(ErrorCodes.rpcReadFailed, "could not read the payer's code to check its signature", { cause, status: 503 });
    }
  }

  /** A deposit's ERC-3009 authorization is present and inside its validity window (also used by the facilitator). */
  checkDepositAuthorization(p: DepositPayload) {
    const auth = p.deposit.authorization.erc3009Authorization;
    if (!auth) {
      throw new PaymentError(ErrorCodes.erc3009AuthorizationRequired, "deposit needs an erc3009Authorization (permit2 is not supported by this node)");
    }
    const nowS = BigInt(Math.floor(this.now() / 1000));
    if (auth.validAfter > nowS) throw new PaymentError(ErrorCodes.authorizationValidAfter, "authorization is not valid yet");
    if (auth.validBefore <= nowS + 5n) throw new PaymentError(ErrorCodes.authorizationValidBefore, "authorization has expired");
  }

  /** Rule 8: the payer holds the tokens it deposits (also used by the facilitator). */
  async checkPayerFunds(p: DepositPayload): Promise<void> {
    const payer = p.channelConfig.payer;
    let held: bigint;
    try {
      held = await this.opts.publicClient.readContract({ address: p.channelConfig.token, abi: erc20Abi, functionName: "balanceOf", args: [payer] });
    } catch (cause) {
      throw new PaymentError(ErrorCodes.rpcReadFailed, "could not read the payer's token balance", { cause, status: 503 });
    }
    if (held < p.deposit.amount) {
      throw new PaymentError(ErrorCodes.insufficientBalance, `the payer holds ${held}, less than the deposit of ${p.deposit.amount}`);
    }
  }

  private checkChannelState(rec: ChannelRecord, max: bigint) {
    if (rec.balance === 0n) throw new PaymentError(ErrorCodes.channelNotFound, "channel has no balance");
    if (max <= rec.totalClaimed) {
      throw new PaymentError(ErrorCodes.cumulativeBelowClaimed, `voucher ${max} is not above the claimed total ${rec.totalClaimed}`);
    }
    if (max > rec.balance) {
      throw new PaymentError(ErrorCodes.cumulativeExceedsBalance, `voucher ${max} exceeds the channel balance ${rec.balance}`);
    }
    this.checkWithdrawalReserve(rec, max);
    this.checkChainTiming(rec);
  }

  /**
   * What a pending withdrawal can take is out of reach: a charge above balance (+ a deposit being made)
   * − withdrawal might not be claimable once it finalizes (the watcher claims what was charged before
   * it was seen).
   */
  private checkWithdrawalReserve(rec: ChannelRecord, max: bigint, deposit = 0n) {
    if (rec.withdrawRequestedAt === 0) return;
    const reserved = rec.withdrawAmount ?? rec.balance - rec.totalClaimed;
    const limit = rec.balance + deposit - reserved;
    if (max > limit) {
      throw new PaymentError(
        ErrorCodes.cumulativeExceedsBalance,
        `a withdrawal of ${reserved} is pending on this channel: vouchers above ${limit} are refused until it finalizes or the channel is topped up`,
      );
    }
  }

  /** A channel not mirrored yet or unclaimable, a withdrawal about to finalize, or a chain view older than the risk window: no new charges. */
  private checkChainTiming(rec: ChannelRecord) {
    this.checkNoRefundPending(rec.channelId);
    if (this.unclaimableSet.size > 0 && this.unclaimableSet.has(rec.channelId)) {
      throw new PaymentError(ErrorCodes.voucherSignature, "the chain refused to claim this channel's vouchers (its payer's signature check); no new charges until a claim lands");
    }
    if (this.unsynced.size > 0 && this.unsynced.has(rec.channelId)) {
      throw new PaymentError(ErrorCodes.channelStateReadFailed, "this channel has chain events not mirrored yet; retry shortly", { status: 503 });
    }
    const finalizeAt = finalizeAtMs(rec);
    if (finalizeAt !== undefined) {
      const margin = (this.opts.withdrawalSafetyMarginS ?? 300) * 1000;
      if (this.now() > finalizeAt - margin) {
        throw new PaymentError(ErrorCodes.channelNotFound, "channel is closing: its withdrawal finalizes too soon to accept vouchers");
      }
    }
    const age = this.now() - this.chainSyncedAt;
    if (age > (this.opts.riskWindowMs ?? DEFAULT_RISK_WINDOW_MS)) {
      throw new PaymentError(ErrorCodes.channelStateReadFailed, `chain view is ${Math.round(age / 1000)} s old (beyond the risk window); refusing new charges`, { status: 503 });
    }
  }

  // -------------------------------------------------------------------------------------------
  // state
  // -------------------------------------------------------------------------------------------

  private async loadOrCreate(channelId: Hex, config: ChannelConfig, forDeposit: boolean, forRefund = false): Promise<ChannelRecord> {
    const existing = await this.store.getChannel(channelId);
    if (existing) return existing;
    let chain: OnchainChannel;
    try {
      // Only confirmed state counts: a deposit that a reorg could still remove is not seen yet.
      const depth = BigInt(this.opts.confirmations ?? 0);
      const at = depth > 0n ? (await this.opts.publicClient.getBlockNumber({ cacheTime: 0 })) - depth : undefined;
      chain = await readChannel(this.opts.publicClient, this.opts.escrow, channelId, at !== undefined && at >= 0n ? at : undefined);
    } catch (cause) {
      throw new PaymentError(ErrorCodes.channelStateReadFailed, "could not read the channel from the chain", { cause, status: 503 });
    }
    if (chain.balance === 0n && !forDeposit) {
      throw new PaymentError(forRefund ? ErrorCodes.missingChannel : ErrorCodes.channelNotFound, "no channel with a positive balance for this id");
    }
    const now = this.now();
    // Server state loss / first sight: the claimed total is the baseline; unclaimed history is forfeited.
    const rec: ChannelRecord = {
      channelId,
      config,
      chargedCumulative: chain.totalClaimed,
      signedMaxClaimable: chain.totalClaimed,
      signature: "0x",
      balance: chain.balance,
      totalClaimed: chain.totalClaimed,
      withdrawRequestedAt: chain.withdrawRequestedAt,
      refundNonce: chain.refundNonce,
      withdrawAmount: chain.withdrawAmount,
      syncedAt: now,
      lastRequestAt: 0,
      createdAt: now,
    };
    // Not persisted here: bad input must leave the store unchanged. The record is written with the
    // first committed charge, or right after a successful deposit.
    return rec;
  }

  /** A record updated with the chain's view of its channel (used under the channel's lock). */
  withChain(rec: ChannelRecord, chain: OnchainChannel): ChannelRecord {
    if (chain.totalClaimed > rec.chargedCumulative) {
      // The chain has claimed more than this record charged (a store restored from an older backup):
      // the spec's baseline, charged = claimed, with no voucher needed to prove it.
      rec = { ...rec, chargedCumulative: chain.totalClaimed, signedMaxClaimable: chain.totalClaimed, signature: "0x" };
    }
    return {
      ...rec,
      balance: chain.balance,
      totalClaimed: chain.totalClaimed,
      withdrawRequestedAt: chain.withdrawRequestedAt,
      withdrawAmount: chain.withdrawAmount,
      refundNonce: chain.refundNonce,
      syncedAt: this.now(),
    };
  }

  /** A transaction a payment answer waits for: its chain failure becomes the payment error with the spec's code (not a generic 503). */
  private async sendForPayment<const abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">>(p: SendParameters<abi, fn>): Promise<SendResult> {
    try {
      return await this.opts.sender.send(p);
    } catch (err) {
      if (err instanceof ChainError) throw new PaymentError(err.code, err.shortMessage, { cause: err, metaMessages: err.metaMessages });
      throw err;
    }
  }

  /**
   * Sends a refund of `channelId` (a multicall that claims, then refunds, or a signed refund). The channel is
   * marked (durably, in the store) as soon as the transaction is signed, before it can be mined: a refund
   * whose receipt does not come in time, or that a crash interrupts, may still be mined later (the node's
   * next transaction re-prices it, a restart sends it again), and charges accepted meanwhile against the balance the record
   * still shows would be left unbacked when it lands. A marked channel takes no charges and no other refund
   * (which could pay the payer twice) until its refund is recorded, or the chain has used that nonce (see
   * resolveRefundsPending). A simulation that fails signs nothing and marks nothing.
   */
  async sendRefund<const abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">>(channelId: Hex, p: SendParameters<abi, fn>): Promise<SendResult> {
    this.checkNoRefundPending(channelId);
    const from = this.opts.sender.address;
    return this.sendForPayment({
      ...p,
      onSigned: async (nonce) => {
        await this.store.putMeta(REFUND_PENDING_META + channelId, `${from}:${nonce}`);
        this.refundsPending.set(channelId, { from, nonce });
      },
    });
  }

  /** Refuses a charge or a refund on a channel whose refund transaction may still be mined (see sendRefund). */
  checkNoRefundPending(channelId: Hex): void {
    if (this.refundsPending.size === 0) return;
    const pending = this.refundsPending.get(channelId);
    if (pending === undefined) return;
    throw new PaymentError(
      ErrorCodes.waitForReceiptFailed,
      `a refund of this channel (relayer ${pending.from}, nonce ${pending.nonce}) is not confirmed yet: no charges or refunds until it is mined or dropped`,
      { status: 503, retryAfterS: 5 },
    );
  }

  /**
   * Settles the marks of refunds whose relayer nonce the chain has used (under `confirmations`): by the
   * refund or by another transaction, the channel's state now says which. The record is read again from
   * the chain, then the mark is cleared. Run by the watcher each poll; a mark whose read fails stays.
   */
  async resolveRefundsPending(): Promise<void> {
    if (this.refundsPending.size === 0) return;
    const { publicClient, escrow } = this.opts;
    const depth = BigInt(this.opts.confirmations ?? 0);
    const head = await publicClient.getBlockNumber({ cacheTime: 0 });
    const safe = head > depth ? head - depth : 0n;
    for (const [channelId, mark] of [...this.refundsPending]) {
      try {
        const used = await publicClient.getTransactionCount({ address: mark.from, blockNumber: safe });
        if (used <= mark.nonce) continue;
        const resolved = await this.locks.with(channelId, async () => {
          // Only the mark read above: one set since by a newer refund is that refund's (its nonce may be unused).
          if (this.refundsPending.get(channelId) !== mark) return false;
          await this.syncLocked(channelId, () => readChannelCautious(publicClient, escrow, channelId, depth, head));
          await this.clearRefundPending(channelId);
          return true;
        });
        if (resolved) this.opts.logger?.info({ channelId, nonce: mark.nonce }, "refund transaction settled on chain: the channel takes charges again");
      } catch (err) {
        // This one next poll (a busy channel lock, a failed read); the other marks are resolved meanwhile.
        this.opts.logger?.warn({ channelId, err: errorSummary(err) }, "refund mark not resolved yet");
      }
    }
  }

  private async clearRefundPending(channelId: Hex): Promise<void> {
    if (!this.refundsPending.has(channelId)) return;
    // Durably first: a mark kept only in the store refuses the channel after a restart until it is resolved again.
    await this.store.deleteMeta(REFUND_PENDING_META + channelId);
    this.refundsPending.delete(channelId);
  }

  /**
   * Marks a channel whose claim the chain refused (see `unclaimable`); bounded like the other per-payer sets.
   * Resolves once the mark's write is done (at once when the channel was marked already).
   */
  markUnclaimable(channelId: Hex): Promise<void> {
    if (this.unclaimableSet.has(channelId)) return Promise.resolve();
    if (this.unclaimableSet.size >= MAX_UNCLAIMABLE) this.clearUnclaimable(this.unclaimableSet.values().next().value!);
    this.unclaimableSet.add(channelId);
    return this.store.putMeta(UNCLAIMABLE_META + channelId, String(this.now())).catch((err: Error) => {
      // It still holds in memory; after a restart the chain refuses the channel's next claim and it is marked again.
      this.opts.logger?.error({ channelId, err: errorSummary(err) }, "unclaimable mark not saved");
    });
  }

  /** Clears a channel's unclaimable mark: a claim or refund of it landed, or it left the store. */
  clearUnclaimable(channelId: Hex): void {
    if (!this.unclaimableSet.delete(channelId)) return;
    void this.store.deleteMeta(UNCLAIMABLE_META + channelId).catch((err: Error) => {
      this.opts.logger?.error({ channelId, err: errorSummary(err) }, "unclaimable mark cleared in memory only: after a restart this channel is refused new charges until a claim of it lands");
    });
  }

  /**
   * Reads the marks a previous run left (called once at start): unclaimable channels and refunds not known
   * to be mined or dropped. An entry that is no channel id is skipped, with a warning.
   */
  async loadMarks(): Promise<void> {
    for await (const name of this.store.metaNames(REFUND_PENDING_META)) {
      const id = name.slice(REFUND_PENDING_META.length);
      const [from, nonce] = ((await this.store.getMeta(name)) ?? "").split(":");
      if (!/^0x[0-9a-f]{64}$/.test(id) || !/^0x[0-9a-fA-F]{40}$/.test(from ?? "") || !/^\d+$/.test(nonce ?? "")) {
        this.opts.logger?.error({ key: `m:${name}` }, "refund mark skipped: unreadable (a refund of that channel may still be pending)");
      } else this.refundsPending.set(id as Hex, { from: from as Address, nonce: Number(nonce) });
    }
    for await (const name of this.store.metaNames(UNCLAIMABLE_META)) {
      const id = name.slice(UNCLAIMABLE_META.length);
      if (!/^0x[0-9a-f]{64}$/.test(id)) this.opts.logger?.warn({ key: `m:${name}` }, "unclaimable mark skipped: not a channel id");
      else if (this.unclaimableSet.size >= MAX_UNCLAIMABLE) this.opts.logger?.warn({ key: `m:${name}` }, `unclaimable mark skipped: ${MAX_UNCLAIMABLE} are kept at most`);
      else this.unclaimableSet.add(id as Hex);
    }
  }

  /**
   * A channel the watcher could not mirror (its lock was held by a long request, a read failed): read
   * here instead, under this request's lock, rather than refusing the payer. Only a stored record is
   * written (a first sight is written by its commit) and only then is the channel mirrored; otherwise
   * checkChainTiming still refuses it until the watcher gets to it.
   */
  private async resync(rec: ChannelRecord): Promise<ChannelRecord> {
    const id = rec.channelId;
    const failedAt = this.resyncFailedAt.get(id);
    const refuse = (cause?: unknown) =>
      new PaymentError(ErrorCodes.channelStateReadFailed, "this channel has chain events not mirrored yet, and reading it failed; retry shortly", { cause, status: 503 });
    // An RPC that is down is not asked again by every request (each would hold the channel's lock through its retries).
    if (failedAt !== undefined && Math.abs(this.now() - failedAt) < RESYNC_COOLDOWN_MS) throw refuse();
    let state: OnchainChannel;
    try {
      // At the block of the event the mirror missed, or later: a backend behind it would answer an older
      // state. Bounded: the request holds the channel's lock meanwhile (a hung RPC is a 503, not a minute).
      const { publicClient, escrow } = this.opts;
      const needed = this.unsynced.get(id) ?? 0n;
      const read = async () => {
        const head = await publicClient.getBlockNumber({ cacheTime: 0 });
        return readChannelCautious(publicClient, escrow, id, BigInt(this.opts.confirmations ?? 0), head > needed ? head : needed);
      };
      state = await within(RESYNC_TIMEOUT_MS, read());
    } catch (cause) {
      if (this.resyncFailedAt.size >= 10_000) this.resyncFailedAt.clear();
      this.resyncFailedAt.set(id, this.now());
      throw refuse(cause);
    }
    this.resyncFailedAt.delete(id);
    const next = this.withChain(rec, state);
    // A stored record is written now; a first sight is written by its commit (bad input changes nothing).
    if (await this.store.getChannel(id)) await this.store.putChannel(next);
    this.unsynced.delete(id);
    return next;
  }

  /**
   * The channel as the block of this node's own transaction left it: read at that block, so an RPC
   * backend behind it fails the read instead of answering an older state (which the mirror, skipping
   * the transaction's events, would then keep). An RPC failure here is a 503 the client can retry, not a
   * raw client error (its message would carry the RPC URL).
   */
  private async readBack(channelId: Hex, block: bigint, what: string, next: string): Promise<OnchainChannel> {
    try {
      return await readChannel(this.opts.publicClient, this.opts.escrow, channelId, block);
    } catch (cause) {
      throw new PaymentError(ErrorCodes.channelStateReadFailed, `${what} is on chain and counts, but the channel could not be read back just now; ${next}`, { cause, status: 503 });
    }
  }

  private async submitDeposit(p: DepositPayload, channelId: Hex, rec: ChannelRecord): Promise<{ txHash: Hex; amount: bigint; record: ChannelRecord }> {
    const auth = p.deposit.authorization.erc3009Authorization!;
    const collectorData = encodeErc3009CollectorData(auth);
    const result = await this.sendForPayment({
      address: this.opts.escrow,
      abi: batchSettlementAbi,
      functionName: "deposit",
      args: [p.channelConfig, p.deposit.amount, this.opts.erc3009Collector, collectorData],
      simulationError: ErrorCodes.depositSimulationFailed,
      transactionError: ErrorCodes.depositTransactionFailed,
      beforeSend: () => this.relayBudget.take(p.channelConfig.payer, "deposit"),
    });
    const chain = await this.readBack(channelId, result.receipt.blockNumber, `the deposit (${result.hash})`, "pay with a voucher shortly (not this deposit again)");
    const record = this.withChain(rec, chain);
    await this.store.putChannel(record);
    this.noteApplied(result.hash, channelId, result.receipt.blockNumber, true);
    await this.store.appendHistory({
      at: this.now(),
      kind: "deposit",
      txHash: result.hash,
      channels: [channelId],
      amount: p.deposit.amount,
      gasUsed: result.receipt.gasUsed,
    });
    this.opts.logger?.info({ channelId, amount: p.deposit.amount.toString(), tx: result.hash }, "deposit relayed");
    return { txHash: result.hash, amount: p.deposit.amount, record };
  }
}

const appliedKey = (txHash: Hex, channelId: Hex) => `${txHash.toLowerCase()}:${channelId.toLowerCase()}`;

function sameConfig(a: ChannelConfig, b: ChannelConfig): boolean {
  return (
    a.payer === b.payer &&
    a.payerAuthorizer === b.payerAuthorizer &&
    a.receiver === b.receiver &&
    a.receiverAuthorizer === b.receiverAuthorizer &&
    a.token === b.token &&
    a.withdrawDelay === b.withdrawDelay &&
    a.salt === b.salt
  );
}
