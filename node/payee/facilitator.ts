/**
 * x402 facilitator API for the batch-settlement scheme (POST /verify, POST /settle, GET /supported), so
 * any x402 resource server (any language) can use a Tollway node as its facilitator. The node's sender
 * key is the facilitator's receiverAuthorizer and relayer. Bearer-token protected.
 */
import express, { type Request, type Response, type Router } from "express";
import { timingSafeEqual } from "node:crypto";
import { encodeFunctionData, parseEventLogs, type Hex } from "viem";
import { encodeErc3009CollectorData } from "../protocol/collectorData";
import { batchSettlementAbi } from "../chain/abi";
import { amountMoved, claimAndRefundCalls, readChannel, readReceiver } from "../chain/escrow";
import { isRevert } from "../chain/sender";
import { ChainError, ErrorCodes, PaymentError, TollwayError, errorSummary, type ErrorCode } from "../protocol/errors";
import { BATCH_SETTLEMENT_SCHEME, type ChannelConfig, type VoucherClaim } from "../protocol/typedData";
import {
  addressSchema,
  channelConfigSchema,
  managementRequirementsSchema,
  paymentRequirementsSchema,
  parseSchemePayload,
  signatureSchema,
  uint128Schema,
  uint256Schema,
  type DepositPayload,
  type PaymentRequirements,
  type SchemePayload,
} from "../protocol/wire";
import { z } from "zod";
import { hasClaim, toClaimRow } from "./claims";
import type { Payee } from "./payee";

/** Express middleware: requires `Authorization: Bearer <token>`. */
export function requireBearer(token: string) {
  const expected = Buffer.from(token);
  return function tollwayBearerAuth(req: Request, res: Response, next: () => void) {
    const header = req.headers.authorization ?? "";
    const given = Buffer.from(header.startsWith("Bearer ") ? header.slice(7) : "");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      res.status(401).set("WWW-Authenticate", "Bearer").json({ error: "unauthorized", message: "a valid bearer token is required" });
      return;
    }
    next();
  };
}

const claimRowSchema = z.object({
  voucher: z.object({ channel: channelConfigSchema, maxClaimableAmount: uint128Schema }),
  signature: signatureSchema,
  totalClaimed: uint128Schema,
});
const claimPayloadSchema = z.object({
  type: z.literal("claim"),
  claims: z.array(claimRowSchema).min(1).max(500),
  claimAuthorizerSignature: signatureSchema.optional(),
});
const settlePayloadSchema = z.object({ type: z.literal("settle"), receiver: addressSchema, token: addressSchema });

type Snapshot = { channelId: Hex; balance: string; totalClaimed: string; withdrawRequestedAt: number; refundNonce: string };

export class Facilitator {
  constructor(readonly payee: Payee) {}

  supported() {
    return {
      kinds: [
        {
          x402Version: 2,
          scheme: BATCH_SETTLEMENT_SCHEME,
          network: this.payee.network,
          extra: { receiverAuthorizer: this.payee.receiverAuthorizer },
        },
      ],
      extensions: [],
      signers: { "eip155:*": [this.payee.opts.sender.address] },
    };
  }

  /**
   * Without an authorizer's signature the node sends claim / refund itself, which the escrow allows only
   * to a channel's receiver or receiverAuthorizer: refused before a simulation when it is neither.
   */
  private checkActsFor(c: ChannelConfig) {
    const me = this.payee.opts.sender.address;
    if (c.receiver !== me && c.receiverAuthorizer !== me) {
      throw new PaymentError(ErrorCodes.authorizerAddressMismatch, `this facilitator (${me}) is neither the receiver nor the receiverAuthorizer of the channel, and no authorizer signature was given`);
    }
  }

