/**
 * Safety properties of the escrow against hostile tokens and replayed signatures: fee-on-transfer tokens,
 * USDC-style blacklists, reentrancy through a token hook, and vouchers / authorizer signatures moved to
 * another channel, chain or contract.
 */
import hre from "hardhat";
import { expect } from "chai";
import { time } from "@nomicfoundation/hardhat-network-helpers";
import { type Address, type Hex, encodeFunctionData, getAddress, pad, toHex } from "viem";
import {
  type ChannelConfig,
  CANONICAL_ADDRESSES,
  claimBatchDigest,
  computeChannelId,
  escrowDomain,
  refundDigest,
} from "../../node/protocol/typedData";
import {
  type Fixture,
  allowanceCollectorData,
  claimRow,
  depositGasless,
  loadEscrow,
  makeConfig,
  signClaimBatch,
  signRefund,
  signVoucher,
} from "../helpers/fixture";
import {
  decodeRevertData,
  encodePermitDepositData,
  erc3009Data,
  eventsOf,
  expectEvents,
  expectRevert,
  randomBytes32,
  send,
  signDepositAuthorization,
  signPermit,
} from "../helpers/asserts";

const MIN_DELAY = 900;
const salt = (n: number): Hex => pad(toHex(n), { size: 32 });

type Approvable = { address: Address; write: { approve: (args: [Address, bigint], opts: { account: any }) => Promise<Hex> } };

/** Funds `config` from the fixture payer through the permit collector with a prior approve. */
async function fundWithAllowance(f: Fixture, token: Approvable, config: ChannelConfig, amount: bigint) {
  await token.write.approve([f.permitCollector.address, amount], { account: f.payer.account });
  const id = computeChannelId(f.domain, config);
  const data = await allowanceCollectorData(f, f.payer, id, amount);
  await send(f, f.escrow.write.deposit([config, amount, f.permitCollector.address, data], { account: f.relayer.account }));
  return id;
}

async function channelState(f: Fixture, id: Hex) {
  const [balance, totalClaimed] = await f.escrow.read.channels([id]);
  return { balance, totalClaimed };
}

