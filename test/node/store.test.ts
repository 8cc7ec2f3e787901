import { expect } from "chai";
import fc from "fast-check";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { getAddress, type Address, type Hex } from "viem";
import { ChannelStore, encodeChannel, encodeLedger, LEDGER_BLOCK_SPAN_MS, type ChannelRecord, type LedgerRow } from "../../node/store/channelStore";

const hexOf = (bytes: number) => fc.uint8Array({ minLength: bytes, maxLength: bytes }).map((b) => `0x${Buffer.from(b).toString("hex")}` as Hex);
const address = hexOf(20).map((h) => getAddress(h) as Address);
const u128 = fc.bigInt({ min: 0n, max: 2n ** 128n - 1n });
const time = fc.integer({ min: 0, max: 2 ** 42 });
const record: fc.Arbitrary<ChannelRecord> = fc.record({
  channelId: hexOf(32),
  config: fc.record({ payer: address, payerAuthorizer: address, receiver: address, receiverAuthorizer: address, token: address, withdrawDelay: fc.integer({ min: 0, max: 2 ** 40 }), salt: hexOf(32) }),
  chargedCumulative: u128,
  signedMaxClaimable: u128,
  signature: fc.oneof(hexOf(65), fc.constant("0x" as Hex)),
  balance: u128,
  totalClaimed: u128,
  withdrawRequestedAt: time,
  refundNonce: u128,
  syncedAt: time,
  lastRequestAt: time,
  createdAt: time,
  withdrawAmount: fc.option(u128, { nil: undefined }),
}).map((r) => {
  if (r.withdrawAmount === undefined) delete r.withdrawAmount; // absent, as in records written before it was mirrored
  return r;
});

const reference = (r: ChannelRecord) => JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? v.toString() : v));

