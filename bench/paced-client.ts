/**
 * The open-loop load generator of bench/payments.ts figure 2, in a process of its own that holds only
 * the pre-signed vouchers (see pacedLoadIsolated in lib.ts), warmed up by 1 s of the same load before
 * the measured run. Job in TOLLWAY_PACED_JOB (JSON); prints
 * {"result": PacedResult, "next": [each channel's next voucher]}.
 */
import type { Hex } from "viem";
import { PackedHeaders, pacedLoad, type Channel } from "./lib";

async function main() {
  const job = JSON.parse(process.env.TOLLWAY_PACED_JOB ?? "{}") as {
    url: string; rate: number; seconds: number; connections: number; price: string;
    channels: Array<{ id: Hex; file: string; next: number }>;
  };
  const channels: Channel[] = job.channels.map((c) => ({ id: c.id, headers: PackedHeaders.fromFile(c.file), next: c.next, busy: false }));
  const opts = { rate: job.rate, connections: job.connections, price: BigInt(job.price), ...(channels.length > 0 ? { channels } : {}) };
  // A fresh process compiles its HTTP client on the first requests: 1 s of the same load first, not measured.
  await pacedLoad(job.url, { ...opts, seconds: 1 });
  const result = await pacedLoad(job.url, { ...opts, seconds: job.seconds });
  process.stdout.write(`${JSON.stringify({ result, next: channels.map((c) => c.next) })}\n`);
  process.exit(0);
}

void main();
