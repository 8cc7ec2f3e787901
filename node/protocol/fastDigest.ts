/**
 * Hot-path hashing for one escrow domain: the domain separator is computed once, struct hashes are
 * written by hand into preallocated buffers and hashed with keccak-256. Produces exactly the digests of
 * typedData.ts (held together by test/node/fastDigest.test.ts).
 */
import { keccak_256 } from "@noble/hashes/sha3";
import { type Hex, hexToBytes, bytesToHex, keccak256, encodeAbiParameters } from "viem";
import { CHANNEL_CONFIG_TYPEHASH, VOUCHER_TYPEHASH, type ChannelConfig, type EscrowDomain } from "./typedData";

const DOMAIN_TYPEHASH = keccak256(
  new TextEncoder().encode("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
);

export type Digester = {
  /** 32-byte voucher digest for (channelId, maxClaimableAmount). */
  voucherDigest(channelId: Hex, maxClaimableAmount: bigint): Uint8Array;
  /** Channel id of a config. */
  channelId(config: ChannelConfig): Hex;
  readonly domainSeparator: Hex;
};

// In Node, hex goes straight into Buffers (no intermediate allocation); browsers take the portable path.
const NodeBuffer = (globalThis as { Buffer?: typeof Buffer }).Buffer;
const alloc = (n: number): Uint8Array => (NodeBuffer ? NodeBuffer.alloc(n) : new Uint8Array(n));

function writeHex(buf: Uint8Array, offset: number, hex: string, bytes: number) {
  // right-aligned big-endian write of `bytes` bytes from a 0x-prefixed hex string
  const body = hex.length - 2 === bytes * 2 ? hex.slice(2) : hex.slice(2).padStart(bytes * 2, "0");
  if (NodeBuffer && buf instanceof NodeBuffer) {
    if ((buf as Buffer).write(body, offset, bytes, "hex") !== bytes) throw new Error(`not ${bytes} bytes of hex: ${hex}`);
    return;
  }
  buf.set(hexToBytes(`0x${body}`), offset);
}

function writeUint(buf: Uint8Array, offset: number, value: bigint) {
  writeHex(buf, offset, `0x${value.toString(16).padStart(64, "0")}`, 32);
}

/** A keccak-256 implementation (bytes in, 32 bytes out). */
export type Keccak256 = (data: Uint8Array) => Uint8Array;

/**
 * Builds a digester for one escrow domain (one chain, one contract). `keccak` defaults to noble's
 * pure-JS keccak; a server passes a native one (see node/payee/recover.ts).
 */
export function createDigester(domain: EscrowDomain, keccak: Keccak256 = keccak_256): Digester {
  const domainSeparator = keccak256(
    encodeAbiParameters(
      [{ type: "bytes32" }, { type: "bytes32" }, { type: "bytes32" }, { type: "uint256" }, { type: "address" }],
      [
        DOMAIN_TYPEHASH,
        keccak256(new TextEncoder().encode(domain.name)),
        keccak256(new TextEncoder().encode(domain.version)),
        BigInt(domain.chainId),
        domain.verifyingContract,
      ],
    ),
  );
  const voucherTypehash = hexToBytes(VOUCHER_TYPEHASH);
  const configTypehash = hexToBytes(CHANNEL_CONFIG_TYPEHASH);
  // 0x1901 || domainSeparator || structHash
  const outer = alloc(66);
  outer[0] = 0x19;
  outer[1] = 0x01;
  outer.set(hexToBytes(domainSeparator), 2);
  const voucherStruct = alloc(96);
  voucherStruct.set(voucherTypehash, 0);
  const configStruct = alloc(256);
  configStruct.set(configTypehash, 0);

  return {
    domainSeparator,
    voucherDigest(channelId, maxClaimableAmount) {
      writeHex(voucherStruct, 32, channelId, 32);
      writeUint(voucherStruct, 64, maxClaimableAmount);
      outer.set(keccak(voucherStruct), 34);
      return keccak(outer);
    },
    channelId(c) {
      configStruct.fill(0, 32);
      writeHex(configStruct, 32 + 12, c.payer, 20);
      writeHex(configStruct, 64 + 12, c.payerAuthorizer, 20);
      writeHex(configStruct, 96 + 12, c.receiver, 20);
      writeHex(configStruct, 128 + 12, c.receiverAuthorizer, 20);
      writeHex(configStruct, 160 + 12, c.token, 20);
      writeUint(configStruct, 192, BigInt(c.withdrawDelay));
      writeHex(configStruct, 224, c.salt, 32);
      outer.set(keccak(configStruct), 34);
      return bytesToHex(keccak(outer));
    },
  };
}
