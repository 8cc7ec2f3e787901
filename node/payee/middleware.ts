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

export type RouteConfig = {
  /** "$0.01", "0.01" (token units) or atomic bigint, or a function of the request (dynamic price). */
  price: Price | ((req: Request) => Price | Promise<Price>);
  description?: string;
  mimeType?: string;
};

export type RoutesConfig = Record<string, RouteConfig | Price>;

export type MiddlewareOptions = {
  /** Called for every committed charge (metrics). */
  onPaid?: (route: string, amount: bigint, latencyUs: number) => void;
  onError?: (route: string, err: unknown) => void;
};

/** Per-request handle the handler can use (res.locals.tollway). */
export type PaidRequestContext = {
  readonly reservation: Reservation;
  readonly route: string;
  /** Charge less than the signed maximum (metered handlers). */
  charge(amount: bigint): void;
  /** The amount that will be committed. */
  readonly amount: bigint;
};

type CompiledRoute = {
  key: string;
  method: string | undefined;
  regex: RegExp;
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
    const m = /^(?:([A-Z]+)\s+)?(\/.*)$/.exec(key.trim());
    if (!m) throw new ConfigError(`Route key "${key}" must look like "GET /path/:param"`);
    const pattern = m[2]!
      .split("/")
      .map((seg) => (seg === "*" ? ".*" : seg.startsWith(":") ? "[^/]+" : seg.replace(/[.+?^${}()|[\]\\]/g, "\\$&")))
      .join("/");
    const staticPrice = typeof config.price === "function" ? undefined : parsePrice(config.price, decimals);
    return { key, method: m[1], regex: new RegExp(`^${pattern}/?$`), config, staticPrice };
  });
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

/**
 * Builds the payment middleware for `routes`, verified and committed by `payee`.
 * @example app.use(paymentMiddleware({ "GET /articles/:id": "$0.01" }, payee))
 */
export function paymentMiddleware(routes: RoutesConfig, payee: Payee, options: MiddlewareOptions = {}): RequestHandler {
  const compiled = compileRoutes(routes, payee.opts.asset.decimals);
  const decimals = payee.opts.asset.decimals;

  return async function tollwayPaymentMiddleware(req: Request, res: Response, next: NextFunction) {
    const path = req.path;
    let route: CompiledRoute | undefined;
    for (const r of compiled) {
      if ((r.method === undefined || r.method === req.method) && r.regex.test(path)) {
        route = r;
        break;
      }
    }
    if (!route) return next();
    const started = process.hrtime.bigint();
    res.setHeader("Access-Control-Expose-Headers", EXPOSED_HEADERS);
    // Only 402 answers carry the URL: build it on demand, not on every paid request.
    const resourceUrl = () => `${req.protocol}://${req.get("host") ?? "localhost"}${req.originalUrl}`;

    let required: PaymentRequirements;
    try {
      const amount = route.staticPrice ?? parsePrice(await (route.config.price as (r: Request) => Price | Promise<Price>)(req), decimals);
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

    let amount = reservation.maxCharge;
    const ctx: PaidRequestContext = {
      reservation,
      route: route.key,
      get amount() {
        return amount;
      },
      charge(n: bigint) {
        if (n < 0n || n > reservation.maxCharge) {
          throw new PaymentError(ErrorCodes.chargeExceedsSignedCumulative, `charge ${n} is outside 0..${reservation.maxCharge}`);
        }
        amount = n;
      },
    };
    res.locals.tollway = ctx;
    const routeKey = route.key;

    interceptResponse(res, async (status) => {
      if (status >= 400) {
        payee.release(reservation);
        return;
      }
      const body: PaymentResponseBody = await payee.commit(reservation, amount, { route: routeKey, resource: req.originalUrl });
      res.setHeader(HEADERS.paymentResponse, encodeBase64Json(body));
      options.onPaid?.(routeKey, amount, Number(process.hrtime.bigint() - started) / 1000);
    }, () => {
      if (!reservation.settled) payee.release(reservation);
    });
    next();

    async function refuse(err: unknown, p?: PaymentPayload) {
      if (err instanceof PaymentError) {
        let extra: Record<string, unknown> | undefined;
        if (err instanceof CumulativeMismatchError && p) {
          extra = await payee.correctiveExtra(p.payload.voucher.channelId).catch(() => undefined);
        }
        options.onError?.(route!.key, err);
        return sendPaymentRequired(res, resourceUrl(), route!, required, err.code, extra, err.status, err.shortMessage);
      }
      options.onError?.(route!.key, err);
      if (err instanceof TollwayError) {
        return sendPaymentRequired(res, resourceUrl(), route!, required, ErrorCodes.invalidPayment, undefined, 503, err.shortMessage);
      }
      return next(err);
    }
  };
}

/**
 * Defers everything the handler writes until `decide(status)` has run (which commits the charge and
 * sets PAYMENT-RESPONSE), then lets it through. If the commit fails, the handler's response is dropped
 * and a 503 goes out instead: nothing is served that was not durably paid for.
 */
export function interceptResponse(res: Response, decide: (status: number) => Promise<void>, onAbort: () => void) {
  const origWriteHead = res.writeHead;
  const origWrite = res.write;
  const origEnd = res.end;
  let phase: "open" | "deciding" | "done" = "open";
  const pending: Array<() => void> = [];

  const restore = () => {
    res.writeHead = origWriteHead;
    res.write = origWrite;
    res.end = origEnd;
  };
  const start = () => {
    if (phase !== "open") return;
    phase = "deciding";
    decide(res.statusCode).then(
      () => {
        restore();
        phase = "done";
        for (const fn of pending.splice(0)) fn();
      },
      (err: unknown) => {
        restore();
        phase = "done";
        pending.length = 0;
        const code = err instanceof PaymentError ? err.code : ErrorCodes.invalidPayment;
        res.statusCode = 503;
        res.removeHeader("Content-Length");
        res.removeHeader(HEADERS.paymentResponse);
        res.setHeader("Content-Type", "application/json");
        res.end(JSON.stringify({ error: code, message: "the payment could not be committed; nothing was charged" }));
      },
    );
  };

  res.writeHead = function (this: Response, statusCode: number, ...rest: unknown[]) {
    if (phase === "done") return (origWriteHead as (...a: unknown[]) => Response).call(this, statusCode, ...rest);
    res.statusCode = statusCode;
    pending.push(() => (origWriteHead as (...a: unknown[]) => Response).call(res, statusCode, ...rest));
    start();
    return res;
  } as Response["writeHead"];
  res.write = function (this: Response, ...args: unknown[]) {
    if (phase === "done") return (origWrite as (...a: unknown[]) => boolean).apply(this, args);
    pending.push(() => (origWrite as (...a: unknown[]) => boolean).apply(res, args));
    start();
    return true;
  } as Response["write"];
  res.end = function (this: Response, ...args: unknown[]) {
    if (phase === "done") return (origEnd as (...a: unknown[]) => Response).apply(this, args);
    pending.push(() => (origEnd as (...a: unknown[]) => Response).apply(res, args));
    start();
    return res;
  } as Response["end"];
  res.on("close", () => {
    if (phase === "open") {
      restore();
      phase = "done";
      onAbort();
    }
  });
}
