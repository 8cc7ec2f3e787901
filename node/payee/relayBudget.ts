/**
 * Limits on the transactions payers can make the node pay gas for: the deposits it relays and the
 * cooperative refunds it sends. Neither is charged to the payer, so without a limit a payer could loop
 * (deposit, an uncharged 4xx, refund, again) and spend the node key's ETH, which the node needs to claim.
 *
 * Sliding one-hour windows: at most `perPayerPerHour` for one payer address, and `perHour` for all payers
 * together, so `perHour` bounds what the key spends on them in an hour. Every relayed transaction counts,
 * charged or not (a request's charge can be far below a deposit's gas: a 1-unit top-up then one $0.001
 * request), but only once its simulation passed, just before it is sent (a deposit whose authorization the
 * token refuses costs nothing and takes nothing). Beyond a limit the request is refused (429,
 * `relay_rate_limited`, with the seconds until a slot frees) and nothing is sent; the payer can always
 * withdraw on chain on its own (initiateWithdraw, then finalizeWithdraw after the delay).
 */
import type { Address } from "viem";
import { ErrorCodes, PaymentError } from "../protocol/errors";

export type RelayLimits = {
  /** Relayed transactions per payer address per hour (undefined: no limit). */
  perPayerPerHour?: number;
  /** Relayed transactions per hour, all payers (undefined: no limit). */
  perHour?: number;
};

/** The limits a node has unless configured otherwise (config `relay`, PayeeOptions.relay). */
export const DEFAULT_RELAY_LIMITS = { perPayerPerHour: 10, perHour: 1_000 } as const;

const HOUR_MS = 3_600_000;
/** Payers tracked at most: past it, payers with nothing in the window are forgotten first. */
const MAX_PAYERS = 100_000;

export class RelayBudget {
  /** Times (ms) of each payer's relayed transactions in the window, oldest first. */
  private readonly byPayer = new Map<string, number[]>();
  private all: number[] = [];

  constructor(
    private readonly limits: RelayLimits,
    private readonly now: () => number,
  ) {}

  /**
   * Counts one relayed `kind` for `payer` (call it once the simulation passed), or throws a 429
   * PaymentError (with `retryAfterS`) when a limit is reached; a refused request counts for nothing.
   */
  take(payer: Address, kind: "deposit" | "refund"): void {
    const { perPayerPerHour, perHour } = this.limits;
    if (perPayerPerHour === undefined && perHour === undefined) return;
    const now = this.now();
    const since = now - HOUR_MS;
    const key = payer.toLowerCase();
    const mine = prune(this.byPayer.get(key) ?? [], since);
    this.all = prune(this.all, since);
    const full = (times: number[], limit: number, whose: string) => {
      const retryAfterS = Math.max(1, Math.ceil((times[times.length - limit]! + HOUR_MS - now) / 1000));
      return new PaymentError(ErrorCodes.relayRateLimited, `this node sends at most ${limit} deposits and refunds per hour ${whose}: retry in ${retryAfterS} s${kind === "refund" ? ", or withdraw on chain (initiateWithdraw, then finalizeWithdraw after the delay)" : ""}`, {
        status: 429,
        retryAfterS,
      });
    };
    if (perPayerPerHour !== undefined && mine.length >= perPayerPerHour) throw full(mine, perPayerPerHour, "for one payer");
    if (perHour !== undefined && this.all.length >= perHour) throw full(this.all, perHour, "for all payers");
    mine.push(now);
    this.all.push(now);
    this.byPayer.delete(key); // re-inserted last: the map stays ordered by last use
    this.byPayer.set(key, mine);
    if (this.byPayer.size > MAX_PAYERS) this.forget(since);
  }

  /** Drops payers with nothing in the window; if none, the least recently seen. */
  private forget(since: number) {
    for (const [k, times] of this.byPayer) if (times[times.length - 1]! <= since) this.byPayer.delete(k);
    if (this.byPayer.size > MAX_PAYERS) this.byPayer.delete(this.byPayer.keys().next().value!);
  }
}

/** The times after `since` (the array is sorted). */
function prune(times: number[], since: number): number[] {
  let i = 0;
  while (i < times.length && times[i]! <= since) i++;
  return i === 0 ? times : times.slice(i);
}
