import { expect } from "chai";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { keccak256, toHex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { clientsFor, hardhatTestAccount } from "../helpers/chainNode";
import { startChain, startPayee } from "../helpers/payeeHarness";

const BIN = path.join(__dirname, "..", "..", "bin", "tollway.js");

function run(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const base = { ...process.env };
    delete base.TOLLWAY_PAYER_KEY;
    const p = spawn(process.execPath, [BIN, ...args], { env: { ...base, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("exit", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

describe("tollway CLI for wallet users: pay, channels, deposit, refund, withdraw", function () {
  this.timeout(240_000);
  let ctx: Awaited<ReturnType<typeof startChain>>;
  let node: Awaited<ReturnType<typeof startPayee>>;
  const key = keccak256(toHex("tollway-cli-test-payer")); // a fresh local key, funded below
  const address = privateKeyToAccount(key).address;
  let env: Record<string, string>;
  let common: string[];

  before(async () => {
    ctx = await startChain();
    node = await startPayee(ctx, { "GET /articles/:id": "$0.01", "POST /api": "$0.02" }, (app) => {
      app.get("/articles/:id", (req, res) => void res.send(`article ${req.params.id}`));
      app.post("/api", (req, res) => {
        let body = "";
        req.on("data", (d) => (body += d));
        req.on("end", () => void res.json({ echo: body, type: req.headers["content-type"], trace: req.headers["x-trace"] }));
      });
    });
    const { walletClient, publicClient } = clientsFor(ctx.chain.url, hardhatTestAccount(0));
    const hash = await walletClient.writeContract({
      address: ctx.deployment.token!,
      abi: [{ type: "function", name: "mint", stateMutability: "nonpayable", inputs: [{ name: "to", type: "address" }, { name: "amount", type: "uint256" }], outputs: [] }] as const,
      functionName: "mint",
      args: [address, 10_000_000n],
    });
    await publicClient.waitForTransactionReceipt({ hash });
    await ctx.testClient.setBalance({ address, value: 10n ** 19n }); // gas for the timed withdrawal only
    env = { TOLLWAY_PAYER_KEY: key };
    common = ["--rpc", ctx.chain.url, "--store", fs.mkdtempSync(path.join(os.tmpdir(), "tollway-cli-"))];
  });
  after(async () => {
    await node?.stop();
    await ctx?.chain.stop();
  });

  it("pay prints the body on stdout and the charge and balance on stderr; curl-like -X/-H/-d", async () => {
    const r = await run(["pay", `${node.url}/articles/7`, "--max", "0.05", "--max-deposit", "2", ...common], env);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal("article 7");
    expect(r.stderr).to.match(/paid 0\.01 USDC \(with a deposit\); channel balance 0\.49 USDC left of 0\.5 USDC/);
    // The --help example's order: a repeatable -H (not variadic) leaves the URL after it alone.
    const post = await run(["pay", "-X", "POST", "-d", '{"q":1}', "-H", "X-Trace: 1", "-H", "Content-Type: application/json", `${node.url}/api`, ...common], env);
    expect(post.code, post.stderr).to.equal(0);
    expect(JSON.parse(post.stdout)).to.deep.equal({ echo: '{"q":1}', type: "application/json", trace: "1" });
    expect(post.stderr).to.match(/paid 0\.02 USDC; channel balance 0\.47 USDC/);
    expect(r.stderr + post.stderr).to.not.include(key.slice(2));
  });

  it("refuses beyond --max with exit code 3 and a one-line message, no stack trace", async () => {
    const r = await run(["pay", `${node.url}/articles/8`, "--max", "0.001", ...common], env);
    expect(r.code).to.equal(3);
    expect(r.stderr.trim().split("\n")).to.have.length(1);
    expect(r.stderr).to.match(/^tollway: price 10000 exceeds the maximum per request 1000/);
    expect(r.stdout).to.equal("");
    // --asset pins the token: a payee naming another one is refused the same way.
    const other = await run(["pay", `${node.url}/articles/8`, "--asset", "0x0000000000000000000000000000000000000bad", ...common], env);
    expect(other.code).to.equal(3);
    expect(other.stderr).to.match(/^tollway: asset 0x\w+ is not in the allowed list/);
    // --max-withdraw-delay: a payee whose channel would lock the deposit longer (900 s here) is refused.
    const locked = await run(["pay", `${node.url}/articles/8`, "--max-withdraw-delay", "600", ...common], env);
    expect(locked.code).to.equal(3);
    expect(locked.stderr).to.match(/^tollway: the payee's withdraw delay of 900 s exceeds the maximum 600 s/);
  });

  it("reads the key from a 0600 key file, and refuses a key file others can read", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-key-"));
    const file = path.join(dir, "payer.key");
    fs.writeFileSync(file, key, { mode: 0o600 });
    const ok = await run(["channels", "--key-file", file, ...common], {});
    expect(ok.code, ok.stderr).to.equal(0);
    fs.chmodSync(file, 0o644);
    const bad = await run(["channels", "--key-file", file, ...common], {});
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.match(/must be readable by its owner only/);
    expect(bad.stderr + ok.stdout).to.not.include(key.slice(2));
    // An exported key and an explicit --key-file: refused, not silently the exported one.
    fs.chmodSync(file, 0o600);
    const both = await run(["channels", "--key-file", file, ...common], { TOLLWAY_PAYER_KEY: keccak256(toHex("another-wallet")) });
    expect(both.code).to.equal(2);
    expect(both.stderr).to.equal(`tollway: Both TOLLWAY_PAYER_KEY and --key-file are set\n  Unset TOLLWAY_PAYER_KEY to use ${file}, or drop --key-file.\n`);
    const missing = await run(["channels", "--key-file", path.join(dir, "missing.key"), ...common], {});
    expect(missing.code).to.equal(2);
    expect(missing.stderr).to.match(/^tollway: Cannot read key file .*missing\.key\n  ENOENT/);
  });

  it("deposit tops up, channels --json reports balance and charges, refund returns the rest", async () => {
    const d = await run(["deposit", `${node.url}/articles/9`, "1.00", ...common], env);
    expect(d.code, d.stderr).to.equal(0);
    const c = await run(["channels", "--json", ...common], env);
    expect(c.code, c.stderr).to.equal(0);
    const rows = JSON.parse(c.stdout);
    expect(rows).to.have.length(1);
    expect(rows[0]).to.include({ balance: "1500000", charged: "40000", claimed: "0", withdrawal: null });
    const f = await run(["refund", `${node.url}/articles/1`, "--json", ...common], env);
    expect(f.code, f.stderr).to.equal(0);
    expect(JSON.parse(f.stdout)).to.deep.equal({ refunded: "1460000" });
  });

  it("withdraw starts the timed withdrawal on chain and --finalize completes it after the delay", async () => {
    const store = ["--rpc", ctx.chain.url, "--store", fs.mkdtempSync(path.join(os.tmpdir(), "tollway-cli-w-"))];
    const salted = { ...env };
    expect((await run(["pay", `${node.url}/articles/1`, ...store], salted)).code).to.equal(0);
    // the channel above was refunded; a new request re-deposited into the same channel id
    const w = await run(["withdraw", `${node.url}/articles/1`, "--json", ...store], salted);
    expect(w.code, w.stderr).to.equal(0);
    expect(JSON.parse(w.stdout)).to.include({ delaySeconds: 900 });
    // It asks for everything unclaimed on chain (the escrow pays out only what is still unclaimed at finalize).
    const [row] = JSON.parse((await run(["channels", "--json", ...store], salted)).stdout);
    expect(JSON.parse(w.stdout).amount).to.equal((BigInt(row.balance) - BigInt(row.claimed)).toString());
    const early = await run(["withdraw", `${node.url}/articles/1`, "--finalize", ...store], salted);
    expect(early.code).to.equal(5); // the chain refuses: delay not elapsed
    expect(early.stderr).to.match(/^tollway: the contract refused: BatchSettlementWithdrawDelayNotElapsed\(/);
    await ctx.testClient.increaseTime({ seconds: 901 });
    await ctx.testClient.mine({ blocks: 1 });
    // By channel id, from the local store: the escape hatch works without the payee answering.
    const listed = await run(["channels", "--json", ...store], salted);
    const channelId = JSON.parse(listed.stdout)[0].channelId as string;
    expect(channelId).to.match(/^0x[0-9a-f]{64}$/);
    const fin = await run(["withdraw", channelId, "--finalize", "--json", ...store], salted);
    expect(fin.code, fin.stderr).to.equal(0);
    expect(JSON.parse(fin.stdout).finalized).to.match(/^0x[0-9a-f]{64}$/);
  });
});
