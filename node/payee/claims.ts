/**
 * The claim engine: turns charged-but-unclaimed vouchers into on-chain claims, in batches, and sweeps
 * claimed funds with `settle`. One bad row never blocks a batch: each batch is simulated first and
 * failing rows are isolated by bisection, claimed around, and reported as an alert. A row can also pass
 * the simulation and be refused by the chain when sent (a payer's ERC-1271 wallet can answer an eth_call
 * differently from a mined transaction): a batch the chain refuses is split in halves and sent again, down
 * to the row refused alone, which is alerted, sent alone from then on, and refused new charges by the
 * payee until one of its claims lands (Payee.unclaimable).
 */
import { ExecutionRevertedError, parseEventLogs, zeroAddress, type Hex } from "viem";
import type { Logger } from "pino";
import { batchSettlementAbi } from "../chain/abi";
import { amountMoved, readReceiver } from "../chain/escrow";
import { isRevert, revertedOnChain } from "../chain/sender";
import { ErrorCodes, errorSummary } from "../protocol/errors";
import type { VoucherClaim } from "../protocol/typedData";
import type { ChannelRecord } from "../store/channelStore";
import type { Payee } from "./payee";

export type ClaimStrategy = {
  /** Claim when a channel's unclaimed charges exceed this (atomic units). */
  threshold?: bigint;
  /**
   * The threshold for channels whose payer signs its own vouchers (payerAuthorizer = 0; default: `threshold`).
   * The escrow checks those at claim time with the payer's code as it is then: a smart wallet, or an EOA that
   * later delegates with EIP-7702, can stop honouring vouchers the node already served for. A lower
   * threshold bounds what that can cost.
   */
  payerSignedThreshold?: bigint;
  /** Claim everything every N ms. */
  intervalMs?: number;
  /** Rows per claim transaction (default 100). */
  batchSize?: number;
  /** Claim and settle on stop() (default true). */
  onShutdown?: boolean;
};

export type ClaimTransaction = { hash: Hex; gasUsed: bigint; channels: Hex[]; amount: bigint };
/** Which channels a run claims: all pending, or those listed; see ClaimEngine.claim. */
export type ClaimSelection = {
  channels?: Hex[];
  includeUnclaimable?: boolean;
  /**
   * Claimed ahead of everything else (a withdrawal is pending on them): a run in progress takes them
   * between two of its transactions instead of after its last one.
   */
  first?: boolean;
};

export type ClaimReport = {
  transactions: ClaimTransaction[];
  /** Channels that could not be claimed, with the revert that isolated them. */
  failed: Array<{ channelId: Hex; reason: string }>;
  claimedChannels: number;
  /** Channels asked for by id that the store does not hold (unknown, or closed and gone). */
  notHeld?: Hex[];
};

export type ClaimEngineOptions = ClaimStrategy & {
  logger?: Logger;
  /** Called for every row that cannot be claimed (alerting). */
  onAlert?: (channelId: Hex, reason: string) => void;
  /** Progress callback for batch commands. */
  onProgress?: (done: number, total: number) => void;
};

/** A record with something a claim can still collect, and a voucher to collect it with. */
export function hasClaim(rec: ChannelRecord): boolean {
  return claimable(rec) > 0n && rec.signature !== "0x";
}

/**
 * A channel's unclaimed exposure: charged, not yet claimed on chain, and still backed by its balance (what
 * a claim can collect). Charges a finalized withdrawal took are not exposure but a loss (see `lost`).
 */
export function exposure(rec: ChannelRecord): bigint {
  return claimable(rec);
}

/** When the channel's pending withdrawal can be finalized (ms since epoch); undefined when none is pending. */
export function finalizeAtMs(rec: ChannelRecord): number | undefined {
  return rec.withdrawRequestedAt === 0 ? undefined : (rec.withdrawRequestedAt + rec.config.withdrawDelay) * 1000;
}

