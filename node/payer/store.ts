/**
 * Payer-side channel state: config, what the server has charged, the last voucher signed, the balance
 * known from deposits and responses, and the requirements last accepted per route (for one-round-trip
 * payments). LevelDB in Node (`openPayerStore`), memory for tests and the browser build's fallback.
 */
import type { Hex } from "viem";
import type { ChannelConfig } from "../protocol/typedData";
import type { PaymentRequirements } from "../protocol/wire";

export type PayerChannel = {
  channelId: Hex;
  config: ChannelConfig;
  network: string;
  /** Server-confirmed cumulative charge (the next voucher is charged + price). */
  charged: bigint;
  /** Highest maxClaimableAmount signed so far (what the payer is exposed to). */
  signedMax: bigint;
  /** Channel balance as last confirmed (deposit receipt or PAYMENT-RESPONSE). */
  balance: bigint;
  /** Sum of everything this payer has agreed to pay on this channel (for the budget). */
  spent: bigint;
  /** Set when the server broke a client verification rule: no more vouchers for this channel. */
  halted?: string;
  updatedAt: number;
};

export type RouteMemo = { key: string; requirements: PaymentRequirements; resource?: string; at: number };

export interface PayerStore {
  getChannel(channelId: Hex): Promise<PayerChannel | undefined>;
  putChannel(ch: PayerChannel): Promise<void>;
  channels(): Promise<PayerChannel[]>;
  getRoute(key: string): Promise<RouteMemo | undefined>;
  putRoute(memo: RouteMemo): Promise<void>;
  deleteRoute(key: string): Promise<void>;
  close(): Promise<void>;
}

const BIG = ["charged", "signedMax", "balance", "spent"] as const;

function encodeChannel(ch: PayerChannel): string {
  return JSON.stringify(ch, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
}
function decodeChannel(text: string): PayerChannel {
  const raw = JSON.parse(text);
  for (const f of BIG) raw[f] = BigInt(raw[f]);
  return raw as PayerChannel;
}
function encodeRoute(m: RouteMemo): string {
  return JSON.stringify(m, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
}
function decodeRoute(text: string): RouteMemo {
  const raw = JSON.parse(text);
  raw.requirements.amount = BigInt(raw.requirements.amount);
  return raw as RouteMemo;
}

/** In-memory store (tests; browsers without IndexedDB). */
export class MemoryPayerStore implements PayerStore {
  private readonly ch = new Map<string, string>();
  private readonly routes = new Map<string, string>();
  async getChannel(id: Hex) {
    const t = this.ch.get(id);
    return t === undefined ? undefined : decodeChannel(t);
  }
  async putChannel(c: PayerChannel) {
    this.ch.set(c.channelId, encodeChannel(c));
  }
  async channels() {
    return [...this.ch.values()].map(decodeChannel);
  }
  async getRoute(key: string) {
    const t = this.routes.get(key);
    return t === undefined ? undefined : decodeRoute(t);
  }
  async putRoute(m: RouteMemo) {
    this.routes.set(m.key, encodeRoute(m));
  }
  async deleteRoute(key: string) {
    this.routes.delete(key);
  }
  async close() {}
}

/**
 * LevelDB store for Node. Keys: `ch:<channelId>` (PayerChannel), `rt:<METHOD origin/path>` (RouteMemo).
 * Channel writes are fsync'd: a restarted client neither overpays nor stalls.
 */
export async function openPayerStore(location: string): Promise<PayerStore> {
  const { ClassicLevel } = require("classic-level") as typeof import("classic-level");
  const db = new ClassicLevel<string, string>(location, { valueEncoding: "utf8" });
  await db.open();
  return {
    async getChannel(id) {
      const t = await db.get(`ch:${id}`);
      return t === undefined ? undefined : decodeChannel(t);
    },
    async putChannel(c) {
      await db.put(`ch:${c.channelId}`, encodeChannel(c), { sync: true });
    },
    async channels() {
      const out: PayerChannel[] = [];
      for await (const v of db.values({ gte: "ch:", lt: "ch;" })) out.push(decodeChannel(v));
      return out;
    },
    async getRoute(key) {
      const t = await db.get(`rt:${key}`);
      return t === undefined ? undefined : decodeRoute(t);
    },
    async putRoute(m) {
      await db.put(`rt:${m.key}`, encodeRoute(m));
    },
    async deleteRoute(key) {
      await db.del(`rt:${key}`);
    },
    close: () => db.close(),
  };
}
