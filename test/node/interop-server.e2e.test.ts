import { expect } from "chai";
import express from "express";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import pino from "pino";
import { erc20Abi, keccak256, toHex, type LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { parseNodeConfig } from "../../node/payee/config";
import { startPayeeNode, type PayeeNode } from "../../node/payee/server";
import { createPayer } from "../../node/payer/payer";
import { MemoryPayerStore } from "../../node/payer/store";
import { wrapFetch } from "../../node/payer/fetch";
import { localNodeConfig, startChain } from "../helpers/payeeHarness";

// The stock packages ship ESM-style typings only under this moduleResolution: type the parts used.
const { paymentMiddleware, x402ResourceServer } = require("@x402/express") as { paymentMiddleware: any; x402ResourceServer: any };
const { HTTPFacilitatorClient } = require("@x402/core/server") as { HTTPFacilitatorClient: any };
const { BatchSettlementEvmScheme } = require("@x402/evm/batch-settlement/server") as { BatchSettlementEvmScheme: any };

describe("interop: Tollway's client pays a stock @x402/express server that uses a Tollway node as facilitator", function () {
  this.timeout(180_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: PayeeNode;
  let server: Server;
  let url: string;
  let scheme: any;
  let facilitator: any;
  let receiver: `0x${string}`;
  let payer: ReturnType<typeof createPayer>;
  const TOKEN = "facilitator-token-0123456789";

  before(async () => {
    ctx = await startChain();
    const nodeKey = keccak256(toHex("tollway-facilitator-key"));
    await ctx.testClient.setBalance({ address: privateKeyToAccount(nodeKey).address, value: 10n ** 20n });
    node = await startPayeeNode(
      parseNodeConfig({
        ...localNodeConfig(ctx),
        storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-fac-")),
        adminToken: TOKEN,
        claims: { onShutdown: false },
      }, {}),
      { key: nodeKey, logger: pino({ level: "silent" }) },
    );
    const auth = { Authorization: `Bearer ${TOKEN}` };
    facilitator = new HTTPFacilitatorClient({
      url: `${node.url}/facilitator`,
      createAuthHeaders: async () => ({ verify: auth, settle: auth, supported: auth }),
    });
    receiver = privateKeyToAccount(keccak256(toHex("stock-server-receiver"))).address;
    scheme = new BatchSettlementEvmScheme(receiver);
    const resourceServer = new x402ResourceServer(facilitator).register("eip155:31337", scheme);
    const app = express();
    app.use(
      paymentMiddleware(
        {
          "GET /weather": {
            accepts: {
              scheme: "batch-settlement",
              network: "eip155:31337",
              payTo: receiver,
              price: { asset: ctx.deployment.token, amount: "10000", extra: { name: "USDC", version: "2" } },
            },
            description: "weather",
          },
        },
        resourceServer,
      ),
    );
    app.get("/weather", (_req, res) => void res.json({ sunny: true }));
    server = await new Promise((r) => {
      const s = app.listen(0, "127.0.0.1", () => r(s));
    });
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/weather`;
  });
  after(async () => {
    server?.close();
    await node?.stop();
    await ctx?.chain.stop();
  });

  it("deposit through the facilitator, then vouchers: every request is served and charged once", async () => {
    const account = ctx.payers[5] as LocalAccount;
    payer = createPayer({
      account,
      sessionKey: privateKeyToAccount(keccak256(toHex("interop-session"))),
      store: new MemoryPayerStore(),
      chainId: 31337,
      publicClient: ctx.publicClient as never,
      policy: { maxPerRequest: 100_000n, depositMultiplier: 100 },
    });
    const pay = wrapFetch(fetch, payer);
    for (let i = 0; i < 10; i++) {
      const res = await pay(url);
      expect(res.status, await res.clone().text()).to.equal(200);
      expect(await res.json()).to.deep.equal({ sunny: true });
    }
    const [ch] = await payer.store.channels();
    expect(ch!.charged).to.equal(100_000n);
    expect(ch!.balance).to.equal(1_000_000n);
  });

  const tokenBalance = (who: `0x${string}`) =>
    ctx.publicClient.readContract({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "balanceOf", args: [who] });

  it("the stock server's channel manager claims and settles through the facilitator (its minimal requirements are accepted)", async () => {
    const manager = scheme.createChannelManager(facilitator, "eip155:31337", ctx.deployment.token);
    const before = await tokenBalance(receiver);
    const result = await manager.claimAndSettle();
    expect(result.claims).to.have.length(1);
    expect(result.claims[0].vouchers).to.equal(1);
    expect(result.settle?.transaction).to.match(/^0x[0-9a-f]{64}$/);
    expect((await tokenBalance(receiver)) - before).to.equal(100_000n);
  });

  it("the stock server's channel manager refunds the rest of the channel through the facilitator", async () => {
    const [ch] = await payer.store.channels();
    const before = await tokenBalance(ch!.config.payer);
    const manager = scheme.createChannelManager(facilitator, "eip155:31337", ctx.deployment.token);
    const refunds = await manager.refund();
    expect(refunds).to.have.length(1);
    expect(refunds[0].transaction).to.match(/^0x[0-9a-f]{64}$/);
    expect((await tokenBalance(ch!.config.payer)) - before).to.equal(900_000n);
  });
});