/** Charges no claim can collect any more: a finalized withdrawal left the balance below them. */
export function lost(rec: ChannelRecord): bigint {
  const backed = rec.balance > rec.totalClaimed ? rec.balance : rec.totalClaimed;
  return rec.chargedCumulative > backed ? rec.chargedCumulative - backed : 0n;
}

/**
 * What a claim can still collect: charged, but not above the channel's balance (after a finalized
 * withdrawal the balance can be below the charges; the rest is lost, not worth a reverting claim).
 */
export function claimable(rec: ChannelRecord): bigint {
  const upTo = rec.chargedCumulative < rec.balance ? rec.chargedCumulative : rec.balance;
  return upTo > rec.totalClaimed ? upTo - rec.totalClaimed : 0n;
}

export class ClaimEngine {
  private timer: NodeJS.Timeout | undefined;
  /** The periodic claim-and-settle in progress, if any (stop waits for it). */
  private periodic: Promise<void> | undefined;
  private running: Promise<unknown> | undefined;
  /** Claims asked for with `first`, waiting for the next batch boundary of a run (or their own run). */
  private readonly firstQueue: Array<{ select: ClaimSelection; resolve: (r: ClaimReport) => void; reject: (err: unknown) => void }> = [];
  /** Channels past their threshold, waiting for the next threshold run (noteCharge). */
  private readonly urgent = new Set<Hex>();
  /** The threshold run queued and not started yet: channels flagged meanwhile join it. */
  private urgentRun: Promise<ClaimReport> | undefined;

  constructor(
    readonly payee: Payee,
    readonly opts: ClaimEngineOptions = {},
  ) {}

  /** Records with something to claim (and a voucher to claim it with). */
  async pending(filter?: (r: ChannelRecord) => boolean): Promise<ChannelRecord[]> {
    const out: ChannelRecord[] = [];
    for await (const rec of this.payee.store.channels()) {
      if (hasClaim(rec) && (!filter || filter(rec))) out.push(rec);
    }
    return out;
  }

  /**
   * Claims all pending channels, or those listed. Runs never overlap (one key, one nonce): a call made
   * while a run is in progress starts its own run after it. Channels the chain refused to claim
   * (Payee.unclaimable) are left out unless `includeUnclaimable` (an operator's request, the shutdown):
   * the automatic runs would otherwise pay for a reverting transaction on every run.
   */
  claim(select: ClaimSelection = {}): Promise<ClaimReport> {
    if (!select.first) return this.enqueue(() => this.claimSelected(select));
    const done = new Promise<ClaimReport>((resolve, reject) => this.firstQueue.push({ select, resolve, reject }));
    // Taken by the run in progress at its next batch, or else by this run of its own.
    void this.enqueue(() => this.claimFirst());
    return done;
  }

  /** Runs the `first` claims waiting (see ClaimSelection.first); called between a run's batches and as a run. */
  private async claimFirst(): Promise<void> {
    for (let job = this.firstQueue.shift(); job; job = this.firstQueue.shift()) {
      await this.claimSelected(job.select, false).then(job.resolve, job.reject);
    }
  }

  private enqueue<T>(job: () => Promise<T>): Promise<T> {
    const run = (this.running ?? Promise.resolve()).catch(() => undefined).then(job);
    this.running = run;
    return run;
  }

