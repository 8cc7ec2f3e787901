/**
 * Crash torture: kill -9 the payee node at random moments under load, restart it on the same store,
 * and check money safety after every restart and at the end. Short in `npm test` (3 crashes);
 * TOLLWAY_TORTURE=1 runs the full length (20 crashes).
 */
import { expect } from "chai";
import { spawn, type ChildProcess } from "node:child_process";
import express from "express";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import { keccak256, toHex, type LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { readChannel } from "../../node/chain/escrow";
import { CANONICAL_ADDRESSES } from "../../node/protocol/typedData";
import { localNodeConfig, startChain } from "../helpers/payeeHarness";
import { WirePayer, fetchRequirements, payWith, type Accept } from "../helpers/wirePayer";

const CRASHES = process.env.TOLLWAY_TORTURE ? 20 : 3;
const BIN = path.join(__dirname, "..", "..", "bin", "tollway.js");
const PRICE = 1_000n;
const TOKEN = "torture-admin-token-0123456789";

type Lane = {
  payer: WirePayer;
  /** The cumulative charge the node acknowledged (a 2xx with PAYMENT-RESPONSE) or proved (a corrective 402). */
  acked: bigint;
  lastAckedHeader?: string;
  /** 2xx answers with PAYMENT-RESPONSE. */
  served: number;
  /** Requests in flight when the node was killed whose charge was on disk (the corrective 402 after the restart shows it). */
  lost: number;
  deposited: boolean;
  inflight: boolean;
  /** Answers the test did not expect (any status or code but 200, the corrective 402, and a dead node). */
  unexpected: string[];
};

describe(`torture: kill -9 the payee ${CRASHES} times under load`, function () {
  this.timeout(600_000);

  it("keeps every acknowledged voucher, never serves one twice, leaves no channel locked, claims exactly what it served", async () => {
    const ctx = await startChain();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-crash-"));
    const nodeKey = keccak256(toHex("torture-node-key"));
    await ctx.testClient.setBalance({ address: privateKeyToAccount(nodeKey).address, value: 10n ** 20n });
    const upstream = express().get("/t/:n", (req, res) => void res.send(`t${req.params.n}`));
    const up = await new Promise<import("node:http").Server>((r) => {
      const s = upstream.listen(0, "127.0.0.1", () => r(s));
    });
    const config = path.join(dir, "tollway.json");
    fs.writeFileSync(config, JSON.stringify({
      ...localNodeConfig(ctx),
      storePath: path.join(dir, "store"),
      adminToken: TOKEN,
      claims: { onShutdown: false },
      // A deposit killed between its journal entry and its send is re-priced by the next deposit soon, not in 30 s.
      transactions: { repriceAfterMs: 1_000 },
      proxy: { "GET /t/*": { upstream: `http://127.0.0.1:${(up.address() as AddressInfo).port}`, price: "$0.001" } },
      logLevel: "silent",
    }));

    let proc: ChildProcess | undefined;
    let url = "";
    // Whatever fails, the node, the upstream and the chain stop (a hung node would keep mocha alive).
    const cleanup = async () => {
      proc?.kill("SIGKILL");
      up.close();
      await ctx.chain.stop();
    };
    try {
    const startNode = async () => {
      const spawned = Date.now();
      const p = spawn(process.execPath, [BIN, "serve", "--config", config], { env: { ...process.env, TOLLWAY_PAYEE_KEY: nodeKey }, stdio: ["ignore", "ignore", "pipe"] });
      proc = p;
      let err = "";
      url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`serve did not start within 30 s: ${err}`)), 30_000);
        p.stderr!.on("data", (c) => {
          err += c;
          const m = /serving on (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
          if (m) {
            clearTimeout(timer);
            resolve(m[1]!);
          }
        });
        p.once("exit", (code) => {
          clearTimeout(timer);
          reject(new Error(`serve exited ${code}: ${err}`));
        });
      });
      return { spawned, serving: Date.now() };
    };

    const lanes: Lane[] = ctx.payers.map((a, i) => ({ payer: new WirePayer(a as LocalAccount, privateKeyToAccount(keccak256(toHex(`torture-session-${i}`)))), acked: 0n, served: 0, lost: 0, deposited: false, inflight: false, unexpected: [] }));
    let accept: Accept | undefined;
    let running = true;
    let crashing = false;
    /** When a lane last got a paid 2xx (ms). */
    const lastServedAt = new Map<Lane, number>();

    const lane = async (l: Lane) => {
      while (running) {
        if (crashing || !url) {
          await new Promise((r) => setTimeout(r, 20));
          continue;
        }
        try {
          if (!accept) accept = (await fetchRequirements(`${url}/t/0`)).accept;
          const header = l.deposited ? await l.payer.voucherHeader(accept!, l.acked + PRICE) : await l.payer.depositHeader(accept!, 5_000_000n, PRICE);
          l.inflight = true;
          const r = await payWith(`${url}/t/${l.served}`, header).finally(() => (l.inflight = false));
          if (r.status === 200 && r.paymentResponse) {
            const charged = BigInt(r.paymentResponse.extra.channelState.chargedCumulativeAmount);
            if (charged !== l.acked + PRICE) l.unexpected.push(`200 with charged ${charged} after ${l.acked}`);
            l.deposited = true;
            l.acked = charged;
            l.lastAckedHeader = header;
            l.served++;
            lastServedAt.set(l, Date.now());
          } else if (r.status === 402 && r.paymentRequired?.error === "invalid_batch_settlement_evm_cumulative_amount_mismatch") {
            // A request killed in flight whose charge reached the disk first: exactly one price more than
            // acknowledged (never more: that would be a charge for nothing; never less: a lost acknowledgement).
            const charged = BigInt(r.paymentRequired.accepts[0].extra.channelState.chargedCumulativeAmount);
            if (charged !== l.acked + PRICE) l.unexpected.push(`corrective 402 with charged ${charged} after ${l.acked}`);
            l.deposited = true;
            l.acked = charged;
            l.lost++;
          } else if (r.status === 503 && r.paymentRequired?.error === "invalid_batch_settlement_evm_channel_state_read_failed") {
            // Right after a restart the watcher may still be mirroring this channel's last events: retry.
            await new Promise((r) => setTimeout(r, 20));
          } else {
            l.unexpected.push(`${r.status} ${r.paymentRequired?.error ?? r.text.slice(0, 80)}`);
          }
        } catch {
          await new Promise((r) => setTimeout(r, 20)); // the node is down: retry
        }
      }
    };

    const delays: number[] = [];
    let inflightAtKill = 0;
    const recovery: Array<{ sinceSpawn: number; sinceServing: number }> = [];
    const load = Promise.all(lanes.map(lane));
    try {
      await startNode();
      for (let c = 0; c < CRASHES; c++) {
        const delay = Math.round(250 + Math.random() * 500);
        delays.push(delay);
        await new Promise((r) => setTimeout(r, delay));
        crashing = true;
        inflightAtKill += lanes.filter((l) => l.inflight).length;
        const exited = new Promise((r) => proc!.once("exit", r));
        proc!.kill("SIGKILL");
        await exited;
        url = "";
        const snapshot = lanes.map((l) => ({ acked: l.acked, header: l.lastAckedHeader }));
        const { spawned, serving } = await startNode();
        // every acknowledged voucher survived: replaying it is refused, never served twice
        for (const s of snapshot) {
          if (!s.header) continue;
          const replay = await payWith(`${url}/t/replay`, s.header);
          expect(replay.status, "a replay of an acknowledged voucher must be refused").to.equal(402);
          expect(replay.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_amount_mismatch");
          expect(BigInt(replay.paymentRequired.accepts[0].extra.channelState.chargedCumulativeAmount) >= s.acked).to.equal(true);
        }
        // No channel is left locked: every lane is paid again (a 2xx), the first of them soon after the start.
        const restarted = Date.now();
        crashing = false;
        const deadline = restarted + 10_000;
        while (lanes.some((l) => (lastServedAt.get(l) ?? 0) < restarted) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
        const stuck = lanes.filter((l) => (lastServedAt.get(l) ?? 0) < restarted).map((l) => `${l.payer.account.address}: ${l.unexpected.slice(-3).join("; ")}`);
        expect(stuck, `lanes not paid again within 10 s of restart ${c + 1}`).to.deep.equal([]);
        const firstPaid = Math.min(...lanes.map((l) => lastServedAt.get(l)!));
        recovery.push({ sinceSpawn: firstPaid - spawned - (restarted - serving), sinceServing: firstPaid - restarted });
      }
      await new Promise((r) => setTimeout(r, 500));
    } finally {
      running = false;
      await load;
    }
    for (const l of lanes) expect(l.unexpected, `${l.payer.account.address}: unexpected answers`).to.deep.equal([]);
    // A paid request is answered within a second of the node's start (the replay checks above excluded).
    expect(Math.max(...recovery.map((r) => r.sinceServing))).to.be.below(1000);
    // The kills landed under load: requests were in flight at them.
    expect(inflightAtKill, `kill delays ${delays.join(", ")} ms`).to.be.greaterThan(0);

    // Claim everything and compare, lane by lane: on chain == the node's charges == its ledger == one
    // price per paid answer plus one per request that died in flight with its charge on disk (at most one
    // per crash), and nothing acknowledged is missing.
    const auth = { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" };
    const claim = await (await fetch(`${url}/admin/api/claim`, { method: "POST", headers: auth, body: "{}" })).json();
    expect(claim.failed).to.deep.equal([]);
    const channels = await (await fetch(`${url}/admin/api/channels`, { headers: auth })).json();
    const byPayer = await (await fetch(`${url}/admin/api/report?by=payer`, { headers: auth })).json();
    let totalServed = 0;
    let totalLost = 0;
    for (const l of lanes) {
      const id = l.payer.channelId(accept!);
      const row = channels.find((c: any) => c.channelId === id);
      const onchain = await readChannel(ctx.publicClient as never, CANONICAL_ADDRESSES.batchSettlement, id);
      expect(onchain.totalClaimed).to.equal(BigInt(row.charged));
      const ledger = byPayer.find((r: any) => r.key.toLowerCase() === l.payer.account.address.toLowerCase());
      expect(BigInt(ledger.revenue)).to.equal(BigInt(row.charged));
      expect(BigInt(row.charged), `${l.payer.account.address}: served ${l.served}, lost ${l.lost}`).to.equal(PRICE * BigInt(l.served + l.lost));
      expect(l.lost).to.be.at.most(CRASHES);
      totalServed += l.served;
      totalLost += l.lost;
    }
    console.log(`      crash torture: ${CRASHES} kill -9 (delays ${delays.join(", ")} ms; ${inflightAtKill} requests in flight at the kills, ${totalLost} of them charged before the kill), ${totalServed} paid responses; first paid answer after a restart: max ${Math.max(...recovery.map((r) => r.sinceServing))} ms after serving, ${Math.max(...recovery.map((r) => r.sinceSpawn))} ms after spawn`);
    } finally {
      await cleanup();
    }
  });
});
