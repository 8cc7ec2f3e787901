/**
 * Shared load-generation pieces of the benchmarks: a server process started by script, pre-signed
 * voucher streams per channel (signed with native libsecp256k1 before the timed part), and an
 * autocannon run in which every connection takes a free channel for each request, so each channel sees
 * one sequential stream.
 */
import autocannon from "autocannon";
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { hexToBytes, keccak256, toHex, type Address, type Hex } from "viem";
import { privateKeyToAccount, type PrivateKeyAccount } from "viem/accounts";
import { batchSettlementAbi } from "../node/chain/abi";
import { encodeErc3009CollectorData, erc3009DepositNonce } from "../node/protocol/collectorData";
import type { Digester } from "../node/protocol/fastDigest";
import { CANONICAL_ADDRESSES, type ChannelConfig, receiveWithAuthorizationTypes } from "../node/protocol/typedData";
import { HEADERS, encodeBase64Json } from "../node/protocol/wire";

const secp = require("secp256k1/bindings") as { ecdsaSign(msg: Uint8Array, key: Uint8Array): { signature: Uint8Array; recid: number } };

export type Channel = { id: Hex; headers: PackedHeaders; next: number; busy: boolean };

/**
 * A channel's pre-signed voucher headers, packed into one off-heap buffer: 16 channels x 30,000
 * headers as JS strings would put ~340 MB in the load generator's old generation, and the major GCs
 * that marks would show up as stalls of the load generator (measured as latency) and as its CPU.
 * A header becomes a string only when it is sent.
 */
export class PackedHeaders {
  readonly length: number;
  private readonly buf: Buffer;
  private readonly ends: Uint32Array;

  constructor(items: readonly string[]) {
    this.length = items.length;
    this.ends = new Uint32Array(items.length);
    let total = 0;
    items.forEach((h, i) => (this.ends[i] = total += h.length));
    this.buf = Buffer.allocUnsafeSlow(total);
    items.forEach((h, i) => this.buf.write(h, i === 0 ? 0 : this.ends[i - 1]!, "latin1"));
  }

  get(i: number): string {
    return this.buf.toString("latin1", i === 0 ? 0 : this.ends[i - 1]!, this.ends[i]!);
  }

  /** The header for voucher i, or the last one once the channel is exhausted. */
  at(i: number): string {
    return this.get(Math.min(i, this.length - 1));
  }

  /** Writes the packed headers to `file` (count, end offsets, bytes). */
  toFile(file: string): void {
    const head = Buffer.alloc(4 + 4 * this.length);
    head.writeUInt32LE(this.length, 0);
    Buffer.from(this.ends.buffer, this.ends.byteOffset, this.ends.byteLength).copy(head, 4);
    fs.writeFileSync(file, Buffer.concat([head, this.buf]));
  }

  static fromFile(file: string): PackedHeaders {
    const all = fs.readFileSync(file);
    const n = all.readUInt32LE(0);
    const p = Object.create(PackedHeaders.prototype) as PackedHeaders;
    const ends = new Uint32Array(n);
    for (let i = 0; i < n; i++) ends[i] = all.readUInt32LE(4 + 4 * i);
    Object.assign(p, { length: n, ends, buf: all.subarray(4 + 4 * n) });
    return p;
  }

  slice(from: number, to: number): string[] {
    const out: string[] = [];
    for (let i = from; i < Math.min(to, this.length); i++) out.push(this.get(i));
    return out;
  }
}

/**
 * The PaymentRequirements a bench server on the local chain (eip155:31337, the test token as "USDC"
 * version 2, withdrawDelay 900 s) publishes for `price` to `payee`, who is also its receiverAuthorizer.
 */
export function localAccept(token: Address, payee: Address, price: bigint) {
  return {
    scheme: "batch-settlement",
    network: "eip155:31337",
    amount: price.toString(),
    asset: token,
    payTo: payee,
    maxTimeoutSeconds: 3600,
    extra: { receiverAuthorizer: payee, withdrawDelay: 900, name: "USDC", version: "2" },
  };
}

export const children: ChildProcess[] = [];
process.on("exit", () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

/** CPU time (ms) a process has used so far: its main thread, and all its other threads together (Linux /proc). */
export function processCpuMs(pid: number): { main: number; others: number } {
  const tick = 10; // USER_HZ = 100
  let main = 0;
  let others = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const ms = (Number(f[11]) + Number(f[12])) * tick;
      if (tid === String(pid)) main += ms;
      else others += ms;
    } catch {
      // a thread that ended between the listing and the read
    }
  }
  return { main, others };
}

