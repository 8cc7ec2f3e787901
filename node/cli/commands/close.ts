/** `tollway refund <url>` (cooperative) and `tollway withdraw <url> [--finalize]` (timed, on chain). */
import { batchSettlementAbi } from "../../chain/abi";
import { requestRefund } from "../../payer/fetch";
import { CANONICAL_ADDRESSES } from "../../protocol/typedData";
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

export async function withdraw(url: string, o: PayerCliOptions & { finalize?: boolean; escrow?: string }, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const ctx = await openPayerContext(o);
  try {
    const res = await fetch(url);
    const header = res.headers.get(HEADERS.paymentRequired);
    if (res.status !== 402 || !header) throw new ExitError(ExitCodes.http, `expected a 402 with payment requirements from ${url}, got ${res.status}`);
    const body = decodeBase64Json(header, "PAYMENT-REQUIRED") as { accepts?: unknown[] };
    const accepts = (body.accepts ?? []).map((a) => paymentRequirementsSchema.safeParse(a)).filter((r) => r.success).map((r) => r.data!);
    const r = ctx.payer.select(accepts);
    const config = ctx.payer.configFor(r);
    const id = ctx.payer.channelIdFor(r);
    const escrow = (o.escrow ?? CANONICAL_ADDRESSES.batchSettlement) as `0x${string}`;
    if (o.finalize) {
      const hash = await ctx.payer.finalizeWithdraw(config);
      out.write(o.json ? JSON.stringify({ finalized: hash }) + "\n" : `withdrawal finalized: ${hash}\n`);
    } else {
      const [balance, claimed] = await ctx.publicClient.readContract({ address: escrow, abi: batchSettlementAbi, functionName: "channels", args: [id] });
      const amount = balance - claimed;
      if (amount === 0n) throw new ExitError(ExitCodes.usage, "nothing to withdraw: the channel has no unclaimed balance");
      const hash = await ctx.payer.initiateWithdraw(config, amount);
      out.write(o.json ? JSON.stringify({ initiated: hash, amount: amount.toString(), delaySeconds: config.withdrawDelay }) + "\n" : `withdrawal of ${ctx.fmt(amount)} initiated (${hash}); finalize after ${config.withdrawDelay} s with --finalize\n`);
    }
    return 0;
  } finally {
    await ctx.close();
  }
}
