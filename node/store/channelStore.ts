/**
 * Durable payee state in LevelDB. Knows nothing of the chain or of HTTP.
 *
 * Key layout (all values JSON, bigints as decimal strings):
 *   c:<channelId>                         ChannelRecord: config, charged cumulative, last voucher, mirror
 *   l:<ms, 13 digits>:<boot>:<seq, 8>     LedgerRow[]: the charged requests of one group commit, in commit
 *                                         order (one row each; the key's time is the block's earliest row)
 *   h:<ms, 13 digits>:<boot>:<seq, 8>     HistoryEvent: deposits, claims, settles, refunds with tx hashes
 *   m:<name>                              metadata (mirror checkpoint block, m:unclaimable:<channelId>,
 *                                         m:refundpending:<channelId> refunds that may still be mined,
 *                                         m:journal:<name>:<n, 16 digits> journal entries: the relayer's signed transactions)
 *
 * Durability: every write goes through one group-commit queue; a flush is a single `batch` with
 * `sync: true` (fsync), and all writes that arrived while the previous flush ran share the next one.
 * A caller's promise resolves only after its write is on disk.
 */
import { ClassicLevel } from "classic-level";
import { randomBytes } from "node:crypto";
import type { Hex } from "viem";
import type { ChannelConfig } from "../protocol/typedData";

export type ChannelRecord = {
  channelId: Hex;
  config: ChannelConfig;
  /** What the server has charged on this channel so far (sum of committed charges). */
  chargedCumulative: bigint;
  /** maxClaimableAmount of the latest voucher the payer signed, and its signature. */
  signedMaxClaimable: bigint;
  signature: Hex;
  /** Mirrored on-chain state and when it was read (ms since epoch). */
  balance: bigint;
  totalClaimed: bigint;
  withdrawRequestedAt: number;
  refundNonce: bigint;
  syncedAt: number;
  lastRequestAt: number;
  createdAt: number;
  /**
   * Amount of the pending withdrawal (mirrored with withdrawRequestedAt). Absent in records written
   * before it was mirrored: readers then assume the most a withdrawal can take.
   */
  withdrawAmount?: bigint;
};

export type LedgerRow = {
  at: number;
  channelId: Hex;
  payer: Hex;
  route: string;
  resource: string;
  amount: bigint;
};

export type HistoryEvent = {
  at: number;
  kind: "deposit" | "claim" | "settle" | "refund";
  txHash: Hex;
  channels: Hex[];
  amount: bigint;
  gasUsed: bigint;
};

type Op = { type: "put"; key: string; value: string } | { type: "del"; key: string };

const BIGINT_FIELDS_CHANNEL = ["chargedCumulative", "signedMaxClaimable", "balance", "totalClaimed", "refundNonce"] as const;

function encode(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
}

/** A channel's config never changes: its JSON is kept with the config object it was made from. */
const configJson = new WeakMap<ChannelConfig, string>();

/**
 * Channel records are written on every paid request: encoded without a replacer callback, the
 * immutable config spliced in as cached JSON. Same bytes as JSON.stringify of the record with bigints
 * as strings (test/node/store.test.ts holds the two together).
 */
export function encodeChannel(r: ChannelRecord): string {
  let config = configJson.get(r.config);
  if (config === undefined) {
    config = JSON.stringify(r.config);
    configJson.set(r.config, config);
  }
  return (
    `{"channelId":${JSON.stringify(r.channelId)},"config":${config}` +
    `,"chargedCumulative":"${r.chargedCumulative}","signedMaxClaimable":"${r.signedMaxClaimable}"` +
    `,"signature":${JSON.stringify(r.signature)},"balance":"${r.balance}","totalClaimed":"${r.totalClaimed}"` +
    `,"withdrawRequestedAt":${JSON.stringify(r.withdrawRequestedAt)},"refundNonce":"${r.refundNonce}"` +
    `,"syncedAt":${JSON.stringify(r.syncedAt)},"lastRequestAt":${JSON.stringify(r.lastRequestAt)},"createdAt":${JSON.stringify(r.createdAt)}` +
    (r.withdrawAmount === undefined ? "}" : `,"withdrawAmount":"${r.withdrawAmount}"}`)
  );
}

/** One ledger row as JSON (same bytes as JSON.stringify with the amount as a string; only route and resource need escaping). */
export function encodeLedger(l: LedgerRow): string {
  return `{"at":${l.at},"channelId":"${l.channelId}","payer":"${l.payer}","route":${JSON.stringify(l.route)},"resource":${JSON.stringify(l.resource)},"amount":"${l.amount}"}`;
}

/** Rows of one ledger block span at most this much time (ms), so a time-range read knows how far back to start. */
export const LEDGER_BLOCK_SPAN_MS = 60_000;

function decodeChannel(text: string): ChannelRecord {
  const raw = JSON.parse(text);
  for (const f of BIGINT_FIELDS_CHANNEL) raw[f] = BigInt(raw[f]);
  if (raw.withdrawAmount !== undefined) raw.withdrawAmount = BigInt(raw.withdrawAmount);
  return raw as ChannelRecord;
}

