/**
 * Scale benchmark: a payee node whose store holds 1,000,000 channels. Measures the node's RSS and the
 * time from process start to its first paid request, against the same node with an empty store
 * (baseline, same run). Goals: <= 512 MB, <= 10 s.
 *
 * Run: npm run bench:scale   (TOLLWAY_SCALE_CHANNELS=1000000 by default)
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { keccak256, toHex, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { batchSettlementAbi } from "../node/chain/abi";
import { deployTollway } from "../node/chain/deploy";
import { hardhatTestAccount, startLocalChain } from "../node/chain/localNode";
import { createChainClients } from "../node/chain/clients";
import { encodeErc3009CollectorData, erc3009DepositNonce } from "../node/protocol/collectorData";
import { CANONICAL_ADDRESSES, type ChannelConfig, computeChannelId, escrowDomain, receiveWithAuthorizationTypes, voucherTypes } from "../node/protocol/typedData";
import { HEADERS, encodeBase64Json } from "../node/protocol/wire";
import { ChannelStore, type ChannelRecord } from "../node/store/channelStore";
import { localAccept, runBench } from "./lib";

const N = Number(process.env.TOLLWAY_SCALE_CHANNELS ?? 1_000_000);
const children: ChildProcess[] = [];
process.on("exit", () => children.forEach((c) => c.exitCode === null && c.kill("SIGKILL")));

function rssMb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

async function fillStore(dir: string, n: number, template: ChannelRecord) {
  const store = await ChannelStore.open(dir, { sync: false, cacheSize: 1 });
  const chunk = 5_000;
  for (let i = 0; i < n; i += chunk) {
    const writes: Promise<void>[] = [];
    for (let j = i; j < Math.min(n, i + chunk); j++) {
      const id = `0x${randomBytes(32).toString("hex")}` as Hex;
      writes.push(store.putChannel({ ...template, channelId: id, config: { ...template.config, salt: id }, chargedCumulative: BigInt(j), signedMaxClaimable: BigInt(j) }));
    }
    await Promise.all(writes);
  }
  await store.close();
}

async function main() {
  const chain = await startLocalChain();
  children.push(chain.proc);
  const deployer = hardhatTestAccount(0);
  const { publicClient, walletClient } = createChainClients({ rpcUrl: chain.url, chainId: 31337 }, deployer);
  const payer = privateKeyToAccount(keccak256(toHex("scale-payer")));
  const deployment = await deployTollway({ walletClient: walletClient!, publicClient: publicClient as never, canonical: true, mintTestToken: { to: [payer.address], amount: 10_000_000n } });
  const payeeKey = keccak256(toHex("scale-payee"));
  const payee = privateKeyToAccount(payeeKey);
  const token = deployment.token!;
  const domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement);
  const config: ChannelConfig = { payer: payer.address, payerAuthorizer: payer.address, receiver: payee.address, receiverAuthorizer: payee.address, token, withdrawDelay: 900, salt: toHex(1, { size: 32 }) };
  const id = computeChannelId(domain, config);
  // one real funded channel, deposited directly (the node does not need to relay)
  const sig = await payer.signTypedData({ domain: { name: "USDC", version: "2", chainId: 31337, verifyingContract: token }, types: receiveWithAuthorizationTypes, primaryType: "ReceiveWithAuthorization", message: { from: payer.address, to: CANONICAL_ADDRESSES.erc3009DepositCollector, value: 1_000_000n, validAfter: 0n, validBefore: 2n ** 40n, nonce: erc3009DepositNonce(id, 1n) } });
  const hash = await walletClient!.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "deposit", args: [config, 1_000_000n, CANONICAL_ADDRESSES.erc3009DepositCollector, encodeErc3009CollectorData({ validAfter: 0n, validBefore: 2n ** 40n, salt: toHex(1n, { size: 32 }), signature: sig })] });
  await publicClient.waitForTransactionReceipt({ hash });
  const accept = localAccept(token, payee.address, 1000n);
  const voucher = async (max: bigint) => ({ channelId: id, maxClaimableAmount: max.toString(), signature: await payer.signTypedData({ domain, types: voucherTypes, primaryType: "Voucher", message: { channelId: id, maxClaimableAmount: max } }) });

  const template: ChannelRecord = {
    channelId: id, config, chargedCumulative: 0n, signedMaxClaimable: 0n, signature: `0x${"11".repeat(65)}`, balance: 1_000_000n, totalClaimed: 0n,
    withdrawRequestedAt: 0, refundNonce: 0n, syncedAt: Date.now(), lastRequestAt: Date.now(), createdAt: Date.now(),
  };
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-scale-"));
  const emptyDir = path.join(base, "empty");
  const bigDir = path.join(base, "big");
  let t = Date.now();
  await fillStore(bigDir, N, template);
  const fillS = (Date.now() - t) / 1000;
  const sizeMb = Number(require("node:child_process").execSync(`du -sm ${bigDir}`).toString().split("\t")[0]);

  async function measure(storePath: string, nth: number) {
    const start = Date.now();
    const proc = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", path.join(__dirname, "payee-server.ts")], {
      env: { ...process.env, TOLLWAY_BENCH: JSON.stringify({ rpcUrl: chain.url, escrow: deployment.escrow, erc3009Collector: deployment.erc3009Collector, token, storePath, sync: true, price: "$0.001", key: payeeKey }) },
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.push(proc);
    const port = await new Promise<number>((resolve, reject) => {
      let out = "";
      proc.stdout!.on("data", (d) => {
        out += d;
        const m = /READY (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      proc.once("exit", (c) => reject(new Error(`server exited ${c}`)));
    });
    const header = encodeBase64Json({ x402Version: 2, accepted: accept, payload: { type: "voucher", channelConfig: config, voucher: await voucher(1000n * BigInt(nth)) } });
    const res = await fetch(`http://127.0.0.1:${port}/paid`, { headers: { [HEADERS.paymentSignature]: header } });
    if (res.status !== 200) throw new Error(`first paid request answered ${res.status}: ${await res.text()}`);
    const firstPaidS = (Date.now() - start) / 1000;
    const rss = rssMb(proc.pid!);
    await new Promise<void>((r) => {
      proc.once("exit", () => r());
      proc.kill("SIGTERM");
    });
    return { firstPaidS, rss };
  }

  // the real channel's record lives in each store (the node learns it from the chain on first sight)
  const empty = await measure(emptyDir, 1);
  const big = await measure(bigDir, 1);
  await chain.stop();
  fs.rmSync(base, { recursive: true, force: true });

  console.log(
    [
      `Tollway scale benchmark (${N.toLocaleString("en")} channels in the store; filled in ${fillS.toFixed(1)} s, ${sizeMb} MB on disk)`,
      ``,
      `                       empty store     ${N.toLocaleString("en")} channels   ratio`,
      `start -> first paid    ${empty.firstPaidS.toFixed(2).padStart(8)} s       ${big.firstPaidS.toFixed(2).padStart(8)} s        ${(big.firstPaidS / empty.firstPaidS).toFixed(2)}   goal <= 10 s: ${big.firstPaidS <= 10 ? "MET" : "NOT MET"}`,
      `RSS after it           ${empty.rss.toFixed(0).padStart(8)} MB      ${big.rss.toFixed(0).padStart(8)} MB       ${(big.rss / empty.rss).toFixed(2)}   goal <= 512 MB: ${big.rss <= 512 ? "MET" : "NOT MET"}`,
      ``,
      `(start includes ts-node transpiling the server; channel records are read from LevelDB on demand, not loaded at start)`,
    ].join("\n"),
  );
}

runBench("scale benchmark", 20, main);
