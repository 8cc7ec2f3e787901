/**
 * Assembles a payee node from configuration: store, chain clients, sender, payee, claim engine, watcher,
 * and the HTTP surface (paid routes, reverse proxy, facilitator, /health, /metrics). Binds 127.0.0.1
 * unless configured otherwise; admin, metrics and facilitator endpoints need the bearer token.
 */
import express, { type Express, type Request, type Response } from "express";
import type { Server } from "node:http";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import pino, { type Logger } from "pino";
import client from "prom-client";
import { domainSeparator, erc20Abi, parseGwei, type PublicClient } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createChainClients } from "../chain/clients";
import { readReceiver } from "../chain/escrow";
import { TxSender } from "../chain/sender";
import { parsePrice } from "../protocol/amounts";
import { readOwnerOnlyFile } from "../chain/keys";
import { ConfigError, errorSummary } from "../protocol/errors";
import { CANONICAL_ADDRESSES } from "../protocol/typedData";
import { EXPOSED_HEADERS, HEADERS, MAX_HEADER_BYTES } from "../protocol/wire";
import { ChannelStore } from "../store/channelStore";
import { ClaimEngine, exposure, lost, type ShutdownReport } from "./claims";
import type { NodeConfig } from "./config";
import { adminRouter } from "./adminApi";
import { closeGracefully, listenExpress } from "./httpServer";
import { Facilitator, facilitatorRouter, requireBearer } from "./facilitator";
import { paymentMiddleware, type PaidRequestContext, type RoutesConfig } from "./middleware";
import { Payee, within } from "./payee";
import { keccakReady, recoveryBackend } from "./recover";
import { recoveryThreads } from "./recoverPool";
import { ChainWatcher } from "./watcher";

export type PayeeNode = {
  app: Express;
  payee: Payee;
  claims: ClaimEngine;
  watcher: ChainWatcher;
  store: ChannelStore;
  logger: Logger;
  metrics: client.Registry;
  url: string;
  server: Server;
  /**
   * Drains HTTP (requests in flight finish, for up to `shutdownDrainMs`), stops the watcher, runs the
   * on-shutdown claim, closes the store. Idempotent: later calls return the first call's promise.
   */
  /** Drains requests, claims and settles (see ClaimEngine.stop), closes the store; says what was left unclaimed. */
  stop(): Promise<ShutdownReport>;
};

export type StartOptions = {
  key: `0x${string}`;
  /** Installs the paid route handlers (for `routes` in the config). */
  install?: (app: Express) => void;
  logger?: Logger;
};

