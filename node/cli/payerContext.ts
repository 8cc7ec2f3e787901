/**
 * What the payer commands share: the key (TOLLWAY_PAYER_KEY or a 0600 key file), the LevelDB store,
 * chain clients and token units. Private keys are never printed.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { type Address, type Hex, getAddress, keccak256, toHex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createChainClients } from "../chain/clients";
import { formatAmount, parsePrice } from "../protocol/amounts";
import { createPayer, type Payer, type PayerPolicy } from "../payer/payer";
import { openPayerStore, type PayerStore } from "../payer/store";
import { loadPrivateKey } from "../chain/keys";

export type PayerCliOptions = {
  rpc: string;
  /** Parsed by the CLI (a positive integer). */
  chainId: number;
  store?: string;
  keyFile?: string;
  json?: boolean;
  max?: string;
  budget?: string;
  maxDeposit?: string;
  /** Parsed by the CLI (seconds). */
  maxWithdrawDelay?: number;
  /** Token decimals for amounts, parsed by the CLI (0-36). */
  decimals?: number;
  symbol?: string;
  /** Escrow address (default: canonical); the payer's channel ids, reads and transactions all use it. */
  escrow?: string;
  /** The only token to pay in. */
  asset?: string;
};

/** The key from `envName` or from a key file readable by its owner only (node/chain/keys.ts). */
export function readKey(keyFile: string | undefined, envName = "TOLLWAY_PAYER_KEY", env: NodeJS.ProcessEnv = process.env): Hex {
  return loadPrivateKey({ envName, file: keyFile, setting: "--key-file", env });
}

export type PayerContext = {
  payer: Payer;
  store: PayerStore;
  address: Address;
  decimals: number;
  symbol: string;
  fmt(atomic: bigint): string;
  parse(amount: string): bigint;
  publicClient: ReturnType<typeof createChainClients>["publicClient"];
  close(): Promise<void>;
};

export async function openPayerContext(o: PayerCliOptions): Promise<PayerContext> {
  const key = readKey(o.keyFile);
  const account = privateKeyToAccount(key);
  const chainId = o.chainId;
  const { publicClient, walletClient } = createChainClients({ rpcUrl: o.rpc, chainId }, account);
  const dir = o.store ?? path.join(os.homedir(), ".tollway", "payer", account.address.toLowerCase());
  fs.mkdirSync(dir, { recursive: true });
  const store = await openPayerStore(dir);
  const decimals = o.decimals ?? 6;
  const symbol = o.symbol ?? "USDC";
  const parse = (v: string) => parsePrice(v, decimals);
  const policy: PayerPolicy = {
    maxPerRequest: o.max ? parse(o.max) : undefined,
    budget: o.budget ? parse(o.budget) : undefined,
    maxDeposit: o.maxDeposit ? parse(o.maxDeposit) : undefined,
    ...(o.maxWithdrawDelay !== undefined ? { maxWithdrawDelay: o.maxWithdrawDelay } : {}),
    ...(o.asset ? { allowedAssets: [getAddress(o.asset)] } : {}),
  };
  // The session key is derived from the wallet key: stable across runs, never stored or printed.
  const sessionKey = privateKeyToAccount(keccak256(toHex(`tollway-session:${key}`)));
  const payer = createPayer({ account, sessionKey, store, chainId, publicClient, walletClient, policy, ...(o.escrow ? { escrow: o.escrow as `0x${string}` } : {}) });
  return {
    payer,
    store,
    address: account.address,
    decimals,
    symbol,
    fmt: (a) => `${formatAmount(a, decimals)} ${symbol}`,
    parse,
    publicClient,
    close: () => store.close(),
  };
}
