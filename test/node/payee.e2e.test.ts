import { expect } from "chai";
import express from "express";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { paymentMiddleware } from "../../node/payee/middleware";
import type { LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { HttpRequestError, keccak256, toHex, pad } from "viem";
import { ChainError } from "../../node/protocol/errors";
import { batchSettlementAbi } from "../../node/chain/abi";
import { readChannel, readReceiver } from "../../node/chain/escrow";
import { ClaimEngine, exposure, lost } from "../../node/payee/claims";
import { TxSender } from "../../node/chain/sender";
import { ChainWatcher } from "../../node/payee/watcher";
import { CANONICAL_ADDRESSES } from "../../node/protocol/typedData";
import { clientsFor, hardhatTestAccount } from "../helpers/chainNode";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startChain, startPayee } from "../helpers/payeeHarness";
import { PayerSigns, WirePayer, depositOnChain, fetchRequirements, payWith, type Accept } from "../helpers/wirePayer";

const PRICE = 10_000n; // $0.01

/** Calls `observe` when the first byte of this response is about to reach its socket. */
function onFirstSocketWrite(res: import("express").Response, observe: () => void) {
  const sock = res.socket!;
  const sockWrite = sock.write;
  let first = true;
  sock.write = function (this: typeof sock, ...args: unknown[]) {
    if (first) {
      first = false;
      observe();
    }
    return (sockWrite as (...a: unknown[]) => boolean).apply(this, args);
  } as typeof sock.write;
  res.once("finish", () => void (sock.write = sockWrite));
}
const routes = { "GET /cached/:id": "$0.01", "GET /articles/:id": { price: "$0.01" }, "GET /fail": "$0.01", "GET /metered": "$0.05", "GET /relocals": "$0.01", "GET /late-charge": "$0.05" } as const;
/** What charge() did when /late-charge called it after its answer had started. */
const lateCharge: string[] = [];
function install(app: import("express").Express) {
  app.get("/articles/:id", (req, res) => void res.send(`article ${req.params.id}`));
  app.get("/cached/:id", (req, res) => void res.set("Cache-Control", "private, max-age=60").send(`cached ${req.params.id}`));
  app.get("/fail", (_req, res) => void res.status(500).send("boom"));
  // a handler that replaces res.locals (some view engines and middleware do)
  app.get("/relocals", (_req, res) => {
    res.locals = Object.create(null);
    res.send("relocals");
  });
  // a metered handler that (wrongly) sets its charge after streaming started: ignored with a process warning
  app.get("/late-charge", (_req, res) => {
    res.write("first chunk;");
    const warned = (w: Error & { code?: string }) => void lateCharge.push(`${w.code}: ${w.message}`);
    process.once("warning", warned);
    res.locals.tollway.charge(1n);
    // warnings are emitted on the next tick
    setImmediate(() => {
      process.off("warning", warned);
      res.end("done");
    });
  });
  app.get("/metered", (_req, res) => {
    res.locals.tollway.charge(12_345n);
    res.send("metered");
  });
}