  /** Stateless verification of a deposit / voucher / refund payload against on-chain state. */
  async verify(payload: SchemePayload, req: PaymentRequirements, o: { simulateDeposit?: boolean } = {}): Promise<{ payer: Hex; extra: Snapshot }> {
    const c = payload.channelConfig;
    if (req.scheme !== BATCH_SETTLEMENT_SCHEME) throw new PaymentError(ErrorCodes.scheme, "scheme is not batch-settlement");
    if (req.network !== this.payee.network) throw new PaymentError(ErrorCodes.networkMismatch, `network is not ${this.payee.network}`);
    this.payee.checkConfig(c, req);
    const channelId = this.payee.digester.channelId(c);
    if (channelId !== payload.voucher.channelId) throw new PaymentError(ErrorCodes.channelIdMismatch, "config does not hash to channelId");
    await this.payee.checkVoucherSignature(c, channelId, payload.voucher.maxClaimableAmount, payload.voucher.signature);
    let chain;
    try {
      chain = await readChannel(this.payee.opts.publicClient, this.payee.opts.escrow, channelId);
    } catch (cause) {
      throw new PaymentError(ErrorCodes.channelStateReadFailed, "could not read the channel", { cause, status: 503 });
    }
    if (payload.type === "deposit") {
      // Rule 8, and a deposit that would fail at /settle is not valid now either.
      this.payee.checkDepositAuthorization(payload);
      await this.payee.checkPayerFunds(payload);
      // The deposit as /settle would send it (the ERC-3009 signature, a used nonce, the collector): simulated.
      if (o.simulateDeposit !== false) {
        await this.payee.opts.sender.simulate(depositCall(this.payee, payload)).catch((err: unknown) => {
          // A revert says the deposit is invalid; an RPC that failed says nothing about it.
          if (!isRevert(err)) throw new Error(`the deposit could not be simulated: ${errorSummary(err)}`, { cause: err });
          throw err;
        });
      }
    }
    const max = payload.voucher.maxClaimableAmount;
    const effective = chain.balance + (payload.type === "deposit" ? payload.deposit.amount : 0n);
    if (payload.type !== "deposit" && chain.balance === 0n) throw new PaymentError(ErrorCodes.channelNotFound, "no channel with a positive balance");
    if (max > effective) throw new PaymentError(ErrorCodes.cumulativeExceedsBalance, "voucher exceeds the balance");
    if (payload.type === "voucher" ? max <= chain.totalClaimed : max < chain.totalClaimed) {
      throw new PaymentError(ErrorCodes.cumulativeBelowClaimed, "voucher is below the claimed total");
    }
    return { payer: c.payer, extra: snapshot(channelId, chain) };
  }

