// Many seeded runs of the snapshot protocol per mode, each judged by the checker; plus proof that
// the checker can fail (sabotaged nodes) and that a seed replays identically. A failing seed
// here replays with `bun test/sim/run-seeds.ts --mode MODE --seed N --trace`.
import { describe, expect, test } from "bun:test";
import type { SnapshotMode } from "../../core/snapshot/snapshot-messages.ts";
import { checkHistory } from "./snapshot-checker.ts";
import { runWorld, type Sabotage } from "./snapshot-world.ts";

const SEEDS_PER_MODE = 5000;
const MODES: SnapshotMode[] = ["hold", "timestamp"];

describe("snapshot simulation", () => {
  for (const mode of MODES) {
    test(`${mode} mode: ${SEEDS_PER_MODE} seeds with loss, duplication, skew and crashes all yield single cuts`, () => {
      const failures: string[] = [];
      let snapshotsOk = 0;
      let snapshotsFailed = 0;
      let faultFreeRuns = 0;
      let delayedRecordRuns = 0;
      let refusedCuts = 0;
      let writes = 0;
      for (let seed = 1; seed <= SEEDS_PER_MODE; seed++) {
        const history = runWorld({ seed, mode });
        const violations = checkHistory(history);
        if (violations.length > 0) failures.push(`seed ${seed}: ${violations[0]}`);
        for (const outcomes of history.outcomes.values()) outcomes.some((o) => o.ok) ? snapshotsOk++ : snapshotsFailed++;
        if (history.scenario.faultFree) faultFreeRuns++;
        if (history.scenario.recordSyncMaxMs > 0) delayedRecordRuns++;
        for (const outcomes of history.outcomes.values()) if (outcomes.some((o) => o.code === "TOO_LARGE")) refusedCuts++;
        writes += history.writes.size;
      }
      expect(failures.slice(0, 5)).toEqual([]);
      // The runs must have exercised both outcomes, with real write traffic and fault-free runs
      // (where the checker also demands liveness).
      expect(snapshotsOk).toBeGreaterThan(SEEDS_PER_MODE);
      expect(snapshotsFailed).toBeGreaterThan(SEEDS_PER_MODE / 20);
      expect(faultFreeRuns).toBeGreaterThan(SEEDS_PER_MODE / 5);
      // Records that take a while to reach the disk, so what rests on them must wait (the runner's rule).
      expect(delayedRecordRuns).toBeGreaterThan(SEEDS_PER_MODE / 4);
      // Cuts the store refused, which the runner turns into the snapshot's failure with the reason.
      expect(refusedCuts).toBeGreaterThan(SEEDS_PER_MODE / 50);
      expect(writes / SEEDS_PER_MODE).toBeGreaterThan(30);
    }, 60_000);
  }

  test("the checker catches a node that keeps executing writes during a hold", () => {
    expect(firstCaughtSeed("hold", { ignoreHold: true })).toBeDefined();
  });

  test("the checker catches a node that acknowledges writes without the commit wait", () => {
    expect(firstCaughtSeed("timestamp", { ignoreCommitWait: true })).toBeDefined();
  });

  test("the checker catches a coordinator that says allcut before every participant has cut", () => {
    expect(firstCaughtSeed("timestamp", { allCutEarly: true })).toBeDefined();
  });

  test("the checker catches a commit wait shorter than the measured clock offsets allow", () => {
    expect(firstCaughtSeed("timestamp", { shortCommitWait: true })).toBeDefined();
  });

  test("the checker catches a node whose clock steps while a snapshot relies on it", () => {
    expect(firstCaughtSeed("timestamp", { clockStepsAnytime: true })).toBeDefined();
  });

  // The node's own effect runner (core/snapshot/snapshot-effect-runner.ts) holds back what rests on a record
  // until the store says it is durable; a store that says so too early breaks that rule for it.
  for (const mode of MODES) {
    test(`${mode} mode: the checker catches messages that leave before the record they rest on is durable`, () => {
      let caught: number | undefined;
      for (let seed = 1; seed <= 2000 && caught === undefined; seed++) {
        const violations = checkHistory(runWorld({ seed, mode, sabotage: { recordsDurableEarly: true } }));
        if (violations.some((v) => /committed, but participant|is committed but its coordinator reported/.test(v))) caught = seed;
      }
      expect(caught).toBeDefined();
      // The same run with an honest store passes: the early messages are what the checker caught.
      expect(checkHistory(runWorld({ seed: caught!, mode }))).toEqual([]);
    });
  }

  // Seeds that once failed (a participant asserted on a late commit after forgetting the snapshot).
  // They are tied to this version of the world's random stream; the unit tests pin the mechanism.
  const REGRESSION_SEEDS: [SnapshotMode, number][] = [["hold", 17543], ["hold", 39010], ["hold", 89016], ["timestamp", 65659], ["timestamp", 71994]];
  test("seeds that once failed pass", () => {
    for (const [mode, seed] of REGRESSION_SEEDS) expect({ mode, seed, violations: checkHistory(runWorld({ seed, mode })) }).toEqual({ mode, seed, violations: [] });
  });

  test("a seed replays identically", () => {
    for (const mode of MODES) {
      const first = summarize(runWorld({ seed: 4242, mode }));
      const second = summarize(runWorld({ seed: 4242, mode }));
      expect(second).toEqual(first);
    }
  });
});

/** The first seed whose run the checker rejects as not one cut; undefined if none in 2000. */
function firstCaughtSeed(mode: SnapshotMode, sabotage: Sabotage): number | undefined {
  for (let seed = 1; seed <= 2000; seed++) {
    const violations = checkHistory(runWorld({ seed, mode, sabotage }));
    if (violations.some((v) => v.includes("is not one cut"))) return seed;
  }
  return undefined;
}

function summarize(history: ReturnType<typeof runWorld>): string {
  return JSON.stringify({
    events: history.eventCount,
    writes: [...history.writes.values()],
    outcomes: [...history.outcomes],
    applyLog: [...history.applyLog],
  });
}
