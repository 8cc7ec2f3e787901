/**
 * Child process for test/node/httpServer.test.ts (run with --allow-natives-syntax): serves one express
 * route either with createExpressServer ("tollway") or app.listen ("stock"), holds two concurrent
 * requests inside the route, and prints whether V8 gave the two requests (and the two responses) the
 * same hidden class there: {"req":bool,"res":bool}. Does nothing when loaded as a module (the test
 * runner loads every file under test/).
 */
import express from "express";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createExpressServer } from "../../node/payee/httpServer";

if (require.main === module) main();

function main() {
  const haveSameMap = new Function("a", "b", "return %HaveSameMap(a, b)") as (a: object, b: object) => boolean;
  const mode = process.argv[2];
  const app = express();
  app.disable("x-powered-by");
  const held: Array<[express.Request, express.Response]> = [];
  app.get("/x", (req, res) => {
    held.push([req, res]);
    if (held.length < 2) return;
    const [[reqA, resA], [reqB, resB]] = held as [[express.Request, express.Response], [express.Request, express.Response]];
    process.stdout.write(`${JSON.stringify({ req: haveSameMap(reqA, reqB), res: haveSameMap(resA, resB) })}\n`);
    for (const [, r] of held) r.send("ok");
    held.length = 0;
  });
  const server = mode === "stock" ? http.createServer(app) : createExpressServer(app);
  server.listen(0, "127.0.0.1", async () => {
    const port = (server.address() as AddressInfo).port;
    // Warm the route first so both held requests are past any first-time shape setup.
    for (let i = 0; i < 2; i++) await Promise.all([fetch(`http://127.0.0.1:${port}/x`), fetch(`http://127.0.0.1:${port}/x`)].map((p) => p.then((r) => r.text())));
    await Promise.all([fetch(`http://127.0.0.1:${port}/x`), fetch(`http://127.0.0.1:${port}/x`)].map((p) => p.then((r) => r.text())));
    server.close();
    process.exit(0);
  });
}
