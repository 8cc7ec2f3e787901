/**
 * A minimal hand-rolled payer for node tests: builds PAYMENT-SIGNATURE headers (deposit, voucher,
 * refund) from a 402's requirements with viem signatures, using node/protocol's typed data.
 */
import { type Hex, type LocalAccount, keccak256, pad, toHex } from "viem";
import { batchSettlementAbi } from "../../node/chain/abi";
import { encodeErc3009CollectorData, erc3009DepositNonce } from "../../node/protocol/collectorData";
import {
  type ChannelConfig,
  computeChannelId,
  escrowDomain,
  receiveWithAuthorizationTypes,
  voucherTypes,
  CANONICAL_ADDRESSES,
} from "../../node/protocol/typedData";
import { HEADERS, decodeBase64Json, encodeBase64Json } from "../../node/protocol/wire";
import { clientsFor } from "./chainNode";

export type Accept = {
  scheme: string;
  network: string;
  amount: string;
  asset: Hex;
  payTo: Hex;
  maxTimeoutSeconds: number;
  extra: { receiverAuthorizer: Hex; withdrawDelay: number; name: string; version: string; [k: string]: unknown };
};

export async function fetchRequirements(url: string): Promise<{ accept: Accept; body: any }> {
  const res = await fetch(url);
  if (res.status !== 402) throw new Error(`expected 402, got ${res.status}`);
  const body = decodeBase64Json(res.headers.get(HEADERS.paymentRequired)!, "PAYMENT-REQUIRED") as any;
  return { accept: body.accepts[0], body };
}

export class WirePayer {
  readonly domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement);
  constructor(
    readonly account: LocalAccount,
    readonly sessionKey: LocalAccount = account,
    readonly salt: Hex = pad("0x01", { size: 32 }),
  ) {}

  config(accept: Accept): ChannelConfig {
    return {
      payer: this.account.address,
      payerAuthorizer: this.sessionKey.address,
      receiver: accept.payTo,
      receiverAuthorizer: accept.extra.receiverAuthorizer,
      token: accept.asset,
      withdrawDelay: accept.extra.withdrawDelay,
      salt: this.salt,
    };
  }

  channelId(accept: Accept): Hex {
    return computeChannelId(this.domain, this.config(accept));
  }

  async voucher(accept: Accept, max: bigint) {
    const channelId = this.channelId(accept);
    const signature = await this.sessionKey.signTypedData({
      domain: this.domain,
      types: voucherTypes,
      primaryType: "Voucher",
      message: { channelId, maxClaimableAmount: max },
    });
    return { channelId, maxClaimableAmount: max.toString(), signature };
  }

  envelope(accept: Accept, payload: unknown): string {
    return encodeBase64Json({ x402Version: 2, accepted: accept, payload });
  }

  async voucherHeader(accept: Accept, max: bigint): Promise<string> {
    return this.envelope(accept, { type: "voucher", channelConfig: this.config(accept), voucher: await this.voucher(accept, max) });
  }

  async depositHeader(accept: Accept, depositAmount: bigint, max: bigint, collector: Hex = CANONICAL_ADDRESSES.erc3009DepositCollector): Promise<string> {
    const config = this.config(accept);
    const channelId = this.channelId(accept);
    const salt = keccak256(toHex(`${channelId}-${depositAmount}-${Date.now()}-${Math.random()}`));
    const nonce = erc3009DepositNonce(channelId, BigInt(salt));
    const validBefore = BigInt(Math.floor(Date.now() / 1000) + 3600 * 24);
    const signature = await this.account.signTypedData({
      domain: { name: accept.extra.name, version: accept.extra.version, chainId: 31337, verifyingContract: accept.asset },
      types: receiveWithAuthorizationTypes,
      primaryType: "ReceiveWithAuthorization",
      message: { from: config.payer, to: collector, value: depositAmount, validAfter: 0n, validBefore, nonce },
    });
    return this.envelope(accept, {
      type: "deposit",
      channelConfig: config,
      voucher: await this.voucher(accept, max),
      deposit: {
        amount: depositAmount.toString(),
        authorization: { erc3009Authorization: { validAfter: "0", validBefore: validBefore.toString(), salt, signature } },
      },
    });
  }

  async refundHeader(accept: Accept, charged: bigint, amount?: bigint): Promise<string> {
    return this.envelope(accept, {
      type: "refund",
      channelConfig: this.config(accept),
      voucher: await this.voucher(accept, charged),
      ...(amount !== undefined ? { amount: amount.toString() } : {}),
    });
  }
}

