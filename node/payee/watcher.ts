/**
 * Chain mirror and withdrawal watcher. Polls the escrow's events from a checkpoint; for each event on a
 * channel the node holds, re-reads that channel and mirrors it into the store. Each successful poll
 * refreshes the payee's chain view (`chainSyncedAt`), which bounds how long the node serves while the
 * chain is unreachable.
 *
 * Withdrawals: a channel with a pending withdrawal and charges not yet claimed is claimed on every poll
 * until the claim is on chain (all such channels in one claim run). The list is driven by stored state,
 * not by the one WithdrawInitiated event: a failed claim is retried on the next poll, and after a
 * restart a scan of the store finds the channels again. While the withdrawal is pending the payee
 * refuses vouchers the withdrawal could leave unbacked (payee.checkChannelState), so only what was
 * charged before it was seen needs this claim. A claim that keeps failing raises an alert (at most once
 * a minute per channel).
 *
 * Channels the node is meeting right now count as held: a channel whose first paid request is still
 * running has no record yet, but its lock is held; its sync waits for the request's commit and then
 * mirrors the event (a withdrawal initiated meanwhile is not lost).
 *
 * Reorg safety: with `confirmations` N > 0 the checkpoint stays N blocks behind head, and mirrored state
 * is the more cautious of the confirmed and the latest view (lower balance, larger pending withdrawal).
 * Every poll that fetches logs also scans the RESCAN_BLOCKS blocks up to the checkpoint again, whatever N is: a log an RPC
 * had not indexed yet when it answered at head, or a shallow reorg, is still seen. Each log is acted on
 * once, and a log in a block not yet confirmed once more when the block is (the confirmed view then has
 * it): a log whose channel was mirrored is remembered by block hash and log index until it leaves the
 * rescanned blocks, so a rescan does not take a busy channel's lock again; a reorganised block has a new
 * hash and is mirrored again. A channel whose sync fails (its lock held by a long request, an RPC error)
 * does not stop the poll: the checkpoint stays before its event and the log is not remembered, so the
 * next poll tries it again.
 *
 * A poll at a head already scanned twice, with every channel mirrored, fetches no logs until the head
 * moves (the second look is for an RPC whose log index lagged its head at the first). A log missed both
 * times, or a head block replaced at the same height, is caught by the rescan once the head moves on.
 * Such a poll still refreshes the chain view and claims.
 */
import type { Hex } from "viem";
import type { Logger } from "pino";
import { batchSettlementAbi } from "../chain/abi";
import { readChannelCautious } from "../chain/escrow";
import { errorSummary } from "../protocol/errors";
import { ClaimRunError, finalizeAtMs, hasClaim, type ClaimEngine } from "./claims";
import type { Payee } from "./payee";

export type WatcherOptions = {
  pollIntervalMs?: number;
  /** Blocks to stay behind head for mirrored state (reorg safety); withdrawals are acted on at head. */
  confirmations?: number;
  /** Most blocks asked for in one eth_getLogs (providers cap it; default 2,000). */
  maxBlockRange?: number;
  logger?: Logger;
  onAlert?: (channelId: Hex, reason: string) => void;
};

const CHECKPOINT = "mirror.checkpoint";
/** Block ranges scanned in one poll at most (with maxBlockRange 2,000: 40,000 blocks). */
const MAX_CHUNKS_PER_POLL = 20;
/** Consecutive failed polls after which the failure is logged as an alert. */
const STALE_ALERT_AFTER = 5;
/** A withdrawal claim that keeps failing is alerted again at most this often (ms). */
const REALERT_MS = 60_000;
/**
 * Blocks up to the checkpoint scanned again on every poll: a load-balanced RPC can answer getLogs at head
 * from a backend whose log index is a block behind (no error, no logs), and a chain can reorganise a
 * block or two, also with `confirmations` 0.
 */
const RESCAN_BLOCKS = 12n;
/** Withdrawal claims tried for a channel the chain refused to claim (Payee.unclaimable) before giving up on it. */
const UNCLAIMABLE_WITHDRAWAL_TRIES = 3;
/** Channels mirrored at once (each sync is a few RPC reads, and may wait for a request on its channel). */
const SYNC_CONCURRENCY = 16;

/** A log's identity: a reorganised block has another hash, so its logs are new. */
const logKey = (log: { blockHash: Hex | null; logIndex: number | null }) =>
  log.blockHash === null || log.logIndex === null ? undefined : `${log.blockHash}:${log.logIndex}`;

const max = (a: bigint, b: bigint) => (a > b ? a : b);

