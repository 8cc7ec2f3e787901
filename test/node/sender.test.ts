import { expect } from "chai";
import { encodeFunctionData, erc20Abi, HttpRequestError, keccak256, parseTransaction, TransactionReceiptNotFoundError, type Hex, type TransactionSerializableEIP1559 } from "viem";
import { TxSender, revertedOnChain } from "../../node/chain/sender";
import { hardhatTestAccount } from "../../node/chain/localNode";
import { ChainError, ErrorCodes } from "../../node/protocol/errors";
import { startChain } from "../helpers/payeeHarness";
import { clientsFor } from "../helpers/chainNode";
import { ChannelStore } from "../../node/store/channelStore";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

/** Makes every raw send reach the node and then fail as if its answer were lost; counts the sends. */
function loseAnswers(walletClient: ReturnType<typeof clientsFor>["walletClient"]): { count: number } {
  const sent = { count: 0 };
  const sendRaw = walletClient.sendRawTransaction.bind(walletClient);
  (walletClient as { sendRawTransaction: unknown }).sendRawTransaction = async (a: never) => {
    sent.count++;
    await sendRaw(a);
    throw new Error("request timed out"); // the node has it; the answer never came
  };
  return sent;
}

/** Records every raw transaction the wallet client sends, in order. */
function recordSends(walletClient: ReturnType<typeof clientsFor>["walletClient"]): Hex[] {
  const raws: Hex[] = [];
  const sendRaw = walletClient.sendRawTransaction.bind(walletClient);
  (walletClient as { sendRawTransaction: unknown }).sendRawTransaction = (a: { serializedTransaction: Hex }) => {
    raws.push(a.serializedTransaction);
    return sendRaw(a);
  };
  return raws;
}

