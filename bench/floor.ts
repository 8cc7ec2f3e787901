/**
 * The floor of a paid request, for bench/payments.ts: only the work no batch-settlement server can skip,
 * with none of Tollway's checks, state or store. Per request: read PAYMENT-SIGNATURE (base64 + JSON),
 * the voucher's EIP-712 digest (native keccak), the signer (libsecp256k1, on the same recovery threads
 * the payee uses), the signer compared with the payerAuthorizer, a ~200-byte record appended to a file
 * and fdatasync'd before the answer (group commit: one write + fdatasync in flight, the requests that
 * arrive meanwhile share the next), and a PAYMENT-RESPONSE of the real one's shape.
 *
 * It is not a payment server (it keeps no channel state, so it would serve a replayed voucher). It shows
 * what that work alone reaches on this machine under each figure's load: where even it is under a goal
 * that is bound by CPU (figure 1), no server doing more work can meet the goal; elsewhere (figure 3's
 * ratio, which a faster non-durable side lowers) it is context, not a bound.
 */
import type { NextFunction, Request, Response } from "express";
import fs from "node:fs";
import type { Hex } from "viem";
import { createDigester } from "../node/protocol/fastDigest";
import { CANONICAL_ADDRESSES, escrowDomain } from "../node/protocol/typedData";
import { HEADERS, encodeBase64Json } from "../node/protocol/wire";
import { keccak256Fast } from "../node/payee/recover";
import { recoverSignerAsync } from "../node/payee/recoverPool";

const PREALLOC = !!process.env.FLOOR_PREALLOC;
type Pending = { record: Buffer; done: (err: Error | null) => void };

/** Appends records to one file, fdatasync'd in groups (`sync` false: written, never synced). */
class GroupAppender {
  private queue: Pending[] = [];
  private busy = false;
  private pos = 0;
  constructor(
    private readonly fd: number,
    private readonly sync: boolean,
  ) {}

  append(record: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ record, done: (err) => (err ? reject(err) : resolve()) });
      if (!this.busy) this.flush();
    });
  }

  private flush() {
    const group = this.queue;
    this.queue = [];
    this.busy = true;
    const bufs = group.map((p) => p.record);
    const at = this.pos;
    for (const b of bufs) this.pos += b.length;
    fs.writev(this.fd, bufs, PREALLOC ? at : null, (err) => {
      const finish = (e: Error | null) => {
        for (const p of group) p.done(e);
        this.busy = false;
        if (this.queue.length > 0) this.flush();
      };
      if (err || !this.sync) return finish(err);
      fs.fdatasync(this.fd, finish);
    });
  }
}

/** The floor's work, shared by the express route below and the bare proxy (bench/bare-proxy-server.ts). */
export class Floor {
  private readonly digester = createDigester(escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement), keccak256Fast);
  private readonly log: GroupAppender;

  constructor(file: string, sync: boolean) {
    let fd: number;
    if (PREALLOC) {
      fd = fs.openSync(file, "w+");
      const z = Buffer.alloc(1 << 20);
      for (let i = 0; i < 256; i++) fs.writeSync(fd, z);
      fs.fsyncSync(fd);
    } else fd = fs.openSync(file, "a");
    this.log = new GroupAppender(fd, sync);
  }

  /**
   * Checks a PAYMENT-SIGNATURE header's voucher signature. Resolves to a commit function (append the
   * voucher durably, then return the PAYMENT-RESPONSE value), or undefined when the header is no
   * voucher this floor can check or the signer is not the payerAuthorizer.
   */
  async verify(header: string | string[] | undefined): Promise<(() => Promise<string>) | undefined> {
    if (typeof header !== "string") return undefined;
    let payment: any;
    try {
      payment = JSON.parse(Buffer.from(header, "base64").toString("utf8"));
    } catch {
      return undefined;
    }
    const voucher = payment?.payload?.voucher as { channelId: Hex; maxClaimableAmount: string; signature: Hex } | undefined;
    const payer = String(payment?.payload?.channelConfig?.payerAuthorizer).toLowerCase();
    if (voucher === undefined) return undefined;
    const signer = await recoverSignerAsync(this.digester.voucherDigest(voucher.channelId, BigInt(voucher.maxClaimableAmount)), voucher.signature);
    if (signer !== payer) return undefined;
    return async () => {
      await this.log.append(Buffer.from(`${voucher.channelId} ${voucher.maxClaimableAmount} ${voucher.signature}\n`, "latin1"));
      return encodeBase64Json({
        success: true,
        payer,
        transaction: "",
        network: "eip155:31337",
        amount: payment.accepted.amount,
        extra: {
          chargedAmount: payment.accepted.amount,
          channelState: { channelId: voucher.channelId, balance: "0", totalClaimed: "0", withdrawRequestedAt: 0, refundNonce: "0", chargedCumulativeAmount: voucher.maxClaimableAmount },
        },
      });
    };
  }
}

/** Express handler answering every request on its route with the floor's work (see above). */
export function floorRoute(file: string, sync: boolean) {
  const floor = new Floor(file, sync);
  return (req: Request, res: Response, next: NextFunction) => {
    floor
      .verify(req.headers[HEADERS.paymentSignature.toLowerCase()])
      .then(async (commit) => {
        if (commit === undefined) return void res.status(402).end();
        res.setHeader(HEADERS.paymentResponse, await commit());
        res.setHeader("Cache-Control", "no-store");
        res.send("ok");
      })
      .catch(next);
  };
}
