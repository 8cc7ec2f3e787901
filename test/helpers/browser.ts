/**
 * Headless Debian Chromium driven by playwright-core (never a downloaded browser). playwright's
 * `launch` gives every browser a fresh temporary profile of its own.
 */
import express from "express";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium, type Browser } from "playwright-core";
import { startChain, startPayee } from "./payeeHarness";

const { buildWeb } = require("../../scripts/build-web.js") as { buildWeb(outdir: string): Promise<string> };

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export async function launchChromium(): Promise<Browser> {
  if (!fs.existsSync(CHROMIUM_PATH)) {
    throw new Error(`${CHROMIUM_PATH} not found: install Debian's chromium (apt-get install chromium); .ci/run does`);
  }
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** Where tests write screenshots (kept as CI artifacts). */
export function artifactPath(name: string): string {
  const dir = path.join(__dirname, "..", "..", "test-artifacts");
  fs.mkdirSync(dir, { recursive: true });
  return path.join(dir, name);
}

/**
 * A payee node on a local chain whose paid `GET /articles/:id` answers "article <id>", serving the payer
 * bundle and `html` at `pagePath`, plus a headless Chromium. `stop` ends what started, also after a
 * partial start.
 */
export async function startBrowserHarness(pagePath: string, html: string) {
  let ctx: Awaited<ReturnType<typeof startChain>> | undefined;
  let node: Awaited<ReturnType<typeof startPayee>> | undefined;
  let browser: Browser | undefined;
  const stop = async () => {
    await browser?.close();
    await node?.stop();
    await ctx?.chain.stop();
  };
  try {
    const bundle = await buildWeb(fs.mkdtempSync(path.join(os.tmpdir(), "tollway-web-")));
    ctx = await startChain();
    node = await startPayee(ctx, { "GET /articles/:id": "$0.01" }, (app) => {
      app.get("/articles/:id", (req, res) => void res.type("text/plain").send(`article ${req.params.id}`));
      app.get(pagePath, (_req, res) => void res.type("html").send(html));
      app.use(express.static(path.dirname(bundle)));
    });
    browser = await launchChromium();
    return { ctx, node, browser, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
