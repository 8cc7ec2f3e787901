/**
 * Operator commands: they talk to a running payee node's admin API (`--node`, bearer `--token`), so they
 * work while the node serves traffic and never contend for its LevelDB. Batch commands show progress
 * (a bar on a terminal, plain lines otherwise), are safe to re-run after an interruption (claims only
 * raise totals; closed channels are skipped) and print the transactions and gas used.
 */
import http from "node:http";
import https from "node:https";
import { ExitCodes, ExitError } from "../errors";
import { formatAmount } from "../../protocol/amounts";

export type OperatorOptions = { node: string; token?: string; json?: boolean; decimals?: number; symbol?: string };

/** How long `tollway status` waits for the node: a health check must not hang on a stuck node. */
const STATUS_TIMEOUT_MS = 30_000;

/**
 * One admin API call. Over node:http(s), not fetch: a claim run waits for its receipts (and confirmations)
 * before the node answers, which can take longer than fetch's 300 s wait for response headers. No time
 * limit unless `timeoutMs` (a report scans the whole ledger before its first byte).
 */
function adminRequest(url: string, token: string, body?: unknown, timeoutMs?: number): Promise<{ status: number; text: string }> {
  const u = new URL(url);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = (u.protocol === "https:" ? https : http).request(
      u,
      {
        method: payload === undefined ? "GET" : "POST",
        headers: { Authorization: `Bearer ${token}`, ...(payload === undefined ? {} : { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) }) },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (timeoutMs !== undefined) req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.end(payload);
  });
}

