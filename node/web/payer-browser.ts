/**
 * Browser build of the payer (bundled by scripts/build-web.js into dist/web/tollway-payer.js, global
 * `Tollway`): an EIP-1193 injected wallet signs deposits — one prompt per deposit — and a session key
 * kept in IndexedDB signs every voucher silently.
 *
 * The reader's way back to their money without the publisher: `channels()` lists every channel with its
 * full config, `backup()` returns the session key and configs as a file-ready object, and `withdraw`
 * runs the escrow's timed withdrawal from the wallet (it takes a config from a backup too, so it works
 * after the site's data was cleared). `restore(backup)` puts a backup back into a browser, so it pays on
 * and refunds those channels again.
 */
import {
  createPublicClient,
  createWalletClient,
  custom,
  defineChain,
  type Account,
  type Address,
  type Chain,
  type EIP1193Provider,
  type Hex,
  type LocalAccount,
  type PublicClient,
  type Transport,
  type WalletClient,
  verifyTypedData,
} from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { batchSettlementAbi } from "../chain/abi";
import { createPayer, type ChannelLock, type CreatePayerParameters, type PayerPolicy, type TypedDataSigner } from "../payer/payer";
import { wrapFetch, requestRefund } from "../payer/fetch";
import { openIndexedDbPayerStore, type IndexedDbPayerStore } from "../payer/idbStore";
import { MemoryPayerStore } from "../payer/store";
import { formatAmount } from "../protocol/amounts";
import { TollwayError } from "../protocol/errors";
import type { PayerChannel } from "../payer/store";
import { CANONICAL_ADDRESSES, computeChannelId, escrowDomain, type ChannelConfig } from "../protocol/typedData";

export type BrowserPayerOptions = {
  /** An injected wallet (EIP-1193), or */
  provider?: EIP1193Provider;
  /** a local key's account (demo wallets, kiosks) signing deposits itself. */
  account?: LocalAccount;
  chainId: number;
  policy?: PayerPolicy;
  /** IndexedDB database name (one per site/wallet). */
  dbName?: string;
  /** Most ms a payment waits for its channel while another tab pays on it (default 60,000). */
  lockWaitMs?: number;
  /**
   * Sends and reads the timed withdrawal's transactions. Default: built from `provider` (the wallet
   * sends them; one prompt each). With only an `account`, withdrawals need these.
   */
  walletClient?: WalletClient<Transport, Chain, Account>;
  publicClient?: PublicClient<Transport, Chain>;
};

/** One channel as `channels()` lists it: amounts in token units, and the config a withdrawal needs. */
export type BrowserChannel = {
  channelId: Hex;
  payee: Address;
  balance: string;
  charged: string;
  remaining: string;
  config: ChannelConfig;
  network: string;
};

/**
 * What `backup()` returns (JSON-safe: amounts as decimal strings of atomic units). Keep it private: the
 * session key signs vouchers on these channels, up to their balance.
 */
export type ChannelBackup = {
  format: "tollway-channel-backup/2";
  createdAt: string;
  chainId: number;
  escrow: Address;
  payer: Address;
  sessionKey: Hex;
  /** The origin of the page that made it: it restores there only. */
  site: string;
  /**
   * The wallet's EIP-712 signature of `SessionKey(payer, sessionKey address, escrow, site)` (see sessionKeyTypedData):
   * `restore` takes a backup's key only with it, so a file someone else made cannot plant a key they know.
   */
  walletSignature: Hex;
  channels: Array<{ channelId: Hex; network: string; config: ChannelConfig; balance: string; charged: string; signedMax: string }>;
};

/**
 * What the wallet signs when it backs up its session key (one prompt per backup), and `restore` checks.
 * `site` is the page's origin: a backup restores only on the site that made it (a publisher cannot get a
 * signed backup of a key its page knows restored on another site).
 */
export function sessionKeyTypedData(chainId: number, payer: Address, sessionKey: Address, escrow: Address, site: string) {
  return {
    domain: { name: "Tollway session key backup", version: "1", chainId },
    types: { SessionKey: [{ name: "payer", type: "address" }, { name: "sessionKey", type: "address" }, { name: "escrow", type: "address" }, { name: "site", type: "string" }] },
    primaryType: "SessionKey" as const,
    message: { payer, sessionKey, escrow, site },
  };
}

/** The page's origin ("" outside a browser). */
const siteOf = () => (globalThis as { location?: { origin?: string } }).location?.origin ?? "";

