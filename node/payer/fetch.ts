/**
 * wrapFetch: the x402 fetch-wrapper shape, paying batch-settlement requirements with a Payer.
 *
 * One round trip per paid request: the requirements accepted for a route (method + origin + path) are
 * remembered, and later requests to it carry the payment up-front. The 402 exchange happens only on the
 * first request, when the server's terms change, or after a corrective 402.
 */
import { ErrorCodes, PolicyError, ServerMisbehaviorError, TollwayError } from "../protocol/errors";
import { HEADERS, decodeBase64Json, paymentRequirementsSchema, type PaymentRequirements } from "../protocol/wire";
import type { Payer, PreparedPayment, SettleResponseBody } from "./payer";

export type PaymentInfo = { channelId: string; charged: bigint; balance: bigint; kind: "deposit" | "voucher"; requirements: PaymentRequirements };

export type WrapFetchOptions = {
  /** Called after every verified paid response. */
  onPayment?: (info: PaymentInfo, response: Response) => void;
  /** Deposit (top up) this much with the next paid request, whatever the balance (tollway deposit). */
  deposit?: bigint;
  /**
   * Most ms to wait for a response's headers (default 120,000). A paid request holds its channel until
   * answered: a server that never answers must not stall every later payment on the channel. (A body
   * still streaming after its headers is not cut.)
   */
  timeoutMs?: number;
};

const DEFAULT_TIMEOUT_MS = 120_000;
/** A refund waits for the payee's transaction and its confirmations: longer than a paid request. */
const REFUND_TIMEOUT_MS = 300_000;

type PaymentRequiredBody = { x402Version?: number; error?: string; accepts?: unknown[] };

function routeKey(req: Request): string {
  const u = new URL(req.url);
  return `${req.method} ${u.origin}${u.pathname}`;
}

/**
 * The "collection" a path belongs to (`GET http://host/articles/` for `/articles/42`): siblings usually
 * share a price, so a request to an unseen article still pays up-front. If the guess is wrong the server
 * answers 402 with its terms and nothing is charged; the voucher it saw is bounded by the policy.
 */
function collectionKey(req: Request): string {
  const u = new URL(req.url);
  return `${req.method} ${u.origin}${u.pathname.replace(/[^/]*$/, "")}`;
}

async function readPaymentRequired(res: Response): Promise<PaymentRequiredBody | undefined> {
  const header = res.headers.get(HEADERS.paymentRequired);
  try {
    if (header) return decodeBase64Json(header, "PAYMENT-REQUIRED") as PaymentRequiredBody;
    return (await res.clone().json()) as PaymentRequiredBody;
  } catch {
    return undefined;
  }
}

function parseAccepts(body: PaymentRequiredBody): PaymentRequirements[] {
  const out: PaymentRequirements[] = [];
  for (const a of body.accepts ?? []) {
    const r = paymentRequirementsSchema.safeParse(a);
    if (r.success) out.push(r.data);
  }
  return out;
}

/** What one paid call may add to fetch's arguments. */
export type PaidCallOptions = {
  /** The most this request pays (atomic units): a 402 asking more is refused (PolicyError max_per_request), nothing signed. */
  maxAmount?: bigint;
};

/** A fetch that pays; its third argument caps this call's price. */
export type TollwayFetch = (input: RequestInfo | URL, init?: RequestInit, call?: PaidCallOptions) => Promise<Response>;

/**
 * Wraps `fetch` so that 402 answers of batch-settlement servers are paid by `payer`, within its policy.
 * @example const pay = wrapFetch(fetch, payer); const res = await pay("http://127.0.0.1:4020/articles/1", undefined, { maxAmount: 10_000n })
 */
