/**
 * Serialized transaction submission for one key. Hardhat automine rejects nonce gaps and concurrent
 * sends from one key collide, so every transaction of a key goes through one queue: simulate, sign at
 * the next nonce, send, wait for the receipt (and confirmations); retry transient failures with
 * backoff, re-price a transaction that is not mined. A call counts as done only with a successful
 * receipt of a transaction it signed. Once signed, a call keeps its nonce: every transaction it signs
 * shares that nonce, so at most one of them can execute.
 */
import {
  type Abi,
  type Account,
  type Chain,
  type ContractFunctionArgs,
  type ContractFunctionName,
  type Hex,
  type PublicClient,
  type TransactionReceipt,
  type Transport,
  type WalletClient,
  BaseError,
  ContractFunctionRevertedError,
  TransactionNotFoundError,
  TransactionReceiptNotFoundError,
  encodeFunctionData,
  keccak256,
  maxUint256,
  parseTransaction,
} from "viem";
import { ChainError, ConfigError, ErrorCodes, type ErrorCode } from "../protocol/errors";

export type SendParameters<abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">> = {
  address: Hex;
  abi: abi;
  functionName: fn;
  args: ContractFunctionArgs<abi, "nonpayable" | "payable", fn>;
  /** Error codes to use when simulation fails / the transaction fails. */
  simulationError?: ErrorCode;
  transactionError?: ErrorCode;
  gas?: bigint;
  /** Runs once the simulation passed, just before the transaction is signed and sent; a throw sends nothing. */
  beforeSend?: () => void;
  /**
   * Runs with the nonce of the signed transaction before it is journaled or sent: what must be durable
   * should the chain mine it, whatever the call then reports (a timeout, a crash). A throw sends nothing.
   */
  onSigned?: (nonce: number) => Promise<void>;
};

export type SendResult = { hash: Hex; receipt: TransactionReceipt };

export type TxSenderOptions = {
  /** Send attempts after the first, for failures before the node has the transaction (default 3). */
  retries?: number;
  /** How long to wait for a sent transaction's receipt (ms); default 2 min + 1 min per confirmation. */
  receiptTimeoutMs?: number;
  /** A transaction not mined after this long (ms) is re-priced; default 30 s. */
  repriceAfterMs?: number;
  /** Re-pricings per transaction at most (default 3), counted across every call that re-prices it. */
  maxReprices?: number;
  /** The highest maxFeePerGas a re-pricing offers (wei); default none: each re-pricing follows the current estimate. */
  maxFeePerGas?: bigint;
  /** Where each signed transaction is kept until its nonce is used, for `restore` after a restart (default none). */
  journal?: TxJournal;
};

/**
 * Durable storage of the transactions a sender signed and whose nonce is not used yet, one entry per
 * nonce (opaque text). `save` must be durable when it resolves: it runs before the transaction is sent.
 */
export type TxJournal = {
  load(): Promise<string[]>;
  save(nonce: number, entry: string): Promise<void>;
  remove(nonce: number): Promise<void>;
};

/**
 * A journal entry: the newest bytes the node took, a re-pricing being sent (`candidate`, until the node
 * took it), every hash signed at the nonce, the re-pricing budget spent and when the next is due.
 */
type JournalEntry = { raw: Hex; candidate?: Hex; signed: Hex[]; reprices: number; repriceAt: number };

/** What `restore` did with the journal: nonces taken back, nonces forgotten above a hole, entries it could not read. */
export type RestoreResult = { restored: number[]; dropped: number[]; unreadable: number };

/** Name and args of a decoded contract revert, if the error is one. */
export function decodeRevert(err: unknown): { errorName: string; args: readonly unknown[] } | undefined {
  if (err instanceof BaseError) {
    const revert = err.walk((e) => e instanceof ContractFunctionRevertedError);
    if (revert instanceof ContractFunctionRevertedError && revert.data) {
      return { errorName: revert.data.errorName, args: revert.data.args ?? [] };
    }
  }
  return undefined;
}

/** True when the chain refused the call (a revert, decoded or not), as opposed to an RPC or transport failure. */
export function isRevert(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if (e instanceof BaseError) return e.walk((x) => x instanceof ContractFunctionRevertedError) instanceof ContractFunctionRevertedError;
  }
  return false;
}

