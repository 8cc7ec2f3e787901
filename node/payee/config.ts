/**
 * Payee node configuration: one JSON file plus TOLLWAY_* environment overrides, validated with clear
 * messages. The relayer / receiverAuthorizer key comes from the environment (TOLLWAY_PAYEE_KEY) or a
 * key file that must be mode 0600; it is never logged.
 */
import fs from "node:fs";
import { z } from "zod";
import type { Hex } from "viem";
import { ConfigError } from "../protocol/errors";
import { addressSchema } from "../protocol/wire";

const priceSchema = z.union([z.string().regex(/^\$?\d+(\.\d+)?$/, 'a price like "$0.01"'), z.bigint()]);

export const nodeConfigSchema = z
  .object({
    rpcUrl: z.string().url().default("http://127.0.0.1:8545"),
    chainId: z.number().int().positive().default(31337),
    confirmations: z.number().int().nonnegative().default(0),
    escrow: addressSchema,
    erc3009Collector: addressSchema,
    asset: z.object({
      address: addressSchema,
      name: z.string().default("USDC"),
      version: z.string().default("2"),
      decimals: z.number().int().min(0).max(36).default(6),
      symbol: z.string().default("USDC"),
    }),
    /** payTo; defaults to the node key's address. */
    receiver: addressSchema.optional(),
    withdrawDelay: z.number().int().min(900).max(30 * 24 * 3600).default(900),
    listen: z
      .object({
        host: z.string().default("127.0.0.1"),
        port: z.number().int().min(0).max(65535).default(4020),
        /** Serve HTTPS with this PEM certificate (chain) and key (mode 0600), e.g. when bound beyond loopback. */
        tls: z.object({ certFile: z.string(), keyFile: z.string() }).strict().optional(),
      })
      .default({}),
    storePath: z.string().default(".tollway/payee"),
    keyFile: z.string().optional(),
    /** Bearer token for admin, metrics and facilitator endpoints (or TOLLWAY_ADMIN_TOKEN). */
    adminToken: z.string().min(16, "adminToken must be at least 16 characters").optional(),
    facilitator: z.boolean().default(true),
    riskWindowMs: z.number().int().positive().default(300_000),
    /** How often the chain watcher polls the escrow's events (ms). */
    pollIntervalMs: z.number().int().min(50).default(2_000),
    /** Most blocks the watcher asks for in one eth_getLogs (RPC providers cap the range). */
    maxBlockRange: z.number().int().min(1).max(100_000).default(2_000),
    claims: z
      .object({
        threshold: priceSchema.optional(),
        intervalMs: z.number().int().positive().optional(),
        batchSize: z.number().int().min(1).max(500).default(100),
        onShutdown: z.boolean().default(true),
      })
      .default({}),
    /** Express-style paid routes served by a handler the embedding app installs. */
    routes: z.record(priceSchema.or(z.object({ price: priceSchema, description: z.string().optional(), mimeType: z.string().optional() }))).default({}),
    /** Reverse proxy: route key -> upstream base URL and price. */
    proxy: z
      .record(
        z.object({
          upstream: z.string().url(),
          price: priceSchema,
          description: z.string().optional(),
          mimeType: z.string().optional(),
          /** The upstream must answer (and keep sending) within this many ms, else 504 upstream_timeout, uncharged. */
          timeoutMs: z.number().int().min(1).max(600_000).default(30_000),
        }),
      )
      .default({}),
    /** On stop, requests in flight get this long (ms) to finish before their connections are cut (uncharged). */
    shutdownDrainMs: z.number().int().min(0).max(600_000).default(10_000),
    /** Worker threads recovering voucher signers; default all cores but one (at most 4), 0 = main thread. */
    recoveryThreads: z.number().int().min(0).max(64).optional(),
    logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  })
  .strict();

export type NodeConfig = z.infer<typeof nodeConfigSchema>;

const ENV_OVERRIDES: Record<string, (v: string) => [string, unknown]> = {
  TOLLWAY_RPC_URL: (v) => ["rpcUrl", v],
  TOLLWAY_CHAIN_ID: (v) => ["chainId", Number(v)],
  TOLLWAY_PORT: (v) => ["listen", { port: Number(v) }],
  TOLLWAY_HOST: (v) => ["listen", { host: v }],
  TOLLWAY_STORE: (v) => ["storePath", v],
  TOLLWAY_ADMIN_TOKEN: (v) => ["adminToken", v],
  TOLLWAY_LOG_LEVEL: (v) => ["logLevel", v],
  TOLLWAY_RECOVERY_THREADS: (v) => ["recoveryThreads", Number(v)],
};

/** Parses a config object (file contents merged with environment overrides). */
export function parseNodeConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env): NodeConfig {
  const merged: Record<string, unknown> = { ...(raw as Record<string, unknown>) };
  for (const [name, apply] of Object.entries(ENV_OVERRIDES)) {
    const v = env[name];
    if (v === undefined || v === "") continue;
    const [key, value] = apply(v);
    merged[key] = key === "listen" ? { ...(merged.listen as object), ...(value as object) } : value;
  }
  const parsed = nodeConfigSchema.safeParse(merged);
  if (!parsed.success) {
    throw new ConfigError("Invalid Tollway node configuration", {
      metaMessages: parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`),
    });
  }
  return parsed.data;
}

export function loadNodeConfig(file: string, env: NodeJS.ProcessEnv = process.env): NodeConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (cause) {
    throw new ConfigError(`Cannot read config file ${file}`, { cause });
  }
  return parseNodeConfig(raw, env);
}

/** The node's private key: TOLLWAY_PAYEE_KEY, else a key file readable by the owner only. */
export function loadNodeKey(config: NodeConfig, env: NodeJS.ProcessEnv = process.env): Hex {
  const fromEnv = env.TOLLWAY_PAYEE_KEY;
  let key: string | undefined = fromEnv;
  if (!key && config.keyFile) {
    const st = fs.statSync(config.keyFile);
    if ((st.mode & 0o077) !== 0) {
      throw new ConfigError(`Key file ${config.keyFile} must not be readable by group or others (chmod 600)`);
    }
    key = fs.readFileSync(config.keyFile, "utf8").trim();
  }
  if (!key) throw new ConfigError("No node key: set TOLLWAY_PAYEE_KEY or keyFile (mode 0600)");
  if (!/^0x[0-9a-fA-F]{64}$/.test(key)) throw new ConfigError("The node key must be 32 bytes of 0x-prefixed hex");
  return key as Hex;
}