async function api(o: OperatorOptions, path: string, body?: unknown, timeoutMs?: number): Promise<any> {
  const token = o.token ?? process.env.TOLLWAY_ADMIN_TOKEN;
  if (!token) throw new ExitError(ExitCodes.usage, "no admin token: pass --token or set TOLLWAY_ADMIN_TOKEN");
  let res: { status: number; ok?: boolean; text: string };
  try {
    res = await adminRequest(`${o.node.replace(/\/$/, "")}/admin/api${path}`, token, body, timeoutMs);
  } catch (e) {
    const sent = body !== undefined;
    throw new ExitError(ExitCodes.http, `${sent ? `lost the node at ${o.node} during ${path} (what it did may have gone through: check \`tollway status\`)` : `cannot reach the node at ${o.node}`}: ${(e as Error).message}`);
  }
  res.ok = res.status >= 200 && res.status < 300;
  const json = (() => {
    try {
      return JSON.parse(res.text);
    } catch {
      return {};
    }
  })();
  if (res.status === 401) throw new ExitError(ExitCodes.usage, "the node refused the admin token");
  if (res.status === 403) {
    // A node without adminToken answers 403 to every admin call: the token is not the problem.
    const why = typeof json.error === "string" ? json.error : "forbidden";
    throw new ExitError(ExitCodes.usage, `the node's admin API is not available (403: ${why})`);
  }
  if (!res.ok) throw new ExitError(res.status >= 500 ? ExitCodes.chain : ExitCodes.http, `${path}: ${json.message ?? res.status}`);
  return json;
}

const units = (o: OperatorOptions) => (v: string | bigint) => `${formatAmount(BigInt(v), o.decimals ?? 6)} ${o.symbol ?? "USDC"}`;

function progress(label: string, done: number, total: number, out: NodeJS.WriteStream | NodeJS.WritableStream) {
  const tty = (out as NodeJS.WriteStream).isTTY;
  if (tty) {
    const width = 30;
    const filled = total === 0 ? width : Math.round((done / total) * width);
    out.write(`\r${label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total}${done === total ? "\n" : ""}`);
  } else {
    out.write(`${label}: ${done}/${total}\n`);
  }
}

export async function status(o: OperatorOptions, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const s = await api(o, "/status", undefined, STATUS_TIMEOUT_MS);
  const u = units(o);
  const problems: string[] = [];
  if (s.riskWindowMs !== undefined && s.chainViewAgeMs > s.riskWindowMs) problems.push(`the chain view is older than the risk window (${Math.round(s.riskWindowMs / 1000)} s): new charges are refused`);
  if (s.watcherFailures >= 5) problems.push(`the last ${s.watcherFailures} chain polls failed`);
  if (o.json) out.write(JSON.stringify(s, null, 2) + "\n");
  else
    out.write(
      [
        `node ${o.node}  ${s.network}  recovery ${s.recovery}`,
        `chain head ${s.chainHead}, mirror checkpoint ${s.checkpoint ?? "-"}, chain view ${Math.round(s.chainViewAgeMs / 1000)} s old, watcher failures ${s.watcherFailures}`,
        `signer ${s.signer.address}: ${formatAmount(BigInt(s.signer.eth), 18)} ETH`,
        `receiver ${s.receiver.address}: claimed ${u(s.receiver.claimed)}, settled ${u(s.receiver.settled)}, unsettled ${u(s.receiver.unsettled)}`,
        `${s.channels} channels, pending claims ${u(s.pendingClaims)}${BigInt(s.lostToWithdrawals ?? 0) > 0n ? `, lost to withdrawals ${u(s.lostToWithdrawals)}` : ""}${s.refundsPending ? `, ${s.refundsPending} refunds not confirmed` : ""}`,
        ...problems.map((p) => `NOT HEALTHY: ${p}`),
      ].join("\n") + "\n",
    );
  // Scripts can use it as a check: a node refusing charges exits non-zero.
  return problems.length > 0 ? ExitCodes.chain : 0;
}

export async function receiverChannels(o: OperatorOptions, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const rows = await api(o, "/channels");
  const u = units(o);
  if (o.json) out.write(JSON.stringify(rows, null, 2) + "\n");
  else if (rows.length === 0) out.write("no channels\n");
  else
    for (const r of rows)
      out.write(
        `${r.channelId.slice(0, 12)}…  payer ${r.payer}  balance ${u(r.balance)}  charged ${u(r.charged)}  claimed ${u(r.claimed)}  exposure ${u(r.exposure)}${r.secondsToFinalize === null ? "" : `  WITHDRAWAL finalizes in ${r.secondsToFinalize} s`}\n`,
      );
  return 0;
}

export async function claim(o: OperatorOptions & { all?: boolean; channel?: string[]; batch?: number }, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  if (!o.all && !o.channel?.length) throw new ExitError(ExitCodes.usage, "say which channels: --all or --channel <id> (repeatable)");
  const size = o.batch ?? 100;
  // 0, a negative or a fractional size would never finish the loop below; NaN would claim nothing.
  if (!Number.isSafeInteger(size) || size < 1) throw new ExitError(ExitCodes.usage, `the batch size must be a positive whole number, not ${size}`);
  const ids: string[] = o.channel?.length
    ? o.channel
    : (await api(o, "/channels")).filter((c: any) => BigInt(c.exposure) > 0n).map((c: any) => c.channelId);
  const txs: any[] = [];
  const failed: any[] = [];
  const notHeld: string[] = [];
  let claimed = 0;
  let stoppedBy: string | undefined;
  progress("claiming", 0, ids.length, err);
  for (let i = 0; i < ids.length; i += size) {
    let r;
    try {
      r = await api(o, "/claim", { channels: ids.slice(i, i + size) });
    } catch (e) {
      // What landed before this batch is printed, not lost with it.
      if (txs.length > 0 || failed.length > 0) report(o, out, { claimedChannels: claimed, transactions: txs, failed });
      throw e;
    }
    txs.push(...r.transactions);
    failed.push(...r.failed);
    notHeld.push(...(r.notHeld ?? []));
    claimed += r.claimedChannels;
    progress("claiming", Math.min(i + size, ids.length), ids.length, err);
    if (r.error) {
      // The node's run stopped part-way (the RPC): what landed is printed, the rest is reported failed.
      const rest = ids.slice(i + size).map((channelId) => ({ channelId, reason: r.error }));
      failed.push(...rest);
      stoppedBy = String(r.error);
      err.write(`tollway: the claim run stopped: ${r.error}\n`);
      break;
    }
  }
  report(o, out, { claimedChannels: claimed, transactions: txs, failed, ...(notHeld.length ? { notHeld } : {}), ...(stoppedBy ? { error: stoppedBy } : {}) });
  sayNotHeld(notHeld, err);
  return failed.length || stoppedBy ? ExitCodes.chain : 0;
}

export async function settle(o: OperatorOptions, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const r = await api(o, "/settle", {});
  if (o.json) out.write(JSON.stringify(r) + "\n");
  else out.write(r.hash ? `settled ${units(o)(r.amount)} in ${r.hash} (gas ${r.gasUsed})\n` : "nothing to settle\n");
  return 0;
}

export async function operatorRefund(o: OperatorOptions & { all?: boolean; channel?: string[] }, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  if (!o.all && !o.channel?.length) throw new ExitError(ExitCodes.usage, "say which channels: --all or --channel <id>");
  const ids: string[] = o.channel?.length ? o.channel : (await api(o, "/channels")).map((c: any) => c.channelId);
  const done: any[] = [];
  const failed: any[] = [];
  const notHeld: string[] = [];
  progress("refunding", 0, ids.length, err);
  const print = () => {
    if (o.json) out.write(JSON.stringify({ refunded: done, failed, ...(notHeld.length ? { notHeld } : {}) }) + "\n");
    else {
      for (const d of done) out.write(`${d.channelId.slice(0, 12)}…  refunded ${units(o)(d.refunded)}  claimed ${units(o)(d.claimed)}  tx ${d.hash}\n`);
      for (const f of failed) out.write(`NOT REFUNDED ${f.channelId}: ${f.reason}\n`);
    }
  };
  for (let i = 0; i < ids.length; i++) {
    let r;
    try {
      r = await api(o, "/refund", { channels: [ids[i]] });
    } catch (e) {
      if (done.length > 0 || failed.length > 0) print(); // what landed before is not lost with the error
      throw e;
    }
    done.push(...r.refunded);
    failed.push(...(r.failed ?? []));
    notHeld.push(...(r.notHeld ?? []));
    progress("refunding", i + 1, ids.length, err);
  }
  print();
  sayNotHeld(notHeld, err);
  return failed.length > 0 ? ExitCodes.chain : 0;
}

export async function closeAll(o: OperatorOptions & { batch?: number }, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const c = await claim({ ...o, all: true, json: o.json }, out, err);
  // Settled last, also when the refunds failed: a refund claims what the batch claim missed (charges made
  // meanwhile, rows that failed) first, and what was claimed is paid out.
  let r: number;
  try {
    r = await operatorRefund({ ...o, all: true }, out, err);
  } catch (e) {
    await settle(o, out).catch(() => undefined); // the refund's failure is the one to report
    throw e;
  }
  await settle(o, out);
  return c !== 0 ? c : r;
}

/**
 * `refund --all` and `close-all` without --yes: prints what they would do (channel count, deposits,
 * charges and what would go back to payers) and returns the usage exit code without touching a channel.
 */
export async function confirmationNeeded(o: OperatorOptions, command: "refund --all" | "close-all", action: "refund" | "close", err: NodeJS.WritableStream = process.stderr): Promise<number> {
  let plan: string;
  try {
    const rows: any[] = await api(o, "/channels");
    const u = units(o);
    const unclaimed = rows.reduce((s: bigint, r: any) => s + BigInt(r.exposure), 0n);
    // What closeChannel gives back: the balance beyond what was charged (charges are claimed first).
    const back = rows.reduce((s: bigint, r: any) => s + (BigInt(r.balance) > BigInt(r.charged) ? BigInt(r.balance) - BigInt(r.charged) : 0n), 0n);
    plan =
      action === "close"
        ? `would claim ${u(unclaimed)} of unclaimed charges, refund ${rows.length} channels of ${o.node} (${u(back)} back to payers), and settle`
        : `would claim ${u(unclaimed)} of unclaimed charges and refund ${rows.length} channels of ${o.node} (${u(back)} back to payers)`;
  } catch (e) {
    plan = `would ${action} every channel of ${o.node} (could not list them: ${(e as Error).message})`;
  }
  err.write(`tollway: ${plan}\n`);
  err.write(`tollway: nothing done; run \`tollway ${command} --yes\` to do it\n`);
  return ExitCodes.usage;
}

/** Channels named by id that the node does not hold: a mistyped id, or one closed already (said; a re-run stays safe: exit 0). */
function sayNotHeld(ids: string[], err: NodeJS.WritableStream) {
  for (const id of ids) err.write(`tollway: ${id} is not a channel of this node (unknown, or closed already)\n`);
}

function report(o: OperatorOptions, out: NodeJS.WritableStream, r: { claimedChannels: number; transactions: any[]; failed: any[]; notHeld?: string[]; error?: string }) {
  if (o.json) {
    out.write(JSON.stringify(r) + "\n");
    return;
  }
  for (const t of r.transactions) out.write(`claim tx ${t.hash}: ${t.channels.length} channels, ${units(o)(t.amount)}, gas ${t.gasUsed}\n`);
  for (const f of r.failed) out.write(`NOT CLAIMED ${f.channelId}: ${f.reason}\n`);
  out.write(`claimed ${r.claimedChannels} channels in ${r.transactions.length} transactions\n`);
}

export async function revenueReport(o: OperatorOptions & { by?: string; csv?: boolean }, out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const rows = await api(o, `/report?by=${encodeURIComponent(o.by ?? "resource")}`);
  const u = units(o);
  if (o.json) out.write(JSON.stringify(rows, null, 2) + "\n");
  else if (o.csv) {
    const { toCsv } = await import("../../payee/report");
    // Atomic units (the token's smallest), as the column says: exact, for spreadsheets and scripts.
    out.write(toCsv(rows.map((r: any) => ({ [o.by ?? "resource"]: r.key, revenue_atomic: r.revenue, requests: r.requests, payers: r.payers }))));
  } else {
    const total = rows.reduce((s: bigint, r: any) => s + BigInt(r.revenue), 0n);
    for (const r of rows) out.write(`${u(r.revenue).padStart(14)}  ${String(r.requests).padStart(6)} req  ${String(r.payers).padStart(4)} payers  ${r.key}\n`);
    out.write(`${u(total).padStart(14)}  total\n`);
  }
  return 0;
}
