/**
 * x402 v2 HTTP transport codec and the payload schemas of the `batch-settlement` EVM scheme.
 * Headers carry base64 JSON: PAYMENT-REQUIRED (402 answers; the same JSON is also the body),
 * PAYMENT-SIGNATURE (client -> server), PAYMENT-RESPONSE (server -> client).
 */
import { z } from "zod";
import { type Address, type Hex, getAddress } from "viem";
import { ErrorCodes, type ErrorCode, WireFormatError, PaymentError } from "./errors";
import { UINT128_MAX } from "./amounts";
import type { ChannelConfig } from "./typedData";

export const X402_VERSION = 2;
export const HEADERS = {
  paymentRequired: "PAYMENT-REQUIRED",
  paymentSignature: "PAYMENT-SIGNATURE",
  paymentResponse: "PAYMENT-RESPONSE",
  legacyPayment: "X-PAYMENT",
} as const;
/** What browsers must be allowed to read (Access-Control-Expose-Headers). */
export const EXPOSED_HEADERS = `${HEADERS.paymentRequired}, ${HEADERS.paymentResponse}, Retry-After`;
/** Largest PAYMENT-SIGNATURE header accepted, in bytes. */
export const MAX_HEADER_BYTES = 16 * 1024;

const hexRe = /^0x[0-9a-fA-F]*$/;
export const addressSchema = z
  .string()
  .regex(/^0x[0-9a-fA-F]{40}$/, "expected a 20-byte hex address")
  .transform((a) => getAddress(a) as Address);
export const bytes32Schema = z
  .string()
  .regex(/^0x[0-9a-fA-F]{64}$/, "expected 32 bytes of hex")
  .transform((h) => h.toLowerCase() as Hex);
/** Signatures: even-length hex, at most 2 KiB (ERC-1271 wallets may send more than 65 bytes). */
export const signatureSchema = z
  .string()
  .regex(hexRe, "expected hex")
  .refine((s) => s.length % 2 === 0 && s.length <= 2 + 4096, "expected even-length hex of at most 2048 bytes")
  .transform((s) => s.toLowerCase() as Hex);
/** Atomic amounts are decimal strings on the wire; uint128 range. */
export const uint128Schema = z
  .string()
  .regex(/^(0|[1-9]\d{0,38})$/, "expected a decimal integer string")
  .transform((s) => BigInt(s))
  .refine((v) => v <= UINT128_MAX, "out of uint128 range");
const UINT256_MAX = (1n << 256n) - 1n;
export const uint256Schema = z
  .union([z.string().regex(/^(0|[1-9]\d{0,77})$/), z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER)])
  .transform((s) => BigInt(s))
  .refine((v) => v <= UINT256_MAX, "out of uint256 range");

export const channelConfigSchema = z.object({
  payer: addressSchema,
  payerAuthorizer: addressSchema,
  receiver: addressSchema,
  receiverAuthorizer: addressSchema,
  token: addressSchema,
  withdrawDelay: z.number().int().nonnegative().max(2 ** 40 - 1),
  salt: bytes32Schema,
});

export const voucherSchema = z.object({
  channelId: bytes32Schema,
  maxClaimableAmount: uint128Schema,
  signature: signatureSchema,
});

export const requirementsExtraSchema = z
  .object({
    receiverAuthorizer: addressSchema,
    withdrawDelay: z.number().int().nonnegative(),
    name: z.string().optional(),
    version: z.string().optional(),
    assetTransferMethod: z.string().optional(),
  })
  .passthrough();

export const paymentRequirementsSchema = z.object({
  scheme: z.string().min(1),
  network: z.string().regex(/^[-a-z0-9]{3,8}:[-_a-zA-Z0-9*]{1,32}$/, "expected a CAIP-2 network id"),
  amount: uint128Schema,
  asset: addressSchema,
  payTo: addressSchema,
  maxTimeoutSeconds: z.number().positive(),
  extra: requirementsExtraSchema,
});

const erc3009AuthorizationSchema = z.object({
  validAfter: uint256Schema,
  validBefore: uint256Schema,
  salt: bytes32Schema,
  signature: signatureSchema,
});

