/**
 * Per-channel serialization. In memory only, on purpose: a lock dies with the process that held it,
 * so a killed node never leaves a channel "busy" after restart.
 */
import { ErrorCodes, PaymentError } from "../protocol/errors";

type Waiter = { grant: () => void; timer?: NodeJS.Timeout };

export class ChannelLocks {
  private readonly held = new Map<string, Waiter[]>();

  /** Number of channels with a holder (for metrics and tests). */
  get size(): number {
    return this.held.size;
  }

  isHeld(id: string): boolean {
    return this.held.has(id);
  }

  /** The channel's release function when its lock is free (taken now, without a promise); else undefined. */
  tryAcquire(id: string): (() => void) | undefined {
    if (this.held.has(id)) return undefined;
    this.held.set(id, []);
    return this.releaser(id);
  }

  /**
   * Waits for the channel's lock (FIFO) and returns its release function. Rejects with
   * `channel_busy` when it cannot be had within `timeoutMs`.
   */
  acquire(id: string, timeoutMs = 5_000): Promise<() => void> {
    const free = this.tryAcquire(id);
    if (free) return Promise.resolve(free);
    const queue = this.held.get(id)!;
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { grant: () => resolve(this.releaser(id)) };
      waiter.timer = setTimeout(() => {
        const i = queue.indexOf(waiter);
        if (i >= 0) queue.splice(i, 1);
        reject(new PaymentError(ErrorCodes.channelBusy, "Another request holds this channel; retry shortly", { status: 402 }));
      }, timeoutMs);
      queue.push(waiter);
    });
  }

  /** Runs `fn` holding the channel's lock. */
  async with<T>(id: string, fn: () => Promise<T>, timeoutMs?: number): Promise<T> {
    const release = await this.acquire(id, timeoutMs);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  private releaser(id: string): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const queue = this.held.get(id);
      const next = queue?.shift();
      if (next) {
        if (next.timer) clearTimeout(next.timer);
        next.grant();
      } else {
        this.held.delete(id);
      }
    };
  }
}