/** What the withdrawal helpers take: a channel id this browser knows, a config, or a backup's channel entry. */
export type WithdrawTarget = Hex | ChannelConfig | { config: ChannelConfig; charged?: string; balance?: string };

/**
 * Connects to the injected wallet and returns a paying fetch plus helpers.
 * @example const t = await Tollway.connect({ provider: window.ethereum, chainId: 31337 }); await t.fetch("/articles/1")
 */
export async function connect(opts: BrowserPayerOptions) {
  const address = await walletAddress(opts);
  let wallet: TypedDataSigner;
  let walletClient = opts.walletClient;
  let publicClient = opts.publicClient;
  if (opts.account) {
    wallet = opts.account;
  } else {
    const chain = chainFor(opts.chainId);
    const client = createWalletClient({ account: address, chain, transport: custom(opts.provider!) });
    wallet = client as TypedDataSigner;
    walletClient ??= client as WalletClient<Transport, Chain, Account>;
    publicClient ??= createPublicClient({ chain, transport: custom(opts.provider!) }) as PublicClient<Transport, Chain>;
  }
  const dbName = dbNameOf(opts, address);
  let store: IndexedDbPayerStore;
  let key: Hex;
  try {
    store = await openIndexedDbPayerStore(dbName);
    // One key per wallet, also when two tabs open together on a first visit (getOrCreateKey is atomic).
    const session = await store.getOrCreateKey("session", generatePrivateKey);
    if (session.created) persistStorage();
    key = session.key as Hex;
  } catch (cause) {
    // No silent fallback to memory: a channel whose key and state vanish on reload strands its deposit.
    throw new TollwayError("this browser does not let the page keep a payment channel (IndexedDB is unavailable)", { cause });
  }
  // Vouchers are signed by the session key without a wallet prompt: without a page policy, createPayer's
  // caps apply (at most $1 a request and $20 a deposit of a 6-decimal stablecoin), so a payee's 402
  // cannot name any price it likes.
  const policy = opts.policy ?? {};
  const channelLock = webLocks(opts.lockWaitMs ?? 60_000);
  const base: CreatePayerParameters = { account: wallet, sessionKey: privateKeyToAccount(key), store, chainId: opts.chainId, policy, ...(channelLock ? { lock: channelLock } : {}) };
  const payer = createPayer(base);
  // Only the withdrawal reads the chain: the paying payer stays exactly as before (no chain reads per
  // payment, and wallets that cannot answer eth_call still pay).
  const withdrawer = createPayer({ ...base, ...(walletClient ? { walletClient } : {}), ...(publicClient ? { publicClient } : {}) });
  const paidFetch = wrapFetch(fetch.bind(globalThis), payer);
  const escrow = payer.domain.verifyingContract;

  /** A channel to withdraw from: its id (known to this browser), its config, or a backup's entry. */
  const resolveTarget = async (target: WithdrawTarget): Promise<{ channelId: Hex; config: ChannelConfig; owed: bigint; balance?: bigint }> => {
    if (typeof target === "string") {
      const known = await store.getChannel(target);
      if (!known) throw new TollwayError(`channel ${target} is not in this browser's store: pass its config (from a backup) instead`);
      return { channelId: target, config: known.config, owed: known.charged, balance: known.balance };
    }
    const config = "config" in target ? target.config : target;
    const channelId = computeChannelId(payer.domain, config);
    const known = await store.getChannel(channelId);
    if (known) return { channelId, config, owed: known.charged, balance: known.balance };
    // A backup's entry says what the payee had charged when it was made (later charges need this key).
    const owed = "config" in target && target.charged !== undefined ? BigInt(target.charged) : 0n;
    const balance = "config" in target && target.balance !== undefined ? BigInt(target.balance) : undefined;
    return { channelId, config, owed, ...(balance !== undefined ? { balance } : {}) };
  };

  return {
    address,
    payer,
    fetch: paidFetch,
    /** Channels with balance and charges, in token units, and the config a withdrawal needs. */
    async channels(decimals = 6): Promise<BrowserChannel[]> {
      return (await store.channels()).map((c) => ({
        channelId: c.channelId,
        payee: c.config.receiver,
        balance: formatAmount(c.balance, decimals),
        charged: formatAmount(c.charged, decimals),
        remaining: formatAmount(c.balance - c.charged, decimals),
        config: c.config,
        network: c.network,
      }));
    },
    /**
     * Everything needed to get this browser's deposits back elsewhere: the session key and every channel's
     * config, with the wallet's signature of the key (one wallet prompt).
     */
    async backup(): Promise<ChannelBackup> {
      const site = siteOf();
      const walletSignature = await wallet.signTypedData(sessionKeyTypedData(opts.chainId, payer.payer, privateKeyToAccount(key).address, escrow, site) as never);
      return {
        format: "tollway-channel-backup/2",
        createdAt: new Date().toISOString(),
        chainId: opts.chainId,
        escrow,
        payer: payer.payer,
        sessionKey: key,
        site,
        walletSignature,
        channels: (await store.channels()).map((c) => ({
          channelId: c.channelId,
          network: c.network,
          config: c.config,
          balance: c.balance.toString(),
          charged: c.charged.toString(),
          signedMax: c.signedMax.toString(),
        })),
      };
    },
    refund: (url: string) => requestRefund(fetch.bind(globalThis), payer, url),
    /**
     * The timed withdrawal, for when the payee does not cooperate: the wallet sends both transactions
     * (they need gas). `start` asks for everything unclaimed on chain (Payer.withdrawable; without a chain
     * reader, the known balance above the known charges); `finish` pays out what is still unclaimed once
     * the channel's withdraw delay has passed (the payee claims its charges meanwhile). Both take a channel
     * id, a config, or a backup's channel entry (so they work after this browser's data is gone).
     */
    withdraw: {
      async start(target: WithdrawTarget, amount?: bigint): Promise<{ channelId: Hex; amount: bigint; txHash: Hex; finalizeAfter?: number }> {
        const { channelId, config, owed: charged, balance: stored } = await resolveTarget(target);
        let wanted = amount;
        if (wanted === undefined) {
          if (publicClient) wanted = await withdrawer.withdrawable(channelId);
          else wanted = stored !== undefined && stored > charged ? stored - charged : 0n;
        }
        if (wanted <= 0n) throw new TollwayError(`nothing to withdraw from channel ${channelId}`);
        const txHash = await withdrawer.initiateWithdraw(config, wanted);
        let finalizeAfter: number | undefined;
        if (publicClient) {
          const receipt = await publicClient.getTransactionReceipt({ hash: txHash });
          const block = await publicClient.getBlock({ blockNumber: receipt.blockNumber });
          finalizeAfter = Number(block.timestamp) + config.withdrawDelay;
        }
        return { channelId, amount: wanted, txHash, ...(finalizeAfter !== undefined ? { finalizeAfter } : {}) };
      },
      async finish(target: WithdrawTarget): Promise<{ channelId: Hex; txHash: Hex }> {
        const { channelId, config } = await resolveTarget(target);
        // finalizeWithdraw writes the stored balance under the channel's (cross-tab) lock itself.
        return { channelId, txHash: await withdrawer.finalizeWithdraw(config) };
      },
    },
  };
}

