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

/**
 * What to tell a user: the decoded revert for contract errors, the short message otherwise. A ConfigError
 * adds its details (which field is wrong and why, the reason a file could not be read), one per line.
 */
export function describeError(err: unknown): string {
  const rev = decodeRevert(err);
  if (rev) return `the contract refused: ${rev.errorName}(${rev.args.map(String).join(", ")})`;
  if (err instanceof ConfigError) {
    // The cause only when the error has no details of its own: those already say it, in words that do not
    // quote the file (a JSON.parse message can quote the text around the error, e.g. an admin token).
    const details = err.metaMessages.length || !(err.cause instanceof Error) ? err.metaMessages : [err.cause.message.split("\n")[0]!];
    return [err.shortMessage, ...details.map((d) => `  ${d}`)].join("\n");
  }
  const e = err as { shortMessage?: string; message?: string };
  return e.shortMessage ?? e.message ?? String(err);
}
