/**
 * Concurrency torture: many channels paying in parallel (100 in npm test, 1,000 with
 * TOLLWAY_TORTURE=1), each with a gasless deposit and a sequence of vouchers; every request is charged
 * exactly once, in order, with no deadlock and no lock left behind.
 */
import { expect } from "chai";
import { encodeFunctionData, multicall3Abi, keccak256, toHex, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { MULTICALL3_ADDRESS } from "../../node/chain/deploy";
import { clientsFor, hardhatTestAccount } from "../helpers/chainNode";
import { startChain, startPayee } from "../helpers/payeeHarness";
import { WirePayer, fetchRequirements, payWith } from "../helpers/wirePayer";

const CHANNELS = process.env.TOLLWAY_TORTURE ? 1000 : 100;
const REQUESTS = 5;
const PRICE = 10_000n;

const mintAbi = [{ type: "function", name: "mint", stateMutability: "nonpayable", inputs: [{ name: "to", type: "address" }, { name: "amount", type: "uint256" }], outputs: [] }] as const;

describe(`torture: ${CHANNELS} channels in parallel`, function () {
  this.timeout(900_000);

  it("charges every request exactly once, in per-channel order, without deadlock", async () => {
    const ctx = await startChain();
    // 1,000 relayed deposits within the hour: the default relay.perHour (1,000) is not what this test is about.
    const node = await startPayee(ctx, { "GET /c/:id": "$0.01" }, (app) => app.get("/c/:id", (req, res) => void res.send(req.params.id)), { relay: { perHour: 10_000 } });
    try {
      const payers = Array.from({ length: CHANNELS }, (_, i) => privateKeyToAccount(keccak256(toHex(`conc-payer-${i}`))));
      const { walletClient, publicClient } = clientsFor(ctx.chain.url, hardhatTestAccount(0));
      for (let i = 0; i < payers.length; i += 200) {
        const calls = payers.slice(i, i + 200).map((p) => ({ target: ctx.deployment.token!, allowFailure: false, callData: encodeFunctionData({ abi: mintAbi, functionName: "mint", args: [p.address, 1_000_000n] }) as Hex }));
        const hash = await walletClient.writeContract({ address: MULTICALL3_ADDRESS, abi: multicall3Abi, functionName: "aggregate3", args: [calls] });
        await publicClient.waitForTransactionReceipt({ hash });
      }
      const accept = (await fetchRequirements(`${node.url}/c/x`)).accept;
      const started = Date.now();
      const results = await Promise.all(
        payers.map(async (account, i) => {
          const payer = new WirePayer(account, account, toHex(i, { size: 32 }));
          const statuses: number[] = [];
          const cumulative: string[] = [];
          for (let k = 1; k <= REQUESTS; k++) {
            const header = k === 1 ? await payer.depositHeader(accept, 200_000n, PRICE) : await payer.voucherHeader(accept, PRICE * BigInt(k));
            const r = await payWith(`${node.url}/c/${i}-${k}`, header);
            statuses.push(r.status);
            cumulative.push(r.paymentResponse?.extra.channelState.chargedCumulativeAmount);
            expect(r.text).to.equal(`${i}-${k}`);
          }
          return { id: payer.channelId(accept), statuses, cumulative };
        }),
      );
      const seconds = (Date.now() - started) / 1000;
      for (const r of results) {
        expect(r.statuses).to.deep.equal(Array(REQUESTS).fill(200));
        // per-channel order: each response saw exactly the charges before it
        expect(r.cumulative).to.deep.equal(Array.from({ length: REQUESTS }, (_, k) => (PRICE * BigInt(k + 1)).toString()));
        expect((await node.store.getChannel(r.id as Hex))!.chargedCumulative).to.equal(PRICE * BigInt(REQUESTS));
      }
      let rows = 0;
      let total = 0n;
      for await (const l of node.store.ledger()) {
        rows++;
        total += l.amount;
      }
      expect(rows).to.equal(CHANNELS * REQUESTS);
      expect(total).to.equal(PRICE * BigInt(CHANNELS * REQUESTS));
      expect(node.payee.locks.size).to.equal(0);
      console.log(`      concurrency torture: ${CHANNELS} channels x ${REQUESTS} requests (incl. ${CHANNELS} relayed deposits) in ${seconds.toFixed(1)} s, ${node.store.flushCount} fsync'd batches`);
    } finally {
      await node.stop();
      await ctx.chain.stop();
    }
  });
});
