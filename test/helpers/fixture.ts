/**
 * Shared fixture for the contract tests: an escrow, both deposit collectors and the test tokens on the
 * in-process Hardhat network, plus signing helpers built on node/protocol (the one typed-data definition).
 */
import hre from "hardhat";
import { loadFixture } from "@nomicfoundation/hardhat-network-helpers";
import {
  type Address,
  type Hex,
  type WalletClient,
  keccak256,
  pad,
  toHex,
  zeroAddress,
} from "viem";
import { privateKeyToAccount, type PrivateKeyAccount } from "viem/accounts";
import {
  type ChannelConfig,
  type EscrowDomain,
  type VoucherClaim,
  claimBatchMessage,
  claimBatchTypes,
  escrowDomain,
  computeChannelId,
  receiveWithAuthorizationTypes,
  refundTypes,
  voucherTypes,
  depositAuthorizationTypes,
  PERMIT_COLLECTOR_DOMAIN,
} from "../../node/protocol/typedData";
import {
  encodeErc3009CollectorData,
  encodePermitCollectorData,
  erc3009DepositNonce,
  permitDepositDataAbi,
} from "../../node/protocol/collectorData";


export async function deployEscrowFixture() {
  const publicClient = await hre.viem.getPublicClient();
  const wallets = await hre.viem.getWalletClients();
  const [deployer, payer, receiver, receiverAuthorizer, relayer, other, payer2, receiver2] = wallets;
  const escrow = await hre.viem.deployContract("BatchSettlement");
  const erc3009Collector = await hre.viem.deployContract("ERC3009DepositCollector", [escrow.address]);
  const permitCollector = await hre.viem.deployContract("PermitDepositCollector", [escrow.address]);
  const usdc = await hre.viem.deployContract("TestUSDC");
  const chainId = await publicClient.getChainId();
  const domain = escrowDomain(chainId, escrow.address);
  // A hot key acting as payerAuthorizer (session key); generated, never funded.
  const sessionKey = privateKeyToAccount(keccak256(toHex("tollway-test-session-key")));
  for (const w of [payer, payer2, other]) {
    await usdc.write.mint([w.account.address, 1_000_000_000n]);
  }
  return {
    publicClient,
    deployer,
    payer,
    payer2,
    receiver,
    receiver2,
    receiverAuthorizer,
    relayer,
    other,
    escrow,
    erc3009Collector,
    permitCollector,
    usdc,
    chainId,
    domain,
    sessionKey,
  };
}

export type Fixture = Awaited<ReturnType<typeof deployEscrowFixture>>;

export function loadEscrow(): Promise<Fixture> {
  return loadFixture(deployEscrowFixture);
}

/** A channel config with sensible defaults; override any field. */
export function makeConfig(f: Fixture, overrides: Partial<ChannelConfig> = {}): ChannelConfig {
  return {
    payer: f.payer.account!.address,
    payerAuthorizer: f.sessionKey.address,
    receiver: f.receiver.account!.address,
    receiverAuthorizer: f.receiverAuthorizer.account!.address,
    token: f.usdc.address,
    withdrawDelay: 900,
    salt: pad("0x00", { size: 32 }),
    ...overrides,
  };
}

type Signer = WalletClient | PrivateKeyAccount;

async function signTyped(signer: Signer, args: any): Promise<Hex> {
  if ("signTypedData" in signer && !("transport" in signer)) {
    return (signer as PrivateKeyAccount).signTypedData(args);
  }
  const w = signer as WalletClient;
  return w.signTypedData({ account: w.account!, ...args });
}

/** Payer-side voucher signature. */
export function signVoucher(signer: Signer, domain: EscrowDomain, channelId: Hex, maxClaimableAmount: bigint) {
  return signTyped(signer, { domain, types: voucherTypes, primaryType: "Voucher", message: { channelId, maxClaimableAmount } });
}

