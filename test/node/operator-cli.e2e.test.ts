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
import { ChannelStore } from "../../node/store/channelStore";
import { createPayer } from "../../node/payer/payer";
import { MemoryPayerStore } from "../../node/payer/store";
import { wrapFetch } from "../../node/payer/fetch";
import { localNodeConfig, startChain } from "../helpers/payeeHarness";
import { main } from "../../node/cli/cli";

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
    expect(rep.stdout.trim().split("\n")).to.deep.equal(["route,revenue_atomic,requests,payers", "GET /long/:id,180000,6,3", "GET /brief/:id,30000,3,3"]);
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
    // A channel named by an id the node does not hold is said (a typo), not passed over in silence.
    const unknown = `0x${"ab".repeat(32)}`;
    for (const cmd of ["claim", "refund"]) {
      const r = await run([cmd, "--channel", unknown, ...op]);
      expect(r.code, `${cmd}: ${r.stderr}`).to.equal(0);
      expect(r.stderr, cmd).to.include(`${unknown} is not a channel of this node (unknown, or closed already)`);
    }
  });

  it("close-all claims, refunds and then settles every channel; a re-run finds nothing left", async () => {
    const pay = wrapFetch(fetch, createPayer({ account: ctx.payers[0] as LocalAccount, store: new MemoryPayerStore(), chainId: 31337, publicClient: ctx.publicClient as never }));
    expect((await pay(`${node.url}/brief/9`)).status).to.equal(200);
    const r = await run(["close-all", "--yes", "--json", ...op]);
    expect(r.code, r.stderr).to.equal(0);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    const refunds = lines.find((l) => l.refunded)!.refunded;
    expect(lines.at(-1)).to.have.property("hash"); // the settle, last
    expect(refunds).to.have.length(3);
    const again = await run(["close-all", "--yes", "--json", ...op]);
    expect(again.stdout.trim().split("\n").map((l) => JSON.parse(l)).find((l) => l.refunded)!.refunded).to.deep.equal([]);
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
    expect(err).to.match(/serving on http:\S+ \(Ctrl-C to stop\); eip155:31337 via 127\.0\.0\.1:\d+, store \S+\/store\n/);
    const pay = wrapFetch(fetch, createPayer({ account: ctx.payers[4] as LocalAccount, store: new MemoryPayerStore(), chainId: 31337 }));
    const res = await pay(`${url}/api/hello`);
    expect(res.status).to.equal(200);
    expect(await res.json()).to.deep.equal({ hello: "world" });
    const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
    proc.kill("SIGINT");
    expect(await exited).to.equal(0);

    // A SIGTERM while the node is still starting: it comes up, then stops cleanly (exit 0, store closed).
    const early: ChildProcess = spawn(process.execPath, [BIN, "serve", "--config", config], { env: { ...process.env, TOLLWAY_PAYEE_KEY: nodeKey }, stdio: ["ignore", "pipe", "pipe"] });
    let earlyErr = "";
    const earlyExit = new Promise<number | null>((r) => early.once("exit", (c) => r(c)));
    early.stderr!.on("data", (c) => {
      const first = !earlyErr.includes("starting");
      earlyErr += c;
      if (first && earlyErr.includes("tollway: starting")) early.kill("SIGTERM");
    });
    expect(await earlyExit, earlyErr).to.equal(0);
    expect(earlyErr).to.match(/serving on/);
    const reopened = await ChannelStore.open(path.join(dir, "store"));
    await reopened.close();
    up.close();
  });
});

/**
 * Runs the CLI in this process (no chain, no ts-node start-up) with `env` set for the call; captures what
 * it writes. Resolves to -1 if it has not finished within `ms` (a command that would loop forever).
 */
