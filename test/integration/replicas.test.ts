// Replicated volumes on three real nodes (--replicas 2): every write reaches both copies of its
// page, any copy serves reads, a FLUSH syncs every copy, and a volume reads whole and takes
// writes with any one node killed -9 (replica-failover.test.ts covers failover under load).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import { adminRequest } from "../../cmd/_cli.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { run, shoalCommand, TestCluster, waitFor, waitSetsWhole, type TestNode } from "./_cluster.ts";

const MiB = 1024 * 1024;
const PAGE = 4 * MiB;
/** 12 pages striped over node1..node3, two copies: page p on node(p % 3 + 1) and node((p + 1) % 3 + 1). */
const SIZE = 48 * MiB;

let cluster: TestCluster;
/** What the volume must read as, kept beside every write the test makes. */
const model = new Uint8Array(SIZE);

beforeAll(async () => {
  // No background write-back: a node's store syncs only when a FLUSH (or FUA) asks it to.
  cluster = await TestCluster.start(3, {}, () => ["--writeback-interval", "0"]);
});
afterAll(async () => {
  await cluster?.stop();
});

function qemuIo(url: string, ...commands: string[]) {
  return run(["qemu-io", "-f", "raw", ...commands.flatMap((c) => ["-c", c]), url]);
}

async function readWhole(node: TestNode, exportName = "r"): Promise<Uint8Array> {
  const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName });
  try {
    const whole = new Uint8Array(SIZE);
    const chunk = 8 * MiB; // under the server's 32 MiB request limit, several in flight
    await Promise.all(Array.from({ length: SIZE / chunk }, async (_, index) => whole.set(await client.read(index * chunk, chunk), index * chunk)));
    return whole;
  } finally {
    await client.close();
  }
}

function pattern(seed: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let state = seed;
  for (let index = 0; index < length; index++) bytes[index] = (state = (state * 1103515245 + 12345) >>> 0) >>> 24;
  return bytes;
}

async function storeSyncs(node: TestNode): Promise<number> {
  return Number((await adminRequest(node.meshAddress, "admin.node.info")).storeSyncs);
}

function same(actual: Uint8Array, expected: Uint8Array): boolean {
  return Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength));
}

describe("creating replicated volumes", () => {
  test("--replicas 4 on three nodes, 3 on two nodes, 0 and 'two' are refused with one line and exit 2", async () => {
    for (const [args, message] of [
      [["--replicas", "4"], "--replicas '4': give the number of copies of each page, 1 to 3"],
      [["--replicas", "0"], "--replicas '0': give the number of copies of each page, 1 to 3"],
      [["--replicas", "two"], "--replicas 'two'"],
      [["--replicas", "3", "--nodes", "node1,node2"], "--replicas 3: the volume is placed on 2 node(s), and no two copies of a page may share a node"],
    ] as const) {
      const created = await cluster.shoal(["volume", "create", "bad", "--size", "8M", ...args]);
      expect(created.exitCode).toBe(2);
      expect(created.stderr).toContain(message);
      expect(created.stderr.trim().split("\n")).toHaveLength(1);
    }
    expect(JSON.parse((await cluster.shoal(["volume", "list", "--json"])).stdout).volumes).toEqual([]);
  });

  test("a node refuses --default-replicas outside 1-3 at start, with one line and exit 2", async () => {
    const started = await run([...shoalCommand(), "node", "--data", `${cluster.root}/never`, "--default-replicas", "5", "--listen", "127.0.0.1:0", "--nbd", "127.0.0.1:0"]);
    expect(started.exitCode).toBe(2);
    expect(started.stderr).toContain("--default-replicas '5': give the number of copies of each page, 1 to 3");
  });

  test("a node refuses a --replica-timeout it cannot keep (0, under 500ms, over 10m, not a duration) with one line and exit 2", async () => {
    for (const [value, says] of [["0s", "give 500ms to 10m"], ["100ms", "give 500ms to 10m"], ["11m", "give 500ms to 10m"], ["soon", "is not a duration"]]) {
      const started = await run([...shoalCommand(), "node", "--data", `${cluster.root}/never`, "--replica-timeout", value!, "--listen", "127.0.0.1:0", "--nbd", "127.0.0.1:0"]);
      expect(started.exitCode).toBe(2);
      expect(started.stderr.trim().split("\n")).toHaveLength(1);
      expect(started.stderr).toContain(says!);
    }
  });

  test("volume create --replicas 2: list, info and route show give each node a third of the primaries and a third of the second copies", async () => {
    const created = await cluster.shoal(["volume", "create", "r", "--size", "48M", "--replicas", "2"]);
    expect(created.exitCode).toBe(0);
    expect(created.stdout).toContain("2 copies of each page");
    const listed = JSON.parse((await cluster.shoal(["volume", "list", "--json"])).stdout);
    expect(listed.volumes[0]).toMatchObject({ name: "r", replicas: 2, state: "ready" });
    expect((await cluster.shoal(["volume", "list"])).stdout).toMatch(/^r\s+48M\s+4M\s+12\s+2\s+ready/m);
    const info = JSON.parse((await cluster.shoal(["volume", "info", "r", "--json"])).stdout);
    expect(info.nodes.map((n: { node: string; pages: number; replicaPages: number }) => [n.node, n.pages, n.replicaPages])).toEqual([
      ["node1", 4, 4],
      ["node2", 4, 4],
      ["node3", 4, 4],
    ]);
    expect((await cluster.shoal(["volume", "info", "r"])).stdout).toMatch(/^node2\s+4\s+4\s/m);
    const shown = JSON.parse((await cluster.shoal(["route", "show", "r", "--json"], { node: cluster.nodes[2] })).stdout);
    expect(shown.replicas).toBe(2);
    const node1 = shown.nodes.find((n: { node: string }) => n.node === "node1");
    expect(node1.runs.map((run: { text: string }) => run.text)).toEqual(["0-9/3"]);
    expect(node1.replicaRuns.map((run: { text: string }) => run.text)).toEqual(["2-11/3"]);
    const human = (await cluster.shoal(["route", "show", "r"])).stdout;
    expect(human).toContain("2 copies");
    expect(human).toMatch(/node1\s+4\s+4\s+\S+\s+0-9\/3\s+2-11\/3/);
  });
});

