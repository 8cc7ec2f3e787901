import { expect } from "chai";
import { erc20Abi } from "viem";
import { TxSender } from "../../node/chain/sender";
import { ChainError } from "../../node/protocol/errors";
import { startChain } from "../helpers/payeeHarness";
import { clientsFor } from "../helpers/chainNode";

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
    const sender = new TxSender(publicClient as never, walletClient as never, 0, 3, 1_500);
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
});
