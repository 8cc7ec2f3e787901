/**
 * Operator API (bearer token): revenue by resource / route / payer / minute, open channels ranked by
 * risk, claims and settlements — as JSON, with the charts rendered server-side as SVG.
 */
import express, { type Router } from "express";
import { formatAmount } from "../protocol/amounts";
import type { ChannelStore } from "../store/channelStore";
import { channelRisks, history, revenueBy, type RevenueRow } from "./report";

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
      return `<text x="0" y="${y + 14}" font-size="12">${esc(r.key.length > 34 ? r.key.slice(0, 33) + "…" : r.key)}</text><rect x="230" y="${y}" width="${w.toFixed(1)}" height="18" fill="#2a6f97"/><text x="${(236 + w).toFixed(1)}" y="${y + 14}" font-size="12">${formatAmount(r.revenue, decimals)} ${symbol} · ${r.requests}</text>`;
    })
    .join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${esc(title)}" viewBox="0 0 640 ${h}" width="100%"><title>${esc(title)}</title><text x="0" y="14" font-size="14" font-weight="bold">${esc(title)}</text>${bars}</svg>`;
}

/** Revenue over time as columns (one per minute bucket). */
export function timeChartSvg(title: string, rows: RevenueRow[], decimals: number, symbol: string): string {
  const last = rows.slice(-30);
  const peak = last.reduce((m, r) => (r.revenue > m ? r.revenue : m), 1n);
  const w = 640;
  const colW = last.length ? Math.min(40, (w - 40) / last.length) : 0;
  const cols = last
    .map((r, i) => {
      const hh = (Number((r.revenue * 1000n) / peak) / 1000) * 120;
      const x = 40 + i * colW;
      return `<rect x="${x.toFixed(1)}" y="${(150 - hh).toFixed(1)}" width="${(colW - 3).toFixed(1)}" height="${hh.toFixed(1)}" fill="#468faf"><title>${esc(r.key)}: ${formatAmount(r.revenue, decimals)} ${symbol}</title></rect>`;
    })
    .join("");
  const total = last.reduce((s, r) => s + r.revenue, 0n);
  return `<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="${esc(title)}" viewBox="0 0 ${w} 170" width="100%"><title>${esc(title)}</title><text x="0" y="14" font-size="14" font-weight="bold">${esc(title)} (${formatAmount(total, decimals)} ${symbol})</text><line x1="40" y1="150" x2="${w}" y2="150" stroke="#999"/>${cols}</svg>`;
}

export function adminRouter(store: ChannelStore, asset: { decimals: number; symbol?: string }, network: string): Router {
  const router = express.Router();
  const d = asset.decimals;
  const sym = asset.symbol ?? "";
  const money = (v: bigint) => formatAmount(v, d);
  router.get("/summary", async (_req, res, next) => {
    try {
      const [byResource, byRoute, byPayer, byMinute, risks, events] = await Promise.all([
        revenueBy(store, "resource"),
        revenueBy(store, "route"),
        revenueBy(store, "payer"),
        revenueBy(store, "minute"),
        channelRisks(store),
        history(store, 50),
      ]);
      const total = byRoute.reduce((s, r) => s + r.revenue, 0n);
      const rows = (rs: RevenueRow[]) => rs.map((r) => ({ key: r.key, revenue: money(r.revenue), requests: r.requests, payers: r.payers }));
      res.set("Cache-Control", "no-store").json({
        network,
        symbol: sym,
        total: money(total),
        requests: byRoute.reduce((s, r) => s + r.requests, 0),
        byResource: rows(byResource),
        byRoute: rows(byRoute),
        byPayer: rows(byPayer),
        byMinute: rows(byMinute),
        channels: risks.map((c) => ({ ...c, balance: money(c.balance), charged: money(c.charged), claimed: money(c.claimed), exposure: money(c.exposure) })),
        history: events.map((e) => ({ ...e, amount: money(e.amount), gasUsed: e.gasUsed.toString(), at: new Date(e.at).toISOString() })),
        charts: {
          overTime: timeChartSvg("Revenue per minute", byMinute, d, sym),
          byRoute: barChartSvg("Revenue by route", byRoute, d, sym),
          byResource: barChartSvg("Revenue by item", byResource, d, sym),
          byPayer: barChartSvg("Revenue by payer", byPayer.map((r) => ({ ...r, key: `${r.key.slice(0, 8)}…${r.key.slice(-4)}` })), d, sym),
        },
      });
    } catch (e) {
      next(e);
    }
  });
  return router;
}