export function wrapFetch(fetchImpl: typeof fetch, payer: Payer, options: WrapFetchOptions = {}): TollwayFetch {
  return async function tollwayFetch(input: RequestInfo | URL, init?: RequestInit, call: PaidCallOptions = {}): Promise<Response> {
    const original = new Request(input, init);
    // The caller's own signal (the copy on `original` is linked to it only weakly by undici).
    const callerSignal = init && "signal" in init ? init.signal : input instanceof Request ? input.signal : undefined;
    const key = routeKey(original);
    const collection = collectionKey(original);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const send = async (header?: string) => {
      const r = original.clone();
      const headers = new Headers(r.headers);
      if (header) headers.set(HEADERS.paymentSignature, header);
      // The deadline covers the headers; the caller's signal the whole exchange, body included.
      const deadline = new AbortController();
      const timer = setTimeout(() => deadline.abort(new TollwayError(`no answer from ${original.url} within ${timeoutMs} ms`)), timeoutMs);
      try {
        // The signal goes in `init`: on a Request object it is linked to the fetch only weakly by undici,
        // and a garbage collection then cuts the caller's abort off from a body still arriving.
        return await fetchImpl(r, { headers, signal: combine(deadline, callerSignal) });
      } finally {
        clearTimeout(timer);
      }
    };

    const payAndSend = async (requirements: PaymentRequirements): Promise<{ res: Response; prepared: PreparedPayment }> => {
      const prepared = await payer.prepare(requirements, { deposit: options.deposit, maxAmount: call.maxAmount });
      let res: Response;
      try {
        res = await send(prepared.header);
      } catch (e) {
        prepared.release();
        throw e;
      }
      return { res, prepared };
    };

    // Per channel, what this request signed (see Exchange). A voucher re-signed at an earlier ceiling is
    // not a refused one: after a lost answer the server rightly reports that amount as charged.
    const exchange = new Map<string, Exchange>();
    const guardOf = (channelId: string) => exchange.get(channelId.toLowerCase());
    const finish = async (res: Response, prepared: PreparedPayment): Promise<Response | undefined> => {
      const pr = res.headers.get(HEADERS.paymentResponse);
      if (res.ok && pr) {
        let body: SettleResponseBody;
        try {
          body = decodeBase64Json(pr, "PAYMENT-RESPONSE") as SettleResponseBody;
        } catch {
          // The channel must not stay locked (every later request would wait forever); nothing is recorded.
          prepared.release();
          throw new ServerMisbehaviorError(prepared.channelId, "paid response with an undecodable PAYMENT-RESPONSE");
        }
        const { charged, balance } = await payer.complete(prepared, body);
        await payer.store.putRoute({ key, requirements: prepared.requirements, at: Date.now() });
        await payer.store.putRoute({ key: collection, requirements: prepared.requirements, at: Date.now() });
        options.onPayment?.({ channelId: prepared.channelId, charged, balance, kind: prepared.kind, requirements: prepared.requirements }, res);
        return res;
      }
      prepared.release();
      if (res.status !== 402) return res; // the handler failed: nothing was charged
      const guard: Exchange = guardOf(prepared.channelId) ?? { ceiling: prepared.ceiling };
      if (prepared.max > prepared.ceiling && (guard.highestRefused === undefined || prepared.max > guard.highestRefused)) guard.highestRefused = prepared.max;
      exchange.set(prepared.channelId.toLowerCase(), guard);
      return undefined; // a 402: the caller decides (corrective or changed terms)
    };

    // 1. Known route: pay up-front (one round trip).
    let challenge: Response | undefined;
    let corrected: string | undefined; // the channel the current challenge already corrected
    const remembered = (await payer.store.getRoute(key)) ?? (await payer.store.getRoute(collection));
    // A remembered price above this call's cap (a dearer sibling, a price since lowered) is not paid
    // up-front: the server is asked unpaid, and its 402 says the price (refused there if it is too high).
    const memo = remembered && (call.maxAmount === undefined || remembered.requirements.amount <= call.maxAmount) ? remembered : undefined;
    if (memo) {
      const { res, prepared } = await payAndSend(memo.requirements);
      const done = await finish(res, prepared);
      if (done) return done;
      challenge = res;
      const body = await readPaymentRequired(res);
      // The corrective state is the one of this channel's entry (a server may list other networks or
      // assets first). Anything else: the terms changed, so forget the route and take the 402 as it is.
      const mine = body?.error === ErrorCodes.cumulativeAmountMismatch ? parseAccepts(body).find((a) => (a.extra.channelState as { channelId?: string } | undefined)?.channelId?.toLowerCase() === prepared.channelId.toLowerCase()) : undefined;
      if (mine) {
        if (exhausts(guardOf(prepared.channelId), await payer.correct(memo.requirements, mine.extra as Record<string, unknown>))) return challenge;
        corrected = prepared.channelId.toLowerCase();
      } else {
        await payer.store.deleteRoute(memo.key);
      }
    } else {
      challenge = await send();
      if (challenge.status !== 402) return challenge;
    }

    // 2. The 402 exchange (at most two paid attempts: a corrective 402 resynchronises once).
    for (let attempt = 0; attempt < 2; attempt++) {
      const body = await readPaymentRequired(challenge);
      if (!body) return challenge;
      const accepts = parseAccepts(body);
      if (accepts.length === 0) return challenge;
      const requirements = payer.select(accepts);
      const channelId = payer.channelIdFor(requirements).toLowerCase();
      let charged: bigint | undefined;
      if (body.error === ErrorCodes.cumulativeAmountMismatch && requirements.extra.channelState) {
        if (corrected !== channelId) charged = await payer.correct(requirements, requirements.extra as Record<string, unknown>);
      } else if (CHAIN_RESYNC.has(body.error ?? "")) {
        charged = await payer.resyncFromChain(requirements, body.error!); // then the payment below deposits what is missing
      }
      corrected = undefined;
      // The adopted charges are this request's own refused vouchers: recorded, and nothing more is signed.
      if (exhausts(guardOf(channelId), charged)) return challenge;
      const { res, prepared } = await payAndSend(stripCorrective(requirements));
      const done = await finish(res, prepared);
      if (done) return done;
      challenge = res;
    }
    return challenge;
  };
}

