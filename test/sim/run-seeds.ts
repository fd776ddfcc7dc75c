// Runs many simulation seeds of the snapshot protocol and prints every failing seed with the
// command that replays it. `bun test/sim/run-seeds.ts --mode timestamp --seeds 100000 [--seed N]
// [--start S] [--sabotage ignoreHold|ignoreCommitWait|allCutEarly|shortCommitWait|clockStepsAnytime] [--trace]`. Exits 1 if any seed failed.
import type { SnapshotMode } from "../../core/snapshot/snapshot-messages.ts";
import { parseSeedArgs, printVerdict, replayCommand, runSeedRange, type SeedCli } from "./kernel/seed-runner.ts";
import { checkHistory } from "./snapshot-checker.ts";
import { runWorld, SABOTAGE_NAMES, type Sabotage } from "./snapshot-world.ts";

let modes: SnapshotMode[] = ["hold", "timestamp"];
const CLI: SeedCli = {
  script: "test/sim/run-seeds.ts",
  usage: `usage: bun test/sim/run-seeds.ts [--mode hold|timestamp|both] [--seeds N] [--start S] [--seed N] [--sabotage ${SABOTAGE_NAMES.join("|")}] [--trace] [--max-reported N]`,
  fromFlags: ["--start", "--from"],
  sabotageNames: SABOTAGE_NAMES,
  extraFlags: {
    "--mode": (mode) => {
      if (mode !== "hold" && mode !== "timestamp" && mode !== "both") {
        console.error(`unknown mode '${mode}'\n${CLI.usage}`);
        process.exit(2);
      }
      modes = mode === "both" ? ["hold", "timestamp"] : [mode];
    },
  },
};

function replayOne(mode: SnapshotMode, seed: number, sabotage: Sabotage, trace: boolean): boolean {
  const history = runWorld({ seed, mode, sabotage, ...(trace ? { trace: (line: string) => console.log(line) } : {}) });
  console.log(`seed ${seed} mode ${mode}: ${history.eventCount} events, ${history.writes.size} writes, scenario ${JSON.stringify(history.scenario)}`);
  for (const [id, outcomes] of history.outcomes) console.log(`  ${id}: ${outcomes.map((o) => (o.ok ? "ok" : `${o.code} ${o.message}`)).join(" / ")}`);
  return printVerdict(checkHistory(history));
}

function main(): void {
  const args = parseSeedArgs(process.argv.slice(2), CLI);
  const sabotage: Sabotage = Object.fromEntries(args.sabotage.map((name) => [name, true]));
  if (args.seed !== undefined) {
    const ok = modes.map((mode) => replayOne(mode, args.seed!, sabotage, args.trace)).every(Boolean);
    process.exit(ok ? 0 : 1);
  }
  let failed = 0;
  for (const mode of modes) {
    let snapshotsOk = 0;
    let snapshotsFailed = 0;
    const { failures, seconds } = runSeedRange({
      from: args.from,
      count: args.seeds,
      maxReported: args.maxReported,
      label: `mode ${mode} `,
      check: (seed) => {
        const history = runWorld({ seed, mode, sabotage });
        for (const outcomes of history.outcomes.values()) outcomes.some((o) => o.ok) ? snapshotsOk++ : snapshotsFailed++;
        return checkHistory(history);
      },
      replay: (seed) => replayCommand(CLI, seed, args.sabotage, ` --mode ${mode}`),
    });
    console.log(`mode ${mode}: ${args.seeds} seeds from ${args.from} in ${seconds.toFixed(1)} s, ${failures} failing; snapshots ${snapshotsOk} ok, ${snapshotsFailed} failed cleanly`);
    failed += failures;
  }
  process.exit(failed === 0 ? 0 : 1);
}

main();
