// Bulk jobs go straight to the page owners: `volume import`, `volume export` and `archive
// restore` through node 1 of three, on 1 MiB pages (four to each 4 MiB chunk of the CLI, spread
// over all three nodes), make no node forward a byte over the mesh; all-zero pages of the input
// stay holes.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { freePort, run, TestCluster } from "./_cluster.ts";
import { scrape, sumOf, type Sample } from "./_prometheus.ts";

const MiB = 1024 * 1024;
let cluster: TestCluster;
const metricsAddresses: string[] = [];

beforeAll(async () => {
  for (let index = 0; index < 3; index++) metricsAddresses.push(`127.0.0.1:${await freePort()}`);
  cluster = await TestCluster.start(3, {}, (index) => ["--metrics", metricsAddresses[index]!]);
});

afterAll(async () => {
  await cluster?.stop();
});

const scrapeAll = () => Promise.all(metricsAddresses.map((address) => scrape(address)));
/** Bytes of page requests on `path` (local, forwarded, peer) over every node between two scrapes. */
function grew(before: Sample[][], after: Sample[][], labels: Record<string, string>): number {
  return after.reduce((sum, samples, index) => sum + sumOf(samples, "shoal_page_bytes_total", labels) - sumOf(before[index]!, "shoal_page_bytes_total", labels), 0);
}

/** The allocated ranges nbdinfo --map reports for `volume` through node 1: [offset, length] of data. */
async function dataExtents(volume: string): Promise<[number, number][]> {
  const map = await run(["nbdinfo", "--map", "--json", cluster.nodes[0]!.nbdUrl(volume)]);
  expect(map.exitCode).toBe(0);
  const extents = JSON.parse(map.stdout) as { offset: number; length: number; type: number }[];
  const merged: [number, number][] = [];
  for (const extent of extents.filter((extent) => (extent.type & 1) === 0)) {
    const last = merged[merged.length - 1];
    if (last !== undefined && last[0] + last[1] === extent.offset) last[1] += extent.length;
    else merged.push([extent.offset, extent.length]);
  }
  return merged;
}

describe("bulk jobs write and read pages where they live", () => {
  // 12 pages of 1 MiB: random, except pages 4-6 and 10-11, all zero.
  const data = new Uint8Array(12 * MiB);
  crypto.getRandomValues(data.subarray(0, 65536));
  for (let at = 65536; at < data.byteLength; at += 65536) data.copyWithin(at, 0, 65536);
  for (let page = 0; page < 12; page++) data[page * MiB] = page + 1; // no two pages alike
  data.fill(0, 4 * MiB, 7 * MiB);
  data.fill(0, 10 * MiB, 12 * MiB);
  const expectedData: [number, number][] = [
    [0, 4 * MiB],
    [7 * MiB, 3 * MiB],
  ];

  test("volume import forwards nothing, and its all-zero pages stay holes", async () => {
    expect((await cluster.shoal(["volume", "create", "own", "--size", "12M", "--page-size", "1M"])).exitCode).toBe(0);
    const source = path.join(cluster.root, "own.img");
    fs.writeFileSync(source, data);
    const before = await scrapeAll();
    const imported = await cluster.shoal(["volume", "import", "own", source]);
    expect(imported.exitCode).toBe(0);
    const after = await scrapeAll();
    expect(grew(before, after, { path: "forwarded" })).toBe(0);
    expect(grew(before, after, { op: "write", path: "local" })).toBe(7 * MiB);
    expect(await dataExtents("own")).toEqual(expectedData);
  });

  test("volume export reads every page from its owner and returns the bytes in order", async () => {
    const before = await scrapeAll();
    const target = path.join(cluster.root, "own.out");
    expect((await cluster.shoal(["volume", "export", "own", target])).exitCode).toBe(0);
    const after = await scrapeAll();
    expect(grew(before, after, { path: "forwarded" })).toBe(0);
    expect(Buffer.compare(fs.readFileSync(target), data)).toBe(0);
  });

  test("archive restore writes each page to its owner, forwards no page's bytes, and keeps holes", async () => {
    expect((await cluster.shoal(["snap", "create", "own", "--name", "s"])).exitCode).toBe(0);
    const archive = path.join(cluster.root, "own.tar");
    expect((await cluster.shoal(["archive", "create", "own@s", "-o", archive])).exitCode).toBe(0);
    const before = await scrapeAll();
    expect((await cluster.shoal(["archive", "restore", "back", "--create", "-i", archive])).exitCode).toBe(0);
    const after = await scrapeAll();
    expect(grew(before, after, { op: "write", path: "forwarded" })).toBe(0);
    expect(grew(before, after, { op: "write", path: "local" })).toBe(7 * MiB);
    expect(await dataExtents("back")).toEqual(expectedData);
    const target = path.join(cluster.root, "back.out");
    expect((await cluster.shoal(["volume", "export", "back", target])).exitCode).toBe(0);
    expect(Buffer.compare(fs.readFileSync(target), data)).toBe(0);
  });
});
