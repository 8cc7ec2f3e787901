import { expect } from "chai";
import fc from "fast-check";
import { fastVoucherEnvelope, parsePaymentPayload, decodePaymentSignature, encodeBase64Json } from "../../node/protocol/wire";
import { WireFormatError, errorSummary, redactUrls } from "../../node/protocol/errors";

const valid = () => ({
  x402Version: 2,
  accepted: {
    scheme: "batch-settlement",
    network: "eip155:31337",
    amount: "10000",
    asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    payTo: "0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
    maxTimeoutSeconds: 3600,
    extra: { receiverAuthorizer: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", withdrawDelay: 900, name: "USDC", version: "2", other: 1 },
  },
  payload: {
    type: "voucher",
    channelConfig: {
      payer: "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
      payerAuthorizer: "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
      receiver: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
      receiverAuthorizer: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
      token: "0x5FbDB2315678afecb367f032d93F642f64180aa3",
      withdrawDelay: 900,
      salt: "0x" + "0A".repeat(32),
      extraField: "stripped",
    },
    voucher: { channelId: "0x" + "Ab".repeat(32), maxClaimableAmount: "20000", signature: "0x" + "CD".repeat(65) },
  },
});

/** Paths a mutation may target, and values it may put there. */
const paths = [
  ["x402Version"], ["accepted"], ["accepted", "scheme"], ["accepted", "network"], ["accepted", "amount"], ["accepted", "asset"],
  ["accepted", "payTo"], ["accepted", "maxTimeoutSeconds"], ["accepted", "extra"], ["accepted", "extra", "receiverAuthorizer"],
  ["accepted", "extra", "withdrawDelay"], ["accepted", "extra", "name"], ["payload"], ["payload", "type"], ["payload", "channelConfig"],
  ["payload", "channelConfig", "payer"], ["payload", "channelConfig", "payerAuthorizer"], ["payload", "channelConfig", "withdrawDelay"],
  ["payload", "channelConfig", "salt"], ["payload", "voucher"], ["payload", "voucher", "channelId"], ["payload", "voucher", "maxClaimableAmount"],
  ["payload", "voucher", "signature"], ["resource"], ["extensions"],
];
const values = fc.oneof(
  fc.constantFrom<unknown>(undefined, null, 0, -1, 1.5, 2, 1e300, "", "0", "01", "-1", "0x", "0xzz", "1e3", [], {}, { url: "x" }, true,
    "340282366920938463463374607431768211456", "340282366920938463463374607431768211455", "0x" + "ab".repeat(20), "0x" + "ab".repeat(32),
    "0x" + "ab".repeat(2049), "eip155:1", "batch-settlement", "voucher", "deposit", 2 ** 40, 2 ** 40 - 1),
  fc.string(),
  fc.integer(),
);

function mutate(obj: any, path: string[], value: unknown) {
  let o = obj;
  for (const k of path.slice(0, -1)) {
    if (typeof o[k] !== "object" || o[k] === null) return;
    o = o[k];
  }
  const last = path[path.length - 1]!;
  if (value === undefined) delete o[last];
  else o[last] = structuredClone(value); // fast-check shares constant objects between mutations
}

function slow(raw: unknown) {
  try {
    return { ok: parsePaymentPayload(raw) };
  } catch (e) {
    expect(e).to.be.instanceOf(WireFormatError);
    return { err: e as WireFormatError };
  }
}

describe("wire codec: the hand-written voucher fast path agrees with the zod schemas", () => {
  it("accepts a valid voucher envelope and builds exactly the zod result", () => {
    const raw = valid();
    const fast = fastVoucherEnvelope(raw);
    expect(fast).to.not.equal(undefined);
    expect(fast).to.deep.equal(parsePaymentPayload(valid()));
    expect(fast!.payload.channelConfig.payer).to.equal("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
    expect(fast!.payload.voucher.maxClaimableAmount).to.equal(20000n);
  });

  it("never accepts what zod refuses, and agrees on everything it accepts (3,000 random mutations)", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom(...paths), values), { minLength: 1, maxLength: 3 }), (muts) => {
        const raw: any = valid();
        for (const [p, v] of muts) mutate(raw, p as string[], v);
        const fast = fastVoucherEnvelope(JSON.parse(JSON.stringify(raw)));
        const ref = slow(JSON.parse(JSON.stringify(raw)));
        if (fast !== undefined) {
          expect(ref.ok, "fast path accepted what zod refused").to.not.equal(undefined);
          expect(fast).to.deep.equal(ref.ok);
        }
      }),
      { numRuns: Number(process.env.TOLLWAY_WIRE_RUNS ?? 3000) },
    );
  });

  it("decodePaymentSignature still reports zod's typed errors for malformed payloads", () => {
    const raw: any = valid();
    raw.payload.voucher.maxClaimableAmount = "-5";
    expect(() => decodePaymentSignature(encodeBase64Json(raw))).to.throw(WireFormatError).with.property("code", "invalid_batch_settlement_evm_voucher_payload");
  });
});

describe("redactUrls / errorSummary: URLs in log lines keep only their origin", () => {
  const cases: Array<[string, string]> = [
    ["HTTP request failed. URL: https://eth.example/v2/KEY123?x=1#f", "HTTP request failed. URL: https://eth.example"],
    ["https://user:p@ss@host/x", "https://host"],
    ["(https://h/K), retrying", "(https://h), retrying"],
    ["https://a.b/K,https://c.d/K2", "https://a.b,https://c.d"],
    ["http://[::1]:8545/key", "http://[::1]:8545"],
    ["wss://node.example:443/ws/KEY", "wss://node.example:443"],
    ["http://127.0.0.1:8545", "http://127.0.0.1:8545"],
    ["no url here", "no url here"],
  ];
  for (const [text, expected] of cases) {
    it(`${text} -> ${expected}`, () => expect(redactUrls(text)).to.equal(expected));
  }
  it("errorSummary: the short message's first line, redacted", () => {
    const err = Object.assign(new Error("Request failed\nURL: https://rpc.example/v3/SECRET\nbody"), { shortMessage: "fetch to https://rpc.example/v3/SECRET failed" });
    expect(errorSummary(err)).to.equal("fetch to https://rpc.example failed");
    expect(errorSummary(new Error("first https://x.example/KEY line\nsecond"))).to.equal("first https://x.example line");
  });
});
