/**
 * Context for the reverse-proxy benchmark: the least a reverse proxy can do on this machine — plain
 * node:http, kept-alive upstream connections, streamed bodies, no framework and no payment. Its
 * throughput over a direct upstream hit bounds what any proxy reaches here. Prints READY <port>.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";

const { upstream } = JSON.parse(process.env.TOLLWAY_BENCH ?? "{}") as { upstream: string };
const target = new URL(upstream);
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"]);

const server = http.createServer((req, res) => {
  const headers: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && k !== "host" && !HOP_BY_HOP.has(k)) headers[k] = v;
  const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers, agent }, (ur) => {
    const out: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(ur.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
    res.writeHead(ur.statusCode ?? 502, out);
    ur.pipe(res);
  });
  up.on("error", () => {
    res.statusCode = 502;
    res.end();
  });
  req.pipe(up);
});
server.listen(0, "127.0.0.1", () => process.stdout.write(`READY ${(server.address() as AddressInfo).port}\n`));
process.on("SIGTERM", () => {
  server.close();
  process.exit(0);
});
