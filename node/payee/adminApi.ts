/**
 * Operator API (bearer token): revenue by resource / route / payer / minute, open channels ranked by
 * risk, claims and settlements — as JSON, with the charts rendered server-side as SVG.
 */
import express, { type Router } from "express";
import { formatAmount } from "../protocol/amounts";
import { errorSummary } from "../protocol/errors";
import type { ChannelStore } from "../store/channelStore";
import { z } from "zod";
import type { Hex } from "viem";
import { ClaimRunError, type ClaimEngine } from "./claims";
import type { Payee } from "./payee";
import { channelRisks, history, revenueBy, revenueReport, type GroupBy, type RevenueRow } from "./report";

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** A horizontal bar chart (accessible: role=img with a title, values as text). */
export function barChartSvg(title: string, rows: RevenueRow[], decimals: number, symbol: string, max = 10): string {
  const top = rows.slice(0, max);
  const peak = top.reduce((m, r) => (r.revenue > m ? r.revenue : m), 1n);
  const h = 26 * top.length + 30;
  const bars = top
    .map((r, i) => {
      const w = Number((r.revenue * 1000n) / peak) / 1000 * 300;
      const y = 24 + i * 26;
      return `<text x="0" y="${y + 14}" font-size="12">${esc(r.key.length > 34 ? r.key.slice(0, 33) + "…" : r.key)}</text><rect x="230" y="${y}" width="${w.toFixed(1)}" height="18" fill="#2a6f97"/><text x="${(236 + w).toFixed(1)}" y="${y + 14}" font-size="12">${formatAmount(r.revenue, decimals)} ${esc(symbol)} · ${r.requests}</text>`;
    })
    .join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${esc(title)}" viewBox="0 0 640 ${h}" width="100%"><title>${esc(title)}</title><text x="0" y="14" font-size="14" font-weight="bold">${esc(title)}</text>${bars}</svg>`;
}

/**
 * Revenue over the last 30 minutes up to `now`, one column per minute (rows keyed by minute, as
 * revenueReport's "minute" grouping keys them); a minute without revenue is an empty column.
 */
export function timeChartSvg(title: string, rows: RevenueRow[], decimals: number, symbol: string, now = Date.now()): string {
  const byKey = new Map(rows.map((r) => [r.key, r]));
  const last: RevenueRow[] = [];
  for (let i = 29; i >= 0; i--) {
    const key = new Date(now - i * 60_000).toISOString().slice(0, 16);
    last.push(byKey.get(key) ?? { key, revenue: 0n, requests: 0, payers: 0 });
  }
  const peak = last.reduce((m, r) => (r.revenue > m ? r.revenue : m), 1n);
  const w = 640;
  const colW = last.length ? Math.min(40, (w - 40) / last.length) : 0;
  const cols = last
    .map((r, i) => {
      const hh = (Number((r.revenue * 1000n) / peak) / 1000) * 120;
      const x = 40 + i * colW;
      return `<rect x="${x.toFixed(1)}" y="${(150 - hh).toFixed(1)}" width="${(colW - 3).toFixed(1)}" height="${hh.toFixed(1)}" fill="#468faf"><title>${esc(r.key)}: ${formatAmount(r.revenue, decimals)} ${esc(symbol)}</title></rect>`;
    })
    .join("");
  const total = last.reduce((s, r) => s + r.revenue, 0n);
  return `<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${esc(title)}" viewBox="0 0 ${w} 170" width="100%"><title>${esc(title)}</title><text x="0" y="14" font-size="14" font-weight="bold">${esc(title)} (${formatAmount(total, decimals)} ${esc(symbol)})</text><line x1="40" y1="150" x2="${w}" y2="150" stroke="#999"/>${cols}</svg>`;
}

export type AdminDeps = {
  store: ChannelStore;
  asset: { decimals: number; symbol?: string };
  network: string;
  claims: ClaimEngine;
  payee: Payee;
  status: () => Promise<Record<string, unknown>>;
};

const big = (v: unknown) => JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x)));
const idsSchema = z.object({ channels: z.array(z.string().regex(/^0x[0-9a-fA-F]{64}$/)).max(10_000).optional() }).strict();
/** Refunds close channels: the body must say which ones, or `all: true` (an empty body is not "all"). */
const refundSchema = z.union([
  z.object({ channels: z.array(z.string().regex(/^0x[0-9a-fA-F]{64}$/)).min(1).max(10_000) }).strict(),
  z.object({ all: z.literal(true) }).strict(),
]);