/** Starts a payee node; resolves once it listens. */
export async function startPayeeNode(config: NodeConfig, opts: StartOptions): Promise<PayeeNode> {
  const logger = opts.logger ?? pino({ level: config.logLevel, redact: ["key", "*.key", "privateKey", "authorization"] });
  const account = privateKeyToAccount(opts.key);
  // Read first: a bad certificate or key file fails the start before anything is opened.
  const tlsFiles = config.listen.tls;
  const tls = tlsFiles ? { cert: fs.readFileSync(tlsFiles.certFile), key: readOwnerOnlyFile(tlsFiles.keyFile, "TLS key file") } : undefined;
  await keccakReady;
  const { publicClient, walletClient } = createChainClients({ rpcUrl: config.rpcUrl, chainId: config.chainId }, account);
  await checkChainSettings(config, publicClient, logger);
  fs.mkdirSync(config.storePath, { recursive: true });
  const store = await ChannelStore.open(config.storePath);
  const { repriceAfterMs, maxReprices, maxFeeGwei } = config.transactions;
  const sender = new TxSender(publicClient, walletClient!, config.confirmations, {
    repriceAfterMs,
    maxReprices,
    maxFeePerGas: maxFeeGwei !== undefined ? parseGwei(String(maxFeeGwei)) : undefined,
    journal: store.journal(`sender:${config.chainId}:${account.address.toLowerCase()}`),
  });
  // What an earlier run of this key signed and the chain has not mined: waited behind and re-priced as before.
  const journal = await sender.restore().catch((cause: unknown) => {
    throw new ConfigError(`could not read the relayer's transaction count to take back its pending transactions: ${errorSummary(cause)}`);
  });
  if (journal.restored.length > 0) logger.warn({ nonces: journal.restored, relayer: account.address }, "transactions of an earlier run still pending: the next sends wait behind them and re-price them");
  if (journal.dropped.length > 0) logger.warn({ nonces: journal.dropped, relayer: account.address }, "journaled transactions above a nonce nothing of ours holds: no longer tracked (they may still be mined once the hole is filled)");
  if (journal.unreadable > 0) logger.warn({ entries: journal.unreadable }, "transaction journal entries that do not parse or are for another chain: left in the store, not sent");

  const registry = new client.Registry();
  const paid = new client.Counter({ name: "tollway_paid_requests_total", help: "Paid requests committed", labelNames: ["route"], registers: [registry] });
  const revenue = new client.Counter({ name: "tollway_revenue_atomic_total", help: "Revenue in atomic token units", labelNames: ["route"], registers: [registry] });
  const refused = new client.Counter({ name: "tollway_refused_payments_total", help: "Refused payments by error code", labelNames: ["code"], registers: [registry] });
  const verification = new client.Histogram({
    name: "tollway_verification_seconds",
    help: "Time from the request reaching the payment middleware to its payment verified and its channel reserved (a deposit includes its transaction)",
    labelNames: ["kind"],
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1, 10],
    registers: [registry],
  });
  const latency = new client.Histogram({
    name: "tollway_payment_latency_seconds",
    help: "Time from the request reaching the payment middleware to its charge on disk (verification, the handler's first byte, the commit)",
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1],
    registers: [registry],
  });
  const claimFailures = new client.Counter({ name: "tollway_claim_failures_total", help: "Channels that could not be claimed", registers: [registry] });
  // A sum over every channel record: scanned in the background, at most one scan at a time and one per
  // EXPOSURE_SCAN_MS after the last finished (a scrape every 15 s of a store with a million channels would
  // otherwise scan it all each time). A scrape waits only for the first scan; later ones report the last sum.
  let exposureSum: bigint | undefined;
  let exposureScanning: Promise<void> | undefined;
  let exposureScannedAt = 0;
  const scanExposure = () =>
    (exposureScanning ??= (async () => {
      let total = 0n;
      for await (const rec of store.channels()) total += exposure(rec);
      exposureSum = total;
    })()
      .catch((err) => logger.warn({ err: errorSummary(err) }, "could not sum the unclaimed exposure"))
      .finally(() => {
        exposureScanning = undefined;
        exposureScannedAt = Date.now();
      }));
  const exposureGauge = new client.Gauge({
    name: "tollway_unclaimed_exposure_atomic",
    help: `Charged but unclaimed amount over all channels (recomputed at most every ${EXPOSURE_SCAN_MS / 1000} s)`,
    registers: [registry],
    async collect() {
      if (Date.now() - exposureScannedAt > EXPOSURE_SCAN_MS) {
        const scan = scanExposure();
        if (exposureSum === undefined) await scan;
      }
      if (exposureSum !== undefined) this.set(Number(exposureSum));
    },
  });
  void exposureGauge;
  // Alertable without parsing logs: the chain view's age (beyond riskWindowMs new charges are refused)
  // and the watcher's consecutive failed polls (chain_view_stale after 5).
  new client.Gauge({
    name: "tollway_chain_view_age_seconds",
    help: "Seconds since the node last mirrored the chain",
    registers: [registry],
    collect() {
      this.set((Date.now() - payee.chainSyncedAt) / 1000);
    },
  });
  new client.Gauge({
    name: "tollway_watcher_failed_polls",
    help: "Consecutive chain polls that failed",
    registers: [registry],
    collect() {
      this.set(watcher.failures);
    },
  });

  const payee = new Payee({
    store,
    publicClient,
    sender,
    chainId: config.chainId,
    escrow: config.escrow,
    erc3009Collector: config.erc3009Collector,
    receiver: config.receiver ?? account.address,
    asset: config.asset,
    withdrawDelay: config.withdrawDelay,
    riskWindowMs: config.riskWindowMs,
    confirmations: config.confirmations,
    recoveryThreads: config.recoveryThreads,
    logger,
    onCharge: (rec) => claims.noteCharge(rec),
    relay: config.relay,
  });
  await payee.loadMarks();
  const claims = new ClaimEngine(payee, {
    threshold: config.claims.threshold !== undefined ? parsePrice(config.claims.threshold, config.asset.decimals) : undefined,
    payerSignedThreshold: config.claims.payerSignedThreshold !== undefined ? parsePrice(config.claims.payerSignedThreshold, config.asset.decimals) : undefined,
    intervalMs: config.claims.intervalMs,
    batchSize: config.claims.batchSize,
    onShutdown: config.claims.onShutdown,
    logger,
    onAlert: () => claimFailures.inc(),
  });
  const watcher = new ChainWatcher(payee, claims, { confirmations: config.confirmations, pollIntervalMs: config.pollIntervalMs, maxBlockRange: config.maxBlockRange, logger, onAlert: () => claimFailures.inc() });

  const app = express();
  app.disable("x-powered-by");
  // One token per surface: a scrape credential opens only /metrics; a facilitator client's token opens
  // only /facilitator (which claims, settles and refunds channels that name this node as authorizer, as
  // any facilitator does; a refund of a channel this node serves claims its charges first), never the
  // admin API. Metrics and facilitator fall back to the admin token when they have none of their own.
  const guard = (token: string | undefined, setting: string) =>
    token ? requireBearer(token) : (_req: Request, res: Response) => void res.status(403).json({ error: `these endpoints are disabled: set ${setting}` });
  const admin = guard(config.adminToken, "adminToken");
  const metricsAccess = guard(config.metricsToken ?? config.adminToken, "metricsToken or adminToken");
  const facilitatorAccess = guard(config.facilitatorToken ?? config.adminToken, "facilitatorToken or adminToken");
  if (config.facilitatorToken === undefined && config.adminToken !== undefined) {
    logger.warn("the facilitator endpoints take the admin token (no facilitatorToken set): a facilitator client given it can also use the admin API; set facilitatorToken");
  }

  // The node's own surfaces answer JSON (or metrics text) only: never cached (token-protected answers),
  // framed, sniffed as another type or sent with a referrer. The paid routes are the app's to dress.
  app.use(["/health", "/metrics", "/facilitator", "/admin/api"], (_req: Request, res: Response, next: express.NextFunction) => {
    res.set(OWN_SURFACE_HEADERS);
    res.locals[OWN_SURFACE] = true; // no CORS for these, not even a preflight (corsForPayers)
    next();
  });
  app.get("/health", async (_req, res) => {
    // Unauthenticated: the head is cached for a second, so /health cannot spend the RPC quota. A probe
    // gets its answer within HEALTH_RPC_TIMEOUT_MS (a hung RPC is a 503, not a hung probe).
    const head = await within(HEALTH_RPC_TIMEOUT_MS, publicClient.getBlockNumber({ cacheTime: 1_000 })).catch(() => undefined);
    const lagMs = Date.now() - payee.chainSyncedAt;
    // Beyond the risk window the node refuses new charges: not healthy even if the RPC answers.
    const ok = head !== undefined && lagMs <= config.riskWindowMs;
    res.status(ok ? 200 : 503).json({
      ok,
      chainHead: head?.toString(),
      chainViewAgeMs: lagMs,
      watcherFailures: watcher.failures,
      recovery: recoveryBackend(),
      recoveryThreads: recoveryThreads(),
    });
  });
  app.get("/metrics", metricsAccess, async (_req, res) => {
    res.set("Content-Type", registry.contentType).send(await registry.metrics());
  });
  if (config.facilitator) {
    app.use("/facilitator", facilitatorAccess, facilitatorRouter(new Facilitator(payee)));
  }
  app.use(
    "/admin/api",
    admin,
    adminRouter({
      store,
      asset: config.asset,
      network: payee.network,
      claims,
      payee,
      status: async () => {
        const [head, eth, receiver] = await Promise.all([
          publicClient.getBlockNumber({ cacheTime: 0 }),
          publicClient.getBalance({ address: account.address }),
          readReceiver(publicClient, config.escrow, payee.opts.receiver, config.asset.address),
        ]);
        let exposureSum = 0n;
        let lostSum = 0n;
        let open = 0;
        for await (const rec of store.channels()) {
          open++;
          exposureSum += exposure(rec);
          lostSum += lost(rec);
        }
        return {
          ok: true,
          network: payee.network,
          chainHead: head,
          checkpoint: await watcher.checkpoint(),
          chainViewAgeMs: Date.now() - payee.chainSyncedAt,
          riskWindowMs: config.riskWindowMs,
          watcherFailures: watcher.failures,
          refundsPending: payee.refundsPending.size,
          signer: { address: account.address, eth },
          receiver: { address: payee.opts.receiver, claimed: receiver.totalClaimed, settled: receiver.totalSettled, unsettled: receiver.totalClaimed - receiver.totalSettled },
          channels: open,
          pendingClaims: exposureSum,
          lostToWithdrawals: lostSum,
          recovery: recoveryBackend(),
        };
      },
    }),
  );

  const routes: RoutesConfig = { ...(config.routes as RoutesConfig) };
  for (const [key, p] of Object.entries(config.proxy)) routes[key] = { price: p.price, description: p.description, mimeType: p.mimeType };
  // After the node's own surfaces (marked: they get no CORS, not even a preflight answer), before the paid routes.
  if (config.listen.corsOrigins.length > 0) app.use(corsForPayers(config.listen.corsOrigins));
  app.use(
    paymentMiddleware(routes, payee, {
      // The proxy's own upstream timeout answers 504 first; the handler deadline stays the backstop.
      handlerTimeoutMs: Math.max(60_000, ...Object.values(config.proxy).map((p) => p.timeoutMs + 5_000)),
      onPaid: (route, amount, us) => {
        paid.inc({ route });
        revenue.inc({ route }, Number(amount));
        latency.observe(us / 1e6);
      },
      onVerified: (_route, kind, us) => verification.observe({ kind }, us / 1e6),
      onError: (_route, err) => refused.inc({ code: (err as { code?: string }).code ?? "internal" }),
    }),
  );
  // The proxy forwards by the route the payment middleware reserved for: what is charged is what is
  // forwarded (a config route "GET /api/*" at $0.001 must not open a proxied "GET /api/premium/*" at $1),
  // with no second matcher to disagree with the first.
  const upstreams = new Map(Object.entries(config.proxy).map(([key, p]) => [key, upstreamOf(p.upstream, p.timeoutMs, config.listen.trustProxy)]));
  if (upstreams.size > 0) {
    app.use(async (req, res, next) => {
      const upstream = upstreams.get((res.locals.tollway as PaidRequestContext | undefined)?.route ?? "");
      if (upstream === undefined) return next();
      const target = req.originalUrl;
      // Only a plain origin-form target goes out as it came: an absolute-form one ("http://vhost/api/x")
      // would choose the upstream's virtual host, a "#" hides what follows from the route match, and
      // "/api/../admin" (also encoded, or "..;") matches "/api/*" but an upstream that normalises paths
      // would serve /admin. Refused with a 4xx, so nothing is charged.
      if (!target.startsWith("/") || target.startsWith("//") || target.includes("#") || hasDotSegment(req.path)) {
        res.status(400).json({ error: "invalid_path", message: "a proxied path must be a plain path without . or .. segments" });
        return;
      }
      await proxyTo(upstream, req, res, logger).catch(next);
    });
  }
  opts.install?.(app);
  // Last: an error nothing else answered. Express's own handler would send its stack as HTML (a chain
  // error's message carries the RPC URL, API key included) and print it past the log redaction.
  app.use((err: unknown, req: Request, res: Response, _next: express.NextFunction) => {
    logger.error({ err: errorSummary(err), method: req.method, path: req.path }, "unhandled error");
    if (res.headersSent) return void res.destroy();
    const status = (err as { status?: unknown })?.status;
    if (typeof status === "number" && status >= 400 && status < 500) return void res.status(status).json({ error: "bad_request" });
    res.status(500).json({ error: "internal_error", message: "the server could not answer this request" });
  });

  // Requests and responses built on the app's prototypes: no per-request hidden classes (httpServer.ts).
  if (!tls && !isLoopback(config.listen.host)) {
    logger.warn({ host: config.listen.host }, "serving plain HTTP beyond loopback: bearer tokens and payments travel unencrypted (set listen.tls or put TLS in front)");
  }
  // Slow-header connections are closed after headersTimeoutMs (checked every quarter of it, not node's 30 s).
  // Room above the codec's own 16 KiB PAYMENT-SIGNATURE limit: an oversized payment gets the spec-shaped
  // 400 with its code, not node's bare 431 (which its default 16 KiB for all headers would send first).
  const timeouts = { headersTimeout: config.listen.headersTimeoutMs, connectionsCheckingInterval: Math.max(250, config.listen.headersTimeoutMs / 4), maxHeaderSize: MAX_HEADER_BYTES * 4 };
  const { server, url } = await listenExpress(app, config.listen.port, config.listen.host, tls ? { tls, ...timeouts } : timeouts);
  let stopping: Promise<ShutdownReport> | undefined;
  watcher.start();
  claims.start();
  await watcher.poll();
  logger.info({ url, receiver: payee.opts.receiver, receiverAuthorizer: payee.receiverAuthorizer, recovery: recoveryBackend(), recoveryThreads: recoveryThreads() }, "tollway payee node listening");

  return {
    app,
    payee,
    claims,
    watcher,
    store,
    logger,
    metrics: registry,
    url,
    server,
    stop() {
      // Requests in flight get their answers (and their charges) first; then the on-shutdown claim.
      stopping ??= (async () => {
        await closeGracefully(server, config.shutdownDrainMs);
        await watcher.stop();
        const report = await claims.stop();
        await store.close();
        return report;
      })();
      return stopping;
    },
  };
}

