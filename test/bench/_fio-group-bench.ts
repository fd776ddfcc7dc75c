// What the fio-driven benchmarks on a three-node group share (forwarding.ts, replicas.ts): the
// command line (a volume size, a runtime for the time-based jobs, interleaved rounds, --json,
// --bin, --help; a bad flag prints the usage and exits 2, as the CLI does) and the run around
// the measures (the binary built, three nodes started, everything stopped whatever happens).
import { parseArgs } from "node:util";
import { parseSize } from "../../core/geometry.ts";
import type { TestNode } from "../integration/_cluster.ts";
import { Resources, startGroup } from "./_bench-processes.ts";
import { buildShoal, runBench, sourceRevision } from "./_bench.ts";

const MiB = 1024 * 1024;

export interface FioBenchOptions {
  sizeBytes: number;
  runtimeSeconds: number;
  rounds: number;
  json: boolean;
  bin?: string;
}

export function parseFioBenchOptions(usage: string, defaults: { size: string; runtime: string; rounds: string }): FioBenchOptions {
  const refuse = (message: string): never => {
    console.error(`${message}\n${usage}`);
    process.exit(2);
  };
  let values;
  try {
    ({ values } = parseArgs({
      args: Bun.argv.slice(2),
      options: {
        size: { type: "string", default: defaults.size },
        runtime: { type: "string", default: defaults.runtime },
        rounds: { type: "string", default: defaults.rounds },
        json: { type: "boolean", default: false },
        bin: { type: "string" },
        help: { type: "boolean", default: false },
      },
      strict: true,
    }));
  } catch (err) {
    return refuse((err as Error).message);
  }
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  let sizeBytes = 0;
  try {
    sizeBytes = parseSize(values.size!);
  } catch (err) {
    refuse(`--size ${values.size}: ${(err as Error).message}`);
  }
  const runtimeSeconds = Number(values.runtime);
  const rounds = Number(values.rounds);
  if (sizeBytes < 16 * MiB || sizeBytes % MiB !== 0) refuse(`--size ${values.size}: give a whole number of MiB, at least 16M`);
  if (!Number.isInteger(runtimeSeconds) || runtimeSeconds < 1 || runtimeSeconds > 600) refuse(`--runtime ${values.runtime}: give 1..600 seconds`);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 9) refuse(`--rounds ${values.rounds}: give 1..9`);
  return { sizeBytes, runtimeSeconds, rounds, json: values.json!, bin: values.bin };
}

/** The lower median: with an even count it never flatters. */
export function lowerMedian(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}

export interface GroupRun {
  resources: Resources;
  nodes: TestNode[];
  options: FioBenchOptions;
  revision: string;
}

/** Parses the command line, builds the binary, starts three nodes and runs `measure` under runBench's watchdog. */
export async function runFioGroupBench(usage: string, defaults: { size: string; runtime: string; rounds: string }, measure: (run: GroupRun) => Promise<void>): Promise<void> {
  const options = parseFioBenchOptions(usage, defaults);
  const resources = new Resources();
  await runBench({ nodes: resources.nodes, cleanup: () => resources.cleanup() }, 30 * 60_000, async () => {
    const revision = await sourceRevision();
    process.env.SHOAL_BIN = await buildShoal(resources.root, options.bin);
    const nodes = await startGroup(resources, 3);
    await measure({ resources, nodes, options, revision });
  });
}
