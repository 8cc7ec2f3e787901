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

type Lane = { payer: WirePayer; acked: bigint; lastAckedHeader?: string; served: number; deposited: boolean };

describe(`torture: kill -9 the payee ${CRASHES} times under load`, function () {
  this.timeout(600_000);

  it("keeps every acknowledged voucher, never serves one twice, leaves no channel locked, claims exactly what it charged", async () => {
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
      proxy: { "GET /t/*": { upstream: `http://127.0.0.1:${(up.address() as AddressInfo).port}`, price: "$0.001" } },
      logLevel: "silent",
    }));

    let proc: ChildProcess | undefined;
    let url = "";
    const startNode = async () => {
      const p = spawn(process.execPath, [BIN, "serve", "--config", config], { env: { ...process.env, TOLLWAY_PAYEE_KEY: nodeKey }, stdio: ["ignore", "ignore", "pipe"] });
      let err = "";
      url = await new Promise<string>((resolve, reject) => {
        p.stderr!.on("data", (c) => {
          err += c;
          const m = /serving on (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
          if (m) resolve(m[1]!);
        });
        p.once("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
      });
      proc = p;
      return Date.now();
    };

    const lanes: Lane[] = ctx.payers.map((a, i) => ({ payer: new WirePayer(a as LocalAccount, privateKeyToAccount(keccak256(toHex(`torture-session-${i}`)))), acked: 0n, served: 0, deposited: false }));
    let accept: Accept | undefined;
    const busy: string[] = [];
    let running = true;
    let crashing = false;

    const lane = async (l: Lane) => {
      while (running) {
        if (crashing || !url) {
          await new Promise((r) => setTimeout(r, 20));
          continue;
        }
        try {
          if (!accept) accept = (await fetchRequirements(`${url}/t/0`)).accept;
          const header = l.deposited ? await l.payer.voucherHeader(accept!, l.acked + PRICE) : await l.payer.depositHeader(accept!, 5_000_000n, PRICE);
          const r = await payWith(`${url}/t/${l.served}`, header);
          if (r.status === 200 && r.paymentResponse) {
            l.deposited = true;
            l.acked = BigInt(r.paymentResponse.extra.channelState.chargedCumulativeAmount);
            l.lastAckedHeader = header;
            l.served++;
          } else if (r.status === 402 && r.paymentRequired?.error === "invalid_batch_settlement_evm_cumulative_amount_mismatch") {
            // the server committed a charge whose response died with the process: adopt its state
            l.deposited = true;
            l.acked = BigInt(r.paymentRequired.accepts[0].extra.channelState.chargedCumulativeAmount);
          } else if (r.paymentRequired?.error === "invalid_batch_settlement_evm_channel_busy") {
            busy.push(l.payer.account.address);
          }
        } catch {
          await new Promise((r) => setTimeout(r, 20)); // the node is down: retry
        }
      }
    };

    await startNode();
    const load = Promise.all(lanes.map(lane));
    const recovery: number[] = [];
    for (let c = 0; c < CRASHES; c++) {
      await new Promise((r) => setTimeout(r, 250 + Math.random() * 500));
      crashing = true;
      proc!.kill("SIGKILL");
      await new Promise((r) => proc!.once("exit", r));
      url = "";
      const snapshot = lanes.map((l) => ({ acked: l.acked, header: l.lastAckedHeader }));
      const ready = await startNode();
      // the node serves again within a second of starting
      const probe = await payWith(`${url}/t/probe`, "");
      expect(probe.status).to.equal(402);
      recovery.push(Date.now() - ready);
      // every acknowledged voucher survived: replaying it is refused, never served twice
      for (const s of snapshot) {
        if (!s.header) continue;
        const replay = await payWith(`${url}/t/replay`, s.header);
        expect(replay.status, "a replay of an acknowledged voucher must be refused").to.equal(402);
        expect(replay.paymentRequired.error).to.equal("invalid_batch_settlement_evm_cumulative_amount_mismatch");
        expect(BigInt(replay.paymentRequired.accepts[0].extra.channelState.chargedCumulativeAmount) >= s.acked).to.equal(true);
      }
      crashing = false;
    }
    await new Promise((r) => setTimeout(r, 500));
    running = false;
    await load;
    expect(busy, "no channel may stay locked across a restart").to.deep.equal([]);
    expect(Math.max(...recovery)).to.be.below(1000);

    // claim everything and compare: on-chain claims == the node's charges == its ledger, and the charges
    // are what was acknowledged plus at most one in-flight request per crash
    const auth = { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" };
    const claim = await (await fetch(`${url}/admin/api/claim`, { method: "POST", headers: auth, body: "{}" })).json();
    expect(claim.failed).to.deep.equal([]);
    const channels = await (await fetch(`${url}/admin/api/channels`, { headers: auth })).json();
    const byPayer = await (await fetch(`${url}/admin/api/report?by=payer`, { headers: auth })).json();
    let totalServed = 0;
    for (const l of lanes) {
      const id = l.payer.channelId(accept!);
      const row = channels.find((c: any) => c.channelId === id);
      const onchain = await readChannel(ctx.publicClient as never, CANONICAL_ADDRESSES.batchSettlement, id);
      expect(onchain.totalClaimed).to.equal(BigInt(row.charged));
      const ledger = byPayer.find((r: any) => r.key.toLowerCase() === l.payer.account.address.toLowerCase());
      expect(BigInt(ledger.revenue)).to.equal(BigInt(row.charged));
      expect(BigInt(row.charged) >= l.acked).to.equal(true);
      expect(BigInt(row.charged) - l.acked <= PRICE * BigInt(CRASHES)).to.equal(true);
      totalServed += l.served;
    }
    console.log(`      crash torture: ${CRASHES} kill -9, ${totalServed} paid responses, recovery to first answer max ${Math.max(...recovery)} ms`);
    proc!.kill("SIGKILL");
    up.close();
    await ctx.chain.stop();
  });
});
