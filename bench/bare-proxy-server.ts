/**
 * Context for the reverse-proxy benchmark: the least a reverse proxy can do on this machine — plain
 * node:http, kept-alive upstream connections, streamed bodies, no framework and no payment. Its
 * throughput over a direct upstream hit bounds what any proxy reaches here. Prints READY <port>.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { HEADERS } from "../node/protocol/wire";
import { keccakReady } from "../node/payee/recover";
import { configureRecoveryThreads, defaultRecoveryThreads } from "../node/payee/recoverPool";
import { Floor } from "./floor";

const { upstream, floor: floorCfg } = JSON.parse(process.env.TOLLWAY_BENCH ?? "{}") as { upstream: string; floor?: { file: string; sync: boolean } };
const floor = floorCfg ? new Floor(floorCfg.file, floorCfg.sync) : undefined;
if (floor) configureRecoveryThreads(defaultRecoveryThreads()); // as a payee node does
const PAYMENT_SIGNATURE = HEADERS.paymentSignature.toLowerCase();
const target = new URL(upstream);
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"]);

function forward(req: http.IncomingMessage, res: http.ServerResponse, commit?: () => Promise<string>) {
  const headers: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && k !== "host" && !HOP_BY_HOP.has(k)) headers[k] = v;
  if (commit) delete headers[PAYMENT_SIGNATURE]; // the payer's credential is not the upstream's (Tollway's proxy strips it too)
  const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers, agent }, (ur) => {
    const out: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(ur.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
    const status = ur.statusCode ?? 502;
    if (commit === undefined || status >= 400) {
      res.writeHead(status, out);
      ur.pipe(res);
      return;
    }
    commit().then(
      (paymentResponse) => {
        out[HEADERS.paymentResponse.toLowerCase()] = paymentResponse;
        res.writeHead(status, out);
        ur.pipe(res);
      },
      () => {
        ur.resume();
        res.statusCode = 503;
        res.end();
      },
    );
  });
  up.on("error", () => {
    res.statusCode = 502;
    res.end();
  });
  req.pipe(up);
}

const server = http.createServer((req, res) => {
  if (floor === undefined) return forward(req, res);
  floor.verify(req.headers[PAYMENT_SIGNATURE]).then(
    (commit) => {
      if (commit) return forward(req, res, commit);
      req.resume();
      res.statusCode = 402;
      res.end();
    },
    () => {
      res.statusCode = 500;
      res.end();
    },
  );
});
void keccakReady.then(() => server.listen(0, "127.0.0.1", () => process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`)));
process.on("SIGTERM", () => {
  server.close();
  process.exit(0);
});
