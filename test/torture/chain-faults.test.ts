/**
 * Chain faults: the RPC endpoint stops answering (a TCP proxy in front of the chain is paused), and a
 * deposit is reorganised away (evm_snapshot / evm_revert).
 */
import { expect } from "chai";
import net from "node:net";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { keccak256, toHex, type LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { batchSettlementAbi } from "../../node/chain/abi";
import { encodeErc3009CollectorData, erc3009DepositNonce } from "../../node/protocol/collectorData";
import { CANONICAL_ADDRESSES, receiveWithAuthorizationTypes } from "../../node/protocol/typedData";
import { parseNodeConfig } from "../../node/payee/config";
import { startPayeeNode, type PayeeNode } from "../../node/payee/server";
import { clientsFor } from "../helpers/chainNode";
import { localNodeConfig, startChain } from "../helpers/payeeHarness";
import { PayerSigns, WirePayer, depositOnChain, fetchRequirements, payWith } from "../helpers/wirePayer";

/**
 * A pausable TCP proxy: paused = the RPC endpoint stops answering (connections refused); hanging = it
 * takes connections and never answers.
 */
async function tcpProxy(targetPort: number) {
  const sockets = new Set<net.Socket>();
  let server: net.Server | undefined;
  let hanging = false;
  const port = await new Promise<number>((resolve) => {
    const probe = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (probe.address() as net.AddressInfo).port;
      probe.close(() => resolve(p));
    });
  });
  const listen = () =>
    new Promise<void>((resolve) => {
      server = net.createServer((client) => {
        if (hanging) {
          sockets.add(client);
          client.on("close", () => sockets.delete(client));
          client.on("error", () => client.destroy());
          return;
        }
        const upstream = net.connect(targetPort, "127.0.0.1");
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on("close", () => sockets.delete(s));
          s.on("error", () => s.destroy());
        }
        client.pipe(upstream).pipe(client);
      });
      server.listen(port, "127.0.0.1", () => resolve());
    });
  await listen();
  return {
    url: `http://127.0.0.1:${port}`,
    pause: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server!.close(() => resolve());
      }),
    resume: listen,
    hang: () => {
      hanging = true;
      for (const s of sockets) s.destroy();
    },
    unhang: () => {
      hanging = false;
      for (const s of sockets) s.destroy();
    },
  };
}

