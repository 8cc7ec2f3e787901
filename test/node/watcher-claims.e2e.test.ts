import { expect } from "chai";
import fs from "node:fs";
import path from "node:path";
import pino from "pino";
import { keccak256, pad, toHex, type Hex, type LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { batchSettlementAbi } from "../../node/chain/abi";
import { readChannel, readReceiver } from "../../node/chain/escrow";
import { ClaimEngine, ClaimRunError, toClaimRow } from "../../node/payee/claims";
import { ChainWatcher } from "../../node/payee/watcher";
import { ChainError, ErrorCodes } from "../../node/protocol/errors";
import { RevertedOnChainError, type SendResult, type TxSender } from "../../node/chain/sender";
import { CANONICAL_ADDRESSES, computeChannelId, type VoucherClaim } from "../../node/protocol/typedData";
import { clientsFor } from "../helpers/chainNode";
import { startChain, startPayee } from "../helpers/payeeHarness";
import { PayerSigns, WirePayer, depositOnChain, depositThroughNode as depositThrough, fetchRequirements, initiateWithdraw as initiateWithdrawOnChain, payWith, type Accept } from "../helpers/wirePayer";

const PRICE = 10_000n;
const ESCROW = CANONICAL_ADDRESSES.batchSettlement;
const silent = pino({ level: "silent" });

/** A paid handler's request held until the test lets it go. */
function holdRequest() {
  let enter!: () => void;
  let release!: () => void;
  const entered = new Promise<void>((r) => (enter = r));
  const released = new Promise<void>((r) => (release = r));
  return { entered, released, enter, release };
}

/** A sent claim's rows, as the sender is called with them. */
type Sent = { functionName: string; args: readonly [VoucherClaim[]] };

/**
 * Replaces the payee's sender.send with `fn` (given the call and the real send) until the returned undo runs.
 * A claim refused "on chain" is a rejection with a reverted receipt (its contents do not matter here).
 */
function interceptSend(sender: TxSender, fn: (p: Sent, send: (p: Sent) => Promise<SendResult>) => Promise<SendResult>): () => void {
  const send = sender.send;
  sender.send = ((p: Sent) => fn(p, (q) => send.call(sender, q as never))) as typeof send;
  return () => void (sender.send = send);
}
const revertedOnChain = () => Promise.reject(new RevertedOnChainError(ErrorCodes.claimTransactionFailed, "claim", { transactionHash: "0x01" } as never));

describe("watcher and claims: withdrawals in flight, missed logs, rows that revert on chain, threshold runs", function () {
  this.timeout(240_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: Awaited<ReturnType<typeof startPayee>>;
  let accept: Accept;
  let held = holdRequest();

  const routes = { "GET /a/:id": "$0.01", "GET /slow": "$0.01" } as never;
  const install = (app: import("express").Express) => {
    app.get("/a/:id", (_req, res) => void res.send("ok"));
    app.get("/slow", async (_req, res) => {
      held.enter();
      await held.released;
      res.send("slow");
    });
  };
  before(async () => {
    ctx = await startChain();
    node = await startPayee(ctx, routes, install);
    accept = (await fetchRequirements(`${node.url}/a/1`)).accept;
  });
  /** Stops the node and starts it again on the same store (another port). */
  async function restart() {
    await node.stop();
    node = await startPayee(ctx, routes, install, { dir: node.dir });
  }
  after(async () => {
    await node?.stop();
    await ctx?.chain.stop();
  });

  const claimedOnChain = async (id: Hex) => (await readChannel(ctx.publicClient as never, ESCROW, id)).totalClaimed;

  const depositThroughNode = (payer: WirePayer) => depositThrough(`${node.url}/a/1`, payer, accept);
  const initiateWithdraw = (payer: WirePayer, amount: bigint) => initiateWithdrawOnChain(ctx.chain.url, payer, accept, amount);

  it("watcher: a withdrawal initiated while the channel's first paid request runs (no record yet) is mirrored after its commit, and claimed", async () => {
    const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("inflight-first"))));
    const id = payer.channelId(accept);
    await depositOnChain(ctx.chain.url, payer, accept, 1_000_000n);
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll(); // past the deposit (a channel the node does not know yet)
    held = holdRequest();
    const first = payWith(`${node.url}/slow`, await payer.voucherHeader(accept, PRICE));
    await held.entered;
    expect(await node.store.getChannel(id)).to.equal(undefined); // written only at the commit
    await initiateWithdraw(payer, 1_000_000n);
    // The poll sees the event while the request holds the channel; the request goes on once the poll
    // waits to mirror the channel (or has finished without it).
    const syncChannel = node.payee.syncChannel;
    let syncing!: () => void;
    const waiting = new Promise<void>((r) => (syncing = r));
    node.payee.syncChannel = (cid, chain) => {
      if (cid === id) syncing();
      return syncChannel.call(node.payee, cid, chain);
    };
    try {
      const polled = watcher.poll();
      await Promise.race([waiting, polled]);
      held.release();
      expect((await first).status).to.equal(200);
      await polled;
    } finally {
      node.payee.syncChannel = syncChannel;
    }
    await watcher.settled(); // its withdrawal claims run in the background
    expect((await node.store.getChannel(id))!.withdrawRequestedAt).to.be.greaterThan(0);
    expect(await claimedOnChain(id)).to.equal(PRICE);
    // The withdrawal takes the whole balance: nothing more is served on it.
    const next = await payWith(`${node.url}/a/2`, await payer.voucherHeader(accept, 2n * PRICE));
    expect(next.status).to.equal(402);
    expect(next.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_exceeds_balance");
  });

  it("watcher: with confirmations 0, a WithdrawInitiated missing from the RPC's logs at head is still seen by a later poll (the last blocks are scanned again)", async () => {
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("missed-log"))));
    const id = await depositThroughNode(payer);
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll();
    await initiateWithdraw(payer, 1_000_000n);
    // A load-balanced RPC answers once from a backend whose log index is a block behind its head.
    const client = node.payee.opts.publicClient;
    const getContractEvents = client.getContractEvents.bind(client);
    let lagging = true;
    (client as { getContractEvents: unknown }).getContractEvents = async (a: { toBlock: bigint }) => {
      const logs = await getContractEvents(a as never);
      if (!lagging) return logs;
      lagging = false;
      return logs.filter((l) => l.blockNumber !== a.toBlock);
    };
    try {
      await watcher.poll();
      await watcher.settled();
      expect(lagging).to.equal(false);
      expect(watcher.pendingWithdrawals).to.deep.equal([]); // missed this time
      await watcher.poll();
      await watcher.settled();
    } finally {
      (client as { getContractEvents: unknown }).getContractEvents = getContractEvents;
    }
    expect((await node.store.getChannel(id))!.withdrawRequestedAt).to.be.greaterThan(0);
    expect(await claimedOnChain(id)).to.equal(PRICE);
  });

  it("watcher: a store scan that fails at start is retried on the next poll, with an alert", async () => {
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("scan-retry"))));
    const id = await depositThroughNode(payer);
    await initiateWithdraw(payer, 1_000_000n);
    await node.payee.syncChannel(id); // mirrored before a restart
    // After the restart the event is long behind the checkpoint: only the store scan finds the channel.
    await ctx.testClient.mine({ blocks: 20 });
    await node.store.putMeta("mirror.checkpoint", String(await ctx.publicClient.getBlockNumber({ cacheTime: 0 })));
    const lines: string[] = [];
    const logger = pino({ level: "warn" }, { write: (line: string) => void lines.push(line) });
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger, pollIntervalMs: 600_000 });
    const channels = node.store.channels;
    node.store.channels = async function* () {
      throw new Error("LevelDB iterator failed");
    } as typeof channels;
    try {
      watcher.start();
    } finally {
      node.store.channels = channels;
    }
    try {
      await watcher.poll();
      await watcher.settled();
    } finally {
      await watcher.stop();
    }
    expect(lines.join("")).to.include('"alert":"store_scan_failed"');
    expect(await claimedOnChain(id)).to.equal(PRICE);
  });

  it("claims: a payer-signed row that passes simulation and is refused on chain is split off and alerted, the channel batched with it is claimed, and the refused channel gets no new charges", async () => {
    const viaSessionKey = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("beside-gated"))));
    const gated = new PayerSigns(ctx.payers[5] as LocalAccount, ctx.payers[5] as LocalAccount, pad("0x6a7e", { size: 32 }));
    const gatedId = await depositThroughNode(gated);
    const goodId = await depositThroughNode(viaSessionKey);
    // The payer's address then gets code whose isValidSignature holds only at gas price 0: in every
    // eth_call, never in a mined transaction (an EIP-7702 delegation can do this).
    const artifact = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "artifacts", "contracts", "test", "GasPriceGatedWallet.sol", "GasPriceGatedWallet.json"), "utf8"));
    const deployer = clientsFor(ctx.chain.url, ctx.payers[4] as LocalAccount);
    const hash = await deployer.walletClient.deployContract({ abi: artifact.abi, bytecode: artifact.bytecode, args: [gated.account.address] });
    const wallet = (await ctx.publicClient.waitForTransactionReceipt({ hash })).contractAddress!;
    await ctx.testClient.setCode({ address: gated.account.address, bytecode: (await ctx.publicClient.getCode({ address: wallet }))! });
    try {
      // Its claim passes simulation, alone and together with the session-key row.
      const rows = await Promise.all([gatedId, goodId].map(async (cid) => toClaimRow((await node.store.getChannel(cid))!)));
      await node.payee.opts.sender.simulate({ address: ESCROW, abi: batchSettlementAbi, functionName: "claim", args: [rows] });
      const alerts: Hex[] = [];
      const claims = new ClaimEngine(node.payee, { onShutdown: false, onAlert: (cid) => alerts.push(cid) });
      const report = await claims.claim({ channels: [gatedId, goodId] });
      expect(report.failed.map((f) => f.channelId)).to.deep.equal([gatedId]);
      expect(alerts).to.deep.equal([gatedId]);
      expect(report.transactions.map((t) => t.channels)).to.deep.equal([[goodId]]);
      expect(await claimedOnChain(goodId)).to.equal(PRICE);
      expect(await claimedOnChain(gatedId)).to.equal(0n);
      // Its wallet still says yes to every eth_call, but what it gets unpaid stops here.
      const refused = await payWith(`${node.url}/a/2`, await gated.voucherHeader(accept, 2n * PRICE));
      expect(refused.status).to.equal(402);
      expect(refused.paymentRequired.error).to.equal("invalid_batch_settlement_evm_voucher_signature");
      expect((await payWith(`${node.url}/a/2`, await viaSessionKey.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
      // Automatic runs (threshold, periodic, a withdrawal's) leave it out: no gas for a claim the chain refuses;
      // an operator's request (and the shutdown) still tries it.
      const tried: number[] = [];
      const undo = interceptSend(node.payee.opts.sender, (p, send) => {
        if (p.functionName === "claim") tried.push(p.args[0].length);
        return send(p);
      });
      try {
        expect((await claims.claim({ channels: [gatedId] })).failed).to.deep.equal([]);
        expect(tried).to.deep.equal([]);
        expect((await claims.claim({ channels: [gatedId], includeUnclaimable: true })).failed.map((f) => f.channelId)).to.deep.equal([gatedId]);
        expect(tried).to.deep.equal([1]);
      } finally {
        undo();
      }
    } finally {
      await ctx.testClient.setCode({ address: gated.account.address, bytecode: "0x" });
    }
  });

  it("claims: a batch whose transaction fails on chain is split and sent again; the row that fails alone is alerted, left out of automatic runs and sent alone when asked", async () => {
    const payers = [0, 1, 2].map((i) => new WirePayer(ctx.payers[i] as LocalAccount, privateKeyToAccount(keccak256(toHex(`split-${i}`)))));
    const ids: Hex[] = [];
    for (const p of payers) ids.push(await depositThroughNode(p));
    const badId = ids[1]!;
    // The chain refuses every claim transaction with this row in it (its simulation passes).
    const sent: Hex[][] = [];
    const undo = interceptSend(node.payee.opts.sender, (p, send) => {
      if (p.functionName !== "claim") return send(p);
      const channels = p.args[0].map((row) => computeChannelId(payers[0]!.domain, row.voucher.channel));
      sent.push(channels);
      return channels.includes(badId) ? revertedOnChain() : send(p);
    });
    try {
      const alerts: Hex[] = [];
      const claims = new ClaimEngine(node.payee, { onShutdown: false, onAlert: (cid) => alerts.push(cid) });
      const report = await claims.claim({ channels: ids });
      expect(report.failed.map((f) => f.channelId)).to.deep.equal([badId]);
      expect(alerts).to.deep.equal([badId]);
      for (const [i, id] of ids.entries()) expect(await claimedOnChain(id), `channel ${i}`).to.equal(id === badId ? 0n : PRICE);
      // The next run sends that row alone, after a batch of the others.
      for (const p of [payers[0]!, payers[2]!]) expect((await payWith(`${node.url}/a/2`, await p.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
      sent.length = 0;
      // An automatic run leaves it out; an operator's sends it alone, after a batch of the others.
      await claims.claim({ channels: [badId, ids[0]!, ids[2]!] });
      expect(sent).to.deep.equal([[ids[0], ids[2]]]);
      for (const p of [payers[0]!, payers[2]!]) expect((await payWith(`${node.url}/a/2`, await p.voucherHeader(accept, 3n * PRICE))).status).to.equal(200);
      sent.length = 0;
      await claims.claim({ channels: [badId, ids[0]!, ids[2]!], includeUnclaimable: true });
      expect(sent).to.deep.equal([[ids[0], ids[2]], [badId]]);
      // Its payer initiates a withdrawal: the watcher's claim tries it (what the withdrawal would take is at stake).
      sent.length = 0;
      await initiateWithdraw(payers[1]!, 1n);
      const logged: string[] = [];
      const watcher = new ChainWatcher(node.payee, claims, { logger: pino({ level: "error" }, { write: (line: string) => void logged.push(line) }) });
      // Tried three times (with the back-off: 2 s, then 4 s), then left to the operator, with one alert.
      for (const wait of [0, 2_100, 4_100]) {
        await new Promise((r) => setTimeout(r, wait));
        await watcher.poll();
        await watcher.settled();
      }
      expect(sent.filter((rows) => rows.includes(badId))).to.have.length(3);
      expect(logged.filter((l) => l.includes("no more automatic tries"))).to.have.length(1);
      await watcher.poll();
      await watcher.settled();
      expect(sent.filter((rows) => rows.includes(badId))).to.have.length(3);
    } finally {
      undo();
    }
  });

  it("claims: the unclaimable mark is kept across a restart (no new charges, no automatic claims) and cleared, also on disk, by the claim that lands", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("kept-mark"))));
    const id = await depositThroughNode(payer);
    const undo = interceptSend(node.payee.opts.sender, (p, send) => (p.functionName === "claim" ? revertedOnChain() : send(p)));
    try {
      expect((await new ClaimEngine(node.payee, { onShutdown: false }).claim({ channels: [id] })).failed.map((f) => f.channelId)).to.deep.equal([id]);
    } finally {
      undo();
    }
    expect(node.payee.unclaimable.has(id)).to.equal(true);
    await restart();
    expect(node.payee.unclaimable.has(id)).to.equal(true);
    const refused = await payWith(`${node.url}/a/2`, await payer.voucherHeader(accept, 2n * PRICE));
    expect(refused.status).to.equal(402);
    expect(refused.paymentRequired.error).to.equal("invalid_batch_settlement_evm_voucher_signature");
    const claims = new ClaimEngine(node.payee, { onShutdown: false });
    expect((await claims.claim({ channels: [id] })).transactions).to.deep.equal([]); // an automatic run leaves it out
    // The operator's claim lands: the mark is gone, and stays gone after the next restart.
    expect((await claims.claim({ channels: [id], includeUnclaimable: true })).claimedChannels).to.equal(1);
    expect(await claimedOnChain(id)).to.equal(PRICE);
    await node.store.putMeta("unclaimable:not-a-channel-id", "1"); // skipped at start, with a warning
    const others = [...node.payee.unclaimable]; // the channels earlier tests left marked
    await restart();
    expect([...node.payee.unclaimable]).to.deep.equal(others);
    expect((await payWith(`${node.url}/a/2`, await payer.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
    // A claim the node did not apply from its own receipt (another relayer's), seen by the mirror, clears it too.
    await node.payee.markUnclaimable(id);
    await node.payee.opts.sender.send({ address: ESCROW, abi: batchSettlementAbi, functionName: "claim", args: [[toClaimRow((await node.store.getChannel(id))!)]] });
    await node.payee.syncChannel(id);
    expect(node.payee.unclaimable.has(id)).to.equal(false);
    await restart();
    expect(node.payee.unclaimable.has(id)).to.equal(false);
  });

  it("claims: a send that fails for a reason not about the rows (no ETH for gas, the RPC) fails them as they are: no split, nobody blamed", async () => {
    const payers = [0, 1].map((i) => new WirePayer(ctx.payers[i] as LocalAccount, privateKeyToAccount(keccak256(toHex(`no-gas-${i}`)))));
    const ids: Hex[] = [];
    for (const p of payers) ids.push(await depositThroughNode(p));
    let claimSends = 0;
    const undo = interceptSend(node.payee.opts.sender, (p, send) => {
      if (p.functionName !== "claim") return send(p);
      claimSends++;
      return Promise.reject(new ChainError(ErrorCodes.claimTransactionFailed, "claim failed after 4 attempts", { cause: new Error("insufficient funds for gas * price + value") }));
    });
    try {
      const report = await new ClaimEngine(node.payee, { onShutdown: false }).claim({ channels: ids });
      expect(claimSends).to.equal(1);
      expect(report.failed.map((f) => f.channelId)).to.have.members(ids);
      for (const id of ids) expect(node.payee.unclaimable.has(id)).to.equal(false);
      expect((await payWith(`${node.url}/a/3`, await payers[0]!.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
    } finally {
      undo();
    }
  });

  it("claims: a run stopped by an RPC failure part-way carries what it did (the transactions that landed, the rows left, nobody blamed)", async () => {
    const payers = [0, 1, 2].map((i) => new WirePayer(ctx.payers[i] as LocalAccount, privateKeyToAccount(keccak256(toHex(`run-stopped-${i}`)))));
    const ids: Hex[] = [];
    for (const p of payers) ids.push(await depositThroughNode(p));
    const sender = node.payee.opts.sender;
    const simulate = sender.simulate;
    let simulations = 0;
    sender.simulate = (async (p: { functionName: string }) => {
      // Each group is simulated once to isolate bad rows and once more by its send: the 3rd is group 2's first.
      if (p.functionName === "claim" && ++simulations === 3) throw new Error("HTTP request failed: rpc unreachable");
      return (simulate as (q: unknown) => Promise<void>).call(sender, p);
    }) as typeof sender.simulate;
    try {
      const err = await new ClaimEngine(node.payee, { batchSize: 1, onShutdown: false }).claim({ channels: ids }).catch((e) => e);
      expect(err).to.be.instanceOf(ClaimRunError);
      expect(err.message).to.match(/rpc unreachable/);
      const report = (err as ClaimRunError).report;
      expect(report.transactions).to.have.length(1);
      expect(report.claimedChannels).to.equal(1);
      const claimedId = report.transactions[0]!.channels[0]!;
      expect(await claimedOnChain(claimedId)).to.equal(PRICE);
      expect(report.failed.map((f) => f.channelId)).to.have.members(ids.filter((id) => id !== claimedId));
      for (const id of ids) expect(node.payee.unclaimable.has(id)).to.equal(false);
    } finally {
      sender.simulate = simulate;
    }
  });

  it("threshold claims: channels flagged together are claimed in one run, one transaction", async () => {
    const payers = [3, 4].map((i) => new WirePayer(ctx.payers[i] as LocalAccount, privateKeyToAccount(keccak256(toHex(`coalesce-${i}`)))));
    const ids: Hex[] = [];
    for (const p of payers) ids.push(await depositThroughNode(p));
    let claimTransactions = 0;
    const undo = interceptSend(node.payee.opts.sender, (p, send) => {
      if (p.functionName === "claim") claimTransactions++;
      return send(p);
    });
    try {
      const claims = new ClaimEngine(node.payee, { threshold: 5_000n, onShutdown: false });
      const recs = await Promise.all(ids.map((id) => node.store.getChannel(id)));
      for (const rec of recs) claims.noteCharge(rec!); // charges committed in the same moment
      await claims.stop(); // waits for the run
      expect(claimTransactions).to.equal(1);
      for (const id of ids) expect(await claimedOnChain(id)).to.equal(PRICE);
    } finally {
      undo();
    }
  });
  it("claims: a claim asked for first (a withdrawal is pending) goes between the transactions of a run in progress, not after its last one", async () => {
    const payers = [0, 1, 2, 3, 4].map((i) => new WirePayer(ctx.payers[i] as LocalAccount, privateKeyToAccount(keccak256(toHex(`first-lane-${i}`)))));
    const ids: Hex[] = [];
    for (const p of payers) ids.push(await depositThroughNode(p));
    const order: Hex[] = [];
    const undo = interceptSend(node.payee.opts.sender, (p, send) => {
      if (p.functionName === "claim") for (const row of p.args[0]) order.push(computeChannelId(payers[0]!.domain, row.voucher.channel));
      return send(p);
    });
    try {
      const claims = new ClaimEngine(node.payee, { batchSize: 1, onShutdown: false });
      const run = claims.claim({ channels: ids.slice(0, 4) });
      await new Promise((r) => setTimeout(r, 0)); // the run has started
      const first = await claims.claim({ channels: [ids[4]!], first: true });
      expect(first.claimedChannels, JSON.stringify(first, (_k, v) => (typeof v === "bigint" ? String(v) : v))).to.equal(1);
      expect((await run).claimedChannels).to.equal(4);
      expect(order).to.have.length(5);
      expect(order.indexOf(ids[4]!), `claim order ${order.map((id) => ids.indexOf(id))}`).to.be.below(2);
      for (const id of ids) expect(await claimedOnChain(id)).to.equal(PRICE);
    } finally {
      undo();
    }
  });

  it("shutdown: a claim that fails as a whole is reported by stop(), not passed over (the CLI then exits 1)", async () => {
    const payer = new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex("shutdown-report"))));
    const id = await depositThroughNode(payer);
    const sender = node.payee.opts.sender;
    const simulate = sender.simulate;
    sender.simulate = (() => Promise.reject(new Error("connect ECONNREFUSED 127.0.0.1:8545"))) as typeof simulate;
    try {
      const left = await new ClaimEngine(node.payee, { onShutdown: true }).stop();
      expect(left.error).to.match(/^claim: .*ECONNREFUSED/);
      expect(await claimedOnChain(id)).to.equal(0n);
    } finally {
      sender.simulate = simulate;
    }
  });

  /** A payee of its own (a fresh store) with `n` channels deposited through it, for runs that claim everything. */
  async function freshNodeWithChannels(label: string, n: number) {
    const fresh = await startPayee(ctx, routes, install);
    const ids: Hex[] = [];
    for (let i = 0; i < n; i++) {
      const payer = new WirePayer(ctx.payers[i % ctx.payers.length] as LocalAccount, privateKeyToAccount(keccak256(toHex(`${label}-${i}`))));
      ids.push(await depositThrough(`${fresh.url}/a/1`, payer, accept));
    }
    return { fresh, ids };
  }
  const receiverTotals = () => readReceiver(ctx.publicClient as never, ESCROW, node.payeeAccount.address, ctx.deployment.token!);

  it("periodic claims: every intervalMs a run claims what is unclaimed, then settles the receiver", async () => {
    const { fresh, ids } = await freshNodeWithChannels("periodic", 2);
    const claims = new ClaimEngine(fresh.payee, { intervalMs: 200, onShutdown: false });
    try {
      for (const id of ids) expect(await claimedOnChain(id)).to.equal(0n);
      claims.start();
      const deadline = Date.now() + 10_000;
      for (;;) {
        const [claimed, totals] = await Promise.all([Promise.all(ids.map(claimedOnChain)), receiverTotals()]);
        if (claimed.every((c) => c === PRICE) && totals.totalSettled === totals.totalClaimed) break;
        if (Date.now() > deadline) throw new Error(`periodic run did not claim and settle: claimed ${claimed.join(", ")}, receiver ${totals.totalClaimed} claimed / ${totals.totalSettled} settled`);
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      await claims.stop();
      await fresh.stop();
    }
  });

  it("shutdown: stop() claims every channel in batches of batchSize and settles the receiver; the report says nothing is left", async () => {
    const { fresh, ids } = await freshNodeWithChannels("shutdown-batches", 3);
    const sent: string[] = [];
    const undo = interceptSend(fresh.payee.opts.sender, (p, send) => {
      sent.push(`${p.functionName}:${p.functionName === "claim" ? p.args[0].length : "-"}`);
      return send(p);
    });
    try {
      const report = await new ClaimEngine(fresh.payee, { onShutdown: true, batchSize: 2 }).stop();
      expect(report).to.deep.equal({ unclaimed: 0 });
      expect(sent).to.deep.equal(["claim:2", "claim:1", "settle:-"]);
      for (const id of ids) expect(await claimedOnChain(id)).to.equal(PRICE);
      const totals = await receiverTotals();
      expect(totals.totalSettled).to.equal(totals.totalClaimed);
    } finally {
      undo();
      await fresh.stop();
    }
  });

  it("watcher: the node's own deposit and claim are not read back again (stored from their receipts): chain reads failing right after them leave the channel served", async () => {
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll(); // checkpoint before the deposit
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("own-events"))));
    const id = await depositThroughNode(payer);
    await new ClaimEngine(node.payee, { onShutdown: false }).claim({ channels: [id] });
    expect(await claimedOnChain(id)).to.equal(PRICE);
    // Now every read of a channel's state fails (an RPC that answers logs and not eth_call, a blip).
    const client = node.payee.opts.publicClient as unknown as { readContract: (a: { functionName: string }) => Promise<unknown> };
    const readContract = client.readContract;
    let channelReads = 0;
    client.readContract = (a) => (a.functionName === "channels" ? (channelReads++, Promise.reject(new Error("eth_call failed"))) : readContract.call(client, a as never));
    try {
      await watcher.poll();
      expect(channelReads, "the mirror read the channel back").to.equal(0);
      expect(node.payee.unsynced.has(id)).to.equal(false);
      const r = await payWith(`${node.url}/a/own`, await payer.voucherHeader(accept, 2n * PRICE));
      expect(r.status, r.text).to.equal(200);
    } finally {
      client.readContract = readContract;
    }
  });
});
