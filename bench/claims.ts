/**
 * Claim batching at scale and the on-chain cost per payment.
 *
 *   - TOLLWAY_CLAIM_CHANNELS (default 10,000) channels, each funded by a gasless deposit (relayed in
 *     escrow.multicall batches) and charged by the node; the claim engine claims them all in batches of
 *     100: transactions, gas, time. Baseline in the same run: 100 of them claimed one per transaction.
 *   - Cost per payment: 1,000 payments of $0.01 per channel, claims in batches of 100, at a stated L2 gas
 *     price and ETH price, against the baseline of one ERC-20 transfer per payment. Goal: < 0.1 % of the
 *     value paid.
 *
 * Run: npm run bench:claims
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { encodeFunctionData, multicall3Abi, hexToBytes, keccak256, toHex, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { batchSettlementAbi } from "../node/chain/abi";
import { createChainClients } from "../node/chain/clients";
import { deployTollway, MULTICALL3_ADDRESS } from "../node/chain/deploy";
import { hardhatTestAccount, hardhatTestKey, startLocalChain } from "../node/chain/localNode";
import { TxSender } from "../node/chain/sender";
import { ClaimEngine } from "../node/payee/claims";
import { Payee } from "../node/payee/payee";
import { keccak256Fast, keccakReady } from "../node/payee/recover";
import { encodeErc3009CollectorData, erc3009DepositNonce } from "../node/protocol/collectorData";
import { createDigester } from "../node/protocol/fastDigest";
import { CANONICAL_ADDRESSES, type ChannelConfig, escrowDomain, receiveWithAuthorizationTypes } from "../node/protocol/typedData";
import { ChannelStore } from "../node/store/channelStore";
import { runBench } from "./lib";

const secp = require("secp256k1/bindings") as { ecdsaSign(msg: Uint8Array, key: Uint8Array): { signature: Uint8Array; recid: number } };
const N = Number(process.env.TOLLWAY_CLAIM_CHANNELS ?? 10_000);
const GAS_PRICE_GWEI = Number(process.env.TOLLWAY_GAS_PRICE_GWEI ?? 0.01); // a typical L2 (Base) price
const ETH_USD = Number(process.env.TOLLWAY_ETH_USD ?? 3000);
const DEPOSIT = 10_000_000n; // $10: 1,000 payments of $0.01
const CHARGED = 10_000n * 1000n;

const mintAbi = [{ type: "function", name: "mint", stateMutability: "nonpayable", inputs: [{ name: "to", type: "address" }, { name: "amount", type: "uint256" }], outputs: [] }] as const;
const transferAbi = [{ type: "function", name: "transfer", stateMutability: "nonpayable", inputs: [{ name: "to", type: "address" }, { name: "amount", type: "uint256" }], outputs: [{ name: "", type: "bool" }] }] as const;

async function main() {
  await keccakReady;
  const t0 = Date.now();
  const chain = await startLocalChain();
  process.on("exit", () => chain.proc.exitCode === null && chain.proc.kill("SIGKILL"));
  const deployer = hardhatTestAccount(0);
  const { publicClient, walletClient } = createChainClients({ rpcUrl: chain.url, chainId: 31337 }, deployer);
  const wallet = walletClient!;
  const deployment = await deployTollway({ walletClient: wallet, publicClient: publicClient as never, canonical: true, deployTestToken: true });
  const token = deployment.token!;
  const payeeAccount = hardhatTestAccount(1);
  const domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement);
  const digester = createDigester(domain, keccak256Fast);

  // N payers (each its own key, used as payerAuthorizer too), funded with one multicall per 200
  const keys = Array.from({ length: N }, (_, i) => keccak256(toHex(`claims-payer-${i}`)));
  const payers = keys.map((k) => privateKeyToAccount(k));
  for (let i = 0; i < N; i += 200) {
    const calls = payers.slice(i, i + 200).map((p) => ({ target: token, allowFailure: false, callData: encodeFunctionData({ abi: mintAbi, functionName: "mint", args: [p.address, DEPOSIT] }) }));
    await publicClient.waitForTransactionReceipt({ hash: await wallet.writeContract({ address: MULTICALL3_ADDRESS, abi: multicall3Abi, functionName: "aggregate3", args: [calls] }) });
  }
  // gasless deposits, relayed 50 per escrow.multicall
  const configs: ChannelConfig[] = payers.map((p) => ({ payer: p.address, payerAuthorizer: p.address, receiver: payeeAccount.address, receiverAuthorizer: payeeAccount.address, token, withdrawDelay: 900, salt: toHex(0, { size: 32 }) }));
  const ids = configs.map((c) => digester.channelId(c));
  let depositGas = 0n;
  for (let i = 0; i < N; i += 50) {
    const calls: Hex[] = [];
    for (let j = i; j < Math.min(N, i + 50); j++) {
      const sig = await payers[j]!.signTypedData({ domain: { name: "USDC", version: "2", chainId: 31337, verifyingContract: token }, types: receiveWithAuthorizationTypes, primaryType: "ReceiveWithAuthorization", message: { from: payers[j]!.address, to: CANONICAL_ADDRESSES.erc3009DepositCollector, value: DEPOSIT, validAfter: 0n, validBefore: 2n ** 40n, nonce: erc3009DepositNonce(ids[j]!, 1n) } });
      calls.push(encodeFunctionData({ abi: batchSettlementAbi, functionName: "deposit", args: [configs[j]!, DEPOSIT, CANONICAL_ADDRESSES.erc3009DepositCollector, encodeErc3009CollectorData({ validAfter: 0n, validBefore: 2n ** 40n, salt: toHex(1n, { size: 32 }), signature: sig })] }));
    }
    const r = await publicClient.waitForTransactionReceipt({ hash: await wallet.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "multicall", args: [calls], gas: 15_000_000n }) });
    depositGas += r.gasUsed;
  }

  // the node's state: every channel charged 1,000 x $0.01 with the payer's last voucher
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-claims-"));
  const store = await ChannelStore.open(dir, { sync: false });
  const now = Date.now();
  await Promise.all(
    ids.map((id, j) => {
      const { signature, recid } = secp.ecdsaSign(digester.voucherDigest(id, CHARGED), hexToBytes(keys[j]!));
      return store.putChannel({ channelId: id, config: configs[j]!, chargedCumulative: CHARGED, signedMaxClaimable: CHARGED, signature: `0x${Buffer.from(signature).toString("hex")}${(recid + 27).toString(16)}`, balance: DEPOSIT, totalClaimed: 0n, withdrawRequestedAt: 0, refundNonce: 0n, syncedAt: now, lastRequestAt: now, createdAt: now });
    }),
  );
  const nodeClients = createChainClients({ rpcUrl: chain.url, chainId: 31337 }, privateKeyToAccount(hardhatTestKey(1)));
  const payee = new Payee({ store, publicClient: nodeClients.publicClient, sender: new TxSender(nodeClients.publicClient, nodeClients.walletClient!), chainId: 31337, escrow: CANONICAL_ADDRESSES.batchSettlement, erc3009Collector: CANONICAL_ADDRESSES.erc3009DepositCollector, receiver: payeeAccount.address, asset: { address: token, name: "USDC", version: "2", decimals: 6 } });
  const setupS = (Date.now() - t0) / 1000;

  // baseline: the first 100 channels, one claim transaction each
  const single = new ClaimEngine(payee, { batchSize: 1, onShutdown: false });
  let t = Date.now();
  const s = await single.claim({ channels: ids.slice(0, 100) });
  const singleS = (Date.now() - t) / 1000;
  const singleGas = s.transactions.reduce((a, x) => a + x.gasUsed, 0n);

  // the rest, in batches of 100
  const batched = new ClaimEngine(payee, { batchSize: 100, onShutdown: false });
  t = Date.now();
  const b = await batched.claim();
  const batchS = (Date.now() - t) / 1000;
  const batchGas = b.transactions.reduce((a, x) => a + x.gasUsed, 0n);
  const settled = await batched.settle();
  if (b.failed.length || s.failed.length) throw new Error(`claims failed: ${JSON.stringify([...s.failed, ...b.failed])}`);

  // baseline for payments: one ERC-20 transfer per payment (what channels replace)
  const payer0 = createChainClients({ rpcUrl: chain.url, chainId: 31337 }, privateKeyToAccount(hardhatTestKey(3)));
  await publicClient.waitForTransactionReceipt({ hash: await wallet.writeContract({ address: token, abi: mintAbi, functionName: "mint", args: [payer0.walletClient!.account.address, 1_000_000n] }) });
  const tr = await publicClient.waitForTransactionReceipt({ hash: await payer0.walletClient!.writeContract({ address: token, abi: transferAbi, functionName: "transfer", args: [payeeAccount.address, 10_000n] }) });
  await store.close();
  await chain.stop();
  fs.rmSync(dir, { recursive: true, force: true });

  const claimed = b.claimedChannels;
  const perChannelBatch = Number(batchGas) / claimed;
  const perChannelSingle = Number(singleGas) / 100;
  const depositPer = Number(depositGas) / N;
  const settlePer = Number(settled.gasUsed ?? 0n) / N;
  const perPaymentGas = (depositPer + perChannelBatch + settlePer) / 1000;
  const usd = (gas: number) => gas * GAS_PRICE_GWEI * 1e-9 * ETH_USD;
  const share = (usd(perPaymentGas) / 0.01) * 100;
  console.log(
    [
      `Tollway claim batching and cost per payment (${N.toLocaleString("en")} channels; setup ${setupS.toFixed(0)} s)`,
      ``,
      `claims, batches of 100:   ${b.transactions.length} transactions for ${claimed} channels, ${batchGas.toLocaleString("en")} gas (${perChannelBatch.toFixed(0)} per channel), ${batchS.toFixed(1)} s`,
      `claims, one per tx:       100 transactions for 100 channels, ${singleGas.toLocaleString("en")} gas (${perChannelSingle.toFixed(0)} per channel), ${singleS.toFixed(1)} s`,
      `ratio per channel (batched / single): ${(perChannelBatch / perChannelSingle).toFixed(3)}`,
      `settle: one transfer of ${(Number(settled.amount) / 1e6).toLocaleString("en")} USDC, ${settled.gasUsed} gas`,
      ``,
      `cost per payment: 1,000 payments of $0.01 per channel, claims in batches of 100, gas ${GAS_PRICE_GWEI} gwei, ETH $${ETH_USD}`,
      `  gas per payment: deposit ${(depositPer / 1000).toFixed(1)} + claim ${(perChannelBatch / 1000).toFixed(1)} + settle ${(settlePer / 1000).toFixed(3)} = ${perPaymentGas.toFixed(1)} gas`,
      `  = $${usd(perPaymentGas).toExponential(2)} per payment = ${share.toFixed(4)} % of the value paid   goal < 0.1 %: ${share < 0.1 ? "MET" : "NOT MET"}`,
      `  baseline, one ERC-20 transfer per payment: ${tr.gasUsed} gas = $${usd(Number(tr.gasUsed)).toExponential(2)} = ${((usd(Number(tr.gasUsed)) / 0.01) * 100).toFixed(2)} % of the value`,
      `  ratio (Tollway / transfer per payment): ${(perPaymentGas / Number(tr.gasUsed)).toFixed(4)}`,
    ].join("\n"),
  );
}

runBench("claims benchmark", 20, main);
