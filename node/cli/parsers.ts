/**
 * Argument parsers for commander options. A value that does not parse is refused at parse time (exit 2
 * with commander's "option '--batch <n>' argument 'abc' is invalid." and the reason), never read as NaN,
 * 0 or a different number ("0x10", "1e3", " ").
 */
import { InvalidArgumentError } from "commander";

/**
 * A parser for whole numbers in plain decimal digits within [min, max].
 * @example new Option("--batch <n>").argParser(wholeNumber(1, 10_000))
 */
export function wholeNumber(min: number, max: number): (value: string) => number {
  return function parseWholeNumber(value: string): number {
    const n = /^\d+$/.test(value) ? Number(value) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`Use a whole number from ${min} to ${max}.`);
    return n;
  };
}

/** Chain ids: positive integers. */
export const chainIdArg = wholeNumber(1, Number.MAX_SAFE_INTEGER);
/** Token decimals, as the node config allows them. */
export const decimalsArg = wholeNumber(0, 36);
/** A withdraw delay in seconds (the escrow allows 15 minutes to 30 days). */
export const withdrawDelayArg = wholeNumber(1, 30 * 24 * 3600);
/** Channels per claim call; the admin API takes at most 10,000 ids per call. */
export const batchArg = wholeNumber(1, 10_000);

/**
 * A repeatable single-value option (`-H a -H b`): collects the values in order. Unlike a variadic
 * `<value...>`, it never swallows the positional arguments that follow it.
 */
export function repeatable(check: (value: string) => string = (v) => v): (value: string, previous: string[] | undefined) => string[] {
  return function collect(value: string, previous: string[] | undefined): string[] {
    return [...(previous ?? []), check(value)];
  };
}

/** A channel id: 0x and 64 hex digits. */
export function channelIdArg(value: string): string {
  if (!/^0x[0-9a-fA-F]{64}$/.test(value)) throw new InvalidArgumentError("A channel id is 0x and 64 hex digits (see tollway channels).");
  return value;
}
