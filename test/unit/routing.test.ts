import { describe, expect, test } from "bun:test";
import {
  describeReplicaRuns,
  describeRuns,
  formatRun,
  holdsCopy,
  runsOfPages,
  holders,
  ownerOf,
  pagesPerNode,
  replicaCount,
  replicaPagesPerNode,
  replicasOf,
  routingFromWire,
  routingToWire,
  routingWireBytes,
  stripedTable,
  withOwner,
} from "../../core/cluster/routing.ts";

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
    expect(describeRuns(table).get("a")!.runs.map(formatRun)).toEqual(["0-255/3"]);
    table.owners.fill(1, 10, 20);
    const runs = describeRuns(table).get("b")!.runs;
    expect(runs.map(formatRun)).toContain("11-19");
    const expanded: number[] = [];
    for (const run of runs) for (let page = run.first; page <= run.last; page += run.step) expanded.push(page);
    const owned = [...table.owners.keys()].filter((page) => table.owners[page] === 1);
    expect(expanded).toEqual(owned);
    const firstTwo = describeRuns(table, 2).get("b")!;
    expect(firstTwo.runs).toEqual(runs.slice(0, 2));
    expect(firstTwo.count).toBe(runs.length);
  });
  test("a striped table travels as one run per node whatever its size; a moved range adds a few runs", () => {
    const table = stripedTable(16 * 1024 * 1024, ["a", "b", "c"]); // 64 TiB at 4 MiB pages
    const wire = routingToWire(table);
    expect(wire.owners).toBeUndefined();
    expect(wire.runs!.byteLength).toBe(3 * 16);
    const moved = withOwner(table, Array.from({ length: 1000 }, (_, index) => 5_000_000 + index), "d");
    const movedWire = routingToWire(moved);
    expect(movedWire.runs!.byteLength).toBeLessThanOrEqual(7 * 16);
    const copy = routingFromWire({ ...movedWire, runs: new Uint8Array(movedWire.runs!) }, table.owners.length);
    expect(copy.nodes).toEqual(["a", "b", "c", "d"]);
    expect(Buffer.from(copy.owners.buffer).equals(Buffer.from(moved.owners.buffer))).toBe(true);
  });
  test("any table round-trips: runs while they are smaller, the owner map for scattered placements", () => {
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let round = 0; round < 200; round++) {
      const pages = 1 + Math.floor(random() * 300);
      let table = stripedTable(pages, ["a", "b", "c"].slice(0, 1 + Math.floor(random() * 3)));
      const moves = Math.floor(random() * pages);
      for (let move = 0; move < moves; move++) table = withOwner(table, [Math.floor(random() * pages)], ["a", "b", "c", "d", "e"][Math.floor(random() * 5)]!);
      const wire = routingToWire(table);
      expect(wire.runs !== undefined || wire.owners !== undefined).toBe(true);
      const size = wire.runs?.byteLength ?? wire.owners!.byteLength;
      expect(size).toBeLessThanOrEqual(Math.max(pages * 2, table.nodes.length * 16));
      const copy = routingFromWire(wire.runs ? { ...wire, runs: new Uint8Array(wire.runs) } : { ...wire, owners: new Uint8Array(wire.owners!) }, pages);
      expect([...copy.owners]).toEqual([...table.owners]);
      expect(copy.version).toBe(table.version);
    }
  });
  test("a table whose runs are bigger than its owner map goes as the map", () => {
    const owners = new Uint16Array(64);
    for (let page = 0; page < 64; page++) owners[page] = [0, 1, 1, 0, 2, 0, 2, 2][page % 8]! ^ (page >> 3) % 2;
    const wire = routingToWire({ version: 4, nodes: ["a", "b", "c"], owners });
    expect(wire.runs).toBeUndefined();
    expect(wire.owners!.byteLength).toBe(128);
  });
  test("wire forms with a wrong length, a bad node index, a gap or an overlap are refused", () => {
    const table = stripedTable(1000, ["a", "b"]);
    const map = { version: 1, nodes: ["a", "b"], owners: new Uint8Array(table.owners.buffer.slice(0)) };
    expect([...routingFromWire(map, 1000).owners]).toEqual([...table.owners]);
    expect(() => routingFromWire(map, 999)).toThrow(/owner bytes/);
    const bad = new Uint8Array(map.owners);
    bad[0] = 9;
    expect(() => routingFromWire({ ...map, owners: bad }, 1000)).toThrow(/node index/);
    const runs = (...quads: number[]) => ({ version: 1, nodes: ["a", "b"], runs: new Uint8Array(Uint32Array.from(quads).buffer) });
    expect(routingFromWire(runs(0, 998, 2, 0, 1, 999, 2, 1), 1000).owners[999]).toBe(1);
    expect(() => routingFromWire(runs(0, 998, 2, 0), 1000)).toThrow(/cover 500 pages/);
    expect(() => routingFromWire(runs(0, 998, 2, 0, 0, 999, 1, 1), 1000)).toThrow(/cover 1500 pages/);
    expect(() => routingFromWire(runs(0, 998, 2, 0, 0, 998, 2, 1), 1000)).toThrow(/page 1 no owner/);
    expect(() => routingFromWire(runs(0, 1000, 1, 0), 1000)).toThrow(/does not fit/);
    expect(() => routingFromWire(runs(0, 999, 1, 2), 1000)).toThrow(/does not fit/);
    expect(() => routingFromWire(runs(0, 999, 0, 0), 1000)).toThrow(/does not fit/);
    expect(() => routingFromWire(runs(0, 998, 3, 0), 1000)).toThrow(/does not fit/);
    expect(() => routingFromWire({ version: 1, nodes: ["a"], runs: new Uint8Array(5) }, 1000)).toThrow(/multiple of 16/);
    expect(() => routingFromWire({ version: 1, nodes: [], runs: new Uint8Array(0) }, 0)).toThrow(/0 nodes/);
  });
  test("a page list reads as runs, cut as a node's pages are, and a long one is cut short with its count", () => {
    expect(runsOfPages([0, 1, 2, 3, 7, 9, 12, 15, 16]).runs.map(formatRun)).toEqual(["0-3", "7-9/2", "12-15/3", "16"]);
    const stride = Array.from({ length: 5_000_000 }, (_, index) => index * 3);
    expect(runsOfPages(stride).runs.map(formatRun)).toEqual(["0-14999997/3"]);
    const scattered = Array.from({ length: 10_000 }, (_, index) => index * index);
    const cut = runsOfPages(scattered, 10);
    expect(cut.runs).toHaveLength(10);
    expect(cut.count).toBe(5000);
  });
  test("a 1 TiB volume's table takes 512 KiB", () => {
    const table = stripedTable(262_144, ["a", "b", "c"]);
    expect(table.owners.byteLength).toBe(512 * 1024);
  });
});