  private async claimSelected(select: ClaimSelection, takeFirst = true): Promise<ClaimReport> {
    let recs: ChannelRecord[];
    let notHeld: Hex[] | undefined;
    if (select.channels) {
      // Listed channels are read directly, not found by a scan of the whole store.
      const ids = [...new Set(select.channels.map((c) => c.toLowerCase() as Hex))];
      const found = await Promise.all(ids.map((id) => this.payee.store.getChannel(id)));
      // A channel gone from the store (refunded, closed) has nothing left to refuse.
      ids.forEach((id, i) => found[i] === undefined && this.payee.clearUnclaimable(id));
      notHeld = ids.filter((_id, i) => found[i] === undefined);
      recs = found.filter((r): r is ChannelRecord => r !== undefined && hasClaim(r));
    } else {
      recs = await this.pending();
    }
    if (!select.includeUnclaimable && this.payee.unclaimable.size > 0) recs = recs.filter((r) => !this.payee.unclaimable.has(r.channelId));
    const report: ClaimReport = { transactions: [], failed: [], claimedChannels: 0, ...(notHeld?.length ? { notHeld } : {}) };
    const size = this.opts.batchSize ?? 100;
    // In batches; a row the chain refused before goes alone, after them.
    const alone = (r: ChannelRecord) => this.payee.unclaimable.has(r.channelId);
    const batched = recs.filter((r) => !alone(r));
    const groups: ChannelRecord[][] = [];
    for (let i = 0; i < batched.length; i += size) groups.push(batched.slice(i, i + size));
    for (const r of recs) if (alone(r)) groups.push([r]);
    let done = 0;
    for (const [i, group] of groups.entries()) {
      if (takeFirst && this.firstQueue.length > 0) await this.claimFirst();
      try {
        await this.claimGroup(group, report);
      } catch (err) {
        // The run stops (an RPC failure says nothing about the rows: no one is blamed), and what it did
        // so far goes with the error: the transactions that landed, and the rows not claimed.
        const reason = errorSummary(err);
        // Rows this run already claimed or failed (a split batch's first half) are not "left".
        const handled = new Set<Hex>([...report.failed.map((f) => f.channelId), ...report.transactions.flatMap((t) => t.channels)]);
        const left = groups.slice(i).flat().filter((r) => !handled.has(r.channelId)).map((r) => ({ channelId: r.channelId, reason }));
        throw new ClaimRunError(err, { ...report, failed: [...report.failed, ...left] });
      }
      done += group.length;
      this.opts.onProgress?.(done, recs.length);
    }
    return report;
  }

  /** Claims `recs` in one transaction, around the rows that fail simulation. */
  private async claimGroup(recs: ChannelRecord[], report: ClaimReport): Promise<void> {
    const { good, bad } = await this.isolate(recs);
    for (const b of bad) this.fail(report, b.channelId, b.reason, "channel cannot be claimed");
    if (good.length > 0) await this.send(good, report);
  }

  /**
   * Sends one claim transaction for `recs` (simulated already). When the chain refuses it (a revert in gas
   * estimation or mined), the rows are sent again in halves, each simulated first; a row refused alone is
   * marked unclaimable. Any other failure (no ETH for gas, the RPC, a receipt that did not come) says
   * nothing about the rows: they are reported failed, as they are.
   */
  private async send(recs: ChannelRecord[], report: ClaimReport): Promise<void> {
    let sent;
    try {
      sent = await this.payee.opts.sender.send({
        address: this.payee.opts.escrow,
        abi: batchSettlementAbi,
        functionName: "claim",
        args: [recs.map(toClaimRow)],
        simulationError: ErrorCodes.claimSimulationFailed,
        transactionError: ErrorCodes.claimTransactionFailed,
      });
    } catch (err) {
      const reason = errorSummary(err);
      if (!refusedByChain(err)) {
        for (const r of recs) this.fail(report, r.channelId, reason, "claim transaction failed");
      } else if (recs.length === 1) {
        // Simulated again: a row that fails it now met a change of state (a withdrawal finalized first), not
        // a payer whose signature check answers an eth_call and not a transaction.
        const resimulated = await this.isolate(recs).catch(() => undefined);
        if (resimulated?.good.length === 1) {
          await this.payee.markUnclaimable(recs[0]!.channelId);
          this.fail(report, recs[0]!.channelId, reason, "the chain refused this channel's claim though its simulation passes: no new charges and no automatic claims on it until a claim lands");
        } else {
          this.fail(report, recs[0]!.channelId, resimulated?.bad[0]?.reason ?? reason, "channel cannot be claimed");
        }
      } else {
        const mid = recs.length >> 1;
        await this.claimGroup(recs.slice(0, mid), report);
        await this.claimGroup(recs.slice(mid), report);
      }
      return;
    }
    const { hash, receipt } = sent;
    const ids = recs.map((r) => r.channelId);
    // Unclaimable marks are cleared by applyClaimed, for the rows whose claim landed (a row at or below the
    // chain's total is a no-op without an event: it says nothing of the payer's signature check).
    let amount = 0n;
    // The receipt's Claimed events say exactly what each channel's total is now.
    const totals = new Map<Hex, bigint>();
    for (const ev of parseEventLogs({ abi: batchSettlementAbi, logs: receipt.logs, eventName: "Claimed" })) {
      totals.set(ev.args.channelId, ev.args.newTotalClaimed);
      amount += ev.args.claimAmount;
    }
    await this.payee.applyClaimed(totals, { hash, blockNumber: receipt.blockNumber });
    await this.payee.store.appendHistory({ at: Date.now(), kind: "claim", txHash: hash, channels: ids, amount, gasUsed: receipt.gasUsed });
    report.transactions.push({ hash, gasUsed: receipt.gasUsed, channels: ids, amount });
    report.claimedChannels += recs.length;
    this.opts.logger?.info({ tx: hash, channels: ids.length, amount: amount.toString(), gasUsed: receipt.gasUsed.toString() }, "claimed");
  }

