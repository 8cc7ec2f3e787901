/** Exit codes of the `tollway` command, one per kind of failure (documented in --help). */
import { BaseError } from "viem";
import { decodeRevert } from "../chain/sender";
import { ChainError, ConfigError, PolicyError, ServerMisbehaviorError, TollwayError } from "../protocol/errors";

export const ExitCodes = {
  ok: 0,
  internal: 1,
  usage: 2,
  policy: 3,
  server: 4,
  chain: 5,
  http: 6,
} as const;

/** A user-facing failure: printed as one line, no stack trace, with its exit code. */
export class ExitError extends TollwayError {
  override name = "ExitError";
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
  }
}

export function exitCodeOf(err: unknown): number {
  if (err instanceof ExitError) return err.exitCode;
  if (err instanceof PolicyError) return ExitCodes.policy;
  if (err instanceof ServerMisbehaviorError) return ExitCodes.server;
  if (err instanceof ConfigError) return ExitCodes.usage;
  if (err instanceof ChainError || err instanceof BaseError) return ExitCodes.chain;
  if (err instanceof TollwayError) return ExitCodes.internal;
  return ExitCodes.internal;
}

/** One line for a user: the decoded revert for contract errors, the short message otherwise. */
export function describeError(err: unknown): string {
  const rev = decodeRevert(err);
  if (rev) return `the contract refused: ${rev.errorName}(${rev.args.map(String).join(", ")})`;
  const e = err as { shortMessage?: string; message?: string };
  return e.shortMessage ?? e.message ?? String(err);
}