describe("replicated routing tables", () => {
  test("R copies of every page on R distinct nodes, the primary first, replica k on the node k places after it", () => {
    const nodes = ["a", "b", "c", "d"];
    for (const replicas of [1, 2, 3]) {
      const table = stripedTable(1000, nodes, replicas);
      expect(replicaCount(table)).toBe(replicas);
      for (let page = 0; page < 1000; page++) {
        const copies = replicasOf(table, page);
        expect(copies).toHaveLength(replicas);
        expect(new Set(copies).size).toBe(replicas);
        expect(copies[0]).toBe(ownerOf(table, page));
        copies.forEach((node, rank) => expect(node).toBe(nodes[(page + rank) % nodes.length]!));
        for (const node of nodes) expect(holdsCopy(table, page, node)).toBe(copies.includes(node));
      }
    }
  });
  test("each node's share stays even, as primary and as replica", () => {
    const table = stripedTable(3000, ["a", "b", "c"], 3);
    expect([...pagesPerNode(table).values()]).toEqual([1000, 1000, 1000]);
    expect([...replicaPagesPerNode(table).values()]).toEqual([2000, 2000, 2000]);
    expect(holders(stripedTable(1, ["a", "b", "c"], 2))).toEqual(["a", "b"]);
    expect(describeReplicaRuns(stripedTable(9, ["a", "b", "c"], 2)).get("a")!.runs.map(formatRun)).toEqual(["2-8/3"]);
  });
  test("more copies than nodes, or than three, or fewer than one, are refused with a line that says why", () => {
    expect(() => stripedTable(10, ["a", "b", "c"], 4)).toThrow(/1 to 3 copies/);
    expect(() => stripedTable(10, ["a", "b"], 3)).toThrow(/placed on 2 node\(s\), and no two copies of a page may share a node/);
    expect(() => stripedTable(10, ["a"], 0)).toThrow(/1 to 3 copies/);
  });
  test("a 64 TiB table of three copies travels in a few hundred bytes and decodes to the same placement", () => {
    const table = stripedTable(16 * 1024 * 1024, ["a", "b", "c"], 3);
    const wire = routingToWire(table);
    expect(routingWireBytes(wire)).toBe(3 * 3 * 16);
    const copy = routingFromWire({ ...wire, runs: new Uint8Array(wire.runs!), replicas: wire.replicas!.map((rank) => ({ runs: new Uint8Array(rank.runs!) })) }, table.owners.length);
    expect(replicaCount(copy)).toBe(3);
    for (const page of [0, 1, 2, 12345, 16 * 1024 * 1024 - 1]) expect(replicasOf(copy, page)).toEqual(replicasOf(table, page));
  });
  test("a wire table without replica ranks (from before replicas) decodes as one copy; two copies of a page on one node are refused", () => {
    const plain = routingToWire(stripedTable(30, ["a", "b"]));
    expect(plain.replicas).toBeUndefined();
    expect(replicaCount(routingFromWire(plain, 30))).toBe(1);
    const wire = routingToWire(stripedTable(30, ["a", "b"], 2));
    expect(() => routingFromWire({ ...wire, replicas: [{ runs: wire.runs }] }, 30)).toThrow(/two copies of page 0 on node a/);
    expect(() => routingFromWire({ ...wire, replicas: [{ runs: new Uint8Array(3) }] }, 30)).toThrow(/multiple of 16/);
    expect(() => routingFromWire({ ...wire, replicas: "x" as never }, 30)).toThrow(/replica ranks are malformed/);
  });
  test("a replicated table is not moved page by page (one replica at a time is the failover slice's)", () => {
    expect(() => withOwner(stripedTable(10, ["a", "b", "c"], 2), [1], "c")).toThrow(/moves of replicated volumes are not supported yet/);
  });
});