/** Where one run's CPU went, in microseconds per request: the server's main thread, its other threads, the load generator. */
export type CpuPerRequest = { main: number; others: number; loadgen: number };

/** Runs `fn` and accounts the server's (`pid`) and this process's CPU to the requests it made. */
export async function withCpu(pid: number, fn: () => Promise<RunResult>): Promise<RunResult & { cpu: CpuPerRequest }> {
  const a = processCpuMs(pid);
  const c = process.cpuUsage();
  const r = await fn();
  const b = processCpuMs(pid);
  const used = process.cpuUsage(c);
  const n = Math.max(1, r.total);
  return {
    ...r,
    cpu: { main: ((b.main - a.main) * 1000) / n, others: ((b.others - a.others) * 1000) / n, loadgen: (used.user + used.system) / n },
  };
}

/**
 * Runs a benchmark's `main`: exit 1 on an error, and exit 2 if it is still running after `minutes`
 * (a benchmark must stop by itself).
 */
export function runBench(name: string, minutes: number, main: () => Promise<void>): void {
  setTimeout(() => {
    console.error(`${name} exceeded ${minutes} minutes; aborting`);
    process.exit(2);
  }, minutes * 60_000).unref();
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Starts `node -r ts-node/register/transpile-only <script>` with TOLLWAY_BENCH=<env>; waits for "READY <port>". */
export async function startBenchServer(script: string, env: Record<string, unknown>): Promise<{ proc: ChildProcess; port: number; stop(): Promise<string> }> {
  const prof = process.env.TOLLWAY_BENCH_PROF ? ["--cpu-prof", "--cpu-prof-dir", process.env.TOLLWAY_BENCH_PROF] : [];
  if (process.env.TOLLWAY_BENCH_TRACE_GC) prof.push(process.env.TOLLWAY_BENCH_TRACE_GC === "nvp" ? "--trace-gc-nvp" : "--trace-gc");
  if (process.env.TOLLWAY_BENCH_NODE_FLAGS) prof.push(...process.env.TOLLWAY_BENCH_NODE_FLAGS.split(" "));
  const loader = script.endsWith(".js") ? [] : ["-r", "ts-node/register/transpile-only"];
  const proc = spawn(process.execPath, [...prof, ...loader, script], {
    env: { ...process.env, TOLLWAY_BENCH: JSON.stringify(env) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(proc);
  let out = "";
  const port = await new Promise<number>((resolve, reject) => {
    proc.stdout!.on("data", (d) => {
      out += String(d);
      const m = /READY (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.once("exit", (code) => reject(new Error(`bench server ${script} exited (${code})`)));
  });
  return {
    proc,
    port,
    stop: () =>
      new Promise((resolve) => {
        proc.once("exit", () => resolve(out));
        proc.kill("SIGTERM");
      }),
  };
}

export type ChannelSetup = {
  relayer: { writeContract: (a: any) => Promise<Hex>; };
  waitForReceipt: (hash: Hex) => Promise<unknown>;
  digester: Digester;
  token: Address;
  receiver: Address;
  receiverAuthorizer: Address;
  accept: Record<string, unknown>;
  price: bigint;
  count: number;
  vouchers: number;
  label: string;
  /** Payers (funded with the token beforehand). */
  payers: PrivateKeyAccount[];
};

/** Gasless deposits (relayed) and pre-signed voucher headers for `count` channels. */
export async function setupChannels(o: ChannelSetup): Promise<Channel[]> {
  const channels: Channel[] = [];
  const deposit = o.price * BigInt(o.vouchers + 10);
  for (let i = 0; i < o.count; i++) {
    const payer = o.payers[i]!;
    const sessionKey = keccak256(toHex(`${o.label}-session-${i}`));
    const session = privateKeyToAccount(sessionKey);
    const config: ChannelConfig = { payer: payer.address, payerAuthorizer: session.address, receiver: o.receiver, receiverAuthorizer: o.receiverAuthorizer, token: o.token, withdrawDelay: 900, salt: keccak256(toHex(`${o.label}-salt-${i}`)) };
    const id = o.digester.channelId(config);
    const salt = BigInt(keccak256(toHex(`${o.label}-deposit-${i}`)));
    const signature = await payer.signTypedData({
      domain: { name: "USDC", version: "2", chainId: 31337, verifyingContract: o.token },
      types: receiveWithAuthorizationTypes,
      primaryType: "ReceiveWithAuthorization",
      message: { from: payer.address, to: CANONICAL_ADDRESSES.erc3009DepositCollector, value: deposit, validAfter: 0n, validBefore: 2n ** 40n, nonce: erc3009DepositNonce(id, salt) },
    });
    const hash = await o.relayer.writeContract({
      address: CANONICAL_ADDRESSES.batchSettlement,
      abi: batchSettlementAbi,
      functionName: "deposit",
      args: [config, deposit, CANONICAL_ADDRESSES.erc3009DepositCollector, encodeErc3009CollectorData({ validAfter: 0n, validBefore: 2n ** 40n, salt: toHex(salt, { size: 32 }), signature })],
    });
    await o.waitForReceipt(hash);
    const key = hexToBytes(sessionKey);
    const headers: string[] = [];
    for (let k = 1; k <= o.vouchers; k++) {
      const max = o.price * BigInt(k);
      const { signature: sig, recid } = secp.ecdsaSign(o.digester.voucherDigest(id, max), key);
      const sigHex = `0x${Buffer.from(sig).toString("hex")}${(recid + 27).toString(16)}`;
      headers.push(encodeBase64Json({ x402Version: 2, accepted: o.accept, payload: { type: "voucher", channelConfig: config, voucher: { channelId: id, maxClaimableAmount: max.toString(), signature: sigHex } } }));
    }
    channels.push({ id, headers: new PackedHeaders(headers), next: 0, busy: false });
  }
  return channels;
}

/** The free channel with the most vouchers left, so every channel's stream lasts the whole run. */
function takeChannel(channels: Channel[]): Channel {
  let best: Channel | undefined;
  for (const c of channels) if (!c.busy && (best === undefined || c.next < best.next)) best = c;
  return best ?? channels[0]!;
}

/** Resynchronises a channel's next voucher from a corrective 402 (header, or body when absent). */
function resync(ch: Channel, header: string | undefined, body: string, price: bigint) {
  try {
    const pr = header ? JSON.parse(Buffer.from(header, "base64").toString("utf8")) : JSON.parse(body);
    const c = BigInt(pr.accepts[0].extra.channelState.chargedCumulativeAmount);
    ch.next = Number(c / price);
  } catch {
    /* keep */
  }
}

/** rps counts 2xx answers only; `sample` is the first non-2xx body seen (for diagnosis). */
export type RunResult = { rps: number; p50: number; p99: number; non2xx: number; errors: number; total: number; sample?: string };

/** One autocannon run; with `channels`, every request carries the next voucher of a free channel. */
export async function runLoad(url: string, o: { channels?: Channel[]; price?: bigint; connections: number; seconds: number; rate?: number }): Promise<RunResult> {
  const channels = o.channels;
  let sample: string | undefined;
  for (const c of channels ?? []) c.busy = false;
  const take = () => {
    const ch = takeChannel(channels!);
    ch.busy = true;
    return ch;
  };
  const result = await autocannon({
    url,
    connections: o.connections,
    duration: o.seconds,
    pipelining: 1,
    ...(o.rate ? { overallRate: o.rate } : {}),
    requests: [
      channels
        ? {
            method: "GET",
            setupRequest: (req: any, context: any) => {
              // Never throw inside autocannon: an exhausted channel repeats its last voucher and the
              // resulting 402s show up in non-2xx.
              const ch = take();
              context.ch = ch;
              req.headers = { [HEADERS.paymentSignature]: ch.headers.at(ch.next) };
              return req;
            },
            onResponse: (status: number, body: string, context: any, headers?: Record<string, string>) => {
              const ch = context.ch as Channel;
              if (status !== 200 && sample === undefined) sample = `${status} ${body.slice(0, 300)}`;
              if (status === 200) ch.next++;
              else if (status === 402) resync(ch, headers?.["payment-required"] ?? headers?.["PAYMENT-REQUIRED"], body, o.price ?? 1n);
              ch.busy = false;
            },
          }
        : { method: "GET" },
    ],
  } as autocannon.Options);
  const ok = result.requests.total - result.non2xx - result.errors;
  return { rps: ok / o.seconds, p50: result.latency.p50, p99: result.latency.p99, non2xx: result.non2xx, errors: result.errors, total: result.requests.total, sample };
}

export type PacedResult = {
  sent: number; ok: number; non2xx: number; p50: number; p90: number; p99: number; max: number;
  /** The load generator's own event-loop delay during the run (ms): its stalls count as latency too. */
  loopDelayP99: number; loopDelayMax: number;
};

/**
 * Open-loop load at a fixed rate (wrk2-style), for latency at a given load: request i is due at
 * start + i / rate; each is sent on a free kept-alive connection as soon as one is available, and its
 * latency counts from when it was due (so a stall is not hidden by sending less: no coordinated
 * omission). With `channels`, each request carries the next voucher of a free channel. A timer tick
 * of 1 ms sends whatever has come due (no busy loop that would steal the server's second core).
 * Latencies in ms, microsecond resolution.
 */
export type PacedOptions = { rate: number; seconds: number; connections: number; channels?: Channel[]; price?: bigint };

/**
 * `pacedLoad` run by a child process that holds nothing but the vouchers (bench/paced-client.ts): the
 * benchmark process itself, after setting up channels, promotes ~2 MB of young objects per scavenge and
 * pauses 5-8 ms every ~240 ms while it generates load (cause not found; a process that only loads the
 * vouchers does not), and a load generator's pause is measured as the server's latency. Updates each
 * channel's next voucher from the child's answer.
 */
export async function pacedLoadIsolated(url: string, o: PacedOptions): Promise<PacedResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-paced-"));
  try {
    const channels = (o.channels ?? []).map((ch, i) => {
      const file = path.join(dir, `ch${i}.bin`);
      ch.headers.toFile(file);
      return { id: ch.id, file, next: ch.next };
    });
    const job = JSON.stringify({ url, rate: o.rate, seconds: o.seconds, connections: o.connections, price: (o.price ?? 1n).toString(), channels });
    const child = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", path.join(__dirname, "paced-client.ts")], { env: { ...process.env, TOLLWAY_PACED_JOB: job }, stdio: ["ignore", "pipe", "inherit"] });
    children.push(child);
    let out = "";
    child.stdout!.on("data", (d) => void (out += String(d)));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    if (code !== 0) throw new Error(`paced load generator exited with ${code}`);
    const answer = JSON.parse(out.trim().split("\n").pop()!) as { result: PacedResult; next: number[] };
    (o.channels ?? []).forEach((ch, i) => (ch.next = answer.next[i]!));
    return answer.result;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export async function pacedLoad(url: string, o: PacedOptions): Promise<PacedResult> {
  const u = new URL(url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: o.connections });
  const total = Math.floor(o.rate * o.seconds);
  const lat: number[] = [];
  let sent = 0;
  let inflight = 0;
  let ok = 0;
  let non2xx = 0;
  for (const c of o.channels ?? []) c.busy = false;
  const start = performance.now() + 5;
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  await new Promise<void>((resolve) => {
    const send = (from: number) => {
      const ch = o.channels ? takeChannel(o.channels) : undefined;
      if (ch) ch.busy = true;
      const headers: Record<string, string> = ch ? { [HEADERS.paymentSignature]: ch.headers.at(ch.next) } : {};
      inflight++;
      const done = (status: number) => {
        lat.push(performance.now() - from);
        inflight--;
        if (status === 200) {
          ok++;
          if (ch) ch.next++;
        } else non2xx++;
        if (ch) ch.busy = false;
        pump(true);
        if (sent === total && inflight === 0) resolve();
      };
      http
        .get({ host: u.hostname, port: u.port, path: u.pathname, headers, agent }, (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => void (res.statusCode === 402 && (body += d)));
          res.on("end", () => {
            if (ch && res.statusCode === 402) resync(ch, res.headers["payment-required"] as string | undefined, body, o.price ?? 1n);
            done(res.statusCode ?? 0);
          });
        })
        .on("error", () => done(0));
    };
    // A request sent by the timer counts from when it left (the 1 ms tick is the generator's own
    // lateness); one that waited for a free connection counts from when it was due (the server's).
    const pump = (waitedForConnection: boolean) => {
      const now = performance.now();
      while (sent < total && inflight < o.connections) {
        const due = start + (sent * 1000) / o.rate;
        if (due > now) break;
        send(waitedForConnection ? due : now);
        sent++;
      }
    };
    const tick = () => {
      pump(false);
      if (sent < total) setTimeout(tick, 1);
    };
    setTimeout(tick, 5);
  });
  loop.disable();
  agent.destroy();
  lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(lat.length * p))] ?? 0;
  return { sent, ok, non2xx, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: q(1), loopDelayP99: loop.percentile(99) / 1e6, loopDelayMax: loop.max / 1e6 };
}
