import { expect } from "chai";
import pino from "pino";
import { keccak256, toHex, type Hex, type LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { ClaimEngine } from "../../node/payee/claims";
import { ChainWatcher } from "../../node/payee/watcher";
import { startChain, startPayee } from "../helpers/payeeHarness";
import { WirePayer, depositOnChain, fetchRequirements, initiateWithdraw as initiateWithdrawOnChain, payWith, type Accept } from "../helpers/wirePayer";

const PRICE = 10_000n;
const silent = pino({ level: "silent" });

describe("watcher rescan: each log is acted on once (a reorganised block or a failed sync again)", function () {
  this.timeout(120_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: Awaited<ReturnType<typeof startPayee>>;
  let accept: Accept;

  before(async () => {
    ctx = await startChain();
    node = await startPayee(ctx, { "GET /a/:id": "$0.01" } as never, (app) => app.get("/a/:id", (_req, res) => void res.send("ok")));
    accept = (await fetchRequirements(`${node.url}/a/1`)).accept;
  });
  after(async () => {
    await node?.stop();
    await ctx?.chain.stop();
  });

  /**
   * A channel the node serves whose deposit the payer sent itself: its Deposited event is the mirror's to
   * apply (the node's own deposits are stored from their receipts and their events skipped).
   */
  const depositThroughNode = async (payer: WirePayer): Promise<Hex> => {
    await depositOnChain(ctx.chain.url, payer, accept, 1_000_000n);
    const r = await payWith(`${node.url}/a/1`, await payer.voucherHeader(accept, PRICE));
    if (r.status !== 200) throw new Error(`first voucher answered ${r.status}: ${r.text}`);
    return payer.channelId(accept);
  };
  const initiateWithdraw = (payer: WirePayer, amount: bigint) => initiateWithdrawOnChain(ctx.chain.url, payer, accept, amount);

  /** Counts the watcher's syncs of one channel; `fail` makes the next ones throw (an RPC error, say). */
  function countSyncs(id: Hex) {
    const syncChannel = node.payee.syncChannel;
    const c = { n: 0, fail: 0, restore: () => void (node.payee.syncChannel = syncChannel) };
    node.payee.syncChannel = (cid, chain) => {
      if (cid !== id) return syncChannel.call(node.payee, cid, chain);
      c.n++;
      if (c.fail > 0) {
        c.fail--;
        return Promise.reject(new Error("eth_call failed"));
      }
      return syncChannel.call(node.payee, cid, chain);
    };
    return c;
  }

  /** A watcher poll while requests hold `ids` (their locks); resolves with how long the poll took (ms). */
  async function pollWhileHeld(watcher: ChainWatcher, ids: Hex[]): Promise<number> {
    const releases = ids.map((id) => node.payee.locks.tryAcquire(id)!);
    try {
      const t = Date.now();
      await watcher.poll();
      return Date.now() - t;
    } finally {
      for (const release of releases) release();
    }
  }

  /**
   * Makes the payee's RPC answer reads without a block (and, with `head`, its head too) as of block
   * `stale`, a backend behind the others, while `fn` runs.
   */
  async function lagging<T>(stale: bigint, fn: () => Promise<T>, o: { head?: boolean } = {}): Promise<T> {
    const client = node.payee.opts.publicClient;
    const { readContract, getBlockNumber } = client;
    client.readContract = ((args: { blockNumber?: bigint }) => readContract.call(client, { ...args, blockNumber: args.blockNumber ?? stale } as never)) as typeof readContract;
    if (o.head) client.getBlockNumber = (() => Promise.resolve(stale)) as typeof getBlockNumber;
    try {
      return await fn();
    } finally {
      client.readContract = readContract;
      client.getBlockNumber = getBlockNumber;
    }
  }

  it("a mirrored event still in the rescanned blocks does not wait for the channel's lock again, nor refuse its next request", async () => {
    const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("rescan-busy"))));
    const id = await depositThroughNode(payer);
    await initiateWithdraw(payer, 1n);
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll();
    await watcher.settled(); // claims the charge before the withdrawal: a Claimed event
    await watcher.poll(); // mirrors it
    await watcher.settled();
    expect((await node.store.getChannel(id))!.withdrawRequestedAt).to.be.greaterThan(0);
    expect(node.payee.unsynced.has(id)).to.equal(false);
    // Fewer blocks than are rescanned: both events are scanned again.
    await ctx.testClient.mine({ blocks: 5 });
    const took = await pollWhileHeld(watcher, [id]); // a long request holds the channel
    expect(took, "the poll waited for the channel's lock").to.be.lessThan(2_000);
    expect(node.payee.unsynced.has(id)).to.equal(false);
    const next = await payWith(`${node.url}/a/2`, await payer.voucherHeader(accept, 2n * PRICE));
    expect(next.status, next.text).to.equal(200);
  });

  it("a log is mirrored once; again when its block is reorganised (new hash), and on the next poll when its sync failed", async () => {
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("rescan-once"))));
    const id = await depositThroughNode(payer);
    // Claims nothing: a claim's own Claimed event would be one more log to mirror.
    const noClaims = { claim: async () => ({ transactions: [], failed: [] }) } as unknown as ClaimEngine;
    const watcher = new ChainWatcher(node.payee, noClaims, { logger: silent });
    const syncs = countSyncs(id);
    const client = node.payee.opts.publicClient;
    const getContractEvents = client.getContractEvents.bind(client);
    try {
      await watcher.poll(); // the Deposited event
      expect(syncs.n).to.equal(1);
      await ctx.testClient.mine({ blocks: 1 });
      await watcher.poll();
      expect(syncs.n, "mirrored again by the rescan").to.equal(1);

      // The same logs, in blocks with new hashes (a shallow reorg that kept the transactions).
      await ctx.testClient.mine({ blocks: 1 });
      (client as { getContractEvents: unknown }).getContractEvents = async (a: unknown) =>
        (await getContractEvents(a as never)).map((l) => ({ ...l, blockHash: keccak256(l.blockHash!) }));
      await watcher.poll();
      expect(syncs.n, "the reorganised block's log is mirrored").to.equal(2);
      await watcher.poll();
      expect(syncs.n).to.equal(2);
      (client as { getContractEvents: unknown }).getContractEvents = getContractEvents;

      // A new event whose sync fails: the channel is refused until a later poll mirrors it.
      await initiateWithdraw(payer, 1n);
      syncs.fail = 1;
      await watcher.poll();
      expect(syncs.n).to.equal(3);
      expect(node.payee.unsynced.has(id)).to.equal(true);
      await watcher.poll();
      expect(syncs.n, "the failed sync is tried again").to.equal(4);
      expect(node.payee.unsynced.has(id)).to.equal(false);
      expect((await node.store.getChannel(id))!.withdrawRequestedAt).to.be.greaterThan(0);
      await watcher.poll();
      expect(syncs.n).to.equal(4);
      await watcher.settled();
    } finally {
      (client as { getContractEvents: unknown }).getContractEvents = getContractEvents;
      syncs.restore();
    }
  });

  it("with confirmations, a log in a block not yet confirmed is mirrored when seen and once more when confirmed, not on every poll in between", async () => {
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("rescan-unconfirmed"))));
    const id = await depositThroughNode(payer);
    const noClaims = { claim: async () => ({ transactions: [], failed: [] }) } as unknown as ClaimEngine;
    const watcher = new ChainWatcher(node.payee, noClaims, { logger: silent, confirmations: 3 });
    const syncs = countSyncs(id);
    const client = node.payee.opts.publicClient;
    const getContractEvents = client.getContractEvents.bind(client);
    try {
      await watcher.poll(); // the Deposited event, at head: not confirmed
      expect(syncs.n).to.equal(1);
      await ctx.testClient.mine({ blocks: 1 });
      const took = await pollWhileHeld(watcher, [id]); // a long request holds the channel
      expect(took, "the poll waited for the channel's lock").to.be.lessThan(2_000);
      expect(syncs.n, "mirrored again while not confirmed").to.equal(1);
      expect(node.payee.unsynced.has(id)).to.equal(false);

      // A reorganised unconfirmed block (new hash) is mirrored again, once.
      await ctx.testClient.mine({ blocks: 1 });
      (client as { getContractEvents: unknown }).getContractEvents = async (a: unknown) =>
        (await getContractEvents(a as never)).map((l) => ({ ...l, blockHash: keccak256(l.blockHash!) }));
      await watcher.poll();
      expect(syncs.n, "the reorganised block's log is mirrored").to.equal(2);
      (client as { getContractEvents: unknown }).getContractEvents = getContractEvents;

      // Three blocks on top of it: confirmed, and mirrored once more (the confirmed view now has it).
      await ctx.testClient.mine({ blocks: 1 });
      await watcher.poll();
      expect(syncs.n, "mirrored once more when confirmed").to.equal(3);
      await ctx.testClient.mine({ blocks: 1 });
      await watcher.poll();
      expect(syncs.n).to.equal(3);
      expect(node.payee.unsynced.has(id)).to.equal(false);
    } finally {
      (client as { getContractEvents: unknown }).getContractEvents = getContractEvents;
      syncs.restore();
    }
  });

  it("a poll at a head already scanned (twice) fetches no logs, and still refreshes the chain view; a failed sync is retried at the same head", async () => {
    const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("rescan-idle"))));
    const noClaims = { claim: async () => ({ transactions: [], failed: [] }) } as unknown as ClaimEngine;
    const watcher = new ChainWatcher(node.payee, noClaims, { logger: silent });
    const client = node.payee.opts.publicClient;
    const getContractEvents = client.getContractEvents.bind(client);
    let fetches = 0;
    (client as { getContractEvents: unknown }).getContractEvents = (a: unknown) => {
      fetches++;
      return getContractEvents(a as never);
    };
    const id = await depositThroughNode(payer);
    const syncs = countSyncs(id);
    try {
      await watcher.poll();
      expect(fetches).to.equal(1);
      // A second look at the same head: a load-balanced RPC's log index can lag its head.
      await watcher.poll();
      expect(fetches).to.equal(2);
      node.payee.chainSyncedAt = 0;
      await watcher.poll();
      expect(fetches, "the same head scanned again").to.equal(2);
      expect(node.payee.chainSyncedAt, "the chain view is refreshed").to.be.greaterThan(0);
      expect(watcher.failures).to.equal(0);

      // A new block: scanned. A sync that fails is retried at the same head until it succeeds.
      await initiateWithdraw(payer, 1n);
      syncs.fail = 1;
      await watcher.poll();
      expect(node.payee.unsynced.has(id)).to.equal(true);
      await watcher.poll();
      expect(node.payee.unsynced.has(id)).to.equal(false);
      expect(syncs.n).to.equal(3);
      const scanned = fetches;
      await watcher.poll();
      await watcher.poll();
      await watcher.poll();
      expect(fetches, "scanned twice at this head after the failure, then not").to.equal(scanned + 1);
      expect(syncs.n).to.equal(3);
    } finally {
      (client as { getContractEvents: unknown }).getContractEvents = getContractEvents;
      syncs.restore();
    }
  });
  it("a channel's state is read at the head its logs came from, not 'latest' (an RPC backend a block behind would answer an older state)", async () => {
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("rescan-lagging-read"))));
    const id = await depositThroughNode(payer);
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll();
    await watcher.settled();
    const before = await ctx.publicClient.getBlockNumber();
    await initiateWithdraw(payer, 1n);
    // A backend that answers "latest" from the block before the withdrawal.
    await lagging(before, () => watcher.poll());
    await watcher.settled();
    expect((await node.store.getChannel(id))!.withdrawRequestedAt).to.be.greaterThan(0);
  });
  it("channels with requests in flight are mirrored side by side (the poll waits one lock timeout, not one per channel); one gone since its sync failed is no longer refused", async () => {
    const payers = [2, 3].map((i) => new WirePayer(ctx.payers[i] as LocalAccount, privateKeyToAccount(keccak256(toHex(`rescan-busy-${i}`)))));
    const ids: Hex[] = [];
    for (const p of payers) ids.push(await depositThroughNode(p));
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll();
    for (const p of payers) await initiateWithdraw(p, 1n);
    const took = await pollWhileHeld(watcher, ids); // two long requests
    expect(took).to.be.below(8_000); // the lock timeout is 5 s: one after another took 10 s
    for (const id of ids) expect(node.payee.unsynced.has(id)).to.equal(true);
    // One channel's record goes (a refund closed it) before the next poll: nothing to mirror, not refused.
    await node.store.deleteChannel(ids[0]!);
    await watcher.poll();
    await watcher.settled();
    expect(node.payee.unsynced.has(ids[0]!)).to.equal(false);
    expect(node.payee.unsynced.has(ids[1]!)).to.equal(false); // mirrored now
    expect((await node.store.getChannel(ids[1]!))!.withdrawRequestedAt).to.be.greaterThan(0);
  });
  it("a channel left unmirrored because a request held it is read again by its next request, which is served (not a 503)", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("rescan-resync"))));
    const id = await depositThroughNode(payer);
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll();
    await initiateWithdraw(payer, 1n);
    await pollWhileHeld(watcher, [id]); // a long request
    expect(node.payee.unsynced.has(id)).to.equal(true);
    // And at the block of the event it missed or later, not "latest" (here a backend from before the withdrawal).
    const stale = (await ctx.publicClient.getBlockNumber()) - 1n;
    const voucher = await payer.voucherHeader(accept, 2n * PRICE);
    const next = await lagging(stale, () => payWith(`${node.url}/a/2`, voucher), { head: true }); // its head lags too
    expect(next.status, next.text).to.equal(200);
    expect(node.payee.unsynced.has(id)).to.equal(false);
    expect((await node.store.getChannel(id))!.withdrawRequestedAt).to.be.greaterThan(0); // the request mirrored it
  });

  it("the node's own deposit is read back at its receipt's block: a backend behind it cannot leave a stale balance that the mirror (skipping the node's own events) would keep", async () => {
    const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("rescan-readback"))));
    const stale = await ctx.publicClient.getBlockNumber(); // before the deposit: the channel does not exist there
    const r = await lagging(stale, async () => payWith(`${node.url}/a/1`, await payer.depositHeader(accept, 1_000_000n, PRICE)));
    expect(r.status, r.text).to.equal(200);
    expect((await node.payee.store.getChannel(payer.channelId(accept)))!.balance).to.equal(1_000_000n);
  });
});
