/**
 * Headless Debian Chromium driven by playwright-core (never a downloaded browser). playwright's
 * `launch` gives every browser a fresh temporary profile of its own.
 */
import fs from "node:fs";
import path from "node:path";
import { chromium, type Browser } from "playwright-core";

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
