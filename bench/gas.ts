/**
 * Gas benchmark of the escrow and its deposit collectors (`npm run bench:gas` = `hardhat run bench/gas.ts`).
 *
 * Deploys fresh on the in-process Hardhat network through node/chain/deploy.ts, replays a realistic day of one
 * receiver, prints receipt gasUsed per operation next to the x402 reference contract's figures, and writes
 * bench/gas-snapshot.json (committed; the delta against the previous snapshot is printed, like Uniswap's
 * snapshots/*.json).
 *
 * Scenario (all channels pay ONE receiver in TestUSDC):
 * - claim batches use distinct channels of distinct payers; every payer is a generated key that never holds ETH:
 *   its deposit is a gasless ERC-3009 authorization relayed by the relayer, its vouchers are signed by its own
 *   payerAuthorizer session key; channel salt 0 (the stock x402 client's default);
 * - the receiver's first claim ever (its (receiver, token) slot goes from zero) is measured apart; the 1/10/100
 *   rows then claim fresh channels, as a receiver's periodic claims do;
 * - settle is measured twice: the receiver's first (its token balance in the ERC-20 goes from zero, +17,100 gas
 *   of the token's SSTORE) and a later one (it already holds tokens); both are shown against the one reference;
 * - refunds return everything unclaimed of a channel that already had a claim (cooperative close after a
 *   session); initiate/finalizeWithdraw withdraw all of a never-claimed channel;
 * - deposits run after other channels already fund the escrow (its token balance is not zero).
 * Authorization deadlines are fixed values, so the calldata and the figures are the same on every run.
 */