describe("the data path of a volume with two copies", () => {
  test("nbdcopy and qemu-io write through every node; every node reads back the same bytes", async () => {
    const [node1, node2, node3] = cluster.nodes;
    const image = pattern(7, SIZE);
    fs.writeFileSync(`${cluster.root}/image`, image);
    const copied = await run(["nbdcopy", `${cluster.root}/image`, node2!.nbdUrl("r")]);
    expect(copied.exitCode).toBe(0);
    model.set(image);
    const written = await qemuIo(node1!.nbdUrl("r"), "write -P 0x5a 1M 6M", "write -z 20M 1M", "flush");
    expect(written.exitCode).toBe(0);
    model.fill(0x5a, 1 * MiB, 7 * MiB);
    model.fill(0, 20 * MiB, 21 * MiB);
    const discarded = await qemuIo(node3!.nbdUrl("r"), "write -P 0x33 40M 64K", "discard 44M 4M", "flush");
    expect(discarded.exitCode).toBe(0);
    model.fill(0x33, 40 * MiB, 40 * MiB + 64 * 1024);
    model.fill(0, 44 * MiB, 48 * MiB);
    for (const node of cluster.nodes) expect(same(await readWhole(node), model)).toBe(true);
  });

  test("each node's store holds both the pages it is primary of and those it keeps the second copy of", async () => {
    const info = JSON.parse((await cluster.shoal(["volume", "info", "r", "--json"])).stdout);
    // Pages 11 (discarded whole) may be a hole; every other page was written on both its copies.
    for (const node of info.nodes as { node: string; pagesWritten: number }[]) expect(node.pagesWritten).toBeGreaterThanOrEqual(7);
    const total = (info.nodes as { pagesWritten: number }[]).reduce((sum, node) => sum + node.pagesWritten, 0);
    expect(total).toBeGreaterThanOrEqual(2 * 11);
  });

  test("a FLUSH through a node that holds no copy of a page syncs both copies", async () => {
    const [node1, node2, node3] = cluster.nodes;
    // Page 1: primary node2, second copy node3; written and flushed through node1.
    const before = await Promise.all([storeSyncs(node2!), storeSyncs(node3!)]);
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "r" });
    try {
      const data = pattern(11, 256 * 1024);
      await client.write(PAGE + 512 * 1024, data);
      model.set(data, PAGE + 512 * 1024);
      await client.flush();
    } finally {
      await client.close();
    }
    const after = await Promise.all([storeSyncs(node2!), storeSyncs(node3!)]);
    expect(after[0]).toBeGreaterThan(before[0]!);
    expect(after[1]).toBeGreaterThan(before[1]!);
  });

  test("with any one node killed -9 after a FLUSH, the whole volume reads the same through the other two", async () => {
    for (const [index, victim] of cluster.nodes.entries()) {
      await victim.kill9();
      for (const node of cluster.nodes.filter((_, other) => other !== index)) {
        const startedMs = performance.now();
        expect(same(await readWhole(node), model)).toBe(true);
        console.log(`whole 48 MiB volume read through ${node.id} with ${victim.id} down in ${(performance.now() - startedMs).toFixed(0)} ms`);
      }
      // nbdcopy asks for block status first: it too must reach a copy that is up.
      // This node holds no copy of the pages whose primary was the victim.
      const survivor = cluster.nodes[(index + 2) % 3]!;
      const copy = `${cluster.root}/copy-${victim.id}`;
      const copied = await run(["nbdcopy", survivor.nbdUrl("r"), copy]);
      expect(copied.stderr).toBe("");
      expect(same(fs.readFileSync(copy), model)).toBe(true);
      // volume export pulls each page from its primary's node, and the rest through the node asked.
      const exported = await cluster.shoal(["volume", "export", "r", `${copy}.export`, "--quiet"], { node: survivor });
      expect(exported.stderr).toBe("");
      expect(same(fs.readFileSync(`${copy}.export`), model)).toBe(true);
      await victim.start();
      await cluster.waitConverged();
      // Two copies: the next kill must find the returning node's copies up to date again.
      await waitSetsWhole(cluster, "r");
    }
  });

  test("with a copy's node down, writes of its pages go on with the other copy, and it catches up when back", async () => {
    const [node1, node2, node3] = cluster.nodes;
    await node3!.kill9();
    await waitFor("node1 to see node3 down", async () => {
      const nodes = (await adminRequest(node1!.meshAddress, "admin.route.nodes", {}, 3000)).nodes as { id: string; state: string }[];
      return nodes.find((node) => node.id === "node3")?.state === "down";
    });
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "r" });
    try {
      // Page 0: node1 and node2. Page 2: node3 (primary) and node1. Page 1: node2 and node3.
      await client.write(0, new Uint8Array(4096).fill(0x42));
      model.fill(0x42, 0, 4096);
      for (const offset of [2 * PAGE, 1 * PAGE]) {
        await client.write(offset, new Uint8Array(4096).fill(0x43));
        model.fill(0x43, offset, offset + 4096);
      }
      await client.flush();
    } finally {
      await client.close();
    }
    const info = await cluster.shoal(["volume", "info", "r"], { node: node1 });
    // node3 left every set it was in: it holds no copy until it is back and caught up.
    expect(info.stdout).toMatch(/node3\s+0\s+0\s/);
    await node3!.start();
    await cluster.waitConverged();
    await waitSetsWhole(cluster, "r");
    for (const node of cluster.nodes) expect(same(await readWhole(node), model)).toBe(true);
  });

  test("a FLUSH-acknowledged write survives kill -9 of the second copy's node and is read from it once the other copy is gone", async () => {
    const [node1, node2, node3] = cluster.nodes;
    // Page 4: primary node2, second copy node3.
    const data = pattern(23, PAGE);
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "r" });
    try {
      await client.write(4 * PAGE, data);
      await client.flush();
    } finally {
      await client.close();
    }
    model.set(data, 4 * PAGE);
    await node3!.kill9();
    await node3!.start();
    await cluster.waitConverged();
    await waitSetsWhole(cluster, "r");
    await node2!.kill9();
    const reader = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "r" });
    try {
      expect(same(await reader.read(4 * PAGE, PAGE), data)).toBe(true);
    } finally {
      await reader.close();
    }
    await node2!.start();
    await cluster.waitConverged();
    await waitSetsWhole(cluster, "r");
  });
});

