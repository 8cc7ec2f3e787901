import { expect } from "chai";
import { hexToBytes, keccak256, toHex, type Hex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { recoverSigner } from "../../node/payee/recover";
import { configureRecoveryThreads, recoverSignerAsync, recoveryThreads } from "../../node/payee/recoverPool";

const secp = require("secp256k1/bindings") as { ecdsaSign(msg: Uint8Array, key: Uint8Array): { signature: Uint8Array; recid: number } };

type Case = { digest: Uint8Array; signature: Hex; expected: Hex | undefined };

/** Valid signatures from a few keys, plus every kind of bad one the escrow refuses. */
function corpus(n: number): Case[] {
  const keys = [1, 2, 3].map((i) => keccak256(toHex(`pool-key-${i}`)));
  const out: Case[] = [];
  for (let i = 0; i < n; i++) {
    const digest = hexToBytes(keccak256(toHex(`pool-digest-${i}`)));
    const key = keys[i % keys.length]!;
    const { signature, recid } = secp.ecdsaSign(digest, hexToBytes(key));
    let sig = `0x${Buffer.from(signature).toString("hex")}${(recid + 27).toString(16)}` as Hex;
    let expected: Hex | undefined = privateKeyToAccount(key).address.toLowerCase() as Hex;
    switch (i % 7) {
      case 1: // flipped recovery id: recovers to someone else
        sig = `${sig.slice(0, -2)}${(28 - recid).toString(16)}` as Hex;
        expected = recoverSigner(digest, sig);
        break;
      case 3: // high s (malleable twin): refused before recovery
        {
          const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
          const s = BigInt(`0x${sig.slice(66, 130)}`);
          sig = `${sig.slice(0, 66)}${(N - s).toString(16).padStart(64, "0")}${(55 - recid).toString(16)}` as Hex;
          expected = undefined;
        }
        break;
      case 5: // wrong length
        sig = sig.slice(0, -4) as Hex;
        expected = undefined;
        break;
      case 6: // r = 0
        sig = `0x${"00".repeat(32)}${sig.slice(66)}` as Hex;
        expected = undefined;
        break;
    }
    out.push({ digest, signature: sig, expected });
  }
  return out;
}

describe("signature recovery on worker threads", function () {
  this.timeout(60_000);
  const cases = corpus(700);
  after(() => configureRecoveryThreads(0));

  for (const [threads, pollTurns] of [[1, 64], [2, 64], [1, 1], [2, 1]] as const) {
    it(`${threads} thread(s), ${pollTurns} poll turn(s) before sleeping: bursts of concurrent requests each get exactly the in-thread answer`, async () => {
      configureRecoveryThreads(threads, { pollTurns });
      expect(recoveryThreads()).to.equal(threads);
      // Bursts of 1..64 concurrent requests with gaps of 0..2 ms: exercises the wake-ups on both sides
      // (worker asleep, main thread asleep in waitAsync, main thread stealing work while idle).
      let seed = 7;
      const rand = (m: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % m;
      let i = 0;
      let checked = 0;
      // Sleeping after every turn: many small bursts, the shape that once lost a wake-up.
      const maxBurst = pollTurns === 1 ? 3 : 64;
      const total = cases.length * (pollTurns === 1 ? 6 : 3);
      while (i < total) {
        const burst = 1 + rand(maxBurst);
        const batch = Array.from({ length: burst }, (_, k) => cases[(i + k) % cases.length]!);
        i += burst;
        const got = await Promise.all(batch.map((c) => recoverSignerAsync(c.digest, c.signature)));
        batch.forEach((c, k) => expect(got[k], `case ${(i - burst + k) % cases.length}`).to.equal(c.expected));
        checked += burst;
        const gap = rand(pollTurns === 1 ? 20 : 3);
        if (gap > 0 && gap < 3) await new Promise((r) => setTimeout(r, gap));
      }
      expect(checked).to.be.greaterThanOrEqual(total);
    });
  }

  it("0 threads: recovers on the calling thread with the same answers", async () => {
    configureRecoveryThreads(0);
    expect(recoveryThreads()).to.equal(0);
    for (const c of cases.slice(0, 70)) expect(await recoverSignerAsync(c.digest, c.signature)).to.equal(c.expected);
  });

  it("replacing the pool while requests are in flight answers every one of them", async () => {
    configureRecoveryThreads(1);
    const batch = cases.slice(0, 200);
    const pending = batch.map((c) => recoverSignerAsync(c.digest, c.signature));
    configureRecoveryThreads(2); // terminates the 1-thread pool with most of the batch unanswered
    const got = await Promise.all(pending);
    batch.forEach((c, k) => expect(got[k]).to.equal(c.expected));
    expect(recoveryThreads()).to.equal(2);
  });

  it("the ring's int32 counters wrap past 2^31 without losing or mixing up an answer", async () => {
    for (const pollTurns of [64, 1]) {
      configureRecoveryThreads(1, { pollTurns, firstSequence: 2 ** 31 - 700 });
      for (let round = 0; round < 20; round++) {
        const batch = cases.slice(round * 35, round * 35 + 70);
        const got = await Promise.all(batch.map((c) => recoverSignerAsync(c.digest, c.signature)));
        batch.forEach((c, k) => expect(got[k], `round ${round} case ${k}`).to.equal(c.expected));
      }
    }
  });

  it("a digest that is not 32 bytes recovers to nothing, on both paths", async () => {
    const c = cases[0]!;
    for (const threads of [0, 1]) {
      configureRecoveryThreads(threads);
      expect(await recoverSignerAsync(c.digest.subarray(0, 31), c.signature)).to.equal(undefined);
      expect(await recoverSignerAsync(new Uint8Array([...c.digest, 0]), c.signature)).to.equal(undefined);
    }
  });

  it("until a new worker has started, requests are answered on the calling thread (no start-up wait)", async () => {
    configureRecoveryThreads(1, { firstSequence: 0 }); // a fresh pool: its worker is still loading
    const c = cases[0]!;
    let settled: unknown = "pending";
    void recoverSignerAsync(c.digest, c.signature).then((a) => (settled = a));
    // answered within microtasks: the worker path would need event-loop turns (and the worker's start-up)
    for (let i = 0; i < 5; i++) await Promise.resolve();
    expect(settled).to.equal(c.expected);
  });

  it("a digest buffer reused by the caller after submission does not change the answer", async () => {
    configureRecoveryThreads(1);
    const shared = new Uint8Array(32);
    const pending = cases.slice(0, 50).map((c) => {
      shared.set(c.digest);
      return recoverSignerAsync(shared, c.signature);
    });
    shared.fill(0);
    const got = await Promise.all(pending);
    cases.slice(0, 50).forEach((c, k) => expect(got[k]).to.equal(c.expected));
  });
});
