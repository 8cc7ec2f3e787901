/**
 * BatchSettlement unit tests: every external function's success path (state + events + token movements) and
 * every custom error of IBatchSettlement, asserted by name and arguments.
 */
import hre from "hardhat";
import { expect } from "chai";
import { time } from "@nomicfoundation/hardhat-network-helpers";
import {
  type Address,
  type Hex,
  concat,
  encodeFunctionData,
  getAddress,
  pad,
  parseSignature,
  toHex,
  zeroAddress,
} from "viem";
import {
  type ChannelConfig,
  type VoucherClaim,
  claimBatchDigest,
  computeChannelId,
  escrowDomain,
  refundDigest,
  voucherDigest,
} from "../../node/protocol/typedData";
import {
  type Fixture,
  allowanceCollectorData,
  claimRow,
  depositGasless,
  erc3009CollectorData,
  loadEscrow,
  makeConfig,
  signClaimBatch,
  signRefund,
} from "../helpers/fixture";
import {
  eventNames,
  eventsOf,
  expectEvents,
  expectNoEvent,
  expectRevert,
  malleate,
  send,
  toCompact,
} from "../helpers/asserts";

const MIN_DELAY = 900;
const MAX_DELAY = 30 * 24 * 3600;
const MAX_UINT128 = 2n ** 128n - 1n;

const salt = (n: number): Hex => pad(toHex(n), { size: 32 });

async function channelState(f: Fixture, id: Hex) {
  const [balance, totalClaimed] = await f.escrow.read.channels([id]);
  return { balance, totalClaimed };
}

async function pendingOf(f: Fixture, id: Hex) {
  const [amount, initiatedAt] = await f.escrow.read.pendingWithdrawals([id]);
  return { amount, initiatedAt: Number(initiatedAt) };
}

async function receiverState(f: Fixture, receiver: Address, token: Address) {
  const [totalClaimed, totalSettled] = await f.escrow.read.receivers([receiver, token]);
  return { totalClaimed, totalSettled };
}

async function usdcOf(f: Fixture, who: Address) {
  return f.usdc.read.balanceOf([who]);
}

async function blockTime(f: Fixture, blockNumber: bigint): Promise<number> {
  return Number((await f.publicClient.getBlock({ blockNumber })).timestamp);
}

/** Funds a fresh channel through the ERC-3009 collector (relayed) and returns its config and id. */
async function openChannel(f: Fixture, amount: bigint, overrides: Partial<ChannelConfig> = {}) {
  const config = makeConfig(f, overrides);
  const id = computeChannelId(f.domain, config);
  await depositGasless(f, config, amount);
  return { config, id };
}

/** Claims `total` on a channel (voucher with ceiling `ceiling`) as the receiver. */
async function claimAs(f: Fixture, config: ChannelConfig, ceiling: bigint, total: bigint = ceiling) {
  const row = await claimRow(f, config, ceiling, total);
  return send(f, f.escrow.write.claim([[row]], { account: f.receiver.account }));
}

/** Replaces the first byte of the 32-byte argument word holding `value` (an address) with 0x01. */
function dirtyWordOf(data: Hex, value: Address | Hex): Hex {
  const body = data.slice(10); // after "0x" + selector
  const needle = pad(value.toLowerCase() as Hex, { size: 32 }).slice(2);
  const hits: number[] = [];
  for (let i = body.indexOf(needle); i !== -1; i = body.indexOf(needle, i + 1)) if (i % 64 === 0) hits.push(i);
  if (hits.length !== 1) throw new Error(`expected exactly one word holding ${value}, found ${hits.length}`);
  const at = hits[0];
  return (data.slice(0, 10) + body.slice(0, at) + "01" + body.slice(at + 2)) as Hex;
}

