/**
 * A payee node on a real local chain: `hardhat node` on 127.0.0.1, contracts at the canonical x402
 * addresses, a real LevelDB in a temp dir, an express app on 127.0.0.1 with paid routes.
 */
import express from "express";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import { deployTollway, type Deployment } from "../../node/chain/deploy";
import { TxSender } from "../../node/chain/sender";
import { ChannelStore } from "../../node/store/channelStore";
import { Payee, type PayeeOptions } from "../../node/payee/payee";
import { paymentMiddleware, type RoutesConfig } from "../../node/payee/middleware";
import { clientsFor, hardhatTestAccount, startChainNode, type ChainNode } from "./chainNode";

export type Harness = Awaited<ReturnType<typeof startHarness>>;

export async function startChain() {
  const chain = await startChainNode();
  const deployer = hardhatTestAccount(0);
  const { publicClient, walletClient, testClient } = clientsFor(chain.url, deployer);
  const payers = [2, 3, 4, 5, 6, 7].map(hardhatTestAccount);
  const deployment: Deployment = await deployTollway({
    walletClient,
    publicClient: publicClient as never,
    canonical: true,
    mintTestToken: { to: payers.map((a) => a.address), amount: 1_000_000_000n },
  });
  return { chain, deployment, payers, publicClient, testClient };
}

/**
 * The node-config fields that point a payee node at the local chain's deployment, listening on a free
 * loopback port; spread into a config and add the rest.
 */
export function localNodeConfig(ctx: { chain: ChainNode; deployment: Deployment }, rpcUrl = ctx.chain.url) {
  return {
    rpcUrl,
    escrow: ctx.deployment.escrow,
    erc3009Collector: ctx.deployment.erc3009Collector,
    asset: { address: ctx.deployment.token },
    listen: { port: 0 },
  };
}

export async function startPayee(
  ctx: { chain: ChainNode; deployment: Deployment },
  routes: RoutesConfig,
  install: (app: express.Express) => void,
  opts: Partial<PayeeOptions> & { dir?: string; beforePayment?: (app: express.Express) => void } = {},
) {
  const payeeAccount = hardhatTestAccount(1);
  const { publicClient, walletClient } = clientsFor(ctx.chain.url, payeeAccount);
  const { dir: givenDir, beforePayment, ...payeeOpts } = opts;
  const dir = givenDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "tollway-payee-"));
  const store = await ChannelStore.open(dir);
  const sender = new TxSender(publicClient as never, walletClient as never, 0);
  const payee = new Payee({
    store,
    publicClient: publicClient as never,
    sender,
    chainId: 31337,
    escrow: ctx.deployment.escrow,
    erc3009Collector: ctx.deployment.erc3009Collector,
    receiver: payeeAccount.address,
    asset: { address: ctx.deployment.token!, name: "USDC", version: "2", decimals: 6, symbol: "USDC" },
    ...payeeOpts,
  });
  await payee.loadMarks(); // as startPayeeNode does
  const app = express();
  beforePayment?.(app);
  app.use(paymentMiddleware(routes, payee));
  install(app);
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    payee,
    store,
    sender,
    dir,
    url,
    server,
    payeeAccount,
    async stop() {
      server.closeAllConnections?.();
      await new Promise<void>((r) => server.close(() => r()));
      await store.close();
    },
  };
}

export async function startHarness(routes: RoutesConfig, install: (app: express.Express) => void) {
  const ctx = await startChain();
  const node = await startPayee(ctx, routes, install);
  return { ...ctx, ...node, async stopAll() { await node.stop(); await ctx.chain.stop(); } };
}