export class ChainWatcher {
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  /** Channels with a pending withdrawal and (possibly) unclaimed charges: claimed on every poll until done. */
  private readonly withdrawing = new Set<Hex>();
  /** Failing withdrawal claims: consecutive failures, next attempt and last alert (ms). */
  private readonly failing = new Map<Hex, { n: number; nextAt: number; alertedAt: number }>();
  /** The store scan (scanOnce): running or done; cleared when it fails. */
  private scan: Promise<void> | undefined;
  private claiming: Promise<void> | undefined;
  /**
   * Logs already mirrored (key: block hash and log index), with their block and whether it was confirmed
   * then, so the rescan skips them (an unconfirmed one until it is confirmed). Only blocks still
   * rescanned are kept.
   */
  private readonly seen = new Map<string, { at: bigint; confirmed: boolean }>();
  /** The last head scanned to the end with every channel mirrored, and how many polls did (skip at 2). */
  private scanned: { head: bigint; looks: number } | undefined;
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

  /** One poll: fetch new events, mirror channels, claim channels with pending withdrawals. */
  poll(): Promise<void> {
    if (!this.polling) {
      this.polling = this.pollNow().finally(() => (this.polling = undefined));
    }
    return this.polling;
  }

  /** Channels the watcher is claiming because of a pending withdrawal (for status and tests). */
  get pendingWithdrawals(): Hex[] {
    return [...this.withdrawing];
  }

  private async pollNow(): Promise<void> {
    try {
      // The view is as old as the head it starts from (a slow poll must not make it look fresher).
      const viewAt = Date.now();
      const head = await this.payee.opts.publicClient.getBlockNumber({ cacheTime: 0 });
      const last = this.scanned;
      const idle = last?.head === head && last.looks >= 2 && this.payee.unsynced.size === 0;
      if (idle || (await this.mirror(head))) {
        this.payee.chainSyncedAt = viewAt;
        this.failures = 0;
      }
    } catch (err) {
      this.failures++;
      const level = this.failures === STALE_ALERT_AFTER ? "error" : "warn";
      this.opts.logger?.[level](
        { err: errorSummary(err), failures: this.failures, ...(level === "error" ? { alert: "chain_view_stale" } : {}) },
        "chain poll failed",
      );
    }
    // Refunds that timed out or were cut by a restart: their channels take charges again once settled on chain.
    await this.payee.resolveRefundsPending().catch((err: Error) => this.opts.logger?.warn({ err: errorSummary(err) }, "pending refunds not resolved (retried next poll)"));
    // In the background: a long claim run (receipts, confirmations) must not stop the polls that keep
    // the chain view fresh. One run at a time.
    this.claiming ??= this.claimWithdrawing()
      .catch((err: Error) => this.opts.logger?.error({ alert: "withdrawal_claim_failed", err: errorSummary(err) }, "withdrawal claims failed"))
      .finally(() => (this.claiming = undefined));
  }