describe("BatchSettlement", () => {
  // ---------------------------------------------------------------------------------------------
  describe("deposit", () => {
    it("creates the channel on the first deposit and adds to it on the next (relayed ERC-3009)", async () => {
      const f = await loadEscrow();
      const config = makeConfig(f);
      const id = computeChannelId(f.domain, config);
      const payer = f.payer.account.address;
      const payerBefore = await usdcOf(f, payer);

      const r1 = await depositGasless(f, config, 1_000n);
      expectEvents(r1, f.escrow, "ChannelCreated", [{ channelId: id, config }]);
      expectEvents(r1, f.escrow, "Deposited", [
        { channelId: id, sender: f.relayer.account.address, amount: 1_000n, newBalance: 1_000n },
      ]);
      expect(eventNames(r1, f.escrow)).to.deep.equal(["ChannelCreated", "Deposited"]);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 0n });

      const r2 = await depositGasless(f, config, 234n);
      expectNoEvent(r2, f.escrow, "ChannelCreated");
      expectEvents(r2, f.escrow, "Deposited", [
        { channelId: id, sender: f.relayer.account.address, amount: 234n, newBalance: 1_234n },
      ]);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_234n, totalClaimed: 0n });
      expect(await usdcOf(f, f.escrow.address)).to.equal(1_234n);
      expect(await usdcOf(f, payer)).to.equal(payerBefore - 1_234n);
      expect(await usdcOf(f, f.erc3009Collector.address)).to.equal(0n);
      expect(await f.escrow.read.refundNonce([id])).to.equal(0n);
    });

    it("reverts BatchSettlementInvalidConfig for each zero required address", async () => {
      const f = await loadEscrow();
      for (const field of ["payer", "receiver", "receiverAuthorizer", "token"] as const) {
        const config = makeConfig(f, { [field]: zeroAddress });
        await expectRevert(
          f.escrow.write.deposit([config, 1n, f.erc3009Collector.address, "0x"], { account: f.relayer.account }),
          "BatchSettlementInvalidConfig",
          [config.payer, config.receiver, config.receiverAuthorizer, config.token],
        );
      }
    });

    it("accepts a zero payerAuthorizer (the payer signs vouchers itself)", async () => {
      const f = await loadEscrow();
      const { id } = await openChannel(f, 10n, { payerAuthorizer: zeroAddress });
      expect((await channelState(f, id)).balance).to.equal(10n);
    });

    it("reverts BatchSettlementWithdrawDelayOutOfRange below 900 s and above 30 days", async () => {
      const f = await loadEscrow();
      for (const withdrawDelay of [0, MIN_DELAY - 1, MAX_DELAY + 1, 2 ** 40 - 1]) {
        const config = makeConfig(f, { withdrawDelay });
        await expectRevert(
          f.escrow.write.deposit([config, 1n, f.erc3009Collector.address, "0x"], { account: f.relayer.account }),
          "BatchSettlementWithdrawDelayOutOfRange",
          [withdrawDelay, MIN_DELAY, MAX_DELAY],
        );
      }
    });

    it("accepts the bounds 900 s and 30 days", async () => {
      const f = await loadEscrow();
      for (const withdrawDelay of [MIN_DELAY, MAX_DELAY]) {
        const { id } = await openChannel(f, 7n, { withdrawDelay });
        expect((await channelState(f, id)).balance).to.equal(7n);
      }
    });

    it("reverts BatchSettlementZeroDeposit and BatchSettlementInvalidCollector", async () => {
      const f = await loadEscrow();
      const config = makeConfig(f);
      const id = computeChannelId(f.domain, config);
      await expectRevert(
        f.escrow.write.deposit([config, 0n, f.erc3009Collector.address, "0x"], { account: f.relayer.account }),
        "BatchSettlementZeroDeposit",
        [id],
      );
      await expectRevert(
        f.escrow.write.deposit([config, 5n, zeroAddress, "0x"], { account: f.relayer.account }),
        "BatchSettlementInvalidCollector",
        [zeroAddress],
      );
    });

    it("reverts BatchSettlementDepositOverflow past uint128 and accepts exactly uint128 max", async () => {
      const f = await loadEscrow();
      const payer = f.payer.account.address;
      await f.usdc.write.mint([payer, 2n ** 129n]);
      const { config, id } = await openChannel(f, MAX_UINT128 - 2n);
      const data = await erc3009CollectorData(f, f.payer, config, 3n);
      await expectRevert(
        f.escrow.write.deposit([config, 3n, f.erc3009Collector.address, data], { account: f.relayer.account }),
        "BatchSettlementDepositOverflow",
        [id, MAX_UINT128 - 2n, 3n],
      );
      await depositGasless(f, config, 2n);
      expect((await channelState(f, id)).balance).to.equal(MAX_UINT128);
      await expectRevert(
        f.escrow.write.deposit([config, 1n, f.erc3009Collector.address, "0x"], { account: f.relayer.account }),
        "BatchSettlementDepositOverflow",
        [id, MAX_UINT128, 1n],
      );
    });

    it("reverts BatchSettlementDepositNotReceived for a fee-on-transfer token (permit collector, allowance)", async () => {
      const f = await loadEscrow();
      const fot = await hre.viem.deployContract("FeeOnTransferToken");
      const payer = f.payer.account.address;
      await fot.write.mint([payer, 1_000_000n]);
      await fot.write.approve([f.permitCollector.address, 10_000n], { account: f.payer.account });
      const config = makeConfig(f, { token: fot.address });
      const id = computeChannelId(f.domain, config);
      const data = await allowanceCollectorData(f, f.payer, id, 10_000n);
      await expectRevert(
        f.escrow.write.deposit([config, 10_000n, f.permitCollector.address, data], { account: f.relayer.account }),
        "BatchSettlementDepositNotReceived",
        [fot.address, 10_000n, 10_000n - 100n],
      );
      expect(await fot.read.balanceOf([f.escrow.address])).to.equal(0n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 0n, totalClaimed: 0n });
      // A 1-unit transfer loses its whole value to the 1-unit minimum fee: nothing arrives at all.
      const one = await allowanceCollectorData(f, f.payer, id, 1n);
      await expectRevert(
        f.escrow.write.deposit([config, 1n, f.permitCollector.address, one], { account: f.relayer.account }),
        "BatchSettlementDepositNotReceived",
        [fot.address, 1n, 0n],
      );
    });

    it("anyone may top up a channel; the payer's allowance-based deposit credits it too", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 100n);
      await f.usdc.write.approve([f.permitCollector.address, 40n], { account: f.payer.account });
      const data = await allowanceCollectorData(f, f.payer, id, 40n);
      const r = await send(
        f,
        f.escrow.write.deposit([config, 40n, f.permitCollector.address, data], { account: f.payer.account }),
      );
      expectEvents(r, f.escrow, "Deposited", [
        { channelId: id, sender: f.payer.account.address, amount: 40n, newBalance: 140n },
      ]);
      expect((await channelState(f, id)).balance).to.equal(140n);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("claim", () => {
    it("raises totalClaimed for the receiver, credits receivers(receiver, token), moves no tokens", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const receiver = f.receiver.account.address;
      const escrowBefore = await usdcOf(f, f.escrow.address);

      const r = await claimAs(f, config, 600n, 250n);
      expectEvents(r, f.escrow, "Claimed", [{ channelId: id, sender: receiver, claimAmount: 250n, newTotalClaimed: 250n }]);
      expect(eventsOf(r, f.usdc, "Transfer")).to.have.length(0);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 250n });
      expect(await receiverState(f, receiver, f.usdc.address)).to.deep.equal({ totalClaimed: 250n, totalSettled: 0n });
      expect(await usdcOf(f, f.escrow.address)).to.equal(escrowBefore);
      expect(await usdcOf(f, receiver)).to.equal(0n);

      // A later, higher row credits only the difference.
      const r2 = await claimAs(f, config, 600n, 600n);
      expectEvents(r2, f.escrow, "Claimed", [{ channelId: id, sender: receiver, claimAmount: 350n, newTotalClaimed: 600n }]);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 600n });
      expect(await receiverState(f, receiver, f.usdc.address)).to.deep.equal({ totalClaimed: 600n, totalSettled: 0n });
    });

    it("reverts SafeCastOverflowedUintDowncast when one batch's rows for a receiver sum past uint128, crediting nothing", async () => {
      const f = await loadEscrow();
      await f.usdc.write.mint([f.payer.account.address, 2n ** 128n]);
      const half = 2n ** 127n;
      const A = await openChannel(f, half, { salt: salt(71) });
      const B = await openChannel(f, half, { salt: salt(72) });
      const rows = [await claimRow(f, A.config, half), await claimRow(f, B.config, half)];
      // Unchecked, the credit wrapped to 0: both channels claimed in full, the receiver credited nothing.
      await expectRevert(f.escrow.write.claim([rows], { account: f.receiver.account }), "SafeCastOverflowedUintDowncast", [128, 2n ** 128n]);
      expect(await channelState(f, A.id)).to.deep.equal({ balance: half, totalClaimed: 0n });
      expect(await receiverState(f, f.receiver.account.address, f.usdc.address)).to.deep.equal({ totalClaimed: 0n, totalSettled: 0n });
      // Each row alone fits.
      await send(f, f.escrow.write.claim([[rows[0]]], { account: f.receiver.account }));
      expect(await receiverState(f, f.receiver.account.address, f.usdc.address)).to.deep.equal({ totalClaimed: half, totalSettled: 0n });
    });

    it("may be called by the receiverAuthorizer (Claimed.sender is the caller)", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const row = await claimRow(f, config, 300n);
      const r = await send(f, f.escrow.write.claim([[row]], { account: f.receiverAuthorizer.account }));
      expectEvents(r, f.escrow, "Claimed", [
        { channelId: id, sender: f.receiverAuthorizer.account.address, claimAmount: 300n, newTotalClaimed: 300n },
      ]);
      expect(await receiverState(f, f.receiver.account.address, f.usdc.address)).to.deep.equal({
        totalClaimed: 300n,
        totalSettled: 0n,
      });
    });

    it("is raise-only: a row at or below the current total is a no-op without event (even with a bad signature)", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      await claimAs(f, config, 500n);
      const equal = await claimRow(f, config, 500n, 500n);
      const lower = await claimRow(f, config, 900n, 100n);
      const garbage: VoucherClaim = { ...lower, signature: "0x1234" };
      for (const row of [equal, lower, garbage]) {
        const r = await send(f, f.escrow.write.claim([[row]], { account: f.receiver.account }));
        expect(r.logs, "no logs at all").to.have.length(0);
      }
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 500n });
      expect(await receiverState(f, f.receiver.account.address, f.usdc.address)).to.deep.equal({
        totalClaimed: 500n,
        totalSettled: 0n,
      });
    });

    it("credits every (receiver, token) of a batch spanning receivers, tokens and repeated channels", async () => {
      const f = await loadEscrow();
      const usdc2 = await hre.viem.deployContract("TestUSDC");
      await usdc2.write.mint([f.payer.account.address, 1_000_000n]);
      const r1 = f.receiver.account.address;
      const r2 = f.receiver2.account.address;
      const A = await openChannel(f, 1_000n, { salt: salt(1) });
      const B = await openChannel(f, 1_000n, { salt: salt(2) });
      const C = await openChannel(f, 1_000n, { salt: salt(3), receiver: r2 });
      const D = await openChannel(f, 1_000n, { salt: salt(4), token: usdc2.address });
      const E = await openChannel(f, 1_000n, { salt: salt(5) });
      const rows = [
        await claimRow(f, A.config, 100n),
        await claimRow(f, B.config, 200n),
        await claimRow(f, C.config, 300n),
        await claimRow(f, D.config, 400n),
        await claimRow(f, E.config, 500n),
        await claimRow(f, A.config, 150n), // same channel again: +50
        await claimRow(f, A.config, 120n), // below the new total: no-op
      ];
      const caller = f.receiverAuthorizer.account.address;
      const r = await send(f, f.escrow.write.claim([rows], { account: f.receiverAuthorizer.account }));
      expectEvents(r, f.escrow, "Claimed", [
        { channelId: A.id, sender: caller, claimAmount: 100n, newTotalClaimed: 100n },
        { channelId: B.id, sender: caller, claimAmount: 200n, newTotalClaimed: 200n },
        { channelId: C.id, sender: caller, claimAmount: 300n, newTotalClaimed: 300n },
        { channelId: D.id, sender: caller, claimAmount: 400n, newTotalClaimed: 400n },
        { channelId: E.id, sender: caller, claimAmount: 500n, newTotalClaimed: 500n },
        { channelId: A.id, sender: caller, claimAmount: 50n, newTotalClaimed: 150n },
      ]);
      expect(await receiverState(f, r1, f.usdc.address)).to.deep.equal({ totalClaimed: 100n + 200n + 500n + 50n, totalSettled: 0n });
      expect(await receiverState(f, r2, f.usdc.address)).to.deep.equal({ totalClaimed: 300n, totalSettled: 0n });
      expect(await receiverState(f, r1, usdc2.address)).to.deep.equal({ totalClaimed: 400n, totalSettled: 0n });
      expect(await receiverState(f, r2, usdc2.address)).to.deep.equal({ totalClaimed: 0n, totalSettled: 0n });
      expect((await channelState(f, A.id)).totalClaimed).to.equal(150n);

      // Settling pays each pool exactly.
      await send(f, f.escrow.write.settle([r1, f.usdc.address], { account: f.other.account }));
      await send(f, f.escrow.write.settle([r2, f.usdc.address], { account: f.other.account }));
      await send(f, f.escrow.write.settle([r1, usdc2.address], { account: f.other.account }));
      expect(await usdcOf(f, r1)).to.equal(850n);
      expect(await usdcOf(f, r2)).to.equal(300n);
      expect(await usdc2.read.balanceOf([r1])).to.equal(400n);
      expect(await usdcOf(f, f.escrow.address)).to.equal(4_000n - 1_150n);
      expect(await usdc2.read.balanceOf([f.escrow.address])).to.equal(600n);
    });

    it("reverts BatchSettlementEmptyBatch", async () => {
      const f = await loadEscrow();
      await expectRevert(f.escrow.write.claim([[]], { account: f.receiver.account }), "BatchSettlementEmptyBatch", []);
    });

    it("reverts BatchSettlementNotReceiverSide for a stranger and for the payer, on any row of the batch", async () => {
      const f = await loadEscrow();
      const A = await openChannel(f, 1_000n, { salt: salt(1) });
      const B = await openChannel(f, 1_000n, { salt: salt(2), receiver: f.receiver2.account.address, receiverAuthorizer: f.receiver2.account.address });
      const rowA = await claimRow(f, A.config, 10n);
      const rowB = await claimRow(f, B.config, 10n);
      for (const w of [f.other, f.payer]) {
        await expectRevert(f.escrow.write.claim([[rowA]], { account: w.account }), "BatchSettlementNotReceiverSide", [
          A.id,
          w.account.address,
        ]);
      }
      // Row 1 belongs to another receiver side: the whole batch reverts on it.
      await expectRevert(
        f.escrow.write.claim([[rowA, rowB]], { account: f.receiver.account }),
        "BatchSettlementNotReceiverSide",
        [B.id, f.receiver.account.address],
      );
      expect((await channelState(f, A.id)).totalClaimed).to.equal(0n);
    });

    it("reverts BatchSettlementClaimExceedsCeiling and BatchSettlementClaimExceedsBalance", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const overCeiling = await claimRow(f, config, 300n, 301n);
      await expectRevert(
        f.escrow.write.claim([[overCeiling]], { account: f.receiver.account }),
        "BatchSettlementClaimExceedsCeiling",
        [id, 301n, 300n],
      );
      const overBalance = await claimRow(f, config, 5_000n, 1_001n);
      await expectRevert(
        f.escrow.write.claim([[overBalance]], { account: f.receiver.account }),
        "BatchSettlementClaimExceedsBalance",
        [id, 1_001n, 1_000n],
      );
      // Exactly the balance is fine.
      await claimAs(f, config, 5_000n, 1_000n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 1_000n });
    });

    describe("voucher signatures (BatchSettlementInvalidVoucherSignature)", () => {
      it("rejects a voucher signed by someone other than the payerAuthorizer", async () => {
        const f = await loadEscrow();
        const { config, id } = await openChannel(f, 1_000n);
        const row = await claimRow(f, config, 100n, 100n, f.payer); // payer, not the session key
        await expectRevert(f.escrow.write.claim([[row]], { account: f.receiver.account }), "BatchSettlementInvalidVoucherSignature", [
          id,
          f.sessionKey.address,
        ]);
      });

      it("rejects a voucher for another ceiling than the row's", async () => {
        const f = await loadEscrow();
        const { config, id } = await openChannel(f, 1_000n);
        const row = await claimRow(f, config, 100n);
        const forged: VoucherClaim = { ...row, voucher: { ...row.voucher, maxClaimableAmount: 900n }, totalClaimed: 900n };
        await expectRevert(f.escrow.write.claim([[forged]], { account: f.receiver.account }), "BatchSettlementInvalidVoucherSignature", [
          id,
          f.sessionKey.address,
        ]);
      });

      it("rejects the high-s malleated twin (s' = n - s, v flipped) that plain ecrecover accepts", async () => {
        const f = await loadEscrow();
        const { config, id } = await openChannel(f, 1_000n);
        const row = await claimRow(f, config, 100n);
        const twin = malleate(row.signature);
        // The twin is a valid secp256k1 signature of the same digest for the same key (ecrecover precompile).
        const digest = voucherDigest(f.domain, id, 100n);
        const { r, s, v } = parseSignature(twin);
        const { data } = await f.publicClient.call({
          to: "0x0000000000000000000000000000000000000001",
          data: concat([digest, pad(toHex(v!), { size: 32 }), r, s]),
        });
        expect(("0x" + data!.slice(26)).toLowerCase()).to.equal(f.sessionKey.address.toLowerCase());
        await expectRevert(
          f.escrow.write.claim([[{ ...row, signature: twin }]], { account: f.receiver.account }),
          "BatchSettlementInvalidVoucherSignature",
          [id, f.sessionKey.address],
        );
        // The original (low-s) signature is accepted.
        await send(f, f.escrow.write.claim([[row]], { account: f.receiver.account }));
        expect((await channelState(f, id)).totalClaimed).to.equal(100n);
      });

      it("rejects a 64-byte (EIP-2098 compact) signature", async () => {
        const f = await loadEscrow();
        const { config, id } = await openChannel(f, 1_000n);
        const row = await claimRow(f, config, 100n);
        const compact = toCompact(row.signature);
        expect((compact.length - 2) / 2).to.equal(64);
        await expectRevert(
          f.escrow.write.claim([[{ ...row, signature: compact }]], { account: f.receiver.account }),
          "BatchSettlementInvalidVoucherSignature",
          [id, f.sessionKey.address],
        );
      });

      it("payerAuthorizer = 0 with an EOA payer: the payer's signature works, others (and malformed ones) do not", async () => {
        const f = await loadEscrow();
        const { config, id } = await openChannel(f, 1_000n, { payerAuthorizer: zeroAddress });
        const payer = f.payer.account.address;
        const bySession = await claimRow(f, config, 100n); // session key is not the payer
        const byOther = await claimRow(f, config, 100n, 100n, f.other);
        const good = await claimRow(f, config, 100n, 100n, f.payer);
        for (const signature of [bySession.signature, byOther.signature, malleate(good.signature), toCompact(good.signature)]) {
          await expectRevert(
            f.escrow.write.claim([[{ ...good, signature }]], { account: f.receiver.account }),
            "BatchSettlementInvalidVoucherSignature",
            [id, payer],
          );
        }
        const r = await send(f, f.escrow.write.claim([[good]], { account: f.receiver.account }));
        expectEvents(r, f.escrow, "Claimed", [
          { channelId: id, sender: f.receiver.account.address, claimAmount: 100n, newTotalClaimed: 100n },
        ]);
      });

      it("ERC-1271 payer (payerAuthorizer = 0): the wallet owner's signature is valid, a stranger's is not", async () => {
        const f = await loadEscrow();
        const wallet = await hre.viem.deployContract("TestERC1271Wallet", [f.other.account.address]);
        await f.usdc.write.mint([wallet.address, 10_000n]);
        const config = makeConfig(f, { payer: wallet.address, payerAuthorizer: zeroAddress });
        const id = computeChannelId(f.domain, config);
        // TestUSDC's ERC-3009 accepts ERC-1271 signatures: the owner signs for the wallet.
        await depositGasless(f, config, 1_000n, f.other);
        expect((await channelState(f, id)).balance).to.equal(1_000n);

        const bad = await claimRow(f, config, 100n, 100n, f.payer2);
        await expectRevert(f.escrow.write.claim([[bad]], { account: f.receiver.account }), "BatchSettlementInvalidVoucherSignature", [
          id,
          wallet.address,
        ]);
        const good = await claimRow(f, config, 100n, 100n, f.other);
        const r = await send(f, f.escrow.write.claim([[good]], { account: f.receiver.account }));
        expectEvents(r, f.escrow, "Claimed", [
          { channelId: id, sender: f.receiver.account.address, claimAmount: 100n, newTotalClaimed: 100n },
        ]);
      });
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("claimWithSignature", () => {
    it("is relayed by a third party with the receiverAuthorizer's ClaimBatch signature", async () => {
      const f = await loadEscrow();
      const A = await openChannel(f, 1_000n, { salt: salt(1) });
      const B = await openChannel(f, 1_000n, { salt: salt(2), receiver: f.receiver2.account.address });
      const rows = [await claimRow(f, A.config, 500n, 120n), await claimRow(f, B.config, 700n, 700n)];
      const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, rows);
      const relayer = f.other.account.address;
      const r = await send(f, f.escrow.write.claimWithSignature([rows, sig], { account: f.other.account }));
      expectEvents(r, f.escrow, "Claimed", [
        { channelId: A.id, sender: relayer, claimAmount: 120n, newTotalClaimed: 120n },
        { channelId: B.id, sender: relayer, claimAmount: 700n, newTotalClaimed: 700n },
      ]);
      expect(await receiverState(f, f.receiver.account.address, f.usdc.address)).to.deep.equal({ totalClaimed: 120n, totalSettled: 0n });
      expect(await receiverState(f, f.receiver2.account.address, f.usdc.address)).to.deep.equal({ totalClaimed: 700n, totalSettled: 0n });

      // Replaying the same signed batch is harmless: no event, no change.
      const again = await send(f, f.escrow.write.claimWithSignature([rows, sig], { account: f.relayer.account }));
      expectNoEvent(again, f.escrow, "Claimed");
      expect((await channelState(f, A.id)).totalClaimed).to.equal(120n);
    });

    it("accepts an ERC-1271 receiverAuthorizer", async () => {
      const f = await loadEscrow();
      const wallet = await hre.viem.deployContract("TestERC1271Wallet", [f.receiverAuthorizer.account.address]);
      const { config, id } = await openChannel(f, 1_000n, { receiverAuthorizer: wallet.address });
      const rows = [await claimRow(f, config, 400n)];
      const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, rows);
      await send(f, f.escrow.write.claimWithSignature([rows, sig], { account: f.relayer.account }));
      expect((await channelState(f, id)).totalClaimed).to.equal(400n);
    });

    it("reverts BatchSettlementEmptyBatch", async () => {
      const f = await loadEscrow();
      const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, []);
      await expectRevert(
        f.escrow.write.claimWithSignature([[], sig], { account: f.relayer.account }),
        "BatchSettlementEmptyBatch",
        [],
      );
    });

    it("reverts BatchSettlementInvalidAuthorizerSignature for a wrong signer or tampered rows", async () => {
      const f = await loadEscrow();
      const { config } = await openChannel(f, 1_000n);
      const rows = [await claimRow(f, config, 500n, 200n)];
      const authorizer = f.receiverAuthorizer.account.address;
      const byReceiver = await signClaimBatch(f.receiver, f.domain, rows);
      await expectRevert(
        f.escrow.write.claimWithSignature([rows, byReceiver], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [authorizer, claimBatchDigest(f.domain, rows)],
      );
      const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, rows);
      const tampered = [{ ...rows[0], totalClaimed: 500n }];
      await expectRevert(
        f.escrow.write.claimWithSignature([tampered, sig], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [authorizer, claimBatchDigest(f.domain, tampered)],
      );
      await expectRevert(
        f.escrow.write.claimWithSignature([rows, malleate(sig)], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [authorizer, claimBatchDigest(f.domain, rows)],
      );
    });

    it("reverts BatchSettlementMixedAuthorizer when a later row names another receiverAuthorizer", async () => {
      const f = await loadEscrow();
      const A = await openChannel(f, 1_000n, { salt: salt(1) });
      const B = await openChannel(f, 1_000n, { salt: salt(2), receiverAuthorizer: f.receiver2.account.address });
      const rows = [await claimRow(f, A.config, 100n), await claimRow(f, B.config, 100n)];
      const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, rows);
      await expectRevert(
        f.escrow.write.claimWithSignature([rows, sig], { account: f.relayer.account }),
        "BatchSettlementMixedAuthorizer",
        [1n, f.receiverAuthorizer.account.address, f.receiver2.account.address],
      );
      expect((await channelState(f, A.id)).totalClaimed).to.equal(0n);
    });

    it("checks each row's voucher, ceiling and balance like claim", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const cases: [VoucherClaim, string, unknown[]][] = [
        [await claimRow(f, config, 100n, 101n), "BatchSettlementClaimExceedsCeiling", [id, 101n, 100n]],
        [await claimRow(f, config, 2_000n, 1_500n), "BatchSettlementClaimExceedsBalance", [id, 1_500n, 1_000n]],
        [await claimRow(f, config, 100n, 100n, f.other), "BatchSettlementInvalidVoucherSignature", [id, f.sessionKey.address]],
      ];
      for (const [row, name, args] of cases) {
        const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, [row]);
        await expectRevert(f.escrow.write.claimWithSignature([[row], sig], { account: f.relayer.account }), name, args);
      }
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("settle", () => {
    it("is permissionless and pays exactly claimed minus settled", async () => {
      const f = await loadEscrow();
      const { config } = await openChannel(f, 1_000n);
      const receiver = f.receiver.account.address;
      await claimAs(f, config, 1_000n, 300n);

      const r = await send(f, f.escrow.write.settle([receiver, f.usdc.address], { account: f.other.account }));
      expectEvents(r, f.escrow, "Settled", [{ receiver, token: f.usdc.address, sender: f.other.account.address, amount: 300n }]);
      expectEvents(r, f.usdc, "Transfer", [{ from: f.escrow.address, to: receiver, value: 300n }]);
      expect(await usdcOf(f, receiver)).to.equal(300n);
      expect(await usdcOf(f, f.escrow.address)).to.equal(700n);
      expect(await receiverState(f, receiver, f.usdc.address)).to.deep.equal({ totalClaimed: 300n, totalSettled: 300n });
      // Claimed funds stay inside the channel balance.
      expect(await channelState(f, computeChannelId(f.domain, config))).to.deep.equal({ balance: 1_000n, totalClaimed: 300n });

      await claimAs(f, config, 1_000n, 750n);
      const r2 = await send(f, f.escrow.write.settle([receiver, f.usdc.address], { account: f.relayer.account }));
      expectEvents(r2, f.escrow, "Settled", [{ receiver, token: f.usdc.address, sender: f.relayer.account.address, amount: 450n }]);
      expect(await usdcOf(f, receiver)).to.equal(750n);
      expect(await receiverState(f, receiver, f.usdc.address)).to.deep.equal({ totalClaimed: 750n, totalSettled: 750n });
    });

    it("is a no-op without event or transfer when nothing is pending", async () => {
      const f = await loadEscrow();
      const receiver = f.receiver.account.address;
      const r0 = await send(f, f.escrow.write.settle([receiver, f.usdc.address], { account: f.other.account }));
      expect(r0.logs).to.have.length(0);

      const { config } = await openChannel(f, 1_000n);
      await claimAs(f, config, 100n);
      await send(f, f.escrow.write.settle([receiver, f.usdc.address], { account: f.other.account }));
      const r = await send(f, f.escrow.write.settle([receiver, f.usdc.address], { account: f.other.account }));
      expect(r.logs).to.have.length(0);
      expect(await usdcOf(f, receiver)).to.equal(100n);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("initiateWithdraw / finalizeWithdraw", () => {
    it("initiate records the request and emits finalizeAfter; finalize after the delay pays and closes the channel", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const payer = f.payer.account.address;
      const payerBefore = await usdcOf(f, payer);

      const ri = await send(f, f.escrow.write.initiateWithdraw([config, 1_000n], { account: f.payer.account }));
      const t0 = await blockTime(f, ri.blockNumber);
      expectEvents(ri, f.escrow, "WithdrawInitiated", [{ channelId: id, amount: 1_000n, finalizeAfter: t0 + MIN_DELAY }]);
      expect(await pendingOf(f, id)).to.deep.equal({ amount: 1_000n, initiatedAt: t0 });

      await time.setNextBlockTimestamp(t0 + MIN_DELAY);
      const rf = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expectEvents(rf, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: payer, amount: 1_000n }]);
      expectEvents(rf, f.escrow, "ChannelClosed", [{ channelId: id, config }]);
      expectEvents(rf, f.usdc, "Transfer", [{ from: f.escrow.address, to: payer, value: 1_000n }]);
      expect(await pendingOf(f, id)).to.deep.equal({ amount: 0n, initiatedAt: 0 });
      expect(await channelState(f, id)).to.deep.equal({ balance: 0n, totalClaimed: 0n });
      expect(await usdcOf(f, payer)).to.equal(payerBefore + 1_000n);
      expect(await usdcOf(f, f.escrow.address)).to.equal(0n);
    });

    it("the payerAuthorizer may initiate and finalize; funds still go to the payer", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n, { payerAuthorizer: f.other.account.address });
      const payer = f.payer.account.address;
      const payerBefore = await usdcOf(f, payer);
      await send(f, f.escrow.write.initiateWithdraw([config, 400n], { account: f.other.account }));
      await time.increase(MIN_DELAY);
      const r = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.other.account }));
      expectEvents(r, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: f.other.account.address, amount: 400n }]);
      expectNoEvent(r, f.escrow, "ChannelClosed");
      expect(await usdcOf(f, payer)).to.equal(payerBefore + 400n);
      expect(await usdcOf(f, f.other.account.address)).to.equal(1_000_000_000n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 600n, totalClaimed: 0n });
      // The sentinel is cleared: a new withdrawal can start.
      await send(f, f.escrow.write.initiateWithdraw([config, 600n], { account: f.payer.account }));
    });

    it("reverts BatchSettlementNotPayerSide for initiate and finalize by the receiver side or a stranger", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      for (const w of [f.receiver, f.receiverAuthorizer, f.other]) {
        await expectRevert(
          f.escrow.write.initiateWithdraw([config, 1n], { account: w.account }),
          "BatchSettlementNotPayerSide",
          [id, w.account.address],
        );
      }
      await send(f, f.escrow.write.initiateWithdraw([config, 1n], { account: f.payer.account }));
      await time.increase(MIN_DELAY);
      for (const w of [f.receiver, f.other]) {
        await expectRevert(
          f.escrow.write.finalizeWithdraw([config], { account: w.account }),
          "BatchSettlementNotPayerSide",
          [id, w.account.address],
        );
      }
    });

    it("reverts BatchSettlementNothingToWithdraw, WithdrawalPending and WithdrawExceedsAvailable", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      await expectRevert(
        f.escrow.write.initiateWithdraw([config, 0n], { account: f.payer.account }),
        "BatchSettlementNothingToWithdraw",
        [id],
      );
      await claimAs(f, config, 1_000n, 300n);
      await expectRevert(
        f.escrow.write.initiateWithdraw([config, 701n], { account: f.payer.account }),
        "BatchSettlementWithdrawExceedsAvailable",
        [id, 701n, 700n],
      );
      const r = await send(f, f.escrow.write.initiateWithdraw([config, 700n], { account: f.payer.account }));
      const t0 = await blockTime(f, r.blockNumber);
      await expectRevert(
        f.escrow.write.initiateWithdraw([config, 1n], { account: f.payer.account }),
        "BatchSettlementWithdrawalPending",
        [id, t0],
      );
      // An unfunded channel has nothing available.
      const empty = makeConfig(f, { salt: salt(99) });
      await expectRevert(
        f.escrow.write.initiateWithdraw([empty, 1n], { account: f.payer.account }),
        "BatchSettlementWithdrawExceedsAvailable",
        [computeChannelId(f.domain, empty), 1n, 0n],
      );
    });

    it("reverts BatchSettlementWithdrawalNotPending and BatchSettlementWithdrawDelayNotElapsed (boundary exact)", async () => {
      const f = await loadEscrow();
      const delay = 3_600;
      const { config, id } = await openChannel(f, 1_000n, { withdrawDelay: delay });
      await expectRevert(
        f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }),
        "BatchSettlementWithdrawalNotPending",
        [id],
      );
      const r = await send(f, f.escrow.write.initiateWithdraw([config, 500n], { account: f.payer.account }));
      const t0 = await blockTime(f, r.blockNumber);
      await time.setNextBlockTimestamp(t0 + delay - 1);
      await expectRevert(
        f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }),
        "BatchSettlementWithdrawDelayNotElapsed",
        [id, BigInt(t0 + delay), BigInt(t0 + delay - 1)],
      );
      await time.setNextBlockTimestamp(t0 + delay);
      const rf = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expectEvents(rf, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: f.payer.account.address, amount: 500n }]);
      await expectRevert(
        f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }),
        "BatchSettlementWithdrawalNotPending",
        [id],
      );
    });

    it("a claim during the delay reduces what finalize pays (capped at the unclaimed escrow)", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const payer = f.payer.account.address;
      const payerBefore = await usdcOf(f, payer);
      await send(f, f.escrow.write.initiateWithdraw([config, 1_000n], { account: f.payer.account }));
      await claimAs(f, config, 1_000n, 400n);
      await time.increase(MIN_DELAY);
      const r = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expectEvents(r, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: payer, amount: 600n }]);
      expectNoEvent(r, f.escrow, "ChannelClosed");
      expect(await usdcOf(f, payer)).to.equal(payerBefore + 600n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 400n, totalClaimed: 400n });
      // The receiver still settles what it claimed.
      await send(f, f.escrow.write.settle([f.receiver.account.address, f.usdc.address], { account: f.other.account }));
      expect(await usdcOf(f, f.receiver.account.address)).to.equal(400n);
      expect(await usdcOf(f, f.escrow.address)).to.equal(0n);
    });

    it("after finalize, claiming a previously unclaimed voucher reverts BatchSettlementClaimExceedsBalance", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      await claimAs(f, config, 1_000n, 100n);
      const late = await claimRow(f, config, 1_000n, 800n); // signed before the withdrawal, never submitted
      await send(f, f.escrow.write.initiateWithdraw([config, 900n], { account: f.payer.account }));
      await time.increase(MIN_DELAY);
      await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expect(await channelState(f, id)).to.deep.equal({ balance: 100n, totalClaimed: 100n });
      await expectRevert(
        f.escrow.write.claim([[late]], { account: f.receiver.account }),
        "BatchSettlementClaimExceedsBalance",
        [id, 800n, 100n],
      );
    });

    it("finalize pays nothing (no transfer, no ChannelClosed) when everything was claimed during the delay", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      await send(f, f.escrow.write.initiateWithdraw([config, 500n], { account: f.payer.account }));
      await claimAs(f, config, 1_000n);
      await time.increase(MIN_DELAY);
      const r = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expectEvents(r, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: f.payer.account.address, amount: 0n }]);
      expectNoEvent(r, f.escrow, "ChannelClosed");
      expect(eventsOf(r, f.usdc, "Transfer")).to.have.length(0);
      expect(await pendingOf(f, id)).to.deep.equal({ amount: 0n, initiatedAt: 0 });
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 1_000n });
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("refund / refundWithSignature", () => {
    it("refund by the receiver returns unclaimed escrow to the payer and advances the nonce", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const payer = f.payer.account.address;
      const payerBefore = await usdcOf(f, payer);
      const r = await send(f, f.escrow.write.refund([config, 300n], { account: f.receiver.account }));
      expectEvents(r, f.escrow, "Refunded", [{ channelId: id, sender: f.receiver.account.address, amount: 300n }]);
      expectNoEvent(r, f.escrow, "ChannelClosed");
      expectEvents(r, f.usdc, "Transfer", [{ from: f.escrow.address, to: payer, value: 300n }]);
      expect(await f.escrow.read.refundNonce([id])).to.equal(1n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 700n, totalClaimed: 0n });
      expect(await usdcOf(f, payer)).to.equal(payerBefore + 300n);

      const r2 = await send(f, f.escrow.write.refund([config, 100n], { account: f.receiverAuthorizer.account }));
      expectEvents(r2, f.escrow, "Refunded", [{ channelId: id, sender: f.receiverAuthorizer.account.address, amount: 100n }]);
      expect(await f.escrow.read.refundNonce([id])).to.equal(2n);
    });

    it("reverts BatchSettlementNotReceiverSide for the payer side and strangers, BatchSettlementZeroRefund for 0", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n, { payerAuthorizer: f.other.account.address });
      for (const w of [f.payer, f.other, f.relayer]) {
        await expectRevert(f.escrow.write.refund([config, 1n], { account: w.account }), "BatchSettlementNotReceiverSide", [
          id,
          w.account.address,
        ]);
      }
      await expectRevert(f.escrow.write.refund([config, 0n], { account: f.receiver.account }), "BatchSettlementZeroRefund", [id]);
      expect(await f.escrow.read.refundNonce([id])).to.equal(0n);
    });

    it("caps the refund at balance - totalClaimed", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      await claimAs(f, config, 1_000n, 300n);
      const r = await send(f, f.escrow.write.refund([config, MAX_UINT128], { account: f.receiver.account }));
      expectEvents(r, f.escrow, "Refunded", [{ channelId: id, sender: f.receiver.account.address, amount: 700n }]);
      expectNoEvent(r, f.escrow, "ChannelClosed");
      expect(await channelState(f, id)).to.deep.equal({ balance: 300n, totalClaimed: 300n });
      // The claimed part is still settleable.
      await send(f, f.escrow.write.settle([f.receiver.account.address, f.usdc.address], { account: f.other.account }));
      expect(await usdcOf(f, f.escrow.address)).to.equal(0n);
    });

    it("advances the nonce even when nothing is refundable (no Refunded event, no transfer)", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      await claimAs(f, config, 1_000n);
      const r = await send(f, f.escrow.write.refund([config, 50n], { account: f.receiver.account }));
      expect(r.logs).to.have.length(0);
      expect(await f.escrow.read.refundNonce([id])).to.equal(1n);
      // Also on a channel that was never funded.
      const empty = makeConfig(f, { salt: salt(77) });
      const emptyId = computeChannelId(f.domain, empty);
      const r2 = await send(f, f.escrow.write.refund([empty, 50n], { account: f.receiver.account }));
      expect(r2.logs).to.have.length(0);
      expect(await f.escrow.read.refundNonce([emptyId])).to.equal(1n);
    });

    it("a refund smaller than a pending withdrawal reduces it; a covering refund cancels it", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const r0 = await send(f, f.escrow.write.initiateWithdraw([config, 600n], { account: f.payer.account }));
      const t0 = await blockTime(f, r0.blockNumber);
      await send(f, f.escrow.write.refund([config, 200n], { account: f.receiver.account }));
      expect(await pendingOf(f, id)).to.deep.equal({ amount: 400n, initiatedAt: t0 });
      expect((await channelState(f, id)).balance).to.equal(800n);

      await send(f, f.escrow.write.refund([config, 400n], { account: f.receiver.account }));
      expect(await pendingOf(f, id)).to.deep.equal({ amount: 0n, initiatedAt: 0 });
      expect((await channelState(f, id)).balance).to.equal(400n);
      await time.increase(MIN_DELAY);
      await expectRevert(
        f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }),
        "BatchSettlementWithdrawalNotPending",
        [id],
      );
    });

    it("a partial refund leaves the reduced withdrawal finalizable for the rest", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const payer = f.payer.account.address;
      const before = await usdcOf(f, payer);
      await send(f, f.escrow.write.initiateWithdraw([config, 1_000n], { account: f.payer.account }));
      await send(f, f.escrow.write.refund([config, 250n], { account: f.receiver.account }));
      await time.increase(MIN_DELAY);
      const r = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expectEvents(r, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: payer, amount: 750n }]);
      expectEvents(r, f.escrow, "ChannelClosed", [{ channelId: id, config }]);
      expect(await usdcOf(f, payer)).to.equal(before + 1_000n);
    });

    it("a draining refund emits ChannelClosed; re-funding the channel emits ChannelCreated again", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const r = await send(f, f.escrow.write.refund([config, 1_000n], { account: f.receiver.account }));
      expect(eventNames(r, f.escrow)).to.deep.equal(["Refunded", "ChannelClosed"]);
      expectEvents(r, f.escrow, "ChannelClosed", [{ channelId: id, config }]);
      expect(await channelState(f, id)).to.deep.equal({ balance: 0n, totalClaimed: 0n });

      const r2 = await depositGasless(f, config, 55n);
      expectEvents(r2, f.escrow, "ChannelCreated", [{ channelId: id, config }]);
      expectEvents(r2, f.escrow, "Deposited", [
        { channelId: id, sender: f.relayer.account.address, amount: 55n, newBalance: 55n },
      ]);
    });

    it("refundWithSignature is relayed by anyone with the receiverAuthorizer's signature for the current nonce", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const payer = f.payer.account.address;
      const before = await usdcOf(f, payer);
      const sig = await signRefund(f.receiverAuthorizer, f.domain, id, 0n, 400n);
      const r = await send(f, f.escrow.write.refundWithSignature([config, 400n, 0n, sig], { account: f.other.account }));
      expectEvents(r, f.escrow, "Refunded", [{ channelId: id, sender: f.other.account.address, amount: 400n }]);
      expect(await usdcOf(f, payer)).to.equal(before + 400n);
      expect(await f.escrow.read.refundNonce([id])).to.equal(1n);
      // Replay: the nonce moved on.
      await expectRevert(
        f.escrow.write.refundWithSignature([config, 400n, 0n, sig], { account: f.other.account }),
        "BatchSettlementInvalidRefundNonce",
        [id, 1n, 0n],
      );
      // A nonce from the future is refused too.
      await expectRevert(
        f.escrow.write.refundWithSignature([config, 400n, 5n, sig], { account: f.other.account }),
        "BatchSettlementInvalidRefundNonce",
        [id, 1n, 5n],
      );
    });

    it("a direct refund invalidates a pre-signed refundWithSignature for the old nonce", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const presigned = await signRefund(f.receiverAuthorizer, f.domain, id, 0n, 500n);
      await send(f, f.escrow.write.refund([config, 1n], { account: f.receiver.account }));
      await expectRevert(
        f.escrow.write.refundWithSignature([config, 500n, 0n, presigned], { account: f.relayer.account }),
        "BatchSettlementInvalidRefundNonce",
        [id, 1n, 0n],
      );
      expect((await channelState(f, id)).balance).to.equal(999n);
    });

    it("refundWithSignature accepts an ERC-1271 receiverAuthorizer's signature, and refuses one its owner did not make", async () => {
      const f = await loadEscrow();
      const wallet = await hre.viem.deployContract("TestERC1271Wallet", [f.receiverAuthorizer.account.address]);
      const { config, id } = await openChannel(f, 1_000n, { receiverAuthorizer: wallet.address });
      const notOwner = await signRefund(f.receiver, f.domain, id, 0n, 300n);
      await expectRevert(
        f.escrow.write.refundWithSignature([config, 300n, 0n, notOwner], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [getAddress(wallet.address), refundDigest(f.domain, id, 0n, 300n)],
      );
      const payer = f.payer.account.address;
      const before = await usdcOf(f, payer);
      const sig = await signRefund(f.receiverAuthorizer, f.domain, id, 0n, 300n);
      const r = await send(f, f.escrow.write.refundWithSignature([config, 300n, 0n, sig], { account: f.relayer.account }));
      expectEvents(r, f.escrow, "Refunded", [{ channelId: id, sender: f.relayer.account.address, amount: 300n }]);
      expect(await usdcOf(f, payer)).to.equal(before + 300n);
      expect(await f.escrow.read.refundNonce([id])).to.equal(1n);
    });

    it("reverts BatchSettlementInvalidAuthorizerSignature for a wrong signer or another amount", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const authorizer = f.receiverAuthorizer.account.address;
      const byReceiver = await signRefund(f.receiver, f.domain, id, 0n, 400n);
      await expectRevert(
        f.escrow.write.refundWithSignature([config, 400n, 0n, byReceiver], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [authorizer, refundDigest(f.domain, id, 0n, 400n)],
      );
      const sig = await signRefund(f.receiverAuthorizer, f.domain, id, 0n, 400n);
      await expectRevert(
        f.escrow.write.refundWithSignature([config, 900n, 0n, sig], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [authorizer, refundDigest(f.domain, id, 0n, 900n)],
      );
      expect(await f.escrow.read.refundNonce([id])).to.equal(0n);
    });

    it("refundWithSignature of 0 reverts BatchSettlementZeroRefund", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const sig = await signRefund(f.receiverAuthorizer, f.domain, id, 0n, 0n);
      await expectRevert(
        f.escrow.write.refundWithSignature([config, 0n, 0n, sig], { account: f.relayer.account }),
        "BatchSettlementZeroRefund",
        [id],
      );
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("multicall", () => {
    it("claims and settles in one transaction", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const receiver = f.receiver.account.address;
      const row = await claimRow(f, config, 640n);
      const calls = [
        encodeFunctionData({ abi: f.escrow.abi, functionName: "claim", args: [[row]] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "settle", args: [receiver, f.usdc.address] }),
      ];
      const r = await send(f, f.escrow.write.multicall([calls], { account: f.receiver.account }));
      expect(eventNames(r, f.escrow)).to.deep.equal(["Claimed", "Settled"]);
      expectEvents(r, f.escrow, "Claimed", [{ channelId: id, sender: receiver, claimAmount: 640n, newTotalClaimed: 640n }]);
      expectEvents(r, f.escrow, "Settled", [{ receiver, token: f.usdc.address, sender: receiver, amount: 640n }]);
      expect(await usdcOf(f, receiver)).to.equal(640n);
    });

    it("returns each inner call's result (the digest views, batched)", async () => {
      const f = await loadEscrow();
      const config = makeConfig(f);
      const id = computeChannelId(f.domain, config);
      const rows = [await claimRow(f, config, 500n, 200n)];
      const calls = [
        encodeFunctionData({ abi: f.escrow.abi, functionName: "getChannelId", args: [config] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "getVoucherDigest", args: [id, 500n] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "getRefundDigest", args: [id, 3n, 70n] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "getClaimBatchDigest", args: [rows] }),
      ];
      const { result } = await f.escrow.simulate.multicall([calls], { account: f.other.account.address });
      expect(result).to.deep.equal([
        id,
        voucherDigest(f.domain, id, 500n),
        refundDigest(f.domain, id, 3n, 70n),
        claimBatchDigest(f.domain, rows),
      ]);
      // As a transaction it changes nothing.
      const r = await send(f, f.escrow.write.multicall([calls], { account: f.other.account }));
      expect(r.logs).to.have.length(0);
    });

    it("a failing inner call reverts the whole batch with the inner error", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const receiver = f.receiver.account.address;
      const row = await claimRow(f, config, 640n);
      const calls = [
        encodeFunctionData({ abi: f.escrow.abi, functionName: "claim", args: [[row]] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "settle", args: [receiver, f.usdc.address] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "refund", args: [config, 0n] }),
      ];
      await expectRevert(f.escrow.write.multicall([calls], { account: f.receiver.account }), "BatchSettlementZeroRefund", [id]);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 0n });
      expect(await receiverState(f, receiver, f.usdc.address)).to.deep.equal({ totalClaimed: 0n, totalSettled: 0n });
      expect(await usdcOf(f, receiver)).to.equal(0n);
    });

    it("inner calls keep the outer msg.sender (a stranger's batch is refused)", async () => {
      const f = await loadEscrow();
      const { config, id } = await openChannel(f, 1_000n);
      const row = await claimRow(f, config, 10n);
      const calls = [encodeFunctionData({ abi: f.escrow.abi, functionName: "claim", args: [[row]] })];
      await expectRevert(f.escrow.write.multicall([calls], { account: f.other.account }), "BatchSettlementNotReceiverSide", [
        id,
        f.other.account.address,
      ]);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("views", () => {
    it("getChannelId binds every config field, the chain and the escrow address", async () => {
      const f = await loadEscrow();
      const base = makeConfig(f);
      const id = await f.escrow.read.getChannelId([base]);
      expect(id).to.equal(computeChannelId(f.domain, base));
      const variants: Partial<ChannelConfig>[] = [
        { payer: f.payer2.account.address },
        { payerAuthorizer: zeroAddress },
        { receiver: f.receiver2.account.address },
        { receiverAuthorizer: f.receiver.account.address },
        { token: f.escrow.address },
        { withdrawDelay: 901 },
        { salt: salt(1) },
      ];
      const ids = new Set([id]);
      for (const v of variants) ids.add(await f.escrow.read.getChannelId([{ ...base, ...v }]));
      expect(ids.size).to.equal(variants.length + 1);
      expect(computeChannelId(escrowDomain(1, f.escrow.address), base)).to.not.equal(id);
    });

    it("constants expose the withdraw delay bounds", async () => {
      const f = await loadEscrow();
      expect(await f.escrow.read.MIN_WITHDRAW_DELAY()).to.equal(MIN_DELAY);
      expect(await f.escrow.read.MAX_WITHDRAW_DELAY()).to.equal(MAX_DELAY);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("malformed calldata (BatchSettlementMalformedConfig)", () => {
    it("rejects a dirty address word in initiateWithdraw, finalizeWithdraw, refund and refundWithSignature", async () => {
      const f = await loadEscrow();
      const { config } = await openChannel(f, 1_000n);
      const sig = await signRefund(f.receiverAuthorizer, f.domain, computeChannelId(f.domain, config), 0n, 1n);
      const calls: [Hex, Address][] = [
        [encodeFunctionData({ abi: f.escrow.abi, functionName: "initiateWithdraw", args: [config, 5n] }), config.payer],
        [encodeFunctionData({ abi: f.escrow.abi, functionName: "finalizeWithdraw", args: [config] }), config.token],
        [encodeFunctionData({ abi: f.escrow.abi, functionName: "refund", args: [config, 5n] }), config.receiver],
        [
          encodeFunctionData({ abi: f.escrow.abi, functionName: "refundWithSignature", args: [config, 1n, 0n, sig] }),
          config.receiverAuthorizer,
        ],
      ];
      for (const [data, word] of calls) {
        await expectRevert(
          f.payer.sendTransaction({ account: f.payer.account, to: f.escrow.address, data: dirtyWordOf(data, word) }),
          "BatchSettlementMalformedConfig",
          [],
        );
      }
    });

    it("rejects a dirty withdrawDelay word (bits above uint40) and a dirty word in getChannelId", async () => {
      const f = await loadEscrow();
      const config = makeConfig(f, { withdrawDelay: 0xabcde });
      const data = encodeFunctionData({ abi: f.escrow.abi, functionName: "refund", args: [config, 5n] });
      await expectRevert(
        f.receiver.sendTransaction({ account: f.receiver.account, to: f.escrow.address, data: dirtyWordOf(data, "0x0abcde") }),
        "BatchSettlementMalformedConfig",
        [],
      );
      const view = encodeFunctionData({ abi: f.escrow.abi, functionName: "getChannelId", args: [config] });
      await expectRevert(
        f.publicClient.call({ to: f.escrow.address, data: dirtyWordOf(view, config.payerAuthorizer) }),
        "BatchSettlementMalformedConfig",
        [],
      );
    });

    it("rejects a dirty config word inside a claim row", async () => {
      const f = await loadEscrow();
      const { config } = await openChannel(f, 1_000n);
      const row = await claimRow(f, config, 10n);
      const data = encodeFunctionData({ abi: f.escrow.abi, functionName: "claim", args: [[row]] });
      await expectRevert(
        f.receiver.sendTransaction({ account: f.receiver.account, to: f.escrow.address, data: dirtyWordOf(data, config.token) }),
        "BatchSettlementMalformedConfig",
        [],
      );
      const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, [row]);
      const data2 = encodeFunctionData({ abi: f.escrow.abi, functionName: "claimWithSignature", args: [[row], sig] });
      await expectRevert(
        f.relayer.sendTransaction({ account: f.relayer.account, to: f.escrow.address, data: dirtyWordOf(data2, config.payer) }),
        "BatchSettlementMalformedConfig",
        [],
      );
    });

    it("rejects a dirty payerAuthorizer word in deposit", async () => {
      const f = await loadEscrow();
      const config = makeConfig(f);
      const data = encodeFunctionData({
        abi: f.escrow.abi,
        functionName: "deposit",
        args: [config, 5n, f.erc3009Collector.address, "0x"],
      });
      await expectRevert(
        f.relayer.sendTransaction({ account: f.relayer.account, to: f.escrow.address, data: dirtyWordOf(data, config.payerAuthorizer) }),
        "BatchSettlementMalformedConfig",
        [],
      );
    });

    // Regression (fixed: the id is computed before any field is read): deposit() reads config.payer/receiver/receiverAuthorizer/
    // token/withdrawDelay in _requireValidConfig BEFORE _channelId, and Solidity's calldata validator reverts
    // with EMPTY revert data on a dirty word, so the documented BatchSettlementMalformedConfig never surfaces.
    it("deposit with a dirty payer word reverts with BatchSettlementMalformedConfig", async () => {
      const f = await loadEscrow();
      const config = makeConfig(f);
      const data = encodeFunctionData({
        abi: f.escrow.abi,
        functionName: "deposit",
        args: [config, 5n, f.erc3009Collector.address, "0x"],
      });
      await expectRevert(
        f.relayer.sendTransaction({ account: f.relayer.account, to: f.escrow.address, data: dirtyWordOf(data, config.payer) }),
        "BatchSettlementMalformedConfig",
        [],
      );
    });

    // Regression (same fix): claimWithSignature reads voucherClaims[0]...receiverAuthorizer before
    // computing the channel ids, so a dirty receiverAuthorizer word in row 0 gives empty revert data.
    it("claimWithSignature with a dirty receiverAuthorizer word in row 0 reverts with BatchSettlementMalformedConfig", async () => {
      const f = await loadEscrow();
      const { config } = await openChannel(f, 1_000n);
      const row = await claimRow(f, config, 10n);
      const sig = await signClaimBatch(f.receiverAuthorizer, f.domain, [row]);
      const data = encodeFunctionData({ abi: f.escrow.abi, functionName: "claimWithSignature", args: [[row], sig] });
      await expectRevert(
        f.relayer.sendTransaction({
          account: f.relayer.account,
          to: f.escrow.address,
          data: dirtyWordOf(data, config.receiverAuthorizer),
        }),
        "BatchSettlementMalformedConfig",
        [],
      );
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("accounting invariant", () => {
    it("token.balanceOf(escrow) == sum(channel.balance) - sum(receiver.totalSettled) through a mixed history", async () => {
      const f = await loadEscrow();
      const A = await openChannel(f, 1_000n, { salt: salt(1) });
      const B = await openChannel(f, 2_000n, { salt: salt(2), receiver: f.receiver2.account.address });
      const check = async () => {
        const balances = (await channelState(f, A.id)).balance + (await channelState(f, B.id)).balance;
        const settled =
          (await receiverState(f, f.receiver.account.address, f.usdc.address)).totalSettled +
          (await receiverState(f, f.receiver2.account.address, f.usdc.address)).totalSettled;
        expect(await usdcOf(f, f.escrow.address)).to.equal(balances - settled);
      };
      await check();
      await send(f, f.escrow.write.claim([[await claimRow(f, A.config, 400n), await claimRow(f, B.config, 900n)]], {
        account: f.receiverAuthorizer.account,
      }));
      await check();
      await send(f, f.escrow.write.settle([f.receiver.account.address, f.usdc.address], { account: f.other.account }));
      await check();
      await send(f, f.escrow.write.refund([A.config, 100n], { account: f.receiver.account }));
      await check();
      await send(f, f.escrow.write.initiateWithdraw([B.config, 1_100n], { account: f.payer.account }));
      await send(f, f.escrow.write.claim([[await claimRow(f, B.config, 1_500n)]], { account: f.receiver2.account }));
      await time.increase(MIN_DELAY);
      await send(f, f.escrow.write.finalizeWithdraw([B.config], { account: f.payer.account }));
      await check();
      await depositGasless(f, A.config, 333n);
      await send(f, f.escrow.write.settle([f.receiver2.account.address, f.usdc.address], { account: f.other.account }));
      await check();
      expect(await channelState(f, B.id)).to.deep.equal({ balance: 1_500n, totalClaimed: 1_500n });
      expect(await usdcOf(f, f.receiver2.account.address)).to.equal(1_500n);
    });
  });
});