const dbNameOf = (opts: Pick<BrowserPayerOptions, "dbName">, wallet: Address) => opts.dbName ?? `tollway-payer-${wallet.toLowerCase()}`;
const sameAddress = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/**
 * Puts a `backup()` back into this browser, so that `connect` pays on its channels again (no second
 * deposit) and `refund` closes them cooperatively: after the site's data was cleared, or on another
 * device. The backup's session key becomes the wallet's key in this browser (a key it replaces is kept
 * in the store, retired, never deleted). A channel the browser already knows is merged: the higher
 * charges and ceilings, its own balance, and a halt stays. Connect again afterwards: a connected
 * payer keeps signing with the key it loaded; do not restore while a payment is running.
 *
 * Refused with nothing written when the backup is for another wallet, chain or escrow; has no channel,
 * the same channel twice, or a channel whose config does not hash to its id or is not the wallet's and
 * the backup key's; when this browser holds a channel with money left under another session key (refund
 * or withdraw it first); and, where the chain can be read (a `publicClient`, or the wallet answering
 * eth_call on this page's chain), when none of the backup's channels was ever funded on chain (a crafted
 * backup would otherwise plant a key someone else knows). The wallet is asked for its address only:
 * nothing is signed or sent.
 */
export async function restore(opts: Pick<BrowserPayerOptions, "provider" | "account" | "chainId" | "dbName" | "publicClient">, backup: ChannelBackup): Promise<{ channels: number; keyReplaced: boolean }> {
  // `channels`: records written or merged.
  const address = await walletAddress(opts);
  if ((backup as { format?: unknown } | undefined)?.format === "tollway-channel-backup/1") {
    throw new TollwayError(
      "this backup (format 1) has no wallet signature of its session key, so it cannot be restored: make a new backup where the channels are, or withdraw them with this file (withdraw takes its channel entries)",
    );
  }
  if (backup?.format !== "tollway-channel-backup/2") throw new TollwayError("not a Tollway channel backup (format tollway-channel-backup/2)");
  if (backup.chainId !== opts.chainId) throw new TollwayError(`the backup is for chain ${backup.chainId}, this page pays on ${opts.chainId}`);
  const domain = escrowDomain(opts.chainId, CANONICAL_ADDRESSES.batchSettlement);
  if (!sameAddress(String(backup.escrow), domain.verifyingContract)) throw new TollwayError(`the backup is for the escrow ${backup.escrow}, this page pays through ${domain.verifyingContract}`);
  if (!sameAddress(String(backup.payer), address)) throw new TollwayError(`the backup is for the wallet ${backup.payer}; connect that wallet to restore it`);
  if (!Array.isArray(backup.channels) || backup.channels.length === 0) throw new TollwayError("the backup has no channel: there is nothing to restore");
  let sessionKey: Hex;
  let sessionAddress: Address;
  try {
    sessionKey = backup.sessionKey.toLowerCase() as Hex;
    sessionAddress = privateKeyToAccount(sessionKey).address;
  } catch (cause) {
    throw new TollwayError("the backup's session key is not a private key", { cause });
  }
  await checkKeySigned(opts, address, sessionAddress, domain.verifyingContract, backup.walletSignature);
  const now = Date.now();
  const restored = new Map<Hex, PayerChannel>();
  for (const c of backup.channels) {
    const what = `the backup's channel ${c?.channelId}`;
    let amounts: [bigint, bigint, bigint];
    try {
      if (computeChannelId(domain, c.config) !== c.channelId) throw new TollwayError(`${what}: its config does not hash to its id`);
      amounts = [BigInt(c.charged), BigInt(c.signedMax), BigInt(c.balance)];
    } catch (cause) {
      throw cause instanceof TollwayError ? cause : new TollwayError(`${what} is malformed`, { cause });
    }
    if (!sameAddress(c.config.payer, address) || !sameAddress(c.config.payerAuthorizer, sessionAddress)) throw new TollwayError(`${what} is not this wallet's with the backup's session key`);
    if (restored.has(c.channelId)) throw new TollwayError(`${what} is in the backup twice`);
    const [charged, signedMax, balance] = amounts;
    if (charged < 0n || signedMax < charged || balance < 0n) throw new TollwayError(`${what}: its amounts are out of range`);
    restored.set(c.channelId, { channelId: c.channelId, config: c.config, network: `eip155:${opts.chainId}`, charged, signedMax, balance, spent: charged, updatedAt: now });
  }
  await checkFundedOnChain(opts, [...restored.keys()]);
  let store: IndexedDbPayerStore;
  try {
    store = await openIndexedDbPayerStore(dbNameOf(opts, address));
  } catch (cause) {
    throw new TollwayError("this browser does not let the page keep a payment channel (IndexedDB is unavailable)", { cause });
  }
  let keyReplaced = false;
  try {
    await store.importKeyAndChannels("session", sessionKey, (current, held) => {
      keyReplaced = current !== undefined && current.toLowerCase() !== sessionKey;
      if (keyReplaced) {
        const currentAddress = privateKeyToAccount(current as Hex).address;
        const open = held.find((c) => sameAddress(c.config.payerAuthorizer, currentAddress) && c.balance > c.charged);
        if (open) return `this browser holds channel ${open.channelId} with money left under another session key: refund or withdraw it first`;
      }
      const known = new Map(held.map((c) => [c.channelId, c]));
      return [...restored.values()].map((c) => {
        const k = known.get(c.channelId);
        if (!k) return c;
        const most = (a: bigint, b: bigint) => (a > b ? a : b);
        return { ...k, charged: most(k.charged, c.charged), signedMax: most(k.signedMax, c.signedMax), spent: most(k.spent, c.spent), updatedAt: now }; // the local balance is the newer
      });
    });
  } catch (cause) {
    throw cause instanceof TollwayError ? cause : new TollwayError((cause as Error).message, { cause });
  } finally {
    await store.close();
  }
  persistStorage();
  return { channels: restored.size, keyReplaced };
}

