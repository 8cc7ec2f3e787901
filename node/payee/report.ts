/**
 * Revenue insight from the ledger: revenue by resource, route, payer, day or hour; channel exposure
 * ranked by risk; claim and settlement history. Used by `tollway report`, `tollway channels` and the
 * operator dashboard.
 */
import type { Hex } from "viem";
import type { ChannelRecord, ChannelStore, HistoryEvent } from "../store/channelStore";
import { exposure, finalizeAtMs, lost } from "./claims";

export type GroupBy = "resource" | "route" | "payer" | "day" | "hour" | "minute";

export type RevenueRow = { key: string; revenue: bigint; requests: number; payers: number };

function bucket(at: number, by: GroupBy): string {
  const iso = new Date(at).toISOString();
  if (by === "day") return iso.slice(0, 10);
  if (by === "hour") return `${iso.slice(0, 13)}:00`;
  return iso.slice(0, 16);
}

/** Revenue grouped by `by`, largest first (time buckets in time order). */
export async function revenueBy(store: ChannelStore, by: GroupBy, range: { from?: number; to?: number } = {}): Promise<RevenueRow[]> {
  return (await revenueReport(store, [by], range))[by];
}

/**
 * Revenue under several groupings from one pass over the ledger (the dashboard wants four; a pass per
 * grouping scanned the whole ledger that many times). Each grouping as `revenueBy` returns it.
 * @example const { resource, minute } = await revenueReport(store, ["resource", "minute"])
 */
export async function revenueReport<const B extends GroupBy>(store: ChannelStore, groupings: readonly B[], range: { from?: number; to?: number } = {}): Promise<Record<B, RevenueRow[]>> {
  const bys = [...new Set(groupings)];
  const tables = bys.map(() => new Map<string, { revenue: bigint; requests: number; payers: Set<string> }>());
  for await (const l of store.ledger(range.from, range.to)) {
    for (let i = 0; i < bys.length; i++) {
      const by = bys[i]!;
      const key = by === "resource" ? l.resource : by === "route" ? l.route : by === "payer" ? l.payer : bucket(l.at, by);
      const rows = tables[i]!;
      let r = rows.get(key);
      if (!r) rows.set(key, (r = { revenue: 0n, requests: 0, payers: new Set<string>() }));
      r.revenue += l.amount;
      r.requests++;
      r.payers.add(l.payer);
    }
  }
  const out = {} as Record<B, RevenueRow[]>;
  bys.forEach((by, i) => {
    const rows = [...tables[i]!].map(([key, r]) => ({ key, revenue: r.revenue, requests: r.requests, payers: r.payers.size }));
    out[by] =
      by === "day" || by === "hour" || by === "minute"
        ? rows.sort((a, b) => a.key.localeCompare(b.key))
        : rows.sort((a, b) => (b.revenue > a.revenue ? 1 : b.revenue < a.revenue ? -1 : a.key.localeCompare(b.key)));
  });
  return out;
}

export type ChannelRisk = {
  channelId: Hex;
  payer: Hex;
  balance: bigint;
  charged: bigint;
  claimed: bigint;
  exposure: bigint;
  /** Charges a finalized withdrawal took (no claim can collect them). */
  lost: bigint;
  /** Seconds until a pending withdrawal can be finalized (null when none). */
  secondsToFinalize: number | null;
};

/**
 * Every channel with its unclaimed exposure, riskiest first: channels in withdrawal by time left,
 * then by exposure.
 */
export async function channelRisks(store: ChannelStore, now = Date.now()): Promise<ChannelRisk[]> {
  const out: ChannelRisk[] = [];
  for await (const r of store.channels()) out.push(toRisk(r, now));
  return out.sort((a, b) => {
    if (a.secondsToFinalize !== null || b.secondsToFinalize !== null) {
      if (a.secondsToFinalize === null) return 1;
      if (b.secondsToFinalize === null) return -1;
      if (a.secondsToFinalize !== b.secondsToFinalize) return a.secondsToFinalize - b.secondsToFinalize;
    }
    return b.exposure > a.exposure ? 1 : b.exposure < a.exposure ? -1 : 0;
  });
}

function toRisk(r: ChannelRecord, now: number): ChannelRisk {
  const finalize = finalizeAtMs(r);
  return {
    channelId: r.channelId,
    payer: r.config.payer,
    balance: r.balance,
    charged: r.chargedCumulative,
    claimed: r.totalClaimed,
    exposure: exposure(r),
    lost: lost(r),
    secondsToFinalize: finalize === undefined ? null : Math.max(0, finalize / 1000 - Math.floor(now / 1000)),
  };
}

/** Claims, settlements, deposits and refunds: the newest `limit`, newest first (read backwards, not scanned). */
export async function history(store: ChannelStore, limit = 100): Promise<HistoryEvent[]> {
  if (limit <= 0) return [];
  const out: HistoryEvent[] = [];
  for await (const h of store.history(undefined, undefined, { latest: limit })) out.push(h);
  return out;
}

/** Rows as CSV (bigints as decimal strings). */
export function toCsv(rows: Array<Record<string, unknown>>): string {
  if (rows.length === 0) return "";
  const cols = Object.keys(rows[0]!);
  const esc = (v: unknown) => {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [cols.join(","), ...rows.map((r) => cols.map((c) => esc(r[c])).join(","))].join("\n") + "\n";
}
