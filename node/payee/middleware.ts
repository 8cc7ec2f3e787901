/**
 * Express middleware in the shape x402 users know:
 *
 *   app.use(paymentMiddleware({ "GET /articles/:id": { price: "$0.01", description: "One article" } }, payee))
 *
 * Per paid request: verify the payment and reserve the channel, run the handler, and only when it
 * answers < 400 commit the charge durably (fsync) *before* the response leaves, adding PAYMENT-RESPONSE.
 * A failing handler charges nothing. The handler may lower the charge with `res.locals.tollway.charge(n)`.
 */
import type { NextFunction, Request, RequestHandler, Response } from "express";
import { ServerResponse, validateHeaderName, validateHeaderValue } from "node:http";
import type { Socket } from "node:net";
import { parsePrice } from "../protocol/amounts";
import { ConfigError, CumulativeMismatchError, ErrorCodes, PaymentError, TollwayError } from "../protocol/errors";
import {
  EXPOSED_HEADERS,
  HEADERS,
  type PaymentRequirements,
  decodePaymentSignature,
  encodeBase64Json,
  requirementsToWire,
  type PaymentRequiredBody,
  type PaymentPayload,
} from "../protocol/wire";
import type { Payee, PaymentResponseBody, Reservation } from "./payee";

export type Price = string | bigint;

/** What a dynamic price sees of the route key's match: `:param` values (decoded), as express's req.params would hold them. */
export type RouteMatch = { params: Record<string, string> };

export type RouteConfig = {
  /**
   * "$0.01", "0.01" (token units) or atomic bigint, or a function of the request (dynamic price). The
   * middleware runs before express routes the request, so `req.params` is still empty: the key's
   * `:param` values come as `match.params`.
   */
  price: Price | ((req: Request, match: RouteMatch) => Price | Promise<Price>);
  description?: string;
  mimeType?: string;
};

export type RoutesConfig = Record<string, RouteConfig | Price>;

export type MiddlewareOptions = {
  /**
   * A paid handler that has not started its answer after this long (ms) is cut off: its connection
   * is closed, nothing is charged and the channel is free again. Default 60,000.
   */
  handlerTimeoutMs?: number;
  /** Called for every committed charge (metrics): latency from the middleware to the charge on disk. */
  onPaid?: (route: string, amount: bigint, latencyUs: number) => void;
  /**
   * Called once a payment is verified and its channel reserved (metrics): latency from the middleware.
   * For a deposit it includes the deposit's transaction and confirmations.
   */
  onVerified?: (route: string, kind: "voucher" | "deposit", latencyUs: number) => void;
  onError?: (route: string, err: unknown) => void;
};

/** Per-request handle the handler can use (res.locals.tollway). */
export type PaidRequestContext = {
  readonly reservation: Reservation;
  readonly route: string;
  /**
   * Charge less than the signed maximum (metered handlers). Call it before the first byte of the answer.
   * Never throws (in an async express 4 handler a throw is an unhandled rejection that ends the node):
   * an amount outside 0..maximum is clamped into it, above to the signed maximum and below 0 to 0. A
   * JS caller's number is taken at its value if it is a safe integer; anything else that is not an
   * amount (a fraction, NaN, a string, undefined) charges the signed maximum, what the payer agreed to
   * pay, so a handler's bug never serves for free. Each clamp emits a process warning (code
   * TOLLWAY_CHARGE_CLAMPED). A call after the answer started is ignored with a warning
   * (TOLLWAY_LATE_CHARGE).
   * @param amount atomic units, 0..reservation.maxCharge
   * @example res.locals.tollway.charge(tokens * RATE) // never more than the payer signed for
   */
  charge(amount: bigint): void;
  /** The amount that will be committed. */
  readonly amount: bigint;
};

class PaidContext implements PaidRequestContext {
  #amount: bigint;
  constructor(
    readonly reservation: Reservation,
    readonly route: string,
  ) {
    this.#amount = reservation.maxCharge;
  }

  get amount(): bigint {
    return this.#amount;
  }