  /** Reports a channel that could not be claimed, with an alert naming it. */
  private fail(report: ClaimReport, channelId: Hex, reason: string, message: string): void {
    report.failed.push({ channelId, reason });
    this.opts.logger?.error({ alert: "claim_failed", channelId, reason }, message);
    this.opts.onAlert?.(channelId, reason);
  }

  /** Simulates the claim of `recs`; on failure bisects down to the failing rows. */
  private async isolate(recs: ChannelRecord[]): Promise<{ good: ChannelRecord[]; bad: Array<{ channelId: Hex; reason: string }> }> {
    try {
      await this.payee.opts.sender.simulate({
        address: this.payee.opts.escrow,
        abi: batchSettlementAbi,
        functionName: "claim",
        args: [recs.map(toClaimRow)],
      });
      return { good: recs, bad: [] };
    } catch (err) {
      // Only a revert names a bad row; an RPC failure says nothing about the rows: the run fails, to be retried.
      if (!isRevert(err)) throw err;
      if (recs.length === 1) return { good: [], bad: [{ channelId: recs[0]!.channelId, reason: errorSummary(err) }] };
      const mid = recs.length >> 1;
      const a = await this.isolate(recs.slice(0, mid));
      const b = await this.isolate(recs.slice(mid));
      return { good: [...a.good, ...b.good], bad: [...a.bad, ...b.bad] };
    }
  }

  /** Transfers everything claimed but unsettled to the receiver (one transaction, or none). */
  async settle(): Promise<{ hash?: Hex; amount: bigint; gasUsed?: bigint }> {
    const { escrow, receiver, asset } = this.payee.opts;
    const r = await readReceiver(this.payee.opts.publicClient, escrow, receiver, asset.address);
    const amount = r.totalClaimed - r.totalSettled;
    if (amount === 0n) return { amount };
    const { hash, receipt } = await this.payee.opts.sender.send({
      address: escrow,
      abi: batchSettlementAbi,
      functionName: "settle",
      args: [receiver, asset.address],
      simulationError: ErrorCodes.settleSimulationFailed,
      transactionError: ErrorCodes.settleTransactionFailed,
    });
    // What moved is in the receipt (a settle queued behind another one moves nothing and emits nothing).
    const moved = amountMoved(receipt.logs, "Settled");
    await this.payee.store.appendHistory({ at: Date.now(), kind: "settle", txHash: hash, channels: [], amount: moved, gasUsed: receipt.gasUsed });
    this.opts.logger?.info({ tx: hash, amount: moved.toString() }, "settled");
    return { hash, amount: moved, gasUsed: receipt.gasUsed };
  }