export async function payWith(url: string, header: string, init: RequestInit = {}) {
  const res = await fetch(url, { ...init, headers: { ...(init.headers as Record<string, string>), [HEADERS.paymentSignature]: header } });
  const pr = res.headers.get(HEADERS.paymentResponse);
  const req = res.headers.get(HEADERS.paymentRequired);
  return {
    res,
    status: res.status,
    text: await res.text(),
    paymentResponse: pr ? (decodeBase64Json(pr, "PAYMENT-RESPONSE") as any) : undefined,
    paymentRequired: req ? (decodeBase64Json(req, "PAYMENT-REQUIRED") as any) : undefined,
  };
}

/** A payer that signs its own vouchers (payerAuthorizer = 0: the escrow checks them as an EOA's or by ERC-1271). */
export class PayerSigns extends WirePayer {
  override config(a: Accept): ChannelConfig {
    return { ...super.config(a), payerAuthorizer: "0x0000000000000000000000000000000000000000" };
  }
}

/** The payer funds its channel on chain itself (not relayed by a node): a node first meets it at its first voucher. */
export async function depositOnChain(rpcUrl: string, payer: WirePayer, accept: Accept, amount: bigint): Promise<void> {
  const payload = JSON.parse(Buffer.from(await payer.depositHeader(accept, amount, BigInt(accept.amount)), "base64").toString("utf8")).payload;
  const auth = payload.deposit.authorization.erc3009Authorization;
  const data = encodeErc3009CollectorData({ validAfter: BigInt(auth.validAfter), validBefore: BigInt(auth.validBefore), salt: auth.salt, signature: auth.signature });
  const { walletClient, publicClient } = clientsFor(rpcUrl, payer.account);
  const hash = await walletClient.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "deposit", args: [payer.config(accept), amount, CANONICAL_ADDRESSES.erc3009DepositCollector, data], chain: null } as never);
  const { status } = await publicClient.waitForTransactionReceipt({ hash });
  if (status !== "success") throw new Error(`deposit on chain reverted: ${hash}`);
}

/** The payer's first paid request carries its deposit (1,000,000 units, relayed by the node at `url`); the channel id. */
export async function depositThroughNode(url: string, payer: WirePayer, accept: Accept): Promise<Hex> {
  const r = await payWith(url, await payer.depositHeader(accept, 1_000_000n, BigInt(accept.amount)));
  if (r.status !== 200) throw new Error(`deposit through the node answered ${r.status}: ${r.text}`);
  return payer.channelId(accept);
}

/** The payer starts a timed withdrawal of `amount` on chain itself (its own gas). */
export async function initiateWithdraw(rpcUrl: string, payer: WirePayer, accept: Accept, amount: bigint): Promise<void> {
  const { walletClient, publicClient } = clientsFor(rpcUrl, payer.account);
  const hash = await walletClient.writeContract({ address: CANONICAL_ADDRESSES.batchSettlement, abi: batchSettlementAbi, functionName: "initiateWithdraw", args: [payer.config(accept), amount], chain: null } as never);
  const { status } = await publicClient.waitForTransactionReceipt({ hash });
  if (status !== "success") throw new Error(`initiateWithdraw reverted: ${hash}`);
}
