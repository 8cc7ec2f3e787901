/**
 * Errors shared by every side. One base class (viem-style: shortMessage, metaMessages, cause) and a
 * small subclass per failure. Callers branch on the class or on `code`, never on message text.
 */

/** Error codes of the x402 `batch-settlement` EVM scheme (exact spec strings) plus transport-level codes. */
export const ErrorCodes = {
  authorizerAddressMismatch: "invalid_batch_settlement_evm_authorizer_address_mismatch",
  channelBusy: "invalid_batch_settlement_evm_channel_busy",
  channelIdMismatch: "invalid_batch_settlement_evm_channel_id_mismatch",
  channelNotFound: "invalid_batch_settlement_evm_channel_not_found",
  channelStateReadFailed: "invalid_batch_settlement_evm_channel_state_read_failed",
  chargeExceedsSignedCumulative: "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative",
  claimPayload: "invalid_batch_settlement_evm_claim_payload",
  claimSimulationFailed: "invalid_batch_settlement_evm_claim_simulation_failed",
  claimTransactionFailed: "invalid_batch_settlement_evm_claim_transaction_failed",
  cumulativeAmountMismatch: "invalid_batch_settlement_evm_cumulative_amount_mismatch",
  cumulativeBelowClaimed: "invalid_batch_settlement_evm_cumulative_below_claimed",
  cumulativeExceedsBalance: "invalid_batch_settlement_evm_cumulative_exceeds_balance",
  depositPayload: "invalid_batch_settlement_evm_deposit_payload",
  depositSimulationFailed: "invalid_batch_settlement_evm_deposit_simulation_failed",
  depositTransactionFailed: "invalid_batch_settlement_evm_deposit_transaction_failed",
  erc3009AuthorizationRequired: "invalid_batch_settlement_evm_erc3009_authorization_required",
  insufficientBalance: "invalid_batch_settlement_evm_insufficient_balance",
  missingChannel: "invalid_batch_settlement_evm_missing_channel",
  missingEip712Domain: "invalid_batch_settlement_evm_missing_eip712_domain",
  networkMismatch: "invalid_batch_settlement_evm_network_mismatch",
  authorizationValidAfter: "invalid_batch_settlement_evm_payload_authorization_valid_after",
  authorizationValidBefore: "invalid_batch_settlement_evm_payload_authorization_valid_before",
  payloadType: "invalid_batch_settlement_evm_payload_type",
  receiveAuthorizationSignature: "invalid_batch_settlement_evm_receive_authorization_signature",
  receiverAuthorizerMismatch: "invalid_batch_settlement_evm_receiver_authorizer_mismatch",
  receiverMismatch: "invalid_batch_settlement_evm_receiver_mismatch",
  refundAmountInvalid: "invalid_batch_settlement_evm_refund_amount_invalid",
  refundNoBalance: "invalid_batch_settlement_evm_refund_no_balance",
  refundPayload: "invalid_batch_settlement_evm_refund_payload",
  refundSimulationFailed: "invalid_batch_settlement_evm_refund_simulation_failed",
  refundTransactionFailed: "invalid_batch_settlement_evm_refund_transaction_failed",
  rpcReadFailed: "invalid_batch_settlement_evm_rpc_read_failed",
  scheme: "invalid_batch_settlement_evm_scheme",
  settlePayload: "invalid_batch_settlement_evm_settle_payload",
  nothingToSettle: "invalid_batch_settlement_evm_nothing_to_settle",
  settleSimulationFailed: "invalid_batch_settlement_evm_settle_simulation_failed",
  settleTransactionFailed: "invalid_batch_settlement_evm_settle_transaction_failed",
  tokenMismatch: "invalid_batch_settlement_evm_token_mismatch",
  transactionReverted: "invalid_batch_settlement_evm_transaction_reverted",
  unknownSettleAction: "invalid_batch_settlement_evm_unknown_settle_action",
  voucherPayload: "invalid_batch_settlement_evm_voucher_payload",
  voucherSignature: "invalid_batch_settlement_evm_voucher_signature",
  waitForReceiptFailed: "invalid_batch_settlement_evm_wait_for_receipt_failed",
  withdrawDelayMismatch: "invalid_batch_settlement_evm_withdraw_delay_mismatch",
  withdrawDelayOutOfRange: "invalid_batch_settlement_evm_withdraw_delay_out_of_range",
  // Transport and facilitator level (x402 core): not scheme specific.
  /** A PAYMENT-SIGNATURE (or facilitator request) that is not a well-formed payment payload: base64, JSON, shape, size. */
  invalidPayload: "invalid_payload",
  /** Payment requirements that are malformed or missing (the payload's `accepted`, a facilitator request's). */
  invalidPaymentRequirements: "invalid_payment_requirements",
  invalidX402Version: "invalid_x402_version",
  paymentRequired: "payment_required",
  /** The server failed while verifying a payment (not the payment's fault); nothing was charged. */
  unexpectedVerifyError: "unexpected_verify_error",
  /** The server failed while settling (committing) a payment; nothing was charged. */
  unexpectedSettleError: "unexpected_settle_error",
  /** Not a payment error: the node's limit on the unpaid deposits and refunds it sends (its gas) per hour. */
  relayRateLimited: "relay_rate_limited",
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export type TollwayErrorParameters = {
  /** Extra lines for humans (values involved). */
  metaMessages?: string[];
  cause?: unknown;
};

/** Base of every Tollway error. */
export class TollwayError extends Error {
  override name = "TollwayError";
  readonly shortMessage: string;
  readonly metaMessages: string[];
  constructor(shortMessage: string, params: TollwayErrorParameters = {}) {
    const meta = params.metaMessages ?? [];
    super([shortMessage, ...meta].join("\n"), params.cause !== undefined ? { cause: params.cause } : undefined);
    this.shortMessage = shortMessage;
    this.metaMessages = meta;
  }
}

/**
 * A payment was refused. `code` is the spec's error string, `status` the HTTP status to answer with
 * (402 for payment problems the client can fix by paying differently, 400 for malformed input).
 */
export class PaymentError extends TollwayError {
  override name = "PaymentError";
  readonly code: ErrorCode;
  readonly status: 400 | 402 | 409 | 429 | 503;
  /** With a 429 or 503: seconds after which a retry can succeed (sent as Retry-After). */
  readonly retryAfterS?: number;
  constructor(code: ErrorCode, shortMessage: string, params: TollwayErrorParameters & { status?: 400 | 402 | 409 | 429 | 503; retryAfterS?: number } = {}) {
    super(shortMessage, params);
    this.code = code;
    this.status = params.status ?? 402;
    if (params.retryAfterS !== undefined) this.retryAfterS = params.retryAfterS;
  }
}

/** The client's cumulative amount does not match the server's state: answer with a corrective 402. */
export class CumulativeMismatchError extends PaymentError {
  override name = "CumulativeMismatchError";
  constructor(
    readonly expected: bigint,
    readonly received: bigint,
    /** The corrective 402's `extra` (channel state, last signed voucher) of the record the check was made against. */
    readonly corrective?: Record<string, unknown>,
  ) {
    super(ErrorCodes.cumulativeAmountMismatch, "Voucher cumulative amount does not match the channel state", {
      metaMessages: [`expected maxClaimableAmount: ${expected}`, `received: ${received}`],
    });
  }
}

/** Malformed input on the wire (bad base64, JSON, missing or mistyped fields). */
export class WireFormatError extends PaymentError {
  override name = "WireFormatError";
  constructor(code: ErrorCode, shortMessage: string, params: TollwayErrorParameters = {}) {
    super(code, shortMessage, { ...params, status: 400 });
  }
}

/** Configuration is invalid; thrown at setup, never per request. */
export class ConfigError extends TollwayError {
  override name = "ConfigError";
}

/** A chain interaction failed (RPC unreachable, transaction reverted, receipt timeout). */
export class ChainError extends TollwayError {
  override name = "ChainError";
  readonly code: ErrorCode;
  constructor(code: ErrorCode, shortMessage: string, params: TollwayErrorParameters = {}) {
    super(shortMessage, params);
    this.code = code;
  }
}

/** Why a payer refused to sign. */
export type PolicyViolation =
  | "no_matching_requirement"
  | "max_per_request"
  | "max_deposit"
  | "budget"
  | "pay_to_not_allowed"
  | "asset_not_allowed"
  | "channel_halted"
  | "payee_halted"
  | "withdraw_delay";

/** The payer's policy forbids this payment; nothing was signed. */
export class PolicyError extends TollwayError {
  override name = "PolicyError";
  constructor(
    readonly violation: PolicyViolation,
    shortMessage: string,
    params: TollwayErrorParameters = {},
  ) {
    super(shortMessage, params);
  }
}

/**
 * The server broke a client verification rule of the scheme (overcharge, discontinuous cumulative,
 * wrong channel, forged corrective voucher). The payer stops signing for that channel.
 */
export class ServerMisbehaviorError extends TollwayError {
  override name = "ServerMisbehaviorError";
  constructor(
    readonly channelId: string,
    shortMessage: string,
    params: TollwayErrorParameters = {},
  ) {
    super(shortMessage, params);
  }
}

/**
 * One line about an error, fit for a log: the short message (viem's and ours), else the first line,
 * with every URL cut to its origin. RPC errors carry the endpoint URL (`URL: https://host/v2/<api key>`),
 * the request body and call arguments in their later lines; providers put API keys in paths and queries.
 */
export function errorSummary(err: unknown): string {
  const e = err as { shortMessage?: unknown; message?: unknown } | null | undefined;
  const text = typeof e?.shortMessage === "string" && e.shortMessage ? e.shortMessage : String(e?.message ?? err);
  return redactUrls(text.split("\n")[0] ?? "");
}

/** Cuts every http(s)/ws(s) URL in `text` to scheme://host[:port] (no credentials, path or query). */
export function redactUrls(text: string): string {
  return text.replace(/\b(https?|wss?):\/\/(?:[^\s/?#]*@)?([^\s/?#"'@),>]+)[^\s"'),>]*/gi, "$1://$2");
}
