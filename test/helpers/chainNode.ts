/** Test access to the local chain helpers of node/chain/localNode.ts, plus viem clients for a URL. */
import { createPublicClient, createTestClient, createWalletClient, http, type Account } from "viem";
import { hardhat } from "viem/chains";
import { hardhatTestAccount, startLocalChain, type LocalChain } from "../../node/chain/localNode";

export type ChainNode = LocalChain;
export const startChainNode = startLocalChain;
export { hardhatTestAccount };

export function clientsFor(url: string, account: Account) {
  const transport = http(url, { retryCount: 0 });
  return {
    publicClient: createPublicClient({ chain: hardhat, transport, pollingInterval: 50 }),
    walletClient: createWalletClient({ chain: hardhat, transport, account }),
    testClient: createTestClient({ chain: hardhat, transport, mode: "hardhat" }),
  };
}
