/** `tollway channels`: the payer's own channels with balance, charged, claimed and withdrawal state. */
import { batchSettlementAbi } from "../../chain/abi";
import { CANONICAL_ADDRESSES } from "../../protocol/typedData";
import { openPayerContext, type PayerCliOptions } from "../payerContext";

export async function channels(o: PayerCliOptions & { escrow?: string }, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const ctx = await openPayerContext(o);
  try {
    const escrow = (o.escrow ?? CANONICAL_ADDRESSES.batchSettlement) as `0x${string}`;
    const rows = [];
    for (const c of await ctx.store.channels()) {
      const [[balance, totalClaimed], [withdrawAmount, initiatedAt]] = await Promise.all([
        ctx.publicClient.readContract({ address: escrow, abi: batchSettlementAbi, functionName: "channels", args: [c.channelId] }),
        ctx.publicClient.readContract({ address: escrow, abi: batchSettlementAbi, functionName: "pendingWithdrawals", args: [c.channelId] }),
      ]);
      rows.push({
        channelId: c.channelId,
        payee: c.config.receiver,
        balance,
        charged: c.charged,
        claimed: totalClaimed,
        withdrawal: initiatedAt === 0 ? null : { amount: withdrawAmount, finalizeAfter: initiatedAt + c.config.withdrawDelay },
        halted: c.halted ?? null,
      });
    }
    if (o.json) {
      out.write(JSON.stringify(rows, (_k, v) => (typeof v === "bigint" ? v.toString() : v), 2) + "\n");
    } else if (rows.length === 0) {
      out.write("no channels\n");
    } else {
      for (const r of rows) {
        const w = r.withdrawal ? `withdrawing ${ctx.fmt(r.withdrawal.amount)} after ${new Date(r.withdrawal.finalizeAfter * 1000).toISOString()}` : "open";
        out.write(`${r.channelId.slice(0, 10)}…  payee ${r.payee}  balance ${ctx.fmt(r.balance)}  charged ${ctx.fmt(r.charged)}  claimed ${ctx.fmt(r.claimed)}  ${w}${r.halted ? `  HALTED: ${r.halted}` : ""}\n`);
      }
    }
    return 0;
  } finally {
    await ctx.close();
  }
}
