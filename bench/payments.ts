/**
 * Payment benchmarks (not part of `npm test`): every figure is a ratio against a baseline measured in
 * the same run, because the machine is shared and noisy.
 *
 *   1. paid vs unpaid: the same express app and trivial handler, autocannon, 10 connections on
 *      loopback. Vouchers are pre-signed per channel before the timed part; a connection checks out a
 *      channel per request, so each channel sees one sequential stream.      goal >= 0.45
 *      The app is served as Tollway serves one (createExpressServer); 1b serves the same app with
 *      express's own app.listen, for the comparison with a stock express deployment.
 *   2. latency added by payment at half of the paid maximum rate (p50 / p99): autocannon's rate limiter,
 *      an open-loop fixed-rate schedule (no coordinated omission), the server's own view, and one
 *      sequential connection.                                                goal p99 <= 2 ms
 *   3. durable (fsync'd group commit) vs non-durable commit, paid route, 3 interleaved pairs. goal >= 0.9
 *      3b: the same at 64 connections on 64 channels, a load that saturates the two cores (context: what
 *      group commit costs when there is concurrency to batch).
 *   4. verification path (digest + native recover + compare) vs a bare native ecdsaRecover loop. goal >= 0.8
 *   5. reverse proxy (paid) vs a direct hit on the upstream.                  goal >= 0.45
 *
 * Figures 1, 1b, 2a, 3 and 5 also measure a floor (bench/floor.ts) beside Tollway under the same load: only the
 * work a durable payment server cannot skip (decode, digest, recovery, a record fdatasync'd, PAYMENT-RESPONSE),
 * with no channel state and no checks. Where the machine's CPU bounds a figure (figure 1), the floor's ratio
 * bounds what any server doing more can reach; Tollway/floor is how much of it Tollway reaches.
 *
 * Run: npm run bench:payments   (TOLLWAY_BENCH_SECONDS=5 per run by default)
 */
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { keccak256, toHex, type Address } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { deployTollway } from "../node/chain/deploy";
import { createDigester } from "../node/protocol/fastDigest";
import { CANONICAL_ADDRESSES, escrowDomain } from "../node/protocol/typedData";
import { keccak256Fast, keccakReady, recoverSigner } from "../node/payee/recover";
import { HEADERS } from "../node/protocol/wire";
import { clientsFor, hardhatTestAccount, startChainNode } from "../test/helpers/chainNode";
import { type Channel, children, localAccept, median, pacedLoadIsolated, runLoad, setupChannels, startBenchServer, withCpu, type CpuPerRequest, type PacedResult, type RunResult, runBench } from "./lib";

const secp = require("secp256k1/bindings") as {
  ecdsaRecover(sig: Uint8Array, recid: number, msg: Uint8Array, compressed: boolean, out?: Uint8Array): Uint8Array;
};

const SECONDS = Number(process.env.TOLLWAY_BENCH_SECONDS ?? 5);
const CONNECTIONS = 10;
const CHANNELS = 16;
const PRICE = 1_000n; // $0.001
const VOUCHERS_PER_CHANNEL = Number(process.env.TOLLWAY_BENCH_VOUCHERS ?? 36_000);
/** Figure 3b: connections and channels (one stream each), and vouchers per channel. */
const WIDE = 64;
const WIDE_VOUCHERS = 8_000;

/** Alternating unpaid and paid requests on one kept-alive connection; latency quantiles in ms. */
async function sequentialLatency(port: number, ch: Channel, n: number) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = (p: string, headers: Record<string, string>) =>
    new Promise<{ ms: number; status: number }>((resolve, reject) => {
      const t = process.hrtime.bigint();
      http
        .get({ host: "127.0.0.1", port, path: p, headers, agent }, (r) => {
          r.resume();
          r.on("end", () => resolve({ ms: Number(process.hrtime.bigint() - t) / 1e6, status: r.statusCode ?? 0 }));
        })
        .on("error", reject);
    });
  const free: number[] = [];
  const paid: number[] = [];
  for (let i = 0; i < n; i++) {
    free.push((await get("/free", {})).ms);
    const r = await get("/paid", { [HEADERS.paymentSignature]: ch.headers.at(ch.next) });
    if (r.status === 200) ch.next++;
    paid.push(r.ms);
  }
  agent.destroy();
  const q = (a: number[], p: number) => [...a].sort((x, y) => x - y)[Math.floor(a.length * p)]!;
  return { freeP50: q(free, 0.5), freeP99: q(free, 0.99), paidP50: q(paid, 0.5), paidP99: q(paid, 0.99) };
}

