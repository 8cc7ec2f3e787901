/**
 * The reference for bench/reference.ts, in its own process: the stock `@x402/express` middleware with
 * the `@x402/evm` batch-settlement server scheme (devDependencies), a facilitator at TOLLWAY_BENCH's
 * facilitatorUrl, one paid route GET /paid with a trivial handler. Prints "READY <port>".
 * Served like Tollway's bench server (createExpressServer), so the comparison is of the payment paths.
 */
import express from "express";
import type { AddressInfo } from "node:net";
import { createExpressServer } from "../node/payee/httpServer";

const { paymentMiddleware, x402ResourceServer } = require("@x402/express") as { paymentMiddleware: any; x402ResourceServer: any };
const { HTTPFacilitatorClient } = require("@x402/core/server") as { HTTPFacilitatorClient: any };
const { BatchSettlementEvmScheme } = require("@x402/evm/batch-settlement/server") as { BatchSettlementEvmScheme: any };

const cfg = JSON.parse(process.env.TOLLWAY_BENCH ?? "{}") as { facilitatorUrl: string; token: string; receiver: string; asset: string; amount: string };
const auth = { Authorization: `Bearer ${cfg.token}` };
const facilitator = new HTTPFacilitatorClient({ url: cfg.facilitatorUrl, createAuthHeaders: async () => ({ verify: auth, settle: auth, supported: auth }) });
const server = new x402ResourceServer(facilitator).register("eip155:31337", new BatchSettlementEvmScheme(cfg.receiver));
const app = express();
app.disable("x-powered-by");
app.disable("etag");
app.use(
  paymentMiddleware(
    { "GET /paid": { accepts: { scheme: "batch-settlement", network: "eip155:31337", payTo: cfg.receiver, price: { asset: cfg.asset, amount: cfg.amount, extra: { name: "USDC", version: "2" } } } } },
    server,
  ),
);
app.get("/paid", (_req, res) => void res.send("ok"));
const s = createExpressServer(app).listen(0, "127.0.0.1", () => process.stdout.write(`READY ${(s.address() as AddressInfo).port}\n`));
process.on("SIGTERM", () => {
  s.close();
  process.exit(0);
});