describe("three copies", () => {
  // Two of three nodes down leave no majority to change the sets or to vouch for a copy: reads
  // and writes wait (and fail after the hold), as in any majority-quorum system.
  test("a volume of three copies on three nodes takes writes and reads whole through the two left when one is killed -9", async () => {
    const [node1, node2, node3] = cluster.nodes;
    expect((await cluster.shoal(["volume", "create", "r3", "--size", "24M", "--replicas", "3"])).exitCode).toBe(0);
    const written = await qemuIo(node2!.nbdUrl("r3"), "write -P 0x71 0 12M", "write -P 0x72 12M 12M", "flush");
    expect(written.exitCode).toBe(0);
    await node1!.kill9();
    expect((await qemuIo(node3!.nbdUrl("r3"), "write -P 0x73 4M 8M", "flush")).exitCode).toBe(0);
    const expected = new Uint8Array(24 * MiB);
    expected.fill(0x71, 0, 12 * MiB);
    expected.fill(0x72, 12 * MiB);
    expected.fill(0x73, 4 * MiB, 12 * MiB);
    for (const node of [node2!, node3!]) {
      const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: "r3" });
      try {
        expect(same(await client.read(0, 24 * MiB), expected)).toBe(true);
      } finally {
        await client.close();
      }
    }
    await node1!.start();
    await cluster.waitConverged();
    await waitSetsWhole(cluster, "r3");
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "r3" });
    try {
      expect(same(await client.read(0, 24 * MiB), expected)).toBe(true);
    } finally {
      await client.close();
    }
  });
});
