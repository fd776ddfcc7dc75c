// The move plans, volume records under moves, and the move step's state machine. Moving pages
// between page stores (export/import/remove) is tested in store-v2-move.test.ts.
import { describe, expect, test } from "bun:test";
import { batchMoves, parsePageList, planDrain, planMove, planRebalance } from "../../core/move/move-plan.ts";
import { MoveStep, type MoveStepEffect } from "../../core/move/page-move.ts";
import { pagesPerNode, stripedTable, withOwner } from "../../core/cluster/routing.ts";
import { isNewer, newVolumeRecord } from "../../core/cluster/volume.ts";

describe("move plans", () => {
  test("page lists: ranges, single pages, steps; bad ones refused", () => {
    expect(parsePageList("0-3,7, 9-12/3", 16)).toEqual([0, 1, 2, 3, 7, 9, 12]);
    expect(() => parsePageList("3-1", 16)).toThrow(expect.objectContaining({ code: "BAD_ARGUMENT" }));
    expect(() => parsePageList("16", 16)).toThrow(expect.objectContaining({ code: "OUT_OF_RANGE" }));
    expect(() => parsePageList("a", 16)).toThrow(expect.objectContaining({ code: "BAD_ARGUMENT" }));
  });

  test("rebalance evens pages out with the fewest moves, and is a no-op when balanced", () => {
    for (const [pages, before, after] of [
      [64, ["a", "b", "c"], ["a", "b", "c", "d"]],
      [10, ["a"], ["a", "b", "c"]],
      [17, ["a", "b", "c", "d"], ["b", "d"]],
    ] as [number, string[], string[]][]) {
      const table = stripedTable(pages, before);
      const moves = planRebalance(table, after);
      let moved = table;
      for (const move of moves) moved = withOwner(moved, [move.page], move.to);
      const counts = [...pagesPerNode(moved)].filter(([node]) => after.includes(node)).map(([, count]) => count);
      expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
      expect(counts.reduce((a, b) => a + b, 0)).toBe(pages);
      // Fewest moves: every page above a node's share moves, nothing else.
      const share = Math.ceil(pages / after.length);
      const over = [...pagesPerNode(table)].reduce((sum, [node, count]) => sum + (after.includes(node) ? Math.max(0, count - share) : count), 0);
      expect(moves.length).toBeLessThanOrEqual(over + after.length);
      expect(planRebalance(moved, after)).toEqual([]);
    }
  });

  test("drain empties one node onto the least loaded others; batches share source and target", () => {
    const table = stripedTable(12, ["a", "b", "c"]);
    const moves = planDrain(table, "b", ["a", "b", "c"]);
    expect(moves.map((move) => move.page)).toEqual([1, 4, 7, 10]);
    expect(new Set(moves.map((move) => move.to))).toEqual(new Set(["a", "c"]));
    expect(() => planDrain(table, "a", ["a"])).toThrow(expect.objectContaining({ code: "BAD_ARGUMENT" }));
    const batches = batchMoves(planMove(table, [0, 1, 2, 3, 4, 5, 6, 7], "c"), 2);
    for (const batch of batches) {
      expect(batch.pages.length).toBeLessThanOrEqual(2);
      expect(batch.to).toBe("c");
    }
    expect(batches.flatMap((batch) => batch.pages).sort((x, y) => x - y)).toEqual([0, 1, 3, 4, 6, 7]);
  });
});

describe("volume records under moves", () => {
  test("a move lock taken on a stale copy never beats a newer table of the same version; between two locks the larger id wins", () => {
    const base = newVolumeRecord({ name: "v", sizeBytes: 64 * 1024 * 1024, pageSizeBytes: 4 * 1024 * 1024, nodes: ["a", "b"], uid: "u", nowMs: 0, previousVersion: 0 });
    const moved = { ...base, version: 3, routing: withOwner(withOwner(base.routing, [0], "b"), [2], "b") };
    const staleLock = { ...base, version: 3, moving: { moveId: "z", by: "a", startedAtMs: 0 } };
    expect(isNewer(moved, staleLock)).toBe(true);
    expect(isNewer(staleLock, moved)).toBe(false);
    const lockA = { ...moved, version: 4, moving: { moveId: "a.1", by: "a", startedAtMs: 0 } };
    const lockB = { ...moved, version: 4, moving: { moveId: "b.1", by: "b", startedAtMs: 0 } };
    expect(isNewer(lockB, lockA)).toBe(true);
    expect(isNewer(lockA, lockB)).toBe(false);
  });
});

describe("MoveStep", () => {
  const request = { stepId: "s", volume: "v", volumeUid: "u", pages: [1, 2], to: "t", newVersion: 5, nowMs: 0 };
  const kinds = (effects: MoveStepEffect[]) => effects.map((effect) => effect.kind);

  test("copy unfrozen, then freeze and send again what was written meanwhile, commit, publish; copies drop only once the target confirmed", () => {
    const step = new MoveStep(request);
    expect(step.onInstalled()).toEqual([]); // not installing yet
    expect(kinds(step.onQuiet(1))).toEqual(["precopy"]);
    const frozen = step.onCopied([2, 9], 2);
    expect(frozen).toEqual([
      { kind: "freeze", pages: [1, 2] },
      { kind: "install", to: "t", pages: [2] }, // only the page written during the copy travels again
    ]);
    expect(kinds(step.onInstalled())).toEqual(["commit"]);
    expect(kinds(step.onCommitted())).toEqual(["publish"]);
    expect(kinds(step.onPublished())).toEqual(["remove", "unfreeze", "done"]);
    expect(step.onFailed({ code: "IO_ERROR", message: "late" })).toEqual([]);
  });

  test("a failure before commit unfreezes and fails; after commit the step completes, keeping the copies", () => {
    const copying = new MoveStep(request);
    copying.onQuiet(1);
    expect(kinds(copying.onFailed({ code: "NODE_DOWN", message: "gone" }))).toEqual(["done"]); // nothing frozen yet
    const early = new MoveStep(request);
    early.onQuiet(1);
    early.onCopied([], 1);
    const failed = early.onFailed({ code: "NODE_DOWN", message: "gone" });
    expect(kinds(failed)).toEqual(["unfreeze", "done"]);
    expect(failed[1]).toMatchObject({ ok: false, error: { code: "NODE_DOWN" } });
    const late = new MoveStep(request);
    late.onQuiet(1);
    late.onCopied([], 1);
    late.onInstalled();
    late.onCommitted();
    const completed = late.onFailed({ code: "TIMEOUT", message: "no answer" });
    expect(kinds(completed)).toEqual(["unfreeze", "done"]);
    expect(completed[1]).toMatchObject({ ok: true, published: false });
  });

  test("waiting for snapshots and for the target both time out", () => {
    const quiet = new MoveStep(request, { quietTimeoutMs: 10, installTimeoutMs: 20 });
    expect(quiet.onTick(9)).toEqual([]);
    expect(quiet.onTick(10)[0]).toMatchObject({ kind: "done", ok: false, error: { code: "TIMEOUT" } });
    const install = new MoveStep(request, { quietTimeoutMs: 10, installTimeoutMs: 20 });
    install.onQuiet(5);
    install.onCopied([], 8);
    expect(install.nextWakeAtMs()).toBe(28);
    expect(kinds(install.onTick(28))).toEqual(["unfreeze", "done"]);
  });
});
