import { expect } from "chai";
import express from "express";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import { spawnSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import type { Server } from "node:http";
import net, { type AddressInfo } from "node:net";
import pino from "pino";
import { erc20Abi, keccak256, toHex, type LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { parseNodeConfig } from "../../node/payee/config";
import { routePattern } from "../../node/payee/middleware";
import { ChannelStore, type LedgerRow } from "../../node/store/channelStore";
import { readChannel } from "../../node/chain/escrow";
import { startPayeeNode, type PayeeNode } from "../../node/payee/server";
import { CANONICAL_ADDRESSES, claimBatchDigest, escrowDomain, refundDigest } from "../../node/protocol/typedData";
import { ErrorCodes } from "../../node/protocol/errors";
import { HEADERS, MAX_HEADER_BYTES, decodeBase64Json } from "../../node/protocol/wire";
import { localNodeConfig, startChain } from "../helpers/payeeHarness";
import { WirePayer, depositOnChain, fetchRequirements, payWith } from "../helpers/wirePayer";

// Hardhat's well-known test account #1 (public test key, local chains only), derived from the test mnemonic.
import { hardhatTestAccount } from "../helpers/chainNode";

/** A GET with the request target exactly as given (fetch would normalise it) and any headers. */
function rawGet(base: string, target: string, headers: Record<string, string>) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const u = new URL(base);
    http.get({ host: u.hostname, port: u.port, path: target, headers }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    }).on("error", reject);
  });
}

