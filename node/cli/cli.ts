/**
 * The `tollway` command. Declares commands only; each lives in commands/ and is loaded when used.
 * Errors: user errors print one line (no stack trace) and exit with a distinct code.
 */
import { Command } from "commander";
import { ExitCodes, describeError, exitCodeOf } from "./errors";

const EXIT_HELP = `
Exit codes: 0 ok, 1 internal error, 2 usage/config, 3 refused by your policy, 4 the server broke the
payment rules, 5 chain error, 6 HTTP error status.
Keys: TOLLWAY_PAYER_KEY (0x + 64 hex) or --key-file (mode 0600); never printed.`;

function payerOptions(cmd: Command): Command {
  return cmd
    .option("--rpc <url>", "chain RPC URL", process.env.TOLLWAY_RPC_URL ?? "http://127.0.0.1:8545")
    .option("--chain-id <id>", "chain id", process.env.TOLLWAY_CHAIN_ID ?? "31337")
    .option("--store <dir>", "payer state (LevelDB); default ~/.tollway/payer/<address>")
    .option("--key-file <file>", "file holding the payer key (mode 0600)")
    .option("--decimals <n>", "token decimals for amounts", "6")
    .option("--symbol <s>", "token symbol for display", "USDC")
    .option("--json", "machine-readable output");
}

export function buildProgram(): Command {
  const program = new Command("tollway").description("Tollway: pay per request with x402 batch-settlement channels").addHelpText("after", EXIT_HELP);
  program.exitOverride();

  payerOptions(
    program
      .command("pay <url>")
      .description("fetch a URL like curl, paying its 402 (body on stdout, charge on stderr)")
      .option("-X, --request <method>", "HTTP method")
      .option("-H, --header <header...>", "request header(s), 'Name: value'")
      .option("-d, --data <body>", "request body (implies POST)")
      .option("--max <amount>", "most to pay for this request, in token units (e.g. 0.05)")
      .option("--budget <amount>", "most to pay in total over all channels")
      .option("--max-deposit <amount>", "largest deposit allowed")
      .option("--deposit <amount>", "top up the channel by this much with this request")
      .addHelpText("after", "\nExamples:\n  tollway pay http://127.0.0.1:4020/articles/1 --max 0.05\n  tollway pay -X POST -d '{\"q\":1}' -H 'Content-Type: application/json' http://127.0.0.1:4020/api"),
  ).action(async (url, o) => finish(await (await import("./commands/pay")).pay(url, o)));

  payerOptions(program.command("channels").description("your channels: payee, balance, charged, claimed, withdrawal state").option("--escrow <address>", "escrow address (default: canonical)"))
    .addHelpText("after", "\nExample:\n  tollway channels --json")
    .action(async (o) => finish(await (await import("./commands/channels")).channels(o)));

  payerOptions(
    program
      .command("deposit <url> <amount>")
      .description("top up the channel to the payee at <url> by <amount> token units (paid with a request to <url>)")
      .option("--max-deposit <amount>", "largest deposit allowed"),
  )
    .addHelpText("after", "\nExample:\n  tollway deposit http://127.0.0.1:4020/articles/1 1.00")
    .action(async (url, amount, o) => finish(await (await import("./commands/pay")).pay(url, { ...o, deposit: amount }, process.stderr)));

  payerOptions(program.command("refund <url>").description("ask the payee at <url> for a cooperative refund of the unclaimed balance").option("--amount <amount>", "partial refund"))
    .addHelpText("after", "\nExample:\n  tollway refund http://127.0.0.1:4020/articles/1")
    .action(async (url, o) => finish(await (await import("./commands/close")).refund(url, o)));

  payerOptions(program.command("withdraw <url>").description("timed withdrawal from the channel to <url> (when the payee does not cooperate)").option("--finalize", "complete a withdrawal whose delay has passed").option("--escrow <address>", "escrow address"))
    .addHelpText("after", "\nExamples:\n  tollway withdraw http://127.0.0.1:4020/articles/1\n  tollway withdraw http://127.0.0.1:4020/articles/1 --finalize")
    .action(async (url, o) => finish(await (await import("./commands/close")).withdraw(url, o)));

  return program;
}

let exitCode: number = ExitCodes.ok;
function finish(code: number) {
  exitCode = code;
}

/** Runs the CLI; resolves to the exit code (never throws). */
export async function main(argv: string[]): Promise<number> {
  exitCode = ExitCodes.ok;
  try {
    await buildProgram().parseAsync(argv);
    return exitCode;
  } catch (err) {
    const e = err as { code?: string };
    if (typeof e.code === "string" && e.code.startsWith("commander.")) {
      return e.code === "commander.helpDisplayed" || e.code === "commander.version" ? 0 : ExitCodes.usage;
    }
    const code = exitCodeOf(err);
    process.stderr.write(`tollway: ${describeError(err)}\n`);
    if (code === ExitCodes.internal && process.env.TOLLWAY_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
    return code;
  }
}
