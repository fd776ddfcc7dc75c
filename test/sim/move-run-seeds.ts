// Runs many simulation seeds of the page-move protocol and prints every failing seed with the
// command that replays it. `bun test/sim/move-run-seeds.ts --seeds 100000 [--from N] [--seed N]
// [--sabotage NAME] [--trace]`. Exits 1 if any seed failed.
import { parseSeedArgs, printVerdict, replayCommand, runSeedRange, type SeedCli } from "./kernel/seed-runner.ts";
import { checkMoveHistory } from "./move-checker.ts";
import { runMoveWorld, SABOTAGE_NAMES, type MoveSabotage } from "./move-world.ts";

const CLI: SeedCli = {
  script: "test/sim/move-run-seeds.ts",
  usage: `usage: bun test/sim/move-run-seeds.ts [--seeds N] [--from S] [--seed N] [--sabotage ${SABOTAGE_NAMES.join("|")}] [--trace] [--max-reported N]`,
  fromFlags: ["--from", "--start"],
  sabotageNames: SABOTAGE_NAMES,
};

function replayOne(seed: number, sabotage: MoveSabotage, trace: boolean): boolean {
  const history = runMoveWorld({ seed, sabotage, ...(trace ? { trace: (line: string) => console.log(line) } : {}) });
  const { plannedCrash, ...scenario } = history.scenario;
  console.log(
    `seed ${seed}: ${history.eventCount} events, ${history.writes.size} writes, ${history.reads.length} reads, ${history.flushes.length} flushes, ` +
      `${history.crashes} crashes, coordinator ${history.coordinator}`,
  );
  console.log(`  scenario ${JSON.stringify(scenario)} planned crash ${plannedCrash ? `${plannedCrash.point} #${plannedCrash.occurrence}` : "none"}`);
  console.log(`  steps committed ${history.stepsCommitted}/${history.scenario.stepsPlanned} in ${history.stepAttempts} attempts; answers ${JSON.stringify(Object.fromEntries(history.stepOutcomes))}`);
  return printVerdict(checkMoveHistory(history));
}

function main(): void {
  const args = parseSeedArgs(process.argv.slice(2), CLI);
  const sabotage: MoveSabotage = Object.fromEntries(args.sabotage.map((name) => [name, true]));
  if (args.seed !== undefined) process.exit(replayOne(args.seed, sabotage, args.trace) ? 0 : 1);
  let crashes = 0;
  let stepsCommitted = 0;
  let acked = 0;
  const { failures, seconds } = runSeedRange({
    from: args.from,
    count: args.seeds,
    maxReported: args.maxReported,
    label: "",
    check: (seed) => {
      const history = runMoveWorld({ seed, sabotage });
      crashes += history.crashes;
      stepsCommitted += history.stepsCommitted;
      for (const write of history.writes.values()) if (write.ackOrder !== Infinity) acked++;
      return checkMoveHistory(history);
    },
    replay: (seed) => replayCommand(CLI, seed, args.sabotage),
  });
  console.log(
    `${args.seeds} seeds from ${args.from} in ${seconds.toFixed(1)} s, ${failures} failing; ` +
      `${stepsCommitted} steps committed, ${crashes} crashes, ${acked} acknowledged writes`,
  );
  process.exit(failures === 0 ? 0 : 1);
}

main();