  /**
   * Executes a payload. `rawReq` is parsed per payload type: a claim or a settle needs none (a network,
   * when given, must be this node's); a refund takes the server's management requirements (the stock
   * channel manager sends `maxTimeoutSeconds: 0, extra: {}`) or a payment's; a deposit needs a payment's.
   */
  async settle(raw: unknown, rawReq?: unknown): Promise<Record<string, unknown>> {
    const type = (raw as { type?: unknown } | null)?.type;
    const network = this.payee.network;
    const { escrow } = this.payee.opts;
    const sender = this.payee.opts.sender;
    if (type === "claim" || type === "settle") {
      const given = (rawReq as { network?: unknown } | null | undefined)?.network;
      if (given !== undefined && given !== network) throw new PaymentError(ErrorCodes.networkMismatch, `network is not ${network}`);
    }
    if (type === "claim") {
      const p = claimPayloadSchema.safeParse(raw);
      if (!p.success) throw new PaymentError(ErrorCodes.claimPayload, "claim payload is malformed", { status: 400 });
      const claims: VoucherClaim[] = p.data.claims;
      if (!p.data.claimAuthorizerSignature) for (const row of claims) this.checkActsFor(row.voucher.channel);
      const { hash } = p.data.claimAuthorizerSignature
        ? await sender.send({ address: escrow, abi: batchSettlementAbi, functionName: "claimWithSignature", args: [claims, p.data.claimAuthorizerSignature], simulationError: ErrorCodes.claimSimulationFailed, transactionError: ErrorCodes.claimTransactionFailed })
        : await sender.send({ address: escrow, abi: batchSettlementAbi, functionName: "claim", args: [claims], simulationError: ErrorCodes.claimSimulationFailed, transactionError: ErrorCodes.claimTransactionFailed });
      return { success: true, transaction: hash, network, amount: "" };
    }
    if (type === "settle") {
      const p = settlePayloadSchema.safeParse(raw);
      if (!p.success) throw new PaymentError(ErrorCodes.settlePayload, "settle payload is malformed", { status: 400 });
      const r = await readReceiver(this.payee.opts.publicClient, escrow, p.data.receiver, p.data.token);
      const amount = r.totalClaimed - r.totalSettled;
      if (amount === 0n) return { success: true, transaction: "", network, amount: "0" };
      const { hash, receipt } = await sender.send({ address: escrow, abi: batchSettlementAbi, functionName: "settle", args: [p.data.receiver, p.data.token], simulationError: ErrorCodes.settleSimulationFailed, transactionError: ErrorCodes.settleTransactionFailed });
      // What moved, from the receipt (another settle may have swept it meanwhile).
      const moved = amountMoved(receipt.logs, "Settled");
      return { success: true, transaction: hash, network, amount: moved.toString() };
    }
    // A voucher is not settled by itself (its claim and the settle are); anything else is no action.
    if (type === "voucher") throw new PaymentError(ErrorCodes.payloadType, "a voucher payload is not settled: send claim and settle payloads", { status: 400 });
    if (type !== "deposit" && type !== "refund") throw new PaymentError(ErrorCodes.unknownSettleAction, `unknown settle action ${JSON.stringify(type)}`, { status: 400 });
    if (type === "refund") {
      // The spec's refund_amount_invalid: non-numeric or non-positive.
      const amount = (raw as { amount?: unknown }).amount;
      if (amount !== undefined && !(typeof amount === "string" && /^[1-9]\d{0,38}$/.test(amount))) {
        throw new PaymentError(ErrorCodes.refundAmountInvalid, `refund amount ${JSON.stringify(amount)} is not a positive integer`, { status: 400 });
      }
    }
    const payload = parseSchemePayload(raw);
    if (rawReq === undefined) throw new PaymentError(ErrorCodes.payloadType, "paymentRequirements are required for this payload type", { status: 400 });
    // A deposit is simulated by its send below, not twice.
    const verified = await this.verify(payload, payload.type === "refund" ? managementRequirements(rawReq, payload.channelConfig) : paymentRequirements(rawReq), { simulateDeposit: false });
    const c = payload.channelConfig;
    if (payload.type === "deposit") {
      // The facilitator cannot tell whether its server then charges the request: a deposit here always counts.
      const { hash, receipt } = await sender.send({ ...depositCall(this.payee, payload), beforeSend: () => this.payee.relayBudget.take(c.payer, "deposit") });
      // Mined, so the answer is a success even when the channel cannot be read back just now (a retry could
      // not learn the hash: the authorization's nonce is used). Then the state is the verified one plus the deposit.
      const channelId = verified.extra.channelId;
      const chain = await readChannel(this.payee.opts.publicClient, escrow, channelId, receipt.blockNumber).catch((err: Error) => {
        this.payee.opts.logger?.warn({ channelId, tx: hash, err: errorSummary(err) }, "deposit mined; the channel could not be read back");
        return undefined;
      });
      const channelState = chain ? snapshot(channelId, chain) : { ...verified.extra, balance: (BigInt(verified.extra.balance) + payload.deposit.amount).toString() };
      return { success: true, transaction: hash, network, payer: c.payer, amount: payload.deposit.amount.toString(), asset: c.token, extra: { channelState } };
    }
    if (payload.type === "refund") {
      const enriched = z
        .object({
          claims: z.array(claimRowSchema).max(500).optional(),
          amount: uint128Schema.optional(),
          refundNonce: uint256Schema.optional(),
          refundAuthorizerSignature: signatureSchema.optional(),
          claimAuthorizerSignature: signatureSchema.optional(),
        })
        .passthrough()
        .safeParse(raw);
      if (!enriched.success) throw new PaymentError(ErrorCodes.refundPayload, "refund payload is malformed", { status: 400 });
      const e = enriched.data;
      const channelId = verified.extra.channelId;
      // Under the channel's lock: a retried /settle waits for the first refund, then meets its nonce.
      return this.payee.locks.with(channelId, async () => {
        this.payee.checkNoRefundPending(channelId);
        const chain = await readChannel(this.payee.opts.publicClient, escrow, channelId);
        // Rule 11: the nonce the server completed the payload with must still be the channel's. A retried
        // /settle whose refund already went through fails here instead of refunding again.
        if (e.refundNonce === undefined) {
          throw new PaymentError(ErrorCodes.refundPayload, "refundNonce is required: the server completes the refund payload with the channel's nonce (rule 11)", { status: 400 });
        }
        if (e.refundNonce !== chain.refundNonce) {
          throw new PaymentError(ErrorCodes.refundPayload, `refundNonce ${e.refundNonce} is not the channel's (${chain.refundNonce}): this refund already happened, or the payload is stale`);
        }
        // A channel this node serves itself: what it charged and has not claimed is claimed first, in the
        // same transaction (as closeChannel does), so a refund asked for here never hands those charges
        // back to the payer, whoever asks.
        const stored = await this.payee.store.getChannel(channelId);
        const own = stored ? this.payee.withChain(stored, chain) : undefined; // the chain's balance caps the claim
        const ownRow = own && hasClaim(own) ? toClaimRow(own) : undefined;
        const ownClaim = ownRow && ownRow.totalClaimed > chain.totalClaimed ? [encodeFunctionData({ abi: batchSettlementAbi, functionName: "claim", args: [[ownRow]] })] : [];
        const rows = e.claims ?? [];
        // Only this channel's rows change what stays claimed on it.
        const claimed = [...rows, ...(ownClaim.length ? [ownRow!] : [])].reduce((m, r) => (this.payee.digester.channelId(r.voucher.channel) === channelId && r.totalClaimed > m ? r.totalClaimed : m), chain.totalClaimed);
        const available = chain.balance - claimed;
        if (available <= 0n) throw new PaymentError(ErrorCodes.refundNoBalance, "no refundable balance remains");
        let amount: bigint;
        let signed: Parameters<typeof claimAndRefundCalls>[3] = {};
        if (e.refundAuthorizerSignature) {
          // The signature binds nonce and amount: both must be given, and the amount goes on chain as signed.
          if (e.amount === undefined) throw new PaymentError(ErrorCodes.refundPayload, "a signed refund needs its amount", { status: 400 });
          amount = e.amount;
          signed = { claim: e.claimAuthorizerSignature, refund: { nonce: e.refundNonce, signature: e.refundAuthorizerSignature } };
        } else {
          this.checkActsFor(c);
          amount = e.amount === undefined || e.amount > available ? available : e.amount;
          signed = { claim: e.claimAuthorizerSignature };
        }
        const calls = [...ownClaim, ...claimAndRefundCalls(c, rows, amount, signed)];
        // Marked until mined or dropped (see Payee.sendRefund): a retried /settle meanwhile is refused, not sent again.
        const { hash, receipt } = await this.payee.sendRefund(channelId, { address: escrow, abi: batchSettlementAbi, functionName: "multicall", args: [calls], simulationError: ErrorCodes.refundSimulationFailed, transactionError: ErrorCodes.refundTransactionFailed, beforeSend: () => this.payee.relayBudget.take(c.payer, "refund") });
        // What moved, from the receipt (the contract caps a refund at what is unclaimed); a channel this
        // node serves has its record and history updated as for its own refunds.
        const refunded = amountMoved(receipt.logs, "Refunded");
        let after;
        try {
          after = own ? (await this.payee.recordRefund(own, hash, receipt)).chain : await readChannel(this.payee.opts.publicClient, escrow, channelId, receipt.blockNumber);
        } catch (err) {
          // Mined, so a success whatever the read-back (a retry could not learn the hash: the nonce moved on).
          // The state from the receipt's events; the node's own record follows once its refund mark is resolved.
          this.payee.opts.logger?.warn({ channelId, tx: hash, err: errorSummary(err) }, "refund mined; the channel could not be read back");
          const claimedTo = parseEventLogs({ abi: batchSettlementAbi, logs: receipt.logs, eventName: "Claimed" }).reduce(
            (m, ev) => (ev.args.channelId.toLowerCase() === channelId && ev.args.newTotalClaimed > m ? ev.args.newTotalClaimed : m),
            chain.totalClaimed,
          );
          after = { ...chain, balance: chain.balance - refunded, totalClaimed: claimedTo, refundNonce: chain.refundNonce + 1n };
        }
        return { success: true, transaction: hash, network, payer: c.payer, amount: refunded.toString(), extra: { channelState: snapshot(channelId, after) } };
      });
    }
    throw new PaymentError(ErrorCodes.unknownSettleAction, `unknown settle action "${String(type)}"`, { status: 400 });
  }
}

