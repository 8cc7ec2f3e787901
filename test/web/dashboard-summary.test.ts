import { expect } from "chai";
import express from "express";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import { getAddress, keccak256, toHex, type Hex } from "viem";
import { ChannelStore, type ChannelRecord, type LedgerRow } from "../../node/store/channelStore";
import { adminRouter, timeChartSvg } from "../../node/payee/adminApi";
import { formatAmount } from "../../node/protocol/amounts";
import { history, revenueBy, revenueReport, type GroupBy, type RevenueRow } from "../../node/payee/report";

const GROUPINGS: GroupBy[] = ["resource", "route", "payer", "day", "hour", "minute"];

/** The grouping key as the dashboard defines it, written out independently of report.ts. */
function keyOf(l: LedgerRow, by: GroupBy): string {
  if (by === "resource") return l.resource;
  if (by === "route") return l.route;
  if (by === "payer") return l.payer;
  const iso = new Date(l.at).toISOString();
  return by === "day" ? iso.slice(0, 10) : by === "hour" ? `${iso.slice(0, 13)}:00` : iso.slice(0, 16);
}

/** Reference: one grouping computed straight from the rows that were written. */
function reference(rows: LedgerRow[], by: GroupBy): RevenueRow[] {
  const m = new Map<string, { revenue: bigint; requests: number; payers: Set<string> }>();
  for (const l of rows) {
    const k = keyOf(l, by);
    const r = m.get(k) ?? { revenue: 0n, requests: 0, payers: new Set() };
    r.revenue += l.amount;
    r.requests += 1;
    r.payers.add(l.payer);
    m.set(k, r);
  }
  const out = [...m].map(([key, r]) => ({ key, revenue: r.revenue, requests: r.requests, payers: r.payers.size }));
  const timeOrder = by === "day" || by === "hour" || by === "minute";
  return out.sort((a, b) => (timeOrder ? (a.key < b.key ? -1 : 1) : b.revenue !== a.revenue ? (b.revenue > a.revenue ? 1 : -1) : a.key < b.key ? -1 : 1));
}

