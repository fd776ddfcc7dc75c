// Where a replica puts a replicated write while timestamp-mode cuts are made by each copy's own
// clock: the primary's decision wins, on either side of the cut.
import { describe, expect, test } from "bun:test";
import { placeReplicatedWrite } from "../../core/snapshot/replicated-write-placement.ts";
import { RecentCuts, RECENT_CUTS_PER_VOLUME } from "../../core/snapshot/recent-cuts.ts";

describe("placing a replicated write by its primary's decision", () => {
  const none = new Set<string>();

  test("no snapshot under way anywhere: the head, nothing to cut", () => {
    expect(placeReplicatedWrite([], [], none)).toEqual({ cutFirst: [], under: undefined });
  });

  test("the primary cut a snapshot this replica has not: cut it first (with the primary's T), then the head", () => {
    const placement = placeReplicatedWrite([{ snapshotId: "a", cutAtMs: 10 }, { snapshotId: "b", cutAtMs: 20 }], ["a"], none);
    expect(placement).toEqual({ cutFirst: [{ snapshotId: "b", cutAtMs: 20 }], under: undefined });
  });

  test("an unfinished cut here that the primary had not made: under the oldest such cut", () => {
    expect(placeReplicatedWrite([{ snapshotId: "a" }], ["a", "b", "c"], new Set(["b", "c"]))).toEqual({ cutFirst: [], under: "b" });
    // The primary had not even heard of c when it applied the write (its prepare came later).
    expect(placeReplicatedWrite([{ snapshotId: "a" }, { snapshotId: "b" }], ["a", "b", "c"], new Set(["c"]))).toEqual({ cutFirst: [], under: "c" });
  });

  test("a finished cut the primary's list no longer names (it fell out of its window) is not a reason to go under", () => {
    expect(placeReplicatedWrite([{ snapshotId: "b" }, { snapshotId: "c" }], ["a", "b", "c"], none)).toEqual({ cutFirst: [], under: undefined });
  });

  test("a snapshot the primary cut and this replica has cut too: the head", () => {
    expect(placeReplicatedWrite([{ snapshotId: "a", cutAtMs: 5 }], ["a"], new Set(["a"]))).toEqual({ cutFirst: [], under: undefined });
  });
});

describe("recent cuts", () => {
  test("keep the newest cuts per volume with their times, oldest first", () => {
    const cuts = new RecentCuts();
    for (let index = 0; index < RECENT_CUTS_PER_VOLUME + 2; index++) cuts.note(`s${index}`, ["v"], index % 2 === 0 ? index * 10 : undefined);
    cuts.note("w", ["w"]);
    const kept = cuts.of("v");
    expect(kept).toHaveLength(RECENT_CUTS_PER_VOLUME);
    expect(kept[0]).toEqual({ snapshotId: "s2", cutAtMs: 20 });
    expect(kept[1]).toEqual({ snapshotId: "s3" });
    expect(cuts.of("w")).toEqual([{ snapshotId: "w" }]);
    expect(cuts.of("x")).toEqual([]);
  });
});
