/**
 * Shared load-generation pieces of the benchmarks: a server process started by script, pre-signed
 * voucher streams per channel (signed with native libsecp256k1 before the timed part), and an
 * autocannon run in which every connection takes a free channel for each request, so each channel sees
 * one sequential stream.
 */
import autocannon from "autocannon";
import { spawn, type ChildProcess } from "node:child_process";
import { hexToBytes, keccak256, toHex, type Address, type Hex } from "viem";
import { privateKeyToAccount, type PrivateKeyAccount } from "viem/accounts";
import { batchSettlementAbi } from "../node/chain/abi";
import { encodeErc3009CollectorData, erc3009DepositNonce } from "../node/protocol/collectorData";
import type { Digester } from "../node/protocol/fastDigest";
import { CANONICAL_ADDRESSES, type ChannelConfig, receiveWithAuthorizationTypes } from "../node/protocol/typedData";
import { HEADERS, encodeBase64Json } from "../node/protocol/wire";

const secp = require("secp256k1/bindings") as { ecdsaSign(msg: Uint8Array, key: Uint8Array): { signature: Uint8Array; recid: number } };

export type Channel = { id: Hex; headers: string[]; next: number; busy: boolean };

export const children: ChildProcess[] = [];
process.on("exit", () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Starts `node -r ts-node/register/transpile-only <script>` with TOLLWAY_BENCH=<env>; waits for "READY <port>". */
export async function startBenchServer(script: string, env: Record<string, unknown>): Promise<{ proc: ChildProcess; port: number; stop(): Promise<string> }> {
  const prof = process.env.TOLLWAY_BENCH_PROF ? ["--cpu-prof", "--cpu-prof-dir", process.env.TOLLWAY_BENCH_PROF] : [];
  const proc = spawn(process.execPath, [...prof, "-r", "ts-node/register/transpile-only", script], {
    env: { ...process.env, TOLLWAY_BENCH: JSON.stringify(env) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(proc);
  let out = "";
  const port = await new Promise<number>((resolve, reject) => {
    proc.stdout!.on("data", (d) => {
      out += String(d);
      const m = /READY (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.once("exit", (code) => reject(new Error(`bench server ${script} exited (${code})`)));
  });
  return {
    proc,
    port,
    stop: () =>
      new Promise((resolve) => {
        proc.once("exit", () => resolve(out));
        proc.kill("SIGTERM");
      }),
  };
}

export type ChannelSetup = {
  relayer: { writeContract: (a: any) => Promise<Hex>; };
  waitForReceipt: (hash: Hex) => Promise<unknown>;
  digester: Digester;
  token: Address;
  receiver: Address;
  receiverAuthorizer: Address;
  accept: Record<string, unknown>;
  price: bigint;
  count: number;
  vouchers: number;
  label: string;
  /** Payers (funded with the token beforehand). */
  payers: PrivateKeyAccount[];
};

/** Gasless deposits (relayed) and pre-signed voucher headers for `count` channels. */
export async function setupChannels(o: ChannelSetup): Promise<Channel[]> {
  const channels: Channel[] = [];
  const deposit = o.price * BigInt(o.vouchers + 10);
  for (let i = 0; i < o.count; i++) {
    const payer = o.payers[i]!;
    const sessionKey = keccak256(toHex(`${o.label}-session-${i}`));
    const session = privateKeyToAccount(sessionKey);
    const config: ChannelConfig = { payer: payer.address, payerAuthorizer: session.address, receiver: o.receiver, receiverAuthorizer: o.receiverAuthorizer, token: o.token, withdrawDelay: 900, salt: keccak256(toHex(`${o.label}-salt-${i}`)) };
    const id = o.digester.channelId(config);
    const salt = BigInt(keccak256(toHex(`${o.label}-deposit-${i}`)));
    const signature = await payer.signTypedData({
      domain: { name: "USDC", version: "2", chainId: 31337, verifyingContract: o.token },
      types: receiveWithAuthorizationTypes,
      primaryType: "ReceiveWithAuthorization",
      message: { from: payer.address, to: CANONICAL_ADDRESSES.erc3009DepositCollector, value: deposit, validAfter: 0n, validBefore: 2n ** 40n, nonce: erc3009DepositNonce(id, salt) },
    });
    const hash = await o.relayer.writeContract({
      address: CANONICAL_ADDRESSES.batchSettlement,
      abi: batchSettlementAbi,
      functionName: "deposit",
      args: [config, deposit, CANONICAL_ADDRESSES.erc3009DepositCollector, encodeErc3009CollectorData({ validAfter: 0n, validBefore: 2n ** 40n, salt: toHex(salt, { size: 32 }), signature })],
    });
    await o.waitForReceipt(hash);
    const key = hexToBytes(sessionKey);
    const headers: string[] = [];
    for (let k = 1; k <= o.vouchers; k++) {
      const max = o.price * BigInt(k);
      const { signature: sig, recid } = secp.ecdsaSign(o.digester.voucherDigest(id, max), key);
      const sigHex = `0x${Buffer.from(sig).toString("hex")}${(recid + 27).toString(16)}`;
      headers.push(encodeBase64Json({ x402Version: 2, accepted: o.accept, payload: { type: "voucher", channelConfig: config, voucher: { channelId: id, maxClaimableAmount: max.toString(), signature: sigHex } } }));
    }
    channels.push({ id, headers, next: 0, busy: false });
  }
  return channels;
}

/** rps counts 2xx answers only; `sample` is the first non-2xx body seen (for diagnosis). */
export type RunResult = { rps: number; p50: number; p99: number; non2xx: number; errors: number; total: number; sample?: string };

/** One autocannon run; with `channels`, every request carries the next voucher of a free channel. */
export async function runLoad(url: string, o: { channels?: Channel[]; price?: bigint; connections: number; seconds: number; rate?: number }): Promise<RunResult> {
  const channels = o.channels;
  let sample: string | undefined;
  for (const c of channels ?? []) c.busy = false;
  const take = () => {
    const ch = channels!.find((c) => !c.busy) ?? channels![0]!;
    ch.busy = true;
    return ch;
  };
  const result = await autocannon({
    url,
    connections: o.connections,
    duration: o.seconds,
    pipelining: 1,
    ...(o.rate ? { overallRate: o.rate } : {}),
    requests: [
      channels
        ? {
            method: "GET",
            setupRequest: (req: any, context: any) => {
              // Never throw inside autocannon: an exhausted channel repeats its last voucher and the
              // resulting 402s show up in non-2xx.
              const ch = take();
              context.ch = ch;
              req.headers = { [HEADERS.paymentSignature]: ch.headers[Math.min(ch.next, ch.headers.length - 1)]! };
              return req;
            },
            onResponse: (status: number, body: string, context: any, headers?: Record<string, string>) => {
              const ch = context.ch as Channel;
              if (status !== 200 && sample === undefined) sample = `${status} ${body.slice(0, 300)}`;
              if (status === 200) ch.next++;
              else if (status === 402) {
                // resynchronise from the corrective 402 (header, or body when the header is absent)
                try {
                  const h = headers?.["payment-required"] ?? headers?.["PAYMENT-REQUIRED"];
                  const pr = h ? JSON.parse(Buffer.from(h, "base64").toString("utf8")) : JSON.parse(body);
                  const c = BigInt(pr.accepts[0].extra.channelState.chargedCumulativeAmount);
                  ch.next = Number(c / (o.price ?? 1n));
                } catch {
                  /* keep */
                }
              }
              ch.busy = false;
            },
          }
        : { method: "GET" },
    ],
  } as autocannon.Options);
  const ok = result.requests.total - result.non2xx - result.errors;
  return { rps: ok / o.seconds, p50: result.latency.p50, p99: result.latency.p99, non2xx: result.non2xx, errors: result.errors, total: result.requests.total, sample };
}