export function adminRouter(deps: AdminDeps): Router {
  const { store, asset, network, claims, payee } = deps;
  const router = express.Router();
  router.use(express.json({ limit: "1mb" }));
  const ids = (body: unknown): Hex[] | undefined => {
    const p = idsSchema.safeParse(body ?? {});
    if (!p.success) throw Object.assign(new Error("body must be {channels?: [channelId, ...]}"), { status: 400 });
    return p.data.channels as Hex[] | undefined;
  };
  const wrap = (fn: (req: express.Request) => Promise<unknown>) => async (req: express.Request, res: express.Response) => {
    try {
      res.set("Cache-Control", "no-store").json(big(await fn(req)));
    } catch (e) {
      const status = (e as { status?: number }).status ?? 500;
      res.status(status).json({ error: status === 400 ? "bad_request" : "operation_failed", message: errorSummary(e) });
    }
  };
  router.get("/status", wrap(() => deps.status()));
  router.get("/channels", wrap(() => channelRisks(store)));
  router.get("/report", wrap(async (req) => {
    const by = String(req.query.by ?? "resource");
    if (!["resource", "route", "payer", "day", "hour", "minute"].includes(by)) throw Object.assign(new Error(`unknown grouping "${by}"`), { status: 400 });
    return revenueBy(store, by as GroupBy);
  }));
  router.get("/history", wrap(() => history(store, 1000)));
  // An operator's request: channels the chain refused to claim are tried too.
  router.post(
    "/claim",
    wrap(async (req) => {
      try {
        return await claims.claim({ channels: ids(req.body), includeUnclaimable: true });
      } catch (err) {
        // A run stopped part-way: what landed is reported with the rows left and the cause (not a bare 500).
        if (err instanceof ClaimRunError) return { ...err.report, error: err.message };
        throw err;
      }
    }),
  );
  router.post("/settle", wrap(() => claims.settle()));
  router.post("/refund", wrap(async (req) => {
    const p = refundSchema.safeParse(req.body ?? {});
    if (!p.success) throw Object.assign(new Error('body must be {"channels": [channelId, ...]} or {"all": true} (application/json)'), { status: 400 });
    const wanted = "all" in p.data ? (await channelRisks(store)).map((c) => c.channelId) : (p.data.channels.map((c) => c.toLowerCase()) as Hex[]);
    const done = [];
    const failed = [];
    const notHeld: Hex[] = [];
    for (const id of wanted) {
      try {
        if (!("all" in p.data) && !(await store.getChannel(id))) {
          notHeld.push(id);
          continue;
        }
        const r = await payee.closeChannel(id);
        if (r) done.push({ channelId: id, ...r });
      } catch (err) {
        // One channel that cannot be closed now does not stop the others.
        failed.push({ channelId: id, reason: errorSummary(err) });
      }
    }
    return { refunded: done, failed, ...(notHeld.length ? { notHeld } : {}) };
  }));
  const d = asset.decimals;
  const sym = asset.symbol ?? "";
  const money = (v: bigint) => formatAmount(v, d);
  /**
   * The dashboard's summary: one ledger pass for the four groupings. Requests that arrive while a
   * summary is being computed share it (several dashboard tabs cost one pass, not one each).
   */
  const computeSummary = async () => {
    const [{ resource: byResource, route: byRoute, payer: byPayer, minute: byMinute }, risks, events] = await Promise.all([
      revenueReport(store, ["resource", "route", "payer", "minute"]),
      channelRisks(store),
      history(store, 50),
    ]);
    const total = byRoute.reduce((s, r) => s + r.revenue, 0n);
    const rows = (rs: RevenueRow[]) => rs.map((r) => ({ key: r.key, revenue: money(r.revenue), requests: r.requests, payers: r.payers }));
    return {
      network,
      symbol: sym,
      total: money(total),
      requests: byRoute.reduce((s, r) => s + r.requests, 0),
      byResource: rows(byResource),
      byRoute: rows(byRoute),
      byPayer: rows(byPayer),
      byMinute: rows(byMinute),
      channels: risks.map((c) => ({ ...c, balance: money(c.balance), charged: money(c.charged), claimed: money(c.claimed), exposure: money(c.exposure), lost: money(c.lost) })),
      history: events.map((e) => ({ ...e, amount: money(e.amount), gasUsed: e.gasUsed.toString(), at: new Date(e.at).toISOString() })),
      charts: {
        overTime: timeChartSvg("Revenue per minute, last 30 minutes", byMinute, d, sym),
        byRoute: barChartSvg("Revenue by route", byRoute, d, sym),
        byResource: barChartSvg("Revenue by item", byResource, d, sym),
        byPayer: barChartSvg("Revenue by payer", byPayer.map((r) => ({ ...r, key: `${r.key.slice(0, 8)}…${r.key.slice(-4)}` })), d, sym),
      },
    };
  };
  let inFlight: ReturnType<typeof computeSummary> | undefined;
  router.get("/summary", async (_req, res, next) => {
    try {
      inFlight ??= computeSummary().finally(() => (inFlight = undefined));
      res.set("Cache-Control", "no-store").json(await inFlight);
    } catch (e) {
      next(e);
    }
  });
  return router;
}
