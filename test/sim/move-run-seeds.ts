// Runs many simulation seeds of the page-move protocol and prints every failing seed with the
// command that replays it. `bun test/sim/move-run-seeds.ts --seeds 100000 [--from N] [--seed N]
// [--sabotage NAME] [--trace]`. Exits 1 if any seed failed.
import { checkMoveHistory } from "./move-checker.ts";
import { runMoveWorld, SABOTAGE_NAMES, type MoveSabotage, type SabotageName } from "./move-world.ts";

interface Args {
  seeds: number;
  from: number;
  seed?: number;
  sabotage: MoveSabotage;
  trace: boolean;
  maxReported: number;
}

const USAGE = `usage: bun test/sim/move-run-seeds.ts [--seeds N] [--from S] [--seed N] [--sabotage ${SABOTAGE_NAMES.join("|")}] [--trace] [--max-reported N]`;

function parseArgs(argv: string[]): Args {
  const args: Args = { seeds: 10_000, from: 1, sabotage: {}, trace: false, maxReported: 20 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${flag} needs a value`);
      return v;
    };
    if (flag === "--seeds") args.seeds = nonNegative(value(), flag);
    else if (flag === "--from") args.from = nonNegative(value(), flag);
    else if (flag === "--seed") args.seed = nonNegative(value(), flag);
    else if (flag === "--max-reported") args.maxReported = nonNegative(value(), flag);
    else if (flag === "--trace") args.trace = true;
    else if (flag === "--sabotage") {
      const name = value();
      if (!SABOTAGE_NAMES.includes(name as SabotageName)) usage(`unknown sabotage '${name}'`);
      args.sabotage[name as SabotageName] = true;
    } else if (flag === "--help" || flag === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else usage(`unknown argument '${flag}'`);
  }
  return args;
}

function nonNegative(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) usage(`${flag} takes a non-negative integer, not '${text}'`);
  return n;
}

function usage(problem: string): never {
  console.error(`${problem}\n${USAGE}`);
  process.exit(2);
}

function replayCommand(seed: number, sabotage: MoveSabotage): string {
  const flags = Object.keys(sabotage).map((name) => ` --sabotage ${name}`).join("");
  return `bun test/sim/move-run-seeds.ts --seed ${seed}${flags} --trace`;
}

function replayOne(seed: number, args: Args): boolean {
  const history = runMoveWorld({ seed, sabotage: args.sabotage, ...(args.trace ? { trace: (line: string) => console.log(line) } : {}) });
  const violations = checkMoveHistory(history);
  const { plannedCrash, ...scenario } = history.scenario;
  console.log(
    `seed ${seed}: ${history.eventCount} events, ${history.writes.size} writes, ${history.reads.length} reads, ${history.flushes.length} flushes, ` +
      `${history.crashes} crashes, coordinator ${history.coordinator}`,
  );
  console.log(`  scenario ${JSON.stringify(scenario)} planned crash ${plannedCrash ? `${plannedCrash.point} #${plannedCrash.occurrence}` : "none"}`);
  console.log(`  steps committed ${history.stepsCommitted}/${history.scenario.stepsPlanned} in ${history.stepAttempts} attempts; answers ${JSON.stringify(Object.fromEntries(history.stepOutcomes))}`);
  for (const v of violations) console.log(`  VIOLATION ${v}`);
  console.log(violations.length === 0 ? "  PASS" : "  FAIL");
  return violations.length === 0;
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  if (args.seed !== undefined) process.exit(replayOne(args.seed, args) ? 0 : 1);
  const startedAtMs = performance.now();
  let failures = 0;
  let crashes = 0;
  let stepsCommitted = 0;
  let acked = 0;
  for (let seed = args.from; seed < args.from + args.seeds; seed++) {
    const history = runMoveWorld({ seed, sabotage: args.sabotage });
    crashes += history.crashes;
    stepsCommitted += history.stepsCommitted;
    for (const write of history.writes.values()) if (write.ackOrder !== Infinity) acked++;
    const violations = checkMoveHistory(history);
    if (violations.length === 0) continue;
    failures++;
    if (failures <= args.maxReported) console.log(`FAIL seed ${seed}: ${violations[0]}\n  replay: ${replayCommand(seed, args.sabotage)}`);
  }
  const seconds = (performance.now() - startedAtMs) / 1000;
  console.log(
    `${args.seeds} seeds from ${args.from} in ${seconds.toFixed(1)} s, ${failures} failing; ` +
      `${stepsCommitted} steps committed, ${crashes} crashes, ${acked} acknowledged writes`,
  );
  process.exit(failures === 0 ? 0 : 1);
}

main();