/**
 * The config's chain facts against the chain, before anything is opened: the RPC's chain id, code at the
 * escrow and collector, and the asset's decimals (prices are scaled by them: a wrong value misprices
 * every route by powers of ten) and EIP-712 domain (name / version: deposits are signed over it). A
 * mismatch refuses the start; a chain that cannot be reached only warns (known channels can still be
 * served within the risk window), and so does an escrow other than the canonical one (stock x402
 * clients compute channel ids against the canonical address).
 */
async function checkChainSettings(config: NodeConfig, publicClient: PublicClient, logger: Logger): Promise<void> {
  if (config.escrow !== CANONICAL_ADDRESSES.batchSettlement) {
    logger.warn({ escrow: config.escrow, canonical: CANONICAL_ADDRESSES.batchSettlement }, "escrow is not at the canonical address: stock x402 clients will compute other channel ids and be refused");
  }
  const problems: string[] = [];
  try {
    const chainId = await publicClient.getChainId();
    if (chainId !== config.chainId) problems.push(`chainId: the RPC serves chain ${chainId}, the config says ${config.chainId}`);
    for (const [field, address] of [["escrow", config.escrow], ["erc3009Collector", config.erc3009Collector], ["asset.address", config.asset.address]] as const) {
      const code = await publicClient.getCode({ address });
      if (!code || code === "0x") problems.push(`${field}: no contract at ${address} on chain ${chainId}`);
    }
    if (problems.length === 0) {
      const decimals = await publicClient.readContract({ address: config.asset.address, abi: erc20Abi, functionName: "decimals" });
      if (decimals !== config.asset.decimals) problems.push(`asset.decimals: the token has ${decimals}, the config says ${config.asset.decimals}`);
      const expected = domainSeparator({ domain: { name: config.asset.name, version: config.asset.version, chainId: config.chainId, verifyingContract: config.asset.address } });
      const actual = await publicClient.readContract({ address: config.asset.address, abi: domainSeparatorAbi, functionName: "DOMAIN_SEPARATOR" }).catch(() => undefined);
      if (actual === undefined) logger.warn({ asset: config.asset.address }, "could not read the token's DOMAIN_SEPARATOR() (none, or the read failed): asset.name and asset.version are not checked");
      else if (actual !== expected) problems.push(`asset.name / asset.version: "${config.asset.name}" / "${config.asset.version}" is not the token's EIP-712 domain`);
    }
  } catch (err) {
    if (problems.length > 0) throw new ConfigError("The configuration does not match the chain", { metaMessages: [...problems, `(then a chain read failed: ${errorSummary(err)})`] });
    logger.warn({ err: errorSummary(err) }, "could not check the config against the chain (unreachable?): chain id, contracts and token settings unverified");
    return;
  }
  if (problems.length > 0) throw new ConfigError("The configuration does not match the chain", { metaMessages: problems });
}

