/** Typed reads of the escrow. */
import { type Address, type Chain, type Hex, type Log, type PublicClient, type Transport, encodeFunctionData, parseEventLogs } from "viem";
import type { ChannelConfig, VoucherClaim } from "../protocol/typedData";
import { batchSettlementAbi } from "./abi";

export type OnchainChannel = {
  balance: bigint;
  totalClaimed: bigint;
  withdrawAmount: bigint;
  /** Unix seconds, 0 when no withdrawal is pending. */
  withdrawRequestedAt: number;
  refundNonce: bigint;
};

/** Reads a channel's on-chain state (at `blockNumber`, default latest). */
export async function readChannel(
  client: PublicClient<Transport, Chain>,
  escrow: Address,
  channelId: Hex,
  blockNumber?: bigint,
): Promise<OnchainChannel> {
  const opts = blockNumber !== undefined ? { blockNumber } : {};
  const [[balance, totalClaimed], [withdrawAmount, initiatedAt], refundNonce] = await Promise.all([
    client.readContract({ address: escrow, abi: batchSettlementAbi, functionName: "channels", args: [channelId], ...opts }),
    client.readContract({ address: escrow, abi: batchSettlementAbi, functionName: "pendingWithdrawals", args: [channelId], ...opts }),
    client.readContract({ address: escrow, abi: batchSettlementAbi, functionName: "refundNonce", args: [channelId], ...opts }),
  ]);
  return { balance, totalClaimed, withdrawAmount, withdrawRequestedAt: Number(initiatedAt), refundNonce };
}

const min = (a: bigint, b: bigint) => (a < b ? a : b);
const max = (a: bigint, b: bigint) => (a > b ? a : b);

/** The cautious merge of a channel's confirmed and latest state: what both views allow. */
export function cautiousView(confirmed: OnchainChannel, latest: OnchainChannel): OnchainChannel {
  const pending = latest.withdrawRequestedAt !== 0 ? latest : confirmed;
  return {
    balance: min(confirmed.balance, latest.balance),
    totalClaimed: max(confirmed.totalClaimed, latest.totalClaimed),
    withdrawRequestedAt: pending.withdrawRequestedAt,
    withdrawAmount: max(confirmed.withdrawAmount, latest.withdrawAmount),
    refundNonce: max(confirmed.refundNonce, latest.refundNonce),
  };
}

/**
 * A channel as a payee may rely on it: read at `head` (the block its logs came from; default the current
 * head, or latest without confirmations), and with `depth` confirmations the cautious merge of the view
 * `depth` blocks below and that one.
 */
export async function readChannelCautious(client: PublicClient<Transport, Chain>, escrow: Address, channelId: Hex, depth: bigint, head?: bigint): Promise<OnchainChannel> {
  const at = head ?? (depth > 0n ? await client.getBlockNumber({ cacheTime: 0 }) : undefined);
  if (depth === 0n || at === undefined || at < depth) return readChannel(client, escrow, channelId, at);
  const [confirmed, latest] = await Promise.all([readChannel(client, escrow, channelId, at - depth), readChannel(client, escrow, channelId, at)]);
  return cautiousView(confirmed, latest);
}

/** Claimed and settled totals of (receiver, token). */
export async function readReceiver(client: PublicClient<Transport, Chain>, escrow: Address, receiver: Address, token: Address) {
  const [totalClaimed, totalSettled] = await client.readContract({
    address: escrow,
    abi: batchSettlementAbi,
    functionName: "receivers",
    args: [receiver, token],
  });
  return { totalClaimed, totalSettled };
}

/**
 * The `multicall` payload of a cooperative close: claim the given rows (if any), then refund `amount`
 * (if any). With the receiverAuthorizer's signatures the relay-friendly forms are used
 * (`claimWithSignature`, `refundWithSignature` at `refund.nonce`); without, the sender must be the
 * receiver side.
 */
export function claimAndRefundCalls(
  config: ChannelConfig,
  claims: readonly VoucherClaim[],
  amount: bigint,
  signed: { claim?: Hex; refund?: { nonce: bigint; signature: Hex } } = {},
): Hex[] {
  const calls: Hex[] = [];
  if (claims.length > 0) {
    calls.push(
      signed.claim
        ? encodeFunctionData({ abi: batchSettlementAbi, functionName: "claimWithSignature", args: [claims, signed.claim] })
        : encodeFunctionData({ abi: batchSettlementAbi, functionName: "claim", args: [claims] }),
    );
  }
  if (signed.refund) {
    calls.push(encodeFunctionData({ abi: batchSettlementAbi, functionName: "refundWithSignature", args: [config, amount, signed.refund.nonce, signed.refund.signature] }));
  } else if (amount > 0n) {
    calls.push(encodeFunctionData({ abi: batchSettlementAbi, functionName: "refund", args: [config, amount] }));
  }
  return calls;
}

/**
 * What a transaction moved, from its receipt's `Settled` or `Refunded` events (0 when it emitted none:
 * a settle with nothing left, a refund capped to nothing). Reads made before a transaction can be stale.
 */
export function amountMoved(logs: Log[], eventName: "Settled" | "Refunded"): bigint {
  return parseEventLogs({ abi: batchSettlementAbi, logs, eventName }).reduce((sum, e) => sum + e.args.amount, 0n);
}