/**
 * Refuses a session key the wallet did not sign for (sessionKeyTypedData). A smart wallet's signature is
 * checked by the chain (ERC-1271) where the page can read it; an EOA's locally.
 */
async function checkKeySigned(opts: Pick<BrowserPayerOptions, "provider" | "chainId" | "publicClient">, payer: Address, sessionKey: Address, escrow: Address, signature: unknown) {
  const refused = new TollwayError("the backup's session key is not signed by this wallet for this site: it was not made by this wallet's backup here, or it was changed");
  if (typeof signature !== "string" || !/^0x[0-9a-fA-F]+$/.test(signature)) throw refused;
  const typed = { address: payer, signature: signature as Hex, ...sessionKeyTypedData(opts.chainId, payer, sessionKey, escrow, siteOf()) };
  let valid = false;
  try {
    valid = await verifyTypedData(typed);
  } catch {
    valid = false;
  }
  if (!valid) {
    const reader = opts.publicClient ?? (opts.provider ? createPublicClient({ chain: chainFor(opts.chainId), transport: custom(opts.provider) }) : undefined);
    valid = reader ? await reader.verifyTypedData(typed).catch(() => false) : false;
  }
  if (!valid) throw refused;
}

/**
 * Refuses when the chain can be read and none of `channelIds` holds or ever paid out a deposit. Without a
 * chain reader (a local account, or a wallet that does not answer eth_call) nothing is checked.
 */