const domainSeparatorAbi = [{ type: "function", name: "DOMAIN_SEPARATOR", stateMutability: "view", inputs: [], outputs: [{ name: "", type: "bytes32" }] }] as const;

/** The unclaimed-exposure gauge is recomputed (a scan of every channel record) at most this often. */
const EXPOSURE_SCAN_MS = 30_000;

const OWN_SURFACE_HEADERS = {
  "Cache-Control": "no-store",
  "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
  "X-Content-Type-Options": "nosniff",
  "X-Frame-Options": "DENY",
  "Referrer-Policy": "no-referrer",
};

/**
 * CORS for browser payers on the listed origins (listen.corsOrigins): their preflights are answered here
 * (204, unpaid: a preflight carries no payment), and their requests may send PAYMENT-SIGNATURE and read
 * PAYMENT-REQUIRED / PAYMENT-RESPONSE. No credentials: a payment is a header, not a cookie. Any other
 * origin gets no CORS header (its page cannot read the answers).
 */
function corsForPayers(origins: string[]): express.RequestHandler {
  const any = origins.includes("*");
  const allowed = new Set(origins.map((o) => o.toLowerCase()));
  return function tollwayCors(req, res, next) {
    if (res.locals[OWN_SURFACE]) return next();
    // The answer depends on the Origin (a cache must not give one origin's answer to another).
    if (!any) res.append("Vary", "Origin");
    const origin = req.headers.origin;
    if (typeof origin !== "string" || !(any || allowed.has(origin.toLowerCase()))) return next();
    res.setHeader("Access-Control-Allow-Origin", any ? "*" : origin);
    res.setHeader("Access-Control-Expose-Headers", EXPOSED_HEADERS);
    if (req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined) {
      const asked = req.headers["access-control-request-headers"];
      res.setHeader("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
      res.setHeader("Access-Control-Allow-Headers", typeof asked === "string" && /^[\w\-, ]{1,1000}$/.test(asked) ? asked : `${HEADERS.paymentSignature}, Content-Type`);
      res.setHeader("Access-Control-Max-Age", "600");
      res.status(204).end();
      return;
    }
    next();
  };
}

/** res.locals key marking a request to the node's own surfaces (health, metrics, facilitator, admin API). */
const OWN_SURFACE = "tollwayOwnSurface";

/** How long /health waits for the chain head before answering 503. */
const HEALTH_RPC_TIMEOUT_MS = 2_000;


function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"]);
/**
 * Not taken from the client: an upstream behind the node trusts these from its proxy (IP allowlists, rate
 * limits), so a payer could claim any address. The node sets X-Forwarded-For / -Proto / -Host itself,
 * extending what a proxy of the operator's in front of it set when `listen.trustProxy` says there is one.
 */
const CLIENT_FORWARDING = new Set(["forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"]);
/** Not taken from the upstream: the payment middleware's own. */
const PAYMENT_OWNED = new Set(["payment-response", "payment-required", "payment-signature"]);
/** Not sent to the upstream: the payment is the node's business (v1's X-PAYMENT too, should a client send both). */
const PAYMENT_INBOUND = new Set(["payment-signature", "x-payment"]);
/**
 * A message's framing, which its Connection header cannot drop: a body forwarded without it would reach
 * the upstream as bytes after a bodiless request, read there as a second, unpaid request (smuggling).
 */
const FRAMING = new Set(["content-length", "transfer-encoding"]);

/** Hop-by-hop names: the fixed ones and those the message's own Connection header lists (never its framing). */
function hopByHop(connection: string | string[] | undefined): (name: string) => boolean {
  if (connection === undefined) return (k) => HOP_BY_HOP.has(k);
  const listed = new Set(String(connection).toLowerCase().split(",").map((x) => x.trim()));
  for (const k of FRAMING) listed.delete(k);
  return (k) => HOP_BY_HOP.has(k) || listed.has(k);
}
const agents = { "http:": new http.Agent({ keepAlive: true, maxSockets: 256 }), "https:": new https.Agent({ keepAlive: true, maxSockets: 256 }) };

/**
 * Streams the request to `upstream` and the answer back over kept-alive connections. The payment
 * middleware defers the response's first write, so the charge commits only when the upstream answered
 * < 400 — before any byte leaves.
 */
type Upstream = { request: typeof http.request; agent: http.Agent; hostname: string; port: string; prefix: string; auth?: string; timeoutMs: number; trustProxy: boolean };

/**
 * A "." or ".." path segment, also percent-encoded, between backslashes (which some servers take for "/"),
 * or followed by path parameters ("..;x", which Tomcat, Jetty and Spring read as "..").
 */
export function hasDotSegment(path: string): boolean {
  return path.split(/[/\\]|%2f|%5c/i).some((seg) => {
    const s = seg.replace(/%2e/gi, ".").replace(/(;|%3b).*$/i, "");
    return s === "." || s === "..";
  });
}

/** An upstream URL resolved once per route (not a URL parse per request). */
function upstreamOf(url: string, timeoutMs: number, trustProxy: boolean): Upstream {
  const u = new URL(url);
  const tls = u.protocol === "https:";
  return {
    request: tls ? https.request : http.request,
    agent: agents[tls ? "https:" : "http:"],
    hostname: u.hostname.replace(/^\[|\]$/g, ""),
    port: u.port || (tls ? "443" : "80"),
    prefix: u.pathname.replace(/\/$/, ""),
    // Credentials in the upstream URL go out as Basic auth, as http.request(url) would send them.
    auth: u.username ? `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}` : undefined,
    timeoutMs,
    trustProxy,
  };
}

/** Methods whose request carries no body here, so an attempt can be repeated as it was. */
const IDEMPOTENT_WITHOUT_BODY = new Set(["GET", "HEAD", "OPTIONS"]);
/** Upstream answers up to this size (sized or not; not streaming media types) are received whole before the charge. */
const BUFFER_LIMIT = 1 << 20;
/** An unsized answer still coming after this long (ms) streams from then on (a slow export, a token stream). */
const BUFFER_MS = 1_000;
/** Media types that are streams by nature: passed through as they come, never held back. */
const STREAMING_TYPE = /^\s*(text\/event-stream|application\/(x-)?ndjson|application\/jsonl|application\/x-jsonlines|application\/stream\+json|multipart\/x-mixed-replace)\b/i;
/**
 * Forwards one request. A kept-alive upstream connection can be closed by the upstream just as it is
 * reused (its idle timeout racing our next request): an attempt reset that way failed before any
 * answer, so a bodiless idempotent request is sent once more, on a new connection (other pooled
 * connections may be just as dead). Any other failure, or a second one, answers 502 (nothing charged:
 * the middleware charges only answers < 400). A client that goes away cancels the upstream request.
 */
async function proxyTo(upstream: Upstream, req: Request, res: Response, logger: Logger): Promise<void> {
  const replayable = IDEMPOTENT_WITHOUT_BODY.has(req.method) && !req.headers["content-length"] && !req.headers["transfer-encoding"];
  for (let attempt = 1; ; attempt++) {
    const outcome = await forwardOnce(upstream, req, res, replayable, attempt > 1);
    if (outcome === "done") return;
    const { err, reused, answered } = outcome;
    if (res.destroyed) return; // the client went away (or the handler deadline cut it): nothing to answer
    const code = (err as NodeJS.ErrnoException).code;
    if (!answered && reused && replayable && attempt === 1 && code === "ECONNRESET") continue;
    logger.warn({ err: { message: errorSummary(err), code }, path: req.path, attempt }, "upstream request failed");
    if (answered || res.headersSent) {
      res.destroy();
    } else if (code === "ETIMEDOUT") {
      res.status(504).json({ error: "upstream_timeout", message: `the upstream server did not answer within ${upstream.timeoutMs} ms` });
    } else {
      res.status(502).json({ error: "upstream_unavailable", message: "the upstream server did not answer" });
    }
    return;
  }
}

type ForwardFailure = { err: unknown; reused: boolean; answered: boolean };

/**
 * One attempt. An answer up to BUFFER_LIMIT (with a Content-Length; or without one, until it passes the
 * limit or has taken BUFFER_MS) is received whole before its first byte is written, so an upstream that
 * breaks off mid-body is answered by a cut connection, uncharged (the charge commits at the first write).
 * Longer or slower answers and streaming media types (event streams, NDJSON) stream through as they
 * come: those are charged once their first byte goes out, and an upstream that fails after that cuts the
 * client's answer short.
 */
function forwardOnce(upstream: Upstream, req: Request, res: Response, bodiless: boolean, fresh: boolean): Promise<"done" | ForwardFailure> {
  return new Promise((resolve) => {
    const headers: Record<string, string | string[]> = {};
    const inbound = req.headers;
    const inboundHop = hopByHop(inbound.connection);
    for (const k in inbound) {
      const v = inbound[k];
      if (v === undefined || k === "host" || PAYMENT_INBOUND.has(k) || CLIENT_FORWARDING.has(k) || inboundHop(k)) continue;
      headers[k] = v;
    }
    // A chunked body goes out chunked whatever the method (node frames a GET's or DELETE's body only when
    // told to); the client's Transfer-Encoding itself is hop-by-hop. A Content-Length was copied above.
    if (inbound["transfer-encoding"] !== undefined) headers["transfer-encoding"] = "chunked";
    const trusted = upstream.trustProxy;
    const peer = req.socket.remoteAddress ?? "";
    headers["x-forwarded-for"] = trusted && inbound["x-forwarded-for"] ? `${String(inbound["x-forwarded-for"])}, ${peer}` : peer;
    headers["x-forwarded-proto"] = (trusted && inbound["x-forwarded-proto"]) || ((req.socket as { encrypted?: boolean }).encrypted ? "https" : "http");
    if (inbound.host) headers["x-forwarded-host"] = (trusted && inbound["x-forwarded-host"]) || inbound.host;
    if (trusted && inbound.forwarded) headers.forwarded = inbound.forwarded;
    const options = {
      hostname: upstream.hostname,
      port: upstream.port,
      path: upstream.prefix + req.originalUrl,
      method: req.method,
      headers,
      // A retry goes out on a connection of its own, not on another pooled one that may be as stale.
      agent: fresh ? false : upstream.agent,
      auth: upstream.auth,
    };
    let answered = false;
    let settled = false;
    const fail = (err: unknown) => {
      if (settled) return;
      settled = true;
      res.off("close", cancel);
      resolve({ err, reused: up.reusedSocket, answered });
    };
    const cancel = () => {
      if (!settled) up.destroy(new Error("client went away"));
    };
    res.once("close", cancel);
    const up = upstream.request(options, (ur) => {
      answered = true;
      const status = ur.statusCode ?? 502;
      res.status(status);
      const outbound = ur.headers;
      const outboundHop = hopByHop(outbound.connection);
      for (const k in outbound) {
        const v = outbound[k];
        if (v === undefined || outboundHop(k) || PAYMENT_OWNED.has(k)) continue;
        // The node's CORS answer for a listed origin (listen.corsOrigins) stands: an upstream's own would
        // leave a payer charged for an answer its page cannot read.
        if (k.startsWith("access-control-") && k !== "access-control-expose-headers" && res.hasHeader("access-control-allow-origin")) continue;
        // The middleware's expose list (PAYMENT-RESPONSE for browsers) and the upstream's, both; Vary too.
        const own = k === "access-control-expose-headers" || k === "vary" ? res.getHeader(k) : undefined;
        res.setHeader(k, own ? `${String(own)}, ${String(v)}` : v);
      }
      const declared = Number(ur.headers["content-length"]);
      const sized = ur.headers["content-length"] !== undefined && Number.isSafeInteger(declared);
      const hasBody = req.method !== "HEAD" && status !== 204 && status !== 304 && status >= 200;
      // Received whole before its first byte is written (see forwardOnce): sized up to BUFFER_LIMIT, or
      // unsized until it ends, passes BUFFER_LIMIT or has taken BUFFER_MS (then it streams). A streaming
      // media type streams at once.
      let buffering = hasBody && (sized ? declared <= BUFFER_LIMIT : !STREAMING_TYPE.test(String(ur.headers["content-type"] ?? "")));
      const whole = buffering && sized;
      let chunks: Buffer[] = [];
      let received = 0;
      const startStreaming = () => {
        if (!buffering || settled) return;
        buffering = false; // what came so far goes out, the rest streams as it comes
        const head = Buffer.concat(chunks, received);
        chunks = [];
        // Nothing yet: the first chunk goes out when it comes (the charge commits then, not before any byte).
        if (head.length > 0) forward(head);
      };
      const slow = buffering && !sized ? setTimeout(startStreaming, BUFFER_MS) : undefined;
      ur.once("close", () => clearTimeout(slow));
      const forward = (chunk: Buffer) => {
        // The answer was ended already (a 503: the charge could not be written) or its client is gone.
        if (res.writableEnded || res.destroyed) return;
        // Backpressure: a slow client must not make the node buffer the whole upstream body. The idle
        // timer pauses with it (a slow reader is not a stalled upstream).
        if (!res.write(chunk)) {
          ur.pause();
          up.setTimeout(0);
          res.once("drain", () => {
            up.setTimeout(upstream.timeoutMs);
            ur.resume();
          });
        }
      };
      ur.on("data", (chunk: Buffer) => {
        if (!buffering) return forward(chunk);
        chunks.push(chunk);
        received += chunk.length;
        if (!whole && received > BUFFER_LIMIT) startStreaming();
      });
      ur.on("end", () => {
        if (settled) return;
        if (whole && received !== declared) return fail(new Error(`upstream sent ${received} of ${declared} bytes`));
        settled = true;
        res.off("close", cancel);
        if (buffering) res.end(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, received));
        else res.end();
        resolve("done");
      });
      ur.on("error", fail);
      ur.on("close", () => {
        if (!ur.complete) fail(new Error("upstream closed the answer before its end"));
      });
    });
    up.on("error", fail);
    // Idle time on the upstream connection: no answer yet, or a stalled body.
    up.setTimeout(upstream.timeoutMs, () => up.destroy(Object.assign(new Error(`upstream idle for ${upstream.timeoutMs} ms`), { code: "ETIMEDOUT" })));
    if (bodiless) up.end();
    else req.pipe(up);
  });
}
