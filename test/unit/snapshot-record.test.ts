// A node recovers a pending cut only if its layers survived the crash with its record (they are
// made durable side by side): lostCutLayers says which are missing.
import { describe, expect, test } from "bun:test";
import { lostCutLayers, snapshotLayerId, type CutRecord } from "../../core/snapshot/snapshot-record.ts";

const pending: CutRecord = { snapshotId: "n1.ab.7", name: "s", coordinator: "n1", volumes: ["a", "b"], mode: "hold", state: "pending", volumeUids: ["ua", "ub"] };

describe("lostCutLayers", () => {
  test("a pending cut whose layers are all in the store lost nothing", () => {
    const held = new Set([snapshotLayerId("ua", pending.snapshotId), snapshotLayerId("ub", pending.snapshotId), "ua", "ub"]);
    expect(lostCutLayers(pending, (id) => held.has(id))).toEqual([]);
  });

  test("a pending cut whose record survived without a layer names the missing layer", () => {
    const held = new Set([snapshotLayerId("ua", pending.snapshotId), "ua", "ub"]);
    expect(lostCutLayers(pending, (id) => held.has(id))).toEqual(["ub@n1.ab.7"]);
  });

  test("committed records and records without uids are never judged by layers", () => {
    expect(lostCutLayers({ ...pending, state: "committed" }, () => false)).toEqual([]);
    const { volumeUids: _, ...withoutUids } = pending;
    expect(lostCutLayers(withoutUids, () => false)).toEqual([]);
  });
});
