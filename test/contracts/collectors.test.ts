/**
 * Deposit collectors: ERC3009DepositCollector (gasless ReceiveWithAuthorization bound to one channel) and
 * PermitDepositCollector (EIP-2612 permit or prior approve, plus the payer's channel-bound DepositAuthorization).
 */
import hre from "hardhat";
import { expect } from "chai";
import { time } from "@nomicfoundation/hardhat-network-helpers";
import { type Hex, encodeFunctionData, pad, toHex, zeroAddress } from "viem";
import { type ChannelConfig, computeChannelId } from "../../node/protocol/typedData";
import { type Fixture, loadEscrow, makeConfig } from "../helpers/fixture";
import {
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

const FAR = 2n ** 40n;
const salt = (n: number): Hex => pad(toHex(n), { size: 32 });

function channel(f: Fixture, overrides: Partial<ChannelConfig> = {}) {
  const config = makeConfig(f, overrides);
  return { config, id: computeChannelId(f.domain, config) };
}

async function ethOf(f: Fixture, who: Hex) {
  return f.publicClient.getBalance({ address: who });
}

/** ERC-3009 collectorData signed by the fixture payer for `channelId` (defaults: the fixture token/collector). */
function sign3009(
  f: Fixture,
  channelId: Hex,
  amount: bigint,
  opts: { salt?: bigint; validAfter?: bigint; validBefore?: bigint; signer?: Fixture["payer"]; from?: Hex } = {},
) {
  return erc3009Data({
    signer: opts.signer ?? f.payer,
    from: opts.from ?? f.payer.account.address,
    chainId: f.chainId,
    token: f.usdc.address,
    collector: f.erc3009Collector.address,
    channelId,
    amount,
    salt: opts.salt,
    validAfter: opts.validAfter,
    validBefore: opts.validBefore,
  });
}

/** PermitDepositCollector collectorData: the payer's DepositAuthorization, optionally with an EIP-2612 permit. */
async function permitData(
  f: Fixture,
  channelId: Hex,
  amount: bigint,
  opts: {
    signer?: Fixture["payer"];
    nonce?: Hex;
    deadline?: bigint;
    permit?: { deadline: bigint; v: number; r: Hex; s: Hex };
  } = {},
) {
  const nonce = opts.nonce ?? randomBytes32("auth");
  const deadline = opts.deadline ?? FAR;
  const authorization = await signDepositAuthorization({
    signer: opts.signer ?? f.payer,
    chainId: f.chainId,
    collector: f.permitCollector.address,
    channelId,
    amount,
    nonce,
    deadline,
  });
  return { data: encodePermitDepositData({ nonce, deadline, authorization, permit: opts.permit }), nonce, deadline };
}

/** The fixture payer's EIP-2612 permit of `amount` to the permit collector (TestUSDC domain "USDC"/"2"). */
async function usdcPermit(f: Fixture, amount: bigint, owner = f.payer.account.address, signer = f.payer, deadline = FAR) {
  const nonce = await f.usdc.read.nonces([owner]);
  const p = await signPermit({
    signer,
    chainId: f.chainId,
    token: f.usdc.address,
    tokenName: "USDC",
    tokenVersion: "2",
    owner,
    spender: f.permitCollector.address,
    value: amount,
    nonce,
    deadline,
  });
  return { ...p, deadline };
}

describe("deposit collectors", () => {
  // ---------------------------------------------------------------------------------------------
  describe("DepositCollector base", () => {
    it("records the escrow and refuses a zero escrow at construction (DepositCollectorZeroEscrow)", async () => {
      const f = await loadEscrow();
      expect((await f.erc3009Collector.read.ESCROW()).toLowerCase()).to.equal(f.escrow.address.toLowerCase());
      expect((await f.permitCollector.read.ESCROW()).toLowerCase()).to.equal(f.escrow.address.toLowerCase());
      await expectRevert(hre.viem.deployContract("ERC3009DepositCollector", [zeroAddress]), "DepositCollectorZeroEscrow", []);
      await expectRevert(hre.viem.deployContract("PermitDepositCollector", [zeroAddress]), "DepositCollectorZeroEscrow", []);
    });

    it("only the escrow may call collect (DepositCollectorOnlyEscrow), even with a valid payer authorization", async () => {
      const f = await loadEscrow();
      const { id } = channel(f);
      const payer = f.payer.account.address;
      const { data: d3009 } = await sign3009(f, id, 100n);
      for (const w of [f.other, f.payer]) {
        await expectRevert(
          f.erc3009Collector.write.collect([payer, f.usdc.address, 100n, id, d3009], { account: w.account }),
          "DepositCollectorOnlyEscrow",
          [w.account.address, f.escrow.address],
        );
      }
      await f.usdc.write.approve([f.permitCollector.address, 100n], { account: f.payer.account });
      const { data: dPermit } = await permitData(f, id, 100n);
      await expectRevert(
        f.permitCollector.write.collect([payer, f.usdc.address, 100n, id, dPermit], { account: f.other.account }),
        "DepositCollectorOnlyEscrow",
        [f.other.account.address, f.escrow.address],
      );
      expect(await f.usdc.read.balanceOf([payer])).to.equal(1_000_000_000n);
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("ERC3009DepositCollector", () => {
    it("a third party relays the deposit; the payer spends no gas and the tokens pass through to the escrow", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      const relayer = f.relayer.account.address;
      const payerEth = await ethOf(f, payer);
      const relayerEth = await ethOf(f, relayer);
      const { data, nonce } = await sign3009(f, id, 2_500n, { salt: 42n });
      expect(await f.usdc.read.authorizationState([payer, nonce])).to.equal(false);

      const r = await send(
        f,
        f.escrow.write.deposit([config, 2_500n, f.erc3009Collector.address, data], { account: f.relayer.account }),
      );
      expect(await ethOf(f, payer)).to.equal(payerEth);
      expect((await ethOf(f, relayer)) < relayerEth, "the relayer paid the gas").to.equal(true);
      expect(await f.usdc.read.authorizationState([payer, nonce])).to.equal(true);
      expectEvents(r, f.usdc, "AuthorizationUsed", [{ authorizer: payer, nonce }]);
      expectEvents(r, f.usdc, "Transfer", [
        { from: payer, to: f.erc3009Collector.address, value: 2_500n },
        { from: f.erc3009Collector.address, to: f.escrow.address, value: 2_500n },
      ]);
      expectEvents(r, f.escrow, "Deposited", [{ channelId: id, sender: relayer, amount: 2_500n, newBalance: 2_500n }]);
      expect(await f.usdc.read.balanceOf([f.erc3009Collector.address])).to.equal(0n);
      expect(await f.usdc.read.balanceOf([f.escrow.address])).to.equal(2_500n);
      expect(await f.usdc.read.balanceOf([payer])).to.equal(1_000_000_000n - 2_500n);
    });

    it("the authorization nonce binds the channel: channel A's authorization fails on channel B", async () => {
      const f = await loadEscrow();
      const A = channel(f, { salt: salt(1) });
      const B = channel(f, { salt: salt(2) });
      const { data } = await sign3009(f, A.id, 1_000n);
      await expectRevert(
        f.escrow.write.deposit([B.config, 1_000n, f.erc3009Collector.address, data], { account: f.relayer.account }),
        "InvalidAuthorizationSignature",
        [f.payer.account.address],
      );
      // A relayer cannot redirect it to another receiver either (other config => other channel id).
      const C = channel(f, { salt: salt(1), receiver: f.other.account.address });
      await expectRevert(
        f.escrow.write.deposit([C.config, 1_000n, f.erc3009Collector.address, data], { account: f.relayer.account }),
        "InvalidAuthorizationSignature",
        [f.payer.account.address],
      );
      // Still unused: it works on its own channel.
      await send(f, f.escrow.write.deposit([A.config, 1_000n, f.erc3009Collector.address, data], { account: f.relayer.account }));
      const [balA] = await f.escrow.read.channels([A.id]);
      const [balB] = await f.escrow.read.channels([B.id]);
      expect([balA, balB]).to.deep.equal([1_000n, 0n]);
    });

    it("the authorization binds the amount", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const { data } = await sign3009(f, id, 1_000n);
      await expectRevert(
        f.escrow.write.deposit([config, 1_001n, f.erc3009Collector.address, data], { account: f.relayer.account }),
        "InvalidAuthorizationSignature",
        [f.payer.account.address],
      );
    });

    it("a replayed authorization fails with AuthorizationAlreadyUsed", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const { data, nonce } = await sign3009(f, id, 300n, { salt: 7n });
      await send(f, f.escrow.write.deposit([config, 300n, f.erc3009Collector.address, data], { account: f.relayer.account }));
      await expectRevert(
        f.escrow.write.deposit([config, 300n, f.erc3009Collector.address, data], { account: f.other.account }),
        "AuthorizationAlreadyUsed",
        [f.payer.account.address, nonce],
      );
      const [balance] = await f.escrow.read.channels([id]);
      expect(balance).to.equal(300n);
    });

    it("an expired authorization fails (validBefore is exclusive), one valid until the next second succeeds", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const t = (await time.latest()) + 100;
      const expired = await sign3009(f, id, 10n, { validBefore: BigInt(t) });
      await time.setNextBlockTimestamp(t);
      await expectRevert(
        f.escrow.write.deposit([config, 10n, f.erc3009Collector.address, expired.data], { account: f.relayer.account }),
        "AuthorizationExpired",
        [BigInt(t), BigInt(t)],
      );
      const t2 = (await time.latest()) + 10;
      const justInTime = await sign3009(f, id, 10n, { validBefore: BigInt(t2 + 1) });
      await time.setNextBlockTimestamp(t2);
      await send(f, f.escrow.write.deposit([config, 10n, f.erc3009Collector.address, justInTime.data], { account: f.relayer.account }));
    });

    it("a not-yet-valid authorization fails (validAfter is exclusive)", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const t = (await time.latest()) + 100;
      const early = await sign3009(f, id, 10n, { validAfter: BigInt(t) });
      await time.setNextBlockTimestamp(t);
      await expectRevert(
        f.escrow.write.deposit([config, 10n, f.erc3009Collector.address, early.data], { account: f.relayer.account }),
        "AuthorizationNotYetValid",
        [BigInt(t), BigInt(t)],
      );
      await time.setNextBlockTimestamp(t + 1);
      await send(f, f.escrow.write.deposit([config, 10n, f.erc3009Collector.address, early.data], { account: f.relayer.account }));
    });

    it("an authorization signed by someone other than the payer fails", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const { data } = await sign3009(f, id, 10n, { signer: f.payer2 });
      await expectRevert(
        f.escrow.write.deposit([config, 10n, f.erc3009Collector.address, data], { account: f.relayer.account }),
        "InvalidAuthorizationSignature",
        [f.payer.account.address],
      );
    });
  });

  // ---------------------------------------------------------------------------------------------
  describe("PermitDepositCollector", () => {
    it("EIP-2612 permit in the same call: gasless for the payer, allowance fully consumed", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      const payerEth = await ethOf(f, payer);
      const permit = await usdcPermit(f, 800n);
      const { data, nonce } = await permitData(f, id, 800n, { permit });

      const r = await send(f, f.escrow.write.deposit([config, 800n, f.permitCollector.address, data], { account: f.relayer.account }));
      expect(await ethOf(f, payer)).to.equal(payerEth);
      expect(await f.usdc.read.nonces([payer])).to.equal(1n);
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(0n);
      expect(await f.permitCollector.read.authorizationUsed([payer, nonce])).to.equal(true);
      expectEvents(r, f.usdc, "Transfer", [{ from: payer, to: f.escrow.address, value: 800n }]);
      expectEvents(r, f.escrow, "ChannelCreated", [{ channelId: id, config }]);
      expectEvents(r, f.escrow, "Deposited", [
        { channelId: id, sender: f.relayer.account.address, amount: 800n, newBalance: 800n },
      ]);
      expect(await f.usdc.read.balanceOf([f.escrow.address])).to.equal(800n);
    });

    it("a permit is not used when the allowance already covers the deposit: a larger approval other deposits count on is not overwritten", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      await f.usdc.write.approve([f.permitCollector.address, 1_000n], { account: f.payer.account });
      const permit = await usdcPermit(f, 300n);
      const { data } = await permitData(f, id, 300n, { permit });
      await send(f, f.escrow.write.deposit([config, 300n, f.permitCollector.address, data], { account: f.relayer.account }));
      // 1,000 - 300, not the permit's 300 - 300: the payer's other authorized deposits still go through.
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(700n);
      expect(await f.usdc.read.nonces([payer])).to.equal(0n); // the permit was not spent
      const { data: second } = await permitData(f, id, 700n);
      await send(f, f.escrow.write.deposit([config, 700n, f.permitCollector.address, second], { account: f.relayer.account }));
      const [balance] = await f.escrow.read.channels([id]);
      expect(balance).to.equal(1_000n);
    });

    it("a plain approve then deposit spends only the deposited amount of the allowance", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      await f.usdc.write.approve([f.permitCollector.address, 1_000n], { account: f.payer.account });
      const { data } = await permitData(f, id, 600n);
      await send(f, f.escrow.write.deposit([config, 600n, f.permitCollector.address, data], { account: f.payer.account }));
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(400n);
      const [balance] = await f.escrow.read.channels([id]);
      expect(balance).to.equal(600n);
    });

    it("works with a token whose approve/transfer return nothing (NoReturnToken), through deposit, settle and refund", async () => {
      const f = await loadEscrow();
      const nrt = await hre.viem.deployContract("NoReturnToken");
      const payer = f.payer.account.address;
      const receiver = f.receiver.account.address;
      await nrt.write.mint([payer, 10_000n]);
      await nrt.write.approve([f.permitCollector.address, 5_000n], { account: f.payer.account });
      const { config, id } = channel(f, { token: nrt.address });
      const { data } = await permitData(f, id, 5_000n);
      await send(f, f.escrow.write.deposit([config, 5_000n, f.permitCollector.address, data], { account: f.relayer.account }));
      expect(await nrt.read.balanceOf([f.escrow.address])).to.equal(5_000n);
      expect(await nrt.read.allowance([payer, f.permitCollector.address])).to.equal(0n);

      const voucher = await f.sessionKey.signTypedData({
        domain: f.domain,
        types: { Voucher: [{ name: "channelId", type: "bytes32" }, { name: "maxClaimableAmount", type: "uint128" }] },
        primaryType: "Voucher",
        message: { channelId: id, maxClaimableAmount: 1_000n },
      });
      await send(f, f.escrow.write.claim([[{ voucher: { channel: config, maxClaimableAmount: 1_000n }, signature: voucher, totalClaimed: 1_000n }]], {
        account: f.receiver.account,
      }));
      await send(f, f.escrow.write.settle([receiver, nrt.address], { account: f.other.account }));
      await send(f, f.escrow.write.refund([config, 4_000n], { account: f.receiver.account }));
      expect(await nrt.read.balanceOf([receiver])).to.equal(1_000n);
      expect(await nrt.read.balanceOf([payer])).to.equal(10_000n - 1_000n);
      expect(await nrt.read.balanceOf([f.escrow.address])).to.equal(0n);
    });

    it("an ERC-1271 wallet payer: approve via wallet.execute, authorization signed by the owner", async () => {
      const f = await loadEscrow();
      const owner = f.other;
      const wallet = await hre.viem.deployContract("TestERC1271Wallet", [owner.account.address]);
      await f.usdc.write.mint([wallet.address, 5_000n]);
      const approve = encodeFunctionData({ abi: f.usdc.abi, functionName: "approve", args: [f.permitCollector.address, 2_000n] });
      await expectRevert(wallet.write.execute([f.usdc.address, 0n, approve], { account: f.payer.account }), "NotOwner", [
        f.payer.account.address,
      ]);
      await send(f, wallet.write.execute([f.usdc.address, 0n, approve], { account: owner.account }));
      const { config, id } = channel(f, { payer: wallet.address });

      const byStranger = await permitData(f, id, 2_000n, { signer: f.payer2 });
      await expectRevert(
        f.escrow.write.deposit([config, 2_000n, f.permitCollector.address, byStranger.data], { account: f.relayer.account }),
        "PermitDepositCollectorInvalidSignature",
        [wallet.address, await f.permitCollector.read.getDepositAuthorizationDigest([id, 2_000n, byStranger.nonce, FAR])],
      );
      const { data } = await permitData(f, id, 2_000n, { signer: owner });
      await send(f, f.escrow.write.deposit([config, 2_000n, f.permitCollector.address, data], { account: f.relayer.account }));
      expect(await f.usdc.read.balanceOf([wallet.address])).to.equal(3_000n);
      const [balance] = await f.escrow.read.channels([id]);
      expect(balance).to.equal(2_000n);
    });

    it("an ERC-1271 wallet payer can also deposit gaslessly with an EIP-2612 permit signed by its owner", async () => {
      const f = await loadEscrow();
      const owner = f.other;
      const wallet = await hre.viem.deployContract("TestERC1271Wallet", [owner.account.address]);
      await f.usdc.write.mint([wallet.address, 5_000n]);
      const { config, id } = channel(f, { payer: wallet.address });
      const permit = await usdcPermit(f, 1_500n, wallet.address, owner);
      const { data } = await permitData(f, id, 1_500n, { signer: owner, permit });
      await send(f, f.escrow.write.deposit([config, 1_500n, f.permitCollector.address, data], { account: f.relayer.account }));
      expect(await f.usdc.read.nonces([wallet.address])).to.equal(1n);
      expect(await f.usdc.read.balanceOf([f.escrow.address])).to.equal(1_500n);
    });

    it("rejects an authorization by the wrong signer, for another channel or another amount", async () => {
      const f = await loadEscrow();
      const A = channel(f, { salt: salt(1) });
      const B = channel(f, { salt: salt(2) });
      const payer = f.payer.account.address;
      await f.usdc.write.approve([f.permitCollector.address, 10_000n], { account: f.payer.account });
      const digest = (id: Hex, amount: bigint, nonce: Hex, deadline: bigint) =>
        f.permitCollector.read.getDepositAuthorizationDigest([id, amount, nonce, deadline]);

      const wrongSigner = await permitData(f, A.id, 500n, { signer: f.payer2 });
      await expectRevert(
        f.escrow.write.deposit([A.config, 500n, f.permitCollector.address, wrongSigner.data], { account: f.relayer.account }),
        "PermitDepositCollectorInvalidSignature",
        [payer, await digest(A.id, 500n, wrongSigner.nonce, FAR)],
      );
      const forA = await permitData(f, A.id, 500n);
      await expectRevert(
        f.escrow.write.deposit([B.config, 500n, f.permitCollector.address, forA.data], { account: f.relayer.account }),
        "PermitDepositCollectorInvalidSignature",
        [payer, await digest(B.id, 500n, forA.nonce, FAR)],
      );
      await expectRevert(
        f.escrow.write.deposit([A.config, 501n, f.permitCollector.address, forA.data], { account: f.relayer.account }),
        "PermitDepositCollectorInvalidSignature",
        [payer, await digest(A.id, 501n, forA.nonce, FAR)],
      );
      expect(await f.permitCollector.read.authorizationUsed([payer, forA.nonce])).to.equal(false);
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(10_000n);
    });

    it("rejects a reused authorization nonce (PermitDepositCollectorNonceUsed); another payer may use the same value", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      await f.usdc.write.approve([f.permitCollector.address, 10_000n], { account: f.payer.account });
      const nonce = randomBytes32("reuse");
      const first = await permitData(f, id, 100n, { nonce });
      await send(f, f.escrow.write.deposit([config, 100n, f.permitCollector.address, first.data], { account: f.relayer.account }));
      // Same bytes again, and a fresh signature over another amount with the same nonce.
      const second = await permitData(f, id, 200n, { nonce });
      for (const [data, amount] of [[first.data, 100n], [second.data, 200n]] as const) {
        await expectRevert(
          f.escrow.write.deposit([config, amount, f.permitCollector.address, data], { account: f.relayer.account }),
          "PermitDepositCollectorNonceUsed",
          [payer, nonce],
        );
      }
      const other = channel(f, { payer: f.payer2.account.address });
      await f.usdc.write.approve([f.permitCollector.address, 100n], { account: f.payer2.account });
      const theirs = await permitData(f, other.id, 100n, { nonce, signer: f.payer2 });
      await send(f, f.escrow.write.deposit([other.config, 100n, f.permitCollector.address, theirs.data], { account: f.relayer.account }));
    });

    it("the payer cancels an unused authorization: a deposit with it then fails (PermitDepositCollectorNonceUsed), a second cancel too; only the caller's own nonce is cancelled", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      await f.usdc.write.approve([f.permitCollector.address, 10_000n], { account: f.payer.account });
      const nonce = randomBytes32("cancel");
      const handedOut = await permitData(f, id, 100n, { nonce });
      const r = await send(f, f.permitCollector.write.cancelAuthorization([nonce], { account: f.payer.account }));
      expectEvents(r, f.permitCollector, "DepositAuthorizationCanceled", [{ payer, nonce }]);
      expect(await f.permitCollector.read.authorizationUsed([payer, nonce])).to.equal(true);
      await expectRevert(
        f.escrow.write.deposit([config, 100n, f.permitCollector.address, handedOut.data], { account: f.relayer.account }),
        "PermitDepositCollectorNonceUsed",
        [payer, nonce],
      );
      await expectRevert(f.permitCollector.write.cancelAuthorization([nonce], { account: f.payer.account }), "PermitDepositCollectorNonceUsed", [payer, nonce]);
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(10_000n);
      // Someone else's cancel of the same value is theirs: the payer's other authorization still deposits.
      const other = randomBytes32("cancel-other");
      await send(f, f.permitCollector.write.cancelAuthorization([other], { account: f.payer2.account }));
      const kept = await permitData(f, id, 100n, { nonce: other });
      await send(f, f.escrow.write.deposit([config, 100n, f.permitCollector.address, kept.data], { account: f.relayer.account }));
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(9_900n);
    });

    it("rejects an expired authorization (deadline inclusive)", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      await f.usdc.write.approve([f.permitCollector.address, 10_000n], { account: f.payer.account });
      const t = (await time.latest()) + 100;
      const expired = await permitData(f, id, 100n, { deadline: BigInt(t - 1) });
      await time.setNextBlockTimestamp(t);
      await expectRevert(
        f.escrow.write.deposit([config, 100n, f.permitCollector.address, expired.data], { account: f.relayer.account }),
        "PermitDepositCollectorExpired",
        [BigInt(t - 1), BigInt(t)],
      );
      const t2 = (await time.latest()) + 10;
      const onTime = await permitData(f, id, 100n, { deadline: BigInt(t2) });
      await time.setNextBlockTimestamp(t2);
      await send(f, f.escrow.write.deposit([config, 100n, f.permitCollector.address, onTime.data], { account: f.relayer.account }));
    });

    it("a front-run permit does not block the deposit (the allowance it granted is used)", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      const permit = await usdcPermit(f, 700n);
      // Someone watching the mempool submits the permit first.
      await send(
        f,
        f.usdc.write.permit([payer, f.permitCollector.address, 700n, permit.deadline, permit.v, permit.r, permit.s], {
          account: f.other.account,
        }),
      );
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(700n);
      const { data } = await permitData(f, id, 700n, { permit });
      const r = await send(f, f.escrow.write.deposit([config, 700n, f.permitCollector.address, data], { account: f.relayer.account }));
      expectEvents(r, f.escrow, "Deposited", [
        { channelId: id, sender: f.relayer.account.address, amount: 700n, newBalance: 700n },
      ]);
      // The collector's own permit attempt failed (nonce already used) and was ignored: no Approval in this tx.
      expect(eventsOf(r, f.usdc, "Approval")).to.have.length(0);
      expect(await f.usdc.read.nonces([payer])).to.equal(1n);
      expect(await f.usdc.read.allowance([payer, f.permitCollector.address])).to.equal(0n);
    });

    it("an invalid permit without allowance fails at transferFrom (ERC20InsufficientAllowance), consuming nothing", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      const payer = f.payer.account.address;
      const bogus = await usdcPermit(f, 700n, payer, f.payer2); // not the owner's signature
      const { data, nonce } = await permitData(f, id, 700n, { permit: bogus });
      await expectRevert(
        f.escrow.write.deposit([config, 700n, f.permitCollector.address, data], { account: f.relayer.account }),
        "ERC20InsufficientAllowance",
        [f.permitCollector.address, 0n, 700n],
      );
      expect(await f.permitCollector.read.authorizationUsed([payer, nonce])).to.equal(false);
      expect(await f.usdc.read.nonces([payer])).to.equal(0n);
    });

    it("an expired permit is ignored when an allowance already exists", async () => {
      const f = await loadEscrow();
      const { config, id } = channel(f);
      await f.usdc.write.approve([f.permitCollector.address, 300n], { account: f.payer.account });
      const stale = await usdcPermit(f, 300n, f.payer.account.address, f.payer, 1n);
      const { data } = await permitData(f, id, 300n, { permit: stale });
      await send(f, f.escrow.write.deposit([config, 300n, f.permitCollector.address, data], { account: f.relayer.account }));
      expect(await f.usdc.read.nonces([f.payer.account.address])).to.equal(0n);
      const [balance] = await f.escrow.read.channels([id]);
      expect(balance).to.equal(300n);
    });
  });
});