const pad = (n: number, width: number) => String(n).padStart(width, "0");

export type StoreOptions = {
  /** fsync every flush (default true). false only for benchmarks that measure what durability costs. */
  sync?: boolean;
  /** Channel records kept in memory (LRU-ish; default 100,000). */
  cacheSize?: number;
};

export class ChannelStore {
  /** Least recently used first (a Map keeps insertion order; a hit re-inserts once the cache is full). */
  private readonly cache = new Map<string, ChannelRecord>();
  /** Bumped when a channel write or delete is queued and when it lands (see getChannel). */
  private generation = 0;
  private pending: Op[] = [];
  /** Ledger rows waiting for the next flush: written as one block (one LevelDB entry) per flush. */
  private pendingLedger: LedgerRow[] = [];
  private waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private flushing = false;
  private readonly boot = randomBytes(3).toString("hex");
  private seq = 0;
  private closed = false;
  /** Number of fsync'd batches written (for metrics and the group-commit benchmark). */
  flushCount = 0;

  private constructor(
    private readonly db: ClassicLevel<string, string>,
    private readonly sync: boolean,
    private readonly cacheSize: number,
  ) {}

  /** Opens (creating if needed) the store at `location`. */
  static async open(location: string, opts: StoreOptions = {}): Promise<ChannelStore> {
    const db = new ClassicLevel<string, string>(location, { valueEncoding: "utf8" });
    await db.open();
    return new ChannelStore(db, opts.sync ?? true, opts.cacheSize ?? 100_000);
  }

  /** The channel record, from memory or disk. */
  async getChannel(channelId: Hex): Promise<ChannelRecord | undefined> {
    const hit = this.cache.get(channelId);
    if (hit) {
      this.touch(channelId, hit);
      return hit;
    }
    const generation = this.generation;
    const text = await this.db.get(`c:${channelId}`);
    // A channel write was queued or finished while this read ran (a reader without the channel's lock):
    // what it read may be older than the cache, or deleted. Answer it, but never cache it.
    const now = this.cache.get(channelId);
    if (now) return now;
    if (text === undefined) return undefined;
    const rec = decodeChannel(text);
    if (generation === this.generation) this.remember(rec);
    return rec;
  }

  /** Synchronous cache lookup (hot path); undefined when not cached. */
  cachedChannel(channelId: Hex): ChannelRecord | undefined {
    const hit = this.cache.get(channelId);
    if (hit) this.touch(channelId, hit);
    return hit;
  }

  /** Marks a cached record as just used (the cache evicts the least recently used). */
  private touch(channelId: string, rec: ChannelRecord) {
    if (this.cache.size < this.cacheSize) return; // nothing is evicted before the cache is full
    this.cache.delete(channelId);
    this.cache.set(channelId, rec);
  }

  /** Durably writes a channel record (and optional ledger row) before resolving. */
  putChannel(rec: ChannelRecord, ledger?: LedgerRow): Promise<void> {
    if (this.closed) return Promise.reject(new Error("store is closed"));
    const op: Op = { type: "put", key: `c:${rec.channelId}`, value: encodeChannel(rec) };
    if (ledger) {
      // Checked here, not at flush time: a bad row would fail the whole batch it shares.
      if (!Number.isSafeInteger(ledger.at) || ledger.at < 0) return Promise.reject(new TypeError(`ledger row time ${ledger.at} is not a time in ms`));
      this.pendingLedger.push(ledger);
    }
    // The cache changes only once the write is on disk: a failed fsync leaves memory as it was.
    this.generation++;
    return this.enqueue([op]).then(
      () => {
        this.generation++;
        this.remember(rec);
      },
      (err: unknown) => {
        this.generation++;
        throw err;
      },
    );
  }

  /** Removes a channel record (after a full cooperative refund). */
  deleteChannel(channelId: Hex): Promise<void> {
    this.generation++;
    return this.enqueue([{ type: "del", key: `c:${channelId}` }]).finally(() => {
      this.generation++;
      this.cache.delete(channelId);
    });
  }

  /** Appends a history event (claims, settles, refunds, deposits). */
  appendHistory(ev: HistoryEvent): Promise<void> {
    return this.enqueue([{ type: "put", key: `h:${pad(ev.at, 13)}:${this.boot}:${pad(this.seq++, 8)}`, value: encode(ev) }]);
  }

  async getMeta(name: string): Promise<string | undefined> {
    return this.db.get(`m:${name}`);
  }

  putMeta(name: string, value: string): Promise<void> {
    return this.enqueue([{ type: "put", key: `m:${name}`, value }]);
  }

  deleteMeta(name: string): Promise<void> {
    return this.enqueue([{ type: "del", key: `m:${name}` }]);
  }

