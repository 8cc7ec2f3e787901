import { expect } from "chai";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { NODE_ENV_OVERRIDES, loadNodeConfig, loadNodeKey, parseNodeConfig } from "../../node/payee/config";
import { routePattern } from "../../node/payee/middleware";
import { ConfigError } from "../../node/protocol/errors";

const base = {
  escrow: "0x" + "11".repeat(20),
  erc3009Collector: "0x" + "22".repeat(20),
  asset: { address: "0x" + "33".repeat(20) },
};

/** The ConfigError `f` throws (fails the test when it throws something else or nothing). */
function configError(f: () => unknown): ConfigError {
  try {
    f();
  } catch (e) {
    expect(e).to.be.instanceOf(ConfigError);
    return e as ConfigError;
  }
  expect.fail("expected a ConfigError");
}

const details = (e: ConfigError) => e.metaMessages.join("\n");

describe("node config (parseNodeConfig, loadNodeConfig, loadNodeKey)", () => {
  describe("nested objects are strict: a misspelt key is an error, with a hint", () => {
    it("asset.decimal (meant decimals: 18) is refused instead of pricing in 6 decimals", () => {
      const e = configError(() => parseNodeConfig({ ...base, asset: { ...base.asset, decimal: 18 } }, {}));
      expect(e.shortMessage).to.equal("Invalid Tollway node configuration");
      expect(details(e)).to.equal('asset: unknown key "decimal" (did you mean "decimals"?)');
    });

    it("claims.treshold / intervalMS, listen.hots, proxy timeout, route descripton, tls extras", () => {
      expect(details(configError(() => parseNodeConfig({ ...base, claims: { treshold: "$5", intervalMS: 600_000 } }, {})))).to.equal(
        'claims: unknown keys "treshold" (did you mean "threshold"?), "intervalMS" (did you mean "intervalMs"?)',
      );
      expect(details(configError(() => parseNodeConfig({ ...base, listen: { hots: "0.0.0.0" } }, {})))).to.equal('listen: unknown key "hots" (did you mean "host"?)');
      expect(details(configError(() => parseNodeConfig({ ...base, transactions: { maxFeeGWei: 50 } }, {})))).to.equal('transactions: unknown key "maxFeeGWei" (did you mean "maxFeeGwei"?)');
      expect(details(configError(() => parseNodeConfig({ ...base, proxy: { "GET /api/*": { upstream: "http://127.0.0.1:9", price: "$0.01", timeout: 1000 } } }, {})))).to.equal(
        'proxy["GET /api/*"]: unknown key "timeout" (did you mean "timeoutMs"?)',
      );
      expect(details(configError(() => parseNodeConfig({ ...base, routes: { "GET /a": { price: "$0.01", descripton: "x" } } }, {})))).to.equal(
        'routes["GET /a"]: unknown key "descripton" (did you mean "description"?)',
      );
      expect(details(configError(() => parseNodeConfig({ ...base, listen: { tls: { certFile: "c", keyFile: "k", ca: "x" } } }, {})))).to.match(/^listen\.tls: unknown key "ca"$/);
    });

    it("the correctly spelt config still parses, with its defaults", () => {
      const c = parseNodeConfig(
        {
          ...base,
          asset: { ...base.asset, decimals: 18 },
          claims: { threshold: "$5", payerSignedThreshold: "$0.10", intervalMs: 600_000 },
          transactions: { maxFeeGwei: 50 },
          routes: { "GET /a": "$0.01", "/b": { price: "$0.02", description: "b" } },
          proxy: { "POST /api/*": { upstream: "http://127.0.0.1:9", price: "$0.01", timeoutMs: 1000 } },
        },
        {},
      );
      expect(c.asset.decimals).to.equal(18);
      expect(c.claims).to.deep.equal({ threshold: "$5", payerSignedThreshold: "$0.10", intervalMs: 600_000, batchSize: 100, onShutdown: true });
      expect(c.transactions).to.deep.equal({ repriceAfterMs: 30_000, maxReprices: 3, maxFeeGwei: 50 });
      expect(c.relay).to.deep.equal({ perPayerPerHour: 10, perHour: 1_000 });
      expect(c.proxy["POST /api/*"]!.timeoutMs).to.equal(1000);
      expect(c.listen).to.deep.equal({ host: "127.0.0.1", port: 4020, headersTimeoutMs: 10_000, trustProxy: false, corsOrigins: [] });
    });
  });

  describe("route keys name a known HTTP method", () => {
    it('"GTE /a" and "get /a" are refused; every whitelisted method and a method-less path are accepted', () => {
      const e = configError(() => parseNodeConfig({ ...base, routes: { "GTE /a": "$0.01" }, proxy: { "get /b": { upstream: "http://127.0.0.1:9", price: "$0.01" } } }, {}));
      expect(e.metaMessages).to.deep.equal([
        'routes["GTE /a"]: Route key "GTE /a": unknown HTTP method "GTE" (use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, upper case)',
        'proxy["get /b"]: Route key "get /b": unknown HTTP method "get" (use one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, upper case)',
      ]);
      // The same check where the middleware compiles its routes (an app calling paymentMiddleware directly).
      expect(() => routePattern("GTE /a")).to.throw(/unknown HTTP method "GTE"/);
      expect(details(configError(() => parseNodeConfig({ ...base, routes: { "articles/1": "$0.01" } }, {})))).to.match(/must look like "GET \/path\/:param"/);
      const routes = Object.fromEntries(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].map((m) => [`${m} /${m.toLowerCase()}`, "$0.01"]));
      expect(Object.keys(parseNodeConfig({ ...base, routes: { ...routes, "/any": "$0.01" } }, {}).routes)).to.have.length(8);
    });
  });

  describe("listen.corsOrigins", () => {
    it("takes origins (scheme://host[:port]) or *; a path, a bare host or a wildcard host is refused", () => {
      expect(parseNodeConfig({ ...base, listen: { corsOrigins: ["https://reader.example", "http://127.0.0.1:3000", "*"] } }, {}).listen.corsOrigins).to.have.length(3);
      for (const bad of ["https://reader.example/", "reader.example", "https://*.example", "ftp://x"]) {
        const e = configError(() => parseNodeConfig({ ...base, listen: { corsOrigins: [bad] } }, {}));
        expect(e.metaMessages, bad).to.deep.equal(["listen.corsOrigins[0]: an origin is scheme://host[:port] (no path), or *"]);
      }
    });
  });

  describe("route keys are listed once", () => {
    it("a key in both routes and proxy is refused, naming it (the proxy entry silently replaced the route)", () => {
      const e = configError(() => parseNodeConfig({ ...base, routes: { "GET /a/*": "$0.01" }, proxy: { "GET /a/*": { upstream: "http://127.0.0.1:9", price: "$0.02" } } }, {}));
      expect(e.metaMessages).to.deep.equal(['proxy["GET /a/*"]: route key "GET /a/*" is also in routes: a path is either served here or proxied, list it once']);
    });
  });

  describe("adminToken", () => {
    it("needs 16 characters and no whitespace: 16 spaces are refused", () => {
      expect(details(configError(() => parseNodeConfig({ ...base, adminToken: " ".repeat(16) }, {})))).to.match(/adminToken must not contain whitespace/);
      expect(details(configError(() => parseNodeConfig({ ...base, adminToken: "a".repeat(15) }, {})))).to.match(/at least 16 characters/);
      expect(details(configError(() => parseNodeConfig(base, { TOLLWAY_ADMIN_TOKEN: "token with spaces in it" })))).to.match(/whitespace/);
      expect(parseNodeConfig({ ...base, adminToken: "a".repeat(16) }, {}).adminToken).to.equal("a".repeat(16));
    });

    it("listen.host may not be empty (it would bind every interface)", () => {
      expect(details(configError(() => parseNodeConfig({ ...base, listen: { host: "" } }, {})))).to.match(/^listen\.host: listen\.host must not be empty/);
    });
  });

  describe("environment overrides", () => {
    it("numbers must be decimal digits: blank, hex, exponent and signs are refused, naming the variable", () => {
      for (const [name, bad] of [
        ["TOLLWAY_PORT", " "],
        ["TOLLWAY_PORT", "0x50"],
        ["TOLLWAY_PORT", "80abc"],
        ["TOLLWAY_PORT", "-1"],
        ["TOLLWAY_CHAIN_ID", "0x2105"],
        ["TOLLWAY_CHAIN_ID", "1e3"],
        ["TOLLWAY_CHAIN_ID", "8453.0"],
        ["TOLLWAY_RECOVERY_THREADS", " "],
        ["TOLLWAY_RECOVERY_THREADS", "+2"],
      ] as const) {
        const e = configError(() => parseNodeConfig(base, { [name]: bad }));
        expect(e.shortMessage, `${name}=${JSON.stringify(bad)}`).to.equal("Invalid Tollway environment override");
        expect(e.metaMessages).to.deep.equal([`${name}: must be a whole number in decimal digits, got ${JSON.stringify(bad)}`]);
      }
    });

    it("digits override the file (and keep the rest of listen); the range checks still apply", () => {
      const c = parseNodeConfig({ ...base, chainId: 1, listen: { host: "0.0.0.0", port: 1 } }, { TOLLWAY_PORT: "8080", TOLLWAY_CHAIN_ID: "8453", TOLLWAY_RECOVERY_THREADS: "0" });
      expect(c.listen).to.deep.equal({ host: "0.0.0.0", port: 8080, headersTimeoutMs: 10_000, trustProxy: false, corsOrigins: [] });
      expect(c.chainId).to.equal(8453);
      expect(c.recoveryThreads).to.equal(0);
      expect(details(configError(() => parseNodeConfig(base, { TOLLWAY_PORT: "70000" })))).to.match(/^listen\.port: /);
      expect(details(configError(() => parseNodeConfig(base, { TOLLWAY_CHAIN_ID: "0" })))).to.match(/^chainId: /);
      expect(parseNodeConfig(base, { TOLLWAY_PORT: "" }).listen.port).to.equal(4020); // empty = unset
    });

    it("docs/RUNBOOK.md lists every override", () => {
      const runbook = fs.readFileSync(path.join(__dirname, "..", "..", "docs", "RUNBOOK.md"), "utf8");
      for (const o of NODE_ENV_OVERRIDES) expect(runbook, o.name).to.include(`\`${o.name}\``);
    });
  });

  describe("loadNodeConfig", () => {
    let dir: string;
    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-config-"));
    });
    const write = (name: string, content: unknown) => {
      const file = path.join(dir, name);
      fs.writeFileSync(file, typeof content === "string" ? content : JSON.stringify(content));
      return file;
    };

    it("resolves relative paths in the file against the file's folder, not the working directory", () => {
      const file = write("tollway.json", { ...base, keyFile: "node.key", listen: { tls: { certFile: "tls/cert.pem", keyFile: "/etc/tollway/key.pem" } } });
      const c = loadNodeConfig(file, {});
      expect(c.storePath).to.equal(path.join(dir, ".tollway", "payee")); // the default too
      expect(c.keyFile).to.equal(path.join(dir, "node.key"));
      expect(c.listen.tls).to.deep.equal({ certFile: path.join(dir, "tls", "cert.pem"), keyFile: "/etc/tollway/key.pem" });
      expect(loadNodeConfig(write("b.json", { ...base, storePath: "data/store" }), {}).storePath).to.equal(path.join(dir, "data", "store"));
      expect(loadNodeConfig(write("c.json", { ...base, storePath: "/var/lib/tollway" }), {}).storePath).to.equal("/var/lib/tollway");
      // The environment's path is the shell's: relative to the working directory, as given.
      expect(loadNodeConfig(file, { TOLLWAY_STORE: "rel/store" }).storePath).to.equal("rel/store");
      // parseNodeConfig of an object keeps paths as given.
      expect(parseNodeConfig(base, {}).storePath).to.equal(".tollway/payee");
    });

    it("refuses to start on an empty store beside the config when the store is where earlier versions put it (the working directory)", () => {
      const work = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-cwd-"));
      const cwd = process.cwd();
      process.chdir(work);
      try {
        const file = write("moved.json", { ...base });
        expect(loadNodeConfig(file, {}).storePath).to.equal(path.join(dir, ".tollway", "payee")); // no store anywhere: fine
        fs.mkdirSync(path.join(work, ".tollway", "payee"), { recursive: true });
        fs.writeFileSync(path.join(work, ".tollway", "payee", "CURRENT"), "MANIFEST-000001\n");
        const moved = configError(() => loadNodeConfig(file, {}));
        expect(moved.shortMessage).to.match(/The store moved/);
        expect(details(moved)).to.include(path.join(work, ".tollway", "payee"));
        // Once the config names it, or the store is where the config points, it starts.
        expect(loadNodeConfig(write("named.json", { ...base, storePath: path.join(work, ".tollway", "payee") }), {}).storePath).to.equal(path.join(work, ".tollway", "payee"));
      } finally {
        process.chdir(cwd);
        fs.rmSync(work, { recursive: true, force: true });
      }
    });

    it("says why a file cannot be read: the OS error, or where the JSON breaks (without quoting the file)", () => {
      const missing = configError(() => loadNodeConfig(path.join(dir, "nope.json"), {}));
      expect(missing.shortMessage).to.match(/^Cannot read config file .*nope\.json$/);
      expect(missing.metaMessages[0]).to.match(/^ENOENT: no such file or directory/);
      const broken = configError(() => loadNodeConfig(write("bad.json", '{\n  "adminToken": "secret-token-0123456789" x\n}'), {}));
      expect(broken.metaMessages).to.deep.equal(["invalid JSON at line 2, column 43: Expected ',' or '}' after property value"]);
      const other = configError(() => loadNodeConfig(write("bad2.json", '{\n  "adminToken": "secret-token-0123456789",\n  "b": tru\n}'), {}));
      expect(other.metaMessages[0]).to.match(/^invalid JSON/);
      expect(other.message + broken.message).to.not.include("secret-token");
      expect(details(configError(() => loadNodeConfig(write("arr.json", "[]"), {})))).to.equal("(root): the config must be a JSON object");
    });
  });

  describe("loadNodeKey", () => {
    const key = "0x" + "ab".repeat(32);
    const other = "0x" + "cd".repeat(32);
    it("refuses TOLLWAY_PAYEE_KEY together with keyFile instead of silently preferring the environment", () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tollway-key-"));
      const keyFile = path.join(dir, "node.key");
      fs.writeFileSync(keyFile, other, { mode: 0o600 });
      const config = parseNodeConfig({ ...base, keyFile }, {});
      const e = configError(() => loadNodeKey(config, { TOLLWAY_PAYEE_KEY: key }));
      expect(e.shortMessage).to.equal("Both TOLLWAY_PAYEE_KEY and keyFile are set");
      expect(e.message).to.not.include(key.slice(2)).and.not.include(other.slice(2));
      expect(loadNodeKey(config, {})).to.equal(other);
      expect(loadNodeKey(parseNodeConfig(base, {}), { TOLLWAY_PAYEE_KEY: key })).to.equal(key);
      expect(configError(() => loadNodeKey(parseNodeConfig({ ...base, keyFile: path.join(dir, "missing.key") }, {}), {})).shortMessage).to.match(/^Cannot read key file/);
    });
  });
});
