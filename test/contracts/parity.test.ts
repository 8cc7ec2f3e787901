import { expect } from "chai";
import hre from "hardhat";
import * as abis from "../../node/chain/abi";
import { keccak256, pad, toHex, getAddress } from "viem";
import * as x402evm from "@x402/evm";
// The subpath ships ESM-style typings only; load it with require and type the one function used.
const { computeChannelId: x402ComputeChannelId } = require("@x402/evm/batch-settlement/client") as {
  computeChannelId: (config: unknown, chainId: number) => string;
};
import {
  BATCH_SETTLEMENT_DOMAIN,
  CANONICAL_ADDRESSES,
  CHANNEL_CONFIG_TYPEHASH,
  CLAIM_BATCH_TYPEHASH,
  CLAIM_ENTRY_TYPEHASH,
  REFUND_TYPEHASH,
  VOUCHER_TYPEHASH,
  claimBatchDigest,
  claimBatchTypes,
  computeChannelId,
  escrowDomain,
  refundDigest,
  voucherDigest,
  voucherTypes,
  refundTypes,
  channelConfigTypes,
} from "../../node/protocol/typedData";
import { claimRow, loadEscrow, makeConfig } from "../helpers/fixture";

describe("parity: node/protocol typed data == escrow digests == @x402/evm constants", () => {
  it("node/chain/abi.ts is the compiled contracts' ABI (regenerate it with scripts/gen-abi.js after an interface change)", async () => {
    for (const [name, contract] of [["batchSettlementAbi", "BatchSettlement"], ["erc3009DepositCollectorAbi", "ERC3009DepositCollector"], ["permitDepositCollectorAbi", "PermitDepositCollector"]] as const) {
      const { abi } = await hre.artifacts.readArtifact(contract);
      expect(JSON.parse(JSON.stringify(abis[name])), name).to.deep.equal(abi);
    }
  });

  it("type hashes equal the contract's constants", async () => {
    const f = await loadEscrow();
    expect(await f.escrow.read.CHANNEL_CONFIG_TYPEHASH()).to.equal(CHANNEL_CONFIG_TYPEHASH);
    expect(await f.escrow.read.VOUCHER_TYPEHASH()).to.equal(VOUCHER_TYPEHASH);
    expect(await f.escrow.read.REFUND_TYPEHASH()).to.equal(REFUND_TYPEHASH);
    expect(await f.escrow.read.CLAIM_ENTRY_TYPEHASH()).to.equal(CLAIM_ENTRY_TYPEHASH);
    expect(await f.escrow.read.CLAIM_BATCH_TYPEHASH()).to.equal(CLAIM_BATCH_TYPEHASH);
  });

  it("the EIP-712 domain is the escrow's (eip712Domain)", async () => {
    const f = await loadEscrow();
    const [, name, version, chainId, verifyingContract] = await f.escrow.read.eip712Domain();
    expect(name).to.equal(BATCH_SETTLEMENT_DOMAIN.name);
    expect(version).to.equal(BATCH_SETTLEMENT_DOMAIN.version);
    expect(Number(chainId)).to.equal(f.chainId);
    expect(getAddress(verifyingContract)).to.equal(getAddress(f.escrow.address));
  });

  it("getChannelId / getVoucherDigest / getRefundDigest match for 50 random inputs", async () => {
    const f = await loadEscrow();
    for (let i = 0; i < 50; i++) {
      const rnd = (k: string) => keccak256(toHex(`${k}-${i}`));
      const config = makeConfig(f, {
        payer: getAddress(rnd("payer").slice(0, 42)),
        payerAuthorizer: i % 3 === 0 ? "0x0000000000000000000000000000000000000000" : getAddress(rnd("pa").slice(0, 42)),
        receiver: getAddress(rnd("r").slice(0, 42)),
        receiverAuthorizer: getAddress(rnd("ra").slice(0, 42)),
        token: getAddress(rnd("t").slice(0, 42)),
        withdrawDelay: 900 + i * 7919,
        salt: rnd("salt"),
      });
      const id = computeChannelId(f.domain, config);
      expect(await f.escrow.read.getChannelId([config])).to.equal(id);
      const amount = BigInt(rnd("amt")) >> 128n;
      expect(await f.escrow.read.getVoucherDigest([id, amount])).to.equal(voucherDigest(f.domain, id, amount));
      const nonce = BigInt(rnd("nonce"));
      expect(await f.escrow.read.getRefundDigest([id, nonce, amount])).to.equal(refundDigest(f.domain, id, nonce, amount));
    }
  });

  it("getClaimBatchDigest matches for batches of 0, 1 and 7 rows", async () => {
    const f = await loadEscrow();
    for (const n of [0, 1, 7]) {
      const rows = [];
      for (let i = 0; i < n; i++) {
        rows.push(await claimRow(f, makeConfig(f, { salt: pad(toHex(i), { size: 32 }) }), 1000n + BigInt(i), 10n * BigInt(i)));
      }
      expect(await f.escrow.read.getClaimBatchDigest([rows])).to.equal(claimBatchDigest(f.domain, rows));
    }
  });

  it("matches the published @x402/evm constants and channel ids", async () => {
    const f = await loadEscrow();
    expect(x402evm.BATCH_SETTLEMENT_DOMAIN).to.deep.equal(BATCH_SETTLEMENT_DOMAIN);
    expect(x402evm.BATCH_SETTLEMENT_ADDRESS).to.equal(CANONICAL_ADDRESSES.batchSettlement);
    expect(x402evm.ERC3009_DEPOSIT_COLLECTOR_ADDRESS).to.equal(CANONICAL_ADDRESSES.erc3009DepositCollector);
    expect(x402evm.claimBatchTypes).to.deep.equal(claimBatchTypes);
    expect(x402evm.BATCH_SETTLEMENT_SCHEME).to.equal("batch-settlement");
    // @x402/evm computes ids against the canonical address: same result as ours for that domain.
    const config = makeConfig(f);
    const canonical = escrowDomain(f.chainId, CANONICAL_ADDRESSES.batchSettlement);
    expect(x402ComputeChannelId(config, f.chainId)).to.equal(computeChannelId(canonical, config));
    // voucher / refund / channel-config field lists are the published ones
    expect(JSON.stringify(voucherTypes.Voucher)).to.equal(JSON.stringify([{ name: "channelId", type: "bytes32" }, { name: "maxClaimableAmount", type: "uint128" }]));
    expect(refundTypes.Refund.map((x) => x.type)).to.deep.equal(["bytes32", "uint256", "uint128"]);
    expect(channelConfigTypes.ChannelConfig.length).to.equal(7);
  });
});
