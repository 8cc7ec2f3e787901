/**
 * EIP-712 definitions of the x402 `batch-settlement` scheme on EVM: the one copy used by the payer
 * (signing), the payee (verifying), the chain layer (claims, refunds) and the tests. The escrow's
 * digest views (`getChannelId`, `getVoucherDigest`, `getRefundDigest`, `getClaimBatchDigest`) are
 * held to these by test/contracts/parity.test.ts.
 */
import { type Address, type Hex, hashTypedData, keccak256, toBytes } from "viem";

/** EIP-712 domain name and version of the escrow (same as the x402 reference contract). */
export const BATCH_SETTLEMENT_DOMAIN = { name: "x402 Batch Settlement", version: "1" } as const;

/** Scheme identifier on the wire. */
export const BATCH_SETTLEMENT_SCHEME = "batch-settlement" as const;

/** Canonical CREATE2 addresses of the x402 reference deployment (hard-coded by stock x402 clients). */
export const CANONICAL_ADDRESSES = {
  batchSettlement: "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003",
  erc3009DepositCollector: "0x4020806089470a89826cB9fB1f4059150b550004",
  permit2DepositCollector: "0x4020425FAf3B746C082C2f942b4E5159887B0005",
} as const satisfies Record<string, Address>;

/** Withdraw delay bounds enforced by the escrow, in seconds. */
export const MIN_WITHDRAW_DELAY = 900;
export const MAX_WITHDRAW_DELAY = 30 * 24 * 3600;

/** Immutable channel parameters; their EIP-712 hash is the channel id. */
export type ChannelConfig = {
  payer: Address;
  payerAuthorizer: Address;
  receiver: Address;
  receiverAuthorizer: Address;
  token: Address;
  withdrawDelay: number;
  salt: Hex;
};

/** A claim row as the escrow's `claim` / `claimWithSignature` take it. */
export type VoucherClaim = {
  voucher: { channel: ChannelConfig; maxClaimableAmount: bigint };
  signature: Hex;
  totalClaimed: bigint;
};

export const channelConfigTypes = {
  ChannelConfig: [
    { name: "payer", type: "address" },
    { name: "payerAuthorizer", type: "address" },
    { name: "receiver", type: "address" },
    { name: "receiverAuthorizer", type: "address" },
    { name: "token", type: "address" },
    { name: "withdrawDelay", type: "uint40" },
    { name: "salt", type: "bytes32" },
  ],
} as const;

export const voucherTypes = {
  Voucher: [
    { name: "channelId", type: "bytes32" },
    { name: "maxClaimableAmount", type: "uint128" },
  ],
} as const;

export const refundTypes = {
  Refund: [
    { name: "channelId", type: "bytes32" },
    { name: "nonce", type: "uint256" },
    { name: "amount", type: "uint128" },
  ],
} as const;

export const claimBatchTypes = {
  ClaimBatch: [{ name: "claims", type: "ClaimEntry[]" }],
  ClaimEntry: [
    { name: "channelId", type: "bytes32" },
    { name: "maxClaimableAmount", type: "uint128" },
    { name: "totalClaimed", type: "uint128" },
  ],
} as const;

/** EIP-3009 `ReceiveWithAuthorization`, signed by the payer for gasless deposits. */
export const receiveWithAuthorizationTypes = {
  ReceiveWithAuthorization: [
    { name: "from", type: "address" },
    { name: "to", type: "address" },
    { name: "value", type: "uint256" },
    { name: "validAfter", type: "uint256" },
    { name: "validBefore", type: "uint256" },
    { name: "nonce", type: "bytes32" },
  ],
} as const;

/** Tollway's PermitDepositCollector: the payer's binding of an allowance to one channel. */
export const depositAuthorizationTypes = {
  DepositAuthorization: [
    { name: "channelId", type: "bytes32" },
    { name: "amount", type: "uint256" },
    { name: "nonce", type: "bytes32" },
    { name: "deadline", type: "uint256" },
  ],
} as const;
export const PERMIT_COLLECTOR_DOMAIN = { name: "Tollway Permit Collector", version: "1" } as const;

/** EIP-2612 permit. */
export const permitTypes = {
  Permit: [
    { name: "owner", type: "address" },
    { name: "spender", type: "address" },
    { name: "value", type: "uint256" },
    { name: "nonce", type: "uint256" },
    { name: "deadline", type: "uint256" },
  ],
} as const;

export const CHANNEL_CONFIG_TYPEHASH = keccak256(
  toBytes(
    "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)",
  ),
);
export const VOUCHER_TYPEHASH = keccak256(toBytes("Voucher(bytes32 channelId,uint128 maxClaimableAmount)"));
export const REFUND_TYPEHASH = keccak256(toBytes("Refund(bytes32 channelId,uint256 nonce,uint128 amount)"));
export const CLAIM_ENTRY_TYPEHASH = keccak256(
  toBytes("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"),
);
export const CLAIM_BATCH_TYPEHASH = keccak256(
  toBytes("ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"),
);

/** The escrow's EIP-712 domain on one chain and deployment. */
export type EscrowDomain = {
  name: typeof BATCH_SETTLEMENT_DOMAIN.name;
  version: typeof BATCH_SETTLEMENT_DOMAIN.version;
  chainId: number;
  verifyingContract: Address;
};

/**
 * Builds the escrow's EIP-712 domain.
 * @example const domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement)
 */
export function escrowDomain(chainId: number, verifyingContract: Address): EscrowDomain {
  return { ...BATCH_SETTLEMENT_DOMAIN, chainId, verifyingContract };
}

/** Channel id: the EIP-712 hash of the config, bound to chain and escrow. */
export function computeChannelId(domain: EscrowDomain, config: ChannelConfig): Hex {
  return hashTypedData({ domain, types: channelConfigTypes, primaryType: "ChannelConfig", message: config });
}

/** Digest the payer side signs for a voucher. */
export function voucherDigest(domain: EscrowDomain, channelId: Hex, maxClaimableAmount: bigint): Hex {
  return hashTypedData({
    domain,
    types: voucherTypes,
    primaryType: "Voucher",
    message: { channelId, maxClaimableAmount },
  });
}

/** Digest the receiverAuthorizer signs for `refundWithSignature`. */
export function refundDigest(domain: EscrowDomain, channelId: Hex, nonce: bigint, amount: bigint): Hex {
  return hashTypedData({ domain, types: refundTypes, primaryType: "Refund", message: { channelId, nonce, amount } });
}

/** The ClaimBatch message of a list of claim rows. */
export function claimBatchMessage(domain: EscrowDomain, claims: readonly VoucherClaim[]) {
  return {
    claims: claims.map((c) => ({
      channelId: computeChannelId(domain, c.voucher.channel),
      maxClaimableAmount: c.voucher.maxClaimableAmount,
      totalClaimed: c.totalClaimed,
    })),
  };
}

/** Digest the receiverAuthorizer signs for `claimWithSignature`. */
export function claimBatchDigest(domain: EscrowDomain, claims: readonly VoucherClaim[]): Hex {
  return hashTypedData({
    domain,
    types: claimBatchTypes,
    primaryType: "ClaimBatch",
    message: claimBatchMessage(domain, claims),
  });
}
