import { expect } from "chai";
import express from "express";
import fs from "node:fs";
import v8 from "node:v8";
import vm from "node:vm";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import { createPublicClient, getAddress, http, keccak256, toHex, zeroAddress, type LocalAccount, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createPayer, type Payer } from "../../node/payer/payer";
import { openPayerStore, MemoryPayerStore, type PayerStore } from "../../node/payer/store";
import { wrapFetch, requestRefund } from "../../node/payer/fetch";
import { ChainError, PolicyError, ServerMisbehaviorError, TollwayError } from "../../node/protocol/errors";
import { HEADERS, decodeBase64Json, encodeBase64Json } from "../../node/protocol/wire";
import { batchSettlementAbi } from "../../node/chain/abi";
import { ClaimEngine } from "../../node/payee/claims";
import { clientsFor } from "../helpers/chainNode";
import { startChain, startPayee } from "../helpers/payeeHarness";
import { fetchRequirements } from "../helpers/wirePayer";

const PRICE = 10_000n;

describe("payer: Tollway's client pays per request (real chain, real payee node, LevelDB)", function () {
  this.timeout(240_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: Awaited<ReturnType<typeof startPayee>>;
  const routes = { "GET /articles/:id": "$0.01", "GET /pricey": "$2", "GET /broken": "$0.01", "GET /shop/dear": "$0.05", "GET /shop/cheap": "$0.01" };

  before(async () => {
    ctx = await startChain();
    node = await startPayee(ctx, routes, (app) => {
      app.get("/articles/:id", (req, res) => void res.send(`article ${req.params.id}`));
      app.get("/pricey", (_req, res) => void res.send("pricey"));
      app.get("/broken", (_req, res) => void res.status(500).send("broken"));
      app.get("/shop/:item", (req, res) => void res.send(req.params.item));
    });
  });
  after(async () => {
    await node?.stop();
    await ctx?.chain.stop();
  });

  function counting() {
    const calls: Array<{ url: string; paid: boolean }> = [];
    const f: typeof fetch = async (input, init) => {
      const req = new Request(input as RequestInfo, init);
      calls.push({ url: req.url, paid: req.headers.has(HEADERS.paymentSignature) });
      return fetch(req);
    };
    return { f, calls };
  }

  function makePayer(store: PayerStore, account: LocalAccount, session: string, policy = {}) {
    const { publicClient, walletClient } = clientsFor(ctx.chain.url, account);
    return createPayer({
      account,
      sessionKey: privateKeyToAccount(keccak256(toHex(session))),
      store,
      chainId: 31337,
      publicClient: publicClient as never,
      walletClient: walletClient as never,
      policy: { maxPerRequest: 50_000n, maxDeposit: 5_000_000n, depositMultiplier: 300, ...policy },
    });
  }

  async function tokenBalance(a: Hex) {
    return node.payee.opts.publicClient.readContract({
      address: ctx.deployment.token!,
      abi: [{ type: "function", name: "balanceOf", stateMutability: "view", inputs: [{ name: "a", type: "address" }], outputs: [{ name: "", type: "uint256" }] }] as const,
      functionName: "balanceOf",
      args: [a],
    });
  }

  it("open -> 200 paid requests (one round trip each) -> client restart -> continue without overpaying -> refund to the unit", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-payer-"));
    const account = ctx.payers[0] as LocalAccount;
    const before = await tokenBalance(account.address);
    let store = await openPayerStore(dir);
    let payer = makePayer(store, account, "payer-a");
    const { f, calls } = counting();
    let pay = wrapFetch(f, payer);
    for (let i = 0; i < 120; i++) {
      const res = await pay(`${node.url}/articles/${i}`);
      expect(res.status).to.equal(200);
      expect(await res.text()).to.equal(`article ${i}`);
    }
    // first request: unpaid + paid (402 exchange); every later one: a single paid request
    expect(calls.length).to.equal(121);
    expect(calls.filter((c) => !c.paid).length).to.equal(1);

    // restart the client: a new process would reopen the same LevelDB
    await store.close();
    store = await openPayerStore(dir);
    payer = makePayer(store, account, "payer-a");
    pay = wrapFetch(f, payer);
    for (let i = 120; i < 200; i++) expect((await pay(`${node.url}/articles/${i}`)).status).to.equal(200);
    expect(calls.length).to.equal(201); // still one round trip each, no corrective needed
    const [ch] = await store.channels();
    expect(ch!.charged).to.equal(200n * PRICE);
    expect(ch!.spent).to.equal(200n * PRICE);
    const rec = await node.store.getChannel(ch!.channelId);
    expect(rec!.chargedCumulative).to.equal(200n * PRICE);

    const refunded = await requestRefund(fetch, payer, `${node.url}/articles/0`);
    expect(refunded).to.equal(300n * PRICE - 200n * PRICE);
    expect(before - (await tokenBalance(account.address))).to.equal(200n * PRICE);
    await store.close();
  });

  it("parallel requests through one payer serialize on the channel: each charged exactly once", async () => {
    const store = new MemoryPayerStore();
    const payer = makePayer(store, ctx.payers[1] as LocalAccount, "payer-b");
    const pay = wrapFetch(fetch, payer);
    expect((await pay(`${node.url}/articles/first`)).status).to.equal(200);
    const results = await Promise.all(Array.from({ length: 25 }, (_, i) => pay(`${node.url}/articles/p${i}`)));
    expect(results.map((r) => r.status)).to.deep.equal(Array(25).fill(200));
    const [ch] = await store.channels();
    expect(ch!.charged).to.equal(26n * PRICE);
    expect((await node.store.getChannel(ch!.channelId))!.chargedCumulative).to.equal(26n * PRICE);
  });

  it("two payers built on one store share its channel lock: their parallel requests are each charged once, no channel halted", async () => {
    const store = new MemoryPayerStore();
    const a = makePayer(store, ctx.payers[2] as LocalAccount, "shared-store");
    const b = makePayer(store, ctx.payers[2] as LocalAccount, "shared-store");
    expect((await wrapFetch(fetch, a)(`${node.url}/articles/s0`)).status).to.equal(200);
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => wrapFetch(fetch, i % 2 ? a : b)(`${node.url}/articles/s${i + 1}`)));
    expect(results.map((r) => r.status)).to.deep.equal(Array(10).fill(200));
    const [ch] = await store.channels();
    expect(ch!.halted).to.equal(undefined);
    expect(ch!.charged).to.equal(11n * PRICE);
    expect(ch!.spent).to.equal(11n * PRICE);
    expect((await node.store.getChannel(ch!.channelId))!.chargedCumulative).to.equal(11n * PRICE);
  });

  it("after losing its state the client recovers from the chain and a verified corrective 402", async () => {
    const account = ctx.payers[2] as LocalAccount;
    const first = makePayer(new MemoryPayerStore(), account, "payer-c");
    const pay1 = wrapFetch(fetch, first);
    for (let i = 0; i < 3; i++) expect((await pay1(`${node.url}/articles/${i}`)).status).to.equal(200);
    const amnesiac = makePayer(new MemoryPayerStore(), account, "payer-c"); // same keys, empty store
    const { f, calls } = counting();
    const res = await wrapFetch(f, amnesiac)(`${node.url}/articles/again`);
    expect(res.status).to.equal(200);
    expect(calls.map((c) => c.paid)).to.deep.equal([false, true, true]); // 402, corrective 402, paid
    const [ch] = await amnesiac.store.channels();
    expect(ch!.charged).to.equal(4n * PRICE); // not a unit more
    expect(ch!.spent).to.equal(4n * PRICE); // what the correction adopted counts against the budget too
  });

  it("a cooperative refund after the client lost its state: the corrective 402 resynchronises it once, then the refund goes through", async () => {
    const account = ctx.payers[3] as LocalAccount;
    const tokensBefore = await tokenBalance(account.address);
    const first = makePayer(new MemoryPayerStore(), account, "payer-refund-amnesia");
    const pay = wrapFetch(fetch, first);
    for (let i = 0; i < 2; i++) expect((await pay(`${node.url}/articles/${i}`)).status).to.equal(200);
    const [before] = await first.store.channels();
    const amnesiac = makePayer(new MemoryPayerStore(), account, "payer-refund-amnesia"); // same keys, empty store
    const refunded = await requestRefund(fetch, amnesiac, `${node.url}/articles/0`);
    expect(refunded).to.equal(before!.balance - 2n * PRICE);
    expect(tokensBefore - (await tokenBalance(account.address))).to.equal(2n * PRICE); // the two charges, not a unit more
  });

  it("cumulative_below_claimed (a server behind the chain, or a payer restored from an old backup): the payer takes the chain's claimed total, then signs above it", async () => {
    const account = ctx.payers[4] as LocalAccount;
    const store = new MemoryPayerStore();
    const p = makePayer(store, account, "payer-below-claimed");
    const pay = wrapFetch(fetch, p);
    for (let i = 0; i < 3; i++) expect((await pay(`${node.url}/articles/${i}`)).status).to.equal(200);
    const [ch] = await store.channels();
    await new ClaimEngine(node.payee, { onShutdown: false }).claim({ channels: [ch!.channelId] });
    // an old backup: one charge recorded
    await store.putChannel({ ...ch!, charged: PRICE, signedMax: PRICE, spent: PRICE });
    await store.deleteRoute(`GET ${node.url}/articles/3`);
    // A server that reports below_claimed without a channel state (as a stock server that lost its own).
    const accept = (await (await fetch(`${node.url}/articles/3`)).json()).accepts[0];
    const seen: bigint[] = [];
    const app = express();
    app.use((req, res) => {
      const h = req.headers["payment-signature"];
      const body = (error?: string) => ({ x402Version: 2, error, resource: { url: req.url }, accepts: [accept] });
      if (typeof h !== "string") return void res.status(402).set(HEADERS.paymentRequired, encodeBase64Json(body())).json(body());
      const max = BigInt(JSON.parse(Buffer.from(h, "base64").toString("utf8")).payload.voucher.maxClaimableAmount);
      seen.push(max);
      const b = body(max <= 3n * PRICE ? "invalid_batch_settlement_evm_cumulative_below_claimed" : "invalid_batch_settlement_evm_channel_busy");
      res.status(402).set(HEADERS.paymentRequired, encodeBase64Json(b)).json(b);
    });
    const stub: import("node:http").Server = await new Promise((r) => {
      const sv = app.listen(0, "127.0.0.1", () => r(sv));
    });
    try {
      await wrapFetch(fetch, p)(`http://127.0.0.1:${(stub.address() as AddressInfo).port}/articles/3`);
    } finally {
      stub.close();
    }
    expect(seen).to.deep.equal([2n * PRICE, 4n * PRICE]);
    const after = (await store.getChannel(ch!.channelId))!;
    expect(after.charged).to.equal(3n * PRICE);
    expect(after.spent).to.equal(3n * PRICE);
  });

  it("a request whose deposit went on chain but whose handler failed (no PAYMENT-RESPONSE): the next request finds the deposit on chain instead of depositing again", async () => {
    const p = makePayer(new MemoryPayerStore(), ctx.payers[1] as LocalAccount, "payer-broken");
    const { f, calls } = counting();
    const kinds: string[] = [];
    const seen: typeof fetch = async (input, init) => {
      const h = new Request(input as RequestInfo, init).headers.get(HEADERS.paymentSignature);
      if (h) kinds.push(JSON.parse(Buffer.from(h, "base64").toString("utf8")).payload.type);
      return f(input, init);
    };
    const pay = wrapFetch(seen, p);
    expect((await pay(`${node.url}/broken`)).status).to.equal(500);
    expect((await pay(`${node.url}/articles/1`)).status).to.equal(200);
    expect(kinds).to.deep.equal(["deposit", "voucher"]);
    const [ch] = await p.store.channels();
    const [onchain] = await ctx.publicClient.readContract({ address: node.payee.opts.escrow, abi: batchSettlementAbi, functionName: "channels", args: [ch!.channelId] });
    expect(onchain).to.equal(300n * PRICE); // one deposit
    expect(ch!.balance).to.equal(onchain);
    expect(ch!.charged).to.equal(PRICE);
    expect(calls.length).to.equal(4); // two 402 exchanges: a failed answer teaches no route
  });

  it("lost state, the payee one price ahead: its proof is the very voucher the payer re-signs; adopted without a false alarm, and the next request pays", async () => {
    const account = ctx.payers[5] as LocalAccount;
    const first = makePayer(new MemoryPayerStore(), account, "payer-one-ahead");
    expect((await wrapFetch(fetch, first)(`${node.url}/articles/1`)).status).to.equal(200);
    const amnesiac = makePayer(new MemoryPayerStore(), account, "payer-one-ahead");
    const pay = wrapFetch(fetch, amnesiac);
    expect((await pay(`${node.url}/articles/2`)).status).to.equal(402); // this request's voucher is the one already charged
    expect((await pay(`${node.url}/articles/2`)).status).to.equal(200);
    const [ch] = await amnesiac.store.channels();
    expect(ch!.charged).to.equal(2n * PRICE);
    expect((await node.store.getChannel(ch!.channelId))!.chargedCumulative).to.equal(2n * PRICE);
  });

  it("a payee that claims each new voucher on chain, then refuses it (cumulative_below_claimed): the payer takes the chain's total but signs nothing more in that request", async () => {
    const account = ctx.payers[5] as LocalAccount;
    const p = makePayer(new MemoryPayerStore(), account, "payer-claimed-refusal");
    expect((await wrapFetch(fetch, p)(`${node.url}/articles/1`)).status).to.equal(200);
    const accept = (await (await fetch(`${node.url}/articles/2`)).json()).accepts[0];
    const seen: bigint[] = [];
    const app = express();
    app.use(async (req, res) => {
      const h = req.headers["payment-signature"];
      const body = (error?: string) => ({ x402Version: 2, error, resource: { url: req.url }, accepts: [accept] });
      if (typeof h !== "string") return void res.status(402).set(HEADERS.paymentRequired, encodeBase64Json(body())).json(body());
      const payload = JSON.parse(Buffer.from(h, "base64").toString("utf8")).payload;
      const max = BigInt(payload.voucher.maxClaimableAmount);
      seen.push(max);
      // The payee (this node's key is the receiverAuthorizer) claims the voucher, then says it is below the claimed total.
      await node.payee.opts.sender.send({
        address: node.payee.opts.escrow,
        abi: batchSettlementAbi,
        functionName: "claim",
        args: [[{ voucher: { channel: payload.channelConfig, maxClaimableAmount: max }, signature: payload.voucher.signature, totalClaimed: max }]],
        simulationError: "invalid_batch_settlement_evm_claim_simulation_failed",
        transactionError: "invalid_batch_settlement_evm_claim_transaction_failed",
      } as never);
      const b = body("invalid_batch_settlement_evm_cumulative_below_claimed");
      res.status(402).set(HEADERS.paymentRequired, encodeBase64Json(b)).json(b);
    });
    const stub: import("node:http").Server = await new Promise((r) => {
      const sv = app.listen(0, "127.0.0.1", () => r(sv));
    });
    try {
      const res = await wrapFetch(fetch, p)(`http://127.0.0.1:${(stub.address() as AddressInfo).port}/articles/2`);
      expect(res.status).to.equal(402);
    } finally {
      stub.close();
    }
    expect(seen).to.deep.equal([2n * PRICE]); // one voucher, one price lost to a dishonest payee: not one per attempt
    const [ch] = await p.store.channels();
    expect(ch!.charged).to.equal(2n * PRICE);
  });

  it("policy: refuses a price above maxPerRequest and a deposit above maxDeposit, signing nothing", async () => {
    const payer = makePayer(new MemoryPayerStore(), ctx.payers[3] as LocalAccount, "payer-d", { maxPerRequest: 1_000_000n, maxDeposit: 1_000_000n });
    const { f, calls } = counting();
    const pay = wrapFetch(f, payer);
    try {
      await pay(`${node.url}/pricey`);
      expect.fail("should refuse");
    } catch (e) {
      expect(e).to.be.instanceOf(PolicyError);
      expect((e as PolicyError).violation).to.equal("max_per_request");
    }
    expect(calls.every((c) => !c.paid)).to.equal(true);
    const strict = makePayer(new MemoryPayerStore(), ctx.payers[3] as LocalAccount, "payer-d2", { maxPerRequest: 5_000_000n, maxDeposit: 1_000_000n });
    const err = await wrapFetch(f, strict)(`${node.url}/pricey`).catch((e) => e);
    expect(err).to.be.instanceOf(PolicyError);
    expect(err.violation).to.equal("max_deposit");
    expect(calls.every((c) => !c.paid)).to.equal(true);
    // A call's own cap (what a page showed): a 402 asking more is refused, signing nothing; the price itself passes.
    const capped = await pay(`${node.url}/articles/capped`, undefined, { maxAmount: PRICE - 1n }).catch((e) => e);
    expect(capped).to.be.instanceOf(PolicyError);
    expect(capped.violation).to.equal("max_per_request");
    expect(capped.message).to.match(/exceeds this request's maximum 9999/);
    expect(calls.every((c) => !c.paid)).to.equal(true);
    expect(await payer.store.channels()).to.deep.equal([]);
    expect((await pay(`${node.url}/articles/capped`, undefined, { maxAmount: PRICE })).status).to.equal(200);
    // A dearer sibling's remembered price (5c for /shop/) above the cap is not paid up-front: the cheap item
    // is asked for unpaid and paid at its own price.
    expect((await pay(`${node.url}/shop/dear`)).status).to.equal(200);
    const cheap = await pay(`${node.url}/shop/cheap`, undefined, { maxAmount: PRICE });
    expect([cheap.status, await cheap.text()]).to.deep.equal([200, "cheap"]);
  });

  it("a smart-wallet payer (ERC-1271, payerAuthorizer = 0) deposits and pays; its owner signs", async () => {
    const owner = privateKeyToAccount(keccak256(toHex("smart-wallet-owner")));
    const deployer = clientsFor(ctx.chain.url, ctx.payers[5] as LocalAccount);
    const artifact = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "artifacts", "contracts", "test", "TestERC1271Wallet.sol", "TestERC1271Wallet.json"), "utf8"));
    const hash = await deployer.walletClient.deployContract({ abi: artifact.abi, bytecode: artifact.bytecode, args: [owner.address] });
    const wallet = getAddress((await deployer.publicClient.waitForTransactionReceipt({ hash })).contractAddress!);
    const mint = await deployer.walletClient.writeContract({
      address: ctx.deployment.token!,
      abi: [{ type: "function", name: "mint", stateMutability: "nonpayable", inputs: [{ name: "to", type: "address" }, { name: "amount", type: "uint256" }], outputs: [] }] as const,
      functionName: "mint",
      args: [wallet, 1_000_000n],
    });
    await deployer.publicClient.waitForTransactionReceipt({ hash: mint });
    const payer = createPayer({ account: owner, payerAddress: wallet, store: new MemoryPayerStore(), chainId: 31337, policy: { maxPerRequest: 50_000n, depositMultiplier: 10 } });
    expect(payer.payerAuthorizer).to.equal("0x0000000000000000000000000000000000000000");
    const pay = wrapFetch(fetch, payer);
    for (let i = 0; i < 3; i++) expect((await pay(`${node.url}/articles/w${i}`)).status).to.equal(200);
    const [ch] = await payer.store.channels();
    expect(ch!.config.payer).to.equal(wallet);
    expect((await node.store.getChannel(ch!.channelId))!.chargedCumulative).to.equal(3n * PRICE);
    expect(await tokenBalance(wallet)).to.equal(1_000_000n - 10n * PRICE);
  });

  it("policy: the total budget stops payments once spent, before signing", async () => {
    const payer = makePayer(new MemoryPayerStore(), ctx.payers[3] as LocalAccount, "payer-budget", { budget: 2n * PRICE });
    const { f, calls } = counting();
    const pay = wrapFetch(f, payer);
    expect((await pay(`${node.url}/articles/b1`)).status).to.equal(200);
    expect((await pay(`${node.url}/articles/b2`)).status).to.equal(200);
    const paidBefore = calls.filter((c) => c.paid).length;
    const err = await pay(`${node.url}/articles/b3`).catch((e) => e);
    expect(err).to.be.instanceOf(PolicyError);
    expect(err.violation).to.equal("budget");
    expect(calls.filter((c) => c.paid).length).to.equal(paidBefore);
    // The deposit moved no more into escrow than the budget could spend (not 50 prices).
    const [ch] = await payer.store.channels();
    expect(ch!.balance).to.equal(2n * PRICE);
  });

  it("policy: the budget holds across payments prepared in parallel on two channels (a payment in flight counts)", async () => {
    const store = new MemoryPayerStore();
    const a = makePayer(store, ctx.payers[4] as LocalAccount, "budget-parallel-a", { budget: 2n * PRICE });
    const b = makePayer(store, ctx.payers[4] as LocalAccount, "budget-parallel-b", { budget: 2n * PRICE });
    expect((await wrapFetch(fetch, a)(`${node.url}/articles/q0`)).status).to.equal(200);
    const outcomes = await Promise.all(
      [wrapFetch(fetch, a)(`${node.url}/articles/q1`), wrapFetch(fetch, b)(`${node.url}/articles/q2`)].map((p) => p.then((r) => r.status, (e: PolicyError) => e.violation)),
    );
    expect([...outcomes].sort()).to.deep.equal([200, "budget"].sort());
    const channels = await store.channels();
    expect(channels.reduce((s, c) => s + c.spent, 0n)).to.equal(2n * PRICE);
    expect(channels.reduce((s, c) => s + c.signedMax, 0n) <= 2n * PRICE).to.equal(true);
  });

  it("a smart-wallet payer (payerAuthorizer = 0) takes a voucher proof in its wallet's own signature format: the wallet's ERC-1271 answer decides, as on chain", async () => {
    // A wallet whose isValidSignature accepts its own format (here: any signature) at a fresh address.
    const wallet = "0x00000000000000000000000000000000000a1271" as const;
    const magic = `0x7f${"1626ba7e" + "00".repeat(28)}60005260206000f3` as const;
    await ctx.testClient.setCode({ address: wallet, bytecode: magic });
    const base = (await fetchRequirements(`${node.url}/articles/w`)).accept as Record<string, any>;
    const owner = privateKeyToAccount(keccak256(toHex("smart-owner")));
    const { publicClient } = clientsFor(ctx.chain.url, owner);
    const p = createPayer({ account: owner, payerAddress: wallet, store: new MemoryPayerStore(), chainId: 31337, publicClient: publicClient as never });
    expect(p.payerAuthorizer).to.equal(zeroAddress);
    const channelId = p.channelIdFor({ ...base, amount: BigInt(base.amount) } as never);
    const walletFormat = `0x${"ab".repeat(97)}` as const; // not an ECDSA signature of the owner
    // A payee's corrective 402 proves the charge with a voucher in the wallet's format.
    const corrective = { ...base, extra: { ...base.extra, channelState: { channelId, balance: "1000000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "30000" }, voucherState: { signedMaxClaimable: "30000", signature: walletFormat } } };
    try {
      await p.correct({ ...base, amount: BigInt(base.amount) } as never, corrective.extra);
      const [ch] = await p.store.channels();
      expect(ch?.charged).to.equal(30_000n); // adopted: the wallet vouches for that signature
      expect(ch?.halted).to.equal(undefined);
      // The same proof for a wallet that refuses it is a ServerMisbehaviorError.
      await ctx.testClient.setCode({ address: wallet, bytecode: `0x7f${"00".repeat(32)}60005260206000f3` });
      const other = createPayer({ account: owner, payerAddress: wallet, store: new MemoryPayerStore(), chainId: 31337, publicClient: publicClient as never });
      const err = await other.correct({ ...base, amount: BigInt(base.amount) } as never, corrective.extra).catch((e) => e);
      expect(err).to.be.instanceOf(ServerMisbehaviorError);
    } finally {
      await ctx.testClient.setCode({ address: wallet, bytecode: "0x" });
    }
  });

  it("the timed withdrawal returns the unclaimed rest when the payee does not cooperate", async () => {
    const account = ctx.payers[4] as LocalAccount;
    const payer = makePayer(new MemoryPayerStore(), account, "payer-e");
    const pay = wrapFetch(fetch, payer);
    for (let i = 0; i < 2; i++) expect((await pay(`${node.url}/articles/${i}`)).status).to.equal(200);
    const [ch] = await payer.store.channels();
    const before = await tokenBalance(account.address);
    await payer.initiateWithdraw(ch!.config, ch!.balance); // nothing claimed yet: the whole balance
    await ctx.testClient.increaseTime({ seconds: 901 });
    await ctx.testClient.mine({ blocks: 1 });
    await payer.finalizeWithdraw(ch!.config);
    // the payee never claimed: the payer gets everything back (the payee bears unclaimed vouchers)
    expect((await tokenBalance(account.address)) - before).to.equal(ch!.balance);
  });
});

describe("payer: hostile 402s are refused with a typed error and nothing is signed", function () {
  this.timeout(60_000);
  let url: string;
  let server: import("node:http").Server;
  let respond: (req: express.Request, res: express.Response) => void = () => undefined;
  const signedHeaders: string[] = [];
  const token = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
  const payTo = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
  const base = { scheme: "batch-settlement", network: "eip155:31337", amount: "10000", asset: token, payTo, maxTimeoutSeconds: 60, extra: { receiverAuthorizer: payTo, withdrawDelay: 900, name: "USDC", version: "2" } };

  before(async () => {
    const app = express();
    app.use((req, res) => {
      const h = req.headers["payment-signature"];
      if (typeof h === "string") signedHeaders.push(h);
      respond(req, res);
    });
    server = await new Promise((r) => {
      const s = app.listen(0, "127.0.0.1", () => r(s));
    });
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/x`;
  });
  after(() => server?.close());

  function payer(policy = {}): Payer {
    return createPayer({
      account: privateKeyToAccount(keccak256(toHex("hostile-owner"))),
      sessionKey: privateKeyToAccount(keccak256(toHex("hostile-session"))),
      store: new MemoryPayerStore(),
      chainId: 31337,
      policy: { maxPerRequest: 100_000n, allowedAssets: [token], allowedPayTo: [payTo], ...policy },
    });
  }
  const send402 = (accepts: unknown[], error?: string) => (_req: express.Request, res: express.Response) => {
    const body = { x402Version: 2, error, resource: { url }, accepts };
    res.status(402).set(HEADERS.paymentRequired, encodeBase64Json(body)).json(body);
  };

  const cases: Array<[string, unknown[], string]> = [
    ["asset outside policy", [{ ...base, asset: "0x0000000000000000000000000000000000000bad" }], "asset_not_allowed"],
    ["payTo outside policy", [{ ...base, payTo: "0x0000000000000000000000000000000000000bad" }], "pay_to_not_allowed"],
    ["price above max", [{ ...base, amount: "100001" }], "max_per_request"],
    ["wrong network", [{ ...base, network: "eip155:1" }], "no_matching_requirement"],
    ["another scheme", [{ ...base, scheme: "exact" }], "no_matching_requirement"],
  ];
  for (const [name, accepts, violation] of cases) {
    it(`${name} -> PolicyError(${violation})`, async () => {
      respond = send402(accepts);
      const before = signedHeaders.length;
      const err = await wrapFetch(fetch, payer())(url).catch((e) => e);
      expect(err).to.be.instanceOf(PolicyError);
      expect(err.violation).to.equal(violation);
      expect(signedHeaders.length).to.equal(before);
    });
  }

  it("without a policy the payer still caps: a price above $1 (6 decimals) is refused unsigned, a deposit is at most $20", async () => {
    const bare = createPayer({ account: privateKeyToAccount(keccak256(toHex("hostile-owner-2"))), sessionKey: privateKeyToAccount(keccak256(toHex("hostile-session-2"))), store: new MemoryPayerStore(), chainId: 31337 });
    respond = send402([{ ...base, amount: "1000001" }]);
    const before = signedHeaders.length;
    const err = await wrapFetch(fetch, bare)(url).catch((e) => e);
    expect(err).to.be.instanceOf(PolicyError);
    expect(err.violation).to.equal("max_per_request");
    expect(signedHeaders.length).to.equal(before);
    const deposits: string[] = [];
    respond = (req, res) => {
      const h = req.headers["payment-signature"];
      if (typeof h === "string") deposits.push(JSON.parse(Buffer.from(h, "base64").toString("utf8")).payload.deposit?.amount);
      send402([{ ...base, amount: "1000000" }])(req, res);
    };
    await wrapFetch(fetch, bare)(url);
    expect(deposits[0]).to.equal("20000000"); // 50 x the price would be 50,000,000
  });

  it("a paid request the server never answers times out and frees its channel: the next payment on it is signed", async () => {
    const p = payer();
    respond = (req, res) => {
      if (typeof req.headers["payment-signature"] !== "string") send402([base])(req, res);
      // a paid request: never answered
    };
    const before = signedHeaders.length;
    const err = await wrapFetch(fetch, p, { timeoutMs: 300 })(url).catch((e) => e);
    expect(err).to.be.instanceOf(TollwayError);
    expect(err.shortMessage).to.match(/no answer from .* within 300 ms/);
    expect(signedHeaders.length).to.equal(before + 1);
    // the channel is free: a second request signs again (at the same ceiling) instead of waiting forever
    const second = await wrapFetch(fetch, p, { timeoutMs: 300 })(url).catch((e) => e);
    expect(second).to.be.instanceOf(TollwayError);
    expect(signedHeaders.length).to.equal(before + 2);
  });

  it("a server that overcharges -> ServerMisbehaviorError; the channel is halted and nothing more is signed", async () => {
    const p = payer();
    let paidOnce = false;
    respond = (req, res) => {
      if (!req.headers["payment-signature"]) return send402([base])(req, res);
      paidOnce = true;
      const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
      const body = { success: true, transaction: "0x" + "11".repeat(32), network: "eip155:31337", amount: "500000", extra: { chargedAmount: "20000", channelState: { channelId, balance: "500000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "20000" } } };
      res.status(200).set(HEADERS.paymentResponse, encodeBase64Json(body)).send("ok");
    };
    const err = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(paidOnce).to.equal(true);
    expect(err).to.be.instanceOf(ServerMisbehaviorError);
    expect(err.shortMessage).to.match(/charged 20000 exceeds the price 10000/);
    const [ch] = await p.store.channels();
    expect(ch!.halted).to.match(/exceeds the price/);
    const before = signedHeaders.length;
    const again = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(again).to.be.instanceOf(PolicyError);
    expect(again.violation).to.equal("channel_halted");
    expect(signedHeaders.length).to.equal(before);
    // The same payee under new terms (another withdrawDelay: another channel) gets no new deposit either.
    respond = send402([{ ...base, extra: { ...base.extra, withdrawDelay: (base.extra.withdrawDelay as number) + 60 } }]);
    const renamed = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(renamed).to.be.instanceOf(PolicyError);
    expect(renamed.violation).to.equal("payee_halted");
    expect(signedHeaders.length).to.equal(before);
  });

  const paidWith = (p: Payer, mutate: (body: any) => void, header?: string) => (req: express.Request, res: express.Response) => {
    if (!req.headers["payment-signature"]) return send402([base])(req, res);
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    const body = { success: true, transaction: "0x" + "11".repeat(32), network: "eip155:31337", amount: "500000", extra: { chargedAmount: "10000", channelState: { channelId, balance: "500000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "10000" } } };
    mutate(body);
    res.status(200).set(HEADERS.paymentResponse, header ?? encodeBase64Json(body)).send("ok");
  };

  it("a paid response reporting a balance below what the payer deposited is not believed (no halt, no extra deposit): the payer keeps what it expects", async () => {
    const p = payer({ maxDeposit: 500_000n, depositMultiplier: 50 });
    respond = paidWith(p, (b) => void (b.extra.channelState.balance = "10000"));
    expect((await wrapFetch(fetch, p)(url)).status).to.equal(200);
    const [ch] = await p.store.channels();
    expect(ch!.halted).to.equal(undefined);
    expect(ch!.balance).to.equal(500_000n);
  });

  it("a paid response with a negative or non-decimal charge halts the channel", async () => {
    const mutations: Array<[string, (b: any) => void, RegExp]> = [
      ["negative charge", (b) => { b.extra.chargedAmount = "-10000"; b.extra.channelState.chargedCumulativeAmount = "-10000"; }, /valid chargedAmount/],
      ["hex charge", (b) => void (b.extra.chargedAmount = "0x10"), /valid chargedAmount/],
    ];
    for (const [name, mutate, why] of mutations) {
      const p = payer({ maxDeposit: 500_000n, depositMultiplier: 50 });
      respond = paidWith(p, mutate);
      const err = await wrapFetch(fetch, p)(url).catch((e) => e);
      expect(err, name).to.be.instanceOf(ServerMisbehaviorError);
      expect(err.shortMessage, name).to.match(why);
      expect((await p.store.channels())[0]!.halted, name).to.match(why);
    }
  });

  it("a remembered route's corrective 402 is read from this channel's entry, not from whatever the server lists first", async () => {
    const p = payer({ maxDeposit: 500_000n, depositMultiplier: 50 });
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    let paid = 0;
    respond = (req, res) => {
      if (!req.headers["payment-signature"]) return send402([base])(req, res);
      paid++;
      if (paid === 2) {
        // The up-front payment of the remembered route meets a corrective 402 whose first entry is another network.
        const state = { channelId, balance: "500000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "10000" };
        return send402([{ ...base, network: "eip155:1" }, { ...base, extra: { ...base.extra, channelState: state } }], "invalid_batch_settlement_evm_cumulative_amount_mismatch")(req, res);
      }
      const cumulative = String(10_000 * (paid === 1 ? 1 : 2));
      const body = { success: true, transaction: paid === 1 ? "0x" + "11".repeat(32) : "", network: "eip155:31337", amount: paid === 1 ? "500000" : "", extra: { chargedAmount: "10000", channelState: { channelId, balance: "500000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: cumulative } } };
      res.status(200).set(HEADERS.paymentResponse, encodeBase64Json(body)).send("ok");
    };
    const pay = wrapFetch(fetch, p);
    expect((await pay(url)).status).to.equal(200);
    const second = await pay(url);
    expect(second.status).to.equal(200);
    expect(paid).to.equal(3);
    expect((await p.store.getChannel(channelId))!.charged).to.equal(20_000n);
  });

  it("a cooperative refund above the price cap is still asked for; an answer claiming a refund without a transaction is refused, the stored balance unchanged", async () => {
    const p = payer({ maxPerRequest: 1n });
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    await p.store.putChannel({ channelId, config: p.configFor({ ...base, amount: 10_000n } as never), network: "eip155:31337", charged: 10_000n, signedMax: 10_000n, balance: 500_000n, spent: 10_000n, updatedAt: Date.now() });
    let asked = false;
    respond = (req, res) => {
      if (!req.headers["payment-signature"]) return send402([base])(req, res);
      asked = true;
      const body = { success: true, transaction: "", network: "eip155:31337", payer: base.payTo, amount: "490000", extra: { channelState: { channelId, balance: "10000", totalClaimed: "10000", withdrawRequestedAt: 0, refundNonce: "1", chargedCumulativeAmount: "10000" } } };
      res.status(200).set(HEADERS.paymentResponse, encodeBase64Json(body)).json({});
    };
    const err = await requestRefund(fetch, p, url).catch((e) => e);
    expect(asked).to.equal(true);
    expect(err).to.be.instanceOf(ServerMisbehaviorError);
    expect((await p.store.getChannel(channelId))!.balance).to.equal(500_000n);
  });

  it("a refund the payee never answers fails at its deadline instead of hanging", async () => {
    const p = payer();
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    await p.store.putChannel({ channelId, config: p.configFor({ ...base, amount: 10_000n } as never), network: "eip155:31337", charged: 10_000n, signedMax: 10_000n, balance: 500_000n, spent: 10_000n, updatedAt: Date.now() });
    const hung: import("express").Response[] = [];
    respond = (req, res) => {
      if (!req.headers["payment-signature"]) return send402([base])(req, res);
      hung.push(res); // never answered
    };
    const started = Date.now();
    const err = await requestRefund(fetch, p, url, undefined, 400).catch((e) => e);
    expect(err).to.be.instanceOf(Error);
    expect((err as Error).name).to.match(/TimeoutError|AbortError/);
    expect(Date.now() - started).to.be.below(5_000);
    expect(hung).to.have.length(1);
    for (const res of hung) res.destroy();
    expect((await p.store.getChannel(channelId))!.balance).to.equal(500_000n);
  });

  it("a refund answered success: false is an error (nothing refunded), not a refund of the server's amount", async () => {
    const p = payer();
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    await p.store.putChannel({ channelId, config: p.configFor({ ...base, amount: 10_000n } as never), network: "eip155:31337", charged: 10_000n, signedMax: 10_000n, balance: 500_000n, spent: 10_000n, updatedAt: Date.now() });
    respond = (req, res) => {
      if (!req.headers["payment-signature"]) return send402([base])(req, res);
      const body = { success: false, errorReason: "invalid_batch_settlement_evm_refund_simulation_failed", transaction: "", network: "eip155:31337", amount: "490000" };
      res.status(200).set(HEADERS.paymentResponse, encodeBase64Json(body)).json({});
    };
    const err = await requestRefund(fetch, p, url).catch((e) => e);
    expect(err).to.be.instanceOf(TollwayError);
    expect((err as Error).message).to.match(/failed \(invalid_batch_settlement_evm_refund_simulation_failed\): nothing was refunded/);
    expect((await p.store.getChannel(channelId))!.balance).to.equal(500_000n);
  });

  it("a corrective 402 whose voucher proof amount is not a decimal -> ServerMisbehaviorError (typed), nothing signed", async () => {
    const p = payer();
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    respond = send402(
      [{ ...base, extra: { ...base.extra, channelState: { channelId, balance: "1000000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "900000" }, voucherState: { signedMaxClaimable: "9e5", signature: `0x${"11".repeat(65)}` } } }],
      "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    );
    const before = signedHeaders.length;
    const err = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(err).to.be.instanceOf(ServerMisbehaviorError);
    expect((err as Error).message).to.match(/malformed voucher proof/);
    expect(signedHeaders.length).to.equal(before);
  });

  it("a stored balance that is too high (the channel was drained elsewhere): the payee's cumulative_exceeds_balance makes the payer deposit, not resend the same voucher", async () => {
    const p = payer({ maxDeposit: 500_000n, depositMultiplier: 50 });
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    await p.store.putChannel({ channelId, config: p.configFor({ ...base, amount: 10_000n } as never), network: "eip155:31337", charged: 10_000n, signedMax: 10_000n, balance: 500_000n, spent: 10_000n, updatedAt: Date.now() });
    const kinds: string[] = [];
    respond = (req, res) => {
      const h = req.headers["payment-signature"];
      if (typeof h !== "string") return send402([base])(req, res);
      const kind = JSON.parse(Buffer.from(h, "base64").toString("utf8")).payload.type as string;
      kinds.push(kind);
      if (kind !== "deposit") return send402([base], "invalid_batch_settlement_evm_cumulative_exceeds_balance")(req, res);
      const body = { success: true, transaction: "0x" + "22".repeat(32), network: "eip155:31337", amount: "500000", extra: { chargedAmount: "10000", channelState: { channelId, balance: "500000", totalClaimed: "10000", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "20000" } } };
      res.status(200).set(HEADERS.paymentResponse, encodeBase64Json(body)).send("ok");
    };
    const res = await wrapFetch(fetch, p)(url);
    expect(res.status).to.equal(200);
    expect(kinds).to.deep.equal(["voucher", "deposit"]);
    expect((await p.store.getChannel(channelId))!.charged).to.equal(20_000n);
  });

  it("an undecodable PAYMENT-RESPONSE fails the request without leaving the channel locked", async () => {
    const p = payer({ maxDeposit: 500_000n, depositMultiplier: 50 });
    respond = paidWith(p, () => undefined, "!!!not base64 json");
    const err = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(err).to.be.instanceOf(ServerMisbehaviorError);
    expect(err.shortMessage).to.match(/undecodable PAYMENT-RESPONSE/);
    // The next request on the same channel goes through (it would wait forever on a leaked lock).
    respond = paidWith(p, (b) => {
      b.extra.channelState.chargedCumulativeAmount = "10000";
    });
    const next = await Promise.race([wrapFetch(fetch, p)(url).then((r) => r.status, (e: Error) => e.name), new Promise((r) => setTimeout(() => r("hung"), 5_000))]);
    expect(next).to.not.equal("hung");
  });

  it("a corrective 402 without a voucher proof above what the payer ever signed (its totalClaimed field is only the server's word) -> ServerMisbehaviorError, nothing signed", async () => {
    const p = payer();
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    respond = send402(
      [{ ...base, extra: { ...base.extra, channelState: { channelId, balance: "1000000000000", totalClaimed: "900000", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "900000" } } }],
      "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    );
    const before = signedHeaders.length;
    const err = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(err).to.be.instanceOf(ServerMisbehaviorError);
    expect(err.shortMessage).to.match(/without a valid voucher of ours or the chain's claimed total/);
    expect(signedHeaders.length).to.equal(before);
    expect((await p.store.channels())[0]?.charged ?? 0n).to.equal(0n);
  });

  it("a corrective 402 without a proof at or below what the payer already signed (a server back at the on-chain baseline) is adopted", async () => {
    const p = payer();
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    await p.store.putChannel({ channelId, config: p.configFor({ ...base, amount: 10_000n } as never), network: "eip155:31337", charged: 30_000n, signedMax: 30_000n, balance: 1_000_000n, spent: 30_000n, updatedAt: Date.now() });
    await p.correct({ ...base, amount: 10_000n } as never, { channelState: { channelId, balance: "1000000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "0" } });
    expect((await p.store.getChannel(channelId))!.charged).to.equal(0n);
  });

  /** A stored channel with 30,000 charged and signed for; the server answers every paid attempt with `answer`. */
  async function engaged(answer: (max: bigint, signature: string, channelId: string) => Record<string, unknown>) {
    const p = payer();
    const r = { ...base, amount: 10_000n } as never;
    const channelId = p.channelIdFor(r);
    await p.store.putChannel({ channelId, config: p.configFor(r), network: "eip155:31337", charged: 30_000n, signedMax: 30_000n, balance: 1_000_000n, spent: 30_000n, updatedAt: Date.now() });
    const maxes: bigint[] = [];
    respond = (req, res) => {
      const h = req.headers["payment-signature"];
      if (typeof h !== "string") return send402([base])(req, res);
      const v = JSON.parse(Buffer.from(h, "base64").toString("utf8")).payload.voucher;
      maxes.push(BigInt(v.maxClaimableAmount));
      send402([{ ...base, extra: { ...base.extra, ...answer(BigInt(v.maxClaimableAmount), v.signature, channelId) } }], "invalid_batch_settlement_evm_cumulative_amount_mismatch")(req, res);
    };
    return { p, channelId, maxes };
  }

  it("a server that answers each voucher with a corrective 402 claiming that very voucher as charged gets one voucher, not one per attempt", async () => {
    const { p, channelId, maxes } = await engaged((max, signature, channelId) => ({
      channelState: { channelId, balance: "1000000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: max.toString() },
      voucherState: { signedMaxClaimable: max.toString(), signature },
    }));
    const res = await wrapFetch(fetch, p)(url);
    expect(res.status).to.equal(402);
    expect(maxes).to.deep.equal([40_000n]);
    // Recorded (the server holds that voucher), but nothing more was signed in this request.
    const ch = (await p.store.getChannel(channelId as Hex))!;
    expect([ch.charged, ch.signedMax]).to.deep.equal([40_000n, 40_000n]);
  });

  it("...nor by claiming, without a proof, an amount between the ceiling before the request and the voucher it refused", async () => {
    const { p, channelId, maxes } = await engaged((max, _signature, channelId) => ({
      channelState: { channelId, balance: "1000000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: (max - 1n).toString() },
    }));
    const res = await wrapFetch(fetch, p)(url);
    expect(res.status).to.equal(402);
    expect(maxes).to.deep.equal([40_000n]);
    expect((await p.store.getChannel(channelId as Hex))!.charged).to.equal(39_999n);
  });

  /** A paid-route body arriving slowly; the caller aborts after the headers, after garbage collections. */
  async function abortBodyAfterGc(): Promise<string> {
    respond = (_req, res) => {
      res.write("first;");
      setTimeout(() => res.end("second"), 1_500);
    };
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as () => void;
    const caller = new AbortController();
    const res = await wrapFetch(fetch, payer())(url, { signal: caller.signal });
    expect(res.status).to.equal(200);
    for (let i = 0; i < 3; i++) gc(); // some runtimes link a Request's signal to the caller's only weakly
    await new Promise((r) => setTimeout(r, 20));
    caller.abort(new Error("reader closed the tab"));
    return res.text().then(() => "read to the end", (e: Error) => e.name);
  }

  it("the caller's signal still stops a body that is arriving after the headers, also after a GC (the deadline covers only the headers)", async () => {
    expect(await abortBodyAfterGc()).to.be.oneOf(["AbortError", "Error"]);
  });

  it("the request's own deadline: wrapFetch does not need AbortSignal.any (missing in Firefox < 124, Safari < 17.4)", async () => {
    const any = (AbortSignal as { any?: unknown }).any;
    delete (AbortSignal as { any?: unknown }).any;
    try {
      respond = send402([{ ...base, amount: "100001" }]);
      const err = await wrapFetch(fetch, payer())(url).catch((e) => e);
      expect(err).to.be.instanceOf(PolicyError); // got the 402 and read it: the request went out
      const aborted = new AbortController();
      aborted.abort(new Error("caller gave up"));
      expect(await wrapFetch(fetch, payer())(url, { signal: aborted.signal }).catch((e) => (e as Error).message)).to.equal("caller gave up");
      expect(await abortBodyAfterGc()).to.be.oneOf(["AbortError", "Error"]);
    } finally {
      (AbortSignal as { any?: unknown }).any = any;
    }
  });

  it("a corrective 402 that only the chain could confirm, with the RPC down: a chain error, not the server's fault", async () => {
    const p = createPayer({
      account: privateKeyToAccount(keccak256(toHex("hostile-owner-rpc"))),
      sessionKey: privateKeyToAccount(keccak256(toHex("hostile-session-rpc"))),
      store: new MemoryPayerStore(),
      chainId: 31337,
      publicClient: createPublicClient({ transport: http("http://127.0.0.1:9", { retryCount: 0 }) }) as never,
      policy: { maxPerRequest: 100_000n, allowedAssets: [token], allowedPayTo: [payTo] },
    });
    const r = { ...base, amount: 10_000n } as never;
    const channelId = p.channelIdFor(r);
    await p.store.putChannel({ channelId, config: p.configFor(r), network: "eip155:31337", charged: 30_000n, signedMax: 30_000n, balance: 1_000_000n, spent: 30_000n, updatedAt: Date.now() });
    respond = send402(
      [{ ...base, extra: { ...base.extra, channelState: { channelId, balance: "1000000", totalClaimed: "900000", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "900000" } } }],
      "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    );
    const err = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(err).to.be.instanceOf(ChainError);
    expect(err.code).to.equal("invalid_batch_settlement_evm_rpc_read_failed");
    expect(err).to.not.be.instanceOf(ServerMisbehaviorError);
  });

  it("policy: a payee whose withdraw delay is above maxWithdrawDelay gets nothing signed; a deposit's authorization lives at most 10 minutes of the chain's clock, whatever the payee's maxTimeoutSeconds", async () => {
    respond = send402([{ ...base, extra: { ...base.extra, withdrawDelay: 7_200 } }]);
    const before = signedHeaders.length;
    const err = await wrapFetch(fetch, payer({ maxWithdrawDelay: 3_600 }))(url).catch((e) => e);
    expect(err).to.be.instanceOf(PolicyError);
    expect(err.violation).to.equal("withdraw_delay");
    expect(signedHeaders.length).to.equal(before);
    // A payee asking for an hour: the deposit authorization it receives expires 10 minutes after the
    // chain's clock (read from the payer's chain client; here the chain runs 1,000 s ahead of this machine).
    const chainTime = Math.floor(Date.now() / 1000) + 1_000;
    const chainView = { getBlock: async () => ({ timestamp: BigInt(chainTime) }), readContract: async () => [0n, 0n] }; // a channel not funded yet
    respond = send402([{ ...base, maxTimeoutSeconds: 3_600 }]);
    const validBefore = async (p: Payer) => {
      const before = signedHeaders.length;
      const err = await wrapFetch(fetch, p)(url).then(() => undefined, (e: Error) => e);
      expect(signedHeaders.length, String(err)).to.be.greaterThan(before);
      return Number((decodeBase64Json(signedHeaders[signedHeaders.length - 1]!, "PAYMENT-SIGNATURE") as any).payload.deposit.authorization.erc3009Authorization.validBefore);
    };
    expect((await validBefore(createPayer({ ...payer().params, publicClient: chainView as never }))) - chainTime).to.equal(600);
    // Without a chain view the payer cannot see the chain's clock: an hour, for skew.
    expect((await validBefore(payer())) - Math.floor(Date.now() / 1000)).to.be.within(3_590, 3_600);
  });

  it("a corrective 402 with a forged voucher proof -> ServerMisbehaviorError, no voucher for the claimed state", async () => {
    const p = payer();
    const channelId = p.channelIdFor({ ...base, amount: 10_000n } as never);
    const forger = privateKeyToAccount(keccak256(toHex("forger")));
    const forged = await forger.signTypedData({ domain: p.domain, types: { Voucher: [{ name: "channelId", type: "bytes32" }, { name: "maxClaimableAmount", type: "uint128" }] }, primaryType: "Voucher", message: { channelId, maxClaimableAmount: 900_000n } });
    respond = send402(
      [{ ...base, extra: { ...base.extra, channelState: { channelId, balance: "1000000", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: "900000" }, voucherState: { signedMaxClaimable: "900000", signature: forged } } }],
      "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    );
    const before = signedHeaders.length;
    const err = await wrapFetch(fetch, p)(url).catch((e) => e);
    expect(err).to.be.instanceOf(ServerMisbehaviorError);
    expect(signedHeaders.length).to.equal(before);
    expect((await p.store.channels())[0]?.charged ?? 0n).to.equal(0n);
  });
});
