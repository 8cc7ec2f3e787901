/**
 * Signer recovery on worker threads, so a busy payee spends its main thread on HTTP and state while
 * libsecp256k1 runs on the other cores.
 *
 * Each worker shares a ring of slots with the main thread (SharedArrayBuffer): the main thread writes
 * digest (32 B) + signature (65 B) into the next slot and bumps a counter; the worker, blocked in
 * `Atomics.wait`, recovers and writes a found flag + the 20-byte address, then bumps its own counter.
 * No message is serialised. The main thread collects results on its next event-loop turns (cheap
 * while it is busy anyway) and, after a short spin, sleeps in `Atomics.waitAsync`.
 *
 * Shape checks (length, v, r/s range, low s) run on the calling thread first, exactly as in
 * `recoverSigner`, so both paths accept the same signatures. One pool per process, shared by every
 * Payee; workers are unref'd and never keep a process alive. Without the native binding the pool is
 * not used (noble in-thread).
 */
import os from "node:os";
import { Worker } from "node:worker_threads";
import type { Hex } from "viem";
import { checkSignatureShape, recoverSigner, recoveryBackend } from "./recover";

/** Ring size, a power of two: counters are int32 and wrap, slots are `counter & MASK`. */
const SLOTS = 1024;
const MASK = SLOTS - 1;
const IN = 32 + 65;
const OUT = 21;
// ctrl indices
const SUBMITTED = 0; // slots written by the main thread (monotonic)
const CLAIMED = 1; // slots taken by a worker or the main thread (monotonic, compare-exchange)
const COMPLETED = 2; // results written (monotonic; the main thread sleeps on it)
const WORKER_SLEEPING = 3; // 1 while the worker is (about to be) in Atomics.wait
const MAIN_SLEEPING = 4; // 1 while the main thread is (about to be) in Atomics.waitAsync
const READY = 5; // 1 once the worker has loaded its modules and entered its loop
// slot states
const DONE = 2;
/** Event-loop turns to poll for results before sleeping in Atomics.waitAsync (default). */
const POLL_TURNS = 64;
/** Two poll turns closer than this (ms) mean the event loop had nothing else to do. */
const IDLE_GAP_MS = 0.02;

// Runs inside each worker (plain CommonJS; module paths come from the parent, resolved once).
// The sleeping flags and counters follow the Dekker pattern (JS atomics are sequentially consistent):
// each side publishes its flag, then re-reads the other's counter, so no wake-up is lost.
const WORKER_SOURCE = `
const { workerData } = require("node:worker_threads");
const secp = require(workerData.secp);
const { keccak_256 } = require(workerData.keccak);
const ctrl = new Int32Array(workerData.ctrl);
const state = new Int32Array(workerData.state);
const input = new Uint8Array(workerData.input);
const output = new Uint8Array(workerData.output);
Atomics.store(ctrl, ${READY}, 1);
const pub = new Uint8Array(65);
const cache = new Map();
for (;;) {
  const claimed = Atomics.load(ctrl, ${CLAIMED});
  const submitted = Atomics.load(ctrl, ${SUBMITTED});
  if (claimed !== submitted) {
    if (Atomics.compareExchange(ctrl, ${CLAIMED}, claimed, (claimed + 1) | 0) !== claimed) continue;
    const slot = claimed & ${SLOTS - 1};
    const i = slot * ${IN};
    const o = slot * ${OUT};
    output[o] = 0;
    try {
      secp.ecdsaRecover(input.subarray(i + 32, i + 96), input[i + 96] - 27, input.subarray(i, i + 32), false, pub);
      const key = Buffer.from(pub).toString("latin1");
      let address = cache.get(key);
      if (address === undefined) {
        address = keccak_256(pub.subarray(1)).subarray(12);
        if (cache.size >= 50000) cache.clear();
        cache.set(key, address);
      }
      output.set(address, o + 1);
      output[o] = 1;
    } catch {}
    Atomics.store(state, slot, ${DONE});
    Atomics.add(ctrl, ${COMPLETED}, 1);
    if (Atomics.load(ctrl, ${MAIN_SLEEPING}) === 1) Atomics.notify(ctrl, ${COMPLETED});
    continue;
  }
  Atomics.store(ctrl, ${WORKER_SLEEPING}, 1);
  if (Atomics.load(ctrl, ${SUBMITTED}) === submitted) Atomics.wait(ctrl, ${SUBMITTED}, submitted);
  Atomics.store(ctrl, ${WORKER_SLEEPING}, 0);
}
`;

// ES2024 lib typing, not in this project's target.
type AtomicsWaitAsync = {
  waitAsync(a: Int32Array, index: number, value: number): { async: false; value: string } | { async: true; value: Promise<string> };
};

