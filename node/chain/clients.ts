/** viem clients from configuration (RPC URL, chain id). */
import {
  type Account,
  type Address,
  type Chain,
  type PublicClient,
  type Transport,
  type WalletClient,
  createPublicClient,
  createWalletClient,
  defineChain,
  http,
} from "viem";

export type ChainSettings = {
  rpcUrl: string;
  chainId: number;
  /** Blocks a deposit must be buried under before it counts (0 on a local chain). */
  confirmations?: number;
  /** Poll interval of the event mirror, ms. */
  pollIntervalMs?: number;
};

export type ChainClients = {
  chain: Chain;
  publicClient: PublicClient<Transport, Chain>;
  walletClient?: WalletClient<Transport, Chain, Account>;
};

/** Builds a viem Chain for an arbitrary RPC (local Hardhat, an L2, ...). */
export function chainFromSettings(s: ChainSettings): Chain {
  return defineChain({
    id: s.chainId,
    name: s.chainId === 31337 ? "Hardhat" : `eip155:${s.chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [s.rpcUrl] } },
  });
}

/**
 * Creates the public client and, when an account is given, a wallet client for it.
 * @example const { publicClient } = createChainClients({ rpcUrl: "http://127.0.0.1:8545", chainId: 31337 })
 */
export function createChainClients(s: ChainSettings, account?: Account): ChainClients {
  const chain = chainFromSettings(s);
  const transport = http(s.rpcUrl, { retryCount: 2, timeout: 10_000 });
  const publicClient = createPublicClient({ chain, transport, pollingInterval: s.pollIntervalMs ?? 1_000 }) as PublicClient<Transport, Chain>;
  const walletClient = account ? createWalletClient({ chain, transport, account }) : undefined;
  return { chain, publicClient, walletClient };
}

export type EscrowAddresses = {
  escrow: Address;
  erc3009Collector: Address;
  permitCollector?: Address;
};
