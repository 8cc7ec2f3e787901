/**
 * Secret files and private keys, one way for every front (the node's config, the CLI, the TLS key): a file
 * must be readable by its owner only, and a key comes from an environment variable or a file, never both
 * (an exported key must not silently replace the file a command or config names). Failures are
 * ConfigErrors (the CLI exits 2); no message ever contains the secret.
 */
import fs from "node:fs";
import type { Hex } from "viem";
import { ConfigError } from "../protocol/errors";

/** Reads `file` (a private key, a TLS key) after checking that group and others cannot read it. */
export function readOwnerOnlyFile(file: string, what = "key file"): Buffer {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (cause) {
    throw new ConfigError(`Cannot read ${what} ${file}`, { cause, metaMessages: [(cause as Error).message] });
  }
  if ((st.mode & 0o077) !== 0) throw new ConfigError(`${what[0]!.toUpperCase()}${what.slice(1)} ${file} must be readable by its owner only (chmod 600)`);
  return fs.readFileSync(file);
}

/**
 * A 32-byte private key from `env[envName]` or from `file` (mode 0600). `setting` names the file's
 * option in messages ("--key-file", "keyFile").
 * @example loadPrivateKey({ envName: "TOLLWAY_PAYEE_KEY", file: config.keyFile, setting: "keyFile" })
 */
export function loadPrivateKey(o: { envName: string; file?: string; setting: string; env?: NodeJS.ProcessEnv }): Hex {
  const env = o.env ?? process.env;
  let key = env[o.envName];
  if (key && o.file) {
    throw new ConfigError(`Both ${o.envName} and ${o.setting} are set`, { metaMessages: [`Unset ${o.envName} to use ${o.file}, or drop ${o.setting}.`] });
  }
  if (!key && o.file) key = readOwnerOnlyFile(o.file).toString("utf8").trim();
  if (!key) throw new ConfigError(`No key: set ${o.envName} or ${o.setting} (a file of mode 0600)`);
  if (!/^0x[0-9a-fA-F]{64}$/.test(key)) throw new ConfigError("The key must be 32 bytes of 0x-prefixed hex");
  return key as Hex;
}
