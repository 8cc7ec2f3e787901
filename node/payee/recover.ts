/**
 * Signer recovery for the hot path: native libsecp256k1 (npm `secp256k1`), falling back to noble
 * (pure JS, ~10x slower) with a logged warning when the native binding cannot load.
 * Enforces exactly what the escrow's ECDSA check accepts: 65 bytes, v in {27, 28}, 0 < r, s < n, s <= n/2.
 */
import { keccak_256 } from "@noble/hashes/sha3";
import type { Hex } from "viem";

const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const HALF_N = N >> 1n;
const N_BYTES = Buffer.from(N.toString(16).padStart(64, "0"), "hex");
const HALF_N_BYTES = Buffer.from(HALF_N.toString(16).padStart(64, "0"), "hex");
const ZERO32 = Buffer.alloc(32);

type NativeSecp = {
  ecdsaRecover(sig: Uint8Array, recid: number, msg32: Uint8Array, compressed: boolean, output?: Uint8Array): Uint8Array;
};

type Hasher = { init(): unknown; update(d: Uint8Array): unknown; digest(f: "binary"): Uint8Array };
let hasher: Hasher | undefined;

/**
 * keccak-256 for the hot path: hash-wasm's WebAssembly keccak (~1 us for a struct hash) once loaded,
 * noble's pure-JS keccak (~10 us) until then. `keccakReady` resolves when the fast one is in place.
 */
export function keccak256Fast(data: Uint8Array): Uint8Array {
  if (hasher === undefined) return keccak_256(data);
  hasher.init();
  hasher.update(data);
  return hasher.digest("binary");
}

export const keccakReady: Promise<void> = (require("hash-wasm") as { createKeccak(bits: 256): Promise<Hasher> })
  .createKeccak(256)
  .then((h) => {
    hasher = h;
  })
  .catch((err: Error) => {
    // eslint-disable-next-line no-console
    console.warn(`[tollway] WebAssembly keccak unavailable (${err.message}); using noble's`);
  });

let native: NativeSecp | undefined;
let backend: "native" | "noble" = "noble";
try {
  // The bindings entry loads only the compiled libsecp256k1 (never the JS elliptic fallback).
  native = require("secp256k1/bindings") as NativeSecp;
  backend = "native";
} catch (err) {
  native = undefined;
  // eslint-disable-next-line no-console
  console.warn(`[tollway] native secp256k1 unavailable (${(err as Error).message}); using the slower noble fallback`);
}

/** Which implementation recovers signatures in this process. */
export function recoveryBackend(): "native" | "noble" {
  return backend;
}

/** Why a signature was rejected before recovery. */
export type SignatureProblem = "length" | "v" | "range" | "high-s";

/** Checks the shape rules the escrow enforces; returns the problem or undefined. */
export function checkSignatureShape(sig: Uint8Array): SignatureProblem | undefined {
  if (sig.length !== 65) return "length";
  const v = sig[64]!;
  if (v !== 27 && v !== 28) return "v";
  const r = Buffer.from(sig.buffer, sig.byteOffset, 32);
  const s = Buffer.from(sig.buffer, sig.byteOffset + 32, 32);
  if (r.equals(ZERO32) || r.compare(N_BYTES) >= 0 || s.equals(ZERO32)) return "range";
  if (s.compare(HALF_N_BYTES) > 0) return "high-s";
  return undefined;
}

const pubOut = new Uint8Array(65);
/** Recovered public key (hex) -> address. Payers reuse one session key, so this skips a keccak per request. */
const addressOfPubkey = new Map<string, Hex>();

/**
 * Recovers the signer of a 32-byte digest from a 65-byte signature, as a lowercase 0x address (no
 * checksum work on the hot path), or undefined when the signature is malformed, malleable (high s) or
 * does not recover.
 */
export function recoverSigner(digest: Uint8Array, signature: Hex | Uint8Array): Hex | undefined {
  const sig = typeof signature === "string" ? Buffer.from(signature.slice(2), "hex") : signature;
  if (checkSignatureShape(sig) !== undefined) return undefined;
  const recid = sig[64]! - 27;
  let pub: Uint8Array;
  try {
    if (native) {
      pub = native.ecdsaRecover(sig.subarray(0, 64), recid, digest, false, pubOut);
    } else {
      const { secp256k1 } = require("@noble/curves/secp256k1") as typeof import("@noble/curves/secp256k1");
      const s = secp256k1.Signature.fromCompact(sig.subarray(0, 64)).addRecoveryBit(recid);
      pub = s.recoverPublicKey(digest).toRawBytes(false);
    }
  } catch {
    return undefined;
  }
  const pubHex = Buffer.from(pub.buffer, pub.byteOffset, pub.byteLength).toString("hex");
  let address = addressOfPubkey.get(pubHex);
  if (address === undefined) {
    address = `0x${Buffer.from(keccak256Fast(pub.subarray(1)).subarray(12)).toString("hex")}`;
    if (addressOfPubkey.size >= 50_000) addressOfPubkey.clear();
    addressOfPubkey.set(pubHex, address);
  }
  return address;
}
