import { expect } from "chai";
import { spawn, type ChildProcess } from "node:child_process";
import express from "express";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import pino from "pino";
import { keccak256, toHex, type LocalAccount } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { parseNodeConfig } from "../../node/payee/config";
import { startPayeeNode, type PayeeNode } from "../../node/payee/server";
import { createPayer } from "../../node/payer/payer";
import { MemoryPayerStore } from "../../node/payer/store";
import { wrapFetch } from "../../node/payer/fetch";
import { localNodeConfig, startChain } from "../helpers/payeeHarness";

const BIN = path.join(__dirname, "..", "..", "bin", "tollway.js");
const TOKEN = "operator-token-0123456789abcdef";

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("exit", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

describe("tollway CLI for operators: status, channels, report, claim, settle, refund, close-all, deploy, serve", function () {
  this.timeout(300_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: PayeeNode;
  const nodeKey = keccak256(toHex("operator-node-key"));
  let op: string[];

  before(async () => {
    ctx = await startChain();
    await ctx.testClient.setBalance({ address: privateKeyToAccount(nodeKey).address, value: 10n ** 20n });
    node = await startPayeeNode(
      parseNodeConfig({
        ...localNodeConfig(ctx),
        storePath: fs.mkdtempSync(path.join(os.tmpdir(), "tollway-op-")),
        adminToken: TOKEN,
        routes: { "GET /long/:id": "$0.03", "GET /brief/:id": "$0.01" },
        claims: { onShutdown: false },
      }, {}),
      {
        key: nodeKey,
        logger: pino({ level: "silent" }),
        install: (app) => {
          app.get("/long/:id", (_req, res) => void res.send("long"));
          app.get("/brief/:id", (_req, res) => void res.send("brief"));
        },
      },
    );
    for (const [i, account] of ctx.payers.slice(0, 3).entries()) {
      const payer = createPayer({ account: account as LocalAccount, store: new MemoryPayerStore(), chainId: 31337, policy: { depositMultiplier: 20 } });
      const pay = wrapFetch(fetch, payer);
      for (let k = 0; k <= i; k++) expect((await pay(`${node.url}/long/${k}`)).status).to.equal(200);
      expect((await pay(`${node.url}/brief/${i}`)).status).to.equal(200);
    }
    op = ["--node", node.url, "--token", TOKEN];
  });
  after(async () => {
    await node?.stop();
    await ctx?.chain.stop();
  });

  it("status, channels (receiver side) and report answer with the token, and refuse without it", async () => {
    const s = await run(["status", "--json", ...op]);
    expect(s.code, s.stderr).to.equal(0);
    const st = JSON.parse(s.stdout);
    expect(st).to.include({ ok: true, network: "eip155:31337", channels: 3, pendingClaims: "210000" });
    const denied = await run(["status", "--node", node.url, "--token", "wrong-token-wrong-token"]);
    expect(denied.code).to.equal(2);
    expect(denied.stderr).to.match(/refused the admin token/);
    const ch = await run(["channels", "--json", ...op]);
    const rows = JSON.parse(ch.stdout);
    expect(rows).to.have.length(3);
    expect(rows[0].exposure).to.equal("100000"); // riskiest (largest exposure) first
    const rep = await run(["report", "--by", "route", "--csv", ...op]);
    expect(rep.stdout.trim().split("\n")).to.deep.equal(["route,revenue,requests,payers", "GET /long/:id,180000,6,3", "GET /brief/:id,30000,3,3"]);
    const human = await run(["report", "--by", "payer", ...op]);
    expect(human.stdout).to.match(/0\.21 USDC {2}total/);
  });

  it("claim --all prints transactions and gas; settle pays the receiver; both are safe to re-run", async () => {
    const c = await run(["claim", "--all", ...op]);
    expect(c.code, c.stderr).to.equal(0);
    expect(c.stdout).to.match(/claim tx 0x[0-9a-f]{64}: 3 channels, 0\.21 USDC, gas \d+/);
    expect(c.stderr).to.match(/claiming: 3\/3/); // plain progress lines when not on a terminal
    const again = await run(["claim", "--all", ...op]);
    expect(again.stdout).to.match(/claimed 0 channels in 0 transactions/);
    const s = await run(["settle", "--json", ...op]);
    expect(JSON.parse(s.stdout).amount).to.equal("210000");
    const s2 = await run(["settle", ...op]);
    expect(s2.stdout).to.equal("nothing to settle\n");
  });

  it("close-all claims, settles and refunds every channel; a re-run finds nothing left", async () => {
    const pay = wrapFetch(fetch, createPayer({ account: ctx.payers[0] as LocalAccount, store: new MemoryPayerStore(), chainId: 31337, publicClient: ctx.publicClient as never }));
    expect((await pay(`${node.url}/brief/9`)).status).to.equal(200);
    const r = await run(["close-all", "--json", ...op]);
    expect(r.code, r.stderr).to.equal(0);
    const refunds = JSON.parse(r.stdout.trim().split("\n").pop()!).refunded;
    expect(refunds).to.have.length(3);
    const again = await run(["close-all", "--json", ...op]);
    expect(JSON.parse(again.stdout.trim().split("\n").pop()!).refunded).to.deep.equal([]);
  });

  it("deploy writes deployments/<chainId>.json; serve runs a reverse-proxy node from a config file", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-deploy-"));
    const d = await run(["deploy", "--rpc", ctx.chain.url, "--out", dir, "--json"], { TOLLWAY_DEPLOYER_KEY: nodeKey });
    expect(d.code, d.stderr).to.equal(0);
    const dep = JSON.parse(fs.readFileSync(path.join(dir, "31337.json"), "utf8"));
    expect(dep.escrow).to.equal(JSON.parse(d.stdout).escrow);

    const upstream = express().get("/api/hello", (_req, res) => void res.json({ hello: "world" }));
    const up = await new Promise<import("node:http").Server>((r) => {
      const s = upstream.listen(0, "127.0.0.1", () => r(s));
    });
    const config = path.join(dir, "tollway.json");
    fs.writeFileSync(config, JSON.stringify({
      ...localNodeConfig(ctx),
      storePath: path.join(dir, "store"),
      proxy: { "GET /api/*": { upstream: `http://127.0.0.1:${(up.address() as AddressInfo).port}`, price: "$0.01" } },
      logLevel: "silent",
    }));
    const proc: ChildProcess = spawn(process.execPath, [BIN, "serve", "--config", config], { env: { ...process.env, TOLLWAY_PAYEE_KEY: nodeKey }, stdio: ["ignore", "pipe", "pipe"] });
    let err = "";
    const url = await new Promise<string>((resolve, reject) => {
      proc.stderr!.on("data", (c) => {
        err += c;
        const m = /serving on (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
        if (m) resolve(m[1]!);
      });
      proc.once("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
    });
    const pay = wrapFetch(fetch, createPayer({ account: ctx.payers[4] as LocalAccount, store: new MemoryPayerStore(), chainId: 31337 }));
    const res = await pay(`${url}/api/hello`);
    expect(res.status).to.equal(200);
    expect(await res.json()).to.deep.equal({ hello: "world" });
    const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
    proc.kill("SIGINT");
    expect(await exited).to.equal(0);
    up.close();
  });
});
