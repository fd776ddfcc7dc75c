import { describe, expect, test } from "bun:test";
import { describeRuns, formatRun, holders, ownerOf, pagesPerNode, routingFromWire, routingToWire, stripedTable, withOwner } from "../../core/routing.ts";

describe("routing table", () => {
  test("striping puts consecutive pages on different nodes and spreads them evenly", () => {
    const table = stripedTable(10, ["a", "b", "c"]);
    for (let page = 1; page < 10; page++) expect(ownerOf(table, page)).not.toBe(ownerOf(table, page - 1));
    expect([...pagesPerNode(table).values()]).toEqual([4, 3, 3]);
  });
  test("page counts, counted once per table, follow a move into a new table and cannot be changed by callers", () => {
    const table = stripedTable(6, ["a", "b"]);
    expect(holders(table)).toEqual(["a", "b"]);
    pagesPerNode(table).set("a", 99);
    expect(pagesPerNode(table)).toEqual(new Map([["a", 3], ["b", 3]]));
    const moved = withOwner(table, [1, 3, 5], "c");
    expect(pagesPerNode(moved)).toEqual(new Map([["a", 3], ["b", 0], ["c", 3]]));
    expect(holders(moved)).toEqual(["a", "c"]);
    expect(holders(table)).toEqual(["a", "b"]);
  });
  test("a volume may sit on one node", () => {
    const table = stripedTable(5, ["solo"]);
    expect(holders(table)).toEqual(["solo"]);
  });
  test("runs describe striped tables compactly and moved ranges plainly", () => {
    const table = stripedTable(256, ["a", "b", "c"]);
    expect(describeRuns(table).get("a")!.map(formatRun)).toEqual(["0-255/3"]);
    table.owners.fill(1, 10, 20);
    const runs = describeRuns(table).get("b")!;
    expect(runs.map(formatRun)).toContain("11-19");
    const expanded: number[] = [];
    for (const run of runs) for (let page = run.first; page <= run.last; page += run.step) expanded.push(page);
    const owned = [...table.owners.keys()].filter((page) => table.owners[page] === 1);
    expect(expanded).toEqual(owned);
  });
  test("wire form round-trips and rejects a wrong length or a bad node index", () => {
    const table = stripedTable(1000, ["a", "b"]);
    const wire = routingToWire(table);
    const copy = routingFromWire({ ...wire, owners: new Uint8Array(wire.owners) }, 1000);
    expect([...copy.owners]).toEqual([...table.owners]);
    expect(() => routingFromWire(wire, 999)).toThrow(/owner bytes/);
    const bad = new Uint8Array(wire.owners);
    bad[0] = 9;
    expect(() => routingFromWire({ ...wire, owners: bad }, 1000)).toThrow(/node index/);
  });
  test("a 1 TiB volume's table takes 512 KiB", () => {
    const table = stripedTable(262_144, ["a", "b", "c"]);
    expect(table.owners.byteLength).toBe(512 * 1024);
  });
});