/** The escrow call that makes a deposit payload's deposit (through the ERC-3009 collector). */
function depositCall(payee: Payee, payload: DepositPayload) {
  const auth = payload.deposit.authorization.erc3009Authorization;
  if (!auth) throw new PaymentError(ErrorCodes.erc3009AuthorizationRequired, "erc3009Authorization is required");
  return {
    address: payee.opts.escrow,
    abi: batchSettlementAbi,
    functionName: "deposit" as const,
    args: [payload.channelConfig, payload.deposit.amount, payee.opts.erc3009Collector, encodeErc3009CollectorData(auth)] as const,
    simulationError: ErrorCodes.depositSimulationFailed,
    transactionError: ErrorCodes.depositTransactionFailed,
  };
}

function snapshot(channelId: Hex, chain: { balance: bigint; totalClaimed: bigint; withdrawRequestedAt: number; refundNonce: bigint }): Snapshot {
  return {
    channelId,
    balance: chain.balance.toString(),
    totalClaimed: chain.totalClaimed.toString(),
    withdrawRequestedAt: chain.withdrawRequestedAt,
    refundNonce: chain.refundNonce.toString(),
  };
}

const requestSchema = z.object({
  x402Version: z.number().optional(),
  paymentPayload: z.object({ x402Version: z.number(), accepted: z.unknown().optional(), payload: z.unknown() }).passthrough(),
  paymentRequirements: z.unknown().optional(),
});

