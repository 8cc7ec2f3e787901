import { expect } from "chai";
import fc from "fast-check";
import { getAddress, type Address, type Hex } from "viem";
import { createDigester } from "../../node/protocol/fastDigest";
import { computeChannelId, escrowDomain, voucherDigest, type ChannelConfig } from "../../node/protocol/typedData";
import { keccak256Fast, keccakReady } from "../../node/payee/recover";

const hexOf = (bytes: number) => fc.uint8Array({ minLength: bytes, maxLength: bytes }).map((b) => `0x${Buffer.from(b).toString("hex")}` as Hex);
const address = hexOf(20).map((h) => getAddress(h) as Address);
const config = fc.record({
  payer: address,
  payerAuthorizer: address,
  receiver: address,
  receiverAuthorizer: address,
  token: address,
  withdrawDelay: fc.integer({ min: 0, max: 2 ** 40 - 1 }),
  salt: hexOf(32),
}) as fc.Arbitrary<ChannelConfig>;
const uint128 = fc.bigInt({ min: 0n, max: 2n ** 128n - 1n });

describe("fast digester (the payee's hot path) equals the typed-data definitions", () => {
  before(() => keccakReady);
  const domains = [escrowDomain(31337, "0x4020000000000000000000000000000000000001"), escrowDomain(8453, "0x00000000000000000000000000000000DeaDBeef")];

  for (const [label, keccak] of [["noble keccak", undefined], ["WebAssembly keccak", keccak256Fast]] as const) {
    it(`${label}: voucher digests and channel ids for 500 random inputs`, () => {
      for (const domain of domains) {
        const d = createDigester(domain, keccak);
        fc.assert(
          fc.property(config, uint128, hexOf(32), (c, max, id) => {
            expect(d.channelId(c)).to.equal(computeChannelId(domain, c));
            expect(`0x${Buffer.from(d.voucherDigest(id, max)).toString("hex")}`).to.equal(voucherDigest(domain, id, max));
          }),
          { numRuns: 250, seed: 42 },
        );
      }
    });
  }

  it("lower-case and short hex inputs hash like their canonical forms; malformed hex is refused", () => {
    const domain = domains[0]!;
    const d = createDigester(domain, keccak256Fast);
    const c: ChannelConfig = {
      payer: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
      payerAuthorizer: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
      receiver: "0x90f79bf6eb2c4f870365e785982e1f101e93b906",
      receiverAuthorizer: "0x90f79bf6eb2c4f870365e785982e1f101e93b906",
      token: "0x5fbdb2315678afecb367f032d93f642f64180aa3",
      withdrawDelay: 900,
      salt: `0x${"ab".repeat(32)}`,
    };
    expect(d.channelId(c)).to.equal(computeChannelId(domain, c));
    const id = d.channelId(c);
    expect(`0x${Buffer.from(d.voucherDigest(id.toUpperCase().replace("0X", "0x") as Hex, 5n)).toString("hex")}`).to.equal(voucherDigest(domain, id, 5n));
    expect(() => d.voucherDigest(`0x${"zz".repeat(32)}`, 1n)).to.throw(/hex/);
  });
});