export const depositPayloadSchema = z.object({
  type: z.literal("deposit"),
  channelConfig: channelConfigSchema,
  voucher: voucherSchema,
  deposit: z.object({
    amount: uint128Schema.refine((v) => v > 0n, "deposit amount must be positive"),
    authorization: z.object({
      erc3009Authorization: erc3009AuthorizationSchema.optional(),
      permit2Authorization: z.unknown().optional(),
    }),
  }),
});

export const voucherPayloadSchema = z.object({
  type: z.literal("voucher"),
  channelConfig: channelConfigSchema,
  voucher: voucherSchema,
});

export const refundPayloadSchema = z.object({
  type: z.literal("refund"),
  channelConfig: channelConfigSchema,
  voucher: voucherSchema,
  amount: z.string().optional(),
});

export type PaymentRequirements = z.infer<typeof paymentRequirementsSchema>;

/**
 * The requirements a server sends with its own channel operations (claim, settle, refund) at a
 * facilitator's /settle: no price, no timeout, and possibly no scheme extras (the stock channel
 * manager sends `maxTimeoutSeconds: 0, extra: {}`).
 */
export const managementRequirementsSchema = paymentRequirementsSchema.extend({
  maxTimeoutSeconds: z.number().nonnegative(),
  extra: requirementsExtraSchema.partial({ receiverAuthorizer: true, withdrawDelay: true }),
});
export type DepositPayload = z.infer<typeof depositPayloadSchema>;
export type VoucherPayload = z.infer<typeof voucherPayloadSchema>;
export type RefundPayload = z.infer<typeof refundPayloadSchema>;
export type SchemePayload = DepositPayload | VoucherPayload | RefundPayload;
export type Voucher = z.infer<typeof voucherSchema>;

export type PaymentPayload = {
  x402Version: 2;
  resource?: ResourceInfo;
  accepted: PaymentRequirements;
  payload: SchemePayload;
  extensions?: Record<string, unknown>;
};

export type ResourceInfo = { url: string; description?: string; mimeType?: string };

/** Channel snapshot returned to clients (decimal strings, as on the wire). */
export type ChannelStateWire = {
  channelId: Hex;
  balance: string;
  totalClaimed: string;
  withdrawRequestedAt: number;
  refundNonce: string;
  chargedCumulativeAmount?: string;
};

const envelopeSchema = z.object({
  x402Version: z.number(),
  resource: z.object({ url: z.string(), description: z.string().optional(), mimeType: z.string().optional() }).passthrough().nullish(),
  accepted: z.unknown(),
  payload: z.unknown(),
  extensions: z.record(z.unknown()).nullish(),
});

const payloadErrorCode: Record<string, ErrorCode> = {
  deposit: ErrorCodes.depositPayload,
  voucher: ErrorCodes.voucherPayload,
  refund: ErrorCodes.refundPayload,
};

function describe(err: z.ZodError): string[] {
  return err.issues.slice(0, 5).map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
}

/** base64 (standard or url-safe) -> utf8, strictly. */
export function decodeBase64Json(value: string, what: string): unknown {
  const compact = value.trim();
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(compact) || compact.length === 0) {
    throw new WireFormatError(ErrorCodes.invalidPayload, `${what} is not valid base64`);
  }
  const text = base64ToUtf8(compact);
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new WireFormatError(ErrorCodes.invalidPayload, `${what} is not valid JSON`, { cause });
  }
}

export function encodeBase64Json(value: unknown): string {
  return utf8ToBase64(JSON.stringify(value));
}

// The codec runs in Node (Buffer, fast) and in browsers (atob / btoa over UTF-8 bytes).
const NodeBuffer = (globalThis as { Buffer?: typeof Buffer }).Buffer;

function utf8ToBase64(text: string): string {
  if (NodeBuffer) return NodeBuffer.from(text, "utf8").toString("base64");
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]!);
  return btoa(bin);
}