describe("payee node end to end (hardhat node + LevelDB + HTTP on loopback)", function () {
  this.timeout(240_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: Awaited<ReturnType<typeof startPayee>>;
  let accept: Accept;

  before(async () => {
    ctx = await startChain();
    node = await startPayee(ctx, routes as never, install);
    accept = (await fetchRequirements(`${node.url}/articles/1`)).accept;
  });
  after(async () => {
    await node?.stop();
    await ctx?.chain.stop();
  });

  it("answers 402 with PAYMENT-REQUIRED (header and body) and exposes the headers to browsers", async () => {
    const res = await fetch(`${node.url}/articles/1`);
    expect(res.status).to.equal(402);
    expect(res.headers.get("access-control-expose-headers")).to.include("PAYMENT-REQUIRED");
    const body = await res.json();
    expect(body.x402Version).to.equal(2);
    expect(body.accepts[0]).to.include({ scheme: "batch-settlement", network: "eip155:31337", amount: "10000" });
    expect(body.accepts[0].extra.receiverAuthorizer).to.equal(node.payeeAccount.address);
  });

  it("route forms: a price as a function of the request and the key's :params (async too), an atomic bigint, description and mimeType in the 402; a dynamic price is what a paid request is charged", async () => {
    const priced = await startPayee(
      ctx,
      {
        "GET /sized/:kb": { price: (_req: unknown, match: { params: Record<string, string> }) => BigInt(match.params.kb!) * 1_000n, description: "A file priced by its size", mimeType: "application/octet-stream" },
        "GET /later/:id": { price: async (req: import("express").Request, match: { params: Record<string, string> }) => (match.params.id === "gold" && req.method === "GET" ? "$0.05" : "$0.01") },
        "GET /atomic": 777n,
      } as never,
      (app) => {
        app.get("/sized/:kb", (req, res) => void res.send(`file of ${req.params.kb} KB`));
        app.get("/later/:id", (req, res) => void res.send(`later ${req.params.id}`));
        app.get("/atomic", (_req, res) => void res.send("atomic"));
      },
    );
    try {
      const first = await fetch(`${priced.url}/sized/7`);
      const body = await first.json();
      expect(body.accepts[0].amount).to.equal("7000");
      expect(body.resource).to.deep.include({ description: "A file priced by its size", mimeType: "application/octet-stream" });
      expect((await fetchRequirements(`${priced.url}/sized/9`)).accept.amount).to.equal("9000");
      expect((await fetchRequirements(`${priced.url}/later/gold`)).accept.amount).to.equal("50000");
      expect((await fetchRequirements(`${priced.url}/later/tin`)).accept.amount).to.equal("10000");
      expect((await fetchRequirements(`${priced.url}/atomic`)).accept.amount).to.equal("777");
      // Paid at the dynamic price: the deposit's voucher covers 7 KB, the next one 3 KB more.
      const sized = (await fetchRequirements(`${priced.url}/sized/7`)).accept;
      const payer = new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex("dynamic-price"))));
      const dep = await payWith(`${priced.url}/sized/7`, await payer.depositHeader(sized, 100_000n, 7_000n));
      expect(dep.status).to.equal(200);
      expect(dep.text).to.equal("file of 7 KB");
      const three = await payWith(`${priced.url}/sized/3`, await payer.voucherHeader({ ...sized, amount: "3000" }, 10_000n));
      expect(three.status).to.equal(200);
      expect((dep.paymentResponse?.extra as { chargedAmount: string }).chargedAmount).to.equal("7000");
      expect((three.paymentResponse?.extra as { channelState: { chargedCumulativeAmount: string } }).channelState.chargedCumulativeAmount).to.equal("10000");
      // A voucher signed at the wrong price for this request is refused with the corrective 402, nothing charged.
      const wrong = await payWith(`${priced.url}/sized/5`, await payer.voucherHeader({ ...sized, amount: "3000" }, 13_000n));
      expect(wrong.status).to.equal(402);
    } finally {
      await priced.stop();
    }
  });

  it("refuses an x402 v1 X-PAYMENT envelope with a clear error", async () => {
    const res = await fetch(`${node.url}/articles/1`, { headers: { "X-PAYMENT": "e30=" } });
    expect(res.status).to.equal(400);
    expect((await res.json()).error).to.equal("invalid_x402_version");
  });

  it("gasless deposit, 100 paid requests, metered and failing handlers, claim, settle, cooperative refund", async () => {
    const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-a"))));
    let charged = 0n;
    const dep = await payWith(`${node.url}/articles/0`, await payer.depositHeader(accept, 2_000_000n, PRICE));
    expect(dep.status, dep.text).to.equal(200);
    expect(dep.paymentResponse.transaction).to.match(/^0x[0-9a-f]{64}$/);
    expect(dep.paymentResponse.amount).to.equal("2000000");
    expect(dep.res.headers.get("access-control-expose-headers")).to.include("PAYMENT-RESPONSE");
    charged += PRICE;
    for (let i = 1; i < 100; i++) {
      const r = await payWith(`${node.url}/articles/${i}`, await payer.voucherHeader(accept, charged + PRICE));
      expect(r.status, r.text).to.equal(200);
      expect(r.text).to.equal(`article ${i}`);
      expect(r.paymentResponse.extra.chargedAmount).to.equal("10000");
      expect(r.res.headers.get("cache-control")).to.equal("no-store"); // a paid answer is this payer's alone
      charged += PRICE;
      expect(r.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal(charged.toString());
    }
    // a failing handler charges nothing; the same voucher then still pays for the next request
    const fail = await payWith(`${node.url}/fail`, await payer.voucherHeader(accept, charged + PRICE));
    expect(fail.status).to.equal(500);
    expect(fail.paymentResponse).to.equal(undefined);
    // Even over a handler's own Cache-Control (a private cache would replay a stale PAYMENT-RESPONSE).
    const cachedAccept = (await fetchRequirements(`${node.url}/cached/1`)).accept;
    const cached = await payWith(`${node.url}/cached/1`, await payer.voucherHeader(cachedAccept, charged + PRICE));
    expect(cached.status, cached.text).to.equal(200);
    expect(cached.res.headers.get("cache-control")).to.equal("no-store");
    charged += PRICE;
    // replaying an acknowledged voucher is refused with a corrective 402
    const replay = await payWith(`${node.url}/articles/5`, await payer.voucherHeader(accept, charged));
    expect(replay.status).to.equal(402);
    expect(replay.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_amount_mismatch");
    expect(replay.paymentRequired.accepts[0].extra.channelState.chargedCumulativeAmount).to.equal(charged.toString());
    expect(replay.paymentRequired.accepts[0].extra.voucherState.signedMaxClaimable).to.equal(charged.toString());
    // metered: signed 0.05, charged 0.012345
    const meteredAccept = (await fetchRequirements(`${node.url}/metered`)).accept;
    const metered = await payWith(`${node.url}/metered`, await payer.voucherHeader(meteredAccept, charged + 50_000n));
    expect(metered.status).to.equal(200);
    expect(metered.paymentResponse.extra.chargedAmount).to.equal("12345");
    charged += 12_345n;
    // a charge set after the answer started is ignored loudly (a process warning), not silently: the ceiling was committed
    const lateAccept = (await fetchRequirements(`${node.url}/late-charge`)).accept;
    const late = await payWith(`${node.url}/late-charge`, await payer.voucherHeader(lateAccept, charged + 50_000n));
    expect(late.status).to.equal(200);
    expect(late.text).to.equal("first chunk;done");
    expect(late.paymentResponse.extra.chargedAmount).to.equal("50000");
    expect(lateCharge).to.have.length(1);
    expect(lateCharge[0]).to.match(/^TOLLWAY_LATE_CHARGE: charge\(1\) on GET \/late-charge came after the paid answer started and is ignored/);
    charged += 50_000n;

    const claims = new ClaimEngine(node.payee, { onShutdown: false });
    const report = await claims.claim();
    expect(report.failed).to.deep.equal([]);
    expect(report.claimedChannels).to.equal(1);
    const id = payer.channelId(accept);
    const onchain = await readChannel(node.payee.opts.publicClient, CANONICAL_ADDRESSES.batchSettlement, id);
    expect(onchain.totalClaimed).to.equal(charged);
    const before = await balanceOf(node.payeeAccount.address);
    const s = await claims.settle();
    expect(s.amount).to.equal(charged);
    expect((await balanceOf(node.payeeAccount.address)) - before).to.equal(charged);

    const payerBefore = await balanceOf(payer.account.address);
    const refund = await payWith(`${node.url}/articles/0`, await payer.refundHeader(accept, charged));
    expect(refund.status, refund.text).to.equal(200);
    expect(refund.paymentResponse.amount).to.equal((2_000_000n - charged).toString());
    expect((await balanceOf(payer.account.address)) - payerBefore).to.equal(2_000_000n - charged);
    expect(await node.store.getChannel(id)).to.equal(undefined);
    let ledger = 0n;
    for await (const row of node.store.ledger()) if (row.channelId === id) ledger += row.amount;
    expect(ledger).to.equal(charged);
  });

  it("a partial cooperative refund through a paid route returns what was asked; the channel stays open and pays on", async () => {
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("partial-refund"))));
    expect((await payWith(`${node.url}/articles/p1`, await payer.depositHeader(accept, 500_000n, PRICE))).status).to.equal(200);
    const id = payer.channelId(accept);
    const before = await balanceOf(payer.account.address);
    const refund = await payWith(`${node.url}/articles/p2`, await payer.refundHeader(accept, PRICE, 200_000n));
    expect(refund.status, refund.text).to.equal(200);
    expect(refund.paymentResponse.amount).to.equal("200000");
    expect((await balanceOf(payer.account.address)) - before).to.equal(200_000n);
    const onchain = await readChannel(ctx.publicClient as never, CANONICAL_ADDRESSES.batchSettlement, id);
    expect([onchain.balance, onchain.totalClaimed, onchain.refundNonce]).to.deep.equal([300_000n, PRICE, 1n]); // the charge claimed first
    const rec = await node.store.getChannel(id);
    expect([rec?.balance, rec?.chargedCumulative]).to.deep.equal([300_000n, PRICE]);
    // Still open: the next voucher is served and charged.
    const next = await payWith(`${node.url}/articles/p3`, await payer.voucherHeader(accept, 2n * PRICE));
    expect(next.status, next.text).to.equal(200);
    expect((await node.store.getChannel(id))?.chargedCumulative).to.equal(2n * PRICE);
  });

  it("a refund whose receipt does not come in time marks its channel: no charges and no second refund, after a restart too, until the chain has used its nonce; mined, the record follows it; dropped, the channel pays on as it was", async () => {
    const { publicClient, walletClient } = clientsFor(ctx.chain.url, hardhatTestAccount(1)); // the node's key
    const slowSender = () => new TxSender(publicClient as never, walletClient as never, 0, { receiptTimeoutMs: 1_000, repriceAfterMs: 600_000 });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-refund-pending-"));
    let slow = await startPayee(ctx, routes as never, install, { dir, sender: slowSender() });
    const silent = require("pino")({ level: "silent" });
    const payer = new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex("refund-pending"))));
    const id = payer.channelId(accept);
    const CODE = "invalid_batch_settlement_evm_wait_for_receipt_failed";
    expect((await payWith(`${slow.url}/articles/rp1`, await payer.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
    await ctx.testClient.setAutomine(false);
    try {
      // The refund goes out and is not mined in time: the payer is told it failed, and it may still land.
      const refund = await payWith(`${slow.url}/articles/rp2`, await payer.refundHeader(accept, PRICE, 400_000n));
      expect(refund.paymentRequired?.error, refund.text).to.equal(CODE);
      expect(await slow.store.getMeta(`refundpending:${id}`)).to.match(/^0x[0-9a-fA-F]{40}:\d+$/);
      const refused = async (url: string) => {
        for (const header of [await payer.voucherHeader(accept, 2n * PRICE), await payer.refundHeader(accept, PRICE, 100_000n)]) {
          const r = await payWith(url, header);
          expect([r.status, r.paymentRequired?.error], r.text).to.deep.equal([503, CODE]);
        }
        expect((await slow.store.getChannel(id))!.chargedCumulative).to.equal(PRICE);
      };
      await refused(`${slow.url}/articles/rp3`);
      // A restart keeps the mark (the refund may be mined whatever the new process knows of it).
      await slow.stop();
      slow = await startPayee(ctx, routes as never, install, { dir, sender: slowSender() });
      await refused(`${slow.url}/articles/rp3`);
      const watcher = new ChainWatcher(slow.payee, new ClaimEngine(slow.payee, { onShutdown: false }), { logger: silent });
      await watcher.poll();
      expect(slow.payee.refundsPending.has(id), "not mined yet").to.equal(true);
      // Mined: the record takes the chain's state (the refund and the claim before it), then charges go on.
      await ctx.testClient.mine({ blocks: 1 });
      await watcher.poll();
      expect(slow.payee.refundsPending.has(id)).to.equal(false);
      expect(await slow.store.getMeta(`refundpending:${id}`)).to.equal(undefined);
      const rec = (await slow.store.getChannel(id))!;
      expect([rec.balance, rec.totalClaimed, rec.refundNonce]).to.deep.equal([600_000n, PRICE, 1n]);
      const next = await payWith(`${slow.url}/articles/rp4`, await payer.voucherHeader(accept, 2n * PRICE));
      expect(next.status, next.text).to.equal(200);
      // A second refund that times out and is then dropped (its nonce used by another transaction): the channel is as it was.
      const again = await payWith(`${slow.url}/articles/rp5`, await payer.refundHeader(accept, 2n * PRICE, 100_000n));
      expect(again.paymentRequired?.error, again.text).to.equal(CODE);
      const pending = (await publicClient.getBlock({ blockTag: "pending", includeTransactions: true })).transactions;
      expect(pending).to.have.length(1);
      await ctx.testClient.dropTransaction({ hash: pending[0]!.hash });
      await walletClient.sendTransaction({ to: walletClient.account!.address, value: 0n, nonce: pending[0]!.nonce, chain: null } as never);
      await ctx.testClient.mine({ blocks: 1 });
      await watcher.poll();
      expect(slow.payee.refundsPending.has(id)).to.equal(false);
      const after = (await slow.store.getChannel(id))!;
      expect([after.balance, after.refundNonce, after.chargedCumulative]).to.deep.equal([600_000n, 1n, 2n * PRICE]);
      expect((await payWith(`${slow.url}/articles/rp6`, await payer.voucherHeader(accept, 3n * PRICE))).status).to.equal(200);
      // A mark replaced while the watcher resolves the one before it (a newer refund signed meanwhile) stays:
      // only the mark whose nonce was seen used is cleared.
      const from = walletClient.account!.address;
      const older = { from, nonce: 0 };
      const newer = { from, nonce: 1_000_000 };
      slow.payee.refundsPending.set(id, older);
      const client = slow.payee.opts.publicClient as { getTransactionCount: (a: never) => Promise<number> };
      const count = client.getTransactionCount;
      client.getTransactionCount = async (a: never) => {
        slow.payee.refundsPending.set(id, newer);
        return count.call(client, a);
      };
      try {
        await slow.payee.resolveRefundsPending();
      } finally {
        client.getTransactionCount = count;
      }
      expect(slow.payee.refundsPending.get(id)).to.equal(newer);
      slow.payee.refundsPending.delete(id);
      await watcher.stop();
    } finally {
      await ctx.testClient.setAutomine(true);
      await slow.stop();
    }
  });

  it("a paid path is matched as file servers read it (percent-escapes, '//', '.', '..'), and a CORS preflight a paid route lets through gets no body: neither serves paid content unpaid", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-static-"));
    fs.mkdirSync(path.join(dir, "premium"));
    fs.writeFileSync(path.join(dir, "premium", "a.txt"), "premium file");
    const site = await startPayee(ctx, { "GET /articles/*": "$0.001", "GET /premium/*": "$0.01", "/files/*": "$0.01", "/cors/*": "$0.01" } as never, (app) => {
      app.all("/files/*", (_req, res) => void res.set("Access-Control-Allow-Origin", "*").send("secret file"));
      // Preflight answers with framing of their own: a 204 (no length allowed) and headers given as a flat list.
      app.options("/cors/204", (_req, res) => void res.writeHead(204, { "Access-Control-Allow-Origin": "*", "Content-Length": "11" }).end("secret body"));
      app.options("/cors/list", (_req, res) => void res.writeHead(200, ["Access-Control-Allow-Origin", "*", "Content-Length", "11"]).end("secret body"));
      app.use(express.static(dir));
    });
    /** One request with its path sent as written (fetch would normalise it). */
    const raw = (method: string, target: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; body: string; headers: import("node:http").IncomingHttpHeaders }>((resolve, reject) => {
        const u = new URL(site.url);
        const req = require("node:http").request({ host: u.hostname, port: u.port, method, path: target, headers }, (res: import("node:http").IncomingMessage) => {
          let body = "";
          res.on("data", (d) => (body += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
        });
        req.on("error", reject);
        req.end();
      });
    try {
      for (const target of ["/premium/a.txt", "/%70remium/a.txt", "//premium/a.txt", "/./premium/a.txt", "/x/../premium/a.txt", "/premium%2Fa.txt", "/PREMIUM/a.txt"]) {
        const r = await raw("GET", target);
        expect([r.status, r.body.includes("premium file")], target).to.deep.equal([402, false]);
      }
      const files = await raw("GET", "/files/x");
      expect(files.status).to.equal(402);
      const preflight = await raw("OPTIONS", "/files/x", { Origin: "https://reader.example", "Access-Control-Request-Method": "GET" });
      expect(preflight.status).to.be.below(300);
      expect(preflight.body).to.equal("");
      expect(preflight.headers["content-length"]).to.equal("0");
      expect(preflight.headers["access-control-allow-origin"]).to.equal("*"); // the app's CORS answer goes out
      const ask = { Origin: "https://reader.example", "Access-Control-Request-Method": "GET" };
      const noContent = await raw("OPTIONS", "/cors/204", ask);
      expect([noContent.status, noContent.body, noContent.headers["content-length"]]).to.deep.equal([204, "", undefined]);
      const listed = await raw("OPTIONS", "/cors/list", ask);
      expect([listed.status, listed.body, listed.headers["content-length"], listed.headers["access-control-allow-origin"]]).to.deep.equal([200, "", "0", "*"]);
      // A path that reads as one paid route as written and as another once resolved is refused, uncharged:
      // charged as a cheap article, a file server would send the premium file.
      for (const target of ["/articles/../premium/a.txt", "/articles/..%2Fpremium%2Fa.txt"]) {
        const r = await raw("GET", target);
        expect([r.status, r.body.includes("premium file")], target).to.deep.equal([400, false]);
        expect(JSON.parse(r.body).error, target).to.equal("invalid_path");
      }
    } finally {
      await site.stop();
    }
  });

  it("a request that waits longer than lockTimeoutMs behind another on its channel gets channel_busy (402) and is not charged; the holder is charged once", async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const holding = new Promise<void>((r) => (entered = r));
    const busy = await startPayee(ctx, { "GET /hold": "$0.01", "GET /articles/:id": "$0.01" } as never, (app) => {
      app.get("/hold", async (_req, res) => {
        entered();
        await released;
        res.send("held");
      });
      app.get("/articles/:id", (req, res) => void res.send(`article ${req.params.id}`));
    }, { lockTimeoutMs: 300 });
    try {
      const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("lock-timeout"))));
      const id = payer.channelId(accept);
      expect((await payWith(`${busy.url}/articles/1`, await payer.depositHeader(accept, 100_000n, PRICE))).status).to.equal(200);
      const holder = payWith(`${busy.url}/hold`, await payer.voucherHeader(accept, 2n * PRICE));
      await holding;
      const waiter = await payWith(`${busy.url}/articles/2`, await payer.voucherHeader(accept, 2n * PRICE));
      expect(waiter.status).to.equal(402);
      expect(waiter.paymentRequired.error).to.equal("invalid_batch_settlement_evm_channel_busy");
      release();
      expect((await holder).status).to.equal(200);
      expect((await busy.store.getChannel(id))?.chargedCumulative).to.equal(2n * PRICE);
    } finally {
      release();
      await busy.stop();
    }
  });

  it("with confirmations, a relayed deposit is served only once its transaction has that many blocks on top", async () => {
    const { publicClient, walletClient } = clientsFor(ctx.chain.url, node.payeeAccount);
    const confirming = await startPayee(ctx, routes as never, install, { sender: new TxSender(publicClient as never, walletClient as never, 2) });
    try {
      const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("confirmations"))));
      const answer = payWith(`${confirming.url}/articles/1`, await payer.depositHeader(accept, 100_000n, PRICE));
      const early = await Promise.race([answer.then(() => "answered"), new Promise((r) => setTimeout(() => r("waiting"), 1_500))]);
      expect(early).to.equal("waiting");
      expect((await readChannel(ctx.publicClient as never, CANONICAL_ADDRESSES.batchSettlement, payer.channelId(accept))).balance).to.equal(100_000n); // on chain, not yet served
      await ctx.testClient.mine({ blocks: 2 });
      const served = await answer;
      expect(served.status, served.text).to.equal(200);
    } finally {
      await confirming.stop();
    }
  });

  it("deposits and refunds the node sends for one payer are limited per hour (relay.perPayerPerHour): beyond, a 429 with Retry-After and nothing sent; deposits the token refuses do not count", async () => {
    const limited = await startPayee(ctx, routes as never, install, { relay: { perPayerPerHour: 2 } });
    try {
      // A deposit whose ERC-3009 authorization the token refuses fails its simulation: no gas, no slot taken.
      const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("relay-limited"))));
      const forged = JSON.parse(Buffer.from(await payer.depositHeader(accept, 100_000n, PRICE), "base64").toString());
      const auth = forged.payload.deposit.authorization.erc3009Authorization;
      auth.signature = `${auth.signature.slice(0, -4)}${auth.signature.slice(-4, -2) === "00" ? "01" : "00"}${auth.signature.slice(-2)}`;
      for (let i = 0; i < 3; i++) {
        const r = await payWith(`${limited.url}/articles/0`, Buffer.from(JSON.stringify(forged)).toString("base64"));
        expect(r.status).to.equal(402);
        expect(r.paymentRequired.error).to.equal("invalid_batch_settlement_evm_deposit_simulation_failed");
      }
      // A deposit whose request is not charged (the handler fails) and a refund: two unpaid transactions.
      expect((await payWith(`${limited.url}/fail`, await payer.depositHeader(accept, 100_000n, PRICE))).status).to.equal(500);
      expect((await payWith(`${limited.url}/articles/0`, await payer.refundHeader(accept, 0n))).status).to.equal(200);
      const id = payer.channelId(accept);
      expect(await limited.store.getChannel(id)).to.equal(undefined); // refunded in full: the record is gone
      const nonce = await ctx.publicClient.getTransactionCount({ address: limited.payeeAccount.address });
      const tokens = await balanceOf(payer.account.address);
      const again = await fetch(`${limited.url}/articles/0`, { headers: { "PAYMENT-SIGNATURE": await payer.depositHeader(accept, 100_000n, PRICE) } });
      expect(again.status).to.equal(429);
      expect(Number(again.headers.get("retry-after"))).to.be.within(3_500, 3_600);
      expect(again.headers.get("access-control-expose-headers")).to.include("Retry-After");
      const body = await again.json();
      expect(body.error).to.equal("relay_rate_limited");
      expect(body.message).to.include("at most 2 deposits and refunds per hour for one payer");
      expect(await ctx.publicClient.getTransactionCount({ address: limited.payeeAccount.address })).to.equal(nonce);
      expect(await balanceOf(payer.account.address)).to.equal(tokens);
      expect(await limited.store.getChannel(id)).to.equal(undefined);
      // Another payer has an allowance of its own; deposits whose requests are charged count too (a charge
      // can be far below a deposit's gas).
      const other = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("relay-other"))));
      for (let k = 1n; k <= 2n; k++) expect((await payWith(`${limited.url}/articles/${k}`, await other.depositHeader(accept, k === 1n ? 100_000n : 1n, k * PRICE))).status).to.equal(200);
      expect((await payWith(`${limited.url}/articles/3`, await other.depositHeader(accept, 1n, 3n * PRICE))).status).to.equal(429);
      expect((await payWith(`${limited.url}/articles/3`, await other.voucherHeader(accept, 3n * PRICE))).status).to.equal(200); // vouchers are not limited
    } finally {
      await limited.stop();
    }
  });

  it("a handler that replaces res.locals is still held until its charge is on disk", async () => {
    const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-relocals"))));
    const dep = await payWith(`${node.url}/relocals`, await payer.depositHeader(accept, 100_000n, PRICE));
    expect(dep.status, dep.text).to.equal(200);
    const r = await payWith(`${node.url}/relocals`, await payer.voucherHeader(accept, 2n * PRICE));
    expect(r.status, r.text).to.equal(200);
    expect(r.text).to.equal("relocals");
    expect(r.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal((2n * PRICE).toString());
    expect((await node.store.getChannel(payer.channelId(accept)))!.chargedCumulative).to.equal(2n * PRICE);
    expect(node.payee.locks.size).to.equal(0);
  });

  it("payment middleware in a mounted sub-app, handler in the parent: still held until the charge is on disk", async () => {
    // express moves the response back to the parent app's prototype when the request leaves the sub-app
    const parent = express();
    const sub = express();
    let channelId: `0x${string}` | undefined;
    const seen: Array<{ charged: bigint | undefined; paymentResponse: boolean }> = [];
    parent.use((_req, res, next) => {
      onFirstSocketWrite(res, () =>
        seen.push({ charged: channelId ? node.store.cachedChannel(channelId)?.chargedCumulative : undefined, paymentResponse: res.getHeader("payment-response") !== undefined }),
      );
      next();
    });
    sub.use(paymentMiddleware(routes as never, node.payee));
    parent.use("/s", sub);
    parent.get("/s/articles/:id", (req, res) => void res.send(`article ${req.params.id}`));
    const server = await new Promise<Server>((resolve) => {
      const srv = parent.listen(0, "127.0.0.1", () => resolve(srv));
    });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/s`;
    try {
      const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-subapp"))));
      channelId = payer.channelId(accept);
      const dep = await payWith(`${url}/articles/0`, await payer.depositHeader(accept, 200_000n, PRICE));
      expect(dep.status, dep.text).to.equal(200);
      const r = await payWith(`${url}/articles/1`, await payer.voucherHeader(accept, 2n * PRICE));
      expect(r.status, r.text).to.equal(200);
      expect(r.text).to.equal("article 1");
      expect(seen).to.deep.equal([
        { charged: PRICE, paymentResponse: true },
        { charged: 2n * PRICE, paymentResponse: true },
      ]);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  for (const wrapped of [false, true]) {
    it(`no paid byte leaves before its charge is on disk${wrapped ? ", under a middleware that wraps res.write/end ahead of Tollway (as compression does)" : ""}`, async () => {
      // Every write to the socket records what the store holds at that instant for the channel.
      const seen: Array<{ path: string; charged: bigint | undefined; paymentResponse: boolean }> = [];
      let channelId: `0x${string}` | undefined;
      let second: Awaited<ReturnType<typeof startPayee>> | undefined;
      second = await startPayee(ctx, routes as never, (app) => {
        install(app);
        app.get("/free", (_req, res) => void res.send("free"));
      }, {
        beforePayment: (app) =>
          app.use((req, res, next) => {
            if (wrapped) {
              const end = res.end;
              const write = res.write;
              res.end = function (this: typeof res, ...args: unknown[]) {
                return (end as (...a: unknown[]) => typeof res).apply(this, args);
              } as typeof res.end;
              res.write = function (this: typeof res, ...args: unknown[]) {
                return (write as (...a: unknown[]) => boolean).apply(this, args);
              } as typeof res.write;
            }
            onFirstSocketWrite(res, () =>
              seen.push({
                path: req.path,
                charged: channelId ? second!.store.cachedChannel(channelId)?.chargedCumulative : undefined,
                paymentResponse: res.getHeader("payment-response") !== undefined,
              }),
            );
            next();
          }),
      });
      try {
        const payer = new WirePayer(ctx.payers[wrapped ? 5 : 4] as LocalAccount, privateKeyToAccount(keccak256(toHex(`session-bytes-${wrapped}`))));
        channelId = payer.channelId(accept);
        const dep = await payWith(`${second.url}/articles/0`, await payer.depositHeader(accept, 1_000_000n, PRICE));
        expect(dep.status, dep.text).to.equal(200);
        let charged = PRICE;
        for (let i = 1; i <= 5; i++) {
          const r = await payWith(`${second.url}/articles/${i}`, await payer.voucherHeader(accept, charged + PRICE));
          expect(r.status, r.text).to.equal(200);
          charged += PRICE;
        }
        const free = await fetch(`${second.url}/free`);
        expect(await free.text()).to.equal("free");
        const paid = seen.filter((w) => w.path.startsWith("/articles/"));
        expect(paid).to.have.length(6);
        paid.forEach((w, k) => {
          expect(w.paymentResponse, `request ${k}`).to.equal(true);
          expect(w.charged, `request ${k}`).to.equal(PRICE * BigInt(k + 1));
        });
        expect(seen.find((w) => w.path === "/free")!.paymentResponse).to.equal(false);
      } finally {
        await second.stop();
      }
    });
  }

  it("100 parallel requests on one channel: each served request charged exactly once", async () => {
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-b"))));
    const dep = await payWith(`${node.url}/articles/x`, await payer.depositHeader(accept, 5_000_000n, PRICE));
    expect(dep.status).to.equal(200);
    let known = PRICE;
    let served = 0;
    let attempts = 0;
    await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        for (;;) {
          attempts++;
          const r = await payWith(`${node.url}/articles/${i}`, await payer.voucherHeader(accept, known + PRICE));
          if (r.status === 200) {
            served++;
            const c = BigInt(r.paymentResponse.extra.channelState.chargedCumulativeAmount);
            if (c > known) known = c;
            return;
          }
          expect(r.status).to.equal(402);
          const c = BigInt(r.paymentRequired.accepts[0].extra.channelState.chargedCumulativeAmount);
          if (c > known) known = c;
        }
      }),
    );
    expect(served).to.equal(100);
    const rec = await node.store.getChannel(payer.channelId(accept));
    expect(rec!.chargedCumulative).to.equal(101n * PRICE);
    let rows = 0;
    for await (const row of node.store.ledger()) if (row.channelId === rec!.channelId) rows++;
    expect(rows).to.equal(101);
    expect(attempts).to.be.greaterThan(100);
    expect(node.payee.locks.size).to.equal(0);
  });

  it("restart mid-run: the node resumes where it was, a paid voucher is never accepted twice", async () => {
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-c"))));
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
    const v2 = await payer.voucherHeader(accept, 2n * PRICE);
    expect((await payWith(`${node.url}/articles/b`, v2)).status).to.equal(200);
    const dir = node.dir;
    await node.stop();
    node = await startPayee(ctx, routes as never, install, { dir });
    const replay = await payWith(`${node.url}/articles/b`, v2);
    expect(replay.status).to.equal(402);
    expect(replay.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_amount_mismatch");
    const next = await payWith(`${node.url}/articles/c`, await payer.voucherHeader(accept, 3n * PRICE));
    expect(next.status).to.equal(200);
  });

  it("client state loss: the corrective 402's voucher lets the client resynchronise", async () => {
    const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-d"))));
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
    expect((await payWith(`${node.url}/articles/b`, await payer.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
    // the client forgot everything: on-chain totalClaimed is 0, so it signs 0 + price
    const stale = await payWith(`${node.url}/articles/c`, await payer.voucherHeader(accept, PRICE));
    expect(stale.status).to.equal(402);
    const state = stale.paymentRequired.accepts[0].extra;
    expect(state.channelState.chargedCumulativeAmount).to.equal((2n * PRICE).toString());
    // the voucher proof is the payer's own signature over the server's claimed cumulative
    const expectedSig = (await payer.voucher(accept, 2n * PRICE)).signature;
    expect(state.voucherState.signature).to.equal(expectedSig.toLowerCase());
    const ok = await payWith(`${node.url}/articles/c`, await payer.voucherHeader(accept, 3n * PRICE));
    expect(ok.status).to.equal(200);
  });

  it("a deposit the node would refuse anyway (chain view beyond the risk window) is refused before it goes on chain", async () => {
    const session = privateKeyToAccount(keccak256(toHex("session-h")));
    const payer = new WirePayer(ctx.payers[5] as LocalAccount, session);
    const synced = node.payee.chainSyncedAt;
    node.payee.chainSyncedAt = Date.now() - 10 * 60_000;
    try {
      const r = await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 1_000_000n, PRICE));
      expect(r.status).to.equal(503);
      expect(r.paymentRequired.error).to.equal("invalid_batch_settlement_evm_channel_state_read_failed");
    } finally {
      node.payee.chainSyncedAt = synced;
    }
    const onchain = await readChannel(node.payee.opts.publicClient, CANONICAL_ADDRESSES.batchSettlement, payer.channelId(accept));
    expect(onchain.balance).to.equal(0n);
    expect(await node.payee.store.getChannel(payer.channelId(accept))).to.equal(undefined);
  });

  it("claims: a row the chain refuses is isolated and alerted by name, the others are claimed; an RPC failure fails the run without blaming any row", async () => {
    const ids: `0x${string}`[] = [];
    for (const i of [0, 1, 2]) {
      const payer = new WirePayer(ctx.payers[i] as LocalAccount, privateKeyToAccount(keccak256(toHex(`session-claims-${i}`))));
      expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 100_000n, PRICE))).status).to.equal(200);
      ids.push(payer.channelId(accept));
    }
    // One stored voucher the escrow will refuse (its signature's r altered).
    const bad = (await node.payee.store.getChannel(ids[1]!))!;
    const sig = bad.signature;
    await node.payee.store.putChannel({ ...bad, signature: `${sig.slice(0, 10)}${sig[10] === "0" ? "1" : "0"}${sig.slice(11)}` as `0x${string}` });
    const alerts: string[] = [];
    const claims = new ClaimEngine(node.payee, { onShutdown: false, onAlert: (id) => alerts.push(id) });
    // The RPC fails for the simulation: nothing is blamed, the run fails as a whole.
    const sender = node.payee.opts.sender;
    const simulate = sender.simulate.bind(sender);
    sender.simulate = () => Promise.reject(new ChainError("invalid_batch_settlement_evm_claim_simulation_failed", "simulation of claim failed", { cause: new HttpRequestError({ url: "http://127.0.0.1:1" }) }));
    try {
      const err = await claims.claim({ channels: ids }).then(() => undefined, (e: Error) => e);
      expect(err).to.be.instanceOf(Error);
      expect(alerts).to.deep.equal([]);
    } finally {
      sender.simulate = simulate;
    }
    const report = await claims.claim({ channels: ids });
    expect(report.failed.map((f) => f.channelId)).to.deep.equal([ids[1]]);
    expect(alerts).to.deep.equal([ids[1]]);
    expect(report.claimedChannels).to.equal(2);
    const { publicClient } = clientsFor(ctx.chain.url, ctx.payers[0] as LocalAccount);
    for (const [i, id] of ids.entries()) {
      expect((await readChannel(publicClient as never, CANONICAL_ADDRESSES.batchSettlement, id)).totalClaimed, `channel ${i}`).to.equal(i === 1 ? 0n : PRICE);
    }
    await node.payee.store.putChannel(bad); // the good voucher back, for the tests after this one
  });

  it("a store restored from a backup older than a claim: the mirror lifts the charged total to the claimed total, and the payer goes on", async () => {
    const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-backup"))));
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 100_000n, PRICE))).status).to.equal(200);
    const id = payer.channelId(accept);
    const backup = (await node.payee.store.getChannel(id))!;
    for (const n of [2n, 3n]) expect((await payWith(`${node.url}/articles/a`, await payer.voucherHeader(accept, n * PRICE))).status).to.equal(200);
    await new ClaimEngine(node.payee, { onShutdown: false }).claim({ channels: [id] });
    await node.payee.store.putChannel(backup); // charged PRICE, while 3 * PRICE is claimed on chain
    const synced = (await node.payee.syncChannel(id))!;
    expect(synced).to.deep.include({ chargedCumulative: 3n * PRICE, totalClaimed: 3n * PRICE, signedMaxClaimable: 3n * PRICE, signature: "0x" });
    const next = await payWith(`${node.url}/articles/a`, await payer.voucherHeader(accept, 4n * PRICE));
    expect(next.status, next.text).to.equal(200);
    expect(next.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal((4n * PRICE).toString());
  });

  it("after the node loses its state, a voucher above the on-chain baseline gets a corrective 402 carrying the baseline (claimed total, no voucher), and the payer resumes from it", async () => {
    const session = privateKeyToAccount(keccak256(toHex("session-g")));
    const payer = new WirePayer(ctx.payers[5] as LocalAccount, session);
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
    expect((await payWith(`${node.url}/articles/b`, await payer.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
    // A second node, same key and chain, empty store (a lost disk).
    const fresh = await startPayee(ctx, routes as never, install);
    try {
      const r = await payWith(`${fresh.url}/articles/c`, await payer.voucherHeader(accept, 3n * PRICE));
      expect(r.status).to.equal(402);
      expect(r.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_amount_mismatch");
      const extra = r.paymentRequired.accepts[0].extra;
      expect(extra.channelState).to.include({ chargedCumulativeAmount: "0", totalClaimed: "0", balance: "1000000" });
      expect(extra.voucherState).to.equal(undefined);
      const resumed = await payWith(`${fresh.url}/articles/c`, await payer.voucherHeader(accept, PRICE));
      expect(resumed.status).to.equal(200);
    } finally {
      await fresh.stop();
    }
  });

  it("watcher: a payer's withdrawal is claimed against before finalize; the payer gets only the rest", async () => {
    const session = privateKeyToAccount(keccak256(toHex("session-e")));
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, session);
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
    expect((await payWith(`${node.url}/articles/b`, await payer.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
    const claims = new ClaimEngine(node.payee, { onShutdown: false });
    const watcher = new ChainWatcher(node.payee, claims, { logger: require("pino")({ level: process.env.DEBUG_WATCHER ? "debug" : "silent" }) });
    await watcher.poll(); // checkpoint
    const config = payer.config(accept);
    const { walletClient, publicClient, testClient } = clientsFor(ctx.chain.url, payer.account);
    const id = payer.channelId(accept);
    const hash = await walletClient.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "initiateWithdraw", args: [config, 1_000_000n] });
    await publicClient.waitForTransactionReceipt({ hash });
    await watcher.poll();
    await watcher.settled(); // its withdrawal claims run in the background
    const onchain = await readChannel(publicClient as never, CANONICAL_ADDRESSES.batchSettlement, id);
    expect(onchain.totalClaimed).to.equal(2n * PRICE);
    expect(onchain.withdrawRequestedAt).to.be.greaterThan(0);
    await testClient.increaseTime({ seconds: 900 });
    await testClient.mine({ blocks: 1 });
    const before = await balanceOf(payer.account.address);
    const fin = await walletClient.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "finalizeWithdraw", args: [config] });
    await publicClient.waitForTransactionReceipt({ hash: fin });
    expect((await balanceOf(payer.account.address)) - before).to.equal(1_000_000n - 2n * PRICE);
    // Drained: once the watcher mirrors the finalize, only the claimed charges are left in the channel; a
    // voucher above them is refused, nothing stored.
    await watcher.poll();
    const drained = await node.store.getChannel(id);
    expect([drained?.balance, drained?.totalClaimed]).to.deep.equal([2n * PRICE, 2n * PRICE]);
    const empty = await payWith(`${node.url}/articles/d`, await payer.voucherHeader(accept, 3n * PRICE));
    expect(empty.status).to.equal(402);
    expect(empty.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_exceeds_balance");
    expect(await node.store.getChannel(id)).to.deep.equal(drained);
  });

  it("a voucher on a channel whose withdrawal finalizes within the safety margin is refused (channel_not_found, closing), nothing stored", async () => {
    // A node of its own whose safety margin (1 h) is longer than the channel's withdraw delay (15 min):
    // any pending withdrawal is "about to finalize" for it.
    const wary = await startPayee(ctx, routes as never, install, { withdrawalSafetyMarginS: 3_600 });
    try {
      const payer = new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-closing"))));
      expect((await payWith(`${wary.url}/articles/a`, await payer.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
      const watcher = new ChainWatcher(wary.payee, new ClaimEngine(wary.payee, { onShutdown: false }), { logger: require("pino")({ level: "silent" }) });
      await watcher.poll(); // checkpoint
      expect((await payWith(`${wary.url}/articles/b`, await payer.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
      const id = payer.channelId(accept);
      const { walletClient, publicClient } = clientsFor(ctx.chain.url, payer.account);
      // A partial withdrawal: the next voucher stays within balance - withdrawal, only the timing refuses it.
      const hash = await walletClient.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "initiateWithdraw", args: [payer.config(accept), 500_000n] });
      await publicClient.waitForTransactionReceipt({ hash });
      await watcher.poll();
      await watcher.settled();
      const stored = await wary.store.getChannel(id);
      expect(stored?.withdrawRequestedAt).to.be.greaterThan(0);
      const closing = await payWith(`${wary.url}/articles/c`, await payer.voucherHeader(accept, 3n * PRICE));
      expect(closing.status).to.equal(402);
      expect(closing.paymentRequired.error).to.equal("invalid_batch_settlement_evm_channel_not_found");
      expect(closing.paymentRequired.message).to.match(/channel is closing: its withdrawal finalizes too soon/);
      expect(await wary.store.getChannel(id)).to.deep.equal(stored);
    } finally {
      await wary.stop();
    }
  });

  it("watcher: with a withdrawal pending, vouchers the withdrawal could leave unbacked are refused; a failed claim is retried from stored state, also by a new watcher after a restart", async () => {
    const session = privateKeyToAccount(keccak256(toHex("session-f")));
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, session);
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
    expect((await payWith(`${node.url}/articles/b`, await payer.voucherHeader(accept, 2n * PRICE))).status).to.equal(200);
    // The first claim run fails as a whole (an RPC outage, say).
    class FlakyClaims extends ClaimEngine {
      failures = 1;
      override claim(select: { channels?: `0x${string}`[] } = {}) {
        return this.failures-- > 0 ? Promise.reject(new Error("rpc unreachable")) : super.claim(select);
      }
    }
    const alerts: string[] = [];
    const silent = require("pino")({ level: "silent" });
    const first = new ChainWatcher(node.payee, new FlakyClaims(node.payee, { onShutdown: false }), { logger: silent, onAlert: (id) => alerts.push(id) });
    await first.poll(); // checkpoint
    const config = payer.config(accept);
    const id = payer.channelId(accept);
    const { walletClient, publicClient } = clientsFor(ctx.chain.url, payer.account);
    // Everything but what was charged (on chain nothing is claimed yet, so this much is available).
    const hash = await walletClient.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "initiateWithdraw", args: [config, 1_000_000n - 2n * PRICE] });
    await publicClient.waitForTransactionReceipt({ hash });
    await first.poll();
    await first.settled(); // its withdrawal claims run in the background
    expect(alerts).to.deep.equal([id]);
    expect(first.pendingWithdrawals).to.deep.equal([id]);
    expect((await readChannel(publicClient as never, CANONICAL_ADDRESSES.batchSettlement, id)).totalClaimed).to.equal(0n);
    // Mirrored: the next voucher would go beyond balance - withdrawal.
    const refused = await payWith(`${node.url}/articles/c`, await payer.voucherHeader(accept, 3n * PRICE));
    expect(refused.status).to.equal(402);
    expect(refused.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_exceeds_balance");
    expect((await node.payee.store.getChannel(id))!.chargedCumulative).to.equal(2n * PRICE);
    // A restart: a new watcher (its checkpoint is past the event) finds the channel in the store and claims it.
    const second = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    second.start();
    await second.poll();
    await second.settled(); // its withdrawal claims run in the background
    await second.stop();
    expect((await readChannel(publicClient as never, CANONICAL_ADDRESSES.batchSettlement, id)).totalClaimed).to.equal(2n * PRICE);
    expect(second.pendingWithdrawals).to.deep.equal([]);
  });

  it("watcher: with confirmations the checkpoint stays that many blocks behind head, poll after poll (the last blocks are scanned again)", async () => {
    const silent = require("pino")({ level: "silent" });
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent, confirmations: 3 });
    const { testClient, publicClient } = clientsFor(ctx.chain.url, ctx.payers[0] as LocalAccount);
    await testClient.mine({ blocks: 5 });
    for (let i = 0; i < 3; i++) {
      await watcher.poll(); // the same head every time
      expect(await watcher.checkpoint()).to.equal((await publicClient.getBlockNumber({ cacheTime: 0 })) - 3n);
    }
    await testClient.mine({ blocks: 2 });
    await watcher.poll();
    expect(await watcher.checkpoint()).to.equal((await publicClient.getBlockNumber({ cacheTime: 0 })) - 3n);
  });

  it("watcher: a long way behind, it scans in bounded block ranges and still catches up in one poll", async () => {
    const silent = require("pino")({ level: "silent" });
    const ranges: Array<[bigint, bigint]> = [];
    const client = node.payee.opts.publicClient;
    const getContractEvents = client.getContractEvents.bind(client);
    (client as { getContractEvents: unknown }).getContractEvents = (a: { fromBlock: bigint; toBlock: bigint }) => {
      ranges.push([a.fromBlock, a.toBlock]);
      return getContractEvents(a as never);
    };
    try {
      const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent, maxBlockRange: 7 });
      await watcher.poll();
      const { testClient } = clientsFor(ctx.chain.url, ctx.payers[0] as LocalAccount);
      await testClient.mine({ blocks: 30 });
      ranges.length = 0;
      await watcher.poll();
      const head = await client.getBlockNumber({ cacheTime: 0 });
      expect(await watcher.checkpoint()).to.equal(head);
      expect(ranges.length).to.be.at.least(5);
      for (const [a, b] of ranges) expect(Number(b - a)).to.be.below(7);
      for (let i = 1; i < ranges.length; i++) expect(ranges[i]![0]).to.equal(ranges[i - 1]![1] + 1n);
    } finally {
      (client as { getContractEvents: unknown }).getContractEvents = getContractEvents;
    }
  });

  it("claims: when a finalized withdrawal left the balance below the charges, what the balance still holds is claimed (not a reverting claim of everything)", async () => {
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-partial"))));
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 100_000n, PRICE))).status).to.equal(200);
    for (const n of [2n, 3n]) expect((await payWith(`${node.url}/articles/a`, await payer.voucherHeader(accept, n * PRICE))).status).to.equal(200);
    const id = payer.channelId(accept);
    const config = payer.config(accept);
    const { walletClient, publicClient, testClient } = clientsFor(ctx.chain.url, payer.account);
    const escrow = CANONICAL_ADDRESSES.batchSettlement;
    await publicClient.waitForTransactionReceipt({ hash: await walletClient.writeContract({ address: escrow, abi: batchSettlementAbi, functionName: "initiateWithdraw", args: [config, 90_000n] }) });
    await testClient.increaseTime({ seconds: 901 });
    await testClient.mine({ blocks: 1 });
    await publicClient.waitForTransactionReceipt({ hash: await walletClient.writeContract({ address: escrow, abi: batchSettlementAbi, functionName: "finalizeWithdraw", args: [config] }) });
    const rec = (await node.payee.syncChannel(id))!;
    expect(rec).to.deep.include({ balance: 10_000n, chargedCumulative: 3n * PRICE });
    // What is still collectable is the exposure; the rest is lost, not "pending" forever.
    expect([exposure(rec), lost(rec)]).to.deep.equal([10_000n, 20_000n]);
    const report = await new ClaimEngine(node.payee, { onShutdown: false }).claim({ channels: [id] });
    expect(report.failed).to.deep.equal([]);
    expect((await readChannel(publicClient as never, escrow, id)).totalClaimed).to.equal(10_000n);
    // Nothing more to collect: the next run sends nothing.
    expect((await new ClaimEngine(node.payee, { onShutdown: false }).claim({ channels: [id] })).transactions).to.deep.equal([]);
    const after = (await node.store.getChannel(id))!;
    expect([exposure(after), lost(after)]).to.deep.equal([0n, 20_000n]);
  });

  it("watcher: a channel whose chain event cannot be mirrored takes no new charges until it is (the rest of the node serves on)", async () => {
    const silent = require("pino")({ level: "silent" });
    const watcher = new ChainWatcher(node.payee, new ClaimEngine(node.payee, { onShutdown: false }), { logger: silent });
    await watcher.poll();
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-unsynced"))));
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 100_000n, PRICE))).status).to.equal(200);
    const id = payer.channelId(accept);
    // The payer tops the channel up itself: an event the node did not cause and must mirror.
    await depositOnChain(ctx.chain.url, payer, accept, 50_000n);
    const client = node.payee.opts.publicClient;
    const readContract = client.readContract.bind(client);
    (client as { readContract: unknown }).readContract = (a: { args?: unknown[] }) => (a.args?.[0] === id ? Promise.reject(new Error("rpc unreachable")) : readContract(a as never));
    try {
      await watcher.poll(); // sees the top-up event, cannot read the channel
      expect(watcher.failures).to.equal(0);
      const refused = await payWith(`${node.url}/articles/b`, await payer.voucherHeader(accept, 2n * PRICE));
      expect(refused.status).to.equal(503);
      expect(refused.paymentRequired.error).to.equal("invalid_batch_settlement_evm_channel_state_read_failed");
    } finally {
      (client as { readContract: unknown }).readContract = readContract;
    }
    await watcher.poll(); // the event is still in range: mirrored now
    const ok = await payWith(`${node.url}/articles/b`, await payer.voucherHeader(accept, 2n * PRICE));
    expect(ok.status).to.equal(200);
  });

  it("watcher: a chain shorter than the confirmation depth is waited out, not a failure", async () => {
    const silent = require("pino")({ level: "silent" });
    const fresh = await startPayee(ctx, routes as never, install); // no checkpoint yet
    try {
      const head = await fresh.payee.opts.publicClient.getBlockNumber({ cacheTime: 0 });
      const watcher = new ChainWatcher(fresh.payee, new ClaimEngine(fresh.payee, { onShutdown: false }), { logger: silent, confirmations: Number(head) + 3 });
      for (let i = 0; i < 2; i++) {
        await watcher.poll();
        expect(watcher.failures).to.equal(0);
        expect(await watcher.checkpoint()).to.equal(undefined);
      }
      const { testClient } = clientsFor(ctx.chain.url, ctx.payers[0] as LocalAccount);
      await testClient.mine({ blocks: 5 }); // now the chain is deeper than the confirmations
      await watcher.poll();
      expect(watcher.failures).to.equal(0);
      expect(await watcher.checkpoint()).to.equal(head + 5n - (head + 3n));
    } finally {
      await fresh.stop();
    }
  });

  it("settle: two settles queued together record what moved (the second moves nothing), not the same amount twice", async () => {
    const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("session-settle"))));
    expect((await payWith(`${node.url}/articles/a`, await payer.depositHeader(accept, 100_000n, PRICE))).status).to.equal(200);
    const claims = new ClaimEngine(node.payee, { onShutdown: false });
    await claims.claim({ channels: [payer.channelId(accept)] });
    const r = await readReceiver(node.payee.opts.publicClient, CANONICAL_ADDRESSES.batchSettlement, node.payee.opts.receiver, ctx.deployment.token!);
    const unsettled = r.totalClaimed - r.totalSettled;
    expect(unsettled >= PRICE).to.equal(true);
    const since = Date.now() - 1;
    const [a, b] = await Promise.all([claims.settle(), claims.settle()]);
    expect(a.amount + b.amount).to.equal(unsettled);
    let recorded = 0n;
    for await (const h of node.payee.store.history(since)) if (h.kind === "settle") recorded += h.amount;
    expect(recorded).to.equal(unsettled);
  });

  async function balanceOf(a: `0x${string}`): Promise<bigint> {
    return node.payee.opts.publicClient.readContract({
      address: ctx.deployment.token!,
      abi: [{ type: "function", name: "balanceOf", stateMutability: "view", inputs: [{ name: "a", type: "address" }], outputs: [{ name: "", type: "uint256" }] }] as const,
      functionName: "balanceOf",
      args: [a],
    });
  }

  it("threshold claims: a channel is claimed once its unclaimed charges pass the threshold, a payer-signed one (payerAuthorizer = 0) at its lower threshold", async () => {
    let claims: ClaimEngine | undefined;
    const second = await startPayee(ctx, routes as never, install, { onCharge: (rec) => claims?.noteCharge(rec) });
    claims = new ClaimEngine(second.payee, { threshold: 25_000n, payerSignedThreshold: 5_000n, onShutdown: false });
    const viaSessionKey = new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex("threshold-a"))), pad("0x7401", { size: 32 }));
    const selfSigned = new PayerSigns(ctx.payers[5] as LocalAccount, ctx.payers[5] as LocalAccount, pad("0x7402", { size: 32 }));
    const claimedOnChain = async (p: WirePayer) => (await readChannel(ctx.publicClient as never, CANONICAL_ADDRESSES.batchSettlement, p.channelId(accept))).totalClaimed;
    async function until(p: WirePayer, total: bigint) {
      for (let i = 0; i < 100 && (await claimedOnChain(p)) < total; i++) await new Promise((r) => setTimeout(r, 100));
    }
    try {
      // Session-key channel: 10,000 and 20,000 stay below 25,000; the third charge (30,000) claims all 30,000.
      expect((await payWith(`${second.url}/articles/1`, await viaSessionKey.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
      for (const total of [2n * PRICE, 3n * PRICE]) {
        expect((await payWith(`${second.url}/articles/1`, await viaSessionKey.voucherHeader(accept, total))).status).to.equal(200);
      }
      await until(viaSessionKey, 3n * PRICE);
      expect(await claimedOnChain(viaSessionKey)).to.equal(3n * PRICE); // had it fired at 20,000, 20,000 would be claimed
      // Payer-signed channel: its first charge (10,000 > 5,000) is claimed at once.
      expect((await payWith(`${second.url}/articles/2`, await selfSigned.depositHeader(accept, 1_000_000n, PRICE))).status).to.equal(200);
      await until(selfSigned, PRICE);
      expect(await claimedOnChain(selfSigned)).to.equal(PRICE);
      await claims.stop();
    } finally {
      await second.stop();
    }
  });

  it("payerAuthorizer = 0: vouchers are checked as the escrow checks them: a payer address with code (an EIP-7702 delegation) is asked ERC-1271, its plain ECDSA signature refused", async () => {
    const payer = new PayerSigns(ctx.payers[4] as LocalAccount, ctx.payers[4] as LocalAccount, pad("0x7702", { size: 32 }));
    // The channel is funded on chain by the payer itself: the node first meets it at its first voucher.
    await depositOnChain(ctx.chain.url, payer, accept, 1_000_000n);
    // Then the payer's address gets code whose isValidSignature refuses (here: the token's code, which has none).
    const tokenCode = await ctx.publicClient.getCode({ address: ctx.deployment.token! });
    await ctx.testClient.setCode({ address: payer.account.address, bytecode: tokenCode! });
    try {
      const r = await payWith(`${node.url}/articles/2`, await payer.voucherHeader(accept, PRICE));
      expect(r.status).to.equal(402);
      expect(r.paymentRequired.error).to.equal("invalid_batch_settlement_evm_voucher_signature");
      expect((await node.store.getChannel(payer.channelId(accept)))?.chargedCumulative ?? 0n).to.equal(0n);
    } finally {
      await ctx.testClient.setCode({ address: payer.account.address, bytecode: "0x" });
    }
  });
  it("payerAuthorizer = 0 and ERC-1271: the whole answer word must be the magic value, zero-padded, as the escrow requires; an accepted voucher is cached (its retry asks the wallet nothing)", async () => {
    const payer = new PayerSigns(ctx.payers[3] as LocalAccount, ctx.payers[3] as LocalAccount, pad("0x1271", { size: 32 }));
    await depositOnChain(ctx.chain.url, payer, accept, 1_000_000n);
    // Code that answers every call with one 32-byte word: PUSH32 word, PUSH1 0, MSTORE, PUSH1 32, PUSH1 0, RETURN.
    const answering = (word: string) => `0x7f${word}60005260206000f3` as const;
    const channelId = payer.channelId(accept);
    try {
      await ctx.testClient.setCode({ address: payer.account.address, bytecode: answering("1626ba7e" + "00".repeat(27) + "01") });
      const r = await payWith(`${node.url}/articles/3`, await payer.voucherHeader(accept, PRICE));
      expect(r.status).to.equal(402);
      expect(r.paymentRequired.error).to.equal("invalid_batch_settlement_evm_voucher_signature");
      expect((await node.store.getChannel(channelId))?.chargedCumulative ?? 0n).to.equal(0n);
      // The same voucher against a wallet whose word is exactly the magic value: accepted (a fresh signature,
      // the node caches only accepted ones).
      await ctx.testClient.setCode({ address: payer.account.address, bytecode: answering("1626ba7e" + "00".repeat(28)) });
      const ok = await payWith(`${node.url}/articles/3`, await payer.voucherHeader(accept, PRICE));
      expect(ok.status, ok.text).to.equal(200);
      // Cached per voucher: the next voucher is checked once (its handler fails, nothing is charged), and
      // its retry is served from the cache, though the wallet now refuses everything.
      const next = await payer.voucherHeader(accept, 2n * PRICE);
      expect((await payWith(`${node.url}/fail`, next)).status).to.equal(500);
      await ctx.testClient.setCode({ address: payer.account.address, bytecode: answering("00".repeat(32)) });
      const retried = await payWith(`${node.url}/articles/4`, next);
      expect(retried.status, retried.text).to.equal(200);
      // A voucher never checked before goes to the wallet, which refuses it.
      const fresh = await payWith(`${node.url}/articles/5`, await payer.voucherHeader(accept, 3n * PRICE));
      expect(fresh.paymentRequired?.error).to.equal("invalid_batch_settlement_evm_voucher_signature");
      expect((await node.store.getChannel(channelId))?.chargedCumulative).to.equal(2n * PRICE);
    } finally {
      await ctx.testClient.setCode({ address: payer.account.address, bytecode: "0x" });
    }
  });
});