  /** Fetches the events from the checkpoint (less the rescan) up to `head` and mirrors them; true when it got to head. */
  private async mirror(head: bigint): Promise<boolean> {
    const client = this.payee.opts.publicClient;
    const depth = BigInt(this.opts.confirmations ?? 0);
    const range = BigInt(this.opts.maxBlockRange ?? 2_000);
    const last = this.scanned;
    this.scanned = undefined;
    const safe = head - depth;
    let checkpoint = await this.checkpoint();
    let from = checkpoint === undefined ? (head > 1000n ? head - 1000n : 0n) : max(0n, checkpoint + 1n - RESCAN_BLOCKS);
    // The checkpoint may not pass the block of an event whose channel could not be synced.
    let hold: bigint | undefined;
    // In ranges RPC providers accept; a node that was down long catches up over several polls.
    for (let chunk = 0; from <= head && chunk < MAX_CHUNKS_PER_POLL; chunk++) {
      const to = head < from + range - 1n ? head : from + range - 1n;
      const logs = await client.getContractEvents({ address: this.payee.opts.escrow, abi: batchSettlementAbi, fromBlock: from, toBlock: to });
      // Each touched channel with the block of its first new event in this range, and the new logs to
      // remember once it is mirrored.
      const touched = new Map<Hex, { block: bigint; keys: Array<[string, { at: bigint; confirmed: boolean }]>; txs: Array<Hex | null> }>();
      for (const log of logs) {
        const args = log.args as { channelId?: Hex };
        if (!args.channelId) continue;
        const key = logKey(log);
        const block = log.blockNumber ?? from;
        const confirmed = block <= safe;
        // Mirrored already; one in an unconfirmed block is mirrored once more when it is confirmed.
        const known = key === undefined ? undefined : this.seen.get(key);
        if (known && (known.confirmed || !confirmed)) continue;
        // This node's own transaction, its effect stored from its receipt: nothing to read back.
        if (confirmed && key !== undefined && this.payee.isApplied(log.transactionHash, args.channelId)) {
          this.seen.set(key, { at: block, confirmed });
          continue;
        }
        let t = touched.get(args.channelId);
        if (!t) {
          // Not ours, unless a request is meeting it right now (its record is written at the commit). A
          // channel left unsynced by an earlier poll and gone since (a first request that failed, a record
          // deleted after a refund) has nothing to mirror: it must not stay refused.
          if (!this.payee.locks.isHeld(args.channelId) && !(await this.payee.store.getChannel(args.channelId))) {
            this.payee.unsynced.delete(args.channelId);
            continue;
          }
          t = { block, keys: [], txs: [] };
          touched.set(args.channelId, t);
        }
        if (key !== undefined) t.keys.push([key, { at: block, confirmed }]);
        t.txs.push(log.transactionHash);
        if (log.eventName === "WithdrawInitiated" && !this.withdrawing.has(args.channelId)) {
          this.opts.logger?.warn({ channelId: args.channelId }, "payer initiated a withdrawal; claiming now");
          this.withdrawing.add(args.channelId);
        }
      }
      // Concurrently: each sync may wait (up to the lock timeout) for a request on its channel, and one
      // claim batch touches many channels; one after another, busy ones would hold the poll past the risk window.
      const ids = [...touched.keys()];
      const synced: PromiseSettledResult<unknown>[] = [];
      // Read at the head the logs came from, not "latest": a load-balanced RPC's backend a block behind would
      // answer a state older than those logs (and the log is then remembered as handled); one without that
      // block yet fails the read, and the channel is retried on the next poll.
      for (let i = 0; i < ids.length; i += SYNC_CONCURRENCY) {
        const slice = ids.slice(i, i + SYNC_CONCURRENCY);
        synced.push(
          ...(await Promise.allSettled(
            slice.map((id) =>
              this.payee
                // At least this poll's head; a newer one if a request wrote fresher state while this waited for the lock.
                .syncChannel(id, async () => readChannelCautious(client, this.payee.opts.escrow, id, depth, max(head, await client.getBlockNumber({ cacheTime: 0 }))))
                .catch((err: unknown) => {
                  // Only this node's own transactions, stored from their receipts meanwhile (the sync waited
                  // for the lock their request held): nothing is missing from the record.
                  if (touched.get(id)!.txs.every((tx) => this.payee.isApplied(tx, id))) return undefined;
                  // Refused at once (a request may take the lock before this slice's others are done).
                  // With the range's last block: a re-read at it or later sees every event of this range.
                  this.payee.unsynced.set(id, max(this.payee.unsynced.get(id) ?? 0n, to));
                  throw err;
                }),
            ),
          )),
        );
      }
      [...touched].forEach(([id, { block, keys }], i) => {
        const r = synced[i]!;
        if (r.status === "fulfilled") {
          this.payee.unsynced.delete(id);
          for (const [key, v] of keys) this.seen.set(key, v);
          return;
        }
        // Busy or unreadable: this channel only (marked above); its next request reads it again, or the
        // next poll does. Its event stays in the next poll's range.
        if (hold === undefined || block - 1n < hold) hold = block - 1n;
        this.opts.logger?.warn({ channelId: id, err: errorSummary(r.reason) }, "channel not mirrored this poll; retrying");
      });
      // With confirmations the checkpoint stays that many blocks behind head: those are scanned again.
      let next = depth > 0n && safe < to ? safe : to;
      if (hold !== undefined && hold < next) next = hold;
      // (A chain shorter than the confirmation depth has no confirmed block to stand on yet.)
      if (next >= 0n && (checkpoint === undefined || next > checkpoint)) {
        await this.payee.store.putMeta(CHECKPOINT, next.toString());
        checkpoint = next;
        // Blocks the next poll no longer rescans.
        for (const [key, { at }] of this.seen) if (at <= checkpoint - RESCAN_BLOCKS) this.seen.delete(key);
      }
      from = to + 1n;
    }
    if (from <= head) return false;
    // Every channel mirrored up to head: at this head again, only a second look fetches logs.
    if (hold === undefined) this.scanned = { head, looks: last?.head === head ? last.looks + 1 : 1 };
    return true;
  }

  /** Waits for the withdrawal claims started by the last poll (tests, shutdown). */
  async settled(): Promise<void> {
    await this.claiming;
  }