function base64ToUtf8(b64: string): string {
  if (NodeBuffer) return NodeBuffer.from(b64, "base64").toString("utf8");
  const std = b64.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(std + "=".repeat((4 - (std.length % 4)) % 4));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/**
 * Decodes and validates a PAYMENT-SIGNATURE header of the batch-settlement scheme.
 * Throws WireFormatError (400) with the spec's error code for anything malformed.
 */
export function decodePaymentSignature(header: string): PaymentPayload {
  const bytes = NodeBuffer ? NodeBuffer.byteLength(header, "utf8") : new TextEncoder().encode(header).length;
  if (bytes > MAX_HEADER_BYTES) {
    throw new WireFormatError(ErrorCodes.invalidPayload, `PAYMENT-SIGNATURE is larger than ${MAX_HEADER_BYTES} bytes`);
  }
  const raw = decodeBase64Json(header, "PAYMENT-SIGNATURE");
  return fastVoucherEnvelope(raw) ?? parsePaymentPayload(raw);
}

/** Validates a decoded payment payload with the zod schemas (the reference path; errors are typed). */
export function parsePaymentPayload(raw: unknown): PaymentPayload {
  const env = envelopeSchema.safeParse(raw);
  if (!env.success) {
    throw new WireFormatError(ErrorCodes.invalidPayload, "PAYMENT-SIGNATURE is not an x402 payment payload", {
      metaMessages: describe(env.error),
    });
  }
  if (env.data.x402Version !== X402_VERSION) {
    throw new WireFormatError(
      ErrorCodes.invalidX402Version,
      `x402Version ${env.data.x402Version} is not supported: batch-settlement is an x402 v2 scheme`,
    );
  }
  const accepted = paymentRequirementsSchema.safeParse(env.data.accepted);
  if (!accepted.success) {
    throw new WireFormatError(ErrorCodes.invalidPaymentRequirements, "accepted payment requirements are malformed", {
      metaMessages: describe(accepted.error),
    });
  }
  const payload = parseSchemePayload(env.data.payload);
  return {
    x402Version: 2,
    resource: env.data.resource ?? undefined,
    accepted: accepted.data,
    payload,
    extensions: env.data.extensions ?? undefined,
  };
}

/** Validates the scheme payload object (`payload` of the envelope). */
export function parseSchemePayload(raw: unknown): SchemePayload {
  const type = (raw as { type?: unknown } | null)?.type;
  const schema =
    type === "deposit" ? depositPayloadSchema : type === "voucher" ? voucherPayloadSchema : type === "refund" ? refundPayloadSchema : undefined;
  if (!schema) {
    throw new WireFormatError(ErrorCodes.payloadType, `payload.type ${JSON.stringify(type)} is not deposit, voucher or refund`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new WireFormatError(payloadErrorCode[type as string]!, `${type} payload is malformed`, {
      metaMessages: describe(parsed.error),
    });
  }
  return parsed.data as SchemePayload;
}

/** Wire form of a channel config (JSON-safe). */
export function configToWire(c: ChannelConfig) {
  return { ...c };
}

/** PaymentRequired body (also base64'd into the PAYMENT-REQUIRED header). */
export type PaymentRequiredBody = {
  x402Version: 2;
  error?: string;
  resource: ResourceInfo;
  accepts: Array<Record<string, unknown>>;
  extensions?: Record<string, unknown>;
};

/** Serialises requirements for the wire (bigint -> decimal string). */
export function requirementsToWire(r: PaymentRequirements, extra: Record<string, unknown> = {}) {
  return {
    scheme: r.scheme,
    network: r.network,
    amount: r.amount.toString(),
    asset: r.asset,
    payTo: r.payTo,
    maxTimeoutSeconds: r.maxTimeoutSeconds,
    extra: { ...r.extra, ...extra },
  };
}

export function isPaymentError(e: unknown): e is PaymentError {
  return e instanceof PaymentError;
}

// -------------------------------------------------------------------------------------------------
// Hot path: a hand-written check of the most common envelope (a voucher payment). It accepts a strict
// subset of what the zod schemas above accept and builds the same result; anything it does not accept
// goes through zod, which also produces the error messages. test/node/wire.test.ts holds the two
// together on valid and invalid inputs.
// -------------------------------------------------------------------------------------------------

const ADDRESS_RE = /^0x[0-9a-fA-F]{40}$/;
const BYTES32_RE = /^0x[0-9a-fA-F]{64}$/;
const UINT128_RE = /^(0|[1-9]\d{0,38})$/;
const SIG_RE = /^0x(?:[0-9a-fA-F]{2}){0,2048}$/;
const NETWORK_RE = /^[-a-z0-9]{3,8}:[-_a-zA-Z0-9*]{1,32}$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
/** Checksummed form of addresses seen recently (the same few payers and payees repeat on every request). */
const checksummed = new Map<string, Address>();
function addr(v: unknown): Address | undefined {
  if (typeof v !== "string") return undefined;
  const hit = checksummed.get(v);
  if (hit !== undefined) return hit;
  if (!ADDRESS_RE.test(v)) return undefined;
  const a = getAddress(v) as Address;
  if (checksummed.size >= 10_000) checksummed.clear();
  checksummed.set(v, a);
  return a;
}
function u128(v: unknown): bigint | undefined {
  if (typeof v !== "string" || !UINT128_RE.test(v)) return undefined;
  const n = BigInt(v);
  return n <= UINT128_MAX ? n : undefined;
}
function isInt(v: unknown, max: number): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
}

/** The voucher envelope, validated by hand, or undefined to fall back to the zod path. */
export function fastVoucherEnvelope(raw: unknown): PaymentPayload | undefined {
  if (!isObject(raw) || raw.x402Version !== 2) return undefined;
  const { accepted: a, payload: p, resource, extensions } = raw;
  if (resource !== undefined && resource !== null) return undefined;
  if (extensions !== undefined && extensions !== null && !isObject(extensions)) return undefined;
  if (!isObject(a) || !isObject(p) || p.type !== "voucher") return undefined;
  if (typeof a.scheme !== "string" || a.scheme.length === 0) return undefined;
  if (typeof a.network !== "string" || !NETWORK_RE.test(a.network)) return undefined;
  if (typeof a.maxTimeoutSeconds !== "number" || !(a.maxTimeoutSeconds > 0)) return undefined;
  const amount = u128(a.amount);
  const asset = addr(a.asset);
  const payTo = addr(a.payTo);
  const x = a.extra;
  if (amount === undefined || !asset || !payTo || !isObject(x)) return undefined;
  const receiverAuthorizer = addr(x.receiverAuthorizer);
  if (!receiverAuthorizer || !isInt(x.withdrawDelay, Number.MAX_SAFE_INTEGER)) return undefined;
  for (const k of ["name", "version", "assetTransferMethod"] as const) {
    if (x[k] !== undefined && typeof x[k] !== "string") return undefined;
  }
  const c = p.channelConfig;
  const v = p.voucher;
  if (!isObject(c) || !isObject(v)) return undefined;
  const payer = addr(c.payer);
  const payerAuthorizer = addr(c.payerAuthorizer);
  const receiver = addr(c.receiver);
  const cReceiverAuthorizer = addr(c.receiverAuthorizer);
  const token = addr(c.token);
  if (!payer || !payerAuthorizer || !receiver || !cReceiverAuthorizer || !token) return undefined;
  if (!isInt(c.withdrawDelay, 2 ** 40 - 1)) return undefined;
  if (typeof c.salt !== "string" || !BYTES32_RE.test(c.salt)) return undefined;
  if (typeof v.channelId !== "string" || !BYTES32_RE.test(v.channelId)) return undefined;
  const max = u128(v.maxClaimableAmount);
  if (max === undefined || typeof v.signature !== "string" || !SIG_RE.test(v.signature)) return undefined;
  return {
    x402Version: 2,
    resource: undefined,
    accepted: {
      scheme: a.scheme,
      network: a.network,
      amount,
      asset,
      payTo,
      maxTimeoutSeconds: a.maxTimeoutSeconds,
      extra: { ...x, receiverAuthorizer, withdrawDelay: x.withdrawDelay } as PaymentRequirements["extra"],
    },
    payload: {
      type: "voucher",
      channelConfig: {
        payer,
        payerAuthorizer,
        receiver,
        receiverAuthorizer: cReceiverAuthorizer,
        token,
        withdrawDelay: c.withdrawDelay,
        salt: c.salt.toLowerCase() as Hex,
      },
      voucher: { channelId: v.channelId.toLowerCase() as Hex, maxClaimableAmount: max, signature: v.signature.toLowerCase() as Hex },
    },
    extensions: (extensions as Record<string, unknown> | null | undefined) ?? undefined,
  };
}
