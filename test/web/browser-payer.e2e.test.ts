import { expect } from "chai";
import type { Browser } from "playwright-core";
import { keccak256, toHex, type LocalAccount } from "viem";
import { artifactPath, startBrowserHarness } from "../helpers/browser";

const PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Tollway browser payer test</title></head>
<body><main><h1>Paid reading</h1><ol id="out"></ol></main>
<script src="/tollway-payer.js"></script>
<script>
  // An injected EIP-1193 wallet stand-in: accounts from the page, signatures by the test's wallet.
  window.ethereum = {
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [window.__walletAddress];
      if (method === "eth_chainId") return "0x7a69";
      if (method === "eth_signTypedData_v4") return window.__walletSign(params[1]);
      throw new Error("unsupported " + method);
    },
  };
  window.payThree = async (start) => {
    const t = await Tollway.connect({ provider: window.ethereum, chainId: 31337, policy: { maxPerRequest: 50000n, maxDeposit: 1000000n, depositMultiplier: 20 } });
    const results = [];
    for (let i = start; i < start + 3; i++) {
      const res = await t.fetch("/articles/" + i);
      const text = await res.text();
      results.push({ status: res.status, text });
      const li = document.createElement("li"); li.textContent = res.status + " " + text; document.getElementById("out").appendChild(li);
    }
    return { results, channels: await t.channels() };
  };
  // Holds the channel's Web Lock as another tab would (e.g. its deposit waiting on the wallet), then pays.
  window.payWhileHeld = async (waitMs) => {
    const t = await Tollway.connect({ provider: window.ethereum, chainId: 31337, lockWaitMs: waitMs, policy: { maxPerRequest: 50000n, maxDeposit: 1000000n, depositMultiplier: 20 } });
    const [ch] = await t.channels();
    let free;
    const held = new Promise((r) => navigator.locks.request("tollway-channel:" + ch.channelId, () => new Promise((f) => { free = f; r(); })));
    await held;
    const refused = await t.fetch("/articles/900").then((r) => "status " + r.status, (e) => e.message);
    free();
    const after = await t.fetch("/articles/901");
    return { refused, after: after.status };
  };
</script></body></html>`;

describe("browser payer: headless Chromium pays for three resources (real node, real chain)", function () {
  this.timeout(240_000);
  let h: Awaited<ReturnType<typeof startBrowserHarness>>;
  let ctx: typeof h.ctx;
  let node: typeof h.node;
  let browser: Browser;

  before(async () => {
    h = await startBrowserHarness("/reader.html", PAGE);
    ({ ctx, node, browser } = h);
  });
  after(async () => h?.stop());

  it("one wallet prompt for the deposit, none per paid request; state survives a reload", async () => {
    const wallet = ctx.payers[0] as LocalAccount;
    const page = await browser.newPage();
    const prompts: string[] = [];
    await page.exposeFunction("__walletSign", async (json: string) => {
      const td = JSON.parse(json);
      prompts.push(td.primaryType);
      const { EIP712Domain: _d, ...types } = td.types;
      return wallet.signTypedData({ domain: td.domain, types, primaryType: td.primaryType, message: td.message });
    });
    await page.addInitScript((a) => ((window as any).__walletAddress = a), wallet.address);
    await page.goto(`${node.url}/reader.html`);
    const first = await page.evaluate(() => (window as any).payThree(1));
    expect(first.results).to.deep.equal([1, 2, 3].map((i) => ({ status: 200, text: `article ${i}` })));
    expect(prompts).to.deep.equal(["ReceiveWithAuthorization"]); // the deposit; vouchers by the session key
    expect(first.channels[0].charged).to.equal("0.03");
    await page.screenshot({ path: artifactPath("browser-payer.png") });

    await page.reload();
    const second = await page.evaluate(() => (window as any).payThree(4));
    expect(second.results.map((r: any) => r.status)).to.deep.equal([200, 200, 200]);
    expect(prompts.length).to.equal(1); // IndexedDB kept the session key and the channel
    expect(second.channels[0].charged).to.equal("0.06");
    const rec = await node.store.getChannel(second.channels[0].channelId);
    expect(rec!.chargedCumulative).to.equal(60_000n);
    void keccak256;
    void toHex;

    // A payment waiting on a channel another tab holds gives up after lockWaitMs with a reason, and
    // the channel pays again once it is free.
    const blocked = await page.evaluate(() => (window as any).payWhileHeld(300));
    expect(blocked.refused).to.match(/another tab has been paying on this channel for 300 ms/);
    expect(blocked.after).to.equal(200);
  });

  it("two tabs of one origin share the channel: their requests are serialized across tabs (Web Locks), every one is paid once", async () => {
    const wallet = ctx.payers[1] as LocalAccount;
    const context = await browser.newContext();
    try {
      const pages = [await context.newPage(), await context.newPage()];
      for (const page of pages) {
        await page.exposeFunction("__walletSign", async (json: string) => {
          const td = JSON.parse(json);
          const { EIP712Domain: _d, ...types } = td.types;
          return wallet.signTypedData({ domain: td.domain, types, primaryType: td.primaryType, message: td.message });
        });
        await page.addInitScript((a) => ((window as any).__walletAddress = a), wallet.address);
        await page.goto(`${node.url}/reader.html`);
      }
      // The first tab opens the channel (the session key both tabs share: browser-keys.e2e.test.ts covers two tabs creating it at once).
      expect((await pages[0]!.evaluate(() => (window as any).payThree(100))).results.map((r: any) => r.status)).to.deep.equal([200, 200, 200]);
      const [a, b] = await Promise.all([pages[0]!.evaluate(() => (window as any).payThree(200)), pages[1]!.evaluate(() => (window as any).payThree(300))]);
      expect([...a.results, ...b.results].map((r: any) => r.status)).to.deep.equal([200, 200, 200, 200, 200, 200]);
      const rec = await node.store.getChannel(a.channels[0].channelId);
      expect(rec!.chargedCumulative).to.equal(90_000n);
    } finally {
      await context.close();
    }
  });
});