/** A transaction of the call was mined and its receipt says it reverted: the call's arguments failed on chain. */
export class RevertedOnChainError extends ChainError {
  override name = "RevertedOnChainError";
  constructor(
    code: ErrorCode,
    functionName: string,
    readonly receipt: TransactionReceipt,
  ) {
    super(code, `${functionName} reverted`, { metaMessages: [`tx: ${receipt.transactionHash}`] });
  }
}

/** True when the error (or one of its causes) is a mined transaction whose receipt says it reverted. */
export function revertedOnChain(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if (e instanceof RevertedOnChainError) return true;
  }
  return false;
}

/** A prepared transaction request; the nonce is fixed once signed. */
type Request = { nonce: number; maxFeePerGas?: bigint; maxPriorityFeePerGas?: bigint };

/**
 * One call's transaction: the newest request and bytes the node took, the hash of every transaction
 * signed for it (sent or not: the node may have taken one whose answer was lost), when it is next due
 * for a re-pricing and how many re-pricings went out.
 */
type Pending = {
  request: Request;
  raw: Hex;
  signed: Hex[];
  repriceAt: number;
  reprices: number;
  /** Why the last re-pricing could not be done, for the error that reports the transaction unconfirmed. */
  notRepriced?: string;
};

const JOURNAL_KEPT = "its journal entry could not be removed: after a restart it may be re-priced and sent";

/** A fee raised by the 12.5% a node asks of a replacement (geth 10%), rounded up. */
const raised = (fee: bigint): bigint => (fee * 9n + 7n) / 8n;
const max = (a: bigint, b: bigint): bigint => (a > b ? a : b);
const min = (a: bigint, b: bigint): bigint => (a < b ? a : b);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The first thing `lookup` finds for one of `hashes`, or undefined when it finds none. Only viem's
 * not-found errors mean "not there"; any other error (429, timeout) is thrown, since it says nothing.
 */
async function firstFound<T>(hashes: readonly Hex[], lookup: (hash: Hex) => Promise<T>): Promise<T | undefined> {
  for (const hash of hashes) {
    try {
      return await lookup(hash);
    } catch (err) {
      if (!(err instanceof TransactionNotFoundError || err instanceof TransactionReceiptNotFoundError)) throw err;
    }
  }
  return undefined;
}

export class TxSender {
  private queue: Promise<unknown> = Promise.resolve();
  private nonce: number | undefined;
  /**
   * Transactions of calls that timed out, by nonce, until the count of mined transactions passes them:
   * a later call blocked behind one re-prices it, since re-pricing its own would not help.
   */
  private stuck: Pending[] = [];
  /** The nonce of a stuck transaction the node lost and that could not be re-priced: the next call signs at it. */
  private gap: number | undefined;
  private readonly options: TxSenderOptions & Required<Pick<TxSenderOptions, "retries" | "repriceAfterMs" | "maxReprices">>;
  /** Calls whose transaction went out (for metrics); a re-pricing is not another. */
  sent = 0;
  /** Re-priced transactions signed (for metrics). */
  repriced = 0;
  /** A send was queued: `restore` must come before. */
  private started = false;
  /** `restore` ran (once is all). */
  private restored = false;

  constructor(
    readonly publicClient: PublicClient<Transport, Chain>,
    readonly walletClient: WalletClient<Transport, Chain, Account>,
    private readonly confirmations = 0,
    options: TxSenderOptions = {},
  ) {
    // Signing here gives each transaction's hash before it is sent: the node can be asked whether it has it.
    if (walletClient.account.type !== "local") throw new ConfigError("TxSender needs a local account (a private key): it signs every transaction itself");
    this.options = { retries: 3, repriceAfterMs: 30_000, maxReprices: 3, ...options };
  }

  get address(): Hex {
    return this.walletClient.account.address;
  }

