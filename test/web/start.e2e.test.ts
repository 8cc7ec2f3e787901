import { expect } from "chai";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

describe("npm start: prints the URLs, writes the demo file, stops everything on Ctrl-C", function () {
  this.timeout(180_000);

  it("serves the reader page, then SIGINT stops the node and the chain and exits 0", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-start-"));
    const root = path.join(__dirname, "..", "..");
    const proc = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", path.join(root, "scripts", "start.ts")], {
      cwd: root,
      env: { ...process.env, PORT: "0", TOLLWAY_DEMO_DIR: dir },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    proc.stderr!.on("data", (d) => (out += d));
    await new Promise<void>((resolve, reject) => {
      proc.stdout!.on("data", (d) => {
        out += d;
        if (out.includes("Press Ctrl-C")) resolve();
      });
      proc.once("exit", (c) => reject(new Error(`npm start exited early (${c}): ${out}`)));
    });
    const reader = /Reader page\s+(http:\/\/127\.0\.0\.1:\d+\/)/.exec(out)![1]!;
    const rpc = /Chain RPC\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(out)![1]!;
    expect(out).to.match(/Operator dashboard\s+http:\/\/127\.0\.0\.1:\d+\/dashboard#token=/);
    const page = await fetch(reader);
    expect(page.status).to.equal(200);
    expect(await page.text()).to.include("Unlock any piece for a few cents");
    const info = JSON.parse(fs.readFileSync(path.join(dir, "demo.json"), "utf8"));
    expect(info.urls.reader).to.equal(reader);

    const exited = new Promise<number | null>((r) => proc.once("exit", (c) => r(c)));
    proc.kill("SIGINT");
    expect(await exited).to.equal(0);
    expect(out).to.include("Stopped.");
    // the chain is gone too
    const alive = await fetch(rpc, { method: "POST", headers: { "Content-Type": "application/json" }, body: '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' }).then(() => true, () => false);
    expect(alive).to.equal(false);
  });
});
