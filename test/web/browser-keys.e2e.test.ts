import { expect } from "chai";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { erc20Abi, type Address, type Hex, type LocalAccount } from "viem";
import { hardhat } from "viem/chains";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { CANONICAL_ADDRESSES, computeChannelId, escrowDomain } from "../../node/protocol/typedData";
import { sessionKeyTypedData } from "../../node/web/payer-browser";
import { clientsFor } from "../helpers/chainNode";
import { ClaimEngine } from "../../node/payee/claims";
import { startBrowserHarness } from "../helpers/browser";

// An injected EIP-1193 wallet stand-in: the test's key signs, everything else goes to the test's chain.
const PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Tollway session key test</title></head>
<body><main><h1>Session key</h1></main>
<script src="/tollway-payer.js"></script>
<script>
  window.ethereum = {
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [window.__walletAddress];
      if (method === "eth_chainId") return "0x7a69";
      if (method === "eth_signTypedData_v4") return window.__walletSign(params[1]);
      const answer = JSON.parse(await window.__walletRpc(method, JSON.stringify(params || [])));
      if (answer.error) throw Object.assign(new Error(answer.error.message), { code: answer.error.code });
      return answer.result;
    },
  };
  window.restoreTollway = (backup) => Tollway.restore({ provider: window.ethereum, chainId: 31337 }, backup);
  window.connectTollway = () => Tollway.connect({ provider: window.ethereum, chainId: 31337, policy: { maxPerRequest: 50000n, maxDeposit: 1000000n, depositMultiplier: 20 } });
