// Bundles the browser payer (node/web/payer-browser.ts) into dist/web/tollway-payer.js (global `Tollway`).
const path = require("node:path");
const esbuild = require("esbuild");

async function buildWeb(outdir = path.join(__dirname, "..", "dist", "web")) {
  await esbuild.build({
    entryPoints: [path.join(__dirname, "..", "node", "web", "payer-browser.ts")],
    bundle: true,
    format: "iife",
    globalName: "Tollway",
    platform: "browser",
    target: ["chrome120", "firefox120", "safari17"],
    outfile: path.join(outdir, "tollway-payer.js"),
    minify: true,
    sourcemap: true,
    external: ["classic-level"],
    logLevel: "warning",
  });
  return path.join(outdir, "tollway-payer.js");
}

module.exports = { buildWeb };
if (require.main === module) buildWeb().then((f) => console.log(`wrote ${f}`));
