/**
 * Serving an express app with stable object shapes.
 *
 * Express moves every request and response onto its own prototypes (`Object.setPrototypeOf(req,
 * app.request)` in its init middleware). V8 caches no property transitions from an object whose
 * prototype was swapped, so every property express, node or a middleware adds afterwards builds a new
 * hidden class for that one object. Measured on node 20 with a trivial express route at 2,400 req/s:
 * ~5 KB per request outlives the young generation, each scavenge copies ~2.8 MB and pauses 3-4 ms (most
 * of the route's p99), and the inline caches on those objects go megamorphic: the route's main thread
 * spends ~78 us per request where ~32 us do (docs/BENCHMARKS.md).
 *
 * `createExpressServer(app)` builds the requests and responses on `app.request` / `app.response` from
 * the start (node's `IncomingMessage` / `ServerResponse` server options), so express's swap is a no-op
 * and every request shares the same hidden classes: nothing survives a scavenge and a scavenge takes
 * ~0.3 ms. The app, its routes and its middleware are unchanged; req/res are the same objects with the
 * same prototype chain (`instanceof http.IncomingMessage` still holds). One visible difference: the
 * request handed to the server's 'upgrade' / 'connect' listeners is built on express's prototype too,
 * so express's getters (`req.ip`, `req.hostname`, `req.app`) work there.
 */
import http, { type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from "node:http";
import https from "node:https";
import type { SecureContextOptions } from "node:tls";
import type { AddressInfo, Socket } from "node:net";

/** The part of an express application this needs (its request handler and its two prototypes). */
export type ExpressLikeApp = http.RequestListener & { request: object; response: object };

type Ctor<T> = new (...args: never[]) => T;

let buildable: boolean | undefined;

/**
 * True when node's IncomingMessage / ServerResponse can initialise an object made with another prototype
 * (plain constructor functions, as in node 20): checked by building one pair and looking for the
 * state the constructors set up, not by the functions' source. If a node release turns them into
 * classes (or guards them with new.target), `createExpressServer` falls back to node's own objects.
 */
export function canBuildOnAppPrototypes(): boolean {
  if (buildable !== undefined) return buildable;
  try {
    const req = Object.create(http.IncomingMessage.prototype) as IncomingMessage;
    (http.IncomingMessage as unknown as (this: IncomingMessage, socket?: Socket) => void).call(req, undefined);
    const res = Object.create(http.ServerResponse.prototype) as ServerResponse;
    (http.ServerResponse as unknown as (this: ServerResponse, req: IncomingMessage) => void).call(res, req);
    buildable = Object.hasOwn(req, "_readableState") && Object.hasOwn(res, "outputData") && Object.hasOwn(res, "req");
  } catch {
    buildable = false;
  }
  return buildable;
}

/**
 * An http.Server for `app` whose requests and responses are built on the app's own prototypes.
 * Listen on it as on any server (`server.listen(port, "127.0.0.1")`), or use `listenExpress`.
 * @example const server = createExpressServer(app); server.listen(8080, "127.0.0.1");
 */
export function createExpressServer(app: ExpressLikeApp, options: ExpressServerOptions = {}): Server {
  const { tls, ...httpOptions } = options;
  // node's https.Server reads the same IncomingMessage / ServerResponse options as http.Server.
  const create = (o: ServerOptions): Server => (tls ? (https.createServer({ ...tls, ...o }, app) as unknown as Server) : http.createServer(o, app));
  if (!canBuildOnAppPrototypes()) return create(httpOptions);
  const BaseRequest = http.IncomingMessage as unknown as (this: IncomingMessage, socket: Socket) => void;
  const BaseResponse = http.ServerResponse as unknown as (this: ServerResponse, req: IncomingMessage, opts?: unknown) => void;
  function AppRequest(this: IncomingMessage, socket: Socket) {
    BaseRequest.call(this, socket);
  }
  AppRequest.prototype = app.request;
  function AppResponse(this: ServerResponse, req: IncomingMessage, opts?: unknown) {
    BaseResponse.call(this, req, opts);
  }
  AppResponse.prototype = app.response;
  return create({
    ...httpOptions,
    IncomingMessage: AppRequest as unknown as Ctor<IncomingMessage> as typeof IncomingMessage,
    ServerResponse: AppResponse as unknown as Ctor<ServerResponse> as typeof ServerResponse,
  });
}

/** node:http server options, plus `tls` (certificate and key) to serve HTTPS. */
export type ExpressServerOptions = ServerOptions & { tls?: SecureContextOptions };

/**
 * `createExpressServer(app)` listening on `host` (default 127.0.0.1) and `port`; resolves with the
 * server and its URL once it listens, rejects if it cannot.
 */
export function listenExpress(app: ExpressLikeApp, port: number, host = "127.0.0.1", options: ExpressServerOptions = {}): Promise<{ server: Server; url: string }> {
  const server = createExpressServer(app, options);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      const addr = server.address() as AddressInfo;
      const shown = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
      resolve({ server, url: `${options.tls ? "https" : "http"}://${shown}:${addr.port}` });
    });
  });
}

/**
 * Stops `server` without cutting requests in flight: it stops accepting connections, answers every
 * further request on a kept-alive connection with `Connection: close`, closes connections as they go
 * idle, and after `timeoutMs` cuts whatever is still open (a paid request cut that way before its
 * charge was decided is not charged; one whose charge was already committed keeps it, and the payer's
 * next voucher is answered with the corrective 402 that carries it). Resolves once every connection is closed. For a payee this matters: a paid
 * request that is mid-way when the operator restarts the node still gets its answer and its charge.
 */
export function closeGracefully(server: Server, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve) => {
    const closing = (_req: IncomingMessage, res: ServerResponse) => {
      if (!res.headersSent) res.setHeader("Connection", "close");
    };
    server.prependListener("request", closing);
    // node's close() leaves kept-alive connections open until their idle timeout: close them as they idle.
    const sweep = setInterval(() => server.closeIdleConnections(), 25);
    const cut = setTimeout(() => server.closeAllConnections(), timeoutMs);
    server.close(() => {
      clearInterval(sweep);
      clearTimeout(cut);
      server.off("request", closing);
      resolve();
    });
    server.closeIdleConnections();
  });
}
