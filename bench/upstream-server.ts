/**
 * The upstream for the reverse-proxy benchmark: a trivial express app (what a content server in front
 * of Tollway typically is), GET /api/* answers "ok". Prints READY <port>.
 */
import express from "express";
import type { AddressInfo } from "node:net";

const app = express();
app.disable("x-powered-by");
app.disable("etag");
app.get("/api/*", (_req, res) => void res.send("ok"));
const server = app.listen(0, "127.0.0.1", () => process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`));
process.on("SIGTERM", () => {
  server.close();
  process.exit(0);
});
