// A replica-set change as a routing table (failover): withReplicaSets keeps the ranks and puts
// NO_COPY where a page lost a copy, the wire form and catalog column carry it through, and the
// page groups map pages to (group, chunk) and back for volumes of any size.
import { describe, expect, test } from "bun:test";
import { holdsCopy, NO_COPY, ownerOf, packReplicaRanks, replicaPagesPerNode, replicasOf, routingFromWire, routingToWire, stripedTable, unpackReplicaRanks, withReplicaSets } from "../../core/cluster/routing.ts";
import { isNewer, newVolumeRecord } from "../../core/cluster/volume.ts";
import { chunkOfPage, chunksPerGroup, groupCount, groupOfPage, homeSets, pageGroupsOf, pageOfChunk } from "../../core/replica/page-groups.ts";

describe("replica sets as routing tables", () => {
  const home = stripedTable(12, ["a", "b", "c"], 2);
  const groups = pageGroupsOf(home);

  test("the home sets are the striped placement's: group g is pages g, g+3, ... on nodes g and g+1", () => {
    expect(homeSets(groups)).toEqual([["a", "b"], ["b", "c"], ["c", "a"]]);
    for (let page = 0; page < 12; page++) {
      expect(replicasOf(home, page)).toEqual(homeSets(groups)[groupOfPage(groups, page)]!);
      expect(pageOfChunk(groups, groupOfPage(groups, page), chunkOfPage(groups, page))).toBe(page);
    }
    expect(chunksPerGroup(groups)).toBe(4);
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

  test("a 64 TiB volume of 4 MiB pages has three groups of 5.6 Mi chunks; nothing lists them", () => {
    const big = { nodes: ["a", "b", "c"], pageCount: 16 * 1024 * 1024, replicas: 2 };
    expect(groupCount(big)).toBe(3);
    expect(chunksPerGroup(big)).toBe(5592406);
    expect(pageOfChunk(big, 2, 5592404)).toBe(16777214);
  });
});

test("a delete and a replica-set change made from the same record: the tombstone wins in either order", () => {
  const record = newVolumeRecord({ name: "v", sizeBytes: 12 * 4096 * 1024, pageSizeBytes: 4096 * 1024, nodes: ["a", "b", "c"], uid: "u", nowMs: 1, previousVersion: 0, replicas: 2 });
  const groups = pageGroupsOf(record.routing);
  const failedOver = { ...record, version: record.version + 1, routing: withReplicaSets(record.routing, 2, [["a"], ["c"], ["c", "a"]], (page) => groupOfPage(groups, page)) };
  const tombstone = { ...record, version: record.version + 1, deleted: true };
  expect(isNewer(tombstone, failedOver)).toBe(true);
  expect(isNewer(failedOver, tombstone)).toBe(false);
});
