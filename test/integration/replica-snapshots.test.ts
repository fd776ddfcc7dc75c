// Snapshots of a volume with two copies on three real nodes: hold-mode cuts taken while writers
// run through every node are crash-consistent and byte-identical on every copy; clones, rollback
// and archives cover every copy (archives read each page once); what is not supported yet
// (timestamp mode, page moves) is refused with one line.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { BLOCK_BYTES, checkCut, WriteHistory } from "./_cut-checker.ts";
import { readStamps, startWriters } from "./_writers.ts";
import { run, TestCluster, type TestNode } from "./_cluster.ts";

const PAGE = 64 * 1024; // small pages: the written region spans pages of every node
const BLOCKS = 256; // 1 MiB written region, 16 pages
const SNAPSHOTS = 30;

let cluster: TestCluster;

beforeAll(async () => {
  // Replicated writes wait 5 ms at each replica: a primary that said ready before its replicas
  // had its writes would give them cuts without those writes, and the copies would differ.
  cluster = await TestCluster.start(3, { SHOAL_REPLICA_DELAY_MS: "5" });
});
afterAll(async () => {
  await cluster?.stop();
});

async function readAll(node: TestNode, exportName: string, length: number): Promise<Buffer> {
  const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName });
  try {
    return Buffer.from(await client.read(0, length));
  } finally {
    await client.close();
  }
}

/**
 * Each node reads its own copy of every page it holds one of (and the primary's of the rest):
 * three identical reads mean every copy of every page is identical.
 */
async function expectSameOnEveryCopy(exportName: string, length: number): Promise<Buffer> {
  const reads = await Promise.all(cluster.nodes.map((node) => readAll(node, exportName, length)));
  for (const read of reads.slice(1)) expect(read.equals(reads[0]!)).toBe(true);
  return reads[0]!;
}

describe("hold-mode snapshots of a volume with two copies", () => {
  test(`${SNAPSHOTS} snapshots under writers on every node are crash-consistent cuts, identical on every copy`, async () => {
    const created = await cluster.shoal(["volume", "create", "load", "--size", "4M", "--page-size", `${PAGE}`, "--replicas", "2"]);
    expect(created.exitCode).toBe(0);
    const history = new WriteHistory();
    const writers = await startWriters(cluster.nodes, "load", history, { writersPerNode: 2, blocks: BLOCKS });
    const verdicts: string[] = [];
    const distinctCuts = new Set<string>();
    let failures = 0;
    let queued = 0;
    try {
      for (let index = 0; index < SNAPSHOTS; index++) {
        const coordinator = cluster.nodes[index % cluster.nodes.length]!;
        try {
          const result = await adminRequest(coordinator.meshAddress, "admin.snap.create", { volumes: ["load"], name: `s${index}`, mode: "hold", holdTimeoutMs: 2000 });
          for (const hold of Object.values(result.holds as Record<string, { queued: number }>)) queued += hold.queued;
        } catch (err) {
          failures++;
          console.log(`snapshot s${index} failed cleanly: ${(err as Error).message}`);
          continue;
        }
        const stamps = await readStamps(cluster.nodes[(index + 1) % 3]!, `load@s${index}`, BLOCKS);
        distinctCuts.add([...stamps.values()].join(","));
        const verdict = checkCut(history, stamps);
        if (!verdict.ok) verdicts.push(`snapshot s${index} is not a cut: ${verdict.reason}`);
      }
    } finally {
      const { errors, firstError } = await writers.stop();
      expect(firstError).toBeUndefined();
      expect(errors).toBe(0);
    }
    console.log(`${SNAPSHOTS - failures} snapshots of an R=2 volume checked, ${failures} refused, ${history.writes.size} writes, ${distinctCuts.size} distinct cuts, ${queued} requests held`);
    expect(verdicts).toEqual([]);
    expect(failures).toBeLessThanOrEqual(SNAPSHOTS / 10);
    expect(distinctCuts.size).toBeGreaterThan((SNAPSHOTS - failures) * 0.9);
    expect(queued).toBeGreaterThan(0);
    // The snapshot layers: every copy of every page holds the same bytes, snapshot by snapshot.
    for (let index = 0; index < SNAPSHOTS; index++) {
      const listed = await cluster.shoal(["snap", "list", "load", "--json"]);
      if (!(JSON.parse(listed.stdout).snapshots as { name: string }[]).some((s) => s.name === `s${index}`)) continue;
      await expectSameOnEveryCopy(`load@s${index}`, BLOCKS * BLOCK_BYTES);
    }
    await expectSameOnEveryCopy("load", 4 * 1024 * 1024);
  });

  test("timestamp mode on a replicated volume is refused with one line and exit 2", async () => {
    const refused = await cluster.shoal(["snap", "create", "load", "--name", "t1", "--mode", "timestamp"]);
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toContain("volume 'load' keeps 2 copies of each page: timestamp-mode snapshots of replicated volumes are not supported yet; use --mode hold");
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
  });
});