/**
 * What one request signed on a channel: the signed ceiling before it, and the highest voucher above it
 * the server answered with a 402. Charges adopted (from a corrective 402 or the chain) above that ceiling
 * and up to that voucher can only be this request's own vouchers: they are recorded (the server holds
 * them), but the request signs nothing more, or a server refusing every attempt (claiming each voucher on
 * chain first, say) would collect a price per attempt.
 */
type Exchange = { ceiling: bigint; highestRefused?: bigint };

/** Adopted charges that exhaust what this request may sign (see Exchange). */
function exhausts(guard: Exchange | undefined, charged: bigint | undefined): boolean {
  if (guard?.highestRefused === undefined || charged === undefined) return false;
  return charged > guard.ceiling && charged <= guard.highestRefused;
}

/**
 * The deadline's signal, also aborted by the caller's. AbortSignal.any where it exists (it keeps the
 * combination alive as long as the request uses it); by hand elsewhere (Firefox < 124, Safari < 17.4), a
 * listener on the caller's signal that lives as long as that signal does.
 */
function combine(deadline: AbortController, caller: AbortSignal | null | undefined): AbortSignal {
  if (!caller) return deadline.signal;
  const any = (AbortSignal as { any?: (signals: AbortSignal[]) => AbortSignal }).any;
  if (any) return any.call(AbortSignal, [caller, deadline.signal]);
  if (caller.aborted) deadline.abort(caller.reason);
  else caller.addEventListener("abort", () => deadline.abort(caller.reason), { once: true });
  return deadline.signal;
}

/** Refusals that say the payer's view of the channel is off: the chain has the answer. */
const CHAIN_RESYNC = new Set<string>([ErrorCodes.cumulativeExceedsBalance, ErrorCodes.channelNotFound, ErrorCodes.cumulativeBelowClaimed]);

/** Requirements without the corrective-only fields, as remembered and echoed in `accepted`. */
function stripCorrective(r: PaymentRequirements): PaymentRequirements {
  const { channelState: _c, voucherState: _v, ...extra } = r.extra as Record<string, unknown>;
  return { ...r, extra: extra as PaymentRequirements["extra"] };
}

export { PolicyError, TollwayError };

/**
 * Cooperative close: asks the payee behind `url` to refund the channel's unclaimed balance (all of it,
 * or `amount`). Returns the refunded amount.
 */
export async function requestRefund(fetchImpl: typeof fetch, payer: Payer, url: string, amount?: bigint, timeoutMs = REFUND_TIMEOUT_MS): Promise<bigint> {
  // Each exchange has a deadline: a payee that never answers does not hang the caller.
  const challenge = await fetchImpl(url, { signal: AbortSignal.timeout(timeoutMs) });
  const body = await readPaymentRequired(challenge);
  if (challenge.status !== 402 || !body) throw new TollwayError(`expected a 402 from ${url}, got ${challenge.status}`);
  const requirements = stripCorrective(payer.select(parseAccepts(body), { forRefund: true }));
  // A corrective 402 (the server charged what this payer has not recorded: a lost answer, a new machine)
  // resynchronises once, as for payments; the refund voucher is then signed at the corrected charges.
  for (let attempt = 0; ; attempt++) {
    const { header, channelId } = await payer.refundHeader(requirements, amount);
    const res = await fetchImpl(url, { headers: { [HEADERS.paymentSignature]: header }, signal: AbortSignal.timeout(timeoutMs) });
    const pr = res.headers.get(HEADERS.paymentResponse);
    if (res.ok && pr) {
      const settled = decodeBase64Json(pr, "PAYMENT-RESPONSE") as SettleResponseBody;
      await payer.refunded(channelId, settled);
      return BigInt(settled.amount ?? "0");
    }
    const refusal = await readPaymentRequired(res);
    const corrective = refusal?.error === ErrorCodes.cumulativeAmountMismatch ? parseAccepts(refusal).find((a) => (a.extra.channelState as { channelId?: string } | undefined)?.channelId?.toLowerCase() === channelId.toLowerCase()) : undefined;
    if (attempt > 0 || !corrective) throw new TollwayError(`refund refused (${res.status}${refusal?.error ? `: ${refusal.error}` : ""})`);
    await payer.correct(requirements, corrective.extra as Record<string, unknown>);
  }
}