import fs from "node:fs";
import path from "node:path";
import hre from "hardhat";
import {
  type Address,
  type Hash,
  type Hex,
  type TypedDataDefinition,
  encodeFunctionData,
  keccak256,
  pad,
  parseSignature,
  toHex,
} from "viem";
import { type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { deployTollway } from "../node/chain/deploy";
import {
  type ChannelConfig,
  type VoucherClaim,
  PERMIT_COLLECTOR_DOMAIN,
  claimBatchMessage,
  claimBatchTypes,
  computeChannelId,
  depositAuthorizationTypes,
  escrowDomain,
  permitTypes,
  receiveWithAuthorizationTypes,
  refundTypes,
  voucherTypes,
} from "../node/protocol/typedData";
import { encodeErc3009CollectorData, encodePermitCollectorData, erc3009DepositNonce } from "../node/protocol/collectorData";

// -------------------------------------------------------------------------------------------------
// Reference figures and goals
// -------------------------------------------------------------------------------------------------

/**
 * x402BatchSettlement (the scheme's reference contract), measured on this machine kind with solc 0.8.28,
 * 200 runs, cancun. `perChannel` figures compare against our total / channels.
 */
const REFERENCE: Record<string, { value: number; basis: "total" | "perChannel" }> = {
  "erc3009Deposit.new": { value: 119_382, basis: "total" },
  "erc3009Deposit.topUp": { value: 98_402, basis: "total" },
  "claim.1": { value: 48_369, basis: "total" },
  "claim.100": { value: 21_425, basis: "perChannel" },
  "claimWithSignature.100": { value: 24_109, basis: "perChannel" },
  settle: { value: 46_236, basis: "total" },
  "settle.again": { value: 46_236, basis: "total" },
  "refund.full": { value: 73_298, basis: "total" },
  "refundWithSignature.full": { value: 83_702, basis: "total" },
  initiateWithdraw: { value: 52_665, basis: "total" },
  finalizeWithdraw: { value: 49_610, basis: "total" },
  "escrow.runtimeBytes": { value: 11_175, basis: "total" },
};
const GOAL_CLAIM_PER_CHANNEL_100 = 20_000;
const EIP170_LIMIT = 24_576;

const SNAPSHOT_FILE = path.join(__dirname, "gas-snapshot.json");

// Fixed far-future deadlines (4 bytes, like a real timestamp) keep the calldata identical across runs.
const VALID_BEFORE = 4_102_444_800n; // 2100-01-01
const DEADLINE = 4_102_444_800n;

const DEPOSIT = 10_000_000n; // 10 USDC per channel
const TOP_UP = 5_000_000n;
const MINT = 100_000_000n; // payers keep a balance after depositing

// -------------------------------------------------------------------------------------------------
// Rows
// -------------------------------------------------------------------------------------------------

type Row = { key: string; label: string; value: number; channels?: number; unit?: "gas" | "bytes" };

const rows: Row[] = [];

function record(key: string, label: string, value: bigint | number, channels?: number, unit: Row["unit"] = "gas") {
  rows.push({ key, label, value: Number(value), channels, unit });
}

// -------------------------------------------------------------------------------------------------
// Main
// -------------------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  const publicClient = await hre.viem.getPublicClient();
  const testClient = await hre.viem.getTestClient();
  const [deployer, receiver, receiverAuthorizer, relayer, allowancePayer] = await hre.viem.getWalletClients();
  const chainId = await publicClient.getChainId();

  // Generated payers (no ETH) and their session keys, deterministic so every run signs the same bytes.
  const key = (label: string, i: number) => keccak256(toHex(`tollway-bench-${label}-${i}`));
  const newPayer = (i: number) => ({ payer: privateKeyToAccount(key("payer", i)), session: privateKeyToAccount(key("session", i)) });
  const GROUPS = { first: 1, claim1: 1, claim10: 10, claim100: 100, sig1: 1, sig10: 10, sig100: 100, later: 1 } as const;
  const claimChannelCount = Object.values(GROUPS).reduce((a, b) => a + b, 0);
  const claimPayers = Array.from({ length: claimChannelCount }, (_, i) => newPayer(i));
  const erc3009Payer = newPayer(10_000);
  const permitPayer = newPayer(10_001);

  const deployment = await deployTollway({
    walletClient: deployer,
    publicClient,
    deployTestToken: true,
    mintTestToken: {
      to: [...claimPayers.map((p) => p.payer.address), erc3009Payer.payer.address, permitPayer.payer.address, allowancePayer.account.address],
      amount: MINT,
    },
  });
  const escrow = await hre.viem.getContractAt("BatchSettlement", deployment.escrow);
  const usdc = await hre.viem.getContractAt("TestUSDC", deployment.token!);
  const domain = escrowDomain(chainId, escrow.address);
  const tokenDomain = { name: "USDC", version: "2", chainId, verifyingContract: usdc.address } as const;

  const gasOf = async (label: string, hash: Promise<Hash>): Promise<bigint> => {
    const receipt = await publicClient.waitForTransactionReceipt({ hash: await hash });
    if (receipt.status !== "success") throw new Error(`${label}: transaction reverted`);
    return receipt.gasUsed;
  };

  const configOf = (payer: Address, session: Address): ChannelConfig => ({
    payer,
    payerAuthorizer: session,
    receiver: receiver.account.address,
    receiverAuthorizer: receiverAuthorizer.account.address,
    token: usdc.address,
    withdrawDelay: 900,
    salt: pad("0x00", { size: 32 }),
  });

  /** collectorData of the ERC-3009 collector: the payer signs ReceiveWithAuthorization to the collector. */
  const erc3009Data = async (payer: PrivateKeyAccount, config: ChannelConfig, amount: bigint, saltLabel: string): Promise<Hex> => {
    const channelId = computeChannelId(domain, config);
    const salt = BigInt(keccak256(toHex(`erc3009-salt-${saltLabel}`)));
    const nonce = erc3009DepositNonce(channelId, salt);
    const signature = await payer.signTypedData({
      domain: tokenDomain,
      types: receiveWithAuthorizationTypes,
      primaryType: "ReceiveWithAuthorization",
      message: { from: payer.address, to: deployment.erc3009Collector, value: amount, validAfter: 0n, validBefore: VALID_BEFORE, nonce },
    });
    return encodeErc3009CollectorData({ validAfter: 0n, validBefore: VALID_BEFORE, salt: toHex(salt, { size: 32 }), signature });
  };

  /** collectorData of the permit collector: deposit authorization, plus an EIP-2612 permit when `permit`. */
  const permitData = async (
    sign: (args: TypedDataDefinition) => Promise<Hex>,
    owner: Address,
    config: ChannelConfig,
    amount: bigint,
    nonceLabel: string,
    permit: boolean,
  ): Promise<Hex> => {
    const channelId = computeChannelId(domain, config);
    const nonce = keccak256(toHex(`deposit-authorization-${nonceLabel}`));
    const authorization = await sign({
      domain: { ...PERMIT_COLLECTOR_DOMAIN, chainId, verifyingContract: deployment.permitCollector },
      types: depositAuthorizationTypes,
      primaryType: "DepositAuthorization",
      message: { channelId, amount, nonce, deadline: DEADLINE },
    });
    let v = 0;
    let r: Hex = pad("0x00", { size: 32 });
    let s: Hex = pad("0x00", { size: 32 });
    if (permit) {
      const permitNonce = await usdc.read.nonces([owner]);
      const signature = await sign({
        domain: tokenDomain,
        types: permitTypes,
        primaryType: "Permit",
        message: { owner, spender: deployment.permitCollector, value: amount, nonce: permitNonce, deadline: DEADLINE },
      });
      const parsed = parseSignature(signature);
      ({ r, s } = parsed);
      v = Number(parsed.v ?? 27n + BigInt(parsed.yParity));
    }
    return encodePermitCollectorData({ nonce, deadline: DEADLINE, authorization, permit: permit ? { deadline: DEADLINE, v, r, s } : undefined });
  };

  const deposit = (config: ChannelConfig, amount: bigint, collector: Address, data: Hex) =>
    escrow.write.deposit([config, amount, collector, data], { account: relayer.account });

  // ---------------------------------------------------------------------------------------------
  // Setup: fund every claim channel gaslessly (relayed, batched through the escrow's multicall).
  // ---------------------------------------------------------------------------------------------
  const claimChannels = await Promise.all(
    claimPayers.map(async ({ payer, session }, i) => {
      const config = configOf(payer.address, session.address);
      return { config, session, data: await erc3009Data(payer, config, DEPOSIT, `claim-${i}`) };
    }),
  );
  for (let i = 0; i < claimChannels.length; i += 40) {
    const calls = claimChannels.slice(i, i + 40).map((c) =>
      encodeFunctionData({ abi: escrow.abi, functionName: "deposit", args: [c.config, DEPOSIT, deployment.erc3009Collector, c.data] }),
    );
    await gasOf("setup deposits", escrow.write.multicall([calls], { account: relayer.account }));
  }

  // ---------------------------------------------------------------------------------------------
  // Deposits
  // ---------------------------------------------------------------------------------------------
  {
    const { payer, session } = erc3009Payer;
    const config = configOf(payer.address, session.address);
    const collector = deployment.erc3009Collector;
    record("erc3009Deposit.new", "ERC-3009 deposit, new channel", await gasOf("erc3009 new", deposit(config, DEPOSIT, collector, await erc3009Data(payer, config, DEPOSIT, "m-new"))));
    record("erc3009Deposit.topUp", "ERC-3009 deposit, top-up", await gasOf("erc3009 top-up", deposit(config, TOP_UP, collector, await erc3009Data(payer, config, TOP_UP, "m-top"))));
  }
  {
    const { payer, session } = permitPayer;
    const config = configOf(payer.address, session.address);
    const sign = (args: TypedDataDefinition) => payer.signTypedData(args);
    const collector = deployment.permitCollector;
    record("permitDeposit.new", "permit collector + EIP-2612 permit, new channel", await gasOf("permit new", deposit(config, DEPOSIT, collector, await permitData(sign, payer.address, config, DEPOSIT, "p-new", true))));
    record("permitDeposit.topUp", "permit collector + EIP-2612 permit, top-up", await gasOf("permit top-up", deposit(config, TOP_UP, collector, await permitData(sign, payer.address, config, TOP_UP, "p-top", true))));
  }
  const allowanceConfig = configOf(allowancePayer.account.address, privateKeyToAccount(key("session", 10_002)).address);
  {
    // The payer approved a budget once (its own transaction, not measured).
    const collector = deployment.permitCollector;
    await gasOf("approve", usdc.write.approve([collector, 50_000_000n], { account: allowancePayer.account }));
    const sign = (args: TypedDataDefinition) => allowancePayer.signTypedData({ account: allowancePayer.account, ...args });
    const owner = allowancePayer.account.address;
    record("allowanceDeposit.new", "permit collector on allowance, new channel", await gasOf("allowance new", deposit(allowanceConfig, DEPOSIT, collector, await permitData(sign, owner, allowanceConfig, DEPOSIT, "a-new", false))));
    record("allowanceDeposit.topUp", "permit collector on allowance, top-up", await gasOf("allowance top-up", deposit(allowanceConfig, TOP_UP, collector, await permitData(sign, owner, allowanceConfig, TOP_UP, "a-top", false))));
  }

  // ---------------------------------------------------------------------------------------------
  // Claims, each batch on fresh channels; then the receiver's first settle.
  // ---------------------------------------------------------------------------------------------
  let next = 0;
  const takeRows = async (n: number): Promise<VoucherClaim[]> => {
    const group = claimChannels.slice(next, next + n);
    next += n;
    return Promise.all(
      group.map(async ({ config, session }, i) => {
        const ceiling = 2_500_000n + BigInt(next * 1000 + i * 7);
        const signature = await session.signTypedData({
          domain,
          types: voucherTypes,
          primaryType: "Voucher",
          message: { channelId: computeChannelId(domain, config), maxClaimableAmount: ceiling },
        });
        return { voucher: { channel: config, maxClaimableAmount: ceiling }, signature, totalClaimed: ceiling };
      }),
    );
  };
  const claim = async (n: number) => gasOf(`claim ${n}`, escrow.write.claim([await takeRows(n)], { account: receiver.account }));
  const claimWithSignature = async (n: number) => {
    const batch = await takeRows(n);
    const signature = await receiverAuthorizer.signTypedData({
      account: receiverAuthorizer.account,
      domain,
      types: claimBatchTypes,
      primaryType: "ClaimBatch",
      message: claimBatchMessage(domain, batch),
    });
    return gasOf(`claimWithSignature ${n}`, escrow.write.claimWithSignature([batch, signature], { account: relayer.account }));
  };

  record("claim.first", "claim 1 channel, receiver's first claim", await claim(GROUPS.first), 1);
  record("claim.1", "claim 1 channel", await claim(GROUPS.claim1), 1);
  record("claim.10", "claim 10 channels", await claim(GROUPS.claim10), 10);
  const claim100Start = next;
  record("claim.100", "claim 100 channels", await claim(GROUPS.claim100), 100);
  record("claimWithSignature.1", "claimWithSignature 1 channel", await claimWithSignature(GROUPS.sig1), 1);
  record("claimWithSignature.10", "claimWithSignature 10 channels", await claimWithSignature(GROUPS.sig10), 10);
  record("claimWithSignature.100", "claimWithSignature 100 channels", await claimWithSignature(GROUPS.sig100), 100);
  const settle = () => gasOf("settle", escrow.write.settle([receiver.account.address, usdc.address], { account: relayer.account }));
  record("settle", "settle (receiver's first)", await settle());
  // A later settle, once the receiver holds tokens: the ERC-20 balance write is no longer zero -> non-zero.
  await claim(GROUPS.later);
  record("settle.again", "settle (receiver holds tokens)", await settle());

  // ---------------------------------------------------------------------------------------------
  // Closing
  // ---------------------------------------------------------------------------------------------
  {
    const { config } = claimChannels[claim100Start];
    const id = computeChannelId(domain, config);
    const [balance, claimed] = await escrow.read.channels([id]);
    record("refund.full", "refund, all unclaimed", await gasOf("refund", escrow.write.refund([config, balance - claimed], { account: receiver.account })));
  }
  {
    const { config } = claimChannels[claim100Start + 1];
    const id = computeChannelId(domain, config);
    const [balance, claimed] = await escrow.read.channels([id]);
    const amount = balance - claimed;
    const nonce = await escrow.read.refundNonce([id]);
    const signature = await receiverAuthorizer.signTypedData({
      account: receiverAuthorizer.account,
      domain,
      types: refundTypes,
      primaryType: "Refund",
      message: { channelId: id, nonce, amount },
    });
    record(
      "refundWithSignature.full",
      "refundWithSignature, all unclaimed",
      await gasOf("refundWithSignature", escrow.write.refundWithSignature([config, amount, nonce, signature], { account: relayer.account })),
    );
  }
  {
    const id = computeChannelId(domain, allowanceConfig);
    const [balance, claimed] = await escrow.read.channels([id]);
    record("initiateWithdraw", "initiateWithdraw, all unclaimed", await gasOf("initiateWithdraw", escrow.write.initiateWithdraw([allowanceConfig, balance - claimed], { account: allowancePayer.account })));
    await testClient.increaseTime({ seconds: allowanceConfig.withdrawDelay });
    await testClient.mine({ blocks: 1 });
    record("finalizeWithdraw", "finalizeWithdraw", await gasOf("finalizeWithdraw", escrow.write.finalizeWithdraw([allowanceConfig], { account: allowancePayer.account })));
  }

  const code = await publicClient.getCode({ address: escrow.address });
  record("escrow.runtimeBytes", "escrow runtime bytecode (bytes)", code ? (code.length - 2) / 2 : 0, undefined, "bytes");

  // ---------------------------------------------------------------------------------------------
  // Report and snapshot
  // ---------------------------------------------------------------------------------------------
  const previous = readSnapshot();
  const snapshot = toSnapshot(rows);
  printTable(rows, previous);
  fs.writeFileSync(SNAPSHOT_FILE, `${JSON.stringify(snapshot, null, 2)}\n`);
  console.log(`\nsnapshot: ${path.relative(process.cwd(), SNAPSHOT_FILE)}${previous ? " (updated)" : " (created)"}`);
  console.log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

// -------------------------------------------------------------------------------------------------
// Formatting
// -------------------------------------------------------------------------------------------------

type Snapshot = Record<string, number>;

function perChannel(row: Row): number | undefined {
  return row.channels && row.channels > 1 ? Math.round(row.value / row.channels) : undefined;
}

function toSnapshot(all: Row[]): Snapshot {
  const out: Snapshot = {};
  for (const row of all) {
    out[row.key] = row.value;
    const pc = perChannel(row);
    if (pc !== undefined) out[`${row.key}.perChannel`] = pc;
  }
  return out;
}

function readSnapshot(): Snapshot | undefined {
  try {
    return JSON.parse(fs.readFileSync(SNAPSHOT_FILE, "utf8")) as Snapshot;
  } catch {
    return undefined;
  }
}

const fmt = (n: number) => n.toLocaleString("en-US");

function delta(now: number, before: number | undefined): string {
  if (before === undefined) return "new";
  const d = now - before;
  if (d === 0) return "=";
  const pct = before === 0 ? "" : ` (${d > 0 ? "+" : ""}${((d / before) * 100).toFixed(1)}%)`;
  return `${d > 0 ? "+" : ""}${fmt(d)}${pct}`;
}

function printTable(all: Row[], previous: Snapshot | undefined) {
  const header = ["operation", "gasUsed", "per channel", "reference", "ours/ref", "Δ vs snapshot"];
  const lines: string[][] = all.map((row) => {
    const pc = perChannel(row);
    const ref = REFERENCE[row.key];
    const compared = ref?.basis === "perChannel" ? (pc ?? row.value) : row.value;
    const refText = ref ? `${fmt(ref.value)}${ref.basis === "perChannel" ? " /ch" : ""}` : "";
    const ratio = ref ? (compared / ref.value).toFixed(3) : "";
    const d = pc !== undefined ? delta(pc, previous?.[`${row.key}.perChannel`]) + " /ch" : delta(row.value, previous?.[row.key]);
    return [row.label, fmt(row.value), pc !== undefined ? fmt(pc) : "", refText, ratio, d];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 || i === cells.length - 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ").trimEnd();
  console.log("\nTollway escrow gas (receipt gasUsed; in-process Hardhat, cancun; reference = x402BatchSettlement)\n");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const l of lines) console.log(line(l));

  const claim100 = all.find((r) => r.key === "claim.100");
  const pc100 = claim100 ? perChannel(claim100) : undefined;
  const bytes = all.find((r) => r.key === "escrow.runtimeBytes")?.value ?? 0;
  console.log("");
  if (pc100 !== undefined) {
    const met = pc100 <= GOAL_CLAIM_PER_CHANNEL_100;
    console.log(
      `GOAL claim in a 100-channel batch <= ${fmt(GOAL_CLAIM_PER_CHANNEL_100)} per channel: ${met ? "MET" : "NOT MET"} (${fmt(pc100)})`,
    );
  }
  console.log(`escrow runtime size ${fmt(bytes)} bytes of the EIP-170 limit ${fmt(EIP170_LIMIT)} (${fmt(EIP170_LIMIT - bytes)} left)`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