/** Resolves once `ready()` holds; rejects naming `what` after `ms`. */
async function until(what: string, ready: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("transaction sender (hardhat node)", function () {
  this.timeout(120_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  before(async () => {
    ctx = await startChain();
  });
  after(async () => {
    await ctx?.chain.stop();
  });

  it("a transaction not confirmed in time is reported with its hash and never sent again; it is then mined exactly once", async () => {
    const account = ctx.payers[0]!;
    const { publicClient, walletClient, testClient } = clientsFor(ctx.chain.url, account);
    const sender = new TxSender(publicClient as never, walletClient as never, 0, { receiptTimeoutMs: 1_500 });
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false);
    try {
      const err = await sender
        .send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, 1n] })
        .then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(ChainError);
      expect((err as ChainError).shortMessage).to.match(/not confirmed in time \(not resent/);
      expect((err as ChainError).metaMessages?.join(" ")).to.match(/tx: 0x[0-9a-f]{64}/);
      expect(sender.sent).to.equal(1);
      await testClient.mine({ blocks: 1 });
    } finally {
      await testClient.setAutomine(true);
    }
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 1);
    // The queue goes on: the next transaction takes the next nonce and confirms.
    const ok = await sender.send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, 2n] });
    expect(ok.receipt.status).to.equal("success");
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 2);
  });

  /**
   * One approve through a TxSender whose RPC loses the answer to the first send (and `meddle` adds more
   * faults): the transaction is on chain once, with one nonce.
   */
  async function sendsOnceLosingAnswers(payer: number, amount: bigint, meddle: (publicClient: ReturnType<typeof clientsFor>["publicClient"]) => void = () => undefined) {
    const account = ctx.payers[payer]!;
    const { publicClient, walletClient } = clientsFor(ctx.chain.url, account);
    const sent = loseAnswers(walletClient);
    meddle(publicClient);
    const sender = new TxSender(publicClient as never, walletClient as never);
    const before = await publicClient.getTransactionCount({ address: account.address });
    const ok = await sender.send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, amount] });
    expect(ok.receipt.status).to.equal("success");
    expect(sent.count).to.equal(1);
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 1);
  }

  it("a send whose RPC answer is lost after the node took the transaction is not sent again with another nonce", async () => {
    await sendsOnceLosingAnswers(1, 3n);
  });

  it("even when the lookup right after a lost answer fails too, the next attempt finds the signed transaction instead of sending another", async () => {
    await sendsOnceLosingAnswers(2, 4n, (publicClient) => {
      const getTransaction = publicClient.getTransaction.bind(publicClient);
      let lookups = 0;
      (publicClient as { getTransaction: unknown }).getTransaction = (a: never) => (++lookups === 1 ? Promise.reject(new Error("rpc flake")) : getTransaction(a));
    });
  });

  it("an RPC that fails the lookups after a lost answer (429s) makes the sender wait and look again, never send at another nonce", async () => {
    await sendsOnceLosingAnswers(3, 5n, (publicClient) => {
      const getTransaction = publicClient.getTransaction.bind(publicClient);
      let lookups = 0;
      (publicClient as { getTransaction: unknown }).getTransaction = (a: never) =>
        ++lookups <= 2 ? Promise.reject(new HttpRequestError({ url: "http://rpc", status: 429, details: "Too Many Requests" })) : getTransaction(a);
    });
  });

  it("a transaction priced below the risen base fee is re-priced at its nonce; the call resolves with the re-priced receipt, executed once", async () => {
    const account = ctx.payers[4]!;
    const { publicClient, walletClient, testClient } = clientsFor(ctx.chain.url, account);
    const raws = recordSends(walletClient);
    const sender = new TxSender(publicClient as never, walletClient as never, 0, { receiptTimeoutMs: 20_000, repriceAfterMs: 300 });
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false);
    try {
      const sending = sender.send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, 6n] });
      sending.catch(() => undefined);
      await until("the first transaction", () => raws.length === 1);
      const first = parseTransaction(raws[0]!);
      // Fees rise: the next block's base fee is far above what the first transaction offers; it stays unmined.
      await testClient.setNextBlockBaseFeePerGas({ baseFeePerGas: first.maxFeePerGas! * 4n });
      await testClient.mine({ blocks: 1 });
      expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before);
      const seen = raws.length;
      await until("a re-priced transaction", () => raws.length > seen);
      await testClient.mine({ blocks: 1 });
      const { hash, receipt } = await sending;
      const last = parseTransaction(raws.at(-1)!);
      expect(hash).to.equal(keccak256(raws.at(-1)!));
      expect(hash).to.not.equal(keccak256(raws[0]!));
      expect(receipt.status).to.equal("success");
      expect(last.nonce).to.equal(first.nonce);
      expect(last.maxFeePerGas! >= (first.maxFeePerGas! * 9n) / 8n).to.equal(true);
      expect(sender.sent).to.equal(1);
      expect(sender.repriced).to.be.at.least(1);
    } finally {
      await testClient.setAutomine(true);
    }
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 1);
  });

  it("a transaction whose nonce another transaction of the key took (an operator's cancel) fails; the cancel's receipt is not taken for it", async () => {
    const account = ctx.payers[5]!;
    const { publicClient, walletClient, testClient } = clientsFor(ctx.chain.url, account);
    const raws = recordSends(walletClient);
    const sender = new TxSender(publicClient as never, walletClient as never, 0, { receiptTimeoutMs: 10_000 });
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false);
    let err: unknown;
    try {
      const sending = sender.send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, 7n] }).then(
        () => undefined,
        (e: unknown) => e,
      );
      await until("the transaction", () => raws.length === 1);
      await new Promise((r) => setTimeout(r, 300)); // the sender is waiting for its receipt
      const ours = parseTransaction(raws[0]!);
      // The operator cancels the nonce with a 0-value self-transfer, priced higher.
      await walletClient.sendTransaction({
        to: account.address,
        value: 0n,
        nonce: ours.nonce!,
        maxFeePerGas: ours.maxFeePerGas! * 2n,
        maxPriorityFeePerGas: ours.maxPriorityFeePerGas! * 2n,
      });
      await testClient.mine({ blocks: 1 });
      err = await sending;
    } finally {
      await testClient.setAutomine(true);
    }
    expect(err).to.be.instanceOf(ChainError);
    expect((err as ChainError).code).to.equal(ErrorCodes.transactionReverted);
    expect((err as ChainError).shortMessage).to.match(/nonce \d+ was used by a transaction that is not this call's/);
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 1);
  });

  it("a transaction mined with a reverted receipt fails with an error revertedOnChain recognises (through causes too); other failures are not", async () => {
    const { publicClient, walletClient } = clientsFor(ctx.chain.url, hardhatTestAccount(10));
    // The simulation passes (stubbed) and the gas is given, so the transfer of more than the balance reverts on chain.
    (publicClient as { simulateContract: unknown }).simulateContract = () => Promise.resolve({});
    const sender = new TxSender(publicClient as never, walletClient as never);
    const err = await sender
      .send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "transfer", args: [ctx.deployment.escrow, 2n ** 200n], gas: 200_000n })
      .then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(ChainError);
    expect((err as ChainError).code).to.equal(ErrorCodes.transactionReverted);
    expect((err as ChainError).shortMessage).to.equal("transfer reverted");
    expect(revertedOnChain(err)).to.equal(true);
    expect(revertedOnChain(new Error("claim run failed", { cause: err }))).to.equal(true);
    expect(revertedOnChain(new ChainError(ErrorCodes.waitForReceiptFailed, "not confirmed in time"))).to.equal(false);
    expect(revertedOnChain(new Error("rpc down"))).to.equal(false);
    expect(revertedOnChain(undefined)).to.equal(false);
  });

  it("a transaction stuck after its call timed out is re-priced by the next call blocked behind it; both are mined, each once", async () => {
    const account = hardhatTestAccount(11);
    const { publicClient, walletClient, testClient } = clientsFor(ctx.chain.url, account);
    const raws = recordSends(walletClient);
    const sender = new TxSender(publicClient as never, walletClient as never, 0, { receiptTimeoutMs: 2_000, repriceAfterMs: 300, maxReprices: 20 }); // a budget (per transaction) the first call does not spend
    const before = await publicClient.getTransactionCount({ address: account.address });
    const approve = (amount: bigint) => sender.send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, amount] });
    await testClient.setAutomine(false);
    try {
      const first = approve(8n).then(() => undefined, (e: unknown) => e);
      await until("the first transaction", () => raws.length === 1);
      const stuckFee = parseTransaction(raws[0]!).maxFeePerGas!;
      await testClient.setNextBlockBaseFeePerGas({ baseFeePerGas: stuckFee * 4n });
      await testClient.mine({ blocks: 1 });
      expect(((await first) as ChainError).code).to.equal(ErrorCodes.waitForReceiptFailed);
      // Fees rise far above what the stuck transaction (re-priced or not) offers: it stays unmined.
      await testClient.setNextBlockBaseFeePerGas({ baseFeePerGas: stuckFee * 100n });
      await testClient.mine({ blocks: 1 });
      expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before);
      const seen = raws.length;
      const second = approve(9n);
      second.catch(() => undefined);
      // The second call signs the next nonce and re-prices the stuck one at its own.
      await until("the stuck transaction re-priced", () => raws.slice(seen + 1).some((raw) => parseTransaction(raw).nonce === before));
      await testClient.mine({ blocks: 1 });
      const { receipt } = await second;
      expect(receipt.status).to.equal("success");
      const nonces = raws.map((raw) => parseTransaction(raw).nonce);
      expect(nonces.filter((n) => n !== before && n !== before + 1)).to.deep.equal([]);
      expect(nonces.filter((n) => n === before + 1)).to.have.length(1); // the second call signed one nonce, once
    } finally {
      await testClient.setAutomine(true);
    }
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 2);
    // Mined, the stuck transaction is forgotten: the next call sends its own transaction only.
    const seen = raws.length;
    await approve(10n);
    expect(raws.slice(seen).map((raw) => parseTransaction(raw).nonce)).to.deep.equal([before + 2]);
  });

  it("a mined transaction whose receipt an RPC backend does not have yet (the count came from another) is waited for, not taken for another's", async () => {
    const account = hardhatTestAccount(12);
    const { publicClient, walletClient } = clientsFor(ctx.chain.url, account);
    const getTransactionReceipt = publicClient.getTransactionReceipt.bind(publicClient);
    let lookups = 0;
    (publicClient as { getTransactionReceipt: unknown }).getTransactionReceipt = (a: { hash: Hex }) =>
      ++lookups <= 6 ? Promise.reject(new TransactionReceiptNotFoundError({ hash: a.hash })) : getTransactionReceipt(a);
    const sender = new TxSender(publicClient as never, walletClient as never);
    const before = await publicClient.getTransactionCount({ address: account.address });
    const { receipt } = await sender.send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, 11n] });
    expect(receipt.status).to.equal("success");
    expect(lookups).to.be.greaterThan(6);
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 1);
  });

  /** A TxSender for hardhat account `i` with its sends recorded, and an approve through it that resolves to its error, if any. */
  function senderFor(i: number, options: ConstructorParameters<typeof TxSender>[3], meddle: (walletClient: ReturnType<typeof clientsFor>["walletClient"]) => void = () => undefined) {
    const account = hardhatTestAccount(i);
    const clients = clientsFor(ctx.chain.url, account);
    meddle(clients.walletClient);
    const raws = recordSends(clients.walletClient);
    const sender = new TxSender(clients.publicClient as never, clients.walletClient as never, 0, options);
    const approve = (amount: bigint) => sender.send({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, amount] });
    const failing = (amount: bigint) => approve(amount).then(() => undefined, (e: unknown) => e as ChainError);
    const nonceOf = (raw: Hex) => parseTransaction(raw).nonce;
    /** With automine off: a first call whose transaction the fees outgrow times out unmined, and the node then evicts it. */
    const strandEvicted = async (amount: bigint) => {
      const first = failing(amount);
      await until("the first transaction", () => raws.length === 1);
      await clients.testClient.setNextBlockBaseFeePerGas({ baseFeePerGas: parseTransaction(raws[0]!).maxFeePerGas! * 4n });
      await clients.testClient.mine({ blocks: 1 }); // it stays unmined
      expect((await first)?.code).to.equal(ErrorCodes.waitForReceiptFailed);
      await clients.testClient.dropTransaction({ hash: keccak256(raws[0]!) }); // the node evicts it
    };
    return { account, ...clients, raws, sender, approve, failing, nonceOf, strandEvicted };
  }

  it("a stuck transaction is re-priced at most maxReprices times in all, however many later calls wait behind it", async () => {
    const { publicClient, testClient, raws, sender, failing, nonceOf, account } = senderFor(13, { receiptTimeoutMs: 1_000, repriceAfterMs: 100, maxReprices: 2 });
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false); // nothing is mined until the end
    try {
      const errors: Array<ChainError | undefined> = [];
      for (const amount of [12n, 13n, 14n, 15n]) errors.push(await failing(amount));
      for (const e of errors) expect(e?.code).to.equal(ErrorCodes.waitForReceiptFailed);
      expect(raws.filter((raw) => nonceOf(raw) === before)).to.have.length(1 + 2);
      expect(sender.repriced).to.equal(2);
      // The operator is told why it stays stuck, also by the calls waiting behind it: the budget is spent.
      expect(errors[3]?.metaMessages?.join("\n")).to.include(`not re-priced: re-priced 2 times already (transactions.maxReprices): raise it, or replace nonce ${before} by hand`);
      await testClient.mine({ blocks: 1 });
    } finally {
      await testClient.setAutomine(true);
    }
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 4);
  });

  it("a re-priced transaction the node refused keeps the old fee and the budget: the next raise is 12.5% over what the node has", async () => {
    let sends = 0;
    const { publicClient, testClient, raws, sender, approve, account } = senderFor(14, { receiptTimeoutMs: 20_000, repriceAfterMs: 100, maxReprices: 2 }, (walletClient) => {
      const sendRaw = walletClient.sendRawTransaction.bind(walletClient);
      (walletClient as { sendRawTransaction: unknown }).sendRawTransaction = (a: never) =>
        ++sends >= 2 && sends <= 4 ? Promise.reject(new Error("replacement transaction underpriced")) : sendRaw(a); // three re-pricings refused
    });
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false);
    try {
      const sending = approve(16n);
      sending.catch(() => undefined);
      await until("two re-pricings the node took", () => raws.length === 1 + 3 + 2);
      await new Promise((r) => setTimeout(r, 500));
      expect(raws).to.have.length(6); // then the budget is spent
      const [first, ...refused] = raws.slice(0, 4).map((raw) => parseTransaction(raw) as TransactionSerializableEIP1559);
      const [taken, again] = raws.slice(4).map((raw) => parseTransaction(raw) as TransactionSerializableEIP1559);
      const raise = (fee: bigint) => (fee * 9n + 7n) / 8n;
      for (const tx of [...refused, taken]) expect(tx!.maxPriorityFeePerGas).to.equal(raise(first!.maxPriorityFeePerGas!));
      expect(again!.maxPriorityFeePerGas).to.equal(raise(taken!.maxPriorityFeePerGas!));
      expect(sender.repriced).to.equal(2);
      await testClient.mine({ blocks: 1 });
      expect((await sending).hash).to.equal(keccak256(raws[5]!));
    } finally {
      await testClient.setAutomine(true);
    }
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 1);
  });

  it("a stuck transaction the node lost and that cannot be re-priced is dropped: the call behind it fails at once, naming the gap, and the next call fills it", async () => {
    const { publicClient, testClient, raws, failing, approve, nonceOf, account, strandEvicted } = senderFor(15, { receiptTimeoutMs: 3_000, repriceAfterMs: 100, maxReprices: 0 });
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false);
    try {
      await strandEvicted(17n);
      const started = Date.now();
      const second = await failing(18n);
      expect(Date.now() - started).to.be.below(3_000); // not its timeout
      expect(second?.code).to.equal(ErrorCodes.waitForReceiptFailed);
      expect(second?.shortMessage).to.match(/not confirmed \(waiting behind a gap\)/);
      expect(second?.metaMessages?.join(" ")).to.contain(`waiting behind nonce ${before}: an earlier call's transaction, which the node no longer has`);
      const third = approve(19n);
      third.catch(() => undefined);
      await until("the third transaction", () => raws.length === 3);
      expect(raws.map(nonceOf)).to.deep.equal([before, before + 1, before]); // the third fills the gap
      await testClient.mine({ blocks: 1 });
      expect((await third).receipt.status).to.equal("success");
    } finally {
      await testClient.setAutomine(true);
    }
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 2); // the second's mined too
  });

  it("a call that would fill a gap but whose sends all fail leaves the gap for the next call (later calls do not wait behind it forever)", async () => {
    let failSends = false;
    const { publicClient, testClient, raws, failing, approve, nonceOf, account, strandEvicted } = senderFor(17, { receiptTimeoutMs: 3_000, repriceAfterMs: 100, maxReprices: 0, retries: 1 }, (wc) => {
      const sendRaw = wc.sendRawTransaction.bind(wc);
      (wc as { sendRawTransaction: unknown }).sendRawTransaction = (a: never) => (failSends ? Promise.reject(new Error("HTTP 503")) : sendRaw(a));
    });
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false);
    try {
      await strandEvicted(17n);
      expect((await failing(18n))?.shortMessage).to.match(/waiting behind a gap/);
      failSends = true;
      expect((await failing(19n))?.shortMessage).to.match(/failed after 2 attempts/); // signed at the gap, never sent
      failSends = false;
      const fourth = approve(20n);
      fourth.catch(() => undefined);
      await until("the fourth transaction", () => raws.length >= 5);
      expect(nonceOf(raws.at(-1)!)).to.equal(before); // the gap again, not after the failed call's nonce
      await testClient.setNextBlockBaseFeePerGas({ baseFeePerGas: 1n });
      await testClient.mine({ blocks: 1 });
      expect((await fourth).receipt.status).to.equal("success");
    } finally {
      await testClient.setAutomine(true);
    }
  });

  it("a stuck transaction whose nonce another transaction of the key took in the pool (it was evicted) is dropped, never re-sent over it", async () => {
    const { publicClient, testClient, raws, failing, approve, nonceOf, account } = senderFor(16, { receiptTimeoutMs: 1_000, repriceAfterMs: 1_200 });
    const other = clientsFor(ctx.chain.url, account).walletClient; // another process with the key
    const before = await publicClient.getTransactionCount({ address: account.address });
    await testClient.setAutomine(false);
    let theirs: Hex | undefined;
    try {
      expect((await failing(20n))?.code).to.equal(ErrorCodes.waitForReceiptFailed);
      expect(raws).to.have.length(1);
      await testClient.dropTransaction({ hash: keccak256(raws[0]!) });
      theirs = await other.sendTransaction({ to: account.address, value: 0n, nonce: before });
      const second = approve(21n);
      second.catch(() => undefined);
      await until("the second transaction", () => raws.length === 2);
      await new Promise((r) => setTimeout(r, 600)); // past the stuck one's re-pricing time
      expect(raws.map(nonceOf)).to.deep.equal([before, before + 1]);
      await testClient.mine({ blocks: 1 });
      expect((await second).receipt.status).to.equal("success");
    } finally {
      await testClient.setAutomine(true);
    }
    expect((await publicClient.getTransactionReceipt({ hash: theirs! })).status).to.equal("success");
    expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 2);
  });

  it("a transaction left stuck when its sender stopped is taken back from the journal (LevelDB) by the next sender, whose first call re-prices it; both mined once, the journal emptied", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-journal-"));
    let store = await ChannelStore.open(dir);
    try {
      const first = senderFor(18, { receiptTimeoutMs: 1_000, journal: store.journal("sender") });
      const { publicClient, testClient, account, nonceOf } = first;
      const before = await publicClient.getTransactionCount({ address: account.address });
      await testClient.setAutomine(false);
      try {
        expect((await first.failing(22n))?.code).to.equal(ErrorCodes.waitForReceiptFailed);
        expect(await store.journal("sender").load()).to.have.length(1);
        // Fees outgrow it: it stays unmined, and the node goes on holding it at its old price.
        await testClient.setNextBlockBaseFeePerGas({ baseFeePerGas: parseTransaction(first.raws[0]!).maxFeePerGas! * 100n });
        await testClient.mine({ blocks: 1 });
        expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before);
        // The restart: the store opened again, a new sender for the key.
        await store.close();
        store = await ChannelStore.open(dir);
        const second = senderFor(18, { receiptTimeoutMs: 20_000, repriceAfterMs: 100, journal: store.journal("sender") });
        expect(await second.sender.restore()).to.deep.equal({ restored: [before], dropped: [], unreadable: 0 });
        const call = second.approve(23n);
        call.catch(() => undefined);
        await until("the earlier run's transaction re-priced", () => second.raws.some((raw) => nonceOf(raw) === before));
        await testClient.mine({ blocks: 1 });
        expect((await call).receipt.status).to.equal("success");
        expect(second.raws.map(nonceOf).filter((n) => n !== before)).to.deep.equal([before + 1]); // its own, once
      } finally {
        await testClient.setAutomine(true);
      }
      expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(before + 2);
      expect(await store.journal("sender").load()).to.deep.equal([]);
      // An entry whose nonce is used by the time of a restore is dropped, not taken back.
      await store.journal("sender").save(before, JSON.stringify({ raw: first.raws[0], signed: [keccak256(first.raws[0]!)], reprices: 0, repriceAt: 0 }));
      const third = senderFor(18, { journal: store.journal("sender") });
      expect(await third.sender.restore()).to.deep.equal({ restored: [], dropped: [], unreadable: 0 });
      expect(await store.journal("sender").load()).to.deep.equal([]);
    } finally {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("restore takes back only this chain's run of nonces from the count (tip 0 included, re-priced as EIP-1559), forgets used ones and those above a hole, and must come before the first send", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-journal-"));
    const store = await ChannelStore.open(dir);
    try {
      const journal = store.journal("sender");
      const { publicClient, testClient, raws, sender, approve, account, nonceOf } = senderFor(19, { receiptTimeoutMs: 20_000, repriceAfterMs: 100, journal });
      await approve(30n); // nonce 0 used (its entry is already gone: mined)
      const latest = await publicClient.getTransactionCount({ address: account.address });
      const data = encodeFunctionData({ abi: erc20Abi, functionName: "approve", args: [ctx.deployment.escrow, 31n] });
      const signed = (nonce: number, chainId = 31337) =>
        account.signTransaction({ chainId, type: "eip1559", nonce, to: ctx.deployment.token!, data, gas: 100_000n, maxFeePerGas: 1n, maxPriorityFeePerGas: 0n });
      const entry = async (nonce: number, chainId?: number) => {
        const raw = await signed(nonce, chainId);
        await journal.save(nonce, JSON.stringify({ raw, signed: [keccak256(raw)], reprices: 0, repriceAt: 0 }));
      };
      await entry(latest - 1); // used
      await entry(latest);
      await entry(latest + 1);
      await entry(latest + 3); // above a hole
      await entry(latest + 2, 1); // another chain's
      await journal.save(latest + 5, "not json");
      // A restarted sender on the same journal (this one has sent already: restore must come first).
      expect(await sender.restore().then(() => "restored", (e: Error) => e.message)).to.equal("TxSender.restore must run once, before the first send");
      const restarted = senderFor(19, { receiptTimeoutMs: 20_000, repriceAfterMs: 100, journal });
      expect(await restarted.sender.restore()).to.deep.equal({ restored: [latest, latest + 1], dropped: [latest + 3], unreadable: 2 });
      expect((await journal.load()).length).to.equal(4); // the two taken back and the two unreadable
      // The node has none of them: the next call signs after them and re-prices each as the count reaches it.
      await testClient.setAutomine(false);
      try {
        const call = restarted.approve(32n);
        call.catch(() => undefined);
        for (const nonce of [latest, latest + 1]) {
          await until(`nonce ${nonce} re-priced`, () => restarted.raws.some((raw) => nonceOf(raw) === nonce));
          const sent = parseTransaction(restarted.raws.find((raw) => nonceOf(raw) === nonce)!);
          expect(sent.type).to.equal("eip1559");
          expect(sent.maxFeePerGas! > 1n).to.equal(true);
          await testClient.mine({ blocks: 1 });
        }
        expect((await call).receipt.status).to.equal("success");
      } finally {
        await testClient.setAutomine(true);
      }
      expect(await publicClient.getTransactionCount({ address: account.address })).to.equal(latest + 3);
      expect(raws).to.have.length(1); // the first sender sent only its own
    } finally {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
