/**
 * Chain mirror and withdrawal watcher. Polls the escrow's events from a checkpoint; for each event on a
 * channel the node holds, re-reads that channel and mirrors it into the store. A WithdrawInitiated on
 * one of our channels triggers an immediate claim of its latest voucher, well before the delay ends;
 * if that fails an alert is logged. Each successful poll refreshes the payee's chain view
 * (`chainSyncedAt`), which bounds how long the node serves while the chain is unreachable.
 */
import type { Hex } from "viem";
import type { Logger } from "pino";
import { batchSettlementAbi } from "../chain/abi";
import type { ClaimEngine } from "./claims";
import type { Payee } from "./payee";

export type WatcherOptions = {
  pollIntervalMs?: number;
  /** Blocks to stay behind head for mirrored state (reorg safety); withdrawals are acted on at head. */
  confirmations?: number;
  logger?: Logger;
  onAlert?: (channelId: Hex, reason: string) => void;
};

const CHECKPOINT = "mirror.checkpoint";

export class ChainWatcher {
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  /** Consecutive failed polls (for /health). */
  failures = 0;

  constructor(
    readonly payee: Payee,
    readonly claims: ClaimEngine,
    readonly opts: WatcherOptions = {},
  ) {}

  async checkpoint(): Promise<bigint | undefined> {
    const v = await this.payee.store.getMeta(CHECKPOINT);
    return v === undefined ? undefined : BigInt(v);
  }

  /** One poll: fetch new events, mirror channels, react to withdrawals. */
  poll(): Promise<void> {
    if (!this.polling) {
      this.polling = this.pollNow().finally(() => (this.polling = undefined));
    }
    return this.polling;
  }

  private async pollNow(): Promise<void> {
    const client = this.payee.opts.publicClient;
    try {
      const head = await client.getBlockNumber({ cacheTime: 0 });
      const last = await this.checkpoint();
      const from = last === undefined ? (head > 1000n ? head - 1000n : 0n) : last + 1n;
      if (from <= head) {
        const logs = await client.getContractEvents({
          address: this.payee.opts.escrow,
          abi: batchSettlementAbi,
          fromBlock: from,
          toBlock: head,
        });
        const touched = new Set<Hex>();
        const withdrawals = new Set<Hex>();
        for (const log of logs) {
          const args = log.args as { channelId?: Hex };
          if (!args.channelId) continue;
          if (!(await this.payee.store.getChannel(args.channelId))) continue;
          touched.add(args.channelId);
          if (log.eventName === "WithdrawInitiated") withdrawals.add(args.channelId);
        }
        for (const id of touched) await this.payee.syncChannel(id);
        for (const id of withdrawals) {
          this.opts.logger?.warn({ channelId: id }, "payer initiated a withdrawal; claiming now");
          const report = await this.claims.claimUrgently(id).catch((err: Error) => ({ failed: [{ channelId: id, reason: err.message }] }));
          for (const f of report.failed) {
            this.opts.logger?.error({ alert: "withdrawal_claim_failed", channelId: f.channelId, reason: f.reason }, "could not claim before withdrawal");
            this.opts.onAlert?.(f.channelId, f.reason);
          }
        }
        const safe = head - BigInt(this.opts.confirmations ?? 0);
        await this.payee.store.putMeta(CHECKPOINT, (safe > (last ?? -1n) ? safe : head).toString());
      }
      this.payee.chainSyncedAt = Date.now();
      this.failures = 0;
    } catch (err) {
      this.failures++;
      this.opts.logger?.warn({ err: (err as Error).message.split("\n")[0], failures: this.failures }, "chain poll failed");
    }
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.poll(), this.opts.pollIntervalMs ?? 2_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.polling;
  }
}