  charge(n: bigint): void {
    if (this.#decided) {
      // The charge was committed (or refused) when the answer started: too late to change it. Loud, but
      // not a throw: in an async handler that would be an unhandled rejection taking the node down.
      process.emitWarning(`charge(${shown(n)}) on ${this.route} came after the paid answer started and is ignored: the signed maximum ${this.reservation.maxCharge} was charged. Call charge() before the first byte.`, {
        code: "TOLLWAY_LATE_CHARGE",
      });
      return;
    }
    // A JS caller's whole number (`tokens * RATE`) is the amount it means.
    if (typeof (n as unknown) === "number" && Number.isSafeInteger(n)) n = BigInt(n);
    const max = this.reservation.maxCharge;
    if (typeof n !== "bigint" || n < 0n || n > max) {
      // Clamped, not thrown, for the same reason as above. Below 0, nothing. Above the maximum, or not
      // an amount at all (a fraction, NaN, a string: a bug in the handler), the maximum the payer
      // signed for: it agreed to pay that, and a bug must not serve the answer free.
      const isAmount = typeof n === "bigint";
      const clamped = isAmount && n < 0n ? 0n : max;
      const why = isAmount ? `is outside 0..${max} (the signed maximum)` : `is not an amount${typeof n === "number" ? " (not a safe integer)" : ""}`;
      process.emitWarning(`charge(${shown(n)}) on ${this.route} ${why}: ${clamped} is charged instead.`, {
        code: "TOLLWAY_CHARGE_CLAMPED",
      });
      n = clamped;
    }
    this.#amount = n;
  }

  #decided = false;

  /** The amount to commit, fixed from now on. */
  decide(): bigint {
    this.#decided = true;
    return this.#amount;
  }
}

/** A charge() argument for a warning: never throws (a template literal would, on a Symbol). */
function shown(n: unknown): string {
  return typeof n === "bigint" || typeof n === "number" ? String(n) : typeof n === "string" ? JSON.stringify(n.slice(0, 40)) : typeof n;
}

type CompiledRoute = {
  key: string;
  method: string | undefined;
  regex: RegExp;
  /** The key's `:param` names, in the order of the regex's groups. */
  params: string[];
  config: RouteConfig;
  staticPrice?: bigint;
};

const KNOWN_ROUTE_KEYS = new Set(["price", "description", "mimeType"]);

function compileRoutes(routes: RoutesConfig, decimals: number): CompiledRoute[] {
  return Object.entries(routes).map(([key, value]) => {
    const config: RouteConfig = typeof value === "object" && value !== null && !(typeof value === "bigint") ? (value as RouteConfig) : { price: value as Price };
    for (const k of Object.keys(config)) {
      if (!KNOWN_ROUTE_KEYS.has(k)) {
        const hint = [...KNOWN_ROUTE_KEYS].find((known) => known.toLowerCase() === k.toLowerCase());
        throw new ConfigError(`Unknown option "${k}" in route "${key}"${hint ? `. Did you mean "${hint}"?` : ""}`);
      }
    }
    const staticPrice = typeof config.price === "function" ? undefined : parsePrice(config.price, decimals);
    return { key, ...routePattern(key), config, staticPrice };
  });
}

/** The methods a route key may name; "GTE /a" is refused rather than left to never match (and serve unpaid). */
export const ROUTE_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;

/**
 * The method and path matcher of a route key ("GET /articles/:id", "/files/*.pdf", "/v1/file-:id"): `:param`
 * matches within one segment and `*` matches anything, as in express 4 paths; everything else is literal.
 * Case-insensitive, as express routes are by default: a
 * handler that answers "/PAID/1" as "/paid/1" must not serve it unpaid (a route that does not answer
 * it gives a 404, which is not charged). The reverse proxy forwards by the same matcher.
 */