/**
 * A run on the floor route (bench/floor.ts) with `channels`' vouchers: the floor keeps no channel state, so
 * each channel's next voucher is put back afterwards and the paid route's runs continue where they were.
 */
async function onFloor<T>(channels: Channel[], run: () => Promise<T>): Promise<T> {
  const saved = channels.map((c) => c.next);
  try {
    return await run();
  } finally {
    channels.forEach((c, i) => (c.next = saved[i]!));
  }
}

/** A 2 s warm-up, then the measured run (figure 3's servers are fresh processes). */
async function warmRun(url: string, channels: Channel[]): Promise<RunResult> {
  await runLoad(url, { channels, connections: CONNECTIONS, seconds: 2 });
  return runLoad(url, { channels, connections: CONNECTIONS, seconds: SECONDS });
}

async function main() {
  const t0 = Date.now();
  await keccakReady;
  const chain = await startChainNode();
  const SERVER = path.join(__dirname, "payee-server.ts");
  children.push(chain.proc);
  const deployer = hardhatTestAccount(0);
  // A fresh local key for the payee (it sends no transaction in this benchmark).
  const payeeKey = keccak256(toHex("tollway-bench-payee"));
  const payeeAccount = privateKeyToAccount(payeeKey);
  const relayer = hardhatTestAccount(2);
  const { publicClient, walletClient } = clientsFor(chain.url, deployer);
  const payers = Array.from({ length: 2 * CHANNELS + WIDE }, (_, i) => privateKeyToAccount(keccak256(toHex(`bench-payer-${i}`))));
  const deposit = PRICE * BigInt(VOUCHERS_PER_CHANNEL + 10);
  const deployment = await deployTollway({
    walletClient,
    publicClient: publicClient as never,
    canonical: true,
    mintTestToken: { to: payers.map((p) => p.address), amount: deposit },
  });
  const domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement);
  const digester = createDigester(domain, keccak256Fast);
  const token = deployment.token!;
  const accept = localAccept(token, payeeAccount.address, PRICE);

  // Deposits (gasless, relayed) and pre-signed vouchers, outside the timed part.
  const relay = clientsFor(chain.url, relayer);
  const channels = await setupChannels({
    relayer: relay.walletClient as never,
    waitForReceipt: (hash) => relay.publicClient.waitForTransactionReceipt({ hash }),
    digester, token, receiver: payeeAccount.address, receiverAuthorizer: payeeAccount.address, accept, price: PRICE,
    count: CHANNELS, vouchers: VOUCHERS_PER_CHANNEL, label: "bench", payers: payers.slice(0, CHANNELS),
  });
  const wideChannels = await setupChannels({
    relayer: relay.walletClient as never,
    waitForReceipt: (hash) => relay.publicClient.waitForTransactionReceipt({ hash }),
    digester, token, receiver: payeeAccount.address, receiverAuthorizer: payeeAccount.address, accept, price: PRICE,
    count: WIDE, vouchers: WIDE_VOUCHERS, label: "wide", payers: payers.slice(2 * CHANNELS),
  });
  const setupS = (Date.now() - t0) / 1000;

  const storePath = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-bench-"));
  const serverEnv = {
    rpcUrl: chain.url,
    escrow: deployment.escrow,
    erc3009Collector: deployment.erc3009Collector,
    token,
    storePath,
    price: "$0.001",
    key: payeeKey,
  };

  // 1 + 2: durable server
  let server = await startBenchServer(SERVER, { ...serverEnv, sync: true });
  const base = `http://127.0.0.1:${server.port}`;
  await runLoad(`${base}/free`, { connections: CONNECTIONS, seconds: SECONDS }); // warm-up
  await onFloor(channels, () => runLoad(`${base}/floor`, { channels, connections: CONNECTIONS, seconds: 2 }));
  const unpaid: Array<RunResult & { cpu: CpuPerRequest }> = [];
  const paid: Array<RunResult & { cpu: CpuPerRequest }> = [];
  const floor: Array<RunResult & { cpu: CpuPerRequest }> = [];
  const pid = server.proc.pid!;
  for (let i = 0; i < 2; i++) {
    unpaid.push(await withCpu(pid, () => runLoad(`${base}/free`, { connections: CONNECTIONS, seconds: SECONDS })));
    paid.push(await withCpu(pid, () => runLoad(`${base}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: SECONDS })));
    floor.push(await onFloor(channels, () => withCpu(pid, () => runLoad(`${base}/floor`, { channels, connections: CONNECTIONS, seconds: SECONDS }))));
  }
  const cpuOf = (rs: Array<{ cpu: CpuPerRequest }>) => {
    const last = rs[rs.length - 1]!.cpu; // the warmer of the runs
    return `server main thread ${last.main.toFixed(0)} us, its other threads ${last.others.toFixed(0)} us, load generator ${last.loadgen.toFixed(0)} us`;
  };
  const unpaidRps = median(unpaid.map((r) => r.rps));
  const paidRps = median(paid.map((r) => r.rps));
  const floorRps = median(floor.map((r) => r.rps));
  const half = Math.max(1, Math.floor(paidRps / 2));
  const unpaidHalf = await runLoad(`${base}/free`, { connections: CONNECTIONS, seconds: SECONDS, rate: half });
  const paidHalf = await runLoad(`${base}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: SECONDS, rate: half });
  // 2b: open-loop at a fixed rate (wrk2-style, no coordinated omission), 3 interleaved pairs
  const pacedFree: PacedResult[] = [];
  const pacedPaid: PacedResult[] = [];
  const pacedFloor: PacedResult[] = [];
  for (let i = 0; i < 3; i++) {
    pacedFree.push(await pacedLoadIsolated(`${base}/free`, { rate: half, seconds: SECONDS, connections: CONNECTIONS }));
    pacedPaid.push(await pacedLoadIsolated(`${base}/paid`, { rate: half, seconds: SECONDS, connections: CONNECTIONS, channels, price: PRICE }));
    pacedFloor.push(await onFloor(channels, () => pacedLoadIsolated(`${base}/floor`, { rate: half, seconds: SECONDS, connections: CONNECTIONS, channels, price: PRICE })));
  }
  const pm = (rs: PacedResult[], k: "p50" | "p99") => median(rs.map((r) => r[k]));
  // 2c: sequential latency on one kept-alive connection (no queueing, no coordinated-omission correction)
  const seq = await sequentialLatency(server.port, channels[0]!, 1500);
  const durableOut = await server.stop();
  const serverLatency = /SERVER_LATENCY_US n=(\d+) p50=(\d+) p99=(\d+)/.exec(durableOut);

  // 1b: the same app, served by express's own app.listen (the store and counters continue)
  server = await startBenchServer(SERVER, { ...serverEnv, sync: true, stockListen: true });
  const stockBase = `http://127.0.0.1:${server.port}`;
  await runLoad(`${stockBase}/free`, { connections: CONNECTIONS, seconds: 2 });
  await runLoad(`${stockBase}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: 2 });
  await onFloor(channels, () => runLoad(`${stockBase}/floor`, { channels, connections: CONNECTIONS, seconds: 2 }));
  const stockUnpaid: Array<RunResult & { cpu: CpuPerRequest }> = [];
  const stockPaid: Array<RunResult & { cpu: CpuPerRequest }> = [];
  const stockFloor: RunResult[] = [];
  for (let i = 0; i < 2; i++) {
    stockUnpaid.push(await withCpu(server.proc.pid!, () => runLoad(`${stockBase}/free`, { connections: CONNECTIONS, seconds: SECONDS })));
    stockPaid.push(await withCpu(server.proc.pid!, () => runLoad(`${stockBase}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: SECONDS })));
    stockFloor.push(await onFloor(channels, () => runLoad(`${stockBase}/floor`, { channels, connections: CONNECTIONS, seconds: SECONDS })));
  }
  await server.stop();
  const stockUnpaidRps = median(stockUnpaid.map((r) => r.rps));
  const stockPaidRps = median(stockPaid.map((r) => r.rps));
  const stockFloorRps = median(stockFloor.map((r) => r.rps));

  // 3: non-durable vs durable servers on the same store (the counters continue), interleaved, 2 runs each
  const nondurableRuns: RunResult[] = [];
  const durableRuns: RunResult[] = [];
  const floorRuns: Record<"durable" | "nondurable", RunResult[]> = { durable: [], nondurable: [] };
  let nondurableHalf: RunResult | undefined;
  for (let i = 0; i < 3; i++) {
    // Each server is fresh: a short paid warm-up first, so both sides are measured warm (as in figure 1).
    server = await startBenchServer(SERVER, { ...serverEnv, sync: false });
    await runLoad(`http://127.0.0.1:${server.port}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: 2 });
    nondurableRuns.push(await runLoad(`http://127.0.0.1:${server.port}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: SECONDS }));
    if (i === 0) nondurableHalf = await runLoad(`http://127.0.0.1:${server.port}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: SECONDS, rate: half });
    floorRuns.nondurable.push(await onFloor(channels, () => warmRun(`http://127.0.0.1:${server.port}/floor`, channels)));
    await server.stop();
    server = await startBenchServer(SERVER, { ...serverEnv, sync: true });
    await runLoad(`http://127.0.0.1:${server.port}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: 2 });
    durableRuns.push(await runLoad(`http://127.0.0.1:${server.port}/paid`, { channels, price: PRICE, connections: CONNECTIONS, seconds: SECONDS }));
    floorRuns.durable.push(await onFloor(channels, () => warmRun(`http://127.0.0.1:${server.port}/floor`, channels)));
    await server.stop();
  }
  const nondurable = { rps: median(nondurableRuns.map((r) => r.rps)), non2xx: nondurableRuns.reduce((a, r) => a + r.non2xx, 0) };
  const durable2 = { rps: median(durableRuns.map((r) => r.rps)), non2xx: durableRuns.reduce((a, r) => a + r.non2xx, 0) };
  const floorNondurable = median(floorRuns.nondurable.map((r) => r.rps));
  const floorDurable = median(floorRuns.durable.map((r) => r.rps));
  // 3b: the same pairs at WIDE connections on WIDE channels (the two cores saturated)
  const wideRuns: Record<"durable" | "nondurable", RunResult[]> = { durable: [], nondurable: [] };
  for (let i = 0; i < 3; i++) {
    for (const sync of [false, true]) {
      server = await startBenchServer(SERVER, { ...serverEnv, sync });
      const wideUrl = `http://127.0.0.1:${server.port}/paid`;
      await runLoad(wideUrl, { channels: wideChannels, price: PRICE, connections: WIDE, seconds: 2 });
      wideRuns[sync ? "durable" : "nondurable"].push(await runLoad(wideUrl, { channels: wideChannels, price: PRICE, connections: WIDE, seconds: SECONDS }));
      await server.stop();
    }
  }
  const wideNondurable = median(wideRuns.nondurable.map((r) => r.rps));
  const wideDurable = median(wideRuns.durable.map((r) => r.rps));

  // 5: reverse-proxy mode vs a direct hit on the upstream (same run)
  const upstream = await startBenchServer(path.join(__dirname, "upstream-server.ts"), {});
  const proxyKey = keccak256(toHex("tollway-bench-proxy"));
  const proxyAccount = privateKeyToAccount(proxyKey);
  const proxy = await startBenchServer(path.join(__dirname, "proxy-server.ts"), { rpcUrl: chain.url, escrow: deployment.escrow, erc3009Collector: deployment.erc3009Collector, token, upstream: `http://127.0.0.1:${upstream.port}`, key: proxyKey });
  const proxyAccept = localAccept(token, proxyAccount.address, PRICE);
  const proxyChannels = await setupChannels({
    relayer: relay.walletClient as never,
    waitForReceipt: (hash) => relay.publicClient.waitForTransactionReceipt({ hash }),
    digester, token, receiver: proxyAccount.address, receiverAuthorizer: proxyAccount.address, accept: proxyAccept, price: PRICE,
    count: CHANNELS, vouchers: VOUCHERS_PER_CHANNEL, label: "proxy", payers: payers.slice(CHANNELS),
  });
  const bare = await startBenchServer(path.join(__dirname, "bare-proxy-server.ts"), { upstream: `http://127.0.0.1:${upstream.port}` });
  const bareFloor = await startBenchServer(path.join(__dirname, "bare-proxy-server.ts"), { upstream: `http://127.0.0.1:${upstream.port}`, floor: { file: path.join(storePath, "proxy-floor.log"), sync: true } });
  const direct: RunResult[] = [];
  const proxied: RunResult[] = [];
  const bareRuns: RunResult[] = [];
  const bareFloorRuns: RunResult[] = [];
  await onFloor(proxyChannels, () => runLoad(`http://127.0.0.1:${bareFloor.port}/api/x`, { channels: proxyChannels, connections: CONNECTIONS, seconds: 2 }));
  for (let i = 0; i < 2; i++) {
    direct.push(await runLoad(`http://127.0.0.1:${upstream.port}/api/x`, { connections: CONNECTIONS, seconds: SECONDS }));
    bareRuns.push(await runLoad(`http://127.0.0.1:${bare.port}/api/x`, { connections: CONNECTIONS, seconds: SECONDS }));
    proxied.push(await runLoad(`http://127.0.0.1:${proxy.port}/api/x`, { channels: proxyChannels, price: PRICE, connections: CONNECTIONS, seconds: SECONDS }));
    bareFloorRuns.push(await onFloor(proxyChannels, () => runLoad(`http://127.0.0.1:${bareFloor.port}/api/x`, { channels: proxyChannels, connections: CONNECTIONS, seconds: SECONDS })));
  }
  await bare.stop();
  await bareFloor.stop();
  await proxy.stop();
  await upstream.stop();
  const directRps = median(direct.map((r) => r.rps));
  const proxiedRps = median(proxied.map((r) => r.rps));
  const bareRps = median(bareRuns.map((r) => r.rps));
  const bareFloorRps = median(bareFloorRuns.map((r) => r.rps));

  // 4: verification microbench (in this process)
  const n = 20_000;
  const ch = channels[0]!;
  const samples = ch.headers.slice(0, 1000).map((h) => JSON.parse(Buffer.from(h, "base64").toString()).payload.voucher);
  const digests = samples.map((v: any) => digester.voucherDigest(v.channelId, BigInt(v.maxClaimableAmount)).slice());
  const sigs = samples.map((v: any) => Buffer.from(v.signature.slice(2), "hex"));
  const out = new Uint8Array(65);
  const expected = (JSON.parse(Buffer.from(ch.headers.get(0), "base64").toString()).payload.channelConfig.payerAuthorizer as Address).toLowerCase();
  let t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const j = i % 1000;
    secp.ecdsaRecover(sigs[j]!.subarray(0, 64), sigs[j]![64]! - 27, digests[j]!, false, out);
  }
  const bareNs = Number(process.hrtime.bigint() - t) / n;
  t = process.hrtime.bigint();
  let ok = 0;
  for (let i = 0; i < n; i++) {
    const v = samples[i % 1000];
    const signer = recoverSigner(digester.voucherDigest(v.channelId, BigInt(v.maxClaimableAmount)), v.signature);
    if (signer === expected) ok++;
  }
  const pathNs = Number(process.hrtime.bigint() - t) / n;
  if (ok !== n) throw new Error(`verification path rejected ${n - ok} valid vouchers`);

  // 6: the disk's own fsync latency (context for the latency figures): 400 x (append 200 bytes + fdatasync)
  const fsyncMs: number[] = [];
  const fd = fs.openSync(path.join(storePath, "fsync-probe"), "a");
  for (let i = 0; i < 400; i++) {
    const a = process.hrtime.bigint();
    fs.writeSync(fd, Buffer.alloc(200, i));
    fs.fdatasyncSync(fd);
    fsyncMs.push(Number(process.hrtime.bigint() - a) / 1e6);
  }
  fs.closeSync(fd);
  fsyncMs.sort((a, b) => a - b);

  await chain.stop();
  fs.rmSync(storePath, { recursive: true, force: true });

  const fmt = (x: number, d = 0) => x.toFixed(d);
  const flushes = /FLUSHES (\d+)/.exec(durableOut)?.[1];
  const paidTotal = paid.reduce((a, r) => a + r.total, 0) + paidHalf.total + pacedPaid.reduce((a, r) => a + r.sent, 0) + 1500;
  const lines = [
    `Tollway payment benchmarks (${CONNECTIONS} connections, ${SECONDS} s per run, loopback; setup ${fmt(setupS, 1)} s)`,
    ``,
    `1. paid vs unpaid (median of 2 runs each)`,
    `   unpaid GET /free   ${fmt(unpaidRps)} req/s   (runs: ${unpaid.map((r) => fmt(r.rps)).join(", ")})`,
    `   paid   GET /paid   ${fmt(paidRps)} req/s   (runs: ${paid.map((r) => fmt(r.rps)).join(", ")}; non-2xx ${paid.reduce((a, r) => a + r.non2xx, 0)}, errors ${paid.reduce((a, r) => a + r.errors, 0)})`,
    `   ratio paid/unpaid  ${(paidRps / unpaidRps).toFixed(3)}   goal >= 0.45  ${paidRps / unpaidRps >= 0.45 ? "MET" : "NOT MET"}`,
    `   CPU per request (2nd run; Linux /proc): unpaid: ${cpuOf(unpaid)}`,
    `                                           paid:   ${cpuOf(paid)}`,
    `   (2 cores in all: the paid route is bound by the sum, not by one thread)`,
    `   the floor (GET /floor, bench/floor.ts: decode, digest, native recovery on the same threads, a record appended and`,
    `   fdatasync'd in groups, PAYMENT-RESPONSE; no channel state, no checks): ${fmt(floorRps)} req/s (runs: ${floor.map((r) => fmt(r.rps)).join(", ")}; non-2xx ${floor.reduce((a, r) => a + r.non2xx, 0)})`,
    `   floor/unpaid ${(floorRps / unpaidRps).toFixed(3)} (what a server doing only that work reaches here)   Tollway/floor ${(paidRps / floorRps).toFixed(3)}`,
    `   floor CPU per request: ${cpuOf(floor)}`,
    `   the floor without fdatasync (on figure 3's non-durable servers): ${fmt(floorNondurable)} req/s = ${(floorNondurable / unpaidRps).toFixed(3)} of unpaid: no durability at all`,
    `1b. the same app served by express's own app.listen (stock express; median of 2 runs each)`,
    `   unpaid ${fmt(stockUnpaidRps)} req/s (runs: ${stockUnpaid.map((r) => fmt(r.rps)).join(", ")})   paid ${fmt(stockPaidRps)} req/s (runs: ${stockPaid.map((r) => fmt(r.rps)).join(", ")}; non-2xx ${stockPaid.reduce((a, r) => a + r.non2xx, 0)})`,
    `   ratio paid/unpaid  ${(stockPaidRps / stockUnpaidRps).toFixed(3)}   goal >= 0.45  ${stockPaidRps / stockUnpaidRps >= 0.45 ? "MET" : "NOT MET"}`,
    `   CPU per request: unpaid: ${cpuOf(stockUnpaid)}`,
    `                    paid:   ${cpuOf(stockPaid)}`,
    `   the floor on app.listen ${fmt(stockFloorRps)} req/s (runs: ${stockFloor.map((r) => fmt(r.rps)).join(", ")}; non-2xx ${stockFloor.reduce((a, r) => a + r.non2xx, 0)}): floor/unpaid ${(stockFloorRps / stockUnpaidRps).toFixed(3)}   Tollway/floor ${(stockPaidRps / stockFloorRps).toFixed(3)}`,
    `   createExpressServer vs app.listen: unpaid ${(unpaidRps / stockUnpaidRps).toFixed(2)} x, paid ${(paidRps / stockPaidRps).toFixed(2)} x`,
    ``,
    `2. latency at half of the paid maximum (${half} req/s)`,
    `   autocannon (10 connections, its rate limiter, whole-ms latencies):`,
    `     unpaid p50 ${unpaidHalf.p50} ms  p99 ${unpaidHalf.p99} ms`,
    `     paid   p50 ${paidHalf.p50} ms  p99 ${paidHalf.p99} ms   (non-2xx ${paidHalf.non2xx})`,
    `     paid, non-durable store: p50 ${nondurableHalf!.p50} ms  p99 ${nondurableHalf!.p99} ms`,
    `     added  p50 ${(paidHalf.p50 - unpaidHalf.p50).toFixed(2)} ms  p99 ${(paidHalf.p99 - unpaidHalf.p99).toFixed(2)} ms   goal p99 <= 2 ms  ${paidHalf.p99 - unpaidHalf.p99 <= 2 ? "MET" : "NOT MET"}`,
    `   open loop at ${half} req/s (fixed schedule, latency from each request's due time; load generator in a process of its own; median of 3 interleaved runs):`,
    `     unpaid p50 ${pm(pacedFree, "p50").toFixed(2)} / p99 ${pm(pacedFree, "p99").toFixed(2)} ms (runs p99 ${pacedFree.map((r) => r.p99.toFixed(2)).join(", ")})`,
    `     paid   p50 ${pm(pacedPaid, "p50").toFixed(2)} / p99 ${pm(pacedPaid, "p99").toFixed(2)} ms (runs p99 ${pacedPaid.map((r) => r.p99.toFixed(2)).join(", ")}; non-2xx ${pacedPaid.reduce((a, r) => a + r.non2xx, 0)})`,
    `     added  p50 ${(pm(pacedPaid, "p50") - pm(pacedFree, "p50")).toFixed(2)} / p99 ${(pm(pacedPaid, "p99") - pm(pacedFree, "p99")).toFixed(2)} ms   goal p99 <= 2 ms  ${pm(pacedPaid, "p99") - pm(pacedFree, "p99") <= 2 ? "MET" : "NOT MET"}`,
    `     the floor (figure 1's), same rate: p50 ${pm(pacedFloor, "p50").toFixed(2)} / p99 ${pm(pacedFloor, "p99").toFixed(2)} ms (runs p99 ${pacedFloor.map((r) => r.p99.toFixed(2)).join(", ")}; non-2xx ${pacedFloor.reduce((a, r) => a + r.non2xx, 0)}): added p99 ${(pm(pacedFloor, "p99") - pm(pacedFree, "p99")).toFixed(2)} ms`,
    `     context, the load generator's own event-loop delay (p99 / max per run): unpaid ${pacedFree.map((r) => `${r.loopDelayP99.toFixed(1)}/${r.loopDelayMax.toFixed(1)}`).join(", ")} ms; paid ${pacedPaid.map((r) => `${r.loopDelayP99.toFixed(1)}/${r.loopDelayMax.toFixed(1)}`).join(", ")} ms`,
    `   server side, every paid request of the durable server (middleware entry -> charge on disk): p50 ${serverLatency ? (Number(serverLatency[2]) / 1000).toFixed(2) : "?"} ms, p99 ${serverLatency ? (Number(serverLatency[3]) / 1000).toFixed(2) : "?"} ms (n ${serverLatency?.[1] ?? "?"}, all loads)`,
    `   sequential, one connection (${1500} each): unpaid p50 ${seq.freeP50.toFixed(2)} / p99 ${seq.freeP99.toFixed(2)} ms, paid p50 ${seq.paidP50.toFixed(2)} / p99 ${seq.paidP99.toFixed(2)} ms, added p50 ${(seq.paidP50 - seq.freeP50).toFixed(2)} / p99 ${(seq.paidP99 - seq.freeP99).toFixed(2)} ms`,
    ``,
    `3. durable (fsync group commit) vs non-durable, paid route (median of 3 interleaved runs each, each server warmed up 2 s)`,
    `   non-durable ${fmt(nondurable.rps)} req/s (runs ${nondurableRuns.map((r) => fmt(r.rps)).join(", ")})   durable ${fmt(durable2.rps)} req/s (runs ${durableRuns.map((r) => fmt(r.rps)).join(", ")}; non-2xx ${nondurable.non2xx + durable2.non2xx})`,
    `   ratio durable/non-durable ${(durable2.rps / nondurable.rps).toFixed(3)}   goal >= 0.9  ${durable2.rps / nondurable.rps >= 0.9 ? "MET" : "NOT MET"}`,
    `   the floor (figure 1's) on the same servers: non-durable ${fmt(floorNondurable)} req/s, durable ${fmt(floorDurable)} req/s (non-2xx ${[...floorRuns.nondurable, ...floorRuns.durable].reduce((a, r) => a + r.non2xx, 0)}), ratio ${(floorDurable / floorNondurable).toFixed(3)}`,
    `   (context, not a bound: what one fdatasync'd group commit costs a server doing nothing else at 10 connections)`,
    `   group commit: ${flushes ?? "?"} fsync'd batches for ${paidTotal} paid requests in the first server`,
    `3b. the same at ${WIDE} connections on ${WIDE} channels (saturating load; context, the goal is figure 3's)`,
    `   non-durable ${fmt(wideNondurable)} req/s (runs ${wideRuns.nondurable.map((r) => fmt(r.rps)).join(", ")})   durable ${fmt(wideDurable)} req/s (runs ${wideRuns.durable.map((r) => fmt(r.rps)).join(", ")}; non-2xx ${[...wideRuns.nondurable, ...wideRuns.durable].reduce((a, r) => a + r.non2xx, 0)})`,
    `   ratio durable/non-durable ${(wideDurable / wideNondurable).toFixed(3)}`,
    ``,
    `4. verification path vs bare native ecdsaRecover (${n} vouchers)`,
    `   bare recover ${fmt(bareNs / 1000, 2)} us   verification path ${fmt(pathNs / 1000, 2)} us`,
    `   ratio (bare/path throughput) ${(bareNs / pathNs).toFixed(3)}   goal >= 0.8  ${bareNs / pathNs >= 0.8 ? "MET" : "NOT MET"}`,
    ``,
    `5. reverse-proxy mode (paid) vs a direct hit on the express upstream (unpaid), median of 2 runs each`,
    `   direct upstream ${fmt(directRps)} req/s   Tollway proxy, paid ${fmt(proxiedRps)} req/s (non-2xx ${proxied.reduce((a, r) => a + r.non2xx, 0)})`,
    `   ratio proxy/direct ${(proxiedRps / directRps).toFixed(3)}   goal >= 0.45  ${proxiedRps / directRps >= 0.45 ? "MET" : "NOT MET"}`,
    `   context: a bare node:http reverse proxy (no framework, no payment) ${fmt(bareRps)} req/s = ${(bareRps / directRps).toFixed(3)} of direct: what any proxy reaches on this machine;`,
    `   Tollway's paid proxy reaches ${(proxiedRps / bareRps).toFixed(3)} of it`,
    `   the floor of a paid proxy (that bare proxy plus figure 1's floor: voucher checked before forwarding, record fdatasync'd`,
    `   after the upstream's answer): ${fmt(bareFloorRps)} req/s (non-2xx ${bareFloorRuns.reduce((a, r) => a + r.non2xx, 0)}) = ${(bareFloorRps / directRps).toFixed(3)} of direct   Tollway/floor ${(proxiedRps / bareFloorRps).toFixed(3)}`,
    ``,
    `vouchers: at most ${Math.max(...channels.map((c) => c.next))} of ${VOUCHERS_PER_CHANNEL} used on a channel (a channel out of vouchers repeats its last one: non-2xx)`,
    ``,
    `6. this disk's fdatasync latency (append 200 B + fdatasync, 400 times): p50 ${fsyncMs[200]!.toFixed(2)} ms  p99 ${fsyncMs[396]!.toFixed(2)} ms`,
  ];
  console.log(lines.join("\n"));
}

runBench("benchmark", 15, main);