describe("safety", () => {
  // ---------------------------------------------------------------------------------------------
  describe("fee-on-transfer tokens", () => {
    it("are refused with BatchSettlementDepositNotReceived on the gasless permit path, consuming nothing", async () => {
      const f = await loadEscrow();
      const fot = await hre.viem.deployContract("FeeOnTransferToken");
      const payer = f.payer.account.address;
      await fot.write.mint([payer, 1_000_000n]);
      const config = makeConfig(f, { token: fot.address });
      const id = computeChannelId(f.domain, config);
      const amount = 250_000n;
      const permit = await signPermit({
        signer: f.payer,
        chainId: f.chainId,
        token: fot.address,
        tokenName: "Fee On Transfer Token",
        tokenVersion: "1",
        owner: payer,
        spender: f.permitCollector.address,
        value: amount,
        nonce: 0n,
        deadline: 2n ** 40n,
      });
      const nonce = randomBytes32("fot");
      const authorization = await signDepositAuthorization({
        signer: f.payer,
        chainId: f.chainId,
        collector: f.permitCollector.address,
        channelId: id,
        amount,
        nonce,
        deadline: 2n ** 40n,
      });
      const data = encodePermitDepositData({
        nonce,
        deadline: 2n ** 40n,
        authorization,
        permit: { deadline: 2n ** 40n, v: permit.v, r: permit.r, s: permit.s },
      });
      const fee = await fot.read.feeOf([amount]);
      expect(fee).to.equal(2_500n);
      await expectRevert(
        f.escrow.write.deposit([config, amount, f.permitCollector.address, data], { account: f.relayer.account }),
        "BatchSettlementDepositNotReceived",
        [fot.address, amount, amount - fee],
      );
      expect(await channelState(f, id)).to.deep.equal({ balance: 0n, totalClaimed: 0n });
      expect(await fot.read.balanceOf([payer])).to.equal(1_000_000n);
      expect(await fot.read.nonces([payer])).to.equal(0n);
      expect(await f.permitCollector.read.authorizationUsed([payer, nonce])).to.equal(false);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("blacklisting token (USDC-style)", () => {
    async function setup() {
      const f = await loadEscrow();
      const blt = await hre.viem.deployContract("BlacklistToken");
      await blt.write.mint([f.payer.account.address, 10_000n]);
      const config = makeConfig(f, { token: blt.address });
      const id = await fundWithAllowance(f, blt, config, 1_000n);
      return { f, blt, config, id };
    }

    it("a blacklisted payer cannot block the receiver's claim and settle", async () => {
      const { f, blt, config, id } = await setup();
      const payer = f.payer.account.address;
      const receiver = f.receiver.account.address;
      await blt.write.blacklist([payer]);
      const row = await claimRow(f, config, 600n);
      await send(f, f.escrow.write.claim([[row]], { account: f.receiver.account }));
      const r = await send(f, f.escrow.write.settle([receiver, blt.address], { account: f.other.account }));
      expectEvents(r, f.escrow, "Settled", [{ receiver, token: blt.address, sender: f.other.account.address, amount: 600n }]);
      expect(await blt.read.balanceOf([receiver])).to.equal(600n);

      // The payer's own withdrawal is stuck while blacklisted (the token refuses), and nothing is lost.
      await send(f, f.escrow.write.initiateWithdraw([config, 400n], { account: f.payer.account }));
      await time.increase(MIN_DELAY);
      await expectRevert(f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }), "Blacklisted", [payer]);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 600n });
      await blt.write.unblacklist([payer]);
      await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expect(await blt.read.balanceOf([payer])).to.equal(9_400n);
    });

    it("a blacklisted receiver cannot block the payer's refund or withdrawal; its claim waits intact", async () => {
      const { f, blt, config, id } = await setup();
      const payer = f.payer.account.address;
      const receiver = f.receiver.account.address;
      await send(f, f.escrow.write.claim([[await claimRow(f, config, 300n)]], { account: f.receiver.account }));
      await blt.write.blacklist([receiver]);

      await expectRevert(
        f.escrow.write.settle([receiver, blt.address], { account: f.other.account }),
        "Blacklisted",
        [receiver],
      );
      const [claimed, settled] = await f.escrow.read.receivers([receiver, blt.address]);
      expect([claimed, settled]).to.deep.equal([300n, 0n]);

      // Refund by the (blacklisted) receiver itself: the payout goes to the payer.
      const rr = await send(f, f.escrow.write.refund([config, 200n], { account: f.receiver.account }));
      expectEvents(rr, f.escrow, "Refunded", [{ channelId: id, sender: receiver, amount: 200n }]);
      // Timed withdrawal of the rest of the unclaimed escrow.
      await send(f, f.escrow.write.initiateWithdraw([config, 500n], { account: f.payer.account }));
      await time.increase(MIN_DELAY);
      const rw = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      expectEvents(rw, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: payer, amount: 500n }]);
      expect(await blt.read.balanceOf([payer])).to.equal(9_000n + 200n + 500n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 300n, totalClaimed: 300n });
      expect(await blt.read.balanceOf([f.escrow.address])).to.equal(300n);

      // Once unblacklisted, the receiver settles exactly what it claimed.
      await blt.write.unblacklist([receiver]);
      await send(f, f.escrow.write.settle([receiver, blt.address], { account: f.other.account }));
      expect(await blt.read.balanceOf([receiver])).to.equal(300n);
      expect(await blt.read.balanceOf([f.escrow.address])).to.equal(0n);
    });

    it("a blacklisted receiver does not hold up another receiver of the same token", async () => {
      const { f, blt, config } = await setup();
      const other = makeConfig(f, { token: blt.address, receiver: f.receiver2.account.address, salt: salt(2) });
      await fundWithAllowance(f, blt, other, 1_000n);
      await send(f, f.escrow.write.claim([[await claimRow(f, config, 100n), await claimRow(f, other, 200n)]], {
        account: f.receiverAuthorizer.account,
      }));
      await blt.write.blacklist([f.receiver.account.address]);
      await send(f, f.escrow.write.settle([f.receiver2.account.address, blt.address], { account: f.other.account }));
      expect(await blt.read.balanceOf([f.receiver2.account.address])).to.equal(200n);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("reentrancy through a token hook", () => {
    async function setup() {
      const f = await loadEscrow();
      const rent = await hre.viem.deployContract("ReentrantToken");
      await rent.write.mint([f.payer.account.address, 10_000n]);
      const config = makeConfig(f, { token: rent.address });
      const id = await fundWithAllowance(f, rent, config, 1_000n);
      return { f, rent, config, id };
    }

    /** Asserts the hook ran exactly once more and failed with ReentrancyGuardReentrantCall(). */
    async function expectHookBlocked(rent: Awaited<ReturnType<typeof setup>>["rent"], countBefore: bigint) {
      expect(await rent.read.hookCallCount()).to.equal(countBefore + 1n);
      expect(await rent.read.lastHookSuccess()).to.equal(false);
      const decoded = decodeRevertData(await rent.read.lastHookReturn());
      expect(decoded.errorName).to.equal("ReentrancyGuardReentrantCall");
      expect(decoded.args).to.deep.equal([]);
      expect(await rent.read.hookTarget()).to.equal("0x0000000000000000000000000000000000000000");
    }

    it("control: the same hook call outside an escrow operation succeeds (so the guard is what stops it)", async () => {
      const { f, rent, config } = await setup();
      const receiver = f.receiver.account.address;
      await send(f, f.escrow.write.claim([[await claimRow(f, config, 100n)]], { account: f.receiver.account }));
      const settle = encodeFunctionData({ abi: f.escrow.abi, functionName: "settle", args: [receiver, rent.address] });
      await rent.write.setHook([f.escrow.address, settle]);
      await rent.write.transfer([f.other.account.address, 1n], { account: f.payer.account });
      expect(await rent.read.lastHookSuccess()).to.equal(true);
      expect(await rent.read.balanceOf([receiver])).to.equal(100n);
    });

    it("settle → hook → escrow.settle fails; the outer settle pays exactly once", async () => {
      const { f, rent, config } = await setup();
      const receiver = f.receiver.account.address;
      await send(f, f.escrow.write.claim([[await claimRow(f, config, 400n)]], { account: f.receiver.account }));
      await rent.write.setHook([
        f.escrow.address,
        encodeFunctionData({ abi: f.escrow.abi, functionName: "settle", args: [receiver, rent.address] }),
      ]);
      const count = await rent.read.hookCallCount();
      const r = await send(f, f.escrow.write.settle([receiver, rent.address], { account: f.other.account }));
      await expectHookBlocked(rent, count);
      expectEvents(r, f.escrow, "Settled", [{ receiver, token: rent.address, sender: f.other.account.address, amount: 400n }]);
      expect(eventsOf(r, rent, "HookCalled").map((e) => e.success)).to.deep.equal([false]);
      expect(await rent.read.balanceOf([receiver])).to.equal(400n);
      const [claimed, settled] = await f.escrow.read.receivers([receiver, rent.address]);
      expect([claimed, settled]).to.deep.equal([400n, 400n]);
      expect(await rent.read.balanceOf([f.escrow.address])).to.equal(600n);
    });

    it("every state-changing entry point (and multicall) is guarded while a payout is in flight", async () => {
      const { f, rent, config, id } = await setup();
      const receiver = f.receiver.account.address;
      const row = await claimRow(f, config, 900n);
      const refundSig = await signRefund(f.receiverAuthorizer, f.domain, id, 0n, 1n);
      const depositData = await allowanceCollectorData(f, f.payer, id, 1n);
      const calls: Hex[] = [
        encodeFunctionData({ abi: f.escrow.abi, functionName: "deposit", args: [config, 1n, f.permitCollector.address, depositData] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "claim", args: [[row]] }),
        encodeFunctionData({
          abi: f.escrow.abi,
          functionName: "claimWithSignature",
          args: [[row], await signClaimBatch(f.receiverAuthorizer, f.domain, [row])],
        }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "settle", args: [receiver, rent.address] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "initiateWithdraw", args: [config, 1n] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "finalizeWithdraw", args: [config] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "refund", args: [config, 1n] }),
        encodeFunctionData({ abi: f.escrow.abi, functionName: "refundWithSignature", args: [config, 1n, 0n, refundSig] }),
      ];
      calls.push(encodeFunctionData({ abi: f.escrow.abi, functionName: "multicall", args: [[calls[3]]] }));
      let claimed = 0n;
      for (const data of calls) {
        claimed += 10n;
        await send(f, f.escrow.write.claim([[await claimRow(f, config, claimed)]], { account: f.receiver.account }));
        await rent.write.setHook([f.escrow.address, data]);
        const count = await rent.read.hookCallCount();
        await send(f, f.escrow.write.settle([receiver, rent.address], { account: f.other.account }));
        await expectHookBlocked(rent, count);
        expect(await rent.read.balanceOf([receiver])).to.equal(claimed);
      }
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: claimed });
      expect(await f.escrow.read.refundNonce([id])).to.equal(0n);
      const [, initiatedAt] = await f.escrow.read.pendingWithdrawals([id]);
      expect(initiatedAt).to.equal(0);
    });

    it("settle → hook → escrow.claim fails; the claim does not land", async () => {
      const { f, rent, config, id } = await setup();
      const receiver = f.receiver.account.address;
      await send(f, f.escrow.write.claim([[await claimRow(f, config, 100n)]], { account: f.receiver.account }));
      const more = await claimRow(f, config, 900n);
      await rent.write.setHook([f.escrow.address, encodeFunctionData({ abi: f.escrow.abi, functionName: "claim", args: [[more]] })]);
      const count = await rent.read.hookCallCount();
      await send(f, f.escrow.write.settle([receiver, rent.address], { account: f.receiver.account }));
      await expectHookBlocked(rent, count);
      expect(await channelState(f, id)).to.deep.equal({ balance: 1_000n, totalClaimed: 100n });
      expect(await rent.read.balanceOf([receiver])).to.equal(100n);
    });

    it("refund → hook → escrow.refund fails; the outer refund completes once", async () => {
      const { f, rent, config, id } = await setup();
      const payer = f.payer.account.address;
      await rent.write.setHook([
        f.escrow.address,
        encodeFunctionData({ abi: f.escrow.abi, functionName: "refund", args: [config, 300n] }),
      ]);
      const count = await rent.read.hookCallCount();
      const r = await send(f, f.escrow.write.refund([config, 300n], { account: f.receiver.account }));
      await expectHookBlocked(rent, count);
      expectEvents(r, f.escrow, "Refunded", [{ channelId: id, sender: f.receiver.account.address, amount: 300n }]);
      expect(await f.escrow.read.refundNonce([id])).to.equal(1n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 700n, totalClaimed: 0n });
      expect(await rent.read.balanceOf([payer])).to.equal(9_000n + 300n);
    });

    it("finalizeWithdraw → hook → escrow.finalizeWithdraw fails; the outer withdrawal pays once", async () => {
      const { f, rent, config, id } = await setup();
      const payer = f.payer.account.address;
      await send(f, f.escrow.write.initiateWithdraw([config, 1_000n], { account: f.payer.account }));
      await time.increase(MIN_DELAY);
      await rent.write.setHook([
        f.escrow.address,
        encodeFunctionData({ abi: f.escrow.abi, functionName: "finalizeWithdraw", args: [config] }),
      ]);
      const count = await rent.read.hookCallCount();
      const r = await send(f, f.escrow.write.finalizeWithdraw([config], { account: f.payer.account }));
      await expectHookBlocked(rent, count);
      expectEvents(r, f.escrow, "WithdrawFinalized", [{ channelId: id, sender: payer, amount: 1_000n }]);
      expect(await rent.read.balanceOf([payer])).to.equal(10_000n);
      expect(await channelState(f, id)).to.deep.equal({ balance: 0n, totalClaimed: 0n });
    });

    it("deposit → hook (during the pull) → escrow.deposit fails; the outer deposit is credited once", async () => {
      const { f, rent, config, id } = await setup();
      await rent.write.approve([f.permitCollector.address, 1_000n], { account: f.payer.account });
      const outer = await allowanceCollectorData(f, f.payer, id, 500n);
      const inner = await allowanceCollectorData(f, f.payer, id, 500n);
      await rent.write.setHook([
        f.escrow.address,
        encodeFunctionData({
          abi: f.escrow.abi,
          functionName: "deposit",
          args: [config, 500n, f.permitCollector.address, inner],
        }),
      ]);
      const count = await rent.read.hookCallCount();
      const r = await send(f, f.escrow.write.deposit([config, 500n, f.permitCollector.address, outer], { account: f.relayer.account }));
      await expectHookBlocked(rent, count);
      expectEvents(r, f.escrow, "Deposited", [
        { channelId: id, sender: f.relayer.account.address, amount: 500n, newBalance: 1_500n },
      ]);
      expect(await rent.read.balanceOf([f.escrow.address])).to.equal(1_500n);
      expect(await rent.read.allowance([f.payer.account.address, f.permitCollector.address])).to.equal(500n);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("signatures do not travel", () => {
    it("a voucher of one channel is rejected on another channel (different salt)", async () => {
      const f = await loadEscrow();
      const A = makeConfig(f, { salt: salt(1) });
      const B = makeConfig(f, { salt: salt(2) });
      await depositGasless(f, A, 1_000n);
      await depositGasless(f, B, 1_000n);
      const idA = computeChannelId(f.domain, A);
      const idB = computeChannelId(f.domain, B);
      const sigA = await signVoucher(f.sessionKey, f.domain, idA, 500n);
      await expectRevert(
        f.escrow.write.claim([[{ voucher: { channel: B, maxClaimableAmount: 500n }, signature: sigA, totalClaimed: 500n }]], {
          account: f.receiver.account,
        }),
        "BatchSettlementInvalidVoucherSignature",
        [idB, f.sessionKey.address],
      );
      await send(f, f.escrow.write.claim([[{ voucher: { channel: A, maxClaimableAmount: 500n }, signature: sigA, totalClaimed: 500n }]], {
        account: f.receiver.account,
      }));
      expect((await channelState(f, idA)).totalClaimed).to.equal(500n);
      expect((await channelState(f, idB)).totalClaimed).to.equal(0n);
    });

    it("a voucher signed for another chain id, or for the canonical x402 address, is rejected", async () => {
      const f = await loadEscrow();
      const config = makeConfig(f);
      await depositGasless(f, config, 1_000n);
      const id = computeChannelId(f.domain, config);
      for (const domain of [
        escrowDomain(1, f.escrow.address),
        escrowDomain(8453, f.escrow.address),
        escrowDomain(f.chainId, CANONICAL_ADDRESSES.batchSettlement),
      ]) {
        // The signer even uses the id this escrow computes: only the domain differs.
        const signature = await signVoucher(f.sessionKey, domain, id, 500n);
        await expectRevert(
          f.escrow.write.claim([[{ voucher: { channel: config, maxClaimableAmount: 500n }, signature, totalClaimed: 500n }]], {
            account: f.receiver.account,
          }),
          "BatchSettlementInvalidVoucherSignature",
          [id, f.sessionKey.address],
        );
      }
    });

    it("vouchers, claim batches and refunds signed for one escrow are rejected by a second escrow", async () => {
      const f = await loadEscrow();
      const escrow2 = await hre.viem.deployContract("BatchSettlement");
      const collector2 = await hre.viem.deployContract("ERC3009DepositCollector", [escrow2.address]);
      const domain2 = escrowDomain(f.chainId, escrow2.address);
      const config = makeConfig(f);
      const id1 = computeChannelId(f.domain, config);
      const id2 = computeChannelId(domain2, config);
      expect(id2).to.not.equal(id1);
      expect(await escrow2.read.getChannelId([config])).to.equal(id2);

      // Same config funded on both escrows.
      await depositGasless(f, config, 1_000n);
      const { data } = await erc3009Data({
        signer: f.payer,
        from: f.payer.account.address,
        chainId: f.chainId,
        token: f.usdc.address,
        collector: collector2.address,
        channelId: id2,
        amount: 1_000n,
      });
      await send(f, escrow2.write.deposit([config, 1_000n, collector2.address, data], { account: f.relayer.account }));

      // Voucher for escrow 1.
      const row = await claimRow(f, config, 600n);
      await expectRevert(
        escrow2.write.claim([[row]], { account: f.receiver.account }),
        "BatchSettlementInvalidVoucherSignature",
        [id2, f.sessionKey.address],
      );
      // Claim-batch signature for escrow 1 (over rows carrying an escrow-2-valid voucher).
      const row2 = { ...row, signature: await signVoucher(f.sessionKey, domain2, id2, 600n) };
      const batchSig1 = await signClaimBatch(f.receiverAuthorizer, f.domain, [row2]);
      await expectRevert(
        escrow2.write.claimWithSignature([[row2], batchSig1], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [f.receiverAuthorizer.account.address, claimBatchDigest(domain2, [row2])],
      );
      // Refund signature for escrow 1 (same nonce 0 on both).
      const refundSig1 = await signRefund(f.receiverAuthorizer, f.domain, id1, 0n, 300n);
      await expectRevert(
        escrow2.write.refundWithSignature([config, 300n, 0n, refundSig1], { account: f.relayer.account }),
        "BatchSettlementInvalidAuthorizerSignature",
        [f.receiverAuthorizer.account.address, refundDigest(domain2, id2, 0n, 300n)],
      );
      // The escrow-2 signatures work on escrow 2 and leave escrow 1 untouched.
      await send(f, escrow2.write.claimWithSignature([[row2], await signClaimBatch(f.receiverAuthorizer, domain2, [row2])], {
        account: f.relayer.account,
      }));
      const [, claimed2] = await escrow2.read.channels([id2]);
      expect(claimed2).to.equal(600n);
      expect((await channelState(f, id1)).totalClaimed).to.equal(0n);
      expect(getAddress(await collector2.read.ESCROW())).to.equal(getAddress(escrow2.address));
    });
  });
});
