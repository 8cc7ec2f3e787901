/**
 * Browser build of the payer (bundled by scripts/build-web.js into dist/web/tollway-payer.js, global
 * `Tollway`): an EIP-1193 injected wallet signs deposits — one prompt per deposit — and a session key
 * kept in IndexedDB signs every voucher silently.
 */
import { createWalletClient, custom, type Address, type EIP1193Provider, type Hex, type LocalAccount } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { createPayer, type PayerPolicy, type TypedDataSigner } from "../payer/payer";
import { wrapFetch, requestRefund } from "../payer/fetch";
import { openIndexedDbPayerStore } from "../payer/idbStore";
import { MemoryPayerStore } from "../payer/store";
import { formatAmount } from "../protocol/amounts";

export type BrowserPayerOptions = {
  /** An injected wallet (EIP-1193), or */
  provider?: EIP1193Provider;
  /** a local key's account (demo wallets, kiosks) signing deposits itself. */
  account?: LocalAccount;
  chainId: number;
  policy?: PayerPolicy;
  /** IndexedDB database name (one per site/wallet). */
  dbName?: string;
};

/**
 * Connects to the injected wallet and returns a paying fetch plus helpers.
 * @example const t = await Tollway.connect({ provider: window.ethereum, chainId: 31337 }); await t.fetch("/articles/1")
 */
export async function connect(opts: BrowserPayerOptions) {
  let address: Address;
  let wallet: TypedDataSigner;
  if (opts.account) {
    address = opts.account.address;
    wallet = opts.account;
  } else if (opts.provider) {
    const [first] = (await opts.provider.request({ method: "eth_requestAccounts" })) as Address[];
    if (!first) throw new Error("the wallet returned no account");
    address = first;
    wallet = createWalletClient({ account: first, transport: custom(opts.provider) }) as TypedDataSigner;
  } else {
    throw new Error("connect needs a provider (injected wallet) or an account (local key)");
  }
  const store = await openIndexedDbPayerStore(opts.dbName ?? `tollway-payer-${address.toLowerCase()}`);
  let key = (await store.getKey("session")) as Hex | undefined;
  if (!key) {
    key = generatePrivateKey();
    await store.putKey("session", key);
  }
  // Vouchers are signed by the session key without a wallet prompt: without a page policy, at most $1 a
  // request and $20 a deposit (6-decimal stablecoins), so a payee's 402 cannot name any price it likes.
  const policy = { maxPerRequest: 1_000_000n, maxDeposit: 20_000_000n, ...opts.policy };
  const payer = createPayer({ account: wallet, sessionKey: privateKeyToAccount(key), store, chainId: opts.chainId, policy, ...(webLocks ? { lock: webLocks } : {}) });
  const paidFetch = wrapFetch(fetch.bind(globalThis), payer);
  return {
    address,
    payer,
    fetch: paidFetch,
    /** Channels with balance and charges, in token units. */
    async channels(decimals = 6) {
      return (await store.channels()).map((c) => ({
        channelId: c.channelId,
        payee: c.config.receiver,
        balance: formatAmount(c.balance, decimals),
        charged: formatAmount(c.charged, decimals),
        remaining: formatAmount(c.balance - c.charged, decimals),
      }));
    },
    refund: (url: string) => requestRefund(fetch.bind(globalThis), payer, url),
  };
}

/**
 * Tabs of one origin share the IndexedDB store, so a channel's requests are serialized across them with
 * the Web Locks API (the lock is held until the returned function is called).
 */
type LockManager = { request(name: string, cb: () => Promise<void>): Promise<void> };
const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
const webLocks = locks
  ? {
      acquire: (channelId: string) =>
        new Promise<() => void>((granted) => {
          void locks.request(`tollway-channel:${channelId}`, () => new Promise<void>((free) => granted(free)));
        }),
    }
  : undefined;

export { createPayer, wrapFetch, requestRefund, MemoryPayerStore, openIndexedDbPayerStore, privateKeyToAccount, generatePrivateKey };