describe("torture: chain faults", function () {
  this.timeout(240_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  before(async () => {
    ctx = await startChain();
  });
  after(async () => ctx?.chain.stop());

  async function node(rpcUrl: string, extra: Record<string, unknown>, logger = pino({ level: "silent" })): Promise<PayeeNode> {
    const key = keccak256(toHex(`faults-node-${Math.random()}`));
    await ctx.testClient.setBalance({ address: privateKeyToAccount(key).address, value: 10n ** 20n });
    return startPayeeNode(
      parseNodeConfig({
        ...localNodeConfig(ctx, rpcUrl),
        storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-faults-")),
        routes: { "GET /a/:id": "$0.01" },
        claims: { onShutdown: false },
        ...extra,
      }, {}),
      { key, logger, install: (app) => app.get("/a/:id", (_req, res) => void res.send("ok")) },
    );
  }

  it("an RPC URL's path and query (where providers put API keys) never reach the logs, also when every chain call fails", async () => {
    const proxy = await tcpProxy(ctx.chain.port);
    const lines: string[] = [];
    const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
    const n = await node(`${proxy.url}/v2/API_KEY_SECRET?key=QUERY_SECRET`, { pollIntervalMs: 100, claims: { onShutdown: true } }, logger);
    const accept = (await fetchRequirements(`${n.url}/a/1`)).accept;
    const payer = new WirePayer(ctx.payers[2] as LocalAccount, privateKeyToAccount(keccak256(toHex("faults-logs"))));
    expect((await payWith(`${n.url}/a/1`, await payer.depositHeader(accept, 1_000_000n, 10_000n))).status).to.equal(200);
    await proxy.pause();
    const deadline = Date.now() + 5000;
    while (n.watcher.failures < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    // The shutdown claim and settle fail against the dead endpoint, and say so.
    await n.stop();
    await proxy.resume();
    const logged = lines.join("");
    expect(logged).to.include('"alert":"claim_failed"');
    expect(logged).to.include('"alert":"settle_failed"');
    expect(n.watcher.failures).to.be.at.least(2);
    expect(logged).to.not.match(/SECRET/);
  });

  it("RPC down: known channels keep being served within the risk window, refused beyond it, served again after catching up", async () => {
    const proxy = await tcpProxy(ctx.chain.port);
    const n = await node(proxy.url, { riskWindowMs: 3000, pollIntervalMs: 100 });
    try {
      const accept = (await fetchRequirements(`${n.url}/a/1`)).accept;
      const payer = new WirePayer(ctx.payers[0] as LocalAccount, privateKeyToAccount(keccak256(toHex("faults-a"))));
      expect((await payWith(`${n.url}/a/1`, await payer.depositHeader(accept, 1_000_000n, 10_000n))).status).to.equal(200);
      let charged = 10_000n;
      await proxy.pause();
      // Within the window, with the chain already failing the node's polls: vouchers on a known channel need no RPC.
      const failing = Date.now() + 5000;
      while (n.watcher.failures < 2 && Date.now() < failing) await new Promise((r) => setTimeout(r, 50));
      expect(n.watcher.failures).to.be.at.least(2);
      for (let i = 0; i < 3; i++) {
        const within = await payWith(`${n.url}/a/w${i}`, await payer.voucherHeader(accept, charged + 10_000n));
        expect(within.status, within.text).to.equal(200);
        charged += 10_000n;
      }
      // beyond the window: /health says so, a clear refusal naming the risk window, nothing charged
      const beyondAt = n.payee.chainSyncedAt + 3000 + 300;
      await new Promise((r) => setTimeout(r, Math.max(0, beyondAt - Date.now())));
      expect((await fetch(`${n.url}/health`)).status).to.equal(503);
      const beyond = await payWith(`${n.url}/a/3`, await payer.voucherHeader(accept, charged + 10_000n));
      expect(beyond.status).to.equal(503);
      expect(beyond.paymentRequired.error).to.equal("invalid_batch_settlement_evm_channel_state_read_failed");
      expect(beyond.paymentRequired.message).to.match(/beyond the risk window/);
      expect((await n.store.getChannel(payer.channelId(accept)))!.chargedCumulative).to.equal(charged);
      // Meanwhile the chain moves on without the node: the payer tops the channel up directly.
      await depositOnChain(ctx.chain.url, payer, accept, 500_000n);
      // the chain returns: the watcher catches up (the top-up is mirrored) and serving resumes
      await proxy.resume();
      const deadline = Date.now() + 5000;
      let after = beyond;
      while (Date.now() < deadline) {
        after = await payWith(`${n.url}/a/4`, await payer.voucherHeader(accept, charged + 10_000n));
        if (after.status === 200) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(after.status).to.equal(200);
      expect(n.watcher.failures).to.equal(0);
      const caughtUp = Date.now() + 5000;
      while ((await n.store.getChannel(payer.channelId(accept)))!.balance !== 1_500_000n && Date.now() < caughtUp) await new Promise((r) => setTimeout(r, 100));
      expect((await n.store.getChannel(payer.channelId(accept)))!.balance).to.equal(1_500_000n);
    } finally {
      await n.stop();
    }
  });

  it("an RPC that takes connections and never answers: /health says 503 within seconds (a probe is not left hanging)", async () => {
    const proxy = await tcpProxy(ctx.chain.port);
    const n = await node(proxy.url, { pollIntervalMs: 100 });
    try {
      expect((await fetch(`${n.url}/health`)).status).to.equal(200);
      proxy.hang();
      await new Promise((r) => setTimeout(r, 1100)); // past the head's 1 s cache
      const t0 = Date.now();
      const health = await fetch(`${n.url}/health`);
      const tookMs = Date.now() - t0;
      expect(health.status).to.equal(503);
      expect((await health.json()).chainHead).to.equal(undefined);
      expect(tookMs).to.be.below(4_000); // the RPC client's own timeout is 10 s x 3 attempts
    } finally {
      proxy.unhang();
      await n.stop();
      await proxy.pause();
    }
  });

  it("RPC down: a channel whose payer signs itself (payerAuthorizer = 0) is served within the risk window too (its code was read before)", async () => {
    const proxy = await tcpProxy(ctx.chain.port);
    const n = await node(proxy.url, { riskWindowMs: 60_000, pollIntervalMs: 100 });
    try {
      const accept = (await fetchRequirements(`${n.url}/a/1`)).accept;
      const payer = new PayerSigns(ctx.payers[3] as LocalAccount, ctx.payers[3] as LocalAccount);
      expect((await payWith(`${n.url}/a/1`, await payer.depositHeader(accept, 1_000_000n, 10_000n))).status).to.equal(200);
      await proxy.pause();
      const within = await payWith(`${n.url}/a/2`, await payer.voucherHeader(accept, 20_000n));
      expect(within.status, within.text).to.equal(200);
    } finally {
      await proxy.resume();
      await n.stop();
      await proxy.pause();
    }
  });

  it("a deposit that is reorganised away is never counted (confirmations = 2)", async () => {
    const n = await node(ctx.chain.url, { confirmations: 2 });
    try {
      const accept = (await fetchRequirements(`${n.url}/a/1`)).accept;
      const payer = new WirePayer(ctx.payers[1] as LocalAccount, privateKeyToAccount(keccak256(toHex("faults-b"))));
      const config = payer.config(accept);
      const id = payer.channelId(accept);
      const snapshot = await ctx.testClient.snapshot();
      // the payer deposits on chain itself (not through the node)
      const { walletClient, publicClient } = clientsFor(ctx.chain.url, payer.account);
      const salt = 7n;
      const signature = await payer.account.signTypedData({
        domain: { name: "USDC", version: "2", chainId: 31337, verifyingContract: accept.asset },
        types: receiveWithAuthorizationTypes,
        primaryType: "ReceiveWithAuthorization",
        message: { from: config.payer, to: CANONICAL_ADDRESSES.erc3009DepositCollector, value: 500_000n, validAfter: 0n, validBefore: 2n ** 40n, nonce: erc3009DepositNonce(id, salt) },
      });
      await ctx.testClient.setBalance({ address: payer.account.address, value: 10n ** 18n });
      const hash = await walletClient.writeContract({
        address: CANONICAL_ADDRESSES.batchSettlement,
        abi: batchSettlementAbi,
        functionName: "deposit",
        args: [config, 500_000n, CANONICAL_ADDRESSES.erc3009DepositCollector, encodeErc3009CollectorData({ validAfter: 0n, validBefore: 2n ** 40n, salt: toHex(salt, { size: 32 }), signature })],
      });
      await publicClient.waitForTransactionReceipt({ hash });
      // not yet buried under 2 blocks: not counted
      const early = await payWith(`${n.url}/a/1`, await payer.voucherHeader(accept, 10_000n));
      expect(early.status).to.equal(402);
      expect(early.paymentRequired.error).to.equal("invalid_batch_settlement_evm_channel_not_found");
      // the reorg removes the deposit; the chain moves on
      await ctx.testClient.revert({ id: snapshot });
      await ctx.testClient.mine({ blocks: 3 });
      const later = await payWith(`${n.url}/a/1`, await payer.voucherHeader(accept, 10_000n));
      expect(later.status).to.equal(402);
      expect(later.paymentRequired.error).to.equal("invalid_batch_settlement_evm_channel_not_found");
      expect(await n.store.getChannel(id)).to.equal(undefined);

      // control: the same deposit, not reorganised, counts once buried under 2 blocks
      const signature2 = await payer.account.signTypedData({
        domain: { name: "USDC", version: "2", chainId: 31337, verifyingContract: accept.asset },
        types: receiveWithAuthorizationTypes,
        primaryType: "ReceiveWithAuthorization",
        message: { from: config.payer, to: CANONICAL_ADDRESSES.erc3009DepositCollector, value: 500_000n, validAfter: 0n, validBefore: 2n ** 40n, nonce: erc3009DepositNonce(id, 8n) },
      });
      await ctx.testClient.setBalance({ address: payer.account.address, value: 10n ** 18n });
      const hash2 = await walletClient.writeContract({
        address: CANONICAL_ADDRESSES.batchSettlement,
        abi: batchSettlementAbi,
        functionName: "deposit",
        args: [config, 500_000n, CANONICAL_ADDRESSES.erc3009DepositCollector, encodeErc3009CollectorData({ validAfter: 0n, validBefore: 2n ** 40n, salt: toHex(8n, { size: 32 }), signature: signature2 })],
      });
      await publicClient.waitForTransactionReceipt({ hash: hash2 });
      await ctx.testClient.mine({ blocks: 2 });
      const counted = await payWith(`${n.url}/a/1`, await payer.voucherHeader(accept, 10_000n));
      expect(counted.status, counted.text).to.equal(200);
      expect(counted.paymentResponse.extra.channelState.balance).to.equal("500000");
    } finally {
      await n.stop();
    }
  });
});