async function checkFundedOnChain(opts: Pick<BrowserPayerOptions, "provider" | "chainId" | "publicClient">, channelIds: Hex[]) {
  const reader = opts.publicClient ?? (opts.provider ? createPublicClient({ chain: chainFor(opts.chainId), transport: custom(opts.provider) }) : undefined);
  if (!reader) return;
  let funded = false;
  try {
    // A wallet on another chain would read another chain's escrow: nothing to check against there.
    if ((await reader.getChainId()) !== opts.chainId) return;
    for (const id of channelIds) {
      const [balance, totalClaimed] = await reader.readContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "channels", args: [id] });
      if (balance > 0n || totalClaimed > 0n) funded = true;
    }
  } catch {
    return; // the wallet cannot read the chain: nothing to check against
  }
  if (!funded) throw new TollwayError("none of the backup's channels was ever funded on chain: this is not a backup of this wallet's channels");
}

/** viem asserts the wallet's chain before sending a transaction: a minimal chain for the id is enough. */
const chainFor = (id: number) => defineChain({ id, name: `eip155:${id}`, nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 }, rpcUrls: { default: { http: [] } } });

/** The wallet's address: the local account's, or the injected wallet's first (it may prompt to connect). */
async function walletAddress(opts: Pick<BrowserPayerOptions, "provider" | "account">): Promise<Address> {
  if (opts.account) return opts.account.address;
  if (!opts.provider) throw new TollwayError("connect needs a provider (injected wallet) or an account (local key)");
  const [first] = (await opts.provider.request({ method: "eth_requestAccounts" })) as Address[];
  if (!first) throw new TollwayError("the wallet returned no account");
  return first;
}

/** Asks the browser to keep the site's storage (best effort): losing it loses the session key. */
function persistStorage() {
  const storage = (globalThis as { navigator?: { storage?: { persist?: () => Promise<boolean> } } }).navigator?.storage;
  void storage?.persist?.().catch(() => false);
}

/**
 * Tabs of one origin share the IndexedDB store, so a channel's requests are serialized across them with
 * the Web Locks API (the lock is held until the returned function is called). A tab waits at most
 * `waitMs` for it: the holder may be another tab's deposit waiting on an unanswered wallet prompt.
 */
type LockManager = { request(name: string, options: { signal?: AbortSignal }, cb: () => Promise<void>): Promise<void> };
const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
function webLocks(waitMs: number): ChannelLock | undefined {
  if (!locks) return undefined;
  return {
    acquire: (channelId: string) =>
      new Promise<() => void>((granted, refused) => {
        locks
          .request(`tollway-channel:${channelId}`, { signal: AbortSignal.timeout(waitMs) }, () => new Promise<void>((free) => granted(free)))
          .catch((err: { name?: string }) => {
            refused(err?.name === "TimeoutError" ? new TollwayError(`another tab has been paying on this channel for ${waitMs} ms (a wallet prompt left open?); try again`) : err);
          });
      }),
  };
}

export { createPayer, wrapFetch, requestRefund, MemoryPayerStore, openIndexedDbPayerStore, privateKeyToAccount, generatePrivateKey };
