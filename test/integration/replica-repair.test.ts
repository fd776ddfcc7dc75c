// A node of a replicated volume that never comes back, and one drained while it serves: four real
// nodes, a `--replicas 2` volume under writers through the nodes that stay up and a `--replicas 3`
// one. node3 is killed -9 and `route forget node3` re-creates its copies on the others and takes it
// out of the majority (node2's loss after it is then survived by the two left); then a
// drain of node4 is refused while the three-copy volume has no room, and once it is gone node4 is
// drained (its copies move one at a time) and forgotten. Each time no writer sees an error, every
// page has its copies on the nodes that keep them (spread evenly), every acknowledged write reads
// back through every node, the copies are identical (each node reads its own copies locally), and
// so is every snapshot taken before, or while the node was away: the new copies get its layers.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { checkCut, WriteHistory } from "./_cut-checker.ts";
import { lostWrites, readStamps, startWriters } from "./_writers.ts";
import { TestCluster, waitFor, waitSetsWhole } from "./_cluster.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";

/** 16 pages of 1 MiB over four nodes: four page groups, home {node1,node2}, {node2,node3}, {node3,node4}, {node4,node1}. */
const BLOCKS = 4096;
/** What the three-copy volume 't' holds: a byte per 4 KiB block. */
const THREE = new Uint8Array(8 * 1024 * 1024).map((_, index) => (index >> 12) & 0xff);
let cluster: TestCluster;
/** Every write of every test: each block's content and each snapshot is judged against all of them. */
const history = new WriteHistory();

beforeAll(async () => {
  cluster = await TestCluster.start(4, {}, () => ["--replica-timeout", "1s"]);
  const created = await cluster.shoal(["volume", "create", "r", "--size", "16M", "--page-size", "1M", "--replicas", "2"]);
  expect(created.exitCode).toBe(0);
  // Three copies on four nodes: node3's loss leaves room (the fourth node) for each of its groups.
  expect((await cluster.shoal(["volume", "create", "t", "--size", "8M", "--page-size", "1M", "--replicas", "3"])).exitCode).toBe(0);
  await waitSetsWhole(cluster, "r");
  await waitSetsWhole(cluster, "t");
  const client = await NbdClient.connect({ host: "127.0.0.1", port: cluster.nodes[0]!.nbdPort, exportName: "t" });
  await client.write(0, THREE);
  await client.flush();
  await client.close();
});
afterAll(async () => {
  await cluster?.stop();
});

/** The table's sets as node lists: "v6 node1@1+node2@1 node2@1+node1@6 (home ...)". */
function setsOf(table: string): string[][] {
  return table.split(" (")[0]!.split(" ").slice(1).map((set) => set.split("+").map((entry) => entry.split("@")[0]!));
}

/** Each snapshot reads the same through every node (each reads its own copies locally) and is a cut of what the writers wrote. */
async function expectSnapshotsSame(names: string[], nodes: typeof cluster.nodes): Promise<void> {
  for (const name of names) {
    const reads = await Promise.all(nodes.map((node) => readStamps(node, `r@${name}`, BLOCKS)));
    const verdict = checkCut(history, reads[0]!);
    expect(verdict.ok ? "cut" : `${name}: ${verdict.reason}`).toBe("cut");
    for (const stamps of reads.slice(1)) expect([...stamps]).toEqual([...reads[0]!]);
  }
}

/** Writers go on a little after the repair, then stop: none may have seen an error. */
async function stopWriters(writers: Awaited<ReturnType<typeof startWriters>>, what: string): Promise<void> {
  await Bun.sleep(500);
  const outcome = await writers.stop();
  console.log(`${what}; ${history.writes.size} writes, longest ${outcome.maxLatencyMs.toFixed(0)} ms`);
  expect(outcome.firstError).toBeUndefined();
  expect(outcome.errors).toBe(0);
}

/** node1, node2 and node4 (node3 is gone) each see every page of 'r' with all its copies. */
async function waitWholeOnLiveNodes(): Promise<void> {
  await waitFor("node1, node2 and node4 to see the copies whole", async () => {
    for (const index of [0, 1, 3]) if (!(await replicaSets(index)).whole) return false;
    return true;
  });
}

async function replicaSets(nodeIndex: number, volume = "r"): Promise<{ table: string; whole: boolean; voters: string[]; copiedBytes: number }> {
  const shown = await cluster.shoal(["route", "show", volume, "--json"], { node: cluster.nodes[nodeIndex] });
  return JSON.parse(shown.stdout).replicaSets;
}