class RecoveryWorker {
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(6 * 4));
  private readonly state = new Int32Array(new SharedArrayBuffer(SLOTS * 4));
  private readonly input = new Uint8Array(new SharedArrayBuffer(SLOTS * IN));
  private readonly output: Buffer;
  private readonly waiting: Array<((a: Hex | undefined) => void) | undefined> = new Array(SLOTS);
  private readonly worker: Worker;
  private submitted: number;
  /** Every slot below this index has been handed back to its caller. */
  private collected: number;
  private polling = false;
  private spins = 0;
  private lastPoll = 0;
  private dead = false;
  private terminating = false;

  constructor(
    onError: (err: unknown) => void,
    private readonly pollTurns: number,
    firstSequence: number,
  ) {
    // Counters start at `firstSequence` (tests start them just below 2^31 to cross the int32 wrap).
    this.submitted = this.collected = firstSequence | 0;
    Atomics.store(this.ctrl, SUBMITTED, this.submitted);
    Atomics.store(this.ctrl, CLAIMED, this.submitted);
    const out = new SharedArrayBuffer(SLOTS * OUT);
    this.output = Buffer.from(out);
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        secp: require.resolve("secp256k1/bindings"),
        keccak: require.resolve("@noble/hashes/sha3"),
        ctrl: this.ctrl.buffer,
        state: this.state.buffer,
        input: this.input.buffer,
        output: out,
      },
    });
    this.worker.unref();
    const died = (err: unknown) => {
      if (this.dead) return;
      onError(err);
      this.drain();
    };
    this.worker.on("error", died);
    this.worker.on("exit", (code) => {
      if (!this.terminating) died(new Error(`worker exited with code ${code}`));
    });
  }

  get inflight(): number {
    return (this.submitted - this.collected) | 0;
  }

  /** Alive and started: until its modules are loaded (tens to hundreds of ms), work stays in-thread. */
  get alive(): boolean {
    return !this.dead && Atomics.load(this.ctrl, READY) === 1;
  }

  submit(digest: Uint8Array, sig: Uint8Array): Promise<Hex | undefined> {
    const slot = this.submitted & MASK;
    this.input.set(digest, slot * IN);
    this.input.set(sig, slot * IN + 32);
    this.state[slot] = 0;
    const p = new Promise<Hex | undefined>((resolve) => (this.waiting[slot] = resolve));
    this.submitted = (this.submitted + 1) | 0;
    Atomics.store(this.ctrl, SUBMITTED, this.submitted);
    // A futex wake costs several microseconds: only when the worker sleeps.
    if (Atomics.load(this.ctrl, WORKER_SLEEPING) === 1) Atomics.notify(this.ctrl, SUBMITTED);
    if (!this.polling) {
      this.polling = true;
      this.spins = 0;
      this.lastPoll = 0;
      // Referenced while work is in flight: a pending Atomics.waitAsync alone keeps no process alive.
      this.worker.ref();
      setImmediate(this.poll);
    }
    return p;
  }

  private readonly poll = () => {
    // Read before the scan: a result written after it changes COMPLETED, so the sleep below cannot miss it.
    const seen = Atomics.load(this.ctrl, COMPLETED);
    Atomics.store(this.ctrl, MAIN_SLEEPING, 0);
    let progressed = false;
    for (let n = this.collected; n !== this.submitted; n = (n + 1) | 0) {
      const slot = n & MASK;
      if (this.waiting[slot] !== undefined && Atomics.load(this.state, slot) === DONE) {
        this.hand(slot);
        progressed = true;
      }
    }
    while (this.collected !== this.submitted && this.waiting[this.collected & MASK] === undefined) this.collected = (this.collected + 1) | 0;
    if (this.collected === this.submitted) {
      this.polling = false;
      this.worker.unref();
      return;
    }
    const now = performance.now();
    if (progressed) {
      this.spins = 0;
    } else if (now - this.lastPoll < IDLE_GAP_MS) {
      // The event loop is idle and the worker is behind: recover one here instead of waiting.
      this.steal();
    }
    this.lastPoll = performance.now();
    if (++this.spins < this.pollTurns) {
      setImmediate(this.poll);
      return;
    }
    Atomics.store(this.ctrl, MAIN_SLEEPING, 1);
    const wait = (Atomics as unknown as AtomicsWaitAsync).waitAsync(this.ctrl, COMPLETED, seen);
    if (wait.async) void wait.value.then(this.poll);
    else setImmediate(this.poll);
  };

  /** Claims the oldest unclaimed slot, if any, and recovers it on this thread. */
  private steal() {
    const claimed = Atomics.load(this.ctrl, CLAIMED);
    if (claimed === this.submitted || Atomics.compareExchange(this.ctrl, CLAIMED, claimed, (claimed + 1) | 0) !== claimed) return;
    this.recoverHere(claimed & MASK);
  }

  /** Answers a slot on this thread, with the same `recoverSigner` the pool-less path uses. */
  private recoverHere(slot: number) {
    const i = slot * IN;
    this.answer(slot, recoverSigner(this.input.subarray(i, i + 32), this.input.subarray(i + 32, i + IN)));
  }

  /** Answers a slot from the worker's output. */
  private hand(slot: number) {
    const o = slot * OUT;
    this.answer(slot, this.output[o] === 1 ? (`0x${this.output.toString("hex", o + 1, o + OUT)}` as Hex) : undefined);
  }

  private answer(slot: number, address: Hex | undefined) {
    const resolve = this.waiting[slot]!;
    this.waiting[slot] = undefined;
    resolve(address);
  }

  /** Stops the worker; what it had not answered is recovered on this thread. */
  async terminate(): Promise<void> {
    this.terminating = true;
    await this.worker.terminate();
    this.drain();
  }

  /** Marks the worker dead and answers everything still waiting on it here: nothing waits forever. */
  private drain() {
    this.dead = true;
    for (let n = this.collected; n !== this.submitted; n = (n + 1) | 0) {
      const slot = n & MASK;
      if (this.waiting[slot] !== undefined) this.recoverHere(slot);
    }
    this.collected = this.submitted;
  }
}

