/** Encodings of deposit-collector data shared by every side (payer, payee, facilitator, tests). */
import { type Hex, encodeAbiParameters } from "viem";

/** ERC3009DepositCollector data: abi.encode(validAfter, validBefore, salt, signature). */
export function encodeErc3009CollectorData(auth: { validAfter: bigint; validBefore: bigint; salt: Hex; signature: Hex }): Hex {
  return encodeAbiParameters(
    [{ type: "uint256" }, { type: "uint256" }, { type: "uint256" }, { type: "bytes" }],
    [auth.validAfter, auth.validBefore, BigInt(auth.salt), auth.signature],
  );
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