describe("channel store encoding", () => {
  it("the hot-path record encoder writes exactly what JSON.stringify writes (500 random records, config cached)", () => {
    fc.assert(
      fc.property(record, (r) => {
        expect(encodeChannel(r)).to.equal(reference(r));
        // second time from the cached config JSON, with changed amounts on a copy sharing the config
        const next = { ...r, chargedCumulative: r.chargedCumulative + 1n, lastRequestAt: r.lastRequestAt + 1 };
        expect(encodeChannel(next)).to.equal(reference(next));
      }),
      { numRuns: 500, seed: 7 },
    );
  });

  it("a record written and read back through LevelDB is the same record", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-store-"));
    const sample = fc.sample(record, { numRuns: 50, seed: 11 });
    let store = await ChannelStore.open(dir);
    await Promise.all(sample.map((r) => store.putChannel(r)));
    await store.close();
    store = await ChannelStore.open(dir);
    for (const r of sample) expect(await store.getChannel(r.channelId)).to.deep.equal(r);
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("a read without the channel's lock that overlaps a write or a delete never puts an older record in the cache; the cache evicts the least recently used", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-store-"));
    const [a, b, c] = fc.sample(record, { numRuns: 3, seed: 5 }) as [ChannelRecord, ChannelRecord, ChannelRecord];
    const store = await ChannelStore.open(dir, { cacheSize: 2 });
    await store.putChannel({ ...a, chargedCumulative: 1n });
    await store.putChannel(b);
    await store.putChannel(c); // a is evicted
    expect(store.cachedChannel(a.channelId)).to.equal(undefined);
    // Disk reads that resolve late (a busy thread pool).
    const db = (store as unknown as { db: { get(k: string): Promise<string | undefined> } }).db;
    const get = db.get.bind(db);
    db.get = async (k: string) => {
      const v = await get(k);
      await new Promise((r) => setTimeout(r, 60));
      return v;
    };
    const stale = store.getChannel(a.channelId); // reads charged 1
    await store.putChannel({ ...a, chargedCumulative: 2n }); // a paid request commits meanwhile
    await stale;
    expect((await store.getChannel(a.channelId))!.chargedCumulative).to.equal(2n);
    const gone = store.getChannel(b.channelId);
    await new Promise((r) => setTimeout(r, 10));
    await store.deleteChannel(b.channelId); // a full refund meanwhile
    await gone;
    expect(store.cachedChannel(b.channelId)).to.equal(undefined);
    db.get = get;
    expect(await store.getChannel(b.channelId)).to.equal(undefined);
    // LRU: with a then c cached, using a and then caching b evicts c (FIFO would evict a).
    await store.putChannel({ ...c, lastRequestAt: c.lastRequestAt + 1 });
    expect(store.cachedChannel(a.channelId)).to.not.equal(undefined);
    await store.putChannel(b);
    expect(store.cachedChannel(c.channelId)).to.equal(undefined);
    expect(store.cachedChannel(a.channelId)!.chargedCumulative).to.equal(2n);
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("the ledger row encoder writes exactly what JSON.stringify writes (route and resource escaped)", () => {
    const row = fc.record({ at: time, channelId: hexOf(32), payer: address, route: fc.string(), resource: fc.string({ unit: "grapheme" }), amount: u128 });
    fc.assert(
      fc.property(row, (l) => {
        expect(encodeLedger(l)).to.equal(JSON.stringify({ ...l, amount: l.amount.toString() }));
      }),
      { numRuns: 500, seed: 5 },
    );
  });
});

describe("ledger blocks", () => {
  let dir: string;
  let store: ChannelStore;
  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-ledger-"));
    store = await ChannelStore.open(dir);
  });
  afterEach(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const rec = fc.sample(record, { numRuns: 1, seed: 3 })[0]!;
  const row = (at: number, n: number): LedgerRow => ({ at, channelId: rec.channelId, payer: rec.config.payer, route: "GET /a", resource: `/a/${n}`, amount: BigInt(n) });
  const read = async (from?: number, to?: number) => {
    const out: string[] = [];
    for await (const r of store.ledger(from, to)) out.push(r.resource);
    return out;
  };

  it("rows committed together share one entry, keep their commit order, and read back one by one", async () => {
    const base = 1_700_000_000_000;
    // 200 commits at once (one or a few group commits), then 50 more one by one.
    await Promise.all(Array.from({ length: 200 }, (_, i) => store.putChannel({ ...rec, chargedCumulative: BigInt(i) }, row(base + i, i))));
    for (let i = 200; i < 250; i++) await store.putChannel({ ...rec, chargedCumulative: BigInt(i) }, row(base + i, i));
    expect(await read()).to.deep.equal(Array.from({ length: 250 }, (_, i) => `/a/${i}`));
    const entries = await (store as unknown as { db: { keys(o: object): { all(): Promise<string[]> } } }).db.keys({ gte: "l:", lt: "l;" }).all();
    expect(entries.length).to.be.lessThan(250).and.at.least(51);
    // time ranges cut inside blocks
    expect(await read(base + 10, base + 13)).to.deep.equal(["/a/10", "/a/11", "/a/12"]);
    expect(await read(base + 249, base + 250)).to.deep.equal(["/a/249"]);
    expect(await read(base + 250)).to.deep.equal([]);
    // reopened: the same rows
    await store.close();
    store = await ChannelStore.open(dir);
    expect((await read()).length).to.equal(250);
  });

  it("a row whose time is not a time is refused before it is queued: nothing of that commit is written", async () => {
    const base = 1_900_000_000_000;
    for (const at of [Number.NaN, Infinity, -1, 1.5]) {
      let err: unknown;
      await store.putChannel({ ...rec, chargedCumulative: 99n }, row(at, 99)).catch((e) => (err = e));
      expect(err, String(at)).to.be.instanceOf(TypeError);
    }
    await store.putChannel({ ...rec, chargedCumulative: 1n }, row(base, 1));
    expect(await read()).to.deep.equal(["/a/1"]);
    expect((await store.getChannel(rec.channelId))!.chargedCumulative).to.equal(1n);
  });

  it("a block never spans more than LEDGER_BLOCK_SPAN_MS, and a clock that goes back starts a new block", async () => {
    const base = 1_800_000_000_000;
    const ats = [base, base + 5, base + LEDGER_BLOCK_SPAN_MS + 1, base - 10_000, base + 7];
    await Promise.all(ats.map((at, i) => store.putChannel({ ...rec, chargedCumulative: BigInt(i) }, row(at, i))));
    // every row is found by a range holding only its own time
    for (const [i, at] of ats.entries()) expect(await read(at, at + 1), `row ${i}`).to.deep.equal([`/a/${i}`]);
    expect((await read()).sort()).to.deep.equal(ats.map((_, i) => `/a/${i}`).sort());
  });
});
