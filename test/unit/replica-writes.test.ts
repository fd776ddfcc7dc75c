// A replica's side of a replicated write, against a stand-in group and store: it applies only a
// write routed by its own routing version for a page it keeps a copy of, makes a FUA write
// durable before answering, and lets a write its primary applied after a cut it still holds for
// wait for its own cut of that snapshot (and no other); in timestamp mode a write goes on the side
// of each cut its primary's decision names.
import { describe, expect, test } from "bun:test";
import { newVolumeRecord, type VolumeRecord } from "../../core/cluster/volume.ts";
import { HoldQueue } from "../../core/snapshot/hold-queue.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import type { RecentCut } from "../../core/snapshot/recent-cuts.ts";
import { Payload } from "../../transport/mesh/frame.ts";
import type { Group } from "../../transport/mesh/group.ts";
import { ReplicaWrites, ReplicationsInFlight } from "../../transport/node/replica-writes.ts";
import type { ReplicaHost } from "../../transport/node/replica-host.ts";

const PAGE = 64 * 1024;
/** No replica member hosted: the routing version alone fences (the member's fence is the replica-host's business). */
const noMembers = { admitWrite: () => undefined } as unknown as ReplicaHost;

function replicaOn(self: string) {
  // Pages striped over a, b, c, two copies: page 0 on a and b, page 1 on b and c, page 2 on c and a.
  const record: VolumeRecord = newVolumeRecord({ name: "v", sizeBytes: 6 * PAGE, pageSizeBytes: PAGE, nodes: ["a", "b", "c"], uid: "uid-v", nowMs: 1, previousVersion: 0, replicas: 2 });
  const written: string[] = [];
  const synced: number[] = [];
  const store = {
    dirtyBytes: 0,
    dirtyLimitBytes: 1 << 30,
    write: (layer: string, page: number, at: number, data: Uint8Array) => written.push(`${layer} page ${page} +${at} ${data.byteLength}`),
    zero: (layer: string, page: number, at: number, length: number) => written.push(`${layer} page ${page} +${at} zero ${length}`),
    writeUnder: (layer: string, page: number, at: number, data: Uint8Array) => written.push(`${layer} page ${page} +${at} ${data.byteLength} under`),
    zeroUnder: (layer: string, page: number, at: number, length: number) => written.push(`${layer} page ${page} +${at} zero ${length} under`),
    syncPage: async (_layer: string, page: number) => void synced.push(page),
    writeBack: async () => {},
  } as unknown as PageStore;
  const group = { selfId: self, volumeByUid: (uid: string) => (uid === record.uid ? record : undefined) } as unknown as Group;
  const holds = new HoldQueue(16, () => {}, () => 0);
  const decisions: RecentCut[][] = [];
  // Once `t1Unfinished`, this replica has cut snapshot "t1" (timestamp mode) and not finished it: a write whose primary had not cut it goes under it.
  const snapshot = { t1Unfinished: false };
  const replicaLayer = (_volume: string, uid: string, cutBefore: readonly RecentCut[]) => {
    decisions.push([...cutBefore]);
    return snapshot.t1Unfinished && !cutBefore.some((cut) => cut.snapshotId === "t1") ? `${uid}@t1` : uid;
  };
  const snapshots = { holds, recentCuts: () => [], replicaLayer };
  const replica = new ReplicaWrites(group, store, snapshots, new ReplicationsInFlight(), "boot1", noMembers);
  const send = (args: Record<string, unknown>, bytes = 4096) =>
    Promise.resolve().then(() => replica.handle("page.replicate", { v: record.uid, rv: record.routing.version, o: 0, ...args }, Payload.of(args.n === undefined ? new Uint8Array(bytes) : new Uint8Array(0))));
  return { record, written, synced, holds, send, decisions, snapshot };
}

describe("a replica applying its primary's writes", () => {
  test("applies a write for a page it keeps the second copy of and names itself as the applier", async () => {
    const { written, send } = replicaOn("b");
    expect((await send({ p: 0 }))!.result).toEqual({ n: "b", b: "boot1" });
    expect(await send({ p: 0, o: 8192, n: 4096 })).toEqual({ result: { n: "b", b: "boot1" } });
    expect(written).toEqual(["uid-v page 0 +0 4096", "uid-v page 0 +8192 zero 4096"]);
  });

  test("refuses a write routed by another routing version (STALE_ROUTE), and one for a page it is primary of or holds no copy of (NOT_OWNER)", async () => {
    const { written, send, record } = replicaOn("b");
    await expect(send({ p: 0, rv: record.routing.version + 1 })).rejects.toMatchObject({ code: "STALE_ROUTE" });
    await expect(send({ p: 1 })).rejects.toMatchObject({ code: "NOT_OWNER" }); // b is page 1's primary
    await expect(send({ p: 2 })).rejects.toMatchObject({ code: "NOT_OWNER" }); // c and a hold page 2
    await expect(send({ p: 0, o: PAGE - 100 })).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    expect(written).toEqual([]);
  });

  test("a FUA write is synced before the answer", async () => {
    const { synced, send } = replicaOn("a");
    await send({ p: 2, f: true });
    expect(synced).toEqual([2]);
  });

  test("a write that follows the primary's cut of a snapshot this replica still holds for waits for that cut; any other write runs through the hold", async () => {
    const { written, holds, send } = replicaOn("b");
    holds.hold("x", ["v"]);
    holds.hold("y", ["v"]);
    await send({ p: 0 }); // the primary applied it before its own hold: it must be in this cut too
    await send({ p: 0, c: ["w"] }); // after a cut this replica is done with
    const afterX = send({ p: 0, o: 4096, c: ["w", "x"] });
    await Bun.sleep(1);
    expect(written).toHaveLength(2);
    holds.release("x", ["v"]);
    await afterX;
    expect(written).toHaveLength(3);
    expect(holds.isHeld("v")).toBe(true); // still held for y, which the write came before
  });

  test("a timestamp-mode write goes where its primary's cuts put it: under a cut this replica made and the primary had not, with the cut times it names", async () => {
    const { written, send, decisions, snapshot } = replicaOn("b");
    snapshot.t1Unfinished = true;
    await send({ p: 0, o: 4096 }); // the primary had not cut t1; this replica has
    await send({ p: 0, o: 8192, n: 4096, c: ["h0"] });
    await send({ p: 0, o: 12288, c: ["h0", "t1"], ct: [-1, 1234] }); // after both cuts at the primary
    expect(written).toEqual(["uid-v@t1 page 0 +4096 4096 under", "uid-v@t1 page 0 +8192 zero 4096 under", "uid-v page 0 +12288 4096"]);
    expect(decisions).toEqual([[], [{ snapshotId: "h0" }], [{ snapshotId: "h0" }, { snapshotId: "t1", cutAtMs: 1234 }]]);
  });
});
