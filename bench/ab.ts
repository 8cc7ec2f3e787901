/**
 * A/B of two payee builds under the same paid load (a contributor's tool; not part of `npm test` or
 * `npm run bench`). A is this checkout, B another one (a git worktree of the commit to compare with):
 * both servers run at once on one local chain, each with its own channels, and take turns under
 * autocannon (10 connections, one sequential voucher stream per channel) in ABBA order, so drift in
 * the machine hits both alike. Prints each round's paid req/s and CPU per request, and the median ratio A/B.
 *
 *   git worktree add /tmp/base <commit> && ln -s "$PWD/node_modules" /tmp/base/node_modules
 *   npm run bench:ab -- /tmp/base            (TOLLWAY_AB_ROUNDS=5, TOLLWAY_BENCH_SECONDS=5)
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { keccak256, toHex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { deployTollway } from "../node/chain/deploy";
import { createDigester } from "../node/protocol/fastDigest";
import { CANONICAL_ADDRESSES, escrowDomain } from "../node/protocol/typedData";
import { keccak256Fast, keccakReady } from "../node/payee/recover";
import { clientsFor, hardhatTestAccount, startChainNode } from "../test/helpers/chainNode";
import { children, localAccept, median, runLoad, setupChannels, startBenchServer, withCpu, runBench } from "./lib";

const SECONDS = Number(process.env.TOLLWAY_BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.TOLLWAY_AB_ROUNDS ?? 5);
const CHANNELS = 16;
const PRICE = 1_000n;

async function main() {
  const other = process.argv[2];
  const serverB = other ? path.resolve(other, "bench", "payee-server.ts") : "";
  if (!other || !fs.existsSync(serverB)) {
    console.error("usage: npm run bench:ab -- <other checkout>   (it must have bench/payee-server.ts and node_modules)");
    process.exit(2);
  }
  await keccakReady;
  const vouchers = Math.ceil(ROUNDS * SECONDS * 800) + 500; // per channel: above what a round can use
  const chain = await startChainNode();
  children.push(chain.proc);
  const payeeKey = keccak256(toHex("tollway-bench-payee"));
  const payee = privateKeyToAccount(payeeKey);
  const { publicClient, walletClient } = clientsFor(chain.url, hardhatTestAccount(0));
  const payers = Array.from({ length: 2 * CHANNELS }, (_, i) => privateKeyToAccount(keccak256(toHex(`ab-payer-${i}`))));
  const deployment = await deployTollway({
    walletClient,
    publicClient: publicClient as never,
    canonical: true,
    mintTestToken: { to: payers.map((p) => p.address), amount: PRICE * BigInt(vouchers + 10) },
  });
  const digester = createDigester(escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement), keccak256Fast);
  const token = deployment.token!;
  const accept = localAccept(token, payee.address, PRICE);
  const relay = clientsFor(chain.url, hardhatTestAccount(2));
  const channelsFor = (label: string, from: number) =>
    setupChannels({
      relayer: relay.walletClient as never,
      waitForReceipt: (hash) => relay.publicClient.waitForTransactionReceipt({ hash }),
      digester, token, receiver: payee.address, receiverAuthorizer: payee.address, accept, price: PRICE,
      count: CHANNELS, vouchers, label, payers: payers.slice(from, from + CHANNELS),
    });
  const channels = { A: await channelsFor("ab-a", 0), B: await channelsFor("ab-b", CHANNELS) };
  const env = (dir: string) => ({
    rpcUrl: chain.url, escrow: deployment.escrow, erc3009Collector: deployment.erc3009Collector, token,
    storePath: fs.mkdtempSync(path.join(os.tmpdir(), `tollway-ab-${dir}-`)), sync: true, price: "$0.001", key: payeeKey,
  });
  const servers = {
    A: await startBenchServer(path.join(__dirname, "payee-server.ts"), env("a")),
    B: await startBenchServer(serverB, env("b")),
  };
  const url = (k: "A" | "B") => `http://127.0.0.1:${servers[k].port}`;
  for (const k of ["A", "B"] as const) await runLoad(`${url(k)}/free`, { connections: 10, seconds: 2 }); // warm-up
  const rps: Record<"A" | "B", number[]> = { A: [], B: [] };
  for (let i = 0; i < ROUNDS; i++) {
    // ABBA order: neither build always runs right after the other.
    for (const k of i % 2 === 0 ? (["A", "B"] as const) : (["B", "A"] as const)) {
      const r = await withCpu(servers[k].proc.pid!, () => runLoad(`${url(k)}/paid`, { channels: channels[k], price: PRICE, connections: 10, seconds: SECONDS }));
      rps[k].push(r.rps);
      console.log(`round ${i + 1} ${k}: ${r.rps.toFixed(0)} paid req/s (non-2xx ${r.non2xx}); CPU per request: server main ${r.cpu.main.toFixed(0)} us, other threads ${r.cpu.others.toFixed(0)} us, load generator ${r.cpu.loadgen.toFixed(0)} us`);
    }
  }
  await servers.A.stop();
  await servers.B.stop();
  await chain.stop();
  console.log(`A (this checkout) ${rps.A.map((x) => x.toFixed(0)).join(", ")}`);
  console.log(`B (${other}) ${rps.B.map((x) => x.toFixed(0)).join(", ")}`);
  console.log(`median A/B ${(median(rps.A) / median(rps.B)).toFixed(3)} (the first round is the least warm)`);
}

runBench("A/B", 15, main);
