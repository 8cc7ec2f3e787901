import { expect } from "chai";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { hexToBytes, keccak256, toHex, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { recoverSigner } from "../../node/payee/recover";

const root = path.join(__dirname, "..", "..");

/**
 * Runs `script` in a Node process where `require("secp256k1/bindings")` fails, as on a host without the
 * prebuilt binding; returns its stdout (JSON) and stderr.
 */
function withoutNativeBinding(script: string): { out: unknown; stderr: string } {
  const block = `const M = require("module"); const resolve = M._resolveFilename; M._resolveFilename = function (req, ...rest) { if (req === "secp256k1/bindings") throw new Error("no prebuilt binding for this platform"); return resolve.call(this, req, ...rest); };`;
  const r = spawnSync(process.execPath, ["-e", `${block}\nrequire("ts-node").register({ transpileOnly: true });\n${script}`], { cwd: root, encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return { out: JSON.parse(r.stdout.trim().split("\n").pop()!), stderr: r.stderr };
}

describe("signature recovery without the native binding: the noble fallback, with a warning", function () {
  this.timeout(90_000);

  it("recovers the same signers, refuses the same malformed and malleable signatures, recovers in-thread (no pool) and says so on stderr", async () => {
    const account = privateKeyToAccount(keccak256(toHex("fallback-key")));
    const signed: Array<{ digest: Hex; signature: Hex }> = [];
    for (let i = 0; i < 6; i++) {
      const digest = keccak256(toHex(`fallback-digest-${i}`));
      signed.push({ digest, signature: await account.sign({ hash: digest }) });
    }
    const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
    const first = signed[0]!.signature;
    const highS = `${first.slice(0, 66)}${(N - BigInt(`0x${first.slice(66, 130)}`)).toString(16).padStart(64, "0")}${first.slice(130) === "1b" ? "1c" : "1b"}` as Hex;
    const bad = [
      { digest: signed[0]!.digest, signature: highS }, // the malleable twin
      { digest: signed[1]!.digest, signature: `${signed[1]!.signature}00` as Hex }, // 66 bytes
      { digest: signed[2]!.digest, signature: `${signed[2]!.signature.slice(0, -2)}05` as Hex }, // v = 5
    ];
    const all = [...signed, ...bad];
    const expected = all.map((c) => recoverSigner(hexToBytes(c.digest), c.signature) ?? null); // native, in this process
    expect(expected).to.deep.equal([...Array(6).fill(account.address.toLowerCase()), null, null, null]);
    const { out, stderr } = withoutNativeBinding(`
      const { recoverSigner, recoveryBackend } = require("./node/payee/recover");
      const { configureRecoveryThreads, recoveryThreads } = require("./node/payee/recoverPool");
      const { hexToBytes } = require("viem");
      configureRecoveryThreads(2);
      const cases = ${JSON.stringify(all)};
      console.log(JSON.stringify({ backend: recoveryBackend(), threads: recoveryThreads(), signers: cases.map((c) => recoverSigner(hexToBytes(c.digest), c.signature) ?? null) }));
    `);
    expect(out).to.deep.equal({ backend: "noble", threads: 0, signers: expected });
    expect(stderr).to.include("native secp256k1 unavailable (no prebuilt binding for this platform); using the slower noble fallback");
  });
});
