/** Encodings of deposit-collector data shared by every side (payer, payee, facilitator, tests). */
import { type Hex, encodeAbiParameters, keccak256 } from "viem";

/** ERC3009DepositCollector data: abi.encode(validAfter, validBefore, salt, signature). */
export function encodeErc3009CollectorData(auth: { validAfter: bigint; validBefore: bigint; salt: Hex; signature: Hex }): Hex {
  return encodeAbiParameters(
    [{ type: "uint256" }, { type: "uint256" }, { type: "uint256" }, { type: "bytes" }],
    [auth.validAfter, auth.validBefore, BigInt(auth.salt), auth.signature],
  );
}

/** The ERC-3009 authorization nonce that binds a gasless deposit to one channel: keccak256(abi.encode(channelId, salt)). */
export function erc3009DepositNonce(channelId: Hex, salt: bigint): Hex {
  return keccak256(encodeAbiParameters([{ type: "bytes32" }, { type: "uint256" }], [channelId, salt]));
}

/** PermitDepositCollector data: abi.encode(PermitDepositData) (see the contract). */
export const permitDepositDataAbi = [
  {
    type: "tuple",
    components: [
      { name: "nonce", type: "bytes32" },
      { name: "deadline", type: "uint256" },
      { name: "authorization", type: "bytes" },
      { name: "permitDeadline", type: "uint256" },
      { name: "v", type: "uint8" },
      { name: "r", type: "bytes32" },
      { name: "s", type: "bytes32" },
    ],
  },
] as const;

const ZERO32 = `0x${"00".repeat(32)}` as Hex;

/**
 * PermitDepositCollector data. Without `permit`, the collector spends an existing allowance.
 * @example encodePermitCollectorData({ nonce, deadline, authorization })
 */
export function encodePermitCollectorData(d: {
  nonce: Hex;
  deadline: bigint;
  authorization: Hex;
  permit?: { deadline: bigint; v: number; r: Hex; s: Hex };
}): Hex {
  return encodeAbiParameters(permitDepositDataAbi, [
    {
      nonce: d.nonce,
      deadline: d.deadline,
      authorization: d.authorization,
      permitDeadline: d.permit?.deadline ?? 0n,
      v: d.permit?.v ?? 0,
      r: d.permit?.r ?? ZERO32,
      s: d.permit?.s ?? ZERO32,
    },
  ]);
}

/** ERC-1271 `isValidSignature`, for payers whose payerAuthorizer is zero. */
export const erc1271Abi = [
  {
    type: "function",
    name: "isValidSignature",
    stateMutability: "view",
    inputs: [
      { name: "hash", type: "bytes32" },
      { name: "signature", type: "bytes" },
    ],
    outputs: [{ name: "", type: "bytes4" }],
  },
] as const;
export const ERC1271_MAGIC_VALUE = "0x1626ba7e";