  /** Simulates the call (throws ChainError with the decoded revert) without sending. */
  async simulate<const abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">>(p: SendParameters<abi, fn>): Promise<void> {
    try {
      await this.publicClient.simulateContract({
        account: this.walletClient.account,
        address: p.address,
        abi: p.abi as Abi,
        functionName: p.functionName as string,
        args: p.args as readonly unknown[],
      });
    } catch (cause) {
      const rev = decodeRevert(cause);
      throw new ChainError(p.simulationError ?? ErrorCodes.transactionReverted, `simulation of ${String(p.functionName)} failed${rev ? `: ${rev.errorName}` : ""}`, {
        cause,
        metaMessages: rev ? [`args: ${rev.args.map(String).join(", ")}`] : [],
      });
    }
  }

  /** Queues, simulates, sends and waits for the receipt of one contract call. */
  send<const abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">>(p: SendParameters<abi, fn>): Promise<SendResult> {
    this.started = true;
    const job = this.queue.then(() => this.sendNow(p));
    this.queue = job.catch(() => undefined);
    return job;
  }

  private async sendNow<const abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">>(p: SendParameters<abi, fn>): Promise<SendResult> {
    await this.simulate(p);
    p.beforeSend?.();
    const receipt = await this.confirm(await this.submit(p), p);
    if (receipt.status !== "success") throw new RevertedOnChainError(p.transactionError ?? ErrorCodes.transactionReverted, String(p.functionName), receipt);
    return { hash: receipt.transactionHash, receipt };
  }

  /**
   * Signs the call at the next nonce and sends it, retrying failures with backoff. The next nonce is a gap
   * left by a dropped stuck transaction while the node's pending count has not passed it (nothing else
   * holds it), or else the highest of ours, the node's pending count and the one after a stuck one's: another process
   * with this key moves it on, an RPC backend behind the others (or one that leaves a transaction priced
   * below the base fee out of its pending count) does not move it back. Once signed, the transaction is
   * kept: a retry first asks the node for it (the answer was lost, "already known"; only "not found"
   * means it lacks it, a failed lookup is another failure) and otherwise sends the same bytes again,
   * never a transaction at another nonce (a second claim would cost gas for nothing, a second refund
   * would pay twice).
   */
  private async submit(p: { address: Hex; abi: Abi; functionName: unknown; args: unknown; gas?: bigint; transactionError?: ErrorCode; onSigned?: (nonce: number) => Promise<void> }): Promise<Pending> {
    let tx: Pending | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        if (!tx) {
          const pending = await this.publicClient.getTransactionCount({ address: this.address, blockTag: "pending" });
          const signed = await this.sign(
            (await this.walletClient.prepareTransactionRequest({
              account: this.walletClient.account,
              chain: this.walletClient.chain,
              to: p.address,
              data: encodeFunctionData({ abi: p.abi, functionName: p.functionName as string, args: p.args as readonly unknown[] }),
              nonce: this.gap !== undefined && this.gap >= pending ? this.gap : Math.max(this.nonce ?? 0, ...this.stuck.map((t) => t.request.nonce + 1), pending),
              gas: p.gas,
            })) as Request,
          );
          await p.onSigned?.(signed.request.nonce);
          await this.record(signed); // before the node can have it: a restart must know what it may mine
          tx = signed;
        }
        if (attempt === 0 || !(await firstFound(tx.signed, (hash) => this.publicClient.getTransaction({ hash })))) {
          await this.walletClient.sendRawTransaction({ serializedTransaction: tx.raw });
        }
        // A gap is filled only once the node took the transaction: a send that failed leaves it for the next call.
        if (this.gap === tx.request.nonce) this.gap = undefined;
        this.nonce = tx.request.nonce + 1;
        this.sent++;
        return tx;
      } catch (err) {
        this.nonce = undefined; // the next nonce is read again after any failure
        if (attempt >= this.options.retries) {
          // Given up, as the caller is told: not re-priced by later calls, nor after a restart. If the journal
          // cannot forget it, a restart could send it: then the caller is not told it failed for good.
          const forgotten = !tx || (await this.forget(tx.request.nonce));
          throw new ChainError(forgotten ? (p.transactionError ?? ErrorCodes.transactionReverted) : ErrorCodes.waitForReceiptFailed, `${String(p.functionName)} failed after ${attempt + 1} attempts`, {
            cause: err,
            metaMessages: [...(tx ? tx.signed.map((h) => `tx: ${h} (the node may have it)`) : []), ...(forgotten ? [] : [JOURNAL_KEPT])],
          });
        }
        await sleep(200 * 2 ** attempt);
      }
    }
  }

  /** Signs `request`, adding its hash to those signed for the call so far. */
  private async sign(request: Request, signed: Hex[] = []): Promise<Pending> {
    const raw = await this.walletClient.signTransaction(request as never);
    const hash = keccak256(raw);
    return { request, raw, signed: signed.includes(hash) ? signed : [...signed, hash], repriceAt: Date.now() + this.options.repriceAfterMs, reprices: 0 };
  }

  /**
   * Waits until one of the call's transactions is mined under `confirmations` blocks, riding out RPC
   * errors, for up to `receiptTimeoutMs`. While the nonce is unused, the transaction is re-priced every
   * `repriceAfterMs`, or, while the call waits behind a stuck transaction of an earlier call, that one
   * is (see `unblock`). Only a receipt of ours counts: when the nonce was used by another transaction (an
   * operator's cancel, another process with this key), the call failed. On timeout, or as soon as it waits
   * behind a gap, the transaction may still be mined: the error says so and names it, it is not sent at
   * another nonce, and it is kept as stuck.
   */
  private async confirm(tx: Pending, p: { functionName: unknown; transactionError?: ErrorCode }): Promise<TransactionReceipt> {
    const deadline = Date.now() + (this.options.receiptTimeoutMs ?? 120_000 + 60_000 * this.confirmations);
    let gap: string | undefined;
    let latest: number | undefined;
    let usedByOther = 0;
    let lastError: unknown;
    const hashes = () => tx.signed.map((h) => `tx: ${h}`);
    for (;;) {
      try {
        // The count first: if the nonce is used and then none of ours has a receipt, another transaction used it.
        latest = await this.publicClient.getTransactionCount({ address: this.address });
        const used = latest > tx.request.nonce;
        await this.passed(latest);
        const receipt = await firstFound(tx.signed, (hash) => this.publicClient.getTransactionReceipt({ hash }));
        if (receipt && (this.confirmations === 0 || (await this.publicClient.getBlockNumber({ cacheTime: 0 })) - receipt.blockNumber >= BigInt(this.confirmations))) {
          await this.forget(tx.request.nonce);
          return receipt;
        }
        // Twice in a row, and none of ours in a block: the count and the receipt may come from different
        // RPC backends, one behind the other, which is not enough to give up on our transaction.
        usedByOther = used && !receipt && !(await this.mined(tx.signed)) ? usedByOther + 1 : 0;
        const blocker = this.stuck.find((s) => s.request.nonce === latest);
        const due = blocker ?? tx;
        if (!used && !receipt && Date.now() >= due.repriceAt) {
          due.repriceAt = Date.now() + this.options.repriceAfterMs;
          if (blocker) gap = await this.unblock(blocker);
          else await this.reprice(tx);
        }
      } catch (err) {
        lastError = err;
      }
      if (usedByOther >= 2) {
        this.nonce = undefined;
        await this.forget(tx.request.nonce); // kept or not, a restart drops it: its nonce is used
        throw new ChainError(p.transactionError ?? ErrorCodes.transactionReverted, `${String(p.functionName)} failed: its nonce ${tx.request.nonce} was used by a transaction that is not this call's`, {
          metaMessages: hashes(),
        });
      }
      if (gap || Date.now() >= deadline) {
        this.nonce = undefined; // the next send reads the pending nonce again
        this.stuck.push(tx); // and the next calls re-price it while they wait behind it
        const behind = latest !== undefined && latest < tx.request.nonce;
        const known = this.stuck.find((s) => s.request.nonce === latest);
        throw new ChainError(ErrorCodes.waitForReceiptFailed, `${String(p.functionName)} not confirmed ${gap ? "(waiting behind a gap)" : "in time"} (not resent at another nonce; it may still be mined)`, {
          cause: lastError,
          metaMessages: [
            ...hashes(),
            ...(tx.notRepriced ? [`not re-priced: ${tx.notRepriced}`] : []),
            ...(gap
              ? [gap]
              : behind
                ? [`waiting behind nonce ${latest}: ${known ? `an earlier call's transaction, not mined${known.notRepriced ? ` (not re-priced: ${known.notRepriced})` : ""}` : "a transaction this sender did not sign (from before a restart, or another process with this key)"}`]
                : []),
          ],
        });
      }
      await sleep(this.publicClient.pollingInterval);
    }
  }

  /** True when the node has one of `hashes` in a block (its receipt may not have reached every backend yet). */
  private async mined(hashes: readonly Hex[]): Promise<boolean> {
    for (const hash of hashes) {
      if ((await firstFound([hash], (h) => this.publicClient.getTransaction({ hash: h })))?.blockNumber != null) return true;
    }
    return false;
  }

  /**
   * Deals with the stuck transaction `s` of an earlier call that this call waits behind. While the node
   * has it pending, it is re-priced. Otherwise it is dropped and never sent again when it was mined (the
   * count lags) or another transaction holds its nonce in the node's pool (pending count past it: an
   * operator's cancel, another process with this key). When nothing holds the nonce (the node evicted
   * it), it is re-priced, which fills the nonce again; when it cannot be (legacy fee, cap or re-pricings
   * used up), it is dropped and its nonce is left to the next call, which signs at it: the returned note
   * says so. Sharing a nonce, at most one of them can execute.
   */
  private async unblock(s: Pending): Promise<string | undefined> {
    const held = await firstFound(s.signed, (hash) => this.publicClient.getTransaction({ hash }));
    if (held && held.blockNumber == null) {
      await this.reprice(s); // or, when it cannot be, waits behind it at its price
      return undefined;
    }
    const free = !held && (await this.publicClient.getTransactionCount({ address: this.address, blockTag: "pending" })) <= s.request.nonce;
    if (free && (await this.reprice(s))) return undefined;
    this.stuck = this.stuck.filter((x) => x !== s);
    await this.forget(s.request.nonce);
    if (!free) return undefined; // mined, or another transaction holds its nonce: never sent again
    this.gap = s.request.nonce;
    return `waiting behind nonce ${s.request.nonce}: an earlier call's transaction, which the node no longer has and which cannot be re-priced; dropped, the next call signs at that nonce`;
  }

  /**
   * Signs the transaction again at its nonce with both fees raised by 12.5% (what nodes ask of a
   * replacement), or to the current estimate where that is higher, capped at `maxFeePerGas`, and sends
   * it. The raised fee is kept only once the node has it; a failed send throws, leaving the fee as it was.
   * False when it cannot be re-priced: a legacy (gasPrice) transaction, no room under the cap, or
   * `maxReprices` re-pricings already out.
   */
  private async reprice(tx: Pending): Promise<boolean> {
    const { maxFeePerGas: fee, maxPriorityFeePerGas: tip } = tx.request;
    const refuse = (why: string) => ((tx.notRepriced = why), false);
    if (fee === undefined || tip === undefined) return refuse("a legacy (gasPrice) transaction is not re-priced");
    if (tx.reprices >= this.options.maxReprices) return refuse(`re-priced ${tx.reprices} times already (transactions.maxReprices): raise it, or replace nonce ${tx.request.nonce} by hand`);
    const now = await this.publicClient.estimateFeesPerGas();
    const maxFeePerGas = min(max(raised(fee), now.maxFeePerGas), this.options.maxFeePerGas ?? maxUint256);
    if (maxFeePerGas < raised(fee)) return refuse(`its fee ${fee} wei cannot be raised 12.5 % under the cap of ${this.options.maxFeePerGas} wei (transactions.maxFeeGwei)`);
    const maxPriorityFeePerGas = min(max(raised(tip), now.maxPriorityFeePerGas), maxFeePerGas);
    const next = await this.sign({ ...tx.request, maxFeePerGas, maxPriorityFeePerGas }, tx.signed);
    tx.signed = next.signed; // the node may take it even when the send fails (a lost answer)
    await this.record(tx, next.raw);
    try {
      await this.walletClient.sendRawTransaction({ serializedTransaction: next.raw });
    } catch (err) {
      if (!(await firstFound([keccak256(next.raw)], (hash) => this.publicClient.getTransaction({ hash })))) {
        await this.record(tx).catch(() => undefined); // the candidate was refused: a restart re-prices from what the node has
        throw err;
      }
    }
    Object.assign(tx, { request: next.request, raw: next.raw, reprices: tx.reprices + 1, notRepriced: undefined });
    await this.record(tx);
    this.repriced++;
    return true;
  }

  /**
   * Takes back what the journal kept from an earlier run of this key on this chain. An entry whose nonce
   * the chain's count has passed is forgotten. The run of consecutive nonces from the count on are stuck
   * transactions again: the next calls wait behind them and re-price them (or drop them: see `unblock`)
   * exactly as in the process that signed them. An entry above a hole is forgotten and reported (nothing
   * of ours could fill the hole: new calls sign from the node's pending count). The callers are gone; what
   * a transaction does once mined (a claim, a refund) is seen on chain like anyone's. Entries that do not
   * parse, or are for another chain, are left as they are and counted. Call once, before the first send;
   * it throws, taking nothing back, when the chain's transaction count cannot be read.
   */
  async restore(): Promise<RestoreResult> {
    if (this.started || this.restored) throw new Error("TxSender.restore must run once, before the first send");
    const result: RestoreResult = { restored: [], dropped: [], unreadable: 0 };
    const journal = this.options.journal;
    if (!journal) return result;
    const taken = new Map<number, Pending>();
    for (const text of await journal.load()) {
      const tx = this.fromJournal(text);
      if (tx) taken.set(tx.request.nonce, tx);
      else result.unreadable++;
    }
    // Without the count nothing can be judged (an entry above a hole would jam every later call): the
    // error goes to the caller, the journal stays for the next start.
    const latest = await this.publicClient.getTransactionCount({ address: this.address });
    this.restored = true;
    for (const nonce of [...taken.keys()].sort((a, b) => a - b)) {
      if (nonce < latest) {
        await this.forget(nonce);
      } else if (nonce === latest + result.restored.length) {
        this.stuck.push(taken.get(nonce)!);
        result.restored.push(nonce);
      } else {
        await this.forget(nonce);
        result.dropped.push(nonce);
      }
    }
    return result;
  }

  /** A journal entry as a stuck transaction, or undefined when it does not parse or is for another chain. */
  private fromJournal(text: string): Pending | undefined {
    try {
      const entry = JSON.parse(text) as Partial<JournalEntry>;
      const raw = entry.raw!;
      const taken = parseTransaction(raw);
      // Re-priced from the candidate when one was being sent: it offers more than what the node may hold.
      const parsed = entry.candidate ? parseTransaction(entry.candidate) : taken;
      if (taken.chainId !== this.walletClient.chain.id || parsed.chainId !== taken.chainId || parsed.nonce !== taken.nonce) return undefined;
      // The signature is the old one: re-signing must not serialise it into the new transaction.
      const { r: _r, s: _s, v: _v, yParity: _y, ...request } = parsed;
      // RLP drops zero fields: a tip of 0 is still an EIP-1559 fee, not a legacy transaction.
      if (request.type === "eip1559") Object.assign(request, { maxFeePerGas: request.maxFeePerGas ?? 0n, maxPriorityFeePerGas: request.maxPriorityFeePerGas ?? 0n });
      const signed = Array.isArray(entry.signed) && entry.signed.length > 0 ? entry.signed : [keccak256(raw)];
      const repriceAt = Math.min(typeof entry.repriceAt === "number" ? entry.repriceAt : 0, Date.now() + this.options.repriceAfterMs);
      // A candidate may have reached the node: it counts as a re-pricing spent.
      const reprices = (typeof entry.reprices === "number" ? entry.reprices : 0) + (entry.candidate ? 1 : 0);
      return { request: { ...request, nonce: request.nonce ?? 0 } as Request, raw, signed, reprices, repriceAt };
    } catch {
      return undefined;
    }
  }

  /** Forgets the stuck transactions whose nonce the chain's count has passed (mined, or replaced). */
  private async passed(latest: number) {
    const gone = this.stuck.filter((s) => s.request.nonce < latest);
    if (gone.length === 0) return;
    this.stuck = this.stuck.filter((s) => s.request.nonce >= latest);
    for (const s of gone) await this.forget(s.request.nonce);
  }

  private async record(tx: Pending, candidate?: Hex) {
    const entry: JournalEntry = { raw: tx.raw, ...(candidate ? { candidate } : {}), signed: tx.signed, reprices: tx.reprices, repriceAt: tx.repriceAt };
    await this.options.journal?.save(tx.request.nonce, JSON.stringify(entry));
  }

  /**
   * Removes a journal entry; false when that failed. One that stays is forgotten by `restore` once its
   * nonce is used, or else taken back as stuck.
   */
  private async forget(nonce: number): Promise<boolean> {
    return (await this.options.journal?.remove(nonce).then(() => true, () => false)) ?? true;
  }
}
