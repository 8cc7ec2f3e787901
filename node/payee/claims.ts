/**
 * The claim engine: turns charged-but-unclaimed vouchers into on-chain claims, in batches, and sweeps
 * claimed funds with `settle`. One bad row never blocks a batch: each batch is simulated first and
 * failing rows are isolated by bisection, claimed around, and reported as an alert.
 */
import { parseEventLogs, zeroAddress, type Hex } from "viem";
import type { Logger } from "pino";
import { batchSettlementAbi } from "../chain/abi";
import { amountMoved, readReceiver } from "../chain/escrow";
import { isRevert } from "../chain/sender";
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
export type ClaimReport = {
  transactions: ClaimTransaction[];
  /** Channels that could not be claimed, with the revert that isolated them. */
  failed: Array<{ channelId: Hex; reason: string }>;
  claimedChannels: number;
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

/** A channel's unclaimed exposure: charged but not yet claimed on chain. */
export function exposure(rec: ChannelRecord): bigint {
  return rec.chargedCumulative > rec.totalClaimed ? rec.chargedCumulative - rec.totalClaimed : 0n;
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
  private running: Promise<ClaimReport> | undefined;
  /** Channels flagged for a prompt claim (threshold crossed, withdrawal seen). */
  private readonly urgent = new Set<Hex>();

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

  /** Claims all pending channels, or those listed. Concurrent calls share one run. */
  claim(select: { channels?: Hex[] } = {}): Promise<ClaimReport> {
    const previous = this.running ?? Promise.resolve(undefined);
    const run = previous.catch(() => undefined).then(() => this.claimNow(select));
    this.running = run;
    return run;
  }

  private async claimNow(select: { channels?: Hex[] }): Promise<ClaimReport> {
    try {
      return await this.claimSelected(select);
    } finally {
      // Whatever happened (claimed, failed, nothing left to claim), the threshold may fire again for them.
      if (select.channels) for (const id of select.channels) this.urgent.delete(id);
      else this.urgent.clear();
    }
  }

  private async claimSelected(select: { channels?: Hex[] }): Promise<ClaimReport> {
    let recs: ChannelRecord[];
    if (select.channels) {
      // Listed channels are read directly, not found by a scan of the whole store.
      const ids = [...new Set(select.channels.map((c) => c.toLowerCase() as Hex))];
      const found = await Promise.all(ids.map((id) => this.payee.store.getChannel(id)));
      recs = found.filter((r): r is ChannelRecord => r !== undefined && hasClaim(r));
    } else {
      recs = await this.pending();
    }
    const report: ClaimReport = { transactions: [], failed: [], claimedChannels: 0 };
    const size = this.opts.batchSize ?? 100;
    let done = 0;
    for (let i = 0; i < recs.length; i += size) {
      const batch = recs.slice(i, i + size);
      const rows = batch.map(toClaimRow);
      const { good, bad } = await this.isolate(rows, batch);
      for (const b of bad) {
        report.failed.push(b);
        this.opts.logger?.error({ alert: "claim_failed", channelId: b.channelId, reason: b.reason }, "channel cannot be claimed");
        this.opts.onAlert?.(b.channelId, b.reason);
      }
      if (good.length > 0) {
        let sent;
        try {
          sent = await this.payee.opts.sender.send({
            address: this.payee.opts.escrow,
            abi: batchSettlementAbi,
            functionName: "claim",
            args: [good.map((g) => g.row)],
            simulationError: ErrorCodes.claimSimulationFailed,
            transactionError: ErrorCodes.claimTransactionFailed,
          });
        } catch (err) {
          // This batch only (a race with a payer's withdrawal, a receipt that did not come): its channels
          // are named in the alert, and the next batches are still claimed.
          const reason = errorSummary(err);
          for (const g of good) {
            report.failed.push({ channelId: g.rec.channelId, reason });
            this.opts.logger?.error({ alert: "claim_failed", channelId: g.rec.channelId, reason }, "claim transaction failed");
            this.opts.onAlert?.(g.rec.channelId, reason);
          }
          done += batch.length;
          this.opts.onProgress?.(done, recs.length);
          continue;
        }
        const { hash, receipt } = sent;
        const ids = good.map((g) => g.rec.channelId);
        let amount = 0n;
        // The receipt's Claimed events say exactly what each channel's total is now.
        const totals = new Map<Hex, bigint>();
        for (const ev of parseEventLogs({ abi: batchSettlementAbi, logs: receipt.logs, eventName: "Claimed" })) {
          totals.set(ev.args.channelId, ev.args.newTotalClaimed);
          amount += ev.args.claimAmount;
        }
        await this.payee.applyClaimed(totals);
        await this.payee.store.appendHistory({ at: Date.now(), kind: "claim", txHash: hash, channels: ids, amount, gasUsed: receipt.gasUsed });
        report.transactions.push({ hash, gasUsed: receipt.gasUsed, channels: ids, amount });
        report.claimedChannels += good.length;
        this.opts.logger?.info({ tx: hash, channels: ids.length, amount: amount.toString(), gasUsed: receipt.gasUsed.toString() }, "claimed");
      }
      done += batch.length;
      this.opts.onProgress?.(done, recs.length);
    }
    return report;
  }

  /** Simulates the batch; on failure bisects down to the failing rows. */
  private async isolate(
    rows: VoucherClaim[],
    recs: ChannelRecord[],
  ): Promise<{ good: Array<{ row: VoucherClaim; rec: ChannelRecord }>; bad: Array<{ channelId: Hex; reason: string }> }> {
    try {
      await this.payee.opts.sender.simulate({
        address: this.payee.opts.escrow,
        abi: batchSettlementAbi,
        functionName: "claim",
        args: [rows],
      });
      return { good: rows.map((row, i) => ({ row, rec: recs[i]! })), bad: [] };
    } catch (err) {
      // Only a revert names a bad row; an RPC failure says nothing about the rows: the run fails, to be retried.
      if (!isRevert(err)) throw err;
      if (rows.length === 1) {
        return { good: [], bad: [{ channelId: recs[0]!.channelId, reason: errorSummary(err) }] };
      }
      const mid = rows.length >> 1;
      const a = await this.isolate(rows.slice(0, mid), recs.slice(0, mid));
      const b = await this.isolate(rows.slice(mid), recs.slice(mid));
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

  /** Threshold strategy: call after each committed charge. */
  noteCharge(rec: ChannelRecord): void {
    const t = rec.config.payerAuthorizer === zeroAddress ? (this.opts.payerSignedThreshold ?? this.opts.threshold) : this.opts.threshold;
    if (t !== undefined && exposure(rec) > t && !this.urgent.has(rec.channelId)) {
      this.urgent.add(rec.channelId);
      void this.claim({ channels: [rec.channelId] }).catch((err) =>
        this.opts.logger?.error({ alert: "claim_failed", err: errorSummary(err) }, "threshold claim failed"),
      );
    }
  }

  /** Starts the periodic strategy. */
  start(): void {
    if (this.opts.intervalMs && !this.timer) {
      let busy = false;
      this.timer = setInterval(() => {
        if (busy) return; // the previous run is still going: no pile-up behind a slow chain
        busy = true;
        void this.claim()
          .then(() => this.settle())
          .catch((err) => this.opts.logger?.error({ alert: "claim_failed", err: errorSummary(err) }, "periodic claim failed"))
          .finally(() => (busy = false));
      }, this.opts.intervalMs);
      this.timer.unref();
    }
  }

  /** Stops timers; with onShutdown (default) claims and settles everything first. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.opts.onShutdown ?? true) {
      await this.claim().catch((err: Error) => this.opts.logger?.error({ alert: "claim_failed", err: errorSummary(err) }, "shutdown claim failed"));
      await this.settle().catch((err: Error) => this.opts.logger?.error({ alert: "settle_failed", err: errorSummary(err) }, "shutdown settle failed"));
    } else {
      await this.running?.catch(() => undefined);
    }
  }
}

/** The claim row that collects what a record charged (up to its balance) with its stored voucher. */
export function toClaimRow(rec: ChannelRecord): VoucherClaim {
  return {
    voucher: { channel: rec.config, maxClaimableAmount: rec.signedMaxClaimable },
    signature: rec.signature,
    totalClaimed: rec.totalClaimed + claimable(rec),
  };
}