test("forget of a node that is up or unknown is refused with one line", async () => {
  const up = await cluster.shoal(["route", "forget", "node3"]);
  expect(up.exitCode).toBe(4);
  expect(up.stderr).toContain("node node3 is up and holds copies of 'r', 't'; drain it, or stop it first");
  expect(up.stderr.trim().split("\n")).toHaveLength(1);
  const badTimeout = await cluster.shoal(["route", "forget", "node3", "--timeout", "soon"]);
  expect(badTimeout.exitCode).toBe(2);
  expect(badTimeout.stderr).toContain("--timeout 'soon' is not a duration");
  const unknown = await cluster.shoal(["route", "forget", "node9"]);
  expect(unknown.exitCode).toBe(3);
  expect(unknown.stderr.trim().split("\n")).toHaveLength(1);
});

test("node3 killed -9 and forgotten under writers: its copies re-created on the others, no client error, no acknowledged write lost, copies identical", async () => {
  const [node1, node2, node3, node4] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0]];
  const writers = await startWriters([node1, node2, node4], "r", history, { writersPerNode: 2, blocks: BLOCKS });
  await Bun.sleep(500);
  // A snapshot every copy holds, and one taken while node3 is away: the new copies get both layers.
  expect((await cluster.shoal(["snap", "create", "r", "--name", "before-loss"])).exitCode).toBe(0);
  await Bun.sleep(200);
  await node3.kill9();
  // Out of every set (each survivor drops it from the groups it serves: one change or several).
  await waitFor("the others to drop node3", async () => !setsOf((await replicaSets(0)).table).some((set) => set.includes("node3")));
  expect((await cluster.shoal(["snap", "create", "r", "--name", "while-away", "--mode", "timestamp"])).exitCode).toBe(0);
  const startedMs = performance.now();
  const forgotten = await cluster.shoal(["route", "forget", "node3", "--json"]);
  const forgetMs = performance.now() - startedMs;
  expect(forgotten.exitCode).toBe(0);
  // Progress on stderr (not a terminal: a line every 2 s), the result on stdout.
  for (const line of forgotten.stderr.trim().split("\n").filter(Boolean)) expect(line).toMatch(/^repairing '[rt]': v/);
  const result = JSON.parse(forgotten.stdout);
  expect(result.forgotten).toBe(true);
  // node3 was home to two groups; each gets one of the others, never one that already holds it.
  expect(result.rehomed).toContainEqual({ volume: "r", groups: 2, to: { node1: 1, node2: 1 } });
  // 't' kept node3 in three groups: each gets the one node it lacked.
  expect(result.rehomed).toContainEqual({ volume: "t", groups: 3, to: { node1: 1, node2: 1, node4: 1 } });
  expect(result.filled.r).not.toContain("node3@");
  expect(result.filled.t).not.toContain("node3@");
  await stopWriters(writers, `forget of node3: ${forgetMs.toFixed(0)} ms until the copies were whole; ${result.filled.r}`);

  const live = [node1, node2, node4];
  await waitWholeOnLiveNodes();
  // Every group has two copies, none on node3; node1 and node2 now hold three groups, node4 two.
  const sets = setsOf((await replicaSets(3)).table);
  expect(sets).toHaveLength(4);
  for (const set of sets) {
    expect(set).toHaveLength(2);
    expect(set).not.toContain("node3");
  }
  const share = (node: string) => sets.filter((set) => set.includes(node)).length;
  expect([share("node1"), share("node2"), share("node4")]).toEqual([3, 3, 2]);

  const reads = await Promise.all(live.map((node) => readStamps(node, "r", BLOCKS)));
  for (const stamps of reads) expect(lostWrites(history, stamps)).toEqual([]);
  for (const stamps of reads.slice(1)) expect([...stamps]).toEqual([...reads[0]!]);
  await expectSnapshotsSame(["before-loss", "while-away"], live);
  for (const node of live) {
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: "t" });
    expect(Buffer.from(await client.read(0, THREE.byteLength)).equals(Buffer.from(THREE))).toBe(true);
    await client.close();
  }
  for (const set of setsOf((await replicaSets(0, "t")).table)) expect([...set].sort()).toEqual(["node1", "node2", "node4"]);

  const text = (await cluster.shoal(["route", "show", "r"])).stdout;
  expect(text).toContain("replica sets v");
  expect(text).toContain(": every page has all its copies");
  const members = JSON.parse((await cluster.shoal(["route", "nodes", "--json"])).stdout);
  expect(members.nodes.map((member: { id: string }) => member.id)).not.toContain("node3");
}, 60_000);

