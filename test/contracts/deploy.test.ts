/**
 * node/chain/deploy.ts on the in-process Hardhat network: canonical placement (escrow and ERC-3009 collector at
 * the x402 addresses, Multicall3), a gasless deposit and a claim through the placed contracts, and the
 * deployments/<chainId>.json round trip.
 *
 * hardhat_setCode at the canonical addresses would outlive this file on the shared in-process chain, so the
 * whole suite runs between evm_snapshot (before) and evm_revert (after).
 */
import { erc3009DepositNonce } from "../../node/protocol/collectorData";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import hre from "hardhat";
import { expect } from "chai";
import {
  type Hex,
  encodeAbiParameters,
  getAddress,
  keccak256,
  pad,
  parseEventLogs,
  toHex,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";
import {
  CANONICAL_ADDRESSES,
  type ChannelConfig,
  computeChannelId,
  escrowDomain,
  receiveWithAuthorizationTypes,
  voucherTypes,
} from "../../node/protocol/typedData";
import {
  type Deployment,
  DeploymentNotFoundError,
  InvalidDeployOptionError,
  InvalidDeploymentFileError,
  MULTICALL3_ADDRESS,
  deployTollway,
  readDeployment,
  writeDeployment,
} from "../../node/chain/deploy";
import { ArtifactNotFoundError, ChainSetupError, loadArtifact } from "../../node/chain/artifacts";

const MINTED = 1_000_000_000n;

describe("deployTollway: canonical placement on the in-process chain", function () {
  let snapshotId: Hex;
  let deployment: Deployment;
  let codeBefore: (Hex | undefined)[];
  const placed = [CANONICAL_ADDRESSES.batchSettlement, CANONICAL_ADDRESSES.erc3009DepositCollector, MULTICALL3_ADDRESS];

  async function setup() {
    const publicClient = await hre.viem.getPublicClient();
    const [deployer, payer, receiver, receiverAuthorizer, relayer] = await hre.viem.getWalletClients();
    const escrow = await hre.viem.getContractAt("BatchSettlement", deployment.escrow);
    const collector = await hre.viem.getContractAt("ERC3009DepositCollector", deployment.erc3009Collector);
    const permitCollector = await hre.viem.getContractAt("PermitDepositCollector", deployment.permitCollector);
    const usdc = await hre.viem.getContractAt("TestUSDC", deployment.token!);
    return { publicClient, deployer, payer, receiver, receiverAuthorizer, relayer, escrow, collector, permitCollector, usdc };
  }

  before(async function () {
    const testClient = await hre.viem.getTestClient();
    const publicClient = await hre.viem.getPublicClient();
    codeBefore = await Promise.all(placed.map((address) => publicClient.getCode({ address })));
    snapshotId = await testClient.snapshot();
    const [deployer, payer] = await hre.viem.getWalletClients();
    deployment = await deployTollway({
      walletClient: deployer,
      publicClient,
      canonical: true,
      deployTestToken: true,
      mintTestToken: { to: [payer.account.address], amount: MINTED },
    });
  });

  after(async function () {
    const testClient = await hre.viem.getTestClient();
    await testClient.revert({ id: snapshotId });
    // The placed code must not leak into later test files.
    const publicClient = await hre.viem.getPublicClient();
    const codeAfter = await Promise.all(placed.map((address) => publicClient.getCode({ address })));
    expect(codeAfter).to.deep.equal(codeBefore);
  });

  it("places the escrow and the ERC-3009 collector at the canonical addresses, wired to the canonical escrow", async function () {
    const { publicClient, collector, permitCollector, deployer } = await setup();
    expect(deployment.canonical).to.equal(true);
    expect(deployment.chainId).to.equal(31337);
    expect(deployment.escrow).to.equal(getAddress(CANONICAL_ADDRESSES.batchSettlement));
    expect(deployment.erc3009Collector).to.equal(getAddress(CANONICAL_ADDRESSES.erc3009DepositCollector));
    expect(deployment.deployer).to.equal(getAddress(deployer.account.address));
    for (const address of [deployment.escrow, deployment.erc3009Collector, deployment.permitCollector, deployment.token!]) {
      const code = await publicClient.getCode({ address });
      expect(code, address).to.match(/^0x[0-9a-f]{200,}$/);
    }
    // The permit collector has no canonical slot but must deliver to the canonical escrow.
    expect(deployment.permitCollector).to.not.equal(getAddress(CANONICAL_ADDRESSES.permit2DepositCollector));
    expect(getAddress(await collector.read.ESCROW())).to.equal(deployment.escrow);
    expect(getAddress(await permitCollector.read.ESCROW())).to.equal(deployment.escrow);
    const block = await publicClient.getBlock({ blockNumber: deployment.blockNumber });
    expect(deployment.deployedAt).to.equal(Number(block.timestamp));
  });

  it("installs Multicall3, usable by viem's multicall", async function () {
    const { publicClient, escrow, usdc } = await setup();
    expect(deployment.multicall3).to.equal(MULTICALL3_ADDRESS);
    const [typehash, decimals] = await publicClient.multicall({
      multicallAddress: MULTICALL3_ADDRESS,
      allowFailure: false,
      contracts: [
        { address: escrow.address, abi: escrow.abi, functionName: "VOUCHER_TYPEHASH" },
        { address: usdc.address, abi: usdc.abi, functionName: "decimals" },
      ],
    });
    expect(typehash).to.equal(keccak256(toHex("Voucher(bytes32 channelId,uint128 maxClaimableAmount)")));
    expect(decimals).to.equal(6);
  });

  it("the canonical escrow's EIP-712 domain and getChannelId use the canonical address", async function () {
    const { escrow, payer, receiver, receiverAuthorizer } = await setup();
    const [, , , chainId, verifyingContract] = await escrow.read.eip712Domain();
    expect(Number(chainId)).to.equal(31337);
    expect(getAddress(verifyingContract)).to.equal(getAddress(CANONICAL_ADDRESSES.batchSettlement));

    const config: ChannelConfig = {
      payer: payer.account.address,
      payerAuthorizer: privateKeyToAccount(keccak256(toHex("deploy-test-session"))).address,
      receiver: receiver.account.address,
      receiverAuthorizer: receiverAuthorizer.account.address,
      token: deployment.token!,
      withdrawDelay: 900,
      salt: keccak256(toHex("deploy-test-salt")),
    };
    const domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement);
    expect(await escrow.read.getChannelId([config])).to.equal(computeChannelId(domain, config));
  });

  it("takes an ERC-3009 gasless deposit through the canonical collector, then a claim under the canonical domain", async function () {
    const { publicClient, escrow, usdc, payer, receiver, receiverAuthorizer, relayer } = await setup();
    const sessionKey = privateKeyToAccount(keccak256(toHex("deploy-test-session")));
    const config: ChannelConfig = {
      payer: payer.account.address,
      payerAuthorizer: sessionKey.address,
      receiver: receiver.account.address,
      receiverAuthorizer: receiverAuthorizer.account.address,
      token: usdc.address,
      withdrawDelay: 900,
      salt: pad("0x00", { size: 32 }),
    };
    const domain = escrowDomain(31337, CANONICAL_ADDRESSES.batchSettlement);
    const channelId = computeChannelId(domain, config);
    const amount = 5_000_000n;

    // The payer signs ReceiveWithAuthorization to the canonical collector, as a stock x402 client does.
    const salt = 42n;
    const validBefore = 2n ** 40n;
    const nonce = erc3009DepositNonce(channelId, salt);
    const signature = await payer.signTypedData({
      account: payer.account,
      domain: { name: "USDC", version: "2", chainId: 31337, verifyingContract: usdc.address },
      types: receiveWithAuthorizationTypes,
      primaryType: "ReceiveWithAuthorization",
      message: {
        from: payer.account.address,
        to: CANONICAL_ADDRESSES.erc3009DepositCollector,
        value: amount,
        validAfter: 0n,
        validBefore,
        nonce,
      },
    });
    const collectorData = encodeAbiParameters(
      [{ type: "uint256" }, { type: "uint256" }, { type: "uint256" }, { type: "bytes" }],
      [0n, validBefore, salt, signature],
    );
    const payerEthBefore = await publicClient.getBalance({ address: payer.account.address });
    const hash = await escrow.write.deposit([config, amount, CANONICAL_ADDRESSES.erc3009DepositCollector, collectorData], {
      account: relayer.account,
    });
    const receipt = await publicClient.waitForTransactionReceipt({ hash });
    expect(receipt.status).to.equal("success");
    const [deposited] = parseEventLogs({ abi: escrow.abi, logs: receipt.logs, eventName: "Deposited" });
    expect(deposited.args).to.deep.equal({
      channelId,
      sender: getAddress(relayer.account.address),
      amount,
      newBalance: amount,
    });
    expect(await escrow.read.channels([channelId])).to.deep.equal([amount, 0n]);
    expect(await usdc.read.balanceOf([deployment.escrow])).to.equal(amount);
    expect(await usdc.read.balanceOf([deployment.erc3009Collector])).to.equal(0n);
    expect(await usdc.read.balanceOf([payer.account.address])).to.equal(MINTED - amount);
    expect(await publicClient.getBalance({ address: payer.account.address })).to.equal(payerEthBefore);

    // A voucher signed under the canonical domain is accepted by the canonical escrow.
    const ceiling = 1_250_000n;
    const voucherSignature = await sessionKey.signTypedData({
      domain,
      types: voucherTypes,
      primaryType: "Voucher",
      message: { channelId, maxClaimableAmount: ceiling },
    });
    const claimHash = await escrow.write.claim(
      [[{ voucher: { channel: config, maxClaimableAmount: ceiling }, signature: voucherSignature, totalClaimed: ceiling }]],
      { account: receiver.account },
    );
    expect((await publicClient.waitForTransactionReceipt({ hash: claimHash })).status).to.equal("success");
    expect(await escrow.read.channels([channelId])).to.deep.equal([amount, ceiling]);
  });

  it("writeDeployment / readDeployment round-trip through deployments/<chainId>.json", async function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-deployments-"));
    try {
      const file = writeDeployment(dir, deployment);
      expect(file).to.equal(path.join(dir, "31337.json"));
      const json = JSON.parse(fs.readFileSync(file, "utf8")) as Record<string, unknown>;
      expect(json.blockNumber).to.equal(deployment.blockNumber.toString());
      expect(json.escrow).to.equal(getAddress(CANONICAL_ADDRESSES.batchSettlement));
      expect(readDeployment(dir, 31337)).to.deep.equal(deployment);
      // Writing the same record again keeps no copy; a redeployment keeps the earlier record beside it.
      writeDeployment(dir, deployment);
      expect(fs.readdirSync(dir).sort()).to.deep.equal(["31337.json"]);
      const redeployed = { ...deployment, escrow: getAddress("0x00000000000000000000000000000000000000e5"), blockNumber: deployment.blockNumber + 10n };
      writeDeployment(dir, redeployed);
      expect(fs.readdirSync(dir).sort()).to.deep.equal([`31337.${deployment.blockNumber}.json`, "31337.json"]);
      expect(readDeployment(dir, 31337).escrow).to.equal(redeployed.escrow);
      expect(JSON.parse(fs.readFileSync(path.join(dir, `31337.${deployment.blockNumber}.json`), "utf8")).escrow).to.equal(json.escrow);
      // A previous record that cannot be read is kept as it is, and the new one still written.
      fs.writeFileSync(path.join(dir, "31337.json"), "{ not json");
      writeDeployment(dir, deployment);
      expect(readDeployment(dir, 31337)).to.deep.equal(deployment);
      const kept = fs.readdirSync(dir).filter((f) => /^31337\.previous-\d+\.json$/.test(f));
      expect(kept).to.have.length(1);
      expect(fs.readFileSync(path.join(dir, kept[0]!), "utf8")).to.equal("{ not json");

      expect(() => readDeployment(dir, 1)).to.throw(DeploymentNotFoundError).with.property("code", "DEPLOYMENT_NOT_FOUND");
      fs.writeFileSync(path.join(dir, "5.json"), JSON.stringify({ ...json, chainId: 5, escrow: "0x1234" }));
      const err = captureError(() => readDeployment(dir, 5));
      expect(err).to.be.instanceOf(InvalidDeploymentFileError);
      expect((err as InvalidDeploymentFileError).shortMessage).to.equal('Invalid deployment file: "escrow" is not an address.');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("deployTollway: option and artifact errors", function () {
  it("rejects a misspelt option with a hint, before touching the chain", async function () {
    const publicClient = await hre.viem.getPublicClient();
    const [deployer] = await hre.viem.getWalletClients();
    const blockBefore = await publicClient.getBlockNumber();
    const options = { walletClient: deployer, publicClient, canonnical: true } as unknown as Parameters<typeof deployTollway>[0];
    const err = await deployTollway(options).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(InvalidDeployOptionError);
    const e = err as InvalidDeployOptionError;
    expect(e.code).to.equal("INVALID_DEPLOY_OPTION");
    expect(e.option).to.equal("canonnical");
    expect(e.shortMessage).to.equal('deployTollway: unknown option "canonnical".');
    expect(e.metaMessages).to.deep.equal(['Did you mean "canonical"?']);
    expect(await publicClient.getBlockNumber()).to.equal(blockBefore);
  });

  it("loadArtifact explains a missing compile", function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-artifacts-"));
    try {
      const err = captureError(() => loadArtifact("BatchSettlement", { artifactsDir: dir }));
      expect(err).to.be.instanceOf(ArtifactNotFoundError);
      expect(err).to.be.instanceOf(ChainSetupError);
      const e = err as ArtifactNotFoundError;
      expect(e.code).to.equal("ARTIFACT_NOT_FOUND");
      expect(e.shortMessage).to.equal("No compiled artifact for BatchSettlement: run `npx hardhat compile`.");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("loadArtifact reads the compiled contracts", function () {
    for (const name of ["BatchSettlement", "ERC3009DepositCollector", "PermitDepositCollector", "TestUSDC"] as const) {
      const { abi, bytecode } = loadArtifact(name);
      expect(abi.length, name).to.be.greaterThan(0);
      expect(bytecode, name).to.match(/^0x[0-9a-f]+$/);
    }
  });
});

function captureError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error("expected an error");
}
