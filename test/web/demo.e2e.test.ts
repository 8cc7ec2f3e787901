import { expect } from "chai";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import type { Browser, Page } from "playwright-core";
import { DEMO_SECURITY_HEADERS, startDemo, type Demo } from "../../node/web/demo";
import { artifactPath, launchChromium } from "../helpers/browser";

describe("npm start demo: reader page, operator dashboard, close and refund (headless Chromium)", function () {
  this.timeout(300_000);
  let demo: Demo;
  let browser: Browser;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-demo-"));

  before(async () => {
    // A demo.json left world-readable by an earlier run: the admin token written into it must not stay readable.
    fs.writeFileSync(path.join(dir, "demo.json"), "{}", { mode: 0o644 });
    demo = await startDemo({ port: 0, simulatedReaders: 2, storePath: path.join(dir, "store"), infoFile: path.join(dir, "demo.json"), webDir: path.join(dir, "web"), logger: pino({ level: "silent" }) });
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await demo?.stop();
  });

  async function summary() {
    const res = await fetch(`${demo.urls.payee}/admin/api/summary`, { headers: { Authorization: `Bearer ${demo.adminToken}` } });
    expect(res.status).to.equal(200);
    return res.json();
  }

  it("writes the local deployment and demo wallet; the dashboard API needs the token", async () => {
    const info = JSON.parse(fs.readFileSync(path.join(dir, "demo.json"), "utf8"));
    expect(info.deployment.escrow).to.equal("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
    expect(info.demoWallet.address).to.match(/^0x[0-9a-fA-F]{40}$/);
    expect((fs.statSync(path.join(dir, "demo.json")).mode & 0o077)).to.equal(0);
    expect((await fetch(`${demo.urls.payee}/admin/api/summary`)).status).to.equal(401);
    const s = await summary();
    // the seeded pattern: investigations earn more than briefs
    const long = s.byResource.filter((r: any) => r.key.startsWith("/articles/long/")).reduce((a: number, r: any) => a + Number(r.revenue), 0);
    const brief = s.byResource.filter((r: any) => r.key.startsWith("/articles/brief/")).reduce((a: number, r: any) => a + Number(r.revenue), 0);
    expect(long).to.be.greaterThan(brief);
  });

  /** Uncaught errors and Content-Security-Policy refusals of a page (the pages must work under the policy). */
  function watchErrors(page: Page): string[] {
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (/Content Security Policy/i.test(m.text())) errors.push(m.text());
    });
    return errors;
  }

  it("every page and file the demo serves carries the security headers (CSP without inline scripts, no framing, nosniff, no referrer)", async () => {
    for (const p of ["/", "/dashboard", "/reader.js", "/dashboard.js", "/style.css", "/tollway-payer.js", "/demo/catalog"]) {
      const res = await fetch(`${demo.urls.payee}${p}`);
      expect(res.status, p).to.equal(200);
      const csp = res.headers.get("content-security-policy") ?? "";
      for (const d of ["script-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"]) expect(csp, `${p}: ${d}`).to.include(d);
      expect(csp, p).to.not.include("unsafe-inline");
      expect(res.headers.get("x-frame-options"), p).to.equal("DENY");
      expect(res.headers.get("x-content-type-options"), p).to.equal("nosniff");
      expect(res.headers.get("referrer-policy"), p).to.equal("no-referrer");
    }
    expect(DEMO_SECURITY_HEADERS["Content-Security-Policy"]).to.include("frame-ancestors 'none'");
    // The pages load no inline script and no inline handler (the policy would block them).
    for (const f of ["reader.html", "dashboard.html"]) {
      const html = fs.readFileSync(path.join(__dirname, "..", "..", "node", "web", "public", f), "utf8");
      expect(html, f).to.not.match(/<script(?![^>]*\bsrc=)[^>]*>/);
      expect(html, f).to.not.match(/\son[a-z]+=/);
    }
  });

  it("a reader unlocks three articles with one deposit signature; the dashboard shows the charges; close and refund returns the rest", async () => {
    const before = await summary();
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const errors = watchErrors(page);
    await page.goto(demo.urls.reader);
    await page.waitForSelector("body[data-ready=true]", { state: "attached" });
    const unlock = async (id: string, approve: boolean) => {
      await page.click(`button[data-article=${id}]`);
      if (approve) {
        // The deposit prompt names who is paid and how long a withdrawal takes (the page pays no one else).
        await page.waitForSelector("#sign[open]");
        expect(await page.textContent("#sign-text")).to.match(/^Deposit 0\.60 USDC into a payment channel with The Tollway Gazette \(0x709979…\)\? .* 15 minutes after you ask\.$/);
        await page.click("#approve");
      }
      await page.waitForFunction((a) => document.querySelector(`button[data-article=${a}]`)!.textContent === "Unlocked", id);
    };
    await unlock("water-cartel", true);
    await unlock("heatwave", false);
    await unlock("bike-lanes", false);
    expect(await page.evaluate(() => (window as any).__tollwayPrompts)).to.equal(1);
    expect(await page.textContent("#balance")).to.equal("0.55 USDC left"); // 0.60 deposit - 0.05
    await page.screenshot({ path: artifactPath("demo-reader.png"), fullPage: true });

    const after = await summary();
    expect(after.requests - before.requests).to.equal(3);
    expect(Number(after.total) - Number(before.total)).to.be.closeTo(0.05, 1e-9);

    // A reload shows what was paid for without paying again.
    await page.reload();
    await page.waitForSelector("body[data-ready=true]", { state: "attached" });
    for (const id of ["water-cartel", "heatwave", "bike-lanes"]) {
      expect(await page.textContent(`button[data-article=${id}]`), id).to.equal("Unlocked");
      expect(await page.isDisabled(`button[data-article=${id}]`), id).to.equal(true);
    }
    expect(await page.isVisible("article:has(button[data-article=heatwave]) .body")).to.equal(true);
    expect(await page.textContent("button[data-article=port-audit]")).to.equal("Unlock for 3c");
    expect((await summary()).requests).to.equal(after.requests);

    // "Back up your channel": a file with the channel's config and key, enough to withdraw without the publisher.
    // The wallet signs the backup's session key (one prompt), so no one else's file can plant a key.
    const downloading = page.waitForEvent("download");
    await page.click("#backup");
    await page.waitForSelector("#sign[open]");
    expect(await page.textContent("#sign-text")).to.match(/^Sign the backup of this browser's payment key/);
    await page.click("#approve");
    const download = await downloading;
    const backup = JSON.parse(fs.readFileSync((await download.path())!, "utf8"));
    expect(download.suggestedFilename()).to.match(/^tollway-channel-backup-\d{4}-\d{2}-\d{2}\.json$/);
    expect(backup.format).to.equal("tollway-channel-backup/2");
    expect(backup.sessionKey).to.match(/^0x[0-9a-f]{64}$/);
    expect(backup.channels).to.have.length(1);
    expect(backup.channels[0].config.payer).to.equal(JSON.parse(fs.readFileSync(path.join(dir, "demo.json"), "utf8")).demoWallet.address);
    expect([backup.channels[0].balance, backup.channels[0].charged]).to.deep.equal(["600000", "50000"]);

    // "Clear site data", then "Restore a backup" with that file: the channel is back, nothing is paid again.
    const demoWallet = JSON.parse(fs.readFileSync(path.join(dir, "demo.json"), "utf8")).demoWallet.address as string;
    await page.evaluate((name) => new Promise((ok, fail) => Object.assign(indexedDB.deleteDatabase(name), { onsuccess: ok, onerror: fail, onblocked: ok })), `tollway-payer-${demoWallet.toLowerCase()}`);
    await page.reload();
    await page.waitForSelector("body[data-ready=true]", { state: "attached" });
    expect(await page.textContent("#balance")).to.equal("no channel yet");
    await page.setInputFiles("#restore-file", (await download.path())!);
    await page.waitForFunction(() => /Backup restored/.test(document.getElementById("status")!.textContent!));
    expect(await page.textContent("#status")).to.equal("Backup restored: 1 channel back in this browser.");
    expect(await page.textContent("#balance")).to.equal("0.55 USDC left");
    expect(await page.evaluate(() => (window as any).__tollwayPrompts)).to.equal(0); // this page load asked nothing

    const dash = await browser.newPage({ viewport: { width: 1100, height: 1200 } });
    errors.push(...watchErrors(dash));
    await dash.goto(demo.urls.dashboard);
    await dash.fill("#token", demo.adminToken);
    await dash.click("#login button");
    await dash.waitForSelector("body[data-loaded=true]", { state: "attached" });
    expect(await dash.textContent("#total")).to.equal(`${after.total} USDC`);
    expect(await dash.locator("#chart-time svg").count()).to.equal(1);
    await dash.screenshot({ path: artifactPath("demo-dashboard.png"), fullPage: true });

    await page.click("#close");
    await page.waitForFunction(() => /Channel closed/.test(document.getElementById("status")!.textContent!));
    expect(await page.textContent("#status")).to.include("0.55 USDC returned");
    expect(errors).to.deep.equal([]);
  });

  it("the reader page says when the stream fails, and does not stay stuck on \"Paying…\"", async () => {
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.route("**/stream/council/chunk/3", (route) => route.fulfill({ status: 500, body: "upstream down" }));
    await page.goto(demo.urls.reader);
    await page.waitForSelector("body[data-ready=true]", { state: "attached" });
    await page.click("#watch");
    await page.click("#approve"); // the deposit
    await page.waitForFunction(() => /stream stopped/.test(document.getElementById("status")!.textContent!));
    expect(await page.textContent("#status")).to.equal("The stream stopped at chunk 4: the server answered HTTP 500.");
    expect(await page.getAttribute("#status", "class")).to.include("error");
    expect(await page.isEnabled("#watch")).to.equal(true);
    expect(await page.textContent("#stream-cost")).to.equal("Watched 3 chunks for 0.003 USDC");
    expect(errors).to.deep.equal([]);
    await page.context().close();
  });

  it("the reader page says when it cannot start (catalog down, or no IndexedDB)", async () => {
    const down = await browser.newPage();
    await down.route("**/demo/catalog", (route) => route.fulfill({ status: 503, body: "" }));
    await down.goto(demo.urls.reader);
    await down.waitForSelector("body[data-error=startup]", { state: "attached" });
    expect(await down.textContent("#status")).to.equal("The page could not start: /demo/catalog answered HTTP 503. Reload to try again.");
    await down.context().close();

    const noIdb = await browser.newPage();
    await noIdb.addInitScript(() => {
      indexedDB.open = () => {
        throw new DOMException("storage disabled", "SecurityError");
      };
    });
    await noIdb.goto(demo.urls.reader);
    await noIdb.waitForSelector("body[data-error=startup]", { state: "attached" });
    expect(await noIdb.textContent("#status")).to.include("does not let the page keep a payment channel");
    expect(await noIdb.getAttribute("#status", "class")).to.include("error");
    await noIdb.context().close();
  });

  it("the dashboard takes the token out of the address bar, never overlaps its polls, and says when its data is stale", async () => {
    const dash = await browser.newPage();
    const errors = watchErrors(dash);
    await dash.clock.install();
    let requests = 0;
    let hold: Promise<void> | undefined;
    let offline = false;
    await dash.route("**/admin/api/summary", async (route) => {
      requests++;
      if (hold) await hold;
      if (offline) await route.abort("connectionrefused");
      else await route.continue();
    });
    await dash.goto(`${demo.urls.dashboard}#token=${demo.adminToken}`);
    await dash.waitForSelector("body[data-loaded=true]", { state: "attached" });
    expect(await dash.evaluate(() => location.href)).to.equal(demo.urls.dashboard);
    expect(await dash.evaluate(() => sessionStorage.getItem("tollway-admin-token"))).to.equal(demo.adminToken);
    expect(requests).to.equal(1);

    // A slow summary: a minute passes while it is in flight, and no second request starts.
    await dash.clock.pauseAt(Date.now() + 1_000);
    let release!: () => void;
    hold = new Promise<void>((r) => (release = r));
    await dash.clock.runFor(10_000);
    while (requests < 2) await new Promise((r) => setTimeout(r, 20));
    await dash.clock.runFor(60_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(requests).to.equal(2);
    hold = undefined;
    release();
    await dash.waitForFunction(() => document.getElementById("stale")!.hidden);

    // The node goes away: the page says its numbers are old. The clock moves a second at a time (the
    // released poll schedules its successor only once the page has handled the answer), up to 30 s.
    offline = true;
    const advanceUntil = async (done: () => boolean) => {
      for (let i = 0; i < 30 && !(await dash.evaluate(done)); i++) {
        await dash.clock.runFor(1_000);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await advanceUntil(() => document.body.dataset.stale === "true");
    await dash.waitForSelector("body[data-stale=true]", { state: "attached" });
    expect(await dash.isVisible("#stale")).to.equal(true);
    expect(await dash.textContent("#stale")).to.match(/^Offline: the node cannot be reached\. Showing data from .+; retrying…$/);
    expect(requests).to.equal(3);

    // Back again: fresh data, the notice goes.
    offline = false;
    await advanceUntil(() => document.body.dataset.stale === undefined);
    await dash.waitForFunction(() => document.body.dataset.stale === undefined);
    expect(await dash.isVisible("#stale")).to.equal(false);
    expect(errors).to.deep.equal([]);
    await dash.context().close();
  });
});
