/**
 * The `tollway` command. Declares commands only; each lives in commands/ and is loaded when used.
 * Errors: user errors print one line (no stack trace) and exit with a distinct code.
 */
import { Command, Option } from "commander";
import { ExitCodes, ExitError, describeError, exitCodeOf } from "./errors";
import { batchArg, chainIdArg, channelIdArg, decimalsArg, repeatable, withdrawDelayArg } from "./parsers";

const EXIT_HELP = `
Exit codes: 0 ok, 1 internal error, 2 usage/config, 3 refused by your policy, 4 the server broke the
payment rules, 5 chain error, 6 HTTP error status.
Keys: TOLLWAY_PAYER_KEY (0x + 64 hex) or --key-file (mode 0600); never printed.`;

/** --rpc and --chain-id, defaulting to TOLLWAY_RPC_URL / TOLLWAY_CHAIN_ID (checked like the arguments). */
function chainOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--rpc <url>", "chain RPC URL").env("TOLLWAY_RPC_URL").default("http://127.0.0.1:8545"))
    .addOption(new Option("--chain-id <id>", "chain id (a positive integer)").env("TOLLWAY_CHAIN_ID").argParser(chainIdArg).default(31337));
}

function payerOptions(cmd: Command): Command {
  return chainOptions(cmd)
    .option("--store <dir>", "payer state (LevelDB); default ~/.tollway/payer/<address>")
    .option("--key-file <file>", "file holding the payer key (mode 0600); not together with TOLLWAY_PAYER_KEY")
    .option("--decimals <n>", "token decimals for amounts (0-36)", decimalsArg, 6)
    .option("--symbol <s>", "token symbol for display", "USDC")
    .option("--asset <address>", "pay only in this token (refuse any other asset a payee names)")
    .option("--escrow <address>", "escrow address (default: canonical)")
    .option("--json", "machine-readable output");
}

function operatorOptions(cmd: Command): Command {
  return cmd
    .addOption(nodeOption("the payee node"))
    .option("--token <token>", "admin bearer token; prefer TOLLWAY_ADMIN_TOKEN (an argument shows in ps)")
    .option("--decimals <n>", "token decimals for amounts (0-36)", decimalsArg, 6)
    .option("--symbol <s>", "token symbol for display", "USDC")
    .option("--json", "machine-readable output");
}

/** --node, defaulting to TOLLWAY_NODE_URL. */
function nodeOption(description: string): Option {
  return new Option("--node <url>", description).env("TOLLWAY_NODE_URL").default("http://127.0.0.1:4020");
}

