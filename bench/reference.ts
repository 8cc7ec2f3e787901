/**
 * Tollway vs the reference: the stock @x402/express server with the @x402/evm batch-settlement server
 * scheme, against Tollway's node, same route, same load. The load generator is lean (vouchers
 * pre-signed per channel before the timed part, one sequential stream per channel, 16 channels in
 * parallel over 16 connections) because the stock client costs ~2 ms of CPU per request.
 * Goal: Tollway >= 10 x the reference's paid requests/s (at least 5 x).
 *
 * Run: npm run bench:reference
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { keccak256, toHex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { deployTollway } from "../node/chain/deploy";
import { parseNodeConfig } from "../node/payee/config";
import { startPayeeNode } from "../node/payee/server";
import { keccak256Fast, keccakReady } from "../node/payee/recover";
import { createDigester } from "../node/protocol/fastDigest";
import { CANONICAL_ADDRESSES, escrowDomain } from "../node/protocol/typedData";
import { HEADERS, decodeBase64Json } from "../node/protocol/wire";
import { clientsFor, hardhatTestAccount, startChainNode } from "../test/helpers/chainNode";
import { children, median, runLoad, setupChannels, startBenchServer, type RunResult, runBench } from "./lib";

const SECONDS = Number(process.env.TOLLWAY_BENCH_SECONDS ?? 5);
const CHANNELS = 16;
const PRICE = 1_000n;

async function main() {
  await keccakReady;
  const chain = await startChainNode();
  children.push(chain.proc);
  const deployer = hardhatTestAccount(0);
  const { publicClient, walletClient } = clientsFor(chain.url, deployer);
  const payers = Array.from({ length: 2 * CHANNELS }, (_, i) => privateKeyToAccount(keccak256(toHex(`ref-payer-${i}`))));
  const deployment = await deployTollway({ walletClient, publicClient: publicClient as never, canonical: true, mintTestToken: { to: payers.map((p) => p.address), amount: 100_000_000n } });
  const token = deployment.token!;
  const digester = createDigester(escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement), keccak256Fast);

  // the facilitator the reference server uses: a Tollway node (in this process; only the first request
  // per channel reaches it, vouchers are verified by the reference server itself)
  const facKey = keccak256(toHex("ref-facilitator"));
  const token32 = "reference-bench-token-0123456789";
  const { testClient } = clientsFor(chain.url, deployer);
  await testClient.setBalance({ address: privateKeyToAccount(facKey).address, value: 10n ** 20n });
  const fac = await startPayeeNode(
    parseNodeConfig({ rpcUrl: chain.url, escrow: deployment.escrow, erc3009Collector: deployment.erc3009Collector, asset: { address: token }, listen: { port: 0 }, storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-ref-fac-")), adminToken: token32, claims: { onShutdown: false }, logLevel: "silent" }, {}),
    { key: facKey, logger: pino({ level: "silent" }) },
  );
  const refReceiver = privateKeyToAccount(keccak256(toHex("ref-receiver"))).address;
  const reference = await startBenchServer(path.join(__dirname, "reference-server.ts"), { facilitatorUrl: `${fac.url}/facilitator`, token: token32, receiver: refReceiver, asset: token, amount: PRICE.toString() });
  const twKey = keccak256(toHex("ref-tollway-payee"));
  const tollway = await startBenchServer(path.join(__dirname, "payee-server.ts"), { rpcUrl: chain.url, escrow: deployment.escrow, erc3009Collector: deployment.erc3009Collector, token, storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-ref-tw-")), sync: true, price: "$0.001", key: twKey });

  const acceptOf = async (url: string) => {
    const res = await fetch(url);
    return (decodeBase64Json(res.headers.get(HEADERS.paymentRequired)!, "PAYMENT-REQUIRED") as { accepts: Record<string, any>[] }).accepts[0]!;
  };
  const relay = clientsFor(chain.url, hardhatTestAccount(2));
  const setup = async (label: string, accept: Record<string, any>, vouchers: number, offset: number) =>
    setupChannels({
      relayer: relay.walletClient as never,
      waitForReceipt: (hash) => relay.publicClient.waitForTransactionReceipt({ hash }),
      digester, token, receiver: accept.payTo, receiverAuthorizer: accept.extra.receiverAuthorizer, accept, price: PRICE,
      count: CHANNELS, vouchers, label, payers: payers.slice(offset, offset + CHANNELS),
    });
  const refUrl = `http://127.0.0.1:${reference.port}/paid`;
  const twUrl = `http://127.0.0.1:${tollway.port}/paid`;
  const refChannels = await setup("ref", await acceptOf(refUrl), 1500, 0);
  const twChannels = await setup("tw", await acceptOf(twUrl), 4000, CHANNELS);

  const load = { connections: CHANNELS, seconds: SECONDS, price: PRICE };
  const ref: RunResult[] = [];
  const tw: RunResult[] = [];
  for (let i = 0; i < 2; i++) {
    ref.push(await runLoad(refUrl, { ...load, channels: refChannels }));
    tw.push(await runLoad(twUrl, { ...load, channels: twChannels }));
  }
  await reference.stop();
  await tollway.stop();
  await fac.stop();
  await chain.stop();

  const r = median(ref.map((x) => x.rps));
  const t = median(tw.map((x) => x.rps));
  const line = (name: string, runs: RunResult[]) =>
    `${name.padEnd(34)} ${median(runs.map((x) => x.rps)).toFixed(0).padStart(6)} paid req/s  (runs ${runs.map((x) => x.rps.toFixed(0)).join(", ")}; p50 ${runs.map((x) => x.p50).join("/")} ms, p99 ${runs.map((x) => x.p99).join("/")} ms; non-2xx ${runs.reduce((a, x) => a + x.non2xx, 0)})`;
  console.log(
    [
      `Tollway vs reference x402 batch-settlement server (${CHANNELS} channels, ${CHANNELS} connections, ${SECONDS} s per run, loopback)`,
      ``,
      line("reference (@x402/express + @x402/evm)", ref),
      line("Tollway (paymentMiddleware)", tw),
      ``,
      ...[...ref, ...tw].filter((x) => x.sample).slice(0, 2).map((x) => `first non-2xx seen: ${x.sample}`),
      ``,
      `ratio Tollway / reference: ${(t / r).toFixed(2)} x   goal >= 10 x (at least 5 x): ${t / r >= 10 ? "MET" : t / r >= 5 ? "MET at 5 x, not 10 x" : "NOT MET"}`,
    ].join("\n"),
  );
}

runBench("reference benchmark", 15, main);
