import { expect } from "chai";
import type { Address } from "viem";
import { RelayBudget } from "../../node/payee/relayBudget";
import { ErrorCodes, PaymentError } from "../../node/protocol/errors";

const A = "0x00000000000000000000000000000000000000aA" as Address;
const B = "0x00000000000000000000000000000000000000bb" as Address;
const HOUR = 3_600_000;

/** The PaymentError `take` throws, or undefined when it counted the transaction. */
function refusal(budget: RelayBudget, payer: Address, kind: "deposit" | "refund" = "deposit"): PaymentError | undefined {
  try {
    budget.take(payer, kind);
    return undefined;
  } catch (err) {
    expect(err).to.be.instanceOf(PaymentError);
    return err as PaymentError;
  }
}

describe("relay budget (deposits and refunds a payer makes the node pay gas for)", () => {
  it("allows perPayerPerHour per payer address (any case), then answers 429 with the seconds until the oldest leaves the hour", () => {
    let now = 1_000_000;
    const budget = new RelayBudget({ perPayerPerHour: 3 }, () => now);
    expect(refusal(budget, A)).to.equal(undefined);
    now += 10_000;
    expect(refusal(budget, A, "refund")).to.equal(undefined);
    now += 10_000;
    expect(refusal(budget, A.toLowerCase() as Address)).to.equal(undefined);
    now += 5_000;
    const e = refusal(budget, A)!;
    expect(e.status).to.equal(429);
    expect(e.code).to.equal(ErrorCodes.relayRateLimited);
    expect(e.retryAfterS).to.equal((HOUR - 25_000) / 1000);
    expect(e.shortMessage).to.include("at most 3 deposits and refunds per hour for one payer");
    expect(refusal(budget, A, "refund")!.shortMessage).to.include("withdraw on chain");
    // Another payer has its own allowance.
    expect(refusal(budget, B)).to.equal(undefined);
    // Refusals counted for nothing: once the first leaves the hour, exactly one more fits.
    now = 1_000_000 + HOUR + 1;
    expect(refusal(budget, A)).to.equal(undefined);
    expect(refusal(budget, A)!.retryAfterS).to.equal(10);
  });

  it("allows perHour for all payers together", () => {
    let now = 0;
    const budget = new RelayBudget({ perHour: 2, perPayerPerHour: 10 }, () => now);
    expect(refusal(budget, A)).to.equal(undefined);
    now = 60_000;
    expect(refusal(budget, B)).to.equal(undefined);
    const e = refusal(budget, "0x00000000000000000000000000000000000000cc")!;
    expect(e.status).to.equal(429);
    expect(e.shortMessage).to.include("for all payers");
    expect(e.retryAfterS).to.equal((HOUR - 60_000) / 1000);
    now = HOUR + 1;
    expect(refusal(budget, "0x00000000000000000000000000000000000000cc")).to.equal(undefined);
  });

  it("without limits counts nothing and never refuses", () => {
    const budget = new RelayBudget({}, () => 0);
    for (let i = 0; i < 10_000; i++) expect(refusal(budget, A)).to.equal(undefined);
  });
});