describe("payee node server: config, proxy, facilitator, metrics, access", function () {
  this.timeout(180_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: PayeeNode;
  let upstream: Server;
  let raw: net.Server;
  /** Requests the raw upstream saw, as "connection#:path" (answered or cut). */
  const rawSeen: string[] = [];
  /** Raw upstream connections that have closed. */
  const rawClosed = new Set<number>();
  let logText = "";
  let config: ReturnType<typeof parseNodeConfig>;
  /** Opened by a streaming test: the raw upstream's /chunked/gated and /chunked/ndjson send their rest. */
  let openGate!: () => void;
  let gate = new Promise<void>((r) => (openGate = r));
  /** Requests the express upstream saw, as "METHOD url". */
  const upSeen: string[] = [];
  /** Bytes the /big/* upstream has written so far. */
  let bigWritten = 0;
  const TOKEN = "test-admin-token-0123456789";
  /** POST /facilitator/settle on the node at `url` (admin token), answered JSON. */
  const facilitatorSettle = async (url: string, payload: unknown, requirements: unknown) =>
    (await fetch(`${url}/facilitator/settle`, { method: "POST", headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" }, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, accepted: requirements, payload }, paymentRequirements: requirements }) })).json();
  const nodeKey = keccak256(toHex("tollway-test-node-key")); // a fresh local key, funded below
  const storePath = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-server-"));

  before(async () => {
    ctx = await startChain();
    const up = express();
    up.use((req, _res, next) => {
      upSeen.push(`${req.method} ${req.originalUrl}`);
      next();
    });
    // Answers with the method, the body it read and any payment header that reached it.
    up.all("/echo/*", (req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => void res.json({ method: req.method, body, signature: req.headers["payment-signature"] ?? null, xPayment: req.headers["x-payment"] ?? null }));
    });
    up.get("/api/ok/:id", (req, res) => void res.set("Cache-Control", "public, max-age=3600").json({ id: req.params.id, from: "upstream" }));
    up.get("/api/broken", (_req, res) => void res.status(502).send("bad gateway"));
    up.get("/api/cors", (_req, res) => void res.set({ "Access-Control-Allow-Origin": "https://upstream-own.example", Vary: "Accept-Encoding" }).send("cors upstream"));
    up.get("/base/*", (req, res) =>
      void res
        .set({ "X-Upstream": "base", "Access-Control-Expose-Headers": "X-Upstream" })
        .json({ url: req.originalUrl, host: req.headers.host, signature: req.headers["payment-signature"] ?? null, authorization: req.headers.authorization ?? null, forwardedFor: req.headers["x-forwarded-for"] ?? null, forwardedProto: req.headers["x-forwarded-proto"] ?? null, forwardedHost: req.headers["x-forwarded-host"] ?? null, realIp: req.headers["x-real-ip"] ?? null, hop: req.headers["x-hop"] ?? null }));
    // 32 MiB without a length, written as fast as the connection to the node takes it.
    up.get("/big/*", async (_req, res) => {
      res.setHeader("Content-Type", "application/octet-stream");
      const chunk = Buffer.alloc(64 * 1024, 7);
      for (let i = 0; i < 512; i++) {
        bigWritten += chunk.length;
        if (!res.write(chunk)) await new Promise((r) => res.once("drain", r));
      }
      res.end();
    });
    up.get("/admin", (_req, res) => void res.send("upstream admin"));
    upstream = await new Promise((r) => {
      const s = up.listen(0, "127.0.0.1", () => r(s));
    });
    const upUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    // A raw HTTP/1.1 upstream that keeps connections alive. /flaky/*: the 2nd request on a connection is
    // cut unanswered (its idle timeout racing a reuse). /dead/*: always cut. /cutall/*: a request that is
    // not the first on its connection cuts every open connection (a restart). /pool/*: answered once three
    // are pending (three concurrent connections). /hang/*: never answered. /partial/*: headers with
    // Content-Length 100, 5 bytes, then the connection is cut. Anything else: answered.
    let conns = 0;
    const open = new Set<net.Socket>();
    const pool: Array<() => void> = [];
    raw = net.createServer((sock) => {
      const conn = ++conns;
      open.add(sock);
      sock.on("close", () => {
        open.delete(sock);
        rawClosed.add(conn);
      });
      let perConn = 0;
      let buf = "";
      sock.on("data", (d) => {
        buf += String(d);
        let end: number;
        while ((end = buf.indexOf("\r\n\r\n")) >= 0) {
          const head = buf.slice(0, end);
          buf = buf.slice(end + 4);
          const reqPath = head.split(" ")[1]!;
          perConn++;
          rawSeen.push(`${conn}:${reqPath}`);
          const answer = () => {
            const body = JSON.stringify({ path: reqPath, conn });
            sock.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: keep-alive\r\n\r\n${body}`);
          };
          if (reqPath.startsWith("/dead/") || (reqPath.startsWith("/flaky/") && perConn === 2)) {
            sock.destroy();
            return;
          }
          if (reqPath.startsWith("/cutall/") && perConn > 1) {
            for (const o of open) o.destroy();
            return;
          }
          if (reqPath.startsWith("/hang/") || reqPath.startsWith("/slow/")) continue;
          if (reqPath.startsWith("/partial/")) {
            sock.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nhalf-");
            setTimeout(() => sock.destroy(), 20);
            return;
          }
          if (reqPath.startsWith("/chunked/stall")) {
            // Headers, then nothing past the proxy's 1 s hold, then the connection is cut.
            sock.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n");
            setTimeout(() => sock.destroy(), 1_500);
            return;
          }
          if (reqPath.startsWith("/chunked/gated") || reqPath.startsWith("/chunked/ndjson")) {
            // A stream: the first chunk now, the rest once the test has seen the first one arrive.
            const type = reqPath.startsWith("/chunked/ndjson") ? "application/x-ndjson" : "text/plain";
            sock.write(`HTTP/1.1 200 OK\r\nContent-Type: ${type}\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n`);
            void gate.then(() => sock.write("5\r\nrest\n\r\n0\r\n\r\n"));
            return;
          }
          if (reqPath.startsWith("/chunked/")) {
            // Chunked (no Content-Length): /chunked/cut breaks off after one chunk, the others end.
            sock.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhalf-\r\n");
            if (reqPath.startsWith("/chunked/cut")) setTimeout(() => sock.destroy(), 20);
            else setTimeout(() => sock.write("4\r\nmore\r\n0\r\n\r\n"), 20);
            return;
          }
          if (reqPath.startsWith("/pool/")) {
            pool.push(answer);
            if (pool.length === 3) for (const a of pool.splice(0)) a();
            continue;
          }
          answer();
        }
      });
      sock.on("error", () => {});
    });
    await new Promise<void>((r) => raw.listen(0, "127.0.0.1", () => r()));
    const rawUrl = `http://127.0.0.1:${(raw.address() as AddressInfo).port}`;
    const nodeAccount = privateKeyToAccount(nodeKey);
    await ctx.testClient.setBalance({ address: nodeAccount.address, value: 10n ** 20n });
    config = parseNodeConfig(
      {
        ...localNodeConfig(ctx),
        storePath,
        listen: { port: 0, headersTimeoutMs: 1_000, corsOrigins: ["https://reader.example"] },
        adminToken: TOKEN,
        routes: { "GET /paid/:id": "$0.01", "GET /mixed/*": "$0.01" },
        proxy: {
          "GET /api/*": { upstream: upUrl, price: "$0.02" },
          "GET /echo/*": { upstream: upUrl, price: "$0.02" },
          "GET /mixed/premium/*": { upstream: `${upUrl}/base`, price: "$0.05" },
          "GET /big/*": { upstream: upUrl, price: "$0.02", timeoutMs: 300 },
          "GET /pre/*": { upstream: `${upUrl}/base/`, price: "$0.02" },
          "GET /auth/*": { upstream: upUrl.replace("http://", "http://u%40x:p%3Aw@") + "/base", price: "$0.02" },
          "GET /flaky/*": { upstream: rawUrl, price: "$0.02" },
          "GET /dead/*": { upstream: rawUrl, price: "$0.02" },
          "GET /cutall/*": { upstream: rawUrl, price: "$0.02" },
          "GET /pool/*": { upstream: rawUrl, price: "$0.02" },
          "GET /hang/*": { upstream: rawUrl, price: "$0.02" },
          "GET /partial/*": { upstream: rawUrl, price: "$0.02" },
          "GET /chunked/*": { upstream: rawUrl, price: "$0.02" },
          "GET /ok/*": { upstream: rawUrl, price: "$0.02" },
          "GET /slow/*": { upstream: rawUrl, price: "$0.02", timeoutMs: 300 },
          "GET /v1/file-:id": { upstream: `${upUrl}/base`, price: "$0.02" },
          "GET /docs/*.pdf": { upstream: `${upUrl}/base`, price: "$0.02" },
        },
        claims: { onShutdown: true },
        recoveryThreads: 2,
      },
      {},
    );
    const sink = new Writable({ write(chunk, _e, cb) { logText += String(chunk); cb(); } });
    node = await startPayeeNode(config, {
      key: nodeKey,
      logger: pino({ level: "debug" }, sink),
      install: (app) => {
        app.get("/paid/:id", (req, res) => void setTimeout(() => res.send(`paid ${req.params.id}`), Number(req.query.delay ?? 0)));
        // An error nothing answers, worded as viem words a failed RPC request (with the URL's API key).
        app.get("/boom", (_req, _res, next) => next(new Error("HTTP request failed.\n\nURL: https://rpc.example/v2/SECRET_RPC_KEY_42\nRequest body: {}")));
      },
    });
  });
  after(async () => {
    await node?.stop();
    upstream?.close();
    raw?.close();
    await ctx?.chain.stop();
  });

  it("binds 127.0.0.1 by default and reports health", async () => {
    expect(node.url).to.match(/^http:\/\/127\.0\.0\.1:\d+$/);
    const health = await fetch(`${node.url}/health`);
    const h = await health.json();
    expect(h.ok).to.equal(true);
    // The node's own surfaces: not cached, framed, sniffed or referred from.
    expect(Object.fromEntries(["cache-control", "content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy"].map((k) => [k, health.headers.get(k)]))).to.deep.equal({
      "cache-control": "no-store",
      "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
      "x-content-type-options": "nosniff",
      "x-frame-options": "DENY",
      "referrer-policy": "no-referrer",
    });
    expect(h.recovery).to.equal("native");
    expect(h.recoveryThreads).to.equal(2);
    const overridden = parseNodeConfig(localNodeConfig(ctx), { TOLLWAY_RECOVERY_THREADS: "0" });
    expect(overridden.recoveryThreads).to.equal(0);
  });

  it("a PAYMENT-SIGNATURE over 16 KiB gets the spec-shaped 400 with its code (node's header limit is above the codec's), and nothing is charged", async () => {
    const rows = async () => {
      let n = 0;
      for await (const _ of node.payee.store.ledger()) n++;
      return n;
    };
    const before = await rows();
    const res = await fetch(`${node.url}/paid/1`, { headers: { [HEADERS.paymentSignature]: "A".repeat(MAX_HEADER_BYTES + 1) } });
    expect(res.status).to.equal(400);
    expect((decodeBase64Json(res.headers.get(HEADERS.paymentRequired)!, "PAYMENT-REQUIRED") as { error: string }).error).to.equal(ErrorCodes.invalidPayload);
    expect(await rows()).to.equal(before);
    // Beyond node's own limit (4 x the codec's) the connection still gets node's 431.
    expect((await fetch(`${node.url}/paid/1`, { headers: { [HEADERS.paymentSignature]: "A".repeat(MAX_HEADER_BYTES * 4 + 1) } })).status).to.equal(431);
  });

  it("admin, metrics and facilitator endpoints refuse requests without the token", async () => {
    for (const p of ["/metrics", "/facilitator/supported", "/admin/api/summary", "/admin/api/status", "/admin/api/channels", "/admin/api/report", "/admin/api/history"]) {
      const refused = await fetch(`${node.url}${p}`);
      expect(refused.status, p).to.equal(401);
      expect(refused.headers.get("cache-control"), p).to.equal("no-store");
      expect((await fetch(`${node.url}${p}`, { headers: { Authorization: "Bearer wrong-token-wrong-token" } })).status, p).to.equal(401);
    }
    for (const p of ["/admin/api/claim", "/admin/api/settle", "/admin/api/refund", "/facilitator/verify", "/facilitator/settle"]) {
      const r = await fetch(`${node.url}${p}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
      expect(r.status, p).to.equal(401);
    }
    // A refund closes channels: an empty or non-JSON body is refused, it does not mean "all".
    for (const [type, body] of [["application/json", "{}"], ["application/x-www-form-urlencoded", "all=true"], ["application/json", '{"channels":[]}']]) {
      const r = await fetch(`${node.url}/admin/api/refund`, { method: "POST", headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": type! }, body });
      expect(r.status, body).to.equal(400);
      expect(await r.json()).to.deep.include({ error: "bad_request" }).and.to.have.property("message").that.matches(/"all": true/);
    }
    const sup = await (await fetch(`${node.url}/facilitator/supported`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json();
    expect(sup.kinds[0]).to.deep.include({ x402Version: 2, scheme: "batch-settlement", network: "eip155:31337" });
    expect(sup.kinds[0].extra.receiverAuthorizer).to.equal(node.payee.receiverAuthorizer);
  });

  it("metricsToken and facilitatorToken open only their own endpoints: a scrape or facilitator credential cannot refund", async () => {
    const tokens = { adminToken: "admin-token-0123456789", metricsToken: "metrics-token-0123456789", facilitatorToken: "facilitator-token-012345" };
    const scoped = await startPayeeNode(parseNodeConfig({ ...localNodeConfig(ctx), storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-scoped-")), ...tokens }, {}), { key: nodeKey, logger: pino({ level: "silent" }) });
    try {
      const status = async (p: string, token: string, method = "GET") =>
        (await fetch(`${scoped.url}${p}`, { method, headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" }, ...(method === "POST" ? { body: '{"all":true}' } : {}) })).status;
      const seen = {
        metrics: [await status("/metrics", tokens.metricsToken), await status("/facilitator/supported", tokens.metricsToken), await status("/admin/api/summary", tokens.metricsToken), await status("/admin/api/refund", tokens.metricsToken, "POST")],
        facilitator: [await status("/metrics", tokens.facilitatorToken), await status("/facilitator/supported", tokens.facilitatorToken), await status("/admin/api/summary", tokens.facilitatorToken), await status("/admin/api/refund", tokens.facilitatorToken, "POST")],
        admin: [await status("/metrics", tokens.adminToken), await status("/facilitator/supported", tokens.adminToken), await status("/admin/api/summary", tokens.adminToken)],
      };
      expect(seen).to.deep.equal({ metrics: [200, 401, 401, 401], facilitator: [401, 200, 401, 401], admin: [401, 401, 200] });
    } finally {
      await scoped.stop();
    }
  });

  it("reverse proxy: charges only when the upstream answers < 400, streams its body", async () => {
    const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session"))));
    const accept = (await fetchRequirements(`${node.url}/api/ok/1`)).accept;
    expect(accept.amount).to.equal("20000");
    const first = await payWith(`${node.url}/api/ok/1`, await payer.depositHeader(accept, 1_000_000n, 20_000n));
    expect(first.status, first.text).to.equal(200);
    expect(JSON.parse(first.text)).to.deep.equal({ id: "1", from: "upstream" });
    // The upstream's "public" caching does not reach a paid answer: a shared cache must not keep it.
    expect(first.res.headers.get("cache-control")).to.equal("no-store");
    const broken = await payWith(`${node.url}/api/broken`, await payer.voucherHeader(accept, 40_000n));
    expect(broken.status).to.equal(502);
    expect(broken.paymentResponse).to.equal(undefined);
    const again = await payWith(`${node.url}/api/ok/2`, await payer.voucherHeader(accept, 40_000n));
    expect(again.status).to.equal(200);
    expect(again.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("40000");
  });

  it("reverse proxy: a kept-alive upstream connection cut as it is reused is retried once on a fresh one (charged once); an upstream that never answers gets 502, uncharged", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-flaky"))));
    const accept = (await fetchRequirements(`${node.url}/flaky/1`)).accept;
    const first = await payWith(`${node.url}/flaky/1`, await payer.depositHeader(accept, 1_000_000n, 20_000n));
    expect(first.status, first.text).to.equal(200);
    const conn1 = JSON.parse(first.text).conn as number;
    const second = await payWith(`${node.url}/flaky/2`, await payer.voucherHeader(accept, 40_000n));
    expect(second.status, second.text).to.equal(200);
    expect(JSON.parse(second.text)).to.deep.equal({ path: "/flaky/2", conn: conn1 + 1 });
    expect(second.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("40000");
    // The cut attempt went out on the reused connection, the retry on a new one.
    expect(rawSeen.filter((x) => x.endsWith("/flaky/2"))).to.deep.equal([`${conn1}:/flaky/2`, `${conn1 + 1}:/flaky/2`]);

    const logBefore = logText.length;
    const dead = await payWith(`${node.url}/dead/1`, await payer.voucherHeader(accept, 60_000n));
    expect(dead.status).to.equal(502);
    expect(JSON.parse(dead.text).error).to.equal("upstream_unavailable");
    expect(dead.paymentResponse).to.equal(undefined);
    expect(logText.slice(logBefore)).to.include("upstream request failed");
    // Its connection was a new one (the flaky retry's connection is not pooled): a failure there is not retried.
    expect(rawSeen.filter((x) => x.endsWith("/dead/1"))).to.have.length(1);
    // Nothing was charged for it: the same voucher pays the next request.
    const after = await payWith(`${node.url}/flaky/3`, await payer.voucherHeader(accept, 60_000n));
    expect(after.status, after.text).to.equal(200);
    expect(after.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("60000");
  });

  it("reverse proxy: when the upstream drops every pooled connection at once, the retry opens a new one (not another stale pooled one)", async () => {
    const payers = [1, 2, 3].map((i) => new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex(`srv-session-pool-${i}`)))));
    const accept = (await fetchRequirements(`${node.url}/pool/1`)).accept;
    // Three concurrent requests: three upstream connections, all pooled afterwards.
    const first = await Promise.all(payers.map(async (p, i) => payWith(`${node.url}/pool/${i}`, await p.depositHeader(accept, 1_000_000n, 20_000n))));
    expect(first.map((r) => r.status)).to.deep.equal([200, 200, 200]);
    const pooled = new Set(first.map((r) => JSON.parse(r.text).conn as number));
    expect(pooled.size).to.equal(3);
    const r = await payWith(`${node.url}/cutall/b`, await payers[0]!.voucherHeader(accept, 40_000n));
    expect(r.status, r.text).to.equal(200);
    expect(r.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("40000");
    const attempts = rawSeen.filter((x) => x.endsWith("/cutall/b")).map((x) => Number(x.split(":")[0]));
    expect(attempts).to.have.length(2);
    expect(pooled.has(attempts[0]!) || attempts[0]! < Math.min(...pooled)).to.equal(true); // a pooled (reused) connection
    expect(attempts[1]).to.be.greaterThan(Math.max(...pooled)); // a connection opened for the retry
    expect(JSON.parse(r.text).conn).to.equal(attempts[1]);
  });

  it("reverse proxy: a client that goes away cancels the upstream request and frees the channel; a silent upstream times out with 504; an answer cut mid-body is not charged", async () => {
    const payer = new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-pool-2"))));
    const accept = (await fetchRequirements(`${node.url}/ok/1`)).accept;
    const logBefore = logText.length;
    const seenBefore = rawSeen.length;
    const ac = new AbortController();
    const hung = fetch(`${node.url}/hang/1`, { headers: { [HEADERS.paymentSignature]: await payer.voucherHeader(accept, 40_000n) }, signal: ac.signal }).catch((e: Error) => e);
    // Once the upstream has the request, the client gives up.
    for (let i = 0; i < 100 && !rawSeen.slice(seenBefore).some((x) => x.endsWith("/hang/1")); i++) await new Promise((w) => setTimeout(w, 20));
    const hangConn = Number(rawSeen.slice(seenBefore).find((x) => x.endsWith("/hang/1"))!.split(":")[0]);
    ac.abort();
    expect(await hung).to.be.instanceOf(Error);
    for (let i = 0; i < 100 && !rawClosed.has(hangConn); i++) await new Promise((w) => setTimeout(w, 20));
    expect(rawClosed.has(hangConn), "the proxy closed its upstream connection").to.equal(true);
    expect(logText.slice(logBefore)).to.not.include("upstream request failed");
    // Not charged, and the channel is free: the same voucher pays the next request.
    const ok = await payWith(`${node.url}/ok/1`, await payer.voucherHeader(accept, 40_000n));
    expect(ok.status, ok.text).to.equal(200);
    expect(ok.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("40000");

    // An upstream that stays silent past the route's timeoutMs (300 ms): 504, uncharged.
    const slow = await payWith(`${node.url}/slow/1`, await payer.voucherHeader(accept, 60_000n));
    expect(slow.status).to.equal(504);
    expect(JSON.parse(slow.text).error).to.equal("upstream_timeout");
    expect(slow.paymentResponse).to.equal(undefined);

    const partial = await payWith(`${node.url}/partial/1`, await payer.voucherHeader(accept, 60_000n)).catch((e: Error) => e);
    // Nothing of the answer left the node before it was complete: the client sees a cut connection.
    expect(partial).to.be.instanceOf(Error);
    // The same for a chunked answer without a length (received whole up to 1 MiB): cut, uncharged.
    const chunkCut = await payWith(`${node.url}/chunked/cut`, await payer.voucherHeader(accept, 60_000n)).catch((e: Error) => e);
    expect(chunkCut).to.be.instanceOf(Error);
    const chunked = await payWith(`${node.url}/chunked/whole`, await payer.voucherHeader(accept, 60_000n));
    expect([chunked.status, chunked.text, chunked.res.headers.get("content-length")]).to.deep.equal([200, "half-more", "9"]);
    expect(chunked.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("60000");
    const after = await payWith(`${node.url}/ok/2`, await payer.voucherHeader(accept, 80_000n));
    expect(after.status, after.text).to.equal(200);
    expect(after.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("80000");

    // An unsized answer that sends no byte of its body before the upstream goes away: nothing went out, nothing charged.
    const stalled = await payWith(`${node.url}/chunked/stall`, await payer.voucherHeader(accept, 100_000n)).catch((e: Error) => e);
    expect(stalled).to.be.instanceOf(Error);

    // A slow unsized answer streams after a while, an NDJSON one at once: the client reads the first chunk
    // while the upstream still holds the rest (both charged, once the first byte goes out).
    let charged = 80_000n;
    for (const p of ["/chunked/gated", "/chunked/ndjson"]) {
      charged += 20_000n;
      gate = new Promise<void>((r) => (openGate = r));
      const res = await fetch(`${node.url}${p}`, { headers: { [HEADERS.paymentSignature]: await payer.voucherHeader(accept, charged) } });
      expect(res.status, p).to.equal(200);
      expect(JSON.parse(Buffer.from(res.headers.get(HEADERS.paymentResponse)!, "base64").toString()).extra.channelState.chargedCumulativeAmount).to.equal(String(charged));
      const reader = res.body!.getReader();
      const first = await Promise.race([reader.read(), new Promise<"held">((r) => setTimeout(() => r("held"), 10_000))]);
      expect(first, `${p}: the first chunk came before the rest was sent`).to.not.equal("held");
      expect(Buffer.from((first as { value: Uint8Array }).value).toString()).to.equal("first\n");
      openGate();
      let rest = "";
      for (let c = await reader.read(); !c.done; c = await reader.read()) rest += Buffer.from(c.value).toString();
      expect(rest, p).to.equal("rest\n");
    }
  });

  it("route matching: the proxy forwards only what the payment middleware charges for (params and wildcards inside a segment, any letter case); an express route answering /PAID is not served unpaid", async () => {
    for (const p of ["/v1/file-42", "/docs/a/report.pdf", "/API/ok/1", "/PAID/1", "/Paid/2/"]) {
      const r = await fetch(`${node.url}${p}`);
      expect(r.status, p).to.equal(402);
      expect(r.headers.get(HEADERS.paymentRequired), p).to.be.a("string");
    }
    // HEAD runs the GET handler (its headers would leak unpaid): it pays as a GET.
    expect((await fetch(`${node.url}/paid/1`, { method: "HEAD" })).status).to.equal(402);
    // Keys express would read as optional parts or regular expressions are refused at startup.
    for (const key of ["GET /articles/:id?", "GET /docs/:id(\\d+)", "GET /ab?c", "GET /a+"]) expect(() => routePattern(key), key).to.throw(/not supported/);
    // Not a paid route, and not proxied either.
    expect((await fetch(`${node.url}/docs/a/report.txt`)).status).to.equal(404);
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-match"))));
    const accept = (await fetchRequirements(`${node.url}/v1/file-42`)).accept;
    const paid = await payWith(`${node.url}/v1/file-42`, await payer.depositHeader(accept, 100_000n, 20_000n));
    expect(paid.status, paid.text).to.equal(200);
    expect(JSON.parse(paid.text).url).to.equal("/base/v1/file-42");
    // A paid HEAD is forwarded as a HEAD (headers, no body) and charged like the GET.
    const head = await payWith(`${node.url}/v1/file-42`, await payer.voucherHeader(accept, 40_000n), { method: "HEAD" });
    expect(head.status).to.equal(200);
    expect(head.text).to.equal("");
    expect(head.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("40000");
  });

  it("reverse proxy: an upstream base path prefixes the request path and query; the payment header stays here", async () => {
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-3"))));
    const accept = (await fetchRequirements(`${node.url}/pre/a/b?q=1&r=%20x`)).accept;
    const r = await payWith(`${node.url}/pre/a/b?q=1&r=%20x`, await payer.depositHeader(accept, 1_000_000n, 20_000n));
    expect(r.status, r.text).to.equal(200);
    const seen = JSON.parse(r.text);
    expect(seen.url).to.equal("/base/pre/a/b?q=1&r=%20x");
    expect(seen.signature).to.equal(null);
    expect(seen.host).to.match(/^127\.0\.0\.1:\d+$/);
    expect(r.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("20000");
  });

  it("reverse proxy: credentials in the upstream URL go out as Basic auth; dot segments are refused uncharged", async () => {
    const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-4"))));
    const accept = (await fetchRequirements(`${node.url}/auth/z`)).accept;
    const r = await payWith(`${node.url}/auth/z`, await payer.depositHeader(accept, 1_000_000n, 20_000n));
    expect(r.status, r.text).to.equal(200);
    expect(JSON.parse(r.text)).to.include({ url: "/base/auth/z", authorization: `Basic ${Buffer.from("u@x:p:w").toString("base64")}` });
    // fetch would normalise "..": send the raw request line
    const voucher = await payer.voucherHeader(accept, 40_000n);
    for (const p of ["/api/../admin", "/api/%2e%2e/admin", "/api/..%2fadmin"]) {
      const raw = await rawGet(node.url, p, { [HEADERS.paymentSignature]: voucher });
      expect(raw.status, `${p}: ${raw.body}`).to.equal(400);
      expect(raw.body).to.not.include("upstream admin");
      expect(raw.headers["payment-response"], p).to.equal(undefined);
    }
    // the voucher was not consumed by the refused requests
    const ok = await payWith(`${node.url}/api/ok/4`, voucher);
    expect(ok.status, ok.text).to.equal(200);
    expect(ok.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("40000");
  });

  it("reverse proxy: only a plain path goes out (a '#', '..;' or an absolute-form target is refused uncharged); forwarding headers are the node's, not the client's; the upstream cannot hide PAYMENT-RESPONSE from browsers", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-targets"))));
    const accept = (await fetchRequirements(`${node.url}/pre/t`)).accept;
    const first = await rawGet(node.url, "/pre/t", {
      [HEADERS.paymentSignature]: await payer.depositHeader(accept, 1_000_000n, 20_000n),
      "X-Forwarded-For": "10.0.0.1",
      "X-Real-IP": "10.0.0.2",
      Connection: "keep-alive, X-Hop",
      "X-Hop": "drop me",
    });
    expect(first.status, first.body).to.equal(200);
    expect(JSON.parse(first.body)).to.include({ forwardedFor: "127.0.0.1", forwardedProto: "http", forwardedHost: new URL(node.url).host, realIp: null, hop: null });
    // The middleware's expose list and the upstream's, both.
    expect(first.headers["access-control-expose-headers"]).to.include("PAYMENT-RESPONSE").and.to.include("X-Upstream");
    const voucher = await payer.voucherHeader(accept, 40_000n);
    for (const target of ["/api/x#/../../admin", "/api/..;/admin", "/api/.%2e%3bx/admin", `http://internal-admin.example/api/ok/1`]) {
      const raw = await rawGet(node.url, target, { [HEADERS.paymentSignature]: voucher });
      expect(raw.status, `${target}: ${raw.body}`).to.equal(400);
      expect(JSON.parse(raw.body).error, target).to.equal("invalid_path");
      expect(raw.headers["payment-response"], target).to.equal(undefined);
    }
    const ok = await payWith(`${node.url}/pre/t2`, voucher);
    expect(ok.status, ok.text).to.equal(200);
    expect(ok.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("40000");
  });

  it("reverse proxy: a body on a GET goes out framed (chunked, or its Content-Length even when Connection lists it), so it cannot reach the upstream as a second, unpaid request; X-PAYMENT stays here", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-smuggle"))));
    const accept = (await fetchRequirements(`${node.url}/echo/a`)).accept;
    const smuggled = "POST /echo/smuggled HTTP/1.1\r\nHost: upstream\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 0\r\n\r\n";
    /** One request written as raw bytes on its own connection; the answer's status and body. */
    const rawRequest = (bytes: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const u = new URL(node.url);
        const sock = net.connect(Number(u.port), u.hostname, () => sock.write(bytes));
        let got = "";
        sock.on("data", (d) => {
          got += String(d);
          const end = got.indexOf("\r\n\r\n");
          const length = Number(/content-length: (\d+)/i.exec(got.slice(0, end))?.[1]);
          if (end >= 0 && got.length - end - 4 >= length) {
            sock.destroy();
            resolve({ status: Number(got.split(" ")[1]), body: got.slice(end + 4, end + 4 + length) });
          }
        });
        sock.on("error", reject);
      });
    const seenBefore = upSeen.length;
    const chunked = await rawRequest(
      `GET /echo/a HTTP/1.1\r\nHost: node\r\n${HEADERS.paymentSignature}: ${await payer.depositHeader(accept, 1_000_000n, 20_000n)}\r\n` +
        `X-PAYMENT: v1-envelope\r\nTransfer-Encoding: chunked\r\n\r\n${Buffer.byteLength(smuggled).toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`,
    );
    expect(chunked.status, chunked.body).to.equal(200);
    expect(JSON.parse(chunked.body)).to.deep.equal({ method: "GET", body: smuggled, signature: null, xPayment: null });
    const sized = await rawRequest(
      `GET /echo/b HTTP/1.1\r\nHost: node\r\n${HEADERS.paymentSignature}: ${await payer.voucherHeader(accept, 40_000n)}\r\n` +
        `Connection: keep-alive, content-length\r\nContent-Length: ${Buffer.byteLength(smuggled)}\r\n\r\n${smuggled}`,
    );
    expect(sized.status, sized.body).to.equal(200);
    expect(JSON.parse(sized.body).body).to.equal(smuggled);
    // A smuggled request would be read after the answer on the pooled connection: give it time to show.
    await new Promise((r) => setTimeout(r, 300));
    expect(upSeen.slice(seenBefore)).to.deep.equal(["GET /echo/a", "GET /echo/b"]);
  });

  it("listen.corsOrigins: a browser payer on a listed origin gets its preflight answered (unpaid) and reads the payment headers; another origin and the admin API get no CORS", async () => {
    const reader = "https://reader.example";
    const preflight = await fetch(`${node.url}/api/ok/1`, { method: "OPTIONS", headers: { Origin: reader, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "payment-signature" } });
    expect(preflight.status).to.equal(204);
    expect(preflight.headers.get("access-control-allow-origin")).to.equal(reader);
    expect(preflight.headers.get("access-control-allow-headers")).to.equal("payment-signature");
    expect(preflight.headers.get(HEADERS.paymentRequired)).to.equal(null); // not a payment answer
    const unpaid = await fetch(`${node.url}/api/ok/1`, { headers: { Origin: reader } });
    expect(unpaid.status).to.equal(402);
    expect(unpaid.headers.get("access-control-allow-origin")).to.equal(reader);
    expect(unpaid.headers.get("access-control-expose-headers")).to.include(HEADERS.paymentRequired).and.include(HEADERS.paymentResponse);
    expect(unpaid.headers.get("vary")).to.match(/Origin/);
    const elsewhere = await fetch(`${node.url}/api/ok/1`, { headers: { Origin: "https://evil.example" } });
    expect(elsewhere.headers.get("access-control-allow-origin")).to.equal(null);
    const admin = await fetch(`${node.url}/admin/api/status`, { headers: { Origin: reader, Authorization: `Bearer ${TOKEN}` } });
    expect(admin.headers.get("access-control-allow-origin")).to.equal(null);
    // The node's own surfaces answer no preflight either (a page could not even send to them).
    for (const own of ["/health", "/metrics", "/admin/api/status", "/facilitator/supported"]) {
      const p = await fetch(`${node.url}${own}`, { method: "OPTIONS", headers: { Origin: reader, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization" } });
      expect(p.headers.get("access-control-allow-origin"), own).to.equal(null);
      expect(p.headers.get("access-control-allow-headers"), own).to.equal(null);
    }
    // A paid answer to the listed origin is readable too.
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-cors"))));
    const accept = (await fetchRequirements(`${node.url}/api/ok/1`)).accept;
    const paid = await fetch(`${node.url}/api/ok/9`, { headers: { Origin: reader, [HEADERS.paymentSignature]: await payer.depositHeader(accept, 100_000n, 20_000n) } });
    expect(paid.status).to.equal(200);
    expect(paid.headers.get("access-control-allow-origin")).to.equal(reader);
    expect(paid.headers.get(HEADERS.paymentResponse)).to.be.a("string");
    // An upstream's own CORS answer does not replace the node's for a listed origin (the payer could not
    // read what it paid for); Vary keeps both.
    const proxied = await fetch(`${node.url}/api/cors`, { headers: { Origin: reader, [HEADERS.paymentSignature]: await payer.voucherHeader(accept, 40_000n) } });
    expect(proxied.status).to.equal(200);
    expect(proxied.headers.get("access-control-allow-origin")).to.equal(reader);
    expect(proxied.headers.get("vary")).to.match(/Origin/).and.match(/Accept-Encoding/);
  });

  it("reverse proxy behind the operator's own proxy (listen.trustProxy): its X-Forwarded-* are passed on, extended", async () => {
    const behind = await startPayeeNode(
      { ...config, storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-trusted-")), listen: { ...config.listen, port: 0, trustProxy: true } },
      { key: nodeKey, logger: pino({ level: "silent" }) },
    );
    try {
      const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-trusted"))));
      const accept = (await fetchRequirements(`${behind.url}/pre/t`)).accept;
      const r = await rawGet(behind.url, "/pre/t", {
        [HEADERS.paymentSignature]: await payer.depositHeader(accept, 1_000_000n, 20_000n),
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "shop.example",
      });
      expect(r.status, r.body).to.equal(200);
      expect(JSON.parse(r.body)).to.include({ forwardedFor: "203.0.113.7, 127.0.0.1", forwardedProto: "https", forwardedHost: "shop.example" });
    } finally {
      await behind.stop();
    }
  });

  it("reverse proxy: forwards by the route it charged for: a config route's price never opens a dearer proxied route under it", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-mixed"))));
    // "GET /mixed/*" ($0.01, no handler) comes first and takes /mixed/premium/x: it is not forwarded to the
    // $0.05 upstream at $0.01 (a 404 from the app, uncharged).
    const accept = (await fetchRequirements(`${node.url}/mixed/premium/x`)).accept;
    expect(accept.amount).to.equal("10000");
    const r = await payWith(`${node.url}/mixed/premium/x`, await payer.depositHeader(accept, 1_000_000n, 10_000n));
    expect(r.status, r.text).to.equal(404);
    expect(r.text).to.not.include("/base/");
    expect(r.paymentResponse).to.equal(undefined);
  });

  it("reverse proxy: a client that stops reading holds the upstream back (backpressure), past the upstream idle timeout, and still gets the whole body", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-big"))));
    const accept = (await fetchRequirements(`${node.url}/big/1`)).accept;
    const header = await payer.depositHeader(accept, 1_000_000n, 20_000n);
    bigWritten = 0;
    const u = new URL(node.url);
    const result = await new Promise<{ status: number; received: number; writtenWhilePaused: number }>((resolve, reject) => {
      http.get({ host: u.hostname, port: u.port, path: "/big/1", headers: { [HEADERS.paymentSignature]: header } }, (res) => {
        let received = 0;
        res.on("data", (d: Buffer) => (received += d.length));
        res.pause();
        // Read nothing for 1.5 s: five times the route's 300 ms upstream idle timeout.
        setTimeout(() => {
          const writtenWhilePaused = bigWritten;
          res.resume();
          res.on("end", () => resolve({ status: res.statusCode ?? 0, received, writtenWhilePaused }));
        }, 1_500);
      }).on("error", reject);
    });
    expect(result.status).to.equal(200);
    expect(result.received).to.equal(32 * 1024 * 1024);
    // Without backpressure the node took all 32 MiB into memory. With it, what the upstream wrote while the
    // client read nothing is what the four loopback socket buffers hold (autotuned: 11-13 MiB measured here)
    // plus the MiB the proxy holds back before an unsized answer streams.
    expect(result.writtenWhilePaused).to.be.below(16 * 1024 * 1024);
  });

  it("a connection that sends its headers too slowly is closed (listen.headersTimeoutMs)", async () => {
    const u = new URL(node.url);
    const sock = net.connect(Number(u.port), u.hostname);
    const started = Date.now();
    const outcome = await new Promise<string>((resolve) => {
      sock.on("connect", () => sock.write("GET /health HTTP/1.1\r\nHost: x\r\n"));
      sock.on("data", (d) => resolve(String(d).split("\r\n")[0]!));
      sock.on("close", () => resolve("closed"));
      setTimeout(() => resolve("still open"), 5_000);
    });
    sock.destroy();
    expect(outcome).to.match(/^(HTTP\/1.1 408|closed)/);
    expect(Date.now() - started).to.be.below(4_000);
  });

  it("an error no handler answered gets a JSON 500 without the error's text; the log has it without the RPC URL's secrets", async () => {
    const r = await fetch(`${node.url}/boom`);
    expect(r.status).to.equal(500);
    expect(r.headers.get("content-type")).to.match(/^application\/json/);
    const body = await r.text();
    expect(JSON.parse(body).error).to.equal("internal_error");
    expect(body).to.not.include("SECRET_RPC_KEY_42");
    expect(logText).to.include("unhandled error");
    expect(logText).to.not.include("SECRET_RPC_KEY_42");
  });

  it("facilitator /verify checks a voucher against the chain; /settle claims and settles", async () => {
    const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session"))));
    const accept = (await fetchRequirements(`${node.url}/api/ok/1`)).accept;
    const auth = { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" };
    const voucher = await payer.voucher(accept, 40_000n);
    const payload = { type: "voucher", channelConfig: payer.config(accept), voucher };
    const ok = await (await fetch(`${node.url}/facilitator/verify`, { method: "POST", headers: auth, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, accepted: accept, payload }, paymentRequirements: accept }) })).json();
    expect(ok.isValid).to.equal(true);
    expect(ok.extra.balance).to.equal("1000000");
    const forged = { ...payload, voucher: { ...voucher, maxClaimableAmount: "50000" } };
    const bad = await (await fetch(`${node.url}/facilitator/verify`, { method: "POST", headers: auth, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, accepted: accept, payload: forged }, paymentRequirements: accept }) })).json();
    expect(bad).to.include({ isValid: false, invalidReason: "invalid_batch_settlement_evm_voucher_signature", payer: payer.account.address });
    // the terms the payload accepted must be the requirements verified against
    const elsewhere = await (await fetch(`${node.url}/facilitator/verify`, { method: "POST", headers: auth, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, accepted: { ...accept, network: "eip155:1" }, payload }, paymentRequirements: accept }) })).json();
    expect(elsewhere).to.include({ isValid: false, invalidReason: "invalid_batch_settlement_evm_network_mismatch" });
    // a claim the node may not send itself (neither receiver nor receiverAuthorizer) is refused before any simulation
    const stranger = "0x000000000000000000000000000000000000dEaD";
    const foreign = { type: "claim", claims: [{ voucher: { channel: { ...payer.config(accept), receiver: stranger, receiverAuthorizer: stranger }, maxClaimableAmount: "40000" }, signature: voucher.signature, totalClaimed: "40000" }] };
    const refused = await (await fetch(`${node.url}/facilitator/settle`, { method: "POST", headers: auth, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, payload: foreign } }) })).json();
    expect(refused).to.include({ success: false, errorReason: "invalid_batch_settlement_evm_authorizer_address_mismatch" });
    const claim = { type: "claim", claims: [{ voucher: { channel: payer.config(accept), maxClaimableAmount: "40000" }, signature: voucher.signature, totalClaimed: "40000" }] };
    const claimed = await (await fetch(`${node.url}/facilitator/settle`, { method: "POST", headers: auth, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, payload: claim } }) })).json();
    expect(claimed.success, JSON.stringify(claimed)).to.equal(true);
    const settle = { type: "settle", receiver: node.payee.opts.receiver, token: ctx.deployment.token };
    const settled = await (await fetch(`${node.url}/facilitator/settle`, { method: "POST", headers: auth, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, payload: settle } }) })).json();
    expect(settled).to.include({ success: true, amount: "40000" });
    void CANONICAL_ADDRESSES;
  });

  it("facilitator: /verify refuses a deposit the payer cannot fund; a refund is bound to the channel's refundNonce, so a retried /settle does not refund twice", async () => {
    const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-fac"))));
    const accept = (await fetchRequirements(`${node.url}/api/ok/1`)).accept;
    const auth = { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" };
    const payloadOf = (header: string) => JSON.parse(Buffer.from(header, "base64").toString("utf8")).payload;
    const post = async (path: string, payload: unknown) =>
      (await fetch(`${node.url}/facilitator${path}`, { method: "POST", headers: auth, body: JSON.stringify({ x402Version: 2, paymentPayload: { x402Version: 2, accepted: accept, payload }, paymentRequirements: accept }) })).json();
    const unfunded = payloadOf(await payer.depositHeader(accept, 10n ** 15n, 20_000n));
    expect(await post("/verify", unfunded)).to.include({ isValid: false, invalidReason: "invalid_batch_settlement_evm_insufficient_balance" });
    // A deposit /settle could not make is not valid at /verify: its ERC-3009 signature is simulated with it.
    const forged = payloadOf(await payer.depositHeader(accept, 100_000n, 20_000n));
    const signature = forged.deposit.authorization.erc3009Authorization.signature as string;
    forged.deposit.authorization.erc3009Authorization.signature = signature.slice(0, 10) + (signature[10] === "a" ? "b" : "a") + signature.slice(11);
    expect(await post("/verify", forged)).to.include({ isValid: false, invalidReason: "invalid_batch_settlement_evm_deposit_simulation_failed" });
    // Codes at /settle: a voucher is no settle action's payload; an unknown type is an unknown action; a refund
    // amount must be a positive integer; a v1 payload is the wrong version.
    const settleRaw = async (body: unknown) => (await fetch(`${node.url}/facilitator/settle`, { method: "POST", headers: auth, body: JSON.stringify(body) })).json();
    const voucherOnly = payloadOf(await payer.voucherHeader(accept, 20_000n));
    expect(await post("/settle", voucherOnly)).to.include({ success: false, errorReason: "invalid_batch_settlement_evm_payload_type" });
    expect(await post("/settle", { ...voucherOnly, type: "burn" })).to.include({ success: false, errorReason: "invalid_batch_settlement_evm_unknown_settle_action" });
    for (const amount of ["0", "-5", "1e6", 7]) {
      const r = await post("/settle", { ...payloadOf(await payer.refundHeader(accept, 0n)), amount, refundNonce: "0" });
      expect(r, String(amount)).to.include({ success: false, errorReason: "invalid_batch_settlement_evm_refund_amount_invalid" });
    }
    expect(await settleRaw({ x402Version: 1, paymentPayload: { x402Version: 1, payload: voucherOnly }, paymentRequirements: accept })).to.include({ success: false, errorReason: "invalid_x402_version" });
    expect((await payWith(`${node.url}/api/ok/1`, await payer.depositHeader(accept, 100_000n, 20_000n))).status).to.equal(200);
    const id = payer.channelId(accept);
    const voucher = await payer.voucher(accept, 20_000n);
    const refund = {
      ...payloadOf(await payer.refundHeader(accept, 20_000n, 30_000n)),
      refundNonce: "0",
      claims: [{ voucher: { channel: payer.config(accept), maxClaimableAmount: "20000" }, signature: voucher.signature, totalClaimed: "20000" }],
    };
    const { refundNonce: _omitted, ...withoutNonce } = refund;
    expect(await post("/settle", withoutNonce)).to.include({ success: false, errorReason: "invalid_batch_settlement_evm_refund_payload" });
    const first = await post("/settle", refund);
    expect(first, JSON.stringify(first)).to.deep.include({ success: true, amount: "30000" });
    expect(first.extra.channelState).to.include({ balance: "70000", totalClaimed: "20000", refundNonce: "1" });
    const again = await post("/settle", refund);
    expect(again).to.include({ success: false, errorReason: "invalid_batch_settlement_evm_refund_payload" });
    expect(again.errorMessage).to.match(/refundNonce 0 is not the channel's \(1\)/);
    // The same refund sent twice at once (a client retrying while the first confirms): paid once.
    const next = { ...payloadOf(await payer.refundHeader(accept, 20_000n, 10_000n)), refundNonce: "1" };
    const both = await Promise.all([post("/settle", next), post("/settle", next)]);
    expect(both.map((r: { success: boolean }) => r.success).sort()).to.deep.equal([false, true]);
    const onchain = await readChannel(node.payee.opts.publicClient, CANONICAL_ADDRESSES.batchSettlement, id);
    expect(onchain.balance).to.equal(60_000n);
  });

  it("facilitator: a deposit or refund that is mined is a success even when the channel cannot be read back after it (the state then comes from what was verified and the receipt)", async () => {
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-fac-readback"))));
    const accept = (await fetchRequirements(`${node.url}/api/ok/1`)).accept;
    const real = node.payee.opts.publicClient;
    const realSender = node.payee.opts.sender;
    // Once a transaction is mined, reads of the channel fail (an RPC that went away); everything else goes through.
    let failReads = false;
    const failing = new Proxy(real, {
      get(target, key) {
        if (key === "readContract") {
          return (args: { functionName: string }) => (failReads && args.functionName === "channels" ? Promise.reject(new Error("rpc unreachable")) : target.readContract(args as never));
        }
        return Reflect.get(target, key);
      },
    });
    const sender = Object.create(realSender, {
      send: {
        value: async (p: never) => {
          const sent = await realSender.send(p);
          failReads = true;
          return sent;
        },
      },
    });
    const payee = Object.create(node.payee, { opts: { value: { ...node.payee.opts, publicClient: failing, sender } } });
    const { Facilitator } = await import("../../node/payee/facilitator");
    const facilitator = new Facilitator(payee);
    const payloadOf = (header: string) => JSON.parse(Buffer.from(header, "base64").toString("utf8")).payload;
    type Settled = { success: boolean; transaction: string; amount: string; extra: { channelState: Record<string, unknown> } };
    const deposit = (await facilitator.settle(payloadOf(await payer.depositHeader(accept, 100_000n, 20_000n)), accept)) as Settled;
    expect(deposit.success).to.equal(true);
    expect(deposit.transaction).to.match(/^0x[0-9a-f]{64}$/);
    expect(deposit.extra.channelState).to.include({ balance: "100000", totalClaimed: "0", refundNonce: "0" });
    failReads = false;
    const refundPayload = { ...payloadOf(await payer.refundHeader(accept, 0n, 30_000n)), refundNonce: "0" };
    const refund = (await facilitator.settle(refundPayload, accept)) as Settled;
    expect(refund.success, JSON.stringify(refund)).to.equal(true);
    expect(refund.amount).to.equal("30000");
    expect(refund.extra.channelState).to.include({ balance: "70000", totalClaimed: "0", refundNonce: "1" });
    const onchain = await readChannel(real, CANONICAL_ADDRESSES.batchSettlement, payer.channelId(accept));
    expect([onchain.balance, onchain.refundNonce]).to.deep.equal([70_000n, 1n]);
  });

  it("exports Prometheus metrics and never logs the node key", async () => {
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-2"))));
    const accept = (await fetchRequirements(`${node.url}/paid/1`)).accept;
    expect((await payWith(`${node.url}/paid/1`, await payer.depositHeader(accept, 100_000n, 10_000n))).status).to.equal(200);
    const m = await (await fetch(`${node.url}/metrics`, { headers: { Authorization: `Bearer ${TOKEN}` } })).text();
    expect(m).to.match(/tollway_paid_requests_total\{route="GET \/paid\/:id"\} 1/);
    expect(m).to.include("tollway_payment_latency_seconds_bucket");
    const exposure = Number(/tollway_unclaimed_exposure_atomic (\d+)/.exec(m)?.[1]);
    expect(exposure).to.be.at.least(10_000);
    // The exposure sum scans every channel record: a scrape within 30 s of the last scan reuses it.
    expect((await payWith(`${node.url}/paid/2`, await payer.voucherHeader(accept, 20_000n))).status).to.equal(200);
    const again = await (await fetch(`${node.url}/metrics`, { headers: { Authorization: `Bearer ${TOKEN}` } })).text();
    expect(again).to.match(/tollway_paid_requests_total\{route="GET \/paid\/:id"\} 2/);
    // Revenue by route and verification alone, by kind, moved by the one voucher between the scrapes.
    const metric = (text: string, series: string) => Number(text.split("\n").find((l) => l.startsWith(`${series} `))?.slice(series.length + 1) ?? NaN);
    expect(metric(again, 'tollway_revenue_atomic_total{route="GET /paid/:id"}') - metric(m, 'tollway_revenue_atomic_total{route="GET /paid/:id"}')).to.equal(10_000);
    expect(metric(again, 'tollway_verification_seconds_count{kind="voucher"}') - (metric(m, 'tollway_verification_seconds_count{kind="voucher"}') || 0)).to.equal(1);
    expect(metric(again, 'tollway_verification_seconds_count{kind="deposit"}')).to.equal(metric(m, 'tollway_verification_seconds_count{kind="deposit"}'));
    expect(metric(m, 'tollway_verification_seconds_count{kind="deposit"}')).to.be.at.least(1);
    expect(Number(/tollway_unclaimed_exposure_atomic (\d+)/.exec(again)?.[1])).to.equal(exposure);
    expect(Number(/tollway_chain_view_age_seconds ([\d.e-]+)/.exec(again)?.[1])).to.be.within(0, 60);
    expect(again).to.match(/tollway_watcher_failed_polls 0/);
    expect(logText.length).to.be.greaterThan(0);
    expect(logText).to.not.include(nodeKey.slice(2));
    expect(logText.toLowerCase()).to.not.include(nodeKey.slice(2).toLowerCase());
    void hardhatTestAccount;
  });

  it("facilitator: a refund of a channel this node serves claims the node's unclaimed charges first, whoever asks and whatever rows they send", async () => {
    const payer = new WirePayer(ctx.payers[4] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-own-refund"))));
    const accept = (await fetchRequirements(`${node.url}/paid/1`)).accept;
    expect((await payWith(`${node.url}/paid/1`, await payer.depositHeader(accept, 100_000n, 10_000n))).status).to.equal(200);
    expect((await payWith(`${node.url}/paid/2`, await payer.voucherHeader(accept, 20_000n))).status).to.equal(200);
    const id = payer.channelId(accept);
    // A facilitator client asks for a refund with the minimal requirements and no claim rows: the payer's
    // zero-charge voucher, as if nothing had been charged.
    const refund = { type: "refund", channelConfig: payer.config(accept), voucher: await payer.voucher(accept, 0n), refundNonce: "0" };
    const minimal = { scheme: "batch-settlement", network: "eip155:31337", asset: accept.asset, amount: "0", payTo: accept.payTo, maxTimeoutSeconds: 0, extra: {} };
    const answer = await facilitatorSettle(node.url, refund, minimal);
    expect(answer, JSON.stringify(answer)).to.deep.include({ success: true, amount: "80000" });
    const onchain = await readChannel(node.payee.opts.publicClient, node.payee.opts.escrow, id);
    expect([onchain.balance, onchain.totalClaimed]).to.deep.equal([20_000n, 20_000n]); // the charges stayed, claimed
    // The node's own books follow at once, as for its own refunds: the record is done, the history has it.
    expect(await node.store.getChannel(id)).to.equal(undefined);
    const events: Array<{ kind: string; txHash: string }> = [];
    for await (const h of node.store.history()) events.push(h);
    expect(events.some((h) => h.kind === "refund" && h.txHash === answer.transaction)).to.equal(true);
  });

  it("facilitator, signed paths: for a resource server holding its own receiverAuthorizer key the node claims (claimWithSignature) and refunds (refundWithSignature); unsigned, it does not act for that key", async () => {
    const serverKey = privateKeyToAccount(keccak256(toHex("resource-server-authorizer")));
    const base = (await fetchRequirements(`${node.url}/paid/1`)).accept;
    const accept = { ...base, payTo: serverKey.address, extra: { ...base.extra, receiverAuthorizer: serverKey.address } };
    const payer = new WirePayer(ctx.payers[3] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-signed-paths"))));
    await depositOnChain(ctx.chain.url, payer, accept, 100_000n);
    const id = payer.channelId(accept);
    const domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement);
    const read = () => readChannel(node.payee.opts.publicClient, node.payee.opts.escrow, id);
    const config = payer.config(accept);
    const { signature } = await payer.voucher(accept, 30_000n);
    const claims = [{ voucher: { channel: config, maxClaimableAmount: "30000" }, signature, totalClaimed: "30000" }];
    const network = { network: "eip155:31337" };
    const unsigned = await facilitatorSettle(node.url, { type: "claim", claims }, network);
    expect(unsigned.success, JSON.stringify(unsigned)).to.equal(false);
    expect((await read()).totalClaimed).to.equal(0n);
    const claimAuthorizerSignature = await serverKey.sign({ hash: claimBatchDigest(domain, [{ voucher: { channel: config, maxClaimableAmount: 30_000n }, signature, totalClaimed: 30_000n }]) });
    const claimed = await facilitatorSettle(node.url, { type: "claim", claims, claimAuthorizerSignature }, network);
    expect(claimed, JSON.stringify(claimed)).to.deep.include({ success: true });
    expect((await read()).totalClaimed).to.equal(30_000n);
    // The rest goes back to the payer, the refund signed by the server's key for the channel's nonce and the amount.
    const { refundNonce } = await read();
    const refundAuthorizerSignature = await serverKey.sign({ hash: refundDigest(domain, id, refundNonce, 70_000n) });
    const balanceOf = () => ctx.publicClient.readContract({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "balanceOf", args: [payer.account.address] });
    const before = await balanceOf();
    const refund = { type: "refund", channelConfig: config, voucher: await payer.voucher(accept, 30_000n), refundNonce: refundNonce.toString(), amount: "70000", refundAuthorizerSignature };
    const minimal = { scheme: "batch-settlement", network: "eip155:31337", asset: accept.asset, amount: "0", payTo: accept.payTo, maxTimeoutSeconds: 0, extra: {} };
    const refunded = await facilitatorSettle(node.url, refund, minimal);
    expect(refunded, JSON.stringify(refunded)).to.deep.include({ success: true });
    expect((await balanceOf()) - before).to.equal(70_000n);
    expect((await read()).balance).to.equal(30_000n); // what was claimed stays for the server's settle
  });

  it("facilitator: a deposit and refund past the payer's relay limit (relay.perPayerPerHour) are refused, and nothing is sent", async () => {
    const limited = await startPayeeNode(parseNodeConfig({ ...localNodeConfig(ctx), storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-relay-")), adminToken: TOKEN, relay: { perPayerPerHour: 1 } }, {}), { key: nodeKey, logger: pino({ level: "silent" }) });
    try {
      const payer = new WirePayer(ctx.payers[5] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-relay-limit"))));
      const accept = (await fetchRequirements(`${node.url}/paid/1`)).accept; // the same key, chain and asset
      const payload = (header: string) => JSON.parse(Buffer.from(header, "base64").toString("utf8")).payload;
      const deposited = await facilitatorSettle(limited.url, payload(await payer.depositHeader(accept, 100_000n, 10_000n)), accept);
      expect(deposited, JSON.stringify(deposited)).to.include({ success: true });
      const nonce = await ctx.publicClient.getTransactionCount({ address: limited.payee.opts.sender.address });
      const again = await facilitatorSettle(limited.url, payload(await payer.depositHeader(accept, 100_000n, 10_000n)), accept);
      expect(again, JSON.stringify(again)).to.include({ success: false, errorReason: "relay_rate_limited" });
      const minimal = { scheme: "batch-settlement", network: "eip155:31337", asset: accept.asset, amount: "0", payTo: accept.payTo, maxTimeoutSeconds: 0, extra: {} };
      const refund = { type: "refund", channelConfig: payer.config(accept), voucher: await payer.voucher(accept, 0n), refundNonce: "0" };
      const refused = await facilitatorSettle(limited.url, refund, minimal);
      expect(refused, JSON.stringify(refused)).to.include({ success: false, errorReason: "relay_rate_limited" });
      expect(refused.errorMessage).to.include("withdraw on chain");
      expect(await ctx.publicClient.getTransactionCount({ address: limited.payee.opts.sender.address })).to.equal(nonce);
      const onchain = await readChannel(limited.payee.opts.publicClient, limited.payee.opts.escrow, payer.channelId(accept));
      expect([onchain.balance, onchain.totalClaimed]).to.deep.equal([100_000n, 0n]);
    } finally {
      await limited.stop();
    }
  });

  it("listen.tls: the node serves HTTPS; a TLS key file others can read is refused", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-node-tls-"));
    const gen = spawnSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", path.join(dir, "key.pem"), "-out", path.join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], { encoding: "utf8" });
    expect(gen.status, gen.stderr).to.equal(0);
    fs.chmodSync(path.join(dir, "key.pem"), 0o600);
    const tlsConfig = (storeDir: string) =>
      parseNodeConfig({ ...localNodeConfig(ctx), storePath: storeDir, listen: { port: 0, tls: { certFile: path.join(dir, "cert.pem"), keyFile: path.join(dir, "key.pem") } } }, {});
    const silent = pino({ level: "silent" });
    const secure = await startPayeeNode(tlsConfig(fs.mkdtempSync(path.join(os.tmpdir(), "tollway-tls-store-"))), { key: nodeKey, logger: silent });
    try {
      expect(secure.url).to.match(/^https:\/\/127\.0\.0\.1:\d+$/);
      const health = await new Promise<number>((resolve, reject) => {
        https.get(`${secure.url}/health`, { ca: fs.readFileSync(path.join(dir, "cert.pem")) }, (r) => {
          r.resume();
          resolve(r.statusCode!);
        }).on("error", reject);
      });
      expect(health).to.equal(200);
    } finally {
      await secure.stop();
    }
    fs.chmodSync(path.join(dir, "key.pem"), 0o644);
    const refused = await startPayeeNode(tlsConfig(fs.mkdtempSync(path.join(os.tmpdir(), "tollway-tls-store-"))), { key: nodeKey, logger: silent }).then(
      (n) => n.stop().then(() => "started"),
      (e: Error) => e.message,
    );
    expect(refused).to.match(/TLS key file .* must be readable by its owner only/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("a config that does not match the chain refuses the start and says why (token decimals, EIP-712 name/version, chain id, contracts); nothing is opened", async () => {
    const silent = pino({ level: "silent" });
    const base = localNodeConfig(ctx);
    const attempt = async (raw: Record<string, unknown>) => {
      const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "tollway-mismatch-")), "store");
      const outcome = await startPayeeNode(parseNodeConfig({ ...base, storePath: dir, ...raw }, {}), { key: nodeKey, logger: silent }).then(
        (n) => n.stop().then(() => "started"),
        (e: Error) => e.message,
      );
      return { outcome, opened: fs.existsSync(dir) };
    };
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ asset: { ...base.asset, decimals: 18 } }, /asset\.decimals: the token has 6, the config says 18/],
      [{ asset: { ...base.asset, name: "USD Coin" } }, /asset\.name \/ asset\.version/],
      [{ chainId: 8453 }, /chainId: the RPC serves chain 31337, the config says 8453/],
      [{ erc3009Collector: "0x000000000000000000000000000000000000dEaD" }, /erc3009Collector: no contract at/],
    ];
    for (const [raw, why] of cases) {
      const { outcome, opened } = await attempt(raw);
      expect(outcome, JSON.stringify(raw)).to.match(why);
      expect(opened).to.equal(false);
    }
    expect((await attempt({})).outcome).to.equal("started");
  });

  // Last: it stops the node.
  it("stop: a paid request in flight still gets its answer and its charge; then the node refuses connections, and a second stop is a no-op", async () => {
    const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("srv-session-drain"))));
    const accept = (await fetchRequirements(`${node.url}/paid/d`)).accept;
    const dep = await payWith(`${node.url}/paid/d`, await payer.depositHeader(accept, 100_000n, 10_000n));
    expect(dep.status, JSON.stringify(dep.paymentRequired)).to.equal(200);
    const slow = payWith(`${node.url}/paid/d?delay=400`, await payer.voucherHeader(accept, 20_000n));
    await new Promise((r) => setTimeout(r, 100));
    const stopped = node.stop();
    const answer = await slow;
    expect(answer.status).to.equal(200);
    expect(answer.text).to.equal("paid d");
    expect(answer.paymentResponse.extra.channelState.chargedCumulativeAmount).to.equal("20000");
    await stopped;
    await node.stop();
    const refused = await fetch(`${node.url}/health`).then(() => "answered", (e: Error & { cause?: { code?: string } }) => e.cause?.code);
    expect(refused).to.equal("ECONNREFUSED");
    const store = await ChannelStore.open(storePath);
    try {
      const rows: LedgerRow[] = [];
      // The ledger keeps the path, not the query (a payer-chosen string of up to 16 KB per row): the first
      // request and the one in flight at stop, each charged once.
      for await (const row of store.ledger()) if (row.resource === "/paid/d" && row.payer.toLowerCase() === payer.account.address.toLowerCase()) rows.push(row);
      expect(rows.map((r) => r.amount)).to.deep.equal([10_000n, 10_000n]);
    } finally {
      await store.close();
    }
  });
});
