/** Amount parsing and formatting. Amounts are bigint atomic units everywhere; strings only at the edges. */
import { ConfigError } from "./errors";

export const UINT128_MAX = (1n << 128n) - 1n;

/**
 * Parses a price: "$0.01" or "0.01" (token units, `decimals` applied), or an atomic bigint.
 * @example parsePrice("$0.01", 6) // 10000n
 */
export function parsePrice(price: string | bigint | number, decimals: number): bigint {
  if (typeof price === "bigint") {
    if (price < 0n) throw new ConfigError(`Price must not be negative: ${price}`);
    return price;
  }
  const text = String(price).trim().replace(/^\$/, "");
  const m = /^(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m) throw new ConfigError(`Invalid price "${price}"`, { metaMessages: ['Use "$0.01", "0.01" or an atomic bigint like 10000n.'] });
  const whole = m[1]!;
  const frac = m[2] ?? "";
  if (frac.length > decimals) {
    throw new ConfigError(`Price "${price}" has more than ${decimals} decimals`);
  }
  return BigInt(whole + frac.padEnd(decimals, "0"));
}

/** Formats atomic units in token units: formatUnitsTrim(10000n, 6) -> "0.01". */
export function formatAmount(atomic: bigint, decimals: number): string {
  const neg = atomic < 0n;
  const abs = neg ? -atomic : atomic;
  const base = 10n ** BigInt(decimals);
  const whole = abs / base;
  const frac = (abs % base).toString().padStart(decimals, "0").replace(/0+$/, "");
  return `${neg ? "-" : ""}${whole}${frac ? "." + frac : ""}`;
}