</script></body></html>`;

/**
 * Counts navigator.storage.persist() calls (the page asks once, when it creates the session key).
 * Set before any page script runs.
 */
function countPersistCalls() {
  (window as any).__persistCalls = 0;
  Object.defineProperty(navigator.storage, "persist", {
    configurable: true,
    value: async () => {
      (window as any).__persistCalls++;
      return true;
    },
  });
}

describe("browser payer: one session key per browser, and a way back to the deposit without the publisher", function () {
  this.timeout(240_000);
  let h: Awaited<ReturnType<typeof startBrowserHarness>>;
  let ctx: typeof h.ctx;
  let node: typeof h.node;
  let browser: Browser;

  before(async () => {
    h = await startBrowserHarness("/page.html", PAGE);
    ({ ctx, node, browser } = h);
  });
  after(async () => h?.stop());

  async function openPage(context: BrowserContext, wallet: LocalAccount, prompts = { signatures: 0 }): Promise<Page> {
    const page = await context.newPage();
    const { walletClient } = clientsFor(ctx.chain.url, wallet);
    await page.exposeFunction("__walletSign", async (json: string) => {
      prompts.signatures++;
      const td = JSON.parse(json);
      const { EIP712Domain: _d, ...types } = td.types;
      return wallet.signTypedData({ domain: td.domain, types, primaryType: td.primaryType, message: td.message });
    });
    await page.exposeFunction("__walletRpc", async (method: string, paramsJson: string) => {
      const params = JSON.parse(paramsJson);
      if (method === "eth_sendTransaction") {
        const tx = params[0] as { to: Address; data?: Hex; value?: Hex };
        const hash = await walletClient.sendTransaction({ account: wallet, chain: hardhat, to: tx.to, data: tx.data, value: tx.value ? BigInt(tx.value) : undefined });
        return JSON.stringify({ result: hash });
      }
      const res = await fetch(ctx.chain.url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }) });
      return res.text();
    });
    await page.addInitScript((a) => ((window as any).__walletAddress = a), wallet.address);
    await page.addInitScript(countPersistCalls);
    await page.goto(`${node.url}/page.html`);
    return page;
  }

  const keyOf = (page: Page) => page.evaluate(async () => (await (window as any).connectTollway()).payer.payerAuthorizer as string);
  const persistCalls = (page: Page) => page.evaluate(() => (window as any).__persistCalls as number);

  it("two tabs, and two connects in one tab, on a first visit end with one session key, kept after a reload; storage persistence is asked for once", async () => {
    const wallet = ctx.payers[3] as LocalAccount;
    const context = await browser.newContext();
    try {
      const pages = [await openPage(context, wallet), await openPage(context, wallet)];
      // Four connects at once: two per tab.
      const keys = (await Promise.all(pages.map((p) => p.evaluate(async () => Promise.all([(window as any).connectTollway(), (window as any).connectTollway()]).then((ts) => ts.map((t: any) => t.payer.payerAuthorizer as string)))))).flat();
      expect(new Set(keys).size, `session keys: ${keys.join(", ")}`).to.equal(1);
      // Asked once, by the connect that created the key.
      expect((await persistCalls(pages[0]!)) + (await persistCalls(pages[1]!))).to.equal(1);

      for (const page of pages) await page.reload();
      expect(await keyOf(pages[0]!)).to.equal(keys[0]);
      expect(await keyOf(pages[1]!)).to.equal(keys[0]);
      // The key already existed: no second request.
      expect((await persistCalls(pages[0]!)) + (await persistCalls(pages[1]!))).to.equal(0);
    } finally {
      await context.close();
    }
  });

  it("channels() and backup() carry each channel's full config; after the site's data is lost the wallet withdraws the deposit with the backup alone", async () => {
    const wallet = ctx.payers[2] as LocalAccount;
    const context = await browser.newContext();
    try {
      const page = await openPage(context, wallet);
      const paid = await page.evaluate(async () => {
        const t = await (window as any).connectTollway();
        const res = await t.fetch("/articles/1");
        return { status: res.status, channels: await t.channels(), backup: await t.backup() };
      });
      expect(paid.status).to.equal(200);
      const [listed] = paid.channels;
      const [saved] = paid.backup.channels;
      expect(paid.backup.format).to.equal("tollway-channel-backup/2");
      expect(listed.config).to.deep.equal(saved.config);
      expect(saved.config.payer).to.equal(wallet.address);
      expect(saved.config.payerAuthorizer).to.equal(privateKeyToAccount(paid.backup.sessionKey).address);
      expect(saved.config.receiver).to.equal(node.payeeAccount.address);
      expect(computeChannelId(escrowDomain(31337, ctx.deployment.escrow), saved.config)).to.equal(saved.channelId);
      expect([saved.balance, saved.charged]).to.deep.equal(["200000", "10000"]); // 20 × 0.01 deposited, 0.01 charged

      // "Clear site data": the session key and the channel state are gone; the next visit has a new key.
      await page.reload();
      await page.evaluate((name) => new Promise((ok, fail) => Object.assign(indexedDB.deleteDatabase(name), { onsuccess: ok, onerror: fail, onblocked: () => fail(new Error("blocked")) })), `tollway-payer-${wallet.address.toLowerCase()}`);
      const token = (a: Address) => ctx.publicClient.readContract({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "balanceOf", args: [a] });
      const before = await token(wallet.address);

      const started = await page.evaluate(async (entry) => {
        const t = await (window as any).connectTollway();
        const r = await t.withdraw.start(entry);
        return { key: t.payer.payerAuthorizer as string, channels: (await t.channels()).length, amount: r.amount.toString(), finalizeAfter: r.finalizeAfter as number };
      }, saved);
      expect(started.key).to.not.equal(saved.config.payerAuthorizer);
      expect(started.channels).to.equal(0);
      expect(started.amount).to.equal("200000"); // everything unclaimed: the escrow pays out only what is still unclaimed at finalize

      // During the delay the payee claims its 0.01 (a Tollway node's watcher does this on its own).
      const claimed = await new ClaimEngine(node.payee, { onShutdown: false }).claim();
      expect(claimed.failed).to.deep.equal([]);
      await ctx.testClient.increaseTime({ seconds: saved.config.withdrawDelay + 1 });
      await ctx.testClient.mine({ blocks: 1 });
      await page.evaluate(async (entry) => {
        const t = await (window as any).connectTollway();
        await t.withdraw.finish(entry);
      }, saved);
      expect((await token(wallet.address)) - before).to.equal(190_000n);
    } finally {
      await context.close();
    }
  });

  it("restore(backup) after the site's data is lost: payments continue on the same channel without a wallet prompt and refund closes it; refused, changing nothing, while another key's channel holds money or for another wallet", async () => {
    const wallet = ctx.payers[4] as LocalAccount;
    const context = await browser.newContext();
    const prompts = { signatures: 0 };
    const dbName = `tollway-payer-${wallet.address.toLowerCase()}`;
    const clearSiteData = async (page: Page) => {
      await page.reload();
      await page.evaluate((name) => new Promise((ok, fail) => Object.assign(indexedDB.deleteDatabase(name), { onsuccess: ok, onerror: fail, onblocked: () => fail(new Error("blocked")) })), dbName);
    };
    const token = (a: Address) => ctx.publicClient.readContract({ address: ctx.deployment.token!, abi: erc20Abi, functionName: "balanceOf", args: [a] });
    try {
      const page = await openPage(context, wallet, prompts);
      const first = await page.evaluate(async () => {
        const t = await (window as any).connectTollway();
        const res = await t.fetch("/articles/1");
        return { status: res.status, backup: await t.backup() };
      });
      expect(first.status).to.equal(200);
      const saved = first.backup.channels[0];
      expect([saved.balance, saved.charged]).to.deep.equal(["200000", "10000"]);
      expect(prompts.signatures).to.equal(2); // the deposit, and the backup's signature of its session key
      expect(first.backup.format).to.equal("tollway-channel-backup/2");

      // Cleared, then used again: a new key, a new channel with money on it.
      await clearSiteData(page);
      const second = await page.evaluate(async () => {
        const t = await (window as any).connectTollway();
        return { status: (await t.fetch("/articles/1")).status, key: t.payer.payerAuthorizer as string };
      });
      expect(second.status).to.equal(200);
      expect(second.key).to.not.equal(saved.config.payerAuthorizer);
      const refused = await page.evaluate(async (backup) => {
        const attempt = (b: unknown) => (window as any).restoreTollway(b).then(() => "restored", (e: Error) => e.message);
        const errors = [await attempt(backup), await attempt({ ...backup, payer: "0x000000000000000000000000000000000000dEaD" }), await attempt({ ...backup, chainId: 1 })];
        const t = await (window as any).connectTollway();
        return { errors, key: t.payer.payerAuthorizer as string, channels: (await t.channels()).map((c: any) => c.channelId as string) };
      }, first.backup);
      expect(refused.errors[0]).to.match(/holds channel 0x[0-9a-f]{64} with money left under another session key: refund or withdraw it first/);
      expect(refused.errors[1]).to.match(/the backup is for the wallet 0x000000000000000000000000000000000000dEaD/);
      expect(refused.errors[2]).to.match(/the backup is for chain 1/);
      expect(refused.key).to.equal(second.key); // nothing written
      expect(refused.channels).to.have.length(1).and.not.include(saved.channelId);

      // Cleared again, and a first visit makes a new key before the reader finds the backup file.
      await clearSiteData(page);
      const fresh = await keyOf(page);
      // A crafted backup (a key someone else knows, a channel that hashes right but was never funded), an
      // empty one and a tampered config are refused, and nothing is written.
      const planted = generatePrivateKey();
      const config = { ...saved.config, payerAuthorizer: privateKeyToAccount(planted).address };
      const crafted = { ...first.backup, sessionKey: planted, channels: [{ ...saved, config, channelId: computeChannelId(escrowDomain(31337, ctx.deployment.escrow), config) }] };
      const otherSite = await wallet.signTypedData(sessionKeyTypedData(31337, wallet.address, privateKeyToAccount(first.backup.sessionKey).address, CANONICAL_ADDRESSES.batchSettlement, "https://other.example"));
      expect(first.backup.site).to.equal(new URL(page.url()).origin);
      const bad = await page.evaluate(async (backups) => {
        const errors: string[] = [];
        for (const b of backups) errors.push(await (window as any).restoreTollway(b).then(() => "restored", (e: Error) => e.message));
        return errors;
      }, [
        crafted,
        { ...first.backup, channels: [] },
        { ...first.backup, channels: [{ ...saved, config: { ...saved.config, withdrawDelay: saved.config.withdrawDelay + 1 } }] },
        // The wallet's own backup with its signature removed, and one of the old format (no signature at all).
        { ...first.backup, walletSignature: "0x" },
        { ...first.backup, format: "tollway-channel-backup/1", walletSignature: undefined },
        // The wallet's real signature of this key, made for another site: it restores only where it was made.
        { ...first.backup, site: "https://other.example", walletSignature: otherSite },
      ]);
      // The planted key is not one this wallet signed (a crafted file, even for a channel with money on chain).
      expect(bad[0]).to.equal("the backup's session key is not signed by this wallet for this site: it was not made by this wallet's backup here, or it was changed");
      expect(bad[1]).to.equal("the backup has no channel: there is nothing to restore");
      expect(bad[2]).to.match(/its config does not hash to its id/);
      expect(bad[3]).to.equal(bad[0]);
      expect(bad[4]).to.match(/^this backup \(format 1\) has no wallet signature of its session key/);
      expect(bad[5]).to.equal(bad[0]);
      expect(await keyOf(page)).to.equal(fresh);

      // Restored: the backup's key and channel are back; the key it replaced is kept, retired.
      const signaturesBefore = prompts.signatures;
      const restored = await page.evaluate(async (backup) => {
        const r = await (window as any).restoreTollway(backup);
        const t = await (window as any).connectTollway();
        const res = await t.fetch("/articles/2");
        return { r, status: res.status, key: t.payer.payerAuthorizer as string, channels: (await t.channels()).map((c: any) => [c.channelId, c.charged]) };
      }, first.backup);
      expect(restored.r).to.deep.equal({ channels: 1, keyReplaced: true });
      const retired = await page.evaluate(
        (name) =>
          new Promise<string[]>((ok, fail) => {
            const open = indexedDB.open(name);
            open.onerror = () => fail(open.error);
            open.onsuccess = () => {
              const all = open.result.transaction("keys", "readonly").objectStore("keys").getAllKeys();
              all.onsuccess = () => ok((all.result as string[]).filter((k) => k.startsWith("session:retired:")));
            };
          }),
        dbName,
      );
      expect(retired).to.have.length(1);
      expect(restored.status).to.equal(200);
      expect(restored.key).to.equal(saved.config.payerAuthorizer);
      expect(restored.channels).to.deep.equal([[saved.channelId, "0.02"]]);
      expect(prompts.signatures).to.equal(signaturesBefore); // no deposit: the voucher continued the old channel
      expect((await node.payee.store.getChannel(saved.channelId))?.chargedCumulative).to.equal(20_000n);

      // The cooperative refund, signed by the restored key, returns the rest at once.
      const before = await token(wallet.address);
      const refunded = await page.evaluate(async () => String(await (await (window as any).connectTollway()).refund("/articles/3")));
      expect(refunded).to.equal("180000");
      expect((await token(wallet.address)) - before).to.equal(180_000n);
    } finally {
      await context.close();
    }
  });
});
