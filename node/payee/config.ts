/**
 * Payee node configuration: one JSON file plus TOLLWAY_* environment overrides, validated with clear
 * messages. The relayer / receiverAuthorizer key comes from the environment (TOLLWAY_PAYEE_KEY) or a
 * key file that must be mode 0600; it is never logged.
 */
import fs from "node:fs";
import path from "node:path";
import { z } from "zod";
import type { Hex } from "viem";
import { loadPrivateKey } from "../chain/keys";
import { ConfigError } from "../protocol/errors";
import { addressSchema } from "../protocol/wire";
import { routePattern } from "./middleware";
import { DEFAULT_RISK_WINDOW_MS } from "./payee";
import { DEFAULT_RELAY_LIMITS } from "./relayBudget";

const priceSchema = z.union([z.string().regex(/^\$?\d+(\.\d+)?$/, 'a price like "$0.01"'), z.bigint()]);

/** Why a route key is unusable (the payment middleware's own parser says), or undefined. */
function routeKeyProblem(key: string): string | undefined {
  try {
    routePattern(key);
    return undefined;
  } catch (err) {
    return (err as ConfigError).shortMessage ?? String(err);
  }
}

/** A record of routes whose keys are checked by routeKeyProblem; each problem is reported at its key. */
function routeRecord<T extends z.ZodTypeAny>(value: T) {
  return z.record(value).superRefine((routes, ctx) => {
    for (const key of Object.keys(routes)) {
      const problem = routeKeyProblem(key);
      if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [key], message: problem });
    }
  });
}

// Every object is strict: a misspelt key ("decimal", "treshold", "timeout") is an error, never a silent default.
const assetSchema = z
  .object({
    address: addressSchema,
    name: z.string().default("USDC"),
    version: z.string().default("2"),
    decimals: z.number().int().min(0).max(36).default(6),
    symbol: z.string().default("USDC"),
  })
  .strict();

const tlsSchema = z.object({ certFile: z.string().min(1), keyFile: z.string().min(1) }).strict();

