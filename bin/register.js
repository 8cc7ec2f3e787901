// Loads the TypeScript sources as they are. Each .ts file is transpiled on require by esbuild (types
// stripped, nothing checked: `npm run lint` type-checks), about 0.8 s faster to start than ts-node's
// transpiler; ts-node transpiles instead where esbuild cannot be loaded.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

let esbuild;
try {
  esbuild = require("esbuild");
} catch {
  esbuild = undefined;
}

// The project's compiler options (strict: "use strict" in every module, as tsc emits it; ES2022 class
// fields), so a module behaves as its tsc build would. A tsconfig.json that is not plain JSON: ts-node.
let tsconfigRaw;
try {
  tsconfigRaw = { compilerOptions: JSON.parse(fs.readFileSync(path.join(__dirname, "..", "tsconfig.json"), "utf8")).compilerOptions };
} catch {
  esbuild = undefined;
}

if (esbuild && !require.extensions[".ts"]) {
  require.extensions[".ts"] = (module, filename) => {
    const { code } = esbuild.transformSync(fs.readFileSync(filename, "utf8"), {
      loader: "ts",
      format: "cjs",
      target: "node20",
      // import("./x") becomes a require, as TypeScript's CommonJS output does (node's ESM loader would not find "./x.ts").
      supported: { "dynamic-import": false },
      sourcefile: filename,
      tsconfigRaw,
      // Inline, for `NODE_OPTIONS=--enable-source-maps` (stack traces at the TypeScript lines). Not on by
      // default: mapping stacks (every error a request creates) delayed a restarted node's first answers.
      sourcemap: "inline",
    });
    module._compile(code, filename);
  };
} else if (!require.extensions[".ts"]) {
  require("ts-node").register({ transpileOnly: true, project: path.join(__dirname, "..", "tsconfig.json") });
}