async function cli(args: string[], env: Record<string, string> = {}, ms = 5_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  const out = { stdout: "", stderr: "" };
  const writes = { stdout: process.stdout.write, stderr: process.stderr.write };
  process.stdout.write = ((c: string | Uint8Array) => ((out.stdout += String(c)), true)) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => ((out.stderr += String(c)), true)) as typeof process.stderr.write;
  let timer: NodeJS.Timeout | undefined;
  try {
    const code = await Promise.race([main(["node", "tollway", ...args]), new Promise<number>((r) => (timer = setTimeout(() => r(-1), ms)))]);
    return { code, ...out };
  } finally {
    clearTimeout(timer);
    process.stdout.write = writes.stdout;
    process.stderr.write = writes.stderr;
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe("tollway CLI for operators: input checks against a mock admin API", function () {
  const ids = [1, 2, 3].map((i) => `0x${String(i).repeat(64)}`);
  const channels = ids.map((channelId) => ({ channelId, payer: "0x" + "44".repeat(20), balance: "500000", charged: "30000", claimed: "10000", exposure: "20000", secondsToFinalize: null }));
  let calls: string[];
  let server: import("node:http").Server;
  let url: string;
  let op: string[];

  before(async () => {
    const app = express().use(express.json());
    app.use((req, _res, next) => {
      calls.push(`${req.method} ${req.path.replace(/^\/admin\/api/, "")}${req.method === "POST" ? ` ${JSON.stringify(req.body)}` : ""}`);
      next();
    });
    app.get("/admin/api/channels", (_req, res) => void res.json(channels));
    app.post("/admin/api/claim", (req, res) => void res.json({ transactions: [], failed: [], claimedChannels: req.body.channels.length }));
    app.post("/admin/api/settle", (_req, res) => void res.json({}));
    app.post("/admin/api/refund", (req, res) => void res.json({ refunded: req.body.channels.map((channelId: string) => ({ channelId, refunded: "470000", claimed: "30000", hash: "0x" + "ee".repeat(32) })), failed: [] }));
    const statusOf = (over: Record<string, unknown>) => ({ ok: true, network: "eip155:31337", recovery: "native", chainHead: "10", checkpoint: "10", chainViewAgeMs: 1_000, riskWindowMs: 300_000, watcherFailures: 0, refundsPending: 0, signer: { address: "0x" + "55".repeat(20), eth: "1000000000000000000" }, receiver: { address: "0x" + "66".repeat(20), claimed: "0", settled: "0", unsettled: "0" }, channels: 3, pendingClaims: "60000", lostToWithdrawals: "0", ...over });
    app.get("/admin/api/status", (_req, res) => void res.json(statusOf({})));
    app.get("/stale/admin/api/status", (_req, res) => void res.json(statusOf({ chainViewAgeMs: 400_000, watcherFailures: 7, lostToWithdrawals: "20000", refundsPending: 1 })));
    // A claim run whose second batch fails at the node.
    let flaky = 0;
    app.get("/flaky/admin/api/channels", (_req, res) => void res.json(channels));
    app.post("/flaky/admin/api/claim", (req, res) =>
      void (flaky++ === 0
        ? res.json({ transactions: [{ hash: "0x" + "ab".repeat(32), gasUsed: "50000", channels: req.body.channels, amount: "20000" }], failed: [], claimedChannels: req.body.channels.length })
        : res.status(500).json({ error: "internal", message: "rpc unreachable" })));
    // A claim run the node stopped part-way (its RPC failed): what landed, the rows left, the cause.
    let stoppedCalls = 0;
    app.get("/stopped/admin/api/channels", (_req, res) => void res.json(channels));
    app.post("/stopped/admin/api/claim", (req, res) => {
      stoppedCalls++;
      res.json({ transactions: [{ hash: "0x" + "cd".repeat(32), gasUsed: "50000", channels: [req.body.channels[0]], amount: "20000" }], failed: [], claimedChannels: 1, error: "rpc unreachable" });
    });
    app.get("/stopped/calls", (_req, res) => void res.json(stoppedCalls));
    // A node whose refunds fail at the node (500): close-all still settles what its claims claimed.
    const refundFailCalls: string[] = [];
    app.get("/refundfail/admin/api/channels", (_req, res) => void res.json(channels));
    app.post("/refundfail/admin/api/claim", (req, res) => void (refundFailCalls.push("claim"), res.json({ transactions: [], failed: [], claimedChannels: req.body.channels.length })));
    app.post("/refundfail/admin/api/refund", (_req, res) => void (refundFailCalls.push("refund"), res.status(500).json({ error: "internal", message: "rpc unreachable" })));
    app.post("/refundfail/admin/api/settle", (_req, res) => void (refundFailCalls.push("settle"), res.json({ hash: "0x" + "ef".repeat(32), amount: "60000", gasUsed: "46000" })));
    app.get("/refundfail/calls", (_req, res) => void res.json(refundFailCalls));
    // A node without adminToken (server.ts) and one with a different token.
    app.get("/disabled/admin/api/status", (_req, res) => void res.status(403).json({ error: "admin endpoints are disabled: set adminToken" }));
    app.get("/wrong/admin/api/status", (_req, res) => void res.status(401).json({ error: "unauthorized", message: "a valid bearer token is required" }));
    server = await new Promise((r) => {
      const s = app.listen(0, "127.0.0.1", () => r(s));
    });
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    op = ["--node", url, "--token", TOKEN];
  });
  beforeEach(() => {
    calls = [];
  });
  after(() => server?.close());

  it("--batch must be a positive whole number: 0, -1, abc, 1.5, 0x10 exit 2 at once, before any call", async () => {
    for (const bad of ["0", "-1", "abc", "1.5", "0x10", "1e3", " "]) {
      for (const cmd of ["claim", "close-all"]) {
        const r = await cli([cmd, "--all", "--yes", "--batch", bad, ...op].filter((a) => cmd === "close-all" || a !== "--yes"), {}, 1_000);
        expect(r.code, `${cmd} --batch ${JSON.stringify(bad)}: ${r.stderr}`).to.equal(2);
        expect(r.stderr).to.include(`option '--batch <n>' argument '${bad}' is invalid. Use a whole number from 1 to 10000.`);
      }
    }
    expect(calls).to.deep.equal([]);
    const ok = await cli(["claim", "--all", "--batch", "2", ...op]);
    expect(ok.code, ok.stderr).to.equal(0);
    expect(calls).to.deep.equal(["GET /channels", `POST /claim {"channels":["${ids[0]}","${ids[1]}"]}`, `POST /claim {"channels":["${ids[2]}"]}`]);
  });

  it("status exits 5 and says why when the node refuses charges (chain view past the risk window, failing polls); a claim run cut by a failing batch or stopped by the node still prints what landed; close-all settles even when its refunds fail", async () => {
    const ok = await cli(["status", ...op]);
    expect(ok.code, ok.stderr).to.equal(0);
    expect(ok.stdout).to.include("3 channels, pending claims 0.06 USDC\n").and.not.include("NOT HEALTHY");
    const stale = await cli(["status", "--node", `${url}/stale`, "--token", TOKEN]);
    expect(stale.code).to.equal(5);
    expect(stale.stdout).to.include("pending claims 0.06 USDC, lost to withdrawals 0.02 USDC, 1 refunds not confirmed");
    expect(stale.stdout).to.include("NOT HEALTHY: the chain view is older than the risk window (300 s): new charges are refused");
    expect(stale.stdout).to.include("NOT HEALTHY: the last 7 chain polls failed");
    const stopped = await cli(["claim", "--all", "--batch", "1", "--node", `${url}/stopped`, "--token", TOKEN]);
    expect(stopped.code).to.equal(5);
    expect(stopped.stdout).to.include("cd".repeat(32)).and.include(`NOT CLAIMED ${ids[1]}: rpc unreachable`).and.include(`NOT CLAIMED ${ids[2]}: rpc unreachable`);
    expect(stopped.stderr).to.include("tollway: the claim run stopped: rpc unreachable");
    expect(await (await fetch(`${url}/stopped/calls`)).json()).to.equal(1); // no further batch sent
    const closing = await cli(["close-all", "--yes", "--node", `${url}/refundfail`, "--token", TOKEN]);
    expect(closing.code).to.equal(5);
    expect(closing.stderr).to.include("rpc unreachable");
    expect(closing.stdout).to.include("settled 0.06 USDC"); // settled although the refunds failed
    expect(await (await fetch(`${url}/refundfail/calls`)).json()).to.deep.equal(["claim", "refund", "settle"]);
    const cut = await cli(["claim", "--all", "--batch", "2", "--node", `${url}/flaky`, "--token", TOKEN]);
    expect(cut.code).to.equal(5);
    expect(cut.stdout).to.include("ab".repeat(32));
    expect(cut.stderr).to.include("rpc unreachable");
  });

  it("--decimals and --chain-id (and TOLLWAY_CHAIN_ID) take plain digits only", async () => {
    const dec = await cli(["status", "--decimals", "6x", ...op]);
    expect(dec.code).to.equal(2);
    expect(dec.stderr).to.include("option '--decimals <n>' argument '6x' is invalid. Use a whole number from 0 to 36.");
    expect((await cli(["claim", "--all", "--decimals", "37", ...op])).code).to.equal(2);
    for (const bad of ["1e3", "0x10", "0", "-5"]) {
      const r = await cli(["channels", "--chain-id", bad, "--store", "/nonexistent"], { TOLLWAY_PAYER_KEY: "0x" + "01".repeat(32) });
      expect(r.code, r.stderr).to.equal(2);
      expect(r.stderr).to.include(`option '--chain-id <id>' argument '${bad}' is invalid.`);
    }
    const env = await cli(["deploy", "--rpc", "http://127.0.0.1:9"], { TOLLWAY_CHAIN_ID: "0x2105" });
    expect(env.code).to.equal(2);
    expect(env.stderr).to.include("option '--chain-id <id>' value '0x2105' from env 'TOLLWAY_CHAIN_ID' is invalid.");
    expect(calls).to.deep.equal([]);
  });

  it("refund <url> with --all or --channel is ambiguous: exit 2, nothing sent to the node", async () => {
    for (const extra of [["--all"], ["--all", "--yes"], ["--channel", ids[0]!]]) {
      const r = await cli(["refund", "http://some-other-payee.example/articles/1", ...extra], { TOLLWAY_ADMIN_TOKEN: TOKEN, TOLLWAY_NODE_URL: url });
      expect(r.code, r.stderr).to.equal(2);
      expect(r.stderr).to.match(/^tollway: refund takes a <url> \(payer: .*\) or --all \/ --channel \(operator: .*\), not both\n$/);
    }
    expect(calls).to.deep.equal([]);
  });

  it("refund --all and close-all without --yes print what they would do and exit 2; with --yes they run", async () => {
    const r = await cli(["refund", "--all", ...op]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.equal(
      `tollway: would claim 0.06 USDC of unclaimed charges and refund 3 channels of ${url} (1.41 USDC back to payers)\ntollway: nothing done; run \`tollway refund --all --yes\` to do it\n`,
    );
    const c = await cli(["close-all", ...op]);
    expect(c.code).to.equal(2);
    expect(c.stderr).to.match(/^tollway: would claim 0\.06 USDC of unclaimed charges, refund 3 channels of .* \(1\.41 USDC back to payers\), and settle\ntollway: nothing done; run `tollway close-all --yes`/);
    expect(calls).to.deep.equal(["GET /channels", "GET /channels"]);
    calls = [];
    const yes = await cli(["refund", "--all", "--yes", ...op]);
    expect(yes.code, yes.stderr).to.equal(0);
    expect(calls.filter((c) => c.startsWith("POST /refund"))).to.have.length(3);
    calls = [];
    const closed = await cli(["close-all", "--yes", "--json", ...op]);
    expect(closed.code, closed.stderr).to.equal(0);
    expect(calls.map((c) => c.split(" ").slice(0, 2).join(" "))).to.deep.equal(["GET /channels", "POST /claim", "GET /channels", "POST /refund", "POST /refund", "POST /refund", "POST /settle"]);
  });

  it("--channel is a repeatable single-value option, checked as a channel id", async () => {
    const r = await cli(["claim", "--channel", ids[0]!, "--channel", ids[2]!, ...op]);
    expect(r.code, r.stderr).to.equal(0);
    expect(calls).to.deep.equal([`POST /claim {"channels":["${ids[0]}","${ids[2]}"]}`]);
    const bad = await cli(["claim", "--channel", "0xabc", ...op]);
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.include("option '--channel <id>' argument '0xabc' is invalid.");
    expect((await cli(["claim", "--all", "--channel", ids[0]!, ...op])).code).to.equal(2);
    // The variadic habit, `--channel A B`: B is a stray argument, refused (not A claimed alone, exit 0).
    const stray = await cli(["claim", "--channel", ids[0]!, ids[1]!, ...op]);
    expect(stray.code).to.equal(2);
    expect(stray.stderr).to.match(/too many arguments/);
    expect(calls).to.have.length(1);
  });

  it("tells a node with admin endpoints disabled (403) from a refused token (401)", async () => {
    const disabled = await cli(["status", "--node", `${url}/disabled`, "--token", TOKEN]);
    expect(disabled.code).to.equal(2);
    expect(disabled.stderr).to.equal("tollway: the node's admin API is not available (403: admin endpoints are disabled: set adminToken)\n");
    const wrong = await cli(["status", "--node", `${url}/wrong`, "--token", TOKEN]);
    expect(wrong.code).to.equal(2);
    expect(wrong.stderr).to.equal("tollway: the node refused the admin token\n");
  });

  it("serve prints why a config is invalid (each field) or unreadable (the OS error, where the JSON breaks)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-badcfg-"));
    const config = path.join(dir, "bad.json");
    fs.writeFileSync(config, JSON.stringify({ escrow: "0x" + "11".repeat(20), erc3009Collector: "0x" + "22".repeat(20), asset: { address: "0x" + "33".repeat(20), decimal: 18 }, withdrawDelay: 10 }));
    const bad = await cli(["serve", "--config", config]);
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.equal(
      'tollway: Invalid Tollway node configuration\n  asset: unknown key "decimal" (did you mean "decimals"?)\n  withdrawDelay: Number must be greater than or equal to 900\n',
    );
    const env = await cli(["serve", "--config", config], { TOLLWAY_PORT: "0x50" });
    expect(env.stderr).to.equal('tollway: Invalid Tollway environment override\n  TOLLWAY_PORT: must be a whole number in decimal digits, got "0x50"\n');
    const missing = await cli(["serve", "--config", path.join(dir, "missing.json")]);
    expect(missing.code).to.equal(2);
    expect(missing.stderr).to.match(/^tollway: Cannot read config file .*missing\.json\n {2}ENOENT: no such file or directory/);
    fs.writeFileSync(config, '{\n  "adminToken": "secret-token-0123456789" x\n}');
    const broken = await cli(["serve", "--config", config]);
    expect(broken.code).to.equal(2);
    expect(broken.stderr).to.equal(`tollway: Cannot read config file ${config}\n  invalid JSON at line 2, column 43: Expected ',' or '}' after property value\n`);
    fs.writeFileSync(config, '{\n  "adminToken": "secret-token-0123456789",\n  "b": tru\n}');
    expect((await cli(["serve", "--config", config])).stderr).to.not.include("secret-token");
  });
});
