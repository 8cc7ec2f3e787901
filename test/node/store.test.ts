import { expect } from "chai";
import fc from "fast-check";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { getAddress, type Address, type Hex } from "viem";
import { ChannelStore, encodeChannel, type ChannelRecord } from "../../node/store/channelStore";

const hexOf = (bytes: number) => fc.uint8Array({ minLength: bytes, maxLength: bytes }).map((b) => `0x${Buffer.from(b).toString("hex")}` as Hex);
const address = hexOf(20).map((h) => getAddress(h) as Address);
const u128 = fc.bigInt({ min: 0n, max: 2n ** 128n - 1n });
const time = fc.integer({ min: 0, max: 2 ** 42 });
const record: fc.Arbitrary<ChannelRecord> = fc.record({
  channelId: hexOf(32),
  config: fc.record({ payer: address, payerAuthorizer: address, receiver: address, receiverAuthorizer: address, token: address, withdrawDelay: fc.integer({ min: 0, max: 2 ** 40 }), salt: hexOf(32) }),
  chargedCumulative: u128,
  signedMaxClaimable: u128,
  signature: fc.oneof(hexOf(65), fc.constant("0x" as Hex)),
  balance: u128,
  totalClaimed: u128,
  withdrawRequestedAt: time,
  refundNonce: u128,
  syncedAt: time,
  lastRequestAt: time,
  createdAt: time,
});

const reference = (r: ChannelRecord) => JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? v.toString() : v));

describe("channel store encoding", () => {
  it("the hot-path record encoder writes exactly what JSON.stringify writes (500 random records, config cached)", () => {
    fc.assert(
      fc.property(record, (r) => {
        expect(encodeChannel(r)).to.equal(reference(r));
        // second time from the cached config JSON, with changed amounts on a copy sharing the config
        const next = { ...r, chargedCumulative: r.chargedCumulative + 1n, lastRequestAt: r.lastRequestAt + 1 };
        expect(encodeChannel(next)).to.equal(reference(next));
      }),
      { numRuns: 500, seed: 7 },
    );
  });

  it("a record written and read back through LevelDB is the same record", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-store-"));
    const sample = fc.sample(record, { numRuns: 50, seed: 11 });
    let store = await ChannelStore.open(dir);
    await Promise.all(sample.map((r) => store.putChannel(r)));
    await store.close();
    store = await ChannelStore.open(dir);
    for (const r of sample) expect(await store.getChannel(r.channelId)).to.deep.equal(r);
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
