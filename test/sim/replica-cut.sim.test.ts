// Many seeded runs of timestamp-mode cuts on a replicated page group (replica-cut-world.ts): skewed
// clocks, replicated writes delayed up to 30 ms, T picked a few ms ahead; every copy's snapshots
// must hold the same writes as the primary's. Each rule the design rests on, broken on purpose,
// must fail some seeds: a replica ignoring its primary's side of the cut, a primary saying
// "taken" before its earlier writes are on the replicas, a replica not cutting first what its
// primary cut first.
import { describe, expect, test } from "bun:test";
import { checkCutHistory, CUT_SABOTAGES, runCutWorld } from "./replica-cut-world.ts";

const SEEDS = 400;

describe("timestamp-mode cuts of a replicated page group", () => {
  test(`${SEEDS} seeds: every copy's snapshots and head hold the primary's writes, block by block`, () => {
    const failures: string[] = [];
    let under = 0;
    let forced = 0;
    let writes = 0;
    for (let seed = 1; seed <= SEEDS; seed++) {
      const history = runCutWorld(seed, undefined);
      const violations = checkCutHistory(history);
      if (violations.length > 0) failures.push(`seed ${seed}: ${violations[0]}`);
      under += history.underCut;
      forced += history.forcedCuts;
      writes += history.writes;
    }
    console.log(`${SEEDS} seeds, ${writes} writes: ${under} placed under a replica's cut, ${forced} cuts a replica made first for its primary`);
    expect(failures).toEqual([]);
    // The runs reach both sides of the rule, many times.
    expect(under).toBeGreaterThan(SEEDS);
    expect(forced).toBeGreaterThan(SEEDS / 4);
  });

  for (const sabotage of CUT_SABOTAGES) {
    test(`the checker catches a broken rule: ${sabotage}`, () => {
      let failing = 0;
      let first = "";
      for (let seed = 1; seed <= SEEDS; seed++) {
        const violations = checkCutHistory(runCutWorld(seed, sabotage));
        if (violations.length > 0 && failing++ === 0) first = `seed ${seed}: ${violations[0]}`;
      }
      console.log(`${sabotage}: ${failing} of ${SEEDS} seeds fail (${first})`);
      expect(failing).toBeGreaterThan(0);
    });
  }

  test("a seed replays identically", () => {
    const first = runCutWorld(7, undefined);
    const again = runCutWorld(7, undefined);
    expect(again.writes).toBe(first.writes);
    expect(again.underCut).toBe(first.underCut);
    expect(JSON.stringify(again.stacks)).toBe(JSON.stringify(first.stacks));
  });
});
