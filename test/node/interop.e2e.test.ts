import { expect } from "chai";
import { toClientEvmSigner } from "@x402/evm";
import { HEADERS, decodeBase64Json } from "../../node/protocol/wire";
import { startHarness, type Harness } from "../helpers/payeeHarness";
import type { LocalAccount } from "viem";

// @x402/fetch ships ESM-style typings only under this moduleResolution; type the two exports used.
const { x402Client, wrapFetchWithPayment } = require("@x402/fetch") as {
  x402Client: new () => any;
  wrapFetchWithPayment: (f: typeof fetch, c: unknown) => typeof fetch;
};
const { BatchSettlementEvmScheme } = require("@x402/evm/batch-settlement/client") as {
  BatchSettlementEvmScheme: new (signer: unknown, opts?: unknown) => { refund(url: string, o?: unknown): Promise<any> };
};

describe("interop: the stock @x402/fetch + @x402/evm batch-settlement client pays a Tollway node", function () {
  this.timeout(180_000);
  let h: Harness;
  before(async () => {
    h = await startHarness({ "GET /articles/:id": { price: "$0.01", description: "An article" } }, (app) => {
      app.get("/articles/:id", (req, res) => void res.type("text/plain").send(`article ${req.params.id}`));
    });
  });
  after(async () => h?.stopAll());

  it("deposit (gasless, relayed by the node) -> 100 paid requests -> cooperative refund", async () => {
    const payer = h.payers[0] as LocalAccount;
    const signer = toClientEvmSigner(payer as never, h.publicClient as never);
    const scheme = new BatchSettlementEvmScheme(signer, { depositPolicy: { depositMultiplier: 200 } });
    const client = new x402Client()
      .register("eip155:31337", scheme as never)
      .setSpendControls({ allowedAssets: [{ network: "eip155:31337", asset: h.deployment.token! }] });
    const pay = wrapFetchWithPayment(fetch, client);
    const ethBefore = await h.publicClient.getBalance({ address: payer.address });

    for (let i = 0; i < 100; i++) {
      const res = await pay(`${h.url}/articles/${i}`);
      expect(res.status, `request ${i}`).to.equal(200);
      expect(await res.text()).to.equal(`article ${i}`);
      const pr = decodeBase64Json(res.headers.get(HEADERS.paymentResponse)!, "PAYMENT-RESPONSE") as any;
      expect(pr.extra.chargedAmount).to.equal("10000");
      expect(pr.extra.channelState.chargedCumulativeAmount).to.equal(String(10000 * (i + 1)));
    }
    // gasless: the payer spent no ETH
    expect(await h.publicClient.getBalance({ address: payer.address })).to.equal(ethBefore);
    let charged = 0n;
    for await (const rec of h.store.channels()) charged += rec.chargedCumulative;
    expect(charged).to.equal(1_000_000n);
    let ledger = 0n;
    for await (const row of h.store.ledger()) ledger += row.amount;
    expect(ledger).to.equal(1_000_000n);

    const tokenBefore = await h.publicClient.readContract({ address: h.deployment.token!, abi: erc20, functionName: "balanceOf", args: [payer.address] });
    const refund = await scheme.refund(`${h.url}/articles/0`);
    expect(refund.success).to.equal(true);
    const tokenAfter = await h.publicClient.readContract({ address: h.deployment.token!, abi: erc20, functionName: "balanceOf", args: [payer.address] });
    // deposit was 200 x $0.01 = 2,000,000; charged 1,000,000; refund returns the rest to the unit
    expect(tokenAfter - tokenBefore).to.equal(1_000_000n);
  });
});

const erc20 = [
  { type: "function", name: "balanceOf", stateMutability: "view", inputs: [{ name: "a", type: "address" }], outputs: [{ name: "", type: "uint256" }] },
] as const;
