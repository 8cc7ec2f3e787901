/**
 * Serialized transaction submission for one key. Hardhat automine rejects nonce gaps and concurrent
 * sends from one key collide, so every transaction of a key goes through one queue: simulate, send
 * with an explicit nonce, wait for the receipt (and confirmations); retry transient failures with
 * backoff. A transaction counts as done only with a successful receipt.
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
  encodeFunctionData,
  keccak256,
} from "viem";
import { ChainError, ErrorCodes, type ErrorCode } from "../protocol/errors";

export type SendParameters<abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">> = {
  address: Hex;
  abi: abi;
  functionName: fn;
  args: ContractFunctionArgs<abi, "nonpayable" | "payable", fn>;
  /** Error codes to use when simulation fails / the transaction fails. */
  simulationError?: ErrorCode;
  transactionError?: ErrorCode;
  gas?: bigint;
};

export type SendResult = { hash: Hex; receipt: TransactionReceipt };

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

export class TxSender {
  private queue: Promise<unknown> = Promise.resolve();
  private nonce: number | undefined;
  /** Transactions sent (for metrics). */
  sent = 0;

  constructor(
    readonly publicClient: PublicClient<Transport, Chain>,
    readonly walletClient: WalletClient<Transport, Chain, Account>,
    private readonly confirmations = 0,
    private readonly retries = 3,
    /** How long to wait for a sent transaction's receipt (ms); default 2 min + 1 min per confirmation. */
    private readonly receiptTimeoutMs?: number,
  ) {}

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
    const job = this.queue.then(() => this.sendNow(p));
    this.queue = job.catch(() => undefined);
    return job;
  }

  private async sendNow<const abi extends Abi, fn extends ContractFunctionName<abi, "nonpayable" | "payable">>(p: SendParameters<abi, fn>): Promise<SendResult> {
    await this.simulate(p);
    // Sending is retried until a transaction hash exists; after that the same transaction is only waited
    // for, never sent again (a second claim would be a no-op costing gas, a second refund would pay twice).
    let hash: Hex | undefined;
    let lastError: unknown;
    // Every transaction signed for this call: before another attempt, one the node turns out to have is the send.
    const signed: Hex[] = [];
    for (let attempt = 0; attempt <= this.retries && hash === undefined; attempt++) {
      try {
        for (const h of signed) {
          if (await this.publicClient.getTransaction({ hash: h }).then(() => true, () => false)) hash = h;
        }
        if (hash !== undefined) {
          this.nonce = undefined;
          break;
        }
        if (this.nonce === undefined) {
          this.nonce = await this.publicClient.getTransactionCount({ address: this.address, blockTag: "pending" });
        }
        hash = await this.sendOnce(p, this.nonce, signed);
        this.nonce++;
        this.sent++;
      } catch (err) {
        lastError = err;
        this.nonce = undefined; // re-read the nonce after any send failure
        if (attempt < this.retries) await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
      }
    }
    if (hash === undefined) {
      throw new ChainError(p.transactionError ?? ErrorCodes.transactionReverted, `${String(p.functionName)} failed after ${this.retries + 1} attempts`, {
        cause: lastError,
      });
    }
    const receipt = await this.waitForReceipt(hash, p);
    if (receipt.status !== "success") {
      throw new ChainError(p.transactionError ?? ErrorCodes.transactionReverted, `${String(p.functionName)} reverted`, {
        metaMessages: [`tx: ${hash}`],
      });
    }
    return { hash, receipt };
  }

  /**
   * Sends one transaction at `nonce`. With a local key it is signed here first, so its hash is known
   * before it goes out: if the RPC call fails ambiguously (a timeout, "already known") but the node has
   * the transaction, that hash is the send, and no second transaction goes out with another nonce.
   */
  private async sendOnce(p: { address: Hex; abi: Abi; functionName: unknown; args: unknown; gas?: bigint }, nonce: number, signed: Hex[]): Promise<Hex> {
    const account = this.walletClient.account;
    const call = { address: p.address, abi: p.abi as Abi, functionName: p.functionName as string, args: p.args as readonly unknown[] };
    if (account.type !== "local") {
      return this.walletClient.writeContract({ ...call, nonce, gas: p.gas, chain: this.walletClient.chain, account });
    }
    const request = await this.walletClient.prepareTransactionRequest({
      account,
      chain: this.walletClient.chain,
      to: p.address,
      data: encodeFunctionData(call),
      nonce,
      gas: p.gas,
    });
    const serializedTransaction = await this.walletClient.signTransaction(request as never);
    const hash = keccak256(serializedTransaction);
    signed.push(hash);
    try {
      await this.walletClient.sendRawTransaction({ serializedTransaction });
    } catch (err) {
      const known = await this.publicClient.getTransaction({ hash }).catch(() => undefined);
      if (!known) throw err;
    }
    return hash;
  }

  /**
   * Waits for `hash` and its confirmations, riding out RPC errors, for up to `receiptTimeoutMs` (default
   * 2 min plus a minute per confirmation). On timeout the transaction may still be mined: the error says
   * so and names it, and it is not sent again.
   */
  private async waitForReceipt(hash: Hex, p: { functionName: unknown; transactionError?: ErrorCode }): Promise<TransactionReceipt> {
    const deadline = Date.now() + (this.receiptTimeoutMs ?? 120_000 + 60_000 * this.confirmations);
    for (;;) {
      try {
        return await this.publicClient.waitForTransactionReceipt({
          hash,
          confirmations: Math.max(1, this.confirmations + 1),
          timeout: Math.max(1_000, deadline - Date.now()),
        });
      } catch (err) {
        if (Date.now() >= deadline) {
          this.nonce = undefined; // a stuck transaction: the next send reads the pending nonce again
          throw new ChainError(ErrorCodes.waitForReceiptFailed, `${String(p.functionName)} not confirmed in time (not resent; it may still be mined)`, {
            cause: err,
            metaMessages: [`tx: ${hash}`],
          });
        }
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }
}
