/**
 * Starts a real `hardhat node` on 127.0.0.1 (own process, own PID, killed on stop) for tests of the node
 * that talk to a chain over JSON-RPC, and derives the well-known Hardhat test accounts (public test
 * mnemonic, local use only).
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { createPublicClient, createTestClient, createWalletClient, http, type Account } from "viem";
import { mnemonicToAccount } from "viem/accounts";
import { hardhat } from "viem/chains";

const HARDHAT_TEST_MNEMONIC = "test test test test test test test test test test test junk";

/** Hardhat's default account #i (public test key; never use on a real network). */
export function hardhatTestAccount(i: number): Account {
  return mnemonicToAccount(HARDHAT_TEST_MNEMONIC, { addressIndex: i });
}

export type ChainNode = {
  url: string;
  port: number;
  proc: ChildProcess;
  stop(): Promise<void>;
};

export async function startChainNode(port = 18_545 + Math.floor(Math.random() * 2000)): Promise<ChainNode> {
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
        proc.kill("SIGKILL");
      }),
  };
}

export function clientsFor(url: string, account: Account) {
  const transport = http(url, { retryCount: 0 });
  return {
    publicClient: createPublicClient({ chain: hardhat, transport, pollingInterval: 50 }),
    walletClient: createWalletClient({ chain: hardhat, transport, account }),
    testClient: createTestClient({ chain: hardhat, transport, mode: "hardhat" }),
  };
}
