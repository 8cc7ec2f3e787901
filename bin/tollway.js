#!/usr/bin/env node
// Launcher: runs the TypeScript CLI from its sources (see register.js).
require("./register");
// Output piped into a reader that stops early (`tollway report | head`) ends the CLI quietly.
process.stdout.on("error", (err) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});
require("../node/cli/cli.ts")
  .main(process.argv)
  .then((code) => process.exit(code));
