import { expect } from "chai";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import type { Browser } from "playwright-core";
import { startDemo, type Demo } from "../../node/web/demo";
import { artifactPath, launchChromium } from "../helpers/browser";

describe("npm start demo: reader page, operator dashboard, close and refund (headless Chromium)", function () {
  this.timeout(300_000);
  let demo: Demo;
  let browser: Browser;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-demo-"));

  before(async () => {
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

  it("a reader unlocks three articles with one deposit signature; the dashboard shows the charges; close and refund returns the rest", async () => {
    const before = await summary();
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(demo.urls.reader);
    await page.waitForSelector("body[data-ready=true]", { state: "attached" });
    const unlock = async (id: string, approve: boolean) => {
      await page.click(`button[data-article=${id}]`);
      if (approve) await page.click("#approve");
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

    const dash = await browser.newPage({ viewport: { width: 1100, height: 1200 } });
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
});
