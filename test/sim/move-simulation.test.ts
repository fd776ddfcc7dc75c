// Many seeded runs of the page-move protocol (core/move/page-move.ts driven through a simulated group
// with crashes at every step, lossy links and stale tables), each judged by move-checker.ts; plus
// proof that the checker fails runs with a deliberately broken rule, and that a seed replays
// identically. A failing seed replays with `bun test/sim/move-run-seeds.ts --seed N --trace`.
import { describe, expect, test } from "bun:test";
import { checkMoveHistory } from "./move-checker.ts";
import { CRASH_POINTS, runMoveWorld, type MoveHistory, type MoveSabotage } from "./move-world.ts";

const SEEDS = 1000;

describe("page-move simulation", () => {
  test(`${SEEDS} seeds with crashes at every step, loss and stale tables keep one owner per page and every acknowledged write`, () => {
    const failures: string[] = [];
    const crashPoints = new Set<string>();
    let stepsCommitted = 0;
    let stepsRefusedOrFailed = 0;
    let acked = 0;
    let ackedWithoutFua = 0;
    let flushesOk = 0;
    let readsAnswered = 0;
    let crashes = 0;
    for (let seed = 1; seed <= SEEDS; seed++) {
      const history = runMoveWorld({ seed });
      const violations = checkMoveHistory(history);
      if (violations.length > 0) failures.push(`seed ${seed}: ${violations[0]}`);
      stepsCommitted += history.stepsCommitted;
      for (const [outcome, count] of history.stepOutcomes) if (outcome !== "ok") stepsRefusedOrFailed += count;
      for (const write of history.writes.values()) {
        if (write.ackOrder === Infinity) continue;
        acked++;
        if (!write.fua) ackedWithoutFua++;
      }
      flushesOk += history.flushes.filter((flush) => flush.ackOrder !== Infinity).length;
      readsAnswered += history.reads.filter((read) => read.returnOrder !== Infinity).length;
      crashes += history.crashes;
      if (history.scenario.plannedCrash) crashPoints.add(history.scenario.plannedCrash.point);
    }
    expect(failures.slice(0, 5)).toEqual([]);
    // The runs must have exercised the protocol: many committed steps, steps that failed and were
    // retried, crashes at every named point, and real client traffic.
    expect(stepsCommitted).toBeGreaterThan(SEEDS * 3);
    expect(stepsRefusedOrFailed).toBeGreaterThan(SEEDS / 10);
    expect(crashes).toBeGreaterThan(SEEDS);
    expect([...crashPoints].sort()).toEqual([...CRASH_POINTS].sort());
    expect(acked / SEEDS).toBeGreaterThan(20);
    expect(ackedWithoutFua).toBeGreaterThan(acked / 3);
    expect(flushesOk / SEEDS).toBeGreaterThan(3);
    expect(readsAnswered / SEEDS).toBeGreaterThan(5);
  }, 60_000);

  // Each with a seed known to expose it in this version of the world's random stream (tried first,
  // so the test stays fast); if the world changes, the search goes on through seeds 1..4000.
  const BROKEN: [string, MoveSabotage, RegExp, number][] = [
    ["a source that commits before the target's install is durable", { commitBeforeInstalled: true }, /is lost|returned/, 960],
    ["a source that unfreezes the pages before the commit", { unfreezeBeforeCommit: true }, /is lost|returned/, 49],
    ["a target that answers before its copies are durable", { targetSkipsSync: true }, /is lost|returned/, 43],
    ["a node that drops, on restart, pages installed for a version it has not seen", { restartRemovesByTableOnly: true }, /is lost|returned/, 146],
    ["a coordinator that plans the next step on a table older than the last commit", { coordinatorForgetsTable: true }, /committed twice|claimed by/, 25],
    ["a source that builds the new version on its own stale table", { sourceIgnoresVersion: true }, /did not own|in one step|claimed by/, 23],
    ["an entry that owes a flush to the next hop instead of the node that applied the write", { flushMissesForwardedWrites: true }, /is lost|returned/, 4012],
    ["a flush that succeeds at a peer which restarted (and lost writes) since", { flushIgnoresRestart: true }, /is lost|returned/, 79],
    ["a flush that clears the node's debts as it starts, under a concurrent flush", { flushClearsDebtsAtStart: true }, /is lost|returned/, 3060],
  ];
  for (const [what, sabotage, expected, knownSeed] of BROKEN) {
    test(`the checker catches ${what}`, () => {
      const seed = firstCaught(sabotage, expected, knownSeed);
      expect(seed).toBeDefined();
      // The same run with the rule intact passes: the broken rule is what the checker caught.
      expect(checkMoveHistory(runMoveWorld({ seed: seed! }))).toEqual([]);
    }, 60_000);
  }

  test("a seed replays identically", () => {
    expect(summarize(runMoveWorld({ seed: 4242 }))).toEqual(summarize(runMoveWorld({ seed: 4242 })));
  });
});

/** The first seed (`knownSeed`, then 1..4000) whose run the checker rejects with a matching violation. */
function firstCaught(sabotage: MoveSabotage, expected: RegExp, knownSeed: number): number | undefined {
  for (const seed of [knownSeed, ...Array.from({ length: 4000 }, (_, i) => i + 1)]) {
    const violations = checkMoveHistory(runMoveWorld({ seed, sabotage }));
    if (violations.some((violation) => expected.test(violation))) return seed;
  }
  return undefined;
}

function summarize(history: MoveHistory): string {
  return JSON.stringify({
    events: history.eventCount,
    writes: [...history.writes.values()],
    reads: history.reads,
    timeline: history.timeline,
    final: history.final.map((node) => ({ ...node, memoryPages: [...node.memoryPages], durablePages: [...node.durablePages] })),
  });
}