export function buildProgram(): Command {
  const program = new Command("tollway").description("Tollway: pay per request with x402 batch-settlement channels").addHelpText("after", EXIT_HELP);
  program.exitOverride();

  payerOptions(
    program
      .command("pay <url>")
      .description("fetch a URL like curl, paying its 402 (body on stdout, charge on stderr)")
      .option("-X, --request <method>", "HTTP method")
      .option("-H, --header <header>", "request header 'Name: value' (repeatable)", repeatable())
      .option("-d, --data <body>", "request body (implies POST)")
      .option("--max <amount>", "most to pay for this request, in token units", "1")
      .option("--budget <amount>", "most to pay in total over all channels")
      .option("--max-deposit <amount>", "largest deposit allowed, in token units", "10")
      .option("--max-withdraw-delay <seconds>", "refuse payees whose channels lock a deposit longer than this if they stop cooperating", withdrawDelayArg)
      .option("--deposit <amount>", "top up the channel by this much with this request")
      .addHelpText("after", "\nExamples:\n  tollway pay http://127.0.0.1:4020/articles/1 --max 0.05\n  tollway pay -X POST -d '{\"q\":1}' -H 'Content-Type: application/json' http://127.0.0.1:4020/api"),
  ).action(async (url, o) => finish(await (await import("./commands/pay")).pay(url, o)));

  payerOptions(
    program
      .command("channels")
      .description("your channels as a payer; with --node, every channel of a payee node (receiver side, riskiest first)")
      .option("--node <url>", "list the receiver-side channels of this payee node")
      .option("--token <token>", "admin bearer token for --node; prefer TOLLWAY_ADMIN_TOKEN (an argument shows in ps)"),
  )
    .addHelpText("after", "\nExamples:\n  tollway channels --json\n  TOLLWAY_ADMIN_TOKEN=... tollway channels --node http://127.0.0.1:4020")
    .action(async (o) =>
      finish(o.node ? await (await import("./commands/operator")).receiverChannels(o) : await (await import("./commands/channels")).channels(o)),
    );

  payerOptions(
    program
      .command("deposit <url> <amount>")
      .description("top up the channel to the payee at <url> by <amount> token units (paid with a request to <url>)")
      .option("--max <amount>", "most to pay for the request that carries the deposit, in token units", "1")
      .option("--max-deposit <amount>", "largest deposit allowed, in token units (default: <amount>)"),
  )
    .addHelpText("after", "\nExample:\n  tollway deposit http://127.0.0.1:4020/articles/1 1.00")
    .action(async (url, amount, o) => finish(await (await import("./commands/pay")).pay(url, { ...o, maxDeposit: o.maxDeposit ?? amount, deposit: amount }, process.stderr)));

  payerOptions(
    program
      .command("refund [url]")
      .description("payer: ask the payee at <url> for a cooperative refund; operator (--all | --channel): claim and refund channels of --node")
      .option("--amount <amount>", "partial refund (payer)")
      .option("--all", "operator: every channel (needs --yes)")
      .option("--channel <id>", "operator: this channel (repeatable)", repeatable(channelIdArg))
      .option("--yes", "operator: really refund every channel with --all")
      .addOption(nodeOption("operator: the payee node"))
      .option("--token <token>", "operator: admin bearer token; prefer TOLLWAY_ADMIN_TOKEN (an argument shows in ps)"),
  )
    .addHelpText("after", "\nExamples:\n  tollway refund http://127.0.0.1:4020/articles/1\n  TOLLWAY_ADMIN_TOKEN=... tollway refund --all --yes")
    .action(async (url, o) => {
      const operatorMode = o.all || o.channel;
      if (url && operatorMode) {
        throw new ExitError(ExitCodes.usage, "refund takes a <url> (payer: your channel with that payee) or --all / --channel (operator: channels of --node), not both");
      }
      if (operatorMode) {
        const op = await import("./commands/operator");
        if (o.all && o.channel) throw new ExitError(ExitCodes.usage, "--all or --channel, not both");
        if (o.all && !o.yes) return finish(await op.confirmationNeeded(o, "refund --all", "refund"));
        return finish(await op.operatorRefund(o));
      }
      if (!url) throw new ExitError(ExitCodes.usage, "refund needs a <url> (payer) or --all / --channel (operator)");
      finish(await (await import("./commands/close")).refund(url, o));
    });

  payerOptions(program.command("withdraw <channel-or-url>").description("timed withdrawal (when the payee does not cooperate): a channel id from `tollway channels`, or the payee's URL").option("--finalize", "complete a withdrawal whose delay has passed"))
    .addHelpText("after", "\nExamples:\n  tollway withdraw 0x<channel id>\n  tollway withdraw http://127.0.0.1:4020/articles/1\n  tollway withdraw 0x<channel id> --finalize")
    .action(async (url, o) => finish(await (await import("./commands/close")).withdraw(url, o)));

  // ---- operators --------------------------------------------------------------------------
  chainOptions(program.command("deploy").description("deploy the escrow and collectors to a network; writes deployments/<chainId>.json"))
    .option("--key-file <file>", "deployer key file (mode 0600); or TOLLWAY_DEPLOYER_KEY (not both)")
    .option("--canonical", "local chains only: place the contracts at the canonical x402 addresses")
    .option("--test-token", "also deploy the test stablecoin")
    .option("--out <dir>", "deployments folder", "deployments")
    .option("--json", "machine-readable output")
    .addHelpText("after", "\nExample:\n  TOLLWAY_DEPLOYER_KEY=0x... tollway deploy --rpc https://sepolia.base.org --chain-id 84532")
    .action(async (o) => finish(await (await import("./commands/node")).deploy(o)));

  program
    .command("serve")
    .description("run a payee node from a config file (express routes or reverse-proxy upstreams)")
    .requiredOption("--config <file>", "node config (JSON; relative paths in it are relative to its folder); TOLLWAY_* environment variables override it (docs/RUNBOOK.md)")
    .addHelpText("after", "\nExample:\n  TOLLWAY_PAYEE_KEY=0x... tollway serve --config tollway.json")
    .action(async (o) => finish(await (await import("./commands/node")).serve(o)));

  operatorOptions(program.command("status").description("node health, chain head and lag, signer balance, pending claims"))
    .addHelpText("after", "\nExample:\n  TOLLWAY_ADMIN_TOKEN=... tollway status")
    .action(async (o) => finish(await (await import("./commands/operator")).status(o)));

  operatorOptions(
    program
      .command("claim")
      .description("claim charged vouchers on chain, in batches")
      .option("--all", "every channel with unclaimed charges")
      .option("--channel <id>", "this channel (repeatable)", repeatable(channelIdArg))
      .option("--batch <n>", "channels per claim call (1-10000)", batchArg, 100),
  )
    .addHelpText("after", "\nExamples:\n  tollway claim --all\n  tollway claim --channel 0xabc... --channel 0xdef...")
    .action(async (o) => {
      if (o.all && o.channel) throw new ExitError(ExitCodes.usage, "--all or --channel, not both");
      finish(await (await import("./commands/operator")).claim(o));
    });

  operatorOptions(program.command("settle").description("transfer claimed funds to the receiver (one transaction)"))
    .addHelpText("after", "\nExample:\n  tollway settle")
    .action(async (o) => finish(await (await import("./commands/operator")).settle(o)));

  operatorOptions(
    program
      .command("close-all")
      .description("claim, refund, then settle every channel (shutting a service down)")
      .option("--batch <n>", "channels per claim call (1-10000)", batchArg, 100)
      .option("--yes", "really close every channel (without it: print what would happen and exit 2)"),
  )
    .addHelpText("after", "\nExample:\n  TOLLWAY_ADMIN_TOKEN=... tollway close-all --yes")
    .action(async (o) => {
      const op = await import("./commands/operator");
      finish(o.yes ? await op.closeAll(o) : await op.confirmationNeeded(o, "close-all", "close"));
    });

  operatorOptions(program.command("report").description("revenue by resource, route, payer, day or hour").option("--by <grouping>", "resource | route | payer | day | hour", "resource").option("--csv", "CSV output"))
    .addHelpText("after", "\nExamples:\n  tollway report --by payer\n  tollway report --by day --csv > revenue.csv")
    .action(async (o) => finish(await (await import("./commands/operator")).revenueReport(o)));

  // A stray argument is an error, not ignored: `claim --channel A B` must not claim A alone and exit 0.
  for (const command of program.commands) command.allowExcessArguments(false);
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