/** The facilitator's express router (mount it behind `requireBearer`). */
export function facilitatorRouter(facilitator: Facilitator): Router {
  const router = express.Router();
  router.use(express.json({ limit: "256kb" }));
  router.get("/supported", (_req, res) => void res.json(facilitator.supported()));

  const parse = (body: unknown) => {
    const r = requestSchema.safeParse(body);
    if (!r.success) throw new PaymentError(ErrorCodes.invalidPayload, "request must be {paymentPayload, paymentRequirements}", { status: 400 });
    if (r.data.paymentPayload.x402Version !== 2) {
      throw new PaymentError(ErrorCodes.invalidX402Version, `x402Version ${r.data.paymentPayload.x402Version} is not supported: batch-settlement is an x402 v2 scheme`, { status: 400 });
    }
    // The terms the client accepted must be the ones verified against (the spec's network_mismatch).
    const accepted = r.data.paymentPayload.accepted as { scheme?: unknown; network?: unknown } | null | undefined;
    const required = r.data.paymentRequirements as { scheme?: unknown; network?: unknown } | null | undefined;
    if (accepted && required) {
      if (accepted.scheme !== undefined && accepted.scheme !== required.scheme) throw new PaymentError(ErrorCodes.scheme, "the payload's accepted scheme is not the requirements'");
      if (accepted.network !== undefined && accepted.network !== required.network) throw new PaymentError(ErrorCodes.networkMismatch, "the payload's accepted network is not the requirements'");
    }
    return { payload: r.data.paymentPayload.payload, req: r.data.paymentRequirements };
  };
  /** The payer named by a payload's channel config, for error answers (the spec's optional `payer`). */
  const payerOf = (body: unknown): { payer?: string } => {
    const payer = (body as { paymentPayload?: { payload?: { channelConfig?: { payer?: unknown } } } } | null)?.paymentPayload?.payload?.channelConfig?.payer;
    return typeof payer === "string" && /^0x[0-9a-fA-F]{40}$/.test(payer) ? { payer } : {};
  };

  router.post("/verify", async (req, res) => {
    try {
      const { payload, req: requirements } = parse(req.body);
      if (requirements === undefined) throw new PaymentError(ErrorCodes.invalidPaymentRequirements, "paymentRequirements are required", { status: 400 });
      const v = await facilitator.verify(parseSchemePayload(payload), paymentRequirements(requirements));
      res.json({ isValid: true, payer: v.payer, extra: v.extra });
    } catch (err) {
      const e = toPaymentError(err, ErrorCodes.unexpectedVerifyError);
      res.status(e.status === 400 ? 400 : 200).json({ isValid: false, invalidReason: e.code, invalidMessage: e.shortMessage, ...payerOf(req.body) });
    }
  });

  router.post("/settle", async (req, res) => {
    try {
      const { payload, req: requirements } = parse(req.body);
      res.json(await facilitator.settle(payload, requirements));
    } catch (err) {
      const e = toPaymentError(err, ErrorCodes.unexpectedSettleError);
      res.status(e.status === 400 ? 400 : 200).json({ success: false, errorReason: e.code, errorMessage: e.shortMessage, transaction: "", network: facilitator.payee.network, ...payerOf(req.body) });
    }
  });
  return router;
}

