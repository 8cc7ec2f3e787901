/** `tollway pay <url>`: curl-like, pays batch-settlement 402s; body on stdout, charge on stderr. */
import { wrapFetch } from "../../payer/fetch";
import { ExitCodes, ExitError } from "../errors";
import { openPayerContext, type PayerCliOptions } from "../payerContext";

export type PayOptions = PayerCliOptions & { request?: string; header?: string[]; data?: string; deposit?: string };

export async function pay(url: string, o: PayOptions, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const ctx = await openPayerContext(o);
  try {
    const headers = new Headers();
    for (const h of o.header ?? []) {
      const i = h.indexOf(":");
      if (i <= 0) throw new ExitError(ExitCodes.usage, `bad header "${h}" (use "Name: value")`);
      headers.append(h.slice(0, i).trim(), h.slice(i + 1).trim());
    }
    let payment: { charged: bigint; balance: bigint; channelId: string; kind: string } | undefined;
    const f = wrapFetch(fetch, ctx.payer, {
      deposit: o.deposit ? ctx.parse(o.deposit) : undefined,
      onPayment: (info) => (payment = info),
    });
    const method = o.request ?? (o.data !== undefined ? "POST" : "GET");
    const res = await f(url, { method, headers, body: o.data });
    const body = Buffer.from(await res.arrayBuffer());
    if (o.json) {
      out.write(
        JSON.stringify({
          status: res.status,
          body: body.toString("utf8"),
          payment: payment && { ...payment, charged: payment.charged.toString(), balance: payment.balance.toString() },
        }) + "\n",
      );
    } else {
      out.write(body);
      if (payment) {
        const ch = await ctx.store.getChannel(payment.channelId as `0x${string}`);
        const remaining = ch ? ch.balance - ch.charged : 0n;
        err.write(`tollway: paid ${ctx.fmt(payment.charged)}${payment.kind === "deposit" ? " (with a deposit)" : ""}; channel balance ${ctx.fmt(remaining)} left of ${ctx.fmt(payment.balance)}\n`);
      } else if (res.status === 402) {
        err.write("tollway: payment required and not paid\n");
      }
    }
    return res.ok ? ExitCodes.ok : ExitCodes.http;
  } finally {
    await ctx.close();
  }
}
