/**
 * Compiled contract artifacts (ABI and creation bytecode) read from Hardhat's artifacts folder, so code that runs
 * outside the Hardhat runtime (a standalone viem script, the node) deploys exactly what `hardhat compile` built.
 */
import fs from "node:fs";
import path from "node:path";
import type { Abi, Hex } from "viem";
import { TollwayError, type TollwayErrorParameters } from "../protocol/errors";

/** Base of the errors thrown while loading artifacts and deploying. Branch on the class or on `code`. */
export class ChainSetupError extends TollwayError {
  override name = "ChainSetupError";
  /** Stable machine-readable code; never parse `message`. */
  readonly code: string;

  constructor(code: string, shortMessage: string, params: TollwayErrorParameters = {}) {
    super(shortMessage, params);
    this.code = code;
  }
}

/** The artifact file is missing or unreadable: the contracts were not compiled (or compiled elsewhere). */
export class ArtifactNotFoundError extends ChainSetupError {
  override name = "ArtifactNotFoundError";
  readonly contractName: string;
  readonly path: string;

  constructor({ contractName, path: file, cause }: { contractName: string; path: string; cause?: unknown }) {
    super("ARTIFACT_NOT_FOUND", `No compiled artifact for ${contractName}: run \`npx hardhat compile\`.`, {
      metaMessages: [`Looked for: ${file}`],
      cause,
    });
    this.contractName = contractName;
    this.path = file;
  }
}

/** The artifact file exists but is not a deployable Hardhat artifact (no ABI, empty or linked bytecode). */
export class InvalidArtifactError extends ChainSetupError {
  override name = "InvalidArtifactError";
  readonly contractName: string;
  readonly path: string;

  constructor({ contractName, path: file, reason }: { contractName: string; path: string; reason: string }) {
    super("INVALID_ARTIFACT", `The artifact of ${contractName} is not deployable: ${reason}.`, {
      metaMessages: [`File: ${file}`, "Recompile with `npx hardhat compile --force`."],
    });
    this.contractName = contractName;
    this.path = file;
  }
}

/** Source path (relative to the artifacts folder) of each contract Tollway deploys. */
const ARTIFACT_PATHS = {
  BatchSettlement: "contracts/BatchSettlement.sol/BatchSettlement.json",
  ERC3009DepositCollector: "contracts/collectors/ERC3009DepositCollector.sol/ERC3009DepositCollector.json",
  PermitDepositCollector: "contracts/collectors/PermitDepositCollector.sol/PermitDepositCollector.json",
  TestUSDC: "contracts/test/TestUSDC.sol/TestUSDC.json",
} as const;

/** A contract whose artifact `loadArtifact` can read. */
export type TollwayContractName = keyof typeof ARTIFACT_PATHS;

/** ABI and bytecode of one compiled contract. */
export type Artifact = {
  contractName: TollwayContractName;
  abi: Abi;
  /** Creation code (constructor arguments are appended by the deployer). */
  bytecode: Hex;
  /** Runtime code as compiled (immutables still zero). */
  deployedBytecode: Hex;
};

export type LoadArtifactParameters = {
  /** Hardhat's artifacts folder; defaults to `<repo root>/artifacts`. */
  artifactsDir?: string;
};
export type LoadArtifactReturnType = Artifact;
export type LoadArtifactErrorType = ArtifactNotFoundError | InvalidArtifactError;

/** The repository root: the nearest folder above this file holding package.json (works from dist/ too). */
function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, "package.json"))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) return path.resolve(__dirname, "..", "..");
    dir = parent;
  }
}

/** Hardhat's artifacts folder of this repository. */
export function defaultArtifactsDir(): string {
  return path.join(repoRoot(), "artifacts");
}

const cache = new Map<string, Artifact>();

function isHex(value: unknown): value is Hex {
  return typeof value === "string" && /^0x(?:[0-9a-fA-F]{2})*$/.test(value);
}

/**
 * Loads the ABI and bytecode of a compiled Tollway contract from Hardhat's artifacts folder.
 *
 * @param name The contract: "BatchSettlement", "ERC3009DepositCollector", "PermitDepositCollector" or "TestUSDC".
 * @param parameters Optional `artifactsDir` (defaults to `<repo root>/artifacts`).
 * @returns `{ contractName, abi, bytecode, deployedBytecode }`, cached per file.
 * @throws {ArtifactNotFoundError} when the contracts have not been compiled.
 * @throws {InvalidArtifactError} when the file holds no deployable bytecode.
 * @example
 * const { abi, bytecode } = loadArtifact("BatchSettlement");
 * const hash = await walletClient.deployContract({ abi, bytecode, account, chain });
 */
export function loadArtifact(name: TollwayContractName, parameters: LoadArtifactParameters = {}): LoadArtifactReturnType {
  const relative = ARTIFACT_PATHS[name];
  if (relative === undefined) {
    throw new ArtifactNotFoundError({ contractName: String(name), path: "(not a Tollway contract)" });
  }
  const file = path.join(parameters.artifactsDir ?? defaultArtifactsDir(), relative);
  const cached = cache.get(file);
  if (cached) return cached;

  let raw: string;
  try {
    raw = fs.readFileSync(file, "utf8");
  } catch (cause) {
    throw new ArtifactNotFoundError({ contractName: name, path: file, cause });
  }
  let json: { abi?: unknown; bytecode?: unknown; deployedBytecode?: unknown; linkReferences?: unknown };
  try {
    json = JSON.parse(raw) as typeof json;
  } catch {
    throw new InvalidArtifactError({ contractName: name, path: file, reason: "not valid JSON" });
  }
  if (!Array.isArray(json.abi)) throw new InvalidArtifactError({ contractName: name, path: file, reason: "no ABI" });
  if (!isHex(json.bytecode) || json.bytecode === "0x") {
    throw new InvalidArtifactError({ contractName: name, path: file, reason: "empty or non-hex bytecode" });
  }
  if (!isHex(json.deployedBytecode)) {
    throw new InvalidArtifactError({ contractName: name, path: file, reason: "non-hex deployedBytecode" });
  }
  if (json.linkReferences && Object.keys(json.linkReferences).length > 0) {
    throw new InvalidArtifactError({ contractName: name, path: file, reason: "it needs linked libraries" });
  }

  const artifact: Artifact = {
    contractName: name,
    abi: json.abi as Abi,
    bytecode: json.bytecode,
    deployedBytecode: json.deployedBytecode,
  };
  cache.set(file, artifact);
  return artifact;
}