describe("dashboard summary: one ledger pass per summary, the same numbers as a grouping at a time (real LevelDB store)", function () {
  this.timeout(60_000);
  let store: ChannelStore;
  const rows: LedgerRow[] = [];
  let ledgerCalls = 0;

  before(async () => {
    store = await ChannelStore.open(fs.mkdtempSync(path.join(os.tmpdir(), "tollway-report-")));
    const payers = Array.from({ length: 7 }, (_, i) => getAddress(keccak256(toHex(`payer ${i}`)).slice(0, 42)) as Hex);
    const start = Date.UTC(2026, 10, 20, 22, 50); // spans midnight: several days, hours and minutes
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 3_000; i++) {
      const payer = payers[(i * 5) % payers.length]!;
      const channelId = keccak256(toHex(`channel ${payer}`));
      const route = i % 3 === 0 ? "GET /articles/:id" : i % 3 === 1 ? "GET /songs/:id" : "GET /stream/:id/chunk/:n";
      const row: LedgerRow = { at: start + i * 997, channelId, payer, route, resource: `/r/${i % 11}`, amount: BigInt(1_000 + (i % 17) * 250) };
      rows.push(row);
      const rec = { channelId, config: { payer, payerAuthorizer: payer, receiver: payer, receiverAuthorizer: payer, token: payer, withdrawDelay: 900, salt: toHex(0, { size: 32 }) }, chargedCumulative: 0n, signedMaxClaimable: 0n, signature: "0x", balance: 0n, totalClaimed: 0n, withdrawRequestedAt: 0, refundNonce: 0n, syncedAt: 0, lastRequestAt: row.at, createdAt: start } satisfies ChannelRecord;
      writes.push(store.putChannel(rec, row));
      if (writes.length >= 200) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    for (let i = 0; i < 7; i++) await store.appendHistory({ at: start + i * 1_000, kind: i % 2 ? "claim" : "settle", txHash: keccak256(toHex(i)), channels: [], amount: BigInt(i), gasUsed: 21_000n });
    // Count full ledger reads.
    const ledger = store.ledger.bind(store);
    store.ledger = ((from?: number, to?: number) => {
      ledgerCalls++;
      return ledger(from, to);
    }) as typeof store.ledger;
  });
  after(async () => {
    await store?.close();
  });

  it("revenueReport: every grouping from one pass equals the reference computed from the written rows", async () => {
    ledgerCalls = 0;
    const all = await revenueReport(store, GROUPINGS);
    expect(ledgerCalls).to.equal(1);
    for (const by of GROUPINGS) {
      expect(all[by], by).to.deep.equal(reference(rows, by));
      expect(await revenueBy(store, by), by).to.deep.equal(reference(rows, by));
    }
    // A time range is honoured the same way.
    const from = rows[1_000]!.at;
    const to = rows[2_000]!.at;
    const ranged = await revenueReport(store, ["resource", "minute"], { from, to });
    const inRange = rows.filter((l) => l.at >= from && l.at < to);
    expect(ranged.resource).to.deep.equal(reference(inRange, "resource"));
    expect(ranged.minute).to.deep.equal(reference(inRange, "minute"));
  });

  it("history keeps the newest `limit` events, newest first", async () => {
    const all = [];
    for await (const h of store.history()) all.push(h);
    expect(all.length).to.equal(7);
    expect(await history(store, 3)).to.deep.equal(all.slice(-3).reverse());
    expect(await history(store, 7)).to.deep.equal([...all].reverse());
    expect(await history(store, 50)).to.deep.equal([...all].reverse());
    expect(await history(store, 0)).to.deep.equal([]);
  });

  it("the revenue-per-minute chart covers the last 30 minutes up to now (empty minutes as empty columns), not the last 30 minutes that had revenue", () => {
    const now = Date.UTC(2026, 10, 27, 12, 0, 30);
    const minute = (ago: number) => new Date(now - ago * 60_000).toISOString().slice(0, 16);
    const rows = [
      { key: minute(600), revenue: 7_000_000n, requests: 7, payers: 1 }, // ten hours ago: outside the window
      { key: minute(29), revenue: 20_000n, requests: 2, payers: 1 },
      { key: minute(0), revenue: 10_000n, requests: 1, payers: 1 },
    ];
    const svg = timeChartSvg("Revenue per minute", rows, 6, "USDC", now);
    expect(svg.match(/<rect /g)).to.have.length(30);
    expect(svg).to.include("(0.03 USDC)"); // the title's total: the window's two minutes only
    expect(svg).to.include(`<title>${minute(29)}: 0.02 USDC</title>`).and.include(`<title>${minute(0)}: 0.01 USDC</title>`);
    expect(svg).to.not.include(minute(600));
  });

  describe("GET /admin/api/summary", () => {
    let server: Server;
    let url: string;
    let arrived = 0;
    before(async () => {
      const app = express();
      app.use((_req, _res, next) => {
        arrived++;
        next();
      });
      app.use(
        "/admin/api",
        adminRouter({ store, asset: { decimals: 6, symbol: "USDC" }, network: "eip155:31337", claims: {} as never, payee: {} as never, status: async () => ({}) }),
      );
      server = await new Promise((resolve) => {
        const s = app.listen(0, "127.0.0.1", () => resolve(s));
      });
      url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/admin/api`;
    });
    after(async () => {
      server?.closeAllConnections?.();
      await new Promise<void>((r) => server.close(() => r()));
    });

    it("reads the ledger once for its four groupings, with the numbers of /report", async () => {
      ledgerCalls = 0;
      const s = await (await fetch(`${url}/summary`)).json();
      expect(ledgerCalls).to.equal(1);
      for (const [field, by] of [["byResource", "resource"], ["byRoute", "route"], ["byPayer", "payer"], ["byMinute", "minute"]] as const) {
        const one = await (await fetch(`${url}/report?by=${by}`)).json();
        expect(s[field].map((r: any) => [r.key, r.requests, r.payers]), by).to.deep.equal(one.map((r: any) => [r.key, r.requests, r.payers]));
      }
      const total = rows.reduce((a, l) => a + l.amount, 0n);
      expect(s.total).to.equal(formatAmount(total, 6));
      expect(s.requests).to.equal(rows.length);
      expect(s.history.length).to.equal(7);
    });

    it("requests arriving while a summary is computed share it: three dashboards, one ledger pass", async () => {
      // Hold the ledger read until all three requests are in.
      let open!: () => void;
      const gate = new Promise<void>((r) => (open = r));
      const ledger = store.ledger;
      store.ledger = (async function* (this: ChannelStore, from?: number, to?: number) {
        await gate;
        yield* ledger.call(store, from, to);
      }) as typeof store.ledger;
      try {
        ledgerCalls = 0;
        arrived = 0;
        const answers = Promise.all([1, 2, 3].map(() => fetch(`${url}/summary`).then((r) => r.json())));
        while (arrived < 3) await new Promise((r) => setTimeout(r, 5));
        await new Promise((r) => setTimeout(r, 50)); // let the router run the third request up to its await
        open();
        const [a, b, c] = await answers;
        expect(ledgerCalls).to.equal(1);
        expect(b).to.deep.equal(a);
        expect(c).to.deep.equal(a);
      } finally {
        store.ledger = ledger;
      }
    });
  });
});