/** A payment's requirements (verify, deposit). */
function paymentRequirements(raw: unknown): PaymentRequirements {
  const pr = paymentRequirementsSchema.safeParse(raw);
  if (!pr.success) throw new PaymentError(ErrorCodes.invalidPaymentRequirements, "paymentRequirements are malformed", { status: 400 });
  return pr.data;
}

/**
 * A refund's requirements: a payment's, or a server's management requirements without the scheme
 * extras. Extras left out are the channel's own (the refund acts on an existing channel, and the chain
 * checks who may refund it); asset and payTo must still match the channel.
 */
function managementRequirements(raw: unknown, c: ChannelConfig): PaymentRequirements {
  const pr = managementRequirementsSchema.safeParse(raw);
  if (!pr.success) throw new PaymentError(ErrorCodes.invalidPaymentRequirements, "paymentRequirements are malformed", { status: 400 });
  const { extra } = pr.data;
  return { ...pr.data, extra: { ...extra, receiverAuthorizer: extra.receiverAuthorizer ?? c.receiverAuthorizer, withdrawDelay: extra.withdrawDelay ?? c.withdrawDelay } };
}

/** An error as the facilitator answers it: a payment's own, a chain's, a malformed payload, or `unexpected` (the spec's unexpected_verify_error / unexpected_settle_error). */
function toPaymentError(err: unknown, unexpected: ErrorCode): PaymentError {
  if (err instanceof PaymentError) return err;
  if (err instanceof ChainError) return new PaymentError(err.code, err.shortMessage, { cause: err });
  if (err instanceof TollwayError) return new PaymentError(ErrorCodes.invalidPayload, err.shortMessage, { cause: err });
  return new PaymentError(unexpected, errorSummary(err) || "internal error", { cause: err });
}
