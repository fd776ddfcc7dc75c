// A replica-set change as a routing table (failover): withReplicaSets keeps the ranks and puts
// NO_COPY where a page lost a copy, the wire form and catalog column carry it through, and the
// page groups map pages to (group, chunk) and back for volumes of any size.
import { describe, expect, test } from "bun:test";
import { holdsCopy, NO_COPY, ownerOf, packReplicaRanks, replicaPagesPerNode, replicasOf, routingFromWire, routingToWire, stripedTable, unpackReplicaRanks, withReplicaSets } from "../../core/cluster/routing.ts";
import { isNewer, newVolumeRecord } from "../../core/cluster/volume.ts";
import { chunkOfPage, chunksOfWrite, chunksPerGroup, chunkWeight, groupCount, groupOfPage, homeSets, pageGroupsOf, pageOfChunk, rangeOfChunk, rangesOfChunks } from "../../core/replica/page-groups.ts";

describe("replica sets as routing tables", () => {
  const home = stripedTable(12, ["a", "b", "c"], 2);
  const groups = pageGroupsOf(home, 4 * 1024 * 1024);

  test("the home sets are the striped placement's: group g is pages g, g+3, ... on nodes g and g+1", () => {
    expect(homeSets(groups)).toEqual([["a", "b"], ["b", "c"], ["c", "a"]]);
    for (let page = 0; page < 12; page++) {
      expect(replicasOf(home, page)).toEqual(homeSets(groups)[groupOfPage(groups, page)]!);
      expect(pageOfChunk(groups, groupOfPage(groups, page), chunkOfPage(groups, page))).toBe(page);
    }
    // Four pages a group, each a whole-page chunk and 64 parts of 64 KiB.
    expect(chunksPerGroup(groups)).toBe(4 * 65);
  });

  test("a write notes the 64 KiB parts it touches; a whole page weighs all of them", () => {
    const MiB = 1024 * 1024;
    // Page 4 is the second page of group 1: its chunks are 65..129, 129 the whole page.
    expect(chunkOfPage(groups, 4)).toBe(129);
    expect(chunksOfWrite(groups, 4, 4 * MiB, 100 * 1024, 4096)).toEqual({ first: 66, span: 1 });
    expect(chunksOfWrite(groups, 4, 4 * MiB, 60 * 1024, 10 * 1024)).toEqual({ first: 65, span: 2 });
    expect(chunksOfWrite(groups, 4, 4 * MiB, 0, 4 * MiB)).toEqual({ first: 65, span: 64 });
    expect(rangeOfChunk(groups, 1, 66, 4 * MiB)).toEqual({ page: 4, offset: 64 * 1024, length: 64 * 1024 });
    expect(rangeOfChunk(groups, 1, 129, 4 * MiB)).toEqual({ page: 4, offset: 0, length: 4 * MiB });
    expect([chunkWeight(groups, 66), chunkWeight(groups, 129)]).toEqual([1, 64]);
    // A copy's ranges: adjacent parts merged, a whole page covering its parts, in page order.
    expect(rangesOfChunks(groups, 1, [68, 66, 67, 1, 129, 70], 4 * MiB)).toEqual([
      { page: 1, offset: 64 * 1024, length: 64 * 1024 },
      { page: 4, offset: 0, length: 4 * MiB },
    ]);
    expect(rangesOfChunks(groups, 1, [68, 66, 67, 70], 4 * MiB)).toEqual([
      { page: 4, offset: 64 * 1024, length: 3 * 64 * 1024 },
      { page: 4, offset: 5 * 64 * 1024, length: 64 * 1024 },
    ]);
    // Pages of 64 KiB or less are one part; pages over 16 MiB get bigger parts (256 at most).
    expect(pageGroupsOf(home, 64 * 1024).parts).toBe(1);
    expect(pageGroupsOf(home, 4096).parts).toBe(1);
    expect(pageGroupsOf(home, 64 * MiB).parts).toBe(256);
  });

  test("b leaves group 0 and group 1 (where it was primary): the other copy is primary, the rank holds NO_COPY", () => {
    const table = withReplicaSets(home, 2, [["a"], ["c"], ["c", "a"]], (page) => groupOfPage(groups, page));
    expect(table.version).toBe(2);
    expect(replicasOf(table, 0)).toEqual(["a"]);
    expect(replicasOf(table, 1)).toEqual(["c"]);
    expect(replicasOf(table, 2)).toEqual(["c", "a"]);
    expect(ownerOf(table, 4)).toBe("c");
    expect(holdsCopy(table, 0, "b")).toBe(false);
    expect(table.replicaOwners![0]![0]).toBe(NO_COPY);
    expect(replicaPagesPerNode(table).get("b")).toBe(0);
    // Through the wire form and the catalog column, as every node stores and sends it.
    const wire = routingToWire(table);
    const back = routingFromWire({ ...wire, replicas: unpackReplicaRanks(packReplicaRanks(wire.replicas)) }, 12);
    for (let page = 0; page < 12; page++) expect(replicasOf(back, page)).toEqual(replicasOf(table, page));
  });

  test("a primary rank naming NO_COPY is refused as a malformed table", () => {
    const table = withReplicaSets(home, 2, [["a"], ["c"], ["c", "a"]], (page) => groupOfPage(groups, page));
    const wire = routingToWire(table);
    const { runs: _runs, owners: _owners, ...rest } = wire;
    expect(() => routingFromWire({ ...rest, ...wire.replicas![0]! }, 12)).toThrow(/node index 65535/);
  });

  test("a 64 TiB volume of 4 MiB pages has three groups of 5.6 Mi pages (65 chunk numbers each); nothing lists them", () => {
    const big = { nodes: ["a", "b", "c"], pageCount: 16 * 1024 * 1024, replicas: 2, parts: 64 };
    expect(groupCount(big)).toBe(3);
    expect(chunksPerGroup(big)).toBe(5592406 * 65);
    expect(pageOfChunk(big, 2, 5592404 * 65 + 64)).toBe(16777214);
    expect(Number.isSafeInteger(chunksPerGroup(big) * 256)).toBe(true);
  });
});

test("a delete and a replica-set change made from the same record: the tombstone wins in either order", () => {
  const record = newVolumeRecord({ name: "v", sizeBytes: 12 * 4096 * 1024, pageSizeBytes: 4096 * 1024, nodes: ["a", "b", "c"], uid: "u", nowMs: 1, previousVersion: 0, replicas: 2 });
  const groups = pageGroupsOf(record.routing, record.pageSizeBytes);
  const failedOver = { ...record, version: record.version + 1, routing: withReplicaSets(record.routing, 2, [["a"], ["c"], ["c", "a"]], (page) => groupOfPage(groups, page)) };
  const tombstone = { ...record, version: record.version + 1, deleted: true };
  expect(isNewer(tombstone, failedOver)).toBe(true);
  expect(isNewer(failedOver, tombstone)).toBe(false);
});
