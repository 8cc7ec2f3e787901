/**
 * A local chain for development, the demo and tests: `hardhat node` on 127.0.0.1 in its own process
 * (started without npx, so the PID is the node's own and stopping it stops the chain), plus the
 * well-known Hardhat test accounts derived from the public test mnemonic (local use only).
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { createPublicClient, http, toHex, type Hex } from "viem";
import { mnemonicToAccount, type HDAccount } from "viem/accounts";
import { hardhat } from "viem/chains";

/** Hardhat's public test mnemonic. Its keys are known to everyone: never use them on a real network. */
export const HARDHAT_TEST_MNEMONIC = "test test test test test test test test test test test junk";

/** Hardhat's default account #i (public test key, local chains only). */
export function hardhatTestAccount(i: number): HDAccount {
  return mnemonicToAccount(HARDHAT_TEST_MNEMONIC, { addressIndex: i });
}

/** The private key of Hardhat's public test account #i (for local demo wallets only). */
export function hardhatTestKey(i: number): Hex {
  return toHex(hardhatTestAccount(i).getHdKey().privateKey!);
}

export type LocalChain = {
  url: string;
  port: number;
  proc: ChildProcess;
  stop(): Promise<void>;
};

/** Starts `hardhat node --hostname 127.0.0.1 --port <port>` and waits until it answers. */
export async function startLocalChain(port = 18_545 + Math.floor(Math.random() * 2000)): Promise<LocalChain> {
  const root = path.join(__dirname, "..", "..");
  const bin = path.join(root, "node_modules", ".bin", "hardhat");
  const proc = spawn(bin, ["node", "--hostname", "127.0.0.1", "--port", String(port)], {
    cwd: root,
    env: { ...process.env, HARDHAT_DISABLE_TELEMETRY_PROMPT: "true" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  proc.stderr?.on("data", (d) => (stderr += String(d)));
  const url = `http://127.0.0.1:${port}`;
  const client = createPublicClient({ chain: hardhat, transport: http(url, { retryCount: 0 }) });
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await client.getBlockNumber();
      break;
    } catch {
      if (proc.exitCode !== null) throw new Error(`hardhat node exited: ${stderr}`);
      if (Date.now() > deadline) throw new Error(`hardhat node did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 150));
    }
  }
  return {
    url,
    port,
    proc,
    stop: () =>
      new Promise<void>((resolve) => {
        if (proc.exitCode !== null) return resolve();
        proc.once("exit", () => resolve());
        proc.kill("SIGTERM");
        setTimeout(() => proc.kill("SIGKILL"), 3000).unref();
      }),
  };
}
