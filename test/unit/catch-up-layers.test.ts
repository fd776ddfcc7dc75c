// A returning copy's layers against its catch-up source's: which snapshots to freeze its head
// into, and when a copy must wait (it predates a cut here) or cannot apply (the stacks diverged).
import { describe, expect, test } from "bun:test";
import { catchUpLayers, chainBelow } from "../../core/replica/catch-up-layers.ts";

describe("catching a returning copy's layers up", () => {
  test("the same stack: nothing to freeze", () => {
    expect(catchUpLayers(["v@a", "v@b"], ["v@a", "v@b"])).toEqual({ kind: "freeze", layers: [] });
    expect(catchUpLayers([], [])).toEqual({ kind: "freeze", layers: [] });
  });

  test("snapshots cut while it was away: freeze into each, oldest first", () => {
    expect(catchUpLayers(["v@a", "v@b", "v@c"], ["v@a"])).toEqual({ kind: "freeze", layers: ["v@b", "v@c"] });
    expect(catchUpLayers(["v@a"], [])).toEqual({ kind: "freeze", layers: ["v@a"] });
  });

  test("a copy read before a cut this node has: behind (dropped, sent again)", () => {
    expect(catchUpLayers(["v@a"], ["v@a", "v@b"])).toEqual({ kind: "behind" });
  });

  test("a snapshot one side has and the other not, below the top: diverged", () => {
    expect(catchUpLayers(["v@a", "v@c"], ["v@a", "v@b"])).toEqual({ kind: "diverged", here: ["v@a", "v@b"], source: ["v@a", "v@c"] });
    expect(catchUpLayers(["v@b"], ["v@a", "v@b"]).kind).toBe("diverged");
  });
});

describe("a head's chain in an exported stack", () => {
  test("follows parents from the head down, oldest first", () => {
    const stack = [{ id: "v@a" }, { id: "v@b", parent: "v@a" }, { id: "w", parent: "v@a" }, { id: "v", parent: "v@b" }];
    expect(chainBelow("v", stack)).toEqual(["v@a", "v@b"]);
    expect(chainBelow("w", stack)).toEqual(["v@a"]);
    expect(chainBelow("x", stack)).toEqual([]);
  });
});