const listenSchema = z
  .object({
    /** An empty host would bind every interface. */
    host: z.string().min(1, "listen.host must not be empty (it would bind every interface)").default("127.0.0.1"),
    port: z.number().int().min(0).max(65535).default(4020),
    /** Serve HTTPS with this PEM certificate (chain) and key (mode 0600), e.g. when bound beyond loopback. */
    tls: tlsSchema.optional(),
    /** A client must send its request headers within this (slow-header connections are closed; node's default is 60 s). */
    headersTimeoutMs: z.number().int().min(500).max(300_000).default(10_000),
    /**
     * The node sits behind a reverse proxy of yours that sets X-Forwarded-For / -Proto / -Host: the proxy
     * mode passes them on to upstreams (extended with its peer) instead of replacing them with its own.
     */
    trustProxy: z.boolean().default(false),
    /**
     * Browser payers on these other origins (a reader page on www.example.com paying api.example.com):
     * the paid routes and the proxy answer their CORS preflights and let them read the payment headers.
     * "*" allows any origin. None by default: a page on the node's own origin needs none.
     */
    corsOrigins: z
      .array(z.string().refine((o) => o === "*" || /^https?:\/\/[^/\s?#*]+$/.test(o), "an origin is scheme://host[:port] (no path), or *"))
      .max(100)
      .default([]),
  })
  .strict();

const claimsSchema = z
  .object({
    threshold: priceSchema.optional(),
    payerSignedThreshold: priceSchema.optional(),
    intervalMs: z.number().int().positive().optional(),
    batchSize: z.number().int().min(1).max(500).default(100),
    onShutdown: z.boolean().default(true),
  })
  .strict();

/** How the node's own transactions (claims, settles, relayed deposits, refunds) ride out rising fees. */
const transactionsSchema = z
  .object({
    /** A transaction not mined after this long is signed again at its nonce with fees raised 12.5 % (or to the estimate). */
    repriceAfterMs: z.number().int().min(1_000).default(30_000),
    /** Re-pricings per transaction at most. */
    maxReprices: z.number().int().min(0).max(20).default(3),
    /** The highest maxFeePerGas a re-pricing offers, in gwei (default: no cap, the estimate rules). */
    maxFeeGwei: z.number().positive().optional(),
  })
  .strict();

const relaySchema = z
  .object({
    /** Unpaid deposits relayed and cooperative refunds sent (the node pays their gas) per payer address per hour. */
    perPayerPerHour: z.number().int().min(1).max(1_000_000).default(DEFAULT_RELAY_LIMITS.perPayerPerHour),
    /** The same for all payers together: the most such transactions the node pays for in an hour. */
    perHour: z.number().int().min(1).max(10_000_000).default(DEFAULT_RELAY_LIMITS.perHour),
  })
  .strict();

const routeSchema = z.object({ price: priceSchema, description: z.string().optional(), mimeType: z.string().optional() }).strict();

const proxyRouteSchema = z
  .object({
    upstream: z.string().url(),
    price: priceSchema,
    description: z.string().optional(),
    mimeType: z.string().optional(),
    /** The upstream must answer (and keep sending) within this many ms, else 504 upstream_timeout, uncharged. */
    timeoutMs: z.number().int().min(1).max(600_000).default(30_000),
  })
  .strict();

/** A bearer token: at least 16 characters, no whitespace. */
const tokenSchema = (name: string) => z.string().regex(/^\S*$/, `${name} must not contain whitespace`).min(16, `${name} must be at least 16 characters`);

/** Where the store goes when the config does not say; relative to the config file's folder (loadNodeConfig). */
export const DEFAULT_STORE_PATH = ".tollway/payee";

const nodeConfigObject = z
  .object({
    rpcUrl: z.string().url().default("http://127.0.0.1:8545"),
    chainId: z.number().int().positive().default(31337),
    confirmations: z.number().int().nonnegative().default(0),
    escrow: addressSchema,
    erc3009Collector: addressSchema,
    asset: assetSchema,
    /** payTo; defaults to the node key's address. */
    receiver: addressSchema.optional(),
    withdrawDelay: z.number().int().min(900).max(30 * 24 * 3600).default(900),
    listen: listenSchema.default({}),
    storePath: z.string().min(1).default(DEFAULT_STORE_PATH),
    keyFile: z.string().min(1).optional(),
    /** Bearer token for the admin API (refunds, claims), and for metrics / facilitator unless they have their own (or TOLLWAY_ADMIN_TOKEN). */
    adminToken: tokenSchema("adminToken").optional(),
    /** Bearer token for /metrics only (a scrape credential that cannot refund or claim). */
    metricsToken: tokenSchema("metricsToken").optional(),
    /** Bearer token for /facilitator only (given to the x402 servers that use this node as facilitator). */
    facilitatorToken: tokenSchema("facilitatorToken").optional(),
    facilitator: z.boolean().default(true),
    riskWindowMs: z.number().int().positive().default(DEFAULT_RISK_WINDOW_MS),
    /** How often the chain watcher polls the escrow's events (ms). */
    pollIntervalMs: z.number().int().min(50).default(2_000),
    /** Most blocks the watcher asks for in one eth_getLogs (RPC providers cap the range). */
    maxBlockRange: z.number().int().min(1).max(100_000).default(2_000),
    claims: claimsSchema.default({}),
    transactions: transactionsSchema.default({}),
    /** Limits on the transactions payers make the node pay gas for (relayed deposits, cooperative refunds). */
    relay: relaySchema.default({}),
    /** Express-style paid routes served by a handler the embedding app installs. */
    routes: routeRecord(z.union([priceSchema, routeSchema])).default({}),
    /** Reverse proxy: route key -> upstream base URL and price. */
    proxy: routeRecord(proxyRouteSchema).default({}),
    /** On stop, requests in flight get this long (ms) to finish before their connections are cut (uncharged). */
    shutdownDrainMs: z.number().int().min(0).max(600_000).default(10_000),
    /** Worker threads recovering voucher signers; default all cores but one (at most 4), 0 = main thread. */
    recoveryThreads: z.number().int().min(0).max(64).optional(),
    logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  })
  .strict();

export const nodeConfigSchema = nodeConfigObject.superRefine((c, ctx) => {
  // One key in both would be one route with two prices and two handlers: the proxy entry silently won.
  for (const key of Object.keys(c.proxy)) {
    if (key in c.routes) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ["proxy", key], message: `route key "${key}" is also in routes: a path is either served here or proxied, list it once` });
  }
});

/** Every key the config knows, at any depth: the candidates for "did you mean" hints. */
const KNOWN_KEYS = [nodeConfigObject, assetSchema, tlsSchema, listenSchema, claimsSchema, transactionsSchema, routeSchema, proxyRouteSchema].flatMap((s) => Object.keys(s.shape));

/** The known key a misspelt one most likely meant (case-insensitive edit distance at most 2), if any. */
function didYouMean(key: string): string | undefined {
  let best: { key: string; d: number } | undefined;
  for (const known of KNOWN_KEYS) {
    const d = editDistance(key.toLowerCase(), known.toLowerCase());
    if (d <= 2 && (!best || d < best.d)) best = { key: known, d };
  }
  return best?.key;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

/** One line per zod issue: "path: message", with a hint for a misspelt key. */
function describeIssue(issue: z.ZodIssue): string {
  const where = issue.path.map((p, i) => (typeof p === "string" && /^[A-Za-z_$][\w$]*$/.test(p) ? `${i ? "." : ""}${p}` : `[${JSON.stringify(p)}]`)).join("") || "(root)";
  if (issue.code === z.ZodIssueCode.unrecognized_keys) {
    const keys = issue.keys.map((k) => {
      const hint = didYouMean(k);
      return hint ? `"${k}" (did you mean "${hint}"?)` : `"${k}"`;
    });
    return `${where}: unknown key${keys.length > 1 ? "s" : ""} ${keys.join(", ")}`;
  }
  return `${where}: ${issue.message}`;
}

export type NodeConfig = z.infer<typeof nodeConfigSchema>;

/**
 * The environment variables that override the config (documented in docs/RUNBOOK.md). Numbers must be
 * plain decimal digits: " " (0), "0x50" (80) or "1e3" (1000) are refused, not read as some other number.
 */
export const NODE_ENV_OVERRIDES = [
  { name: "TOLLWAY_RPC_URL", path: ["rpcUrl"], kind: "string" },
  { name: "TOLLWAY_CHAIN_ID", path: ["chainId"], kind: "uint" },
  { name: "TOLLWAY_PORT", path: ["listen", "port"], kind: "uint" },
  { name: "TOLLWAY_HOST", path: ["listen", "host"], kind: "string" },
  { name: "TOLLWAY_STORE", path: ["storePath"], kind: "string" },
  { name: "TOLLWAY_ADMIN_TOKEN", path: ["adminToken"], kind: "string" },
  { name: "TOLLWAY_METRICS_TOKEN", path: ["metricsToken"], kind: "string" },
  { name: "TOLLWAY_FACILITATOR_TOKEN", path: ["facilitatorToken"], kind: "string" },
  { name: "TOLLWAY_LOG_LEVEL", path: ["logLevel"], kind: "string" },
  { name: "TOLLWAY_RECOVERY_THREADS", path: ["recoveryThreads"], kind: "uint" },
] as const;

/** The names of the overrides set (non-empty) in `env`, e.g. to tell an operator what replaced the file's values. */
export function activeEnvOverrides(env: NodeJS.ProcessEnv = process.env): string[] {
  return NODE_ENV_OVERRIDES.filter((o) => env[o.name] !== undefined && env[o.name] !== "").map((o) => o.name);
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Parses a config object (file contents merged with environment overrides). Relative paths are kept as
 * given (relative to the working directory); loadNodeConfig resolves a file's against its folder.
 */
export function parseNodeConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env): NodeConfig {
  if (!isPlainObject(raw)) throw new ConfigError("Invalid Tollway node configuration", { metaMessages: ["(root): the config must be a JSON object"] });
  const merged: Record<string, unknown> = { ...raw };
  const envProblems: string[] = [];
  for (const o of NODE_ENV_OVERRIDES) {
    const v = env[o.name];
    if (v === undefined || v === "") continue;
    let value: string | number = v;
    if (o.kind === "uint") {
      value = /^\d+$/.test(v) ? Number(v) : NaN;
      if (!Number.isSafeInteger(value)) {
        envProblems.push(`${o.name}: must be a whole number in decimal digits, got ${JSON.stringify(v)}`);
        continue;
      }
    }
    if (o.path.length === 1) merged[o.path[0]] = value;
    else merged[o.path[0]] = { ...(isPlainObject(merged[o.path[0]]) ? (merged[o.path[0]] as object) : {}), [o.path[1]]: value };
  }
  if (envProblems.length) throw new ConfigError("Invalid Tollway environment override", { metaMessages: envProblems });
  const parsed = nodeConfigSchema.safeParse(merged);
  if (!parsed.success) {
    throw new ConfigError("Invalid Tollway node configuration", { metaMessages: parsed.error.issues.map(describeIssue) });
  }
  return parsed.data;
}

/**
 * Reads and parses a JSON config file (with environment overrides). Relative paths in the file
 * (`storePath`, its default `.tollway/payee`, `keyFile`, `listen.tls.certFile` / `keyFile`) are resolved
 * against the file's folder, so the node finds the same store whatever its working directory; paths from
 * the environment (TOLLWAY_STORE) stay relative to the working directory.
 */
export function loadNodeConfig(file: string, env: NodeJS.ProcessEnv = process.env): NodeConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (cause) {
    throw new ConfigError(`Cannot read config file ${file}`, { cause, metaMessages: [(cause as Error).message] });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new ConfigError(`Cannot read config file ${file}`, { cause, metaMessages: [jsonSyntaxProblem(text, cause as Error)] });
  }
  const config = parseNodeConfig(resolveFilePaths(raw, path.dirname(path.resolve(file))), env);
  checkStoreNotMoved(config, raw, env);
  return config;
}

/**
 * Up to this version a relative `storePath` (or the default) was taken from the working directory. A
 * node upgraded in place would now open a new, empty store beside its config file and never claim the
 * vouchers held in the old one: refused when the new place has no store and the old one has.
 */
function checkStoreNotMoved(config: NodeConfig, raw: unknown, env: NodeJS.ProcessEnv) {
  if (env.TOLLWAY_STORE) return; // the environment names it (working-directory semantics, as before)
  const given = isPlainObject(raw) && typeof raw.storePath === "string" ? raw.storePath : DEFAULT_STORE_PATH;
  if (path.isAbsolute(given)) return;
  const previous = path.resolve(given);
  const isStore = (dir: string) => fs.existsSync(path.join(dir, "CURRENT"));
  if (previous !== config.storePath && isStore(previous) && !isStore(config.storePath)) {
    throw new ConfigError("The store moved: relative paths in a config file are now taken from the file's folder", {
      metaMessages: [`the store is at ${previous}`, `the config now points at ${config.storePath}, where there is none`, `set "storePath": ${JSON.stringify(previous)} in the config (or move the store there)`],
    });
  }
}

/**
 * Where JSON.parse stopped, as "line L, column C" (V8's own message may quote the text around the error,
 * and a config file can hold the admin token: it is not repeated).
 */
function jsonSyntaxProblem(text: string, err: Error): string {
  const pos = /at position (\d+)/.exec(err.message);
  if (pos) {
    const before = text.slice(0, Number(pos[1]));
    const line = before.split("\n").length;
    const column = before.length - before.lastIndexOf("\n");
    return `invalid JSON at line ${line}, column ${column}: ${err.message.replace(/ in JSON at position \d+.*$/s, "")}`;
  }
  if (/end of JSON input/.test(err.message)) return "invalid JSON: the file ends too early";
  const token = /^Unexpected token (.+?), /s.exec(err.message);
  return token ? `invalid JSON: unexpected ${token[1]!.replace(/\n/g, "\\n")}` : "invalid JSON";
}

/** A copy of a config object with its relative file paths resolved against `dir`. */
function resolveFilePaths(raw: unknown, dir: string): unknown {
  if (!isPlainObject(raw)) return raw;
  const at = (p: unknown) => (typeof p === "string" && p !== "" ? path.resolve(dir, p) : p);
  const out: Record<string, unknown> = { ...raw, storePath: at(raw.storePath === undefined ? DEFAULT_STORE_PATH : raw.storePath) };
  if (raw.keyFile !== undefined) out.keyFile = at(raw.keyFile);
  const listen = raw.listen;
  if (isPlainObject(listen) && isPlainObject(listen.tls)) {
    out.listen = { ...listen, tls: { ...listen.tls, certFile: at(listen.tls.certFile), keyFile: at(listen.tls.keyFile) } };
  }
  return out;
}

/** The node's private key: TOLLWAY_PAYEE_KEY or a key file readable by the owner only (`keyFile`), not both. */
export function loadNodeKey(config: NodeConfig, env: NodeJS.ProcessEnv = process.env): Hex {
  return loadPrivateKey({ envName: "TOLLWAY_PAYEE_KEY", file: config.keyFile, setting: "keyFile", env });
}