export function routePattern(key: string): { method: string | undefined; regex: RegExp; params: string[] } {
  const m = /^(?:(\S+)\s+)?(\/.*)$/.exec(key.trim());
  if (!m) throw new ConfigError(`Route key "${key}" must look like "GET /path/:param"`);
  if (m[1] !== undefined && !(ROUTE_METHODS as readonly string[]).includes(m[1])) {
    // A method no request has ("GTE") would never match, and the route's handler would serve unpaid.
    throw new ConfigError(`Route key "${key}": unknown HTTP method "${m[1]}" (use one of ${ROUTE_METHODS.join(", ")}, upper case)`);
  }
  if (/[?+()[\]]/.test(m[2]!)) {
    // Express would read these as optional parts or regular expressions and serve paths this matcher
    // would not charge for: refused rather than guessed.
    throw new ConfigError(`Route key "${key}": optional parts, "+" and regular expressions are not supported; list each path form as its own key`);
  }
  // As express 4 reads a path: `:name` (anywhere in a segment) is one segment's worth, `*` anything.
  const params: string[] = [];
  const pattern = m[2]!
    .split(/(:[A-Za-z0-9_]+|\*)/)
    .map((part) => (part === "*" ? ".*" : part.startsWith(":") ? (params.push(part.slice(1)), "([^/]+?)") : part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")))
    .join("");
  return { method: m[1], regex: new RegExp(`^${pattern}/?$`, "i"), params };
}

/** A path a file server would read differently from its bytes: percent-escapes, "//", "/./", "/../", backslashes. */
const NOT_CANONICAL = /%|\/\/|\/\.|\\/;

/**
 * `path` as a file server (express.static, sendFile) reads it: percent-decoded, empty and "." segments
 * dropped, ".." applied (never above the root); a trailing slash kept. One that does not decode stays as it is.
 */
export function canonicalPath(path: string): string {
  let decoded: string;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    return path;
  }
  const out: string[] = [];
  for (const seg of decoded.split(/[/\\]+/)) {
    if (seg === "" || seg === ".") continue;
    if (seg === "..") out.pop();
    else out.push(seg);
  }
  return `/${out.join("/")}${out.length > 0 && /[/\\]$/.test(decoded) ? "/" : ""}`;
}

/**
 * The first route whose key matches `method` and `path`. HEAD runs express's GET handlers: it pays as a
 * GET. A key without a method charges every method but a CORS preflight: a browser sends that without the
 * payment, so charging it would shut cross-origin payers out. It is answered by the app (a cors
 * middleware, express's automatic OPTIONS), unpaid and without a body (`exempt`); a key that names
 * OPTIONS still charges it.
 */
function routeFor(compiled: CompiledRoute[], path: string, method: string, preflight: boolean): { route?: CompiledRoute; exempt: boolean } {
  let exempt = false;
  for (const r of compiled) {
    if (!(r.method === undefined || r.method === method || (method === "HEAD" && r.method === "GET"))) continue;
    if (!r.regex.test(path)) continue;
    if (r.method === undefined && preflight) {
      exempt = true;
      continue;
    }
    return { route: r, exempt };
  }
  return { exempt };
}

/**
 * An exempted CORS preflight is answered by the app without a body: a handler that serves every method
 * (app.all, app.use) must not hand a paid route's content to an unpaid OPTIONS. Its headers (the app's
 * CORS answer) go out with Content-Length 0.
 */
function bodiless(res: Response) {
  const writeHead = res.writeHead;
  const framing = /^(content-length|transfer-encoding)$/i;
  res.writeHead = function (this: Response, ...args: unknown[]) {
    this.removeHeader("Transfer-Encoding");
    this.removeHeader("Content-Length");
    // No length on a 204 or 304 (they have no body by definition); 0 on any other status.
    const status = Number(args[0]);
    if (status !== 204 && status !== 304) this.setHeader("Content-Length", "0");
    (this as unknown as { _hasBody: boolean })._hasBody = false; // node drops the body, as for HEAD
    // The handler's own framing headers given to writeHead go too (a copy: its object is left as it was).
    const at = args.findIndex((a, i) => i > 0 && a !== null && typeof a === "object");
    const given = args[at];
    if (Array.isArray(given)) {
      const flat = given.length > 0 && !Array.isArray(given[0]);
      const kept: unknown[] = [];
      if (flat) for (let i = 0; i < given.length; i += 2) !framing.test(String(given[i])) && kept.push(given[i], given[i + 1]);
      else for (const pair of given as unknown[][]) !framing.test(String(pair[0])) && kept.push(pair);
      args = [...args.slice(0, at), kept, ...args.slice(at + 1)];
    } else if (given) {
      args = [...args.slice(0, at), Object.fromEntries(Object.entries(given).filter(([k]) => !framing.test(k))), ...args.slice(at + 1)];
    }
    return (writeHead as (...a: unknown[]) => Response).apply(this, args);
  } as typeof res.writeHead;
}

/** The `:param` values of `path` under `route` (percent-decoded where they decode). */
function matchOf(route: CompiledRoute, path: string): RouteMatch {
  const groups = route.regex.exec(path) ?? [];
  const params: Record<string, string> = {};
  route.params.forEach((name, i) => {
    const raw = groups[i + 1] ?? "";
    try {
      params[name] = decodeURIComponent(raw);
    } catch {
      params[name] = raw;
    }
  });
  return { params };
}

/** Writes a 402 (or other status) with the PaymentRequired body and header. */
export function sendPaymentRequired(
  res: Response,
  resourceUrl: string,
  route: CompiledRoute | { config: RouteConfig },
  required: PaymentRequirements,
  error?: string,
  extra?: Record<string, unknown>,
  status = 402,
  message?: string,
) {
  const body: PaymentRequiredBody & { message?: string } = {
    x402Version: 2,
    ...(error ? { error } : {}),
    resource: { url: resourceUrl, description: route.config.description, mimeType: route.config.mimeType },
    accepts: [requirementsToWire(required, extra)],
    ...(message ? { message } : {}),
  };
  res.status(status);
  res.setHeader(HEADERS.paymentRequired, encodeBase64Json(body));
  res.setHeader("Access-Control-Expose-Headers", EXPOSED_HEADERS);
  res.setHeader("Cache-Control", "no-store");
  res.json(body);
}

/** Longest path a ledger row records as its resource (the rest is cut). */
const RESOURCE_MAX_LENGTH = 512;

/**
 * Builds the payment middleware for `routes`, verified and committed by `payee`.
 * @example app.use(paymentMiddleware({ "GET /articles/:id": "$0.01" }, payee))
 */
export function paymentMiddleware(routes: RoutesConfig, payee: Payee, options: MiddlewareOptions = {}): RequestHandler {
  const compiled = compileRoutes(routes, payee.opts.asset.decimals);
  const handlerTimeoutMs = options.handlerTimeoutMs ?? 60_000;
  const decimals = payee.opts.asset.decimals;

  return async function tollwayPaymentMiddleware(req: Request, res: Response, next: NextFunction) {
    const raw = req.path;
    // Matched as written and as a file server reads it (decoded, "//" and "." dropped, ".." applied):
    // "/%70remium/a.pdf" or "//premium/a.pdf" must not reach express.static or sendFile unpaid.
    const canonical = NOT_CANONICAL.test(raw) ? canonicalPath(raw) : raw;
    const method = req.method;
    const preflight = method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
    const written = routeFor(compiled, raw, method, preflight);
    const read = canonical === raw ? written : routeFor(compiled, canonical, method, preflight);
    if (written.route && read.route && written.route !== read.route) {
      // "/articles/../premium/x.pdf": charged as one route, served by a file server as another (dearer).
      res.status(400).json({ error: "invalid_path", message: "this path reads as two different paid routes (as written and as resolved): request the resolved path" });
      return;
    }
    const route = written.route ?? read.route;
    const path = written.route ? raw : canonical;
    if (!route) {
      if (written.exempt || read.exempt) bodiless(res);
      return next();
    }
    // Read now: express changes req.baseUrl (and req.url) while the handler's routers run.
    const mount = req.baseUrl;
    const started = process.hrtime.bigint();
    res.setHeader("Access-Control-Expose-Headers", EXPOSED_HEADERS);
    // Only 402 answers carry the URL: build it on demand, not on every paid request.
    const resourceUrl = () => `${req.protocol}://${req.get("host") ?? "localhost"}${req.originalUrl}`;

    let required: PaymentRequirements;
    try {
      const amount = route.staticPrice ?? parsePrice(await (route.config.price as (r: Request, m: RouteMatch) => Price | Promise<Price>)(req, matchOf(route, path)), decimals);
      required = payee.requirements(amount);
    } catch (err) {
      return next(err);
    }

    const header = req.headers["payment-signature"];
    if (typeof header !== "string" || header.length === 0) {
      if (req.headers["x-payment"] !== undefined) {
        return sendPaymentRequired(res, resourceUrl(), route, required, ErrorCodes.invalidX402Version, undefined, 400,
          "X-PAYMENT (x402 v1) is not accepted: batch-settlement is an x402 v2 scheme; send PAYMENT-SIGNATURE");
      }
      return sendPaymentRequired(res, resourceUrl(), route, required);
    }

    let payment: PaymentPayload;
    try {
      payment = decodePaymentSignature(header);
    } catch (err) {
      return refuse(err);
    }

    if (payment.payload.type === "refund") {
      try {
        const body = await payee.refund(payment, required);
        res.setHeader(HEADERS.paymentResponse, encodeBase64Json(body));
        res.setHeader("Cache-Control", "no-store");
        res.status(200).json({ refunded: body.amount, channelState: body.extra.channelState, transaction: body.transaction });
        return;
      } catch (err) {
        return refuse(err, payment);
      }
    }

    let reservation: Reservation;
    try {
      reservation = await payee.authorize(payment, required);
    } catch (err) {
      return refuse(err, payment);
    }
    try {
      options.onVerified?.(route.key, payment.payload.type === "deposit" ? "deposit" : "voucher", Number(process.hrtime.bigint() - started) / 1000);
    } catch {
      // A metrics hook must not leave the channel reserved or fail the payment.
    }

    const ctx = new PaidContext(reservation, route.key);
    res.locals.tollway = ctx;
    const routeKey = route.key;

    manageResponsePrototype(res);
    const open = interceptResponse(
      res,
      async (status) => {
        const amount = ctx.decide();
        if (status >= 400) {
          payee.release(reservation);
          return;
        }
        // The ledger keeps the path (with the mount point, if any) only: not the query string (a payer's
        // tokens, and up to 16 KB of attacker-chosen text per row), and not past RESOURCE_MAX_LENGTH.
        const full = mount === "" ? path : mount + path;
        const resource = full.length > RESOURCE_MAX_LENGTH ? full.slice(0, RESOURCE_MAX_LENGTH) : full;
        const body: PaymentResponseBody = await payee.commit(reservation, amount, { route: routeKey, resource });
        res.setHeader(HEADERS.paymentResponse, encodeBase64Json(body));
        // A paid answer is this payer's and this payment's: not for a shared cache (free content for the
        // next reader), nor for the payer's own (a stale PAYMENT-RESPONSE replayed into its next payment,
        // which the payer must refuse). Always no-store, whatever the handler, express.static or an
        // upstream set.
        res.setHeader("Cache-Control", "no-store");
        try {
          options.onPaid?.(routeKey, amount, Number(process.hrtime.bigint() - started) / 1000);
        } catch (err) {
          // The charge is on disk: a failing metrics hook must not turn the paid answer into a 503.
          options.onError?.(routeKey, err);
        }
      },
      () => {
        if (!reservation.settled) payee.release(reservation);
      },
      (err) => options.onError?.(routeKey, err),
      handlerTimeoutMs,
    );
    // The client left while its payment was checked: nothing is charged, and nothing is run for it.
    if (open) next();

    async function refuse(err: unknown, p?: PaymentPayload) {
      if (err instanceof PaymentError) {
        let extra: Record<string, unknown> | undefined;
        if (err instanceof CumulativeMismatchError && p) {
          extra = err.corrective ?? (await payee.correctiveExtra(p.payload.voucher.channelId).catch(() => undefined));
        }
        options.onError?.(route!.key, err);
        if (err.retryAfterS !== undefined) res.setHeader("Retry-After", String(err.retryAfterS));
        return sendPaymentRequired(res, resourceUrl(), route!, required, err.code, extra, err.status, err.shortMessage);
      }
      options.onError?.(route!.key, err);
      if (err instanceof TollwayError) {
        return sendPaymentRequired(res, resourceUrl(), route!, required, ErrorCodes.unexpectedVerifyError, undefined, 503, err.shortMessage);
      }
      return next(err);
    }
  };
}

/**
 * Defers everything the handler writes until `decide(status)` has run (which commits the charge and
 * sets PAYMENT-RESPONSE), then lets it through. If the commit fails, the handler's response is dropped
 * and a 503 goes out instead: nothing is served that was not durably paid for. If the status changes
 * after the answer started (a handler that fails after its first write), the answer is cut and the
 * charge stands, as for a stream broken after its first byte.
 *
 * Hot path (express responses): one small state object per response and the three methods installed
 * once on express's response prototype (no closures, no shape change per request); other responses
 * are held through own-property wrappers. A client that goes away before the handler answers is
 * noticed by one 'close' listener per socket, not one per response; a handler that never answers is
 * cut off after `timeoutMs`. Returns false when the client had already gone (nothing to run for it).
 */
export function interceptResponse(
  res: Response,
  decide: (status: number) => Promise<void>,
  onAbort: () => void,
  onReplayError: (err: unknown) => void = () => {},
  timeoutMs?: number,
): boolean {
  const base = managedBase(res);
  const st: Interception = {
    phase: OPEN,
    pending: [],
    decide,
    onAbort,
    onReplayError,
    writeHead: base ? base.writeHead : (res.writeHead as unknown as AnyFn),
    write: base ? base.write : (res.write as unknown as AnyFn),
    end: base ? base.end : (res.end as unknown as AnyFn),
    // A pipelined response waiting behind another has no socket yet (and emits no 'close' if the
    // client goes): its request's socket is the one to watch.
    socket: res.socket ?? res.req?.socket ?? undefined,
    status: 0,
    own: undefined,
  };
  // On the response itself, under a symbol: not in res.locals (handlers may replace that object) and
  // not in a WeakMap (V8's scavenger keeps WeakMap-held responses alive: measured ~5 KB promoted to
  // the old generation per paid request and twice the young-GC pauses).
  (res as unknown as Record<symbol, Interception>)[kInterception] = st;
  if (base === undefined) {
    // Not on a managed prototype chain (see manageResponsePrototype), or another middleware wrapped
    // these methods on the response (compression, say): hold through own properties, above them.
    const own: BaseMethods = {
      writeHead: function (this: Response, ...args: unknown[]) {
        return holdOrPass(this, st.writeHead, args, true);
      },
      write: function (this: Response, ...args: unknown[]) {
        return holdOrPass(this, st.write, args, true);
      },
      end: function (this: Response, ...args: unknown[]) {
        return holdOrPass(this, st.end, args, true);
      },
    };
    st.own = own;
    res.writeHead = own.writeHead as unknown as Response["writeHead"];
    res.write = own.write as unknown as Response["write"];
    res.end = own.end as unknown as Response["end"];
  }
  const socket = st.socket as (Socket & { [kOpenInterceptions]?: Map<Response, Interception> }) | undefined;
  if (socket) {
    let open = socket[kOpenInterceptions];
    if (!open) {
      open = new Map();
      socket[kOpenInterceptions] = open;
      const watched = open;
      socket.once("close", () => {
        for (const [r, s] of watched) if (s.phase === OPEN) abort(r, s);
        watched.clear();
      });
    }
    open.set(res, st);
  } else {
    res.once("close", () => {
      if (st.phase === OPEN) abort(res, st);
    });
  }
  // The client may have gone while the payment was being verified: its socket's close already fired.
  if (socket?.destroyed || res.destroyed) {
    abort(res, st);
    return false;
  }
  if (timeoutMs !== undefined) {
    // A handler that never answers must not hold its channel forever.
    st.deadline = performance.now() + timeoutMs;
    st.res = res;
    watchDeadline(st, timeoutMs);
  }
  return true;
}

/**
 * Handler deadlines: one shared, unref'd sweep over the open interceptions instead of a timer per
 * paid request (a Timeout is ~1 us and ~200 B on the hot path). A handler is cut off between its
 * deadline and one sweep period (a quarter of the timeout, 5 ms .. 1 s) later.
 */
const deadlines = new Set<Interception>();
let sweeper: NodeJS.Timeout | undefined;
let sweepEvery = Infinity;

function watchDeadline(st: Interception, timeoutMs: number) {
  deadlines.add(st);
  const every = Math.min(1_000, Math.max(5, Math.floor(timeoutMs / 4)));
  if (sweeper !== undefined && every >= sweepEvery) return;
  if (sweeper !== undefined) clearInterval(sweeper);
  sweepEvery = every;
  sweeper = setInterval(sweepDeadlines, every);
  sweeper.unref();
}

function sweepDeadlines() {
  if (deadlines.size === 0) {
    clearInterval(sweeper);
    sweeper = undefined;
    sweepEvery = Infinity;
    return;
  }
  const now = performance.now();
  for (const st of deadlines) {
    if (st.phase !== OPEN) {
      deadlines.delete(st);
    } else if (now >= st.deadline!) {
      abort(st.res!, st); // also takes it out of `deadlines`
      st.res!.destroy();
    }
  }
}

/**
 * Installs holding writeHead / write / end once on express's response prototype (the one right above
 * node's ServerResponse.prototype, which every app's and sub-app's `app.response` inherits from), so
 * holding a paid response changes no object shape and survives express moving the response between
 * apps. The installed methods find the response's interception (a symbol property) and pass straight
 * through for every response that is not being held. Node's own prototype is never touched.
 */
export function manageResponsePrototype(res: Response): void {
  let p = Object.getPrototypeOf(res) as object | null;
  if (p === null || p === ServerResponse.prototype) return;
  while (p !== null && Object.getPrototypeOf(p) !== ServerResponse.prototype) p = Object.getPrototypeOf(p) as object | null;
  if (p === null || managedPrototypes.has(p)) return;
  const r = p as Response;
  const base: BaseMethods = { writeHead: r.writeHead as unknown as AnyFn, write: r.write as unknown as AnyFn, end: r.end as unknown as AnyFn };
  Object.defineProperties(p, {
    writeHead: { value: function (this: Response, ...args: unknown[]) { return holdOrPass(this, base.writeHead, args, false); }, writable: true, configurable: true },
    write: { value: function (this: Response, ...args: unknown[]) { return holdOrPass(this, base.write, args, false); }, writable: true, configurable: true },
    end: { value: function (this: Response, ...args: unknown[]) { return holdOrPass(this, base.end, args, false); }, writable: true, configurable: true },
  });
  managedPrototypes.set(p, base);
}

/**
 * The original methods when `res` reaches a managed prototype with nothing in between that defines its
 * own writeHead / write / end (the response itself included); undefined otherwise.
 */
function managedBase(res: Response): BaseMethods | undefined {
  let p: object | null = res;
  while (p !== null) {
    const base = managedPrototypes.get(p);
    if (base) return base;
    if (Object.hasOwn(p, "writeHead") || Object.hasOwn(p, "write") || Object.hasOwn(p, "end")) return undefined;
    p = Object.getPrototypeOf(p) as object | null;
  }
  return undefined;
}

type BaseMethods = { writeHead: AnyFn; write: AnyFn; end: AnyFn };
const managedPrototypes = new WeakMap<object, BaseMethods>();
const kInterception = Symbol("tollway.interception");

/**
 * Holds a writeHead / write / end call while the charge is decided, or passes it through. A call node
 * would refuse (bad status, header or chunk) is refused here, at once, as node would: held, it would
 * only fail after the charge was committed.
 */
function holdOrPass(res: Response, method: AnyFn, args: unknown[], own: boolean): unknown {
  const st = (res as unknown as Record<symbol, Interception | undefined>)[kInterception];
  if (st !== undefined && st.refused && method !== st.writeHead && (st.own !== undefined) === own) {
    // After the 503: the handler's later body (a stream, or one a wrapper outside ours such as compression
    // still flushes) neither follows the 503 nor ends in a write after end (an 'error' nothing handles).
    const done = args.find((a) => typeof a === "function") as (() => void) | undefined;
    if (done) process.nextTick(done);
    return method === st.write ? true : res;
  }
  if (st === undefined || st.phase === DONE || (st.own !== undefined) !== own) return method.apply(res, args);
  if (method === st.writeHead) {
    if (st.phase === DECIDING) return writeHeadAfterStart(res, args);
    args = holdWriteHead(res, args);
  } else {
    checkChunk(args[0], method === st.end);
  }
  st.pending.push(method, args);
  begin(res, st);
  return method === st.write ? true : res;
}

/**
 * A writeHead once the answer has started (a writeHead, write or end is held). To node the headers are
 * not written yet (`_header` unset, headersSent false), so code that writes them only when they are
 * not calls writeHead(statusCode) again: node's flushHeaders and _implicitHeader (the usual event-stream
 * start `writeHead(200, {...}); flushHeaders()`), and wrappers such as compression's write. Replayed, that
 * second call would throw ERR_HTTP_HEADERS_SENT after the charge: it is dropped, as those callers would
 * not have made it had the headers been written. A writeHead that carries a message or headers is a
 * real second writeHead, which node refuses: refused here too, in the handler, before the charge.
 */
function writeHeadAfterStart(res: Response, args: unknown[]): Response {
  if (typeof args[1] === "string" || (args[2] ?? args[1]) != null) {
    throw Object.assign(new Error("Cannot write headers after they are sent to the client"), { code: "ERR_HTTP_HEADERS_SENT" });
  }
  return res;
}

/**
 * Checks a writeHead as node would (a call node refuses is refused at once: held, it would only fail
 * after the charge) and returns the arguments to hold. Its headers are set now, as node's progressive
 * path (a paid response always has headers already) sets them when it runs, and only the status and
 * message are held: so the headers the middleware sets once the charge is committed (no-store,
 * PAYMENT-RESPONSE) are not overwritten by the handler's when it is replayed.
 */
function holdWriteHead(res: Response, args: unknown[]): unknown[] {
  const code = Number(args[0]) | 0;
  if (code < 100 || code > 999) throw new RangeError(`Invalid status code: ${String(args[0])}`);
  const message = typeof args[1] === "string" ? args[1] : undefined;
  if (message !== undefined) validateHeaderValue("statusMessage", message);
  // As node reads writeHead(status[, message][, headers]).
  const headers = message !== undefined ? args[2] : (args[2] ?? args[1]);
  if (headers === undefined || headers === null || typeof headers !== "object") {
    res.statusCode = code;
    return args;
  }
  // All checked before anything is set: a refused writeHead leaves the response as it was.
  if (Array.isArray(headers)) {
    // A flat [name, value, ...] list of even length, each pair as setHeader takes it.
    if (headers.length % 2 !== 0) {
      throw Object.assign(new TypeError(`The argument 'headers' is invalid. Received ${JSON.stringify(headers)}`), { code: "ERR_INVALID_ARG_VALUE" });
    }
    for (let k = 0; k < headers.length; k += 2) {
      if (!headers[k]) continue;
      validateHeaderName(headers[k] as string);
      validateHeaderValue(headers[k] as string, headers[k + 1] as string);
    }
    for (let k = 0; k < headers.length; k += 2) if (headers[k]) res.setHeader(headers[k] as string, headers[k + 1] as string);
  } else {
    const names = Object.keys(headers);
    for (const name of names) {
      if (!name) continue;
      validateHeaderName(name);
      validateHeaderValue(name, (headers as Record<string, unknown>)[name] as string);
    }
    for (const name of names) if (name) res.setHeader(name, (headers as Record<string, string>)[name]!);
  }
  res.statusCode = code;
  return message === undefined ? [args[0]] : [args[0], message];
}

function checkChunk(chunk: unknown, isEnd: boolean) {
  if (typeof chunk === "function" || typeof chunk === "string" || chunk instanceof Uint8Array) return;
  if (isEnd && (chunk === undefined || chunk === null || chunk === false || chunk === 0 || chunk === "")) return;
  if (!isEnd && chunk === null) throw new TypeError("May not write null values to stream");
  throw new TypeError(`The "chunk" argument must be of type string or an instance of Buffer or Uint8Array. Received ${typeof chunk}`);
}

const OPEN = 0;
const DECIDING = 1;
const DONE = 2;
const kOpenInterceptions = Symbol("tollway.openInterceptions");

type Interception = {
  phase: typeof OPEN | typeof DECIDING | typeof DONE;
  /** The commit failed and the 503 went out: the handler's later writes and end are dropped. */
  refused?: boolean;
  /** Held calls: method, arguments, method, arguments, ... */
  pending: unknown[];
  decide: (status: number) => Promise<void>;
  onAbort: () => void;
  onReplayError: (err: unknown) => void;
  writeHead: AnyFn;
  write: AnyFn;
  end: AnyFn;
  socket: Socket | undefined;
  /** The status the charge was decided on (the answer's status when its first call was held). */
  status: number;
  /** Our own-property wrappers, when held through own properties (put back only if still in place). */
  own: BaseMethods | undefined;
  /** performance.now() after which a handler that has not started its answer is cut off. */
  deadline?: number;
  res?: Response;
};
type AnyFn = (...a: unknown[]) => unknown;

function restore(res: Response, st: Interception) {
  const own = st.own;
  if (own) {
    // A wrapper another middleware installed after ours stays in place (ours pass through when done).
    if ((res.writeHead as unknown) === own.writeHead) res.writeHead = st.writeHead as unknown as Response["writeHead"];
    if ((res.write as unknown) === own.write) res.write = st.write as unknown as Response["write"];
    if ((res.end as unknown) === own.end) res.end = st.end as unknown as Response["end"];
  }
  untrack(res, st);
}

function untrack(res: Response, st: Interception) {
  (st.socket as (Socket & { [kOpenInterceptions]?: Map<Response, Interception> }) | undefined)?.[kOpenInterceptions]?.delete(res);
}

function abort(res: Response, st: Interception) {
  if (st.deadline !== undefined) deadlines.delete(st);
  restore(res, st);
  st.phase = DONE;
  st.onAbort();
}

function begin(res: Response, st: Interception) {
  if (st.phase !== OPEN) return;
  st.phase = DECIDING;
  if (st.deadline !== undefined) deadlines.delete(st);
  st.status = res.statusCode;
  st.decide(st.status)
    .then(
      () => {
        restore(res, st);
        st.phase = DONE;
        const calls = st.pending;
        st.pending = [];
        if (res.statusCode !== st.status) {
          // The handler failed after its answer had started: express's error handler, seeing nothing
          // sent, set a 500 and wrote its page, held behind the paid answer's first bytes. Plain express
          // would cut the connection there; so does this. The charge, decided on the status the answer
          // started with, is on disk, as for a stream broken after its first byte.
          st.onReplayError(new TollwayError(`paid answer cut: its status changed from ${st.status} to ${res.statusCode} after it had started`));
          res.destroy();
          return;
        }
        // Several held calls (headers, body chunks, end) leave in one writev, not one syscall each.
        const socket = calls.length > 2 ? res.socket : null;
        socket?.cork();
        try {
          for (let i = 0; i < calls.length; i += 2) (calls[i] as AnyFn).apply(res, calls[i + 1] as unknown[]);
          // An answer started but not ended whose headers are still not on the wire (a writeHead only,
          // or HEAD, 204 and 304 writes, which carry none): send them now. The handler's flushHeaders
          // ran while they were held and sent nothing, and an event stream that waits for its first
          // event would leave the client without headers until then. Their content was fixed when
          // writeHead was replayed: sending them early changes nothing but when they arrive.
          if (!res.writableEnded && !(res as unknown as { _headerSent: boolean })._headerSent) res.flushHeaders();
        } catch (err) {
          // Checked when held, so this is exotic; the charge is on disk, the answer is broken: cut it.
          st.onReplayError(err);
          res.destroy(err as Error);
        } finally {
          socket?.uncork();
        }
      },
      (err: unknown) => {
        // Our wrappers stay in place (own properties too): the handler's later calls reach them and are dropped.
        untrack(res, st);
        st.phase = DONE;
        st.pending = [];
        const code = err instanceof PaymentError ? err.code : ErrorCodes.unexpectedSettleError;
        res.statusCode = 503;
        res.statusMessage = "Service Unavailable";
        // None of the handler's headers describe this answer (Content-Encoding would break its decoding,
        // ETag and Cache-Control would let it be kept); the CORS ones stay so a browser payer can read it.
        for (const name of res.getHeaderNames()) if (!name.startsWith("access-control-")) res.removeHeader(name);
        // no-transform: a compression middleware outside ours leaves this JSON as it is.
        res.setHeader("Cache-Control", "no-store, no-transform");
        res.setHeader("Content-Type", "application/json");
        st.refused = true;
        // Past any wrapper installed outside ours (it would hand the body back to ours, now dropping).
        st.end.call(res, JSON.stringify({ error: code, message: "the payment could not be committed; nothing was charged" }));
      },
    )
    .catch((err: unknown) => {
      st.onReplayError(err);
      res.destroy(err as Error);
    });
}
