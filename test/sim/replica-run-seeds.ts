// Runs many simulation seeds of the replica-set protocol (core/replica/) and prints every failing
// seed with the command that replays it. `bun test/sim/replica-run-seeds.ts --mode r2|r3|all
// --seeds 5000 [--from N] [--seed N] [--sabotage NAME] [--trace]`. Exits 1 if any seed failed.
import { parseSeedArgs, printVerdict, replayCommand, runSeedRange, type SeedCli } from "./kernel/seed-runner.ts";
import { checkReplicaHistory } from "./replica-checker.ts";
import { REPLICA_LINKS, REPLICA_MODES, runReplicaWorld, SABOTAGE_NAMES, type ReplicaLinks, type ReplicaMode, type ReplicaSabotage } from "./replica-world.ts";

let modes: ReplicaMode[] = [...REPLICA_MODES];
/** --links: see ReplicaWorldOptions.links (tcp: the node's mesh and overwriting store). */
let links: ReplicaLinks = "reorder";
const CLI: SeedCli = {
  script: "test/sim/replica-run-seeds.ts",
  usage: `usage: bun test/sim/replica-run-seeds.ts [--mode ${REPLICA_MODES.join("|")}|all] [--links ${REPLICA_LINKS.join("|")}] [--seeds N] [--from S] [--seed N] [--sabotage ${SABOTAGE_NAMES.join("|")}] [--trace] [--max-reported N]`,
  fromFlags: ["--from"],
  sabotageNames: SABOTAGE_NAMES,
  extraFlags: {
    "--links": (value) => {
      if (!(REPLICA_LINKS as string[]).includes(value)) {
        console.error(`--links '${value}': give ${REPLICA_LINKS.join(", ")}\n${CLI.usage}`);
        process.exit(2);
      }
      links = value as ReplicaLinks;
    },
    "--mode": (value) => {
      if (value === "all") modes = [...REPLICA_MODES];
      else if ((REPLICA_MODES as string[]).includes(value)) modes = [value as ReplicaMode];
      else {
        console.error(`unknown mode '${value}'\n${CLI.usage}`);
        process.exit(2);
      }
    },
  },
};

function replayOne(seed: number, mode: ReplicaMode, sabotage: ReplicaSabotage, trace: boolean): boolean {
  const history = runReplicaWorld({ seed, mode, links, sabotage, ...(trace ? { trace: (line: string) => console.log(line) } : {}) });
  const acked = history.writes.filter((write) => write.ackOrder !== Infinity).length;
  console.log(
    `mode ${mode} seed ${seed}: ${history.eventCount} events, ${acked}/${history.writes.length} writes acknowledged, ${history.reads.length} reads, ` +
      `${history.setChanges} set changes, ${history.crashes} crashes, ${history.pauses} pauses, ${history.partitions} partitions`,
  );
  console.log(`  scenario ${JSON.stringify(history.scenario)}`);
  return printVerdict(checkReplicaHistory(history));
}

function main(): void {
  const args = parseSeedArgs(process.argv.slice(2), CLI);
  const sabotage: ReplicaSabotage = Object.fromEntries(args.sabotage.map((name) => [name, true]));
  if (args.seed !== undefined) {
    const ok = modes.map((mode) => replayOne(args.seed!, mode, sabotage, args.trace)).every(Boolean);
    process.exit(ok ? 0 : 1);
  }
  let failing = 0;
  for (const mode of modes) {
    let setChanges = 0;
    let acked = 0;
    let crashes = 0;
    const { failures, seconds } = runSeedRange({
      from: args.from,
      count: args.seeds,
      maxReported: args.maxReported,
      label: `mode ${mode} `,
      check: (seed) => {
        const history = runReplicaWorld({ seed, mode, links, sabotage });
        setChanges += history.setChanges;
        crashes += history.crashes;
        acked += history.writes.filter((write) => write.ackOrder !== Infinity).length;
        return checkReplicaHistory(history);
      },
      replay: (seed) => replayCommand(CLI, seed, args.sabotage, ` --mode ${mode}${links === "reorder" ? "" : ` --links ${links}`}`),
    });
    failing += failures;
    console.log(`mode ${mode}: ${args.seeds} seeds from ${args.from} in ${seconds.toFixed(1)} s, ${failures} failing; ${setChanges} set changes chosen, ${crashes} crashes, ${acked} acknowledged writes`);
  }
  process.exit(failing === 0 ? 0 : 1);
}

main();