test("after the forget node3 no longer counts toward the majority: with node2 killed too, node1 and node4 drop it and writes go on", async () => {
  const [node1, node2, , node4] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0]];
  // The forget took node3 out of the voters: a set change now needs two of node1, node2, node4
  // (with node3 still counted it would need three of four, and only two are up).
  expect((await replicaSets(0)).table).toContain("(voters node1,node2,node4)");
  expect((await replicaSets(3)).voters).toEqual(["node1", "node2", "node4"]);
  const writers = await startWriters([node1, node4], "r", history, { writersPerNode: 2, blocks: BLOCKS });
  await Bun.sleep(300);
  await node2.kill9();
  await waitFor("node1 and node4 to drop node2", async () => !setsOf((await replicaSets(0)).table).some((set) => set.includes("node2")));
  await Bun.sleep(300);
  const outcome = await writers.stop();
  console.log(`node2 killed after node3's forget: ${history.writes.size} writes, longest ${outcome.maxLatencyMs.toFixed(0)} ms`);
  expect(outcome.firstError).toBeUndefined();
  expect(outcome.errors).toBe(0);
  const reads = await Promise.all([node1, node4].map((node) => readStamps(node, "r", BLOCKS)));
  for (const stamps of reads) expect(lostWrites(history, stamps)).toEqual([]);
  expect([...reads[1]!]).toEqual([...reads[0]!]);
  // node2 comes back and is resynced: every page has its two copies again.
  await node2.start();
  await waitFor("node2 back in its sets", async () => (await replicaSets(0)).whole && (await replicaSets(1)).whole);
}, 60_000);

test("node4 drained under writers (its own clients too): its copies move to node1 and node2 one at a time, no client error, no acknowledged write lost; then it is forgotten", async () => {
  const [node1, node2, , node4] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0]];
  // 't' has a copy of every page on each of the three nodes left: no room, and nothing changes.
  const before = (await replicaSets(0)).table;
  const noRoom = await cluster.shoal(["route", "drain", "node4"]);
  expect(noRoom.exitCode).toBe(2);
  expect(noRoom.stderr).toContain("volume 't' keeps 3 copies and every other node of it already holds one");
  expect(noRoom.stderr.trim().split("\n")).toHaveLength(1);
  expect((await replicaSets(0)).table).toBe(before);
  expect((await cluster.shoal(["volume", "delete", "t"])).exitCode).toBe(0);

  const dry = await cluster.shoal(["route", "drain", "node4", "--dry-run", "--json"]);
  expect(dry.exitCode).toBe(0);
  expect(JSON.parse(dry.stdout).rehomed).toEqual([{ volume: "r", groups: 2, to: { node1: 1, node2: 1 } }]);
  expect(setsOf((await replicaSets(0)).table).some((set) => set.includes("node4"))).toBe(true);

  const writers = await startWriters([node1, node2, node4], "r", history, { writersPerNode: 2, blocks: BLOCKS });
  await Bun.sleep(500);
  expect((await cluster.shoal(["snap", "create", "r", "--name", "before-drain"])).exitCode).toBe(0);
  const startedMs = performance.now();
  const drained = await cluster.shoal(["route", "drain", "node4", "--json"]);
  const drainMs = performance.now() - startedMs;
  expect(drained.exitCode).toBe(0);
  const result = JSON.parse(drained.stdout);
  expect(result.rehomed).toEqual([{ volume: "r", groups: 2, to: { node1: 1, node2: 1 } }]);
  expect(result.filled.r).not.toContain("node4@");
  await stopWriters(writers, `drain of node4: ${drainMs.toFixed(0)} ms until its copies had moved; ${result.filled.r}`);

  await waitWholeOnLiveNodes();
  for (const set of setsOf((await replicaSets(3)).table)) expect([...set].sort()).toEqual(["node1", "node2"]);
  const reads = await Promise.all([node1, node2, node4].map((node) => readStamps(node, "r", BLOCKS)));
  for (const stamps of reads) expect(lostWrites(history, stamps)).toEqual([]);
  for (const stamps of reads.slice(1)) expect([...stamps]).toEqual([...reads[0]!]);
  await expectSnapshotsSame(["before-drain"], [node1, node2, node4]);

  // Its pages of 'r' (head and snapshot layers) are freed once it is out of every set and home.
  await waitFor("node4 to free its pages of 'r'", async () => {
    const shown = JSON.parse((await cluster.shoal(["route", "show", "r", "--json"], { node: node4 })).stdout);
    return shown.nodes.find((entry: { node: string }) => entry.node === "node4")?.bytesUsed === 0;
  });
  expect(node4.stderrLog).toContain("re-homed away from this node");
  // Through node4 (it forwards now) the volume and the snapshot read as before.
  expect([...(await readStamps(node4, "r", BLOCKS))]).toEqual([...reads[0]!]);
  await expectSnapshotsSame(["before-drain"], [node1, node4]);

  // It holds no copy now: forgetting it while it is up is allowed.
  const forgotten = await cluster.shoal(["route", "forget", "node4", "--json"], { node: node1 });
  expect(`${forgotten.exitCode} ${forgotten.stderr}`).toBe("0 ");
  expect(JSON.parse(forgotten.stdout).rehomed).toEqual([]);
  // It moved no copy but leaves the voters all the same.
  expect((await replicaSets(0)).voters).toEqual(["node1", "node2"]);
}, 60_000);
