/**
 * PayerStore on IndexedDB (browsers): channel state and remembered routes survive reloads, so a reader
 * neither pays twice nor re-deposits after closing the tab. Also keeps the session key.
 */
import type { Hex } from "viem";
import type { PayerChannel, PayerStore, RouteMemo } from "./store";

const BIG = ["charged", "signedMax", "balance", "spent"] as const;

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function toJson(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x));
}

export type IndexedDbPayerStore = PayerStore & {
  getOrCreateKey(id: string, make: () => string): Promise<{ key: string; created: boolean }>;
  importKeyAndChannels(id: string, key: string, decide: (current: string | undefined, held: PayerChannel[]) => PayerChannel[] | string): Promise<void>;
};

/** Opens (creating) the IndexedDB database `name` with stores for channels, routes and keys. */
export async function openIndexedDbPayerStore(name = "tollway-payer"): Promise<IndexedDbPayerStore> {
  const open = indexedDB.open(name, 1);
  open.onupgradeneeded = () => {
    const db = open.result;
    for (const s of ["channels", "routes", "keys"]) if (!db.objectStoreNames.contains(s)) db.createObjectStore(s);
  };
  const db = await req(open);
  const get = async (store: string, key: string) => req(db.transaction(store, "readonly").objectStore(store).get(key)) as Promise<string | undefined>;
  const put = (store: string, key: string, value: string) =>
    new Promise<void>((resolve, reject) => {
      // "strict": the write is flushed before `complete` (a voucher ceiling or the session key must survive a crash).
      const tx = db.transaction(store, "readwrite", { durability: "strict" } as IDBTransactionOptions);
      tx.objectStore(store).put(value, key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  const decodeChannel = (t: string): PayerChannel => {
    const raw = JSON.parse(t);
    for (const f of BIG) raw[f] = BigInt(raw[f]);
    return raw;
  };
  return {
    async getChannel(id: Hex) {
      const t = await get("channels", id);
      return t === undefined ? undefined : decodeChannel(t);
    },
    putChannel: (c) => put("channels", c.channelId, toJson(c)),
    async channels() {
      const all = (await req(db.transaction("channels", "readonly").objectStore("channels").getAll())) as string[];
      return all.map(decodeChannel);
    },
    async getRoute(key) {
      const t = await get("routes", key);
      if (t === undefined) return undefined;
      const m = JSON.parse(t) as RouteMemo;
      m.requirements.amount = BigInt(m.requirements.amount as unknown as string);
      return m;
    },
    putRoute: (m) => put("routes", m.key, toJson(m)),
    deleteRoute: (key) =>
      new Promise<void>((resolve, reject) => {
        const tx = db.transaction("routes", "readwrite");
        tx.objectStore("routes").delete(key);
        tx.oncomplete = () => resolve();
        tx.onerror = () => reject(tx.error);
      }),
    async close() {
      db.close();
    },
    /**
     * The key `id`, created with `make` on first use. Read and created in one readwrite transaction
     * (IndexedDB runs those one at a time per store, across tabs), so two tabs opening together on a first
     * visit end with one key, never one each with the last write winning; `add` never overwrites one.
     */
    getOrCreateKey: (id, make) =>
      new Promise((resolve, reject) => {
        // "strict": the key is on disk before it signs anything (a voucher it signed must stay signable).
        const tx = db.transaction("keys", "readwrite", { durability: "strict" } as IDBTransactionOptions);
        const keys = tx.objectStore("keys");
        let result: { key: string; created: boolean } | undefined;
        const read = keys.get(id);
        read.onsuccess = () => {
          if (typeof read.result === "string") {
            result = { key: read.result, created: false };
            return;
          }
          const fresh = make();
          keys.add(fresh, id);
          result = { key: fresh, created: true };
        };
        tx.oncomplete = () => resolve(result!);
        tx.onabort = () => reject(tx.error);
      }),
    /**
     * Sets the key `id` (a different one it replaces is kept as `<id>:retired:<ms>`) and writes the channels
     * `decide` returns, shown the current key and every channel held, all in one transaction over keys and
     * channels (serialized with getOrCreateKey and the channel writes of other tabs). When `decide` returns
     * a reason instead, or throws, nothing is written and the promise rejects with it.
     */
    importKeyAndChannels: (id, key, decide) =>
      new Promise((resolve, reject) => {
        const tx = db.transaction(["keys", "channels"], "readwrite", { durability: "strict" } as IDBTransactionOptions);
        const keys = tx.objectStore("keys");
        const held = tx.objectStore("channels");
        let reason: string | undefined;
        const current = keys.get(id);
        current.onsuccess = () => {
          const all = held.getAll();
          all.onsuccess = () => {
            let decided: PayerChannel[] | string;
            try {
              decided = decide(typeof current.result === "string" ? current.result : undefined, (all.result as string[]).map(decodeChannel));
            } catch (err) {
              decided = `the stored key or channels could not be read (${(err as Error).message})`;
            }
            if (typeof decided === "string") {
              reason = decided;
              return tx.abort();
            }
            // A key replaced is kept, retired, never deleted: channels it opened may still need it.
            if (typeof current.result === "string" && current.result !== key) keys.put(current.result, `${id}:retired:${Date.now()}`);
            keys.put(key, id);
            for (const c of decided) held.put(toJson(c), c.channelId);
          };
        };
        tx.oncomplete = () => resolve();
        tx.onabort = () => reject(reason !== undefined ? new Error(reason) : tx.error);
      }),
  };
}
