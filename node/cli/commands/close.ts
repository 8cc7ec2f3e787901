/** `tollway refund <url>` (cooperative) and `tollway withdraw <url> [--finalize]` (timed, on chain). */
import { requestRefund } from "../../payer/fetch";
import { HEADERS, decodeBase64Json, paymentRequirementsSchema } from "../../protocol/wire";
import { ExitCodes, ExitError } from "../errors";
import { openPayerContext, type PayerCliOptions } from "../payerContext";

export async function refund(url: string, o: PayerCliOptions & { amount?: string }, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const ctx = await openPayerContext(o);
  try {
    const refunded = await requestRefund(fetch, ctx.payer, url, o.amount ? ctx.parse(o.amount) : undefined);
    out.write(o.json ? JSON.stringify({ refunded: refunded.toString() }) + "\n" : `refunded ${ctx.fmt(refunded)}\n`);
    return 0;
  } finally {
    await ctx.close();
  }
}

/**
 * `target` is a channel id from `tollway channels` (its config comes from the local store: the escape
 * hatch must not depend on the payee it escapes), or a URL of the payee (its live 402 names the channel).
 */
export async function withdraw(target: string, o: PayerCliOptions & { finalize?: boolean; escrow?: string }, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const ctx = await openPayerContext(o);
  try {
    let config;
    let id: `0x${string}`;
    if (/^0x[0-9a-fA-F]{64}$/.test(target)) {
      const stored = await ctx.store.getChannel(target.toLowerCase() as `0x${string}`);
      if (!stored) throw new ExitError(ExitCodes.usage, `no channel ${target} in this payer's store (see tollway channels)`);
      if (stored.network !== `eip155:${o.chainId}`) throw new ExitError(ExitCodes.usage, `channel ${target} is on ${stored.network}, not eip155:${o.chainId} (--chain-id, --rpc)`);
      config = stored.config;
      id = stored.channelId;
    } else {
      const res = await fetch(target);
      const header = res.headers.get(HEADERS.paymentRequired);
      if (res.status !== 402 || !header) {
        throw new ExitError(ExitCodes.http, `expected a 402 with payment requirements from ${target}, got ${res.status}; give the channel id instead (tollway channels)`);
      }
      const body = decodeBase64Json(header, "PAYMENT-REQUIRED") as { accepts?: unknown[] };
      const accepts = (body.accepts ?? []).map((a) => paymentRequirementsSchema.safeParse(a)).filter((r) => r.success).map((r) => r.data!);
      // The escape hatch is not a payment: a payee's price above --max must not block it.
      const r = ctx.payer.select(accepts, { forRefund: true });
      config = ctx.payer.configFor(r);
      id = ctx.payer.channelIdFor(r);
    }
    if (o.finalize) {
      const hash = await ctx.payer.finalizeWithdraw(config);
      out.write(o.json ? JSON.stringify({ finalized: hash }) + "\n" : `withdrawal finalized: ${hash}\n`);
    } else {
      const amount = await ctx.payer.withdrawable(id);
      if (amount === 0n) throw new ExitError(ExitCodes.usage, "nothing to withdraw: the channel has no unclaimed balance");
      const hash = await ctx.payer.initiateWithdraw(config, amount);
      out.write(o.json ? JSON.stringify({ initiated: hash, amount: amount.toString(), delaySeconds: config.withdrawDelay }) + "\n" : `withdrawal of ${ctx.fmt(amount)} initiated (${hash}); finalize after ${config.withdrawDelay} s with --finalize\n`);
    }
    return 0;
  } finally {
    await ctx.close();
  }
}