  /**
   * Claims, in one run, every channel with a pending withdrawal and charges the chain has not seen yet.
   * A channel whose claim fails is tried again with backoff (2 s doubling to 60 s); a run that fails as
   * a whole (RPC down) is alerted here at most once a minute per channel, a row the chain refuses by the
   * claim engine.
   */
  private async claimWithdrawing(): Promise<void> {
    if (this.timer) await this.scanOnce();
    const now = Date.now();
    const due: Hex[] = [];
    /** When each due channel's withdrawal can be finalized (ms), where the record shows it. */
    const finalizeAt = new Map<Hex, number>();
    for (const id of this.withdrawing) {
      const rec = await this.payee.store.getChannel(id).catch(() => undefined);
      // Not on withdrawRequestedAt alone: a record whose sync failed does not show the withdrawal yet.
      if (!rec || !hasClaim(rec)) {
        this.withdrawing.delete(id);
        this.failing.delete(id);
      } else if ((this.failing.get(id)?.nextAt ?? 0) <= now) {
        due.push(id);
        const at = finalizeAtMs(rec);
        if (at !== undefined) finalizeAt.set(id, at);
      }
    }
    if (due.length === 0) return;
    let failed: Array<{ channelId: Hex; reason: string }>;
    let thrown = false;
    try {
      // Unclaimable ones too: a claim the chain refused once may land now, and what a withdrawal would take
      // is worth a retry (the backoff bounds the cost).
      failed = (await this.claims.claim({ channels: due, includeUnclaimable: true, first: true })).failed;
    } catch (err) {
      thrown = true;
      // A run stopped part-way: what it claimed before is claimed (no alert, no retry for those).
      failed = err instanceof ClaimRunError ? err.report.failed.filter((f) => due.includes(f.channelId)) : due.map((channelId) => ({ channelId, reason: errorSummary(err) }));
    }
    const failedIds = new Set(failed.map((f) => f.channelId));
    for (const id of due) {
      if (failedIds.has(id)) continue;
      this.withdrawing.delete(id); // claimed: charges after this stay within balance - withdrawal
      this.failing.delete(id);
    }
    for (const f of failed) {
      const prev = this.failing.get(f.channelId) ?? { n: 0, nextAt: 0, alertedAt: -Infinity };
      if (!thrown && prev.n + 1 >= UNCLAIMABLE_WITHDRAWAL_TRIES && this.payee.unclaimable.has(f.channelId)) {
        // The chain keeps refusing it (each try may be a mined revert): left to the operator, said once.
        this.withdrawing.delete(f.channelId);
        this.failing.delete(f.channelId);
        this.opts.logger?.error({ alert: "withdrawal_claim_failed", channelId: f.channelId, reason: f.reason }, "the chain refuses this channel's claim; no more automatic tries before its withdrawal (tollway claim --channel)");
        this.opts.onAlert?.(f.channelId, f.reason);
        continue;
      }
      // Backing off, but never so far that the withdrawal finalizes before the next try: at most a quarter of the time left.
      const left = (finalizeAt.get(f.channelId) ?? Infinity) - now;
      const state = { n: prev.n + 1, nextAt: now + Math.min(REALERT_MS, 2_000 * 2 ** prev.n, Math.max(2_000, left / 4)), alertedAt: prev.alertedAt };
      if (thrown && now - prev.alertedAt >= REALERT_MS) {
        state.alertedAt = now;
        this.opts.logger?.error({ alert: "withdrawal_claim_failed", channelId: f.channelId, reason: f.reason }, "could not claim before withdrawal; retrying");
        this.opts.onAlert?.(f.channelId, f.reason);
      }
      this.failing.set(f.channelId, state);
    }
  }

  /**
   * Finds channels with a pending withdrawal and unclaimed charges in the store (after a restart), once:
   * a scan that failed runs again on the next call (every poll), since only it finds the withdrawals
   * seen before the checkpoint.
   */
  private scanOnce(): Promise<void> {
    this.scan ??= (async () => {
      for await (const rec of this.payee.store.channels()) {
        if (rec.withdrawRequestedAt !== 0 && hasClaim(rec)) this.withdrawing.add(rec.channelId);
      }
    })().catch((err: Error) => {
      this.scan = undefined;
      this.opts.logger?.error({ alert: "store_scan_failed", err: errorSummary(err) }, "could not scan the store for pending withdrawals; retrying on the next poll");
    });
    return this.scan;
  }

  start(): void {
    if (this.timer) return;
    // In the background: a large store must not delay serving.
    void this.scanOnce();
    this.timer = setInterval(() => void this.poll().catch(() => undefined), this.opts.pollIntervalMs ?? 2_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.scan;
    await this.polling;
    await this.claiming;
  }
}
