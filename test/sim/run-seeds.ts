// Runs many simulation seeds of the snapshot protocol and prints every failing seed with the
// command that replays it. `bun test/sim/run-seeds.ts --mode timestamp --seeds 100000 [--seed N]
// [--start S] [--sabotage ignoreHold|ignoreCommitWait|allCutEarly|shortCommitWait|clockStepsAnytime] [--trace]`. Exits 1 if any seed failed.
import type { SnapshotMode } from "../../core/snapshot-messages.ts";
import { checkHistory } from "./snapshot-checker.ts";
import { runWorld, type Sabotage } from "./snapshot-world.ts";

interface Args {
  modes: SnapshotMode[];
  seeds: number;
  start: number;
  seed?: number;
  sabotage: Sabotage;
  trace: boolean;
  maxReported: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { modes: ["hold", "timestamp"], seeds: 10_000, start: 1, sabotage: {}, trace: false, maxReported: 20 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${flag} needs a value`);
      return v;
    };
    if (flag === "--mode") {
      const mode = value();
      if (mode !== "hold" && mode !== "timestamp" && mode !== "both") usage(`unknown mode '${mode}'`);
      args.modes = mode === "both" ? ["hold", "timestamp"] : [mode];
    } else if (flag === "--seeds") args.seeds = positive(value(), flag);
    else if (flag === "--start") args.start = positive(value(), flag);
    else if (flag === "--seed") args.seed = positive(value(), flag);
    else if (flag === "--max-reported") args.maxReported = positive(value(), flag);
    else if (flag === "--trace") args.trace = true;
    else if (flag === "--sabotage") {
      const kind = value();
      const kinds = ["ignoreHold", "ignoreCommitWait", "allCutEarly", "shortCommitWait", "clockStepsAnytime"] as const;
      if (!(kinds as readonly string[]).includes(kind)) usage(`unknown sabotage '${kind}'`);
      args.sabotage[kind as keyof Sabotage] = true;
    } else usage(`unknown argument '${flag}'`);
  }
  return args;
}

function positive(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) usage(`${flag} takes a non-negative integer, not '${text}'`);
  return n;
}

function usage(problem: string): never {
  console.error(`${problem}\nusage: bun test/sim/run-seeds.ts [--mode hold|timestamp|both] [--seeds N] [--start S] [--seed N] [--sabotage ignoreHold|ignoreCommitWait|allCutEarly|shortCommitWait|clockStepsAnytime] [--trace]`);
  process.exit(2);
}

function replayCommand(mode: SnapshotMode, seed: number, sabotage: Sabotage): string {
  const flags = Object.keys(sabotage).map((k) => ` --sabotage ${k}`).join("");
  return `bun test/sim/run-seeds.ts --mode ${mode} --seed ${seed}${flags} --trace`;
}

function replayOne(mode: SnapshotMode, seed: number, args: Args): boolean {
  const history = runWorld({ seed, mode, sabotage: args.sabotage, ...(args.trace ? { trace: (line: string) => console.log(line) } : {}) });
  const violations = checkHistory(history);
  console.log(`seed ${seed} mode ${mode}: ${history.eventCount} events, ${history.writes.size} writes, scenario ${JSON.stringify(history.scenario)}`);
  for (const [id, outcomes] of history.outcomes) console.log(`  ${id}: ${outcomes.map((o) => (o.ok ? "ok" : `${o.code} ${o.message}`)).join(" / ")}`);
  for (const v of violations) console.log(`  VIOLATION ${v}`);
  console.log(violations.length === 0 ? "  PASS" : "  FAIL");
  return violations.length === 0;
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  if (args.seed !== undefined) {
    const ok = args.modes.map((mode) => replayOne(mode, args.seed!, args)).every(Boolean);
    process.exit(ok ? 0 : 1);
  }
  let failed = 0;
  for (const mode of args.modes) {
    const startedAtMs = performance.now();
    let snapshotsOk = 0;
    let snapshotsFailed = 0;
    let modeFailures = 0;
    for (let seed = args.start; seed < args.start + args.seeds; seed++) {
      const history = runWorld({ seed, mode, sabotage: args.sabotage });
      for (const outcomes of history.outcomes.values()) outcomes.some((o) => o.ok) ? snapshotsOk++ : snapshotsFailed++;
      const violations = checkHistory(history);
      if (violations.length === 0) continue;
      modeFailures++;
      if (modeFailures <= args.maxReported) console.log(`FAIL mode ${mode} seed ${seed}: ${violations[0]}\n  replay: ${replayCommand(mode, seed, args.sabotage)}`);
    }
    const seconds = (performance.now() - startedAtMs) / 1000;
    console.log(`mode ${mode}: ${args.seeds} seeds from ${args.start} in ${seconds.toFixed(1)} s, ${modeFailures} failing; snapshots ${snapshotsOk} ok, ${snapshotsFailed} failed cleanly`);
    failed += modeFailures;
  }
  process.exit(failed === 0 ? 0 : 1);
}

main();