describe("clones, rollback, archives and moves of a volume with two copies", () => {
  const MiB = 1024 * 1024;
  const qemuIo = (node: TestNode, exportName: string, ...commands: string[]) =>
    run(["qemu-io", "-f", "raw", ...commands.flatMap((c) => ["-c", c]), node.nbdUrl(exportName)]);

  test("set-up: 24 MiB over 4 MiB pages, two copies, written, snapshot 'a', then overwritten", async () => {
    const [node1, node2] = cluster.nodes;
    expect((await cluster.shoal(["volume", "create", "v", "--size", "24M", "--replicas", "2"])).exitCode).toBe(0);
    expect((await qemuIo(node1!, "v", "write -P 0x61 0 24M", "flush")).exitCode).toBe(0);
    expect((await cluster.shoal(["snap", "create", "v", "--name", "a"])).exitCode).toBe(0);
    expect((await qemuIo(node2!, "v", "write -P 0x62 2M 12M", "flush")).exitCode).toBe(0);
  });

  test("a clone keeps two copies; it reads as the snapshot through every node, and with any one node down", async () => {
    const cloned = await cluster.shoal(["snap", "clone", "v@a", "c"]);
    expect(cloned.exitCode).toBe(0);
    expect(JSON.parse((await cluster.shoal(["volume", "info", "c", "--json"])).stdout).replicas).toBe(2);
    const content = await expectSameOnEveryCopy("c", 24 * MiB);
    expect(content.equals(Buffer.alloc(24 * MiB, 0x61))).toBe(true);
    const victim = cluster.nodes[1]!;
    await victim.kill9();
    for (const node of [cluster.nodes[0]!, cluster.nodes[2]!]) expect((await readAll(node, "c", 24 * MiB)).equals(content)).toBe(true);
    await victim.start();
    await cluster.waitConverged();
  });

  test("an archive reads each page once (from its primary) and restores to the snapshot", async () => {
    const file = path.join(cluster.root, "v-a.tar");
    const created = await cluster.shoal(["archive", "create", "v@a", "-o", file]);
    expect(created.exitCode).toBe(0);
    const listing = await run(["tar", "-tf", file]);
    const pages = listing.stdout.split("\n").filter((line) => line.startsWith("shoal-archive/pages/"));
    expect(pages).toHaveLength(6);
    expect(fs.statSync(file).size).toBeLessThan(25 * MiB);
    expect((await cluster.shoal(["archive", "restore", "back", "--create", "-i", file])).exitCode).toBe(0);
    expect((await readAll(cluster.nodes[2]!, "back", 24 * MiB)).equals(Buffer.alloc(24 * MiB, 0x61))).toBe(true);
  });

  test("a rollback resets every copy", async () => {
    expect((await cluster.shoal(["snap", "rollback", "v@a"])).exitCode).toBe(0);
    expect((await expectSameOnEveryCopy("v", 24 * MiB)).equals(Buffer.alloc(24 * MiB, 0x61))).toBe(true);
  });

  test("route move and rebalance of a replicated volume, and a drain of one with snapshots, are refused with one line and exit 2", async () => {
    for (const args of [["route", "move", "v", "--pages", "0", "--to", "node2"], ["route", "rebalance", "v"]]) {
      const refused = await cluster.shoal(args);
      expect(refused.exitCode).toBe(2);
      expect(refused.stderr).toContain("keeps 2 copies of each page: moves of replicated volumes are not supported yet");
      expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    }
    const drain = await cluster.shoal(["route", "drain", "node3"]);
    expect(drain.exitCode).toBe(2);
    expect(drain.stderr).toContain("has snapshots or clones: re-created copies would lack their layers");
    expect(drain.stderr.trim().split("\n")).toHaveLength(1);
  });
});
