#!/usr/bin/env node
// Launcher: runs the TypeScript CLI through ts-node (transpile only).
require("ts-node").register({ transpileOnly: true, project: require("node:path").join(__dirname, "..", "tsconfig.json") });
require("../node/cli/cli.ts")
  .main(process.argv)
  .then((code) => process.exit(code));
