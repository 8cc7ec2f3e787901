/**
 * The server side of bench/payments.ts, in its own process: one express app with a paid route
 * (GET /paid, protected by paymentMiddleware) and an unpaid twin (GET /free), trivial handlers.
 * Configured by TOLLWAY_BENCH (JSON); prints "READY <port>" when listening.
 */
import express from "express";
import type { AddressInfo } from "node:net";
import type { Address, Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createChainClients } from "../node/chain/clients";
import { TxSender } from "../node/chain/sender";
import { createExpressServer } from "../node/payee/httpServer";
import { paymentMiddleware } from "../node/payee/middleware";
import { Payee } from "../node/payee/payee";
import { keccakReady } from "../node/payee/recover";
import { ChannelStore } from "../node/store/channelStore";
import { floorRoute } from "./floor";
import path from "node:path";

type BenchServerConfig = {
  rpcUrl: string;
  escrow: Address;
  erc3009Collector: Address;
  token: Address;
  storePath: string;
  sync: boolean;
  price: string;
  key: Hex;
  recoveryThreads?: number;
  /** Serve with express's own app.listen instead of createExpressServer (figure 1b). */
  stockListen?: boolean;
};

async function main() {
  await keccakReady;
  const cfg = JSON.parse(process.env.TOLLWAY_BENCH ?? "{}") as BenchServerConfig;
  const account = privateKeyToAccount(cfg.key);
  const { publicClient, walletClient } = createChainClients({ rpcUrl: cfg.rpcUrl, chainId: 31337 }, account);
  const store = await ChannelStore.open(cfg.storePath, { sync: cfg.sync });
  const payee = new Payee({
    store,
    publicClient,
    sender: new TxSender(publicClient, walletClient!),
    chainId: 31337,
    escrow: cfg.escrow,
    erc3009Collector: cfg.erc3009Collector,
    receiver: account.address,
    asset: { address: cfg.token, name: "USDC", version: "2", decimals: 6 },
    recoveryThreads: cfg.recoveryThreads,
  });
  const app = express();
  app.disable("x-powered-by");
  app.disable("etag");
  // Server-side latency of each paid request: middleware entry -> charge on disk (us), printed at exit.
  const latency: number[] = [];
  app.use(paymentMiddleware({ "GET /paid": cfg.price }, payee, { onPaid: (_r, _a, us) => void latency.push(us) }));
  app.get("/paid", (_req, res) => void res.send("ok"));
  app.get("/free", (_req, res) => void res.send("ok"));
  // The floor of a paid request (bench/floor.ts): the unavoidable work alone, durable as the store is.
  app.get("/floor", floorRoute(path.join(cfg.storePath, "floor.log"), cfg.sync));
  // Served as Tollway serves an express app (stable object shapes: see node/payee/httpServer.ts);
  // `stockListen` serves it with express's own app.listen instead.
  const server = (cfg.stockListen || process.env.TOLLWAY_BENCH_STOCK_LISTEN ? app.listen(0, "127.0.0.1") : createExpressServer(app).listen(0, "127.0.0.1")).once("listening", () => {
    process.stdout.write(`READY ${(server.address() as AddressInfo).port} ${store.flushCount}\n`);
  });
  process.on("SIGTERM", async () => {
    server.close();
    await store.close();
    latency.sort((a, b) => a - b);
    const q = (p: number) => (latency[Math.min(latency.length - 1, Math.floor(latency.length * p))] ?? 0).toFixed(0);
    process.stdout.write(`FLUSHES ${store.flushCount}\nSERVER_LATENCY_US n=${latency.length} p50=${q(0.5)} p99=${q(0.99)} max=${q(1)}\n`);
    process.exit(0);
  });
}

void main();