  /**
   * Threshold strategy: call after each committed charge. A channel past its threshold joins the next
   * threshold run; one run claims every channel flagged until it starts (in batches), not one run each.
   */
  noteCharge(rec: ChannelRecord): void {
    const t = rec.config.payerAuthorizer === zeroAddress ? (this.opts.payerSignedThreshold ?? this.opts.threshold) : this.opts.threshold;
    if (t === undefined || exposure(rec) <= t || this.urgent.has(rec.channelId)) return;
    this.urgent.add(rec.channelId);
    if (this.urgentRun) return;
    this.urgentRun = this.enqueue(async () => {
      await new Promise((r) => setImmediate(r)); // charges committed in the same moment join this run
      this.urgentRun = undefined;
      const ids = [...this.urgent];
      try {
        return await this.claimSelected({ channels: ids });
      } finally {
        // Claimed, failed or nothing left: the threshold may flag them again.
        for (const id of ids) this.urgent.delete(id);
      }
    });
    this.urgentRun.catch((err) => this.opts.logger?.error({ alert: "claim_failed", err: errorSummary(err) }, "threshold claim failed"));
  }

  /** Starts the periodic strategy. */
  start(): void {
    if (this.opts.intervalMs && !this.timer) {
      this.timer = setInterval(() => {
        if (this.periodic) return; // the previous run is still going: no pile-up behind a slow chain
        this.periodic = this.claim()
          .then(() => this.settle())
          .then(
            () => undefined,
            (err) => void this.opts.logger?.error({ alert: "claim_failed", err: errorSummary(err) }, "periodic claim failed"),
          )
          .finally(() => (this.periodic = undefined));
      }, this.opts.intervalMs);
      this.timer.unref();
    }
  }

  /**
   * Stops timers and waits for a periodic run in progress; with onShutdown (default) then claims and
   * settles everything. Says what it could not do, so an operator is not told all was claimed when not.
   */
  async stop(): Promise<ShutdownReport> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.periodic;
    if (!(this.opts.onShutdown ?? true)) {
      await this.running?.catch(() => undefined);
      return { unclaimed: 0, skipped: true };
    }
    const out: ShutdownReport = { unclaimed: 0 };
    try {
      out.unclaimed = (await this.claim({ includeUnclaimable: true })).failed.length;
    } catch (err) {
      out.error = `claim: ${errorSummary(err)}`;
      this.opts.logger?.error({ alert: "claim_failed", err: errorSummary(err) }, "shutdown claim failed");
    }
    try {
      await this.settle();
    } catch (err) {
      out.error ??= `settle: ${errorSummary(err)}`;
      this.opts.logger?.error({ alert: "settle_failed", err: errorSummary(err) }, "shutdown settle failed");
    }
    return out;
  }
}

/** A claim run stopped by a failure that says nothing about its rows (the RPC); `report` is what it did before. */
export class ClaimRunError extends Error {
  override name = "ClaimRunError";
  constructor(
    cause: unknown,
    readonly report: ClaimReport,
  ) {
    super(errorSummary(cause), { cause });
  }
}

/** What a shutdown left undone: channels its claim could not claim, and a claim or settle that failed as a whole. */
export type ShutdownReport = { unclaimed: number; error?: string; /** onShutdown was off: nothing was claimed. */ skipped?: true };

/**
 * The chain refused the transaction: a revert in its simulation, its gas estimation (viem's
 * ExecutionRevertedError, or a node's own wording, e.g. Hardhat's "reverted with custom error") or once
 * mined. Not: no ETH for gas, an RPC failure, a timeout.
 */
function refusedByChain(err: unknown): boolean {
  if (isRevert(err) || revertedOnChain(err)) return true;
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if (e instanceof ExecutionRevertedError || /\brevert(ed)?\b/i.test((e as { details?: string }).details ?? (e as Error).message ?? "")) return true;
  }
  return false;
}

/** The claim row that collects what a record charged (up to its balance) with its stored voucher. */
export function toClaimRow(rec: ChannelRecord): VoucherClaim {
  return {
    voucher: { channel: rec.config, maxClaimableAmount: rec.signedMaxClaimable },
    signature: rec.signature,
    totalClaimed: rec.totalClaimed + claimable(rec),
  };
}