/** receiverAuthorizer's refund signature. */
export function signRefund(signer: Signer, domain: EscrowDomain, channelId: Hex, nonce: bigint, amount: bigint) {
  return signTyped(signer, { domain, types: refundTypes, primaryType: "Refund", message: { channelId, nonce, amount } });
}

/** receiverAuthorizer's claim-batch signature. */
export function signClaimBatch(signer: Signer, domain: EscrowDomain, claims: VoucherClaim[]) {
  return signTyped(signer, {
    domain,
    types: claimBatchTypes,
    primaryType: "ClaimBatch",
    message: claimBatchMessage(domain, claims),
  });
}

/** collectorData for the ERC-3009 collector: the payer signs ReceiveWithAuthorization to the collector. */
export async function erc3009CollectorData(
  f: Fixture,
  payerWallet: WalletClient,
  config: ChannelConfig,
  amount: bigint,
  opts: { salt?: bigint; validAfter?: bigint; validBefore?: bigint; token?: Address; tokenName?: string; tokenVersion?: string } = {},
): Promise<Hex> {
  const channelId = computeChannelId(f.domain, config);
  const salt = opts.salt ?? BigInt(keccak256(toHex(`${channelId}-${amount}-${Math.random()}`)));
  const validAfter = opts.validAfter ?? 0n;
  const validBefore = opts.validBefore ?? 2n ** 40n;
  const nonce = erc3009DepositNonce(channelId, salt);
  const signature = await payerWallet.signTypedData({
    account: payerWallet.account!,
    domain: { name: opts.tokenName ?? "USDC", version: opts.tokenVersion ?? "2", chainId: f.chainId, verifyingContract: opts.token ?? config.token },
    types: receiveWithAuthorizationTypes,
    primaryType: "ReceiveWithAuthorization",
    message: { from: config.payer, to: f.erc3009Collector.address, value: amount, validAfter, validBefore, nonce },
  });
  return encodeErc3009CollectorData({ validAfter, validBefore, salt: toHex(salt, { size: 32 }), signature });
}

export { permitDepositDataAbi };

/** collectorData for the permit collector using an existing allowance (no permit). */
export async function allowanceCollectorData(
  f: Fixture,
  payerWallet: WalletClient,
  channelId: Hex,
  amount: bigint,
  opts: { nonce?: Hex; deadline?: bigint } = {},
): Promise<Hex> {
  const nonce = opts.nonce ?? keccak256(toHex(`${channelId}-${Math.random()}`));
  const deadline = opts.deadline ?? 2n ** 40n;
  const authorization = await payerWallet.signTypedData({
    account: payerWallet.account!,
    domain: { ...PERMIT_COLLECTOR_DOMAIN, chainId: f.chainId, verifyingContract: f.permitCollector.address },
    types: depositAuthorizationTypes,
    primaryType: "DepositAuthorization",
    message: { channelId, amount, nonce, deadline },
  });
  return encodePermitCollectorData({ nonce, deadline, authorization });
}

/** Deposits through the ERC-3009 collector, relayed by `relayer` (gasless for the payer). */
export async function depositGasless(f: Fixture, config: ChannelConfig, amount: bigint, payerWallet = f.payer) {
  const data = await erc3009CollectorData(f, payerWallet, config, amount);
  const hash = await f.escrow.write.deposit([config, amount, f.erc3009Collector.address, data], {
    account: f.relayer.account!,
  });
  return f.publicClient.waitForTransactionReceipt({ hash });
}

/** A claim row with a fresh voucher signature by the session key (config.payerAuthorizer). */
export async function claimRow(
  f: Fixture,
  config: ChannelConfig,
  maxClaimableAmount: bigint,
  totalClaimed: bigint = maxClaimableAmount,
  signer: Signer = f.sessionKey,
): Promise<VoucherClaim> {
  const channelId = computeChannelId(f.domain, config);
  const signature = await signVoucher(signer, f.domain, channelId, maxClaimableAmount);
  return { voucher: { channel: config, maxClaimableAmount }, signature, totalClaimed };
}

export { computeChannelId, zeroAddress };
