/**
 * The one-command demo (`npm start`): a local chain with Tollway at the canonical x402 addresses, test
 * USDC for the first Hardhat accounts, a payee node serving a demo publisher (articles, songs, a
 * pay-per-chunk stream), the reader page and the token-protected operator dashboard, with some
 * simulated readers so the dashboard starts with real data.
 */
import express, { type Express } from "express";
import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import pino, { type Logger } from "pino";
import type { Address } from "viem";
import { createChainClients } from "../chain/clients";
import { deployTollway, type Deployment } from "../chain/deploy";
import { hardhatTestAccount, hardhatTestKey, startLocalChain, type LocalChain } from "../chain/localNode";
import { parseNodeConfig } from "../payee/config";
import { startPayeeNode, type PayeeNode } from "../payee/server";
import { createPayer } from "../payer/payer";
import { wrapFetch } from "../payer/fetch";
import { MemoryPayerStore } from "../payer/store";

export const ARTICLES = [
  { id: "water-cartel", kind: "long", price: "0.03", title: "The Water Cartel", teaser: "Eighteen months of records show how three firms split the region's water contracts." },
  { id: "port-audit", kind: "long", price: "0.03", title: "Inside the Port Authority Audit", teaser: "The audit the board never published, and the $40m it could not explain." },
  { id: "night-trains", kind: "long", price: "0.03", title: "Who Owns the Night Trains", teaser: "A shell company, a pension fund and a timetable that serves neither." },
  { id: "bike-lanes", kind: "brief", price: "0.01", title: "Council approves east-side bike lanes", teaser: "Work starts in March; two parking streets become one-way." },
  { id: "heatwave", kind: "brief", price: "0.01", title: "Heatwave warning for the weekend", teaser: "Cooling centres open Friday; tips for the elderly and pets." },
  { id: "library-hours", kind: "brief", price: "0.01", title: "Libraries extend evening hours", teaser: "Five branches stay open until 10 pm from next month." },
] as const;

export const SONGS = [
  { id: "harbour-lights", title: "Harbour Lights", price: "0.02", hz: 440 },
  { id: "slow-tide", title: "Slow Tide", price: "0.02", hz: 330 },
  { id: "night-shift", title: "Night Shift", price: "0.02", hz: 523 },
] as const;

const STREAM_PRICE = "0.001";

function articleBody(a: (typeof ARTICLES)[number]): string {
  const para = `${a.teaser} `;
  return a.kind === "long" ? `${a.title}. ${para.repeat(12)}(Full investigation: 4,800 words.)` : `${a.title}. ${para}`;
}

/** A short sine-tone WAV (8 kHz, 8-bit mono) standing in for a song. */
function toneWav(hz: number, seconds = 1.5): Buffer {
  const rate = 8000;
  const n = Math.floor(rate * seconds);
  const buf = Buffer.alloc(44 + n);
  buf.write("RIFF", 0);
  buf.writeUInt32LE(36 + n, 4);
  buf.write("WAVEfmt ", 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20);
  buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate, 28);
  buf.writeUInt16LE(1, 32);
  buf.writeUInt16LE(8, 34);
  buf.write("data", 36);
  buf.writeUInt32LE(n, 40);
  for (let i = 0; i < n; i++) buf[44 + i] = Math.round(128 + 60 * Math.sin((2 * Math.PI * hz * i) / rate) * Math.min(1, (n - i) / 800));
  return buf;
}

export type DemoOptions = {
  port?: number;
  host?: string;
  /** Where the local deployment and demo wallet details go (default .tollway/demo.json). */
  infoFile?: string;
  storePath?: string;
  /** Simulated readers paying before the first visitor (default 5). */
  simulatedReaders?: number;
  logger?: Logger;
  webDir?: string;
};

export type Demo = {
  chain: LocalChain;
  deployment: Deployment;
  node: PayeeNode;
  urls: { reader: string; dashboard: string; payee: string; rpc: string };
  adminToken: string;
  infoFile: string;
  stop(): Promise<void>;
};