  /**
   * A journal of numbered entries kept under `m:journal:<name>:` (a transaction sender's, per key):
   * each `save` is durable before it resolves, `load` returns the entries in number order.
   */
  journal(name: string): { load(): Promise<string[]>; save(n: number, entry: string): Promise<void>; remove(n: number): Promise<void> } {
    const prefix = `journal:${name}:`;
    return {
      load: async () => {
        const out: string[] = [];
        for await (const value of this.db.values({ gte: `m:${prefix}`, lt: `m:${prefix}\uffff` })) out.push(value);
        return out;
      },
      save: (n, entry) => this.putMeta(prefix + pad(n, 16), entry),
      remove: (n) => this.deleteMeta(prefix + pad(n, 16)),
    };
  }

  /** The names of meta entries that start with `prefix` (e.g. "unclaimable:"), in key order. */
  async *metaNames(prefix: string): AsyncGenerator<string> {
    for await (const key of this.db.keys({ gte: `m:${prefix}`, lt: `m:${prefix}\uffff` })) yield key.slice(2);
  }

  /** Every channel record, in key order. */
  async *channels(): AsyncGenerator<ChannelRecord> {
    for await (const [key, value] of this.db.iterator({ gte: "c:", lt: "c;" })) {
      const cached = this.cache.get(key.slice(2));
      yield cached ?? decodeChannel(value);
    }
  }

  /** Ledger rows between two times (ms, inclusive start, exclusive end), in commit order. */
  async *ledger(from = 0, to = 9_999_999_999_999): AsyncGenerator<LedgerRow> {
    // A block is keyed by its earliest row: one that starts before `from` may still hold rows after it.
    const start = Math.max(0, from - LEDGER_BLOCK_SPAN_MS);
    for await (const value of this.db.values({ gte: `l:${pad(start, 13)}`, lt: `l:${pad(to, 13)}` })) {
      const parsed = JSON.parse(value) as Array<LedgerRow & { amount: string }> | (LedgerRow & { amount: string });
      for (const raw of Array.isArray(parsed) ? parsed : [parsed]) {
        if (raw.at < from || raw.at >= to) continue;
        (raw as unknown as LedgerRow).amount = BigInt(raw.amount);
        yield raw as unknown as LedgerRow;
      }
    }
  }

  /** History events between two times, oldest first (or the newest `latest`, newest first). */
  async *history(from = 0, to = 9_999_999_999_999, o: { latest?: number } = {}): AsyncGenerator<HistoryEvent> {
    const range = { gte: `h:${pad(from, 13)}`, lt: `h:${pad(to, 13)}` };
    const values = o.latest !== undefined ? this.db.values({ ...range, reverse: true, limit: o.latest }) : this.db.values(range);
    for await (const value of values) {
      const raw = JSON.parse(value);
      raw.amount = BigInt(raw.amount);
      raw.gasUsed = BigInt(raw.gasUsed);
      yield raw as HistoryEvent;
    }
  }

  /** Waits for queued writes, then closes the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    while (this.flushing || this.pending.length > 0 || this.pendingLedger.length > 0) {
      await new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    }
    this.closed = true;
    await this.db.close();
  }

  private remember(rec: ChannelRecord) {
    this.cache.delete(rec.channelId);
    if (this.cache.size >= this.cacheSize) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    this.cache.set(rec.channelId, rec);
  }

  /**
   * The flush's ledger rows as blocks of one LevelDB entry each: a new block starts when a row would
   * stretch the block past LEDGER_BLOCK_SPAN_MS or is older than its first row (the clock went back).
   */
  private putLedgerBlocks(batch: { put(key: string, value: string): unknown }, rows: LedgerRow[]) {
    let i = 0;
    while (i < rows.length) {
      const first = rows[i]!.at;
      let json = `[${encodeLedger(rows[i]!)}`;
      for (i++; i < rows.length && rows[i]!.at >= first && rows[i]!.at - first <= LEDGER_BLOCK_SPAN_MS; i++) json += `,${encodeLedger(rows[i]!)}`;
      batch.put(`l:${pad(first, 13)}:${this.boot}:${pad(this.seq++, 8)}`, `${json}]`);
    }
  }

  private enqueue(ops: Op[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error("store is closed"));
    for (const op of ops) this.pending.push(op);
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.flushing) {
      this.flushing = true;
      setImmediate(() => void this.flush());
    }
    return done;
  }

  private async flush(): Promise<void> {
    while (this.pending.length > 0 || this.waiters.length > 0) {
      const ops = this.pending;
      const rows = this.pendingLedger;
      const waiters = this.waiters;
      this.pending = [];
      this.pendingLedger = [];
      this.waiters = [];
      try {
        if (ops.length > 0 || rows.length > 0) {
          // The chained form: abstract-level's array batch clones and re-validates every operation
          // (measured ~10 us per op on the main thread against ~2 us here).
          const batch = this.db.batch();
          for (const op of ops) {
            if (op.type === "put") batch.put(op.key, op.value);
            else batch.del(op.key);
          }
          this.putLedgerBlocks(batch, rows);
          await batch.write({ sync: this.sync });
          this.flushCount++;
        }
        for (const w of waiters) w.resolve();
      } catch (err) {
        for (const w of waiters) w.reject(err);
      }
    }
    this.flushing = false;
  }
}