class RecoverPool {
  private readonly workers: RecoveryWorker[] = [];

  constructor(
    readonly size: number,
    readonly pollTurns: number,
    firstSequence: number,
  ) {
    for (let i = 0; i < size; i++) {
      this.workers.push(
        new RecoveryWorker((err) => {
          // eslint-disable-next-line no-console
          console.warn(`[tollway] signature recovery worker failed (${(err as Error).message}); recovering in-thread`);
        }, pollTurns, firstSequence),
      );
    }
  }

  recover(digest: Uint8Array, sig: Uint8Array): Promise<Hex | undefined> | Hex | undefined {
    let best: RecoveryWorker | undefined;
    for (const w of this.workers) if (w.alive && (best === undefined || w.inflight < best.inflight)) best = w;
    // No live worker, or a full ring (SLOTS requests in flight): served in-thread, not queued without bound.
    if (best === undefined || best.inflight >= SLOTS) return recoverSigner(digest, sig);
    return best.submit(digest, sig);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

let pool: RecoverPool | undefined;

/** Threads used when none is configured: all cores but one (the main thread's), at most 4. */
export function defaultRecoveryThreads(): number {
  const cores = typeof os.availableParallelism === "function" ? os.availableParallelism() : os.cpus().length;
  return Math.max(0, Math.min(4, cores - 1));
}

/**
 * Sets the process's recovery threads (0 = recover on the calling thread). Replaces a pool of a
 * different size; a no-op when the size is unchanged or the native binding is missing. `pollTurns`:
 * event-loop turns the main thread polls for results before it sleeps (default 64; 1 in tests that
 * want every wake-up to go through the sleep path). `firstSequence`: where the ring's int32 counters
 * start (tests start just below 2^31 to cross the wrap a long-running node reaches after 2^31 requests).
 */
export function configureRecoveryThreads(threads: number, o: { pollTurns?: number; firstSequence?: number } = {}): void {
  if (recoveryBackend() !== "native") threads = 0;
  const pollTurns = o.pollTurns ?? POLL_TURNS;
  if ((pool?.size ?? 0) === threads && (threads === 0 || pool!.pollTurns === pollTurns) && o.firstSequence === undefined) return;
  const old = pool;
  pool = threads > 0 ? new RecoverPool(threads, pollTurns, o.firstSequence ?? 0) : undefined;
  void old?.close();
}

/** Recovery threads in use by this process. */
export function recoveryThreads(): number {
  return pool?.size ?? 0;
}

/**
 * `recoverSigner` off the calling thread when a pool is configured: the signer of a 32-byte digest as a
 * lowercase 0x address, or undefined when the signature is malformed, malleable or does not recover.
 */
export async function recoverSignerAsync(digest: Uint8Array, signature: Hex): Promise<Hex | undefined> {
  if (!pool) return recoverSigner(digest, signature);
  if (digest.length !== 32) return undefined; // as the native binding refuses it in-thread
  const sig = Buffer.from(signature.slice(2), "hex");
  if (checkSignatureShape(sig) !== undefined) return undefined;
  return pool.recover(digest, sig);
}