/** Starts everything; resolves when the reader page and dashboard are being served. */
export async function startDemo(opts: DemoOptions = {}): Promise<Demo> {
  const logger = opts.logger ?? pino({ level: "info" });
  const root = path.join(__dirname, "..", "..");
  const webDir = opts.webDir ?? path.join(root, "dist", "web");
  // Always bundle the browser payer afresh (esbuild, about a second), so the page matches the code.
  const { buildWeb } = require(path.join(root, "scripts", "build-web.js")) as { buildWeb(dir: string): Promise<string> };
  await buildWeb(webDir);
  const chain = await startLocalChain(Number(process.env.TOLLWAY_CHAIN_PORT ?? 0) || undefined);
  try {
    // Hardhat's public test accounts (local use only): #0 deploys, #1 is the publisher's node key,
    // #2 is the reader page's demo wallet, #3.. are simulated readers.
    const deployer = hardhatTestAccount(0);
    const { publicClient, walletClient } = createChainClients({ rpcUrl: chain.url, chainId: 31337 }, deployer);
    const readers = Array.from({ length: 8 }, (_, i) => hardhatTestAccount(2 + i));
    const deployment = await deployTollway({
      walletClient: walletClient!,
      publicClient: publicClient as never,
      canonical: true,
      mintTestToken: { to: [deployer.address, ...readers.map((r) => r.address)], amount: 1_000_000_000n },
    });
    const adminToken = randomBytes(18).toString("base64url");
    const routes: Record<string, string> = {};
    for (const a of ARTICLES) routes[`GET /articles/${a.kind}/${a.id}`] = `$${a.price}`;
    for (const s of SONGS) routes[`GET /songs/${s.id}`] = `$${s.price}`;
    routes["GET /stream/:id/chunk/:n"] = `$${STREAM_PRICE}`;
    const config = parseNodeConfig({
      rpcUrl: chain.url,
      escrow: deployment.escrow,
      erc3009Collector: deployment.erc3009Collector,
      asset: { address: deployment.token, symbol: "USDC" },
      listen: { host: opts.host ?? "127.0.0.1", port: opts.port ?? 4020 },
      storePath: opts.storePath ?? path.join(root, ".tollway", "demo-store", String(Date.now())),
      adminToken,
      routes,
      claims: { threshold: "$0.20", intervalMs: 60_000, onShutdown: true },
      logLevel: "warn",
    }, {}); // not the shell's TOLLWAY_* overrides: an exported admin token or RPC would not be the demo's
    const node = await startPayeeNode(config, {
      key: hardhatTestKey(1),
      logger,
      install: (app) => installDemoSite(app, webDir, deployment, { payTo: hardhatTestAccount(1).address, withdrawDelay: config.withdrawDelay }),
    });
    const urls = { reader: `${node.url}/`, dashboard: `${node.url}/dashboard`, payee: node.url, rpc: chain.url };
    await simulateReaders(node.url, readers.slice(1, 1 + (opts.simulatedReaders ?? 5)), chain.url);
    await node.claims.claim();
    await node.claims.settle();

    const infoFile = opts.infoFile ?? path.join(root, ".tollway", "demo.json");
    fs.mkdirSync(path.dirname(infoFile), { recursive: true });
    fs.writeFileSync(
      infoFile,
      JSON.stringify(
        {
          note: "Local demo only. The keys below are Hardhat's public test keys: never use them on a real network.",
          chainId: 31337,
          rpcUrl: chain.url,
          deployment: { ...deployment, blockNumber: deployment.blockNumber.toString() },
          urls,
          adminToken,
          demoWallet: { address: readers[0]!.address, privateKey: hardhatTestKey(2) },
        },
        null,
        2,
      ),
      { mode: 0o600 },
    );
    fs.chmodSync(infoFile, 0o600); // the mode above applies only to a new file; it holds the admin token
    return {
      chain,
      deployment,
      node,
      urls,
      adminToken,
      infoFile,
      async stop() {
        await node.stop().catch(() => undefined);
        await chain.stop();
      },
    };
  } catch (err) {
    await chain.stop();
    throw err;
  }
}

