// What every simulation's seed runner shares: its command line (how many seeds from where, one
// seed to replay with a trace, deliberately broken rules by name), the loop that judges each seed
// and prints the first failing ones with the command that replays them, and the exit status.

export interface SeedArgs {
  seeds: number;
  from: number;
  /** Replay just this seed (with details; with a trace if asked). */
  seed?: number;
  sabotage: string[];
  trace: boolean;
  maxReported: number;
}

export interface SeedCli {
  /** The script, as the replay command names it: `test/sim/run-seeds.ts`. */
  script: string;
  usage: string;
  /** Flags that set the first seed (`--from`, and `--start` where a runner always took that). */
  fromFlags: string[];
  sabotageNames: readonly string[];
  /** The runner's own flags, each taking one value. */
  extraFlags?: Record<string, (value: string) => void>;
}

export function parseSeedArgs(argv: string[], cli: SeedCli): SeedArgs {
  const args: SeedArgs = { seeds: 10_000, from: 1, sabotage: [], trace: false, maxReported: 20 };
  const fail = (problem: string): never => {
    console.error(`${problem}\n${cli.usage}`);
    process.exit(2);
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = (): string => argv[++i] ?? fail(`${flag} needs a value`);
    const count = (): number => {
      const text = value();
      const n = Number(text);
      return Number.isSafeInteger(n) && n >= 0 ? n : fail(`${flag} takes a non-negative integer, not '${text}'`);
    };
    if (flag === "--seeds") args.seeds = count();
    else if (cli.fromFlags.includes(flag)) args.from = count();
    else if (flag === "--seed") args.seed = count();
    else if (flag === "--max-reported") args.maxReported = count();
    else if (flag === "--trace") args.trace = true;
    else if (flag === "--sabotage") {
      const name = value();
      if (!cli.sabotageNames.includes(name)) fail(`unknown sabotage '${name}'`);
      args.sabotage.push(name);
    } else if (flag === "--help" || flag === "-h") {
      console.log(cli.usage);
      process.exit(0);
    } else if (cli.extraFlags?.[flag]) cli.extraFlags[flag]!(value());
    else fail(`unknown argument '${flag}'`);
  }
  return args;
}

/** The command that replays one seed with a trace; `flags` go before the seed (e.g. the mode). */
export function replayCommand(cli: SeedCli, seed: number, sabotage: string[], flags = ""): string {
  const broken = sabotage.map((name) => ` --sabotage ${name}`).join("");
  return `bun ${cli.script}${flags} --seed ${seed}${broken} --trace`;
}

export interface SeedRange {
  from: number;
  count: number;
  maxReported: number;
  /** Put before "seed N" in a failure line, e.g. "mode hold ". */
  label: string;
  /** Runs and judges one seed: its violations, none if it passed. */
  check: (seed: number) => string[];
  replay: (seed: number) => string;
}

/** Judges every seed of the range; prints the first failures; returns how many failed and the time taken. */
export function runSeedRange(range: SeedRange): { failures: number; seconds: number } {
  const startedAtMs = performance.now();
  let failures = 0;
  for (let seed = range.from; seed < range.from + range.count; seed++) {
    const violations = range.check(seed);
    if (violations.length === 0) continue;
    failures++;
    if (failures <= range.maxReported) console.log(`FAIL ${range.label}seed ${seed}: ${violations[0]}\n  replay: ${range.replay(seed)}`);
  }
  return { failures, seconds: (performance.now() - startedAtMs) / 1000 };
}

/** The verdict of one replayed seed, after the runner printed its details. */
export function printVerdict(violations: string[]): boolean {
  for (const violation of violations) console.log(`  VIOLATION ${violation}`);
  console.log(violations.length === 0 ? "  PASS" : "  FAIL");
  return violations.length === 0;
}