/**
 * The demo pages' security headers. Scripts only from the site's own files (no inline script or
 * handler), and no framing: after the first deposit an "Unlock" click pays without a prompt, so a
 * framing site could make a reader pay by clickjacking. No referrer: the dashboard's address can carry
 * the admin token until its script removes it.
 */
const DEMO_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "media-src 'self' blob:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

export const DEMO_SECURITY_HEADERS = {
  "Content-Security-Policy": DEMO_CSP,
  "X-Frame-Options": "DENY",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
} as const;

/** Sets DEMO_SECURITY_HEADERS on every response of the demo site (pages, scripts, paid content). */
export function demoSecurityHeaders(): express.RequestHandler {
  const entries = Object.entries(DEMO_SECURITY_HEADERS);
  return function demoSecurityHeadersMiddleware(_req, res, next) {
    for (const [name, value] of entries) res.setHeader(name, value);
    next();
  };
}

function installDemoSite(app: Express, webDir: string, deployment: Deployment, terms: { payTo: string; withdrawDelay: number }) {
  const pub = path.join(__dirname, "public");
  app.use(demoSecurityHeaders());
  for (const a of ARTICLES) {
    app.get(`/articles/${a.kind}/${a.id}`, (_req, res) => void res.type("text/plain").send(articleBody(a)));
  }
  for (const s of SONGS) {
    app.get(`/songs/${s.id}`, (_req, res) => void res.type("audio/wav").send(toneWav(s.hz)));
  }
  app.get("/stream/:id/chunk/:n", (req, res) => void res.type("application/octet-stream").send(Buffer.alloc(2048, Number(req.params.n) % 256)));
  app.get("/demo/catalog", (_req, res) =>
    void res.json({
      chainId: 31337,
      publisher: "The Tollway Gazette",
      token: deployment.token,
      // The reader's wallet pays only this receiver, on channels whose withdrawal delay is this at most.
      payTo: terms.payTo,
      withdrawDelay: terms.withdrawDelay,
      articles: ARTICLES.map((a) => ({ ...a, url: `/articles/${a.kind}/${a.id}` })),
      songs: SONGS.map((s) => ({ id: s.id, title: s.title, price: s.price, url: `/songs/${s.id}` })),
      stream: { id: "council", price: STREAM_PRICE, url: "/stream/council/chunk" },
    }),
  );
  // The reader page's demo wallet: Hardhat's public test account #2 (local demo only).
  app.get("/demo/wallet", (_req, res) => void res.json({ privateKey: hardhatTestKey(2), note: "public Hardhat test key, local demo only" }));
  app.get("/", (_req, res) => void res.sendFile(path.join(pub, "reader.html")));
  app.get("/dashboard", (_req, res) => void res.sendFile(path.join(pub, "dashboard.html")));
  app.use(express.static(pub, { index: false }));
  app.use(express.static(webDir, { index: false }));
}

/**
 * Simulated readers: long-form investigations are read by more people (and cost more) than briefs,
 * songs and the stream get some plays — so the dashboard opens on a real pattern.
 */
async function simulateReaders(base: string, readers: Array<ReturnType<typeof hardhatTestAccount>>, rpcUrl: string) {
  for (const [i, account] of readers.entries()) {
    const payer = createPayer({ account, store: new MemoryPayerStore(), chainId: 31337, policy: { maxPerRequest: 100_000n, depositMultiplier: 40 } });
    void rpcUrl;
    const pay = wrapFetch(fetch, payer);
    const want: string[] = [];
    for (const a of ARTICLES) if (a.kind === "long" ? i % 5 !== 4 : i % 2 === 0) want.push(`/articles/${a.kind}/${a.id}`);
    if (i % 2 === 1) want.push(`/songs/${SONGS[i % SONGS.length]!.id}`);
    for (let n = 0; n < 2 + i; n++) want.push(`/stream/council/chunk/${n}`);
    for (const p of want) {
      const res = await pay(base + p);
      if (!res.ok) throw new Error(`simulated reader ${i}: ${p} answered ${res.status}`);
    }
  }
}

export type { Address };
