// Snapshots of a volume with two copies while one copy's node is away (killed -9), in both modes:
// the copies that stayed take them, writes go on, the node restarts and catches up, and then
// every copy of every snapshot reads byte-identical and is a crash-consistent cut of what the
// clients wrote. The returning copy's catch-up brings each page with all its layers, and its
// pages from before it left go into the snapshot layers cut while it was away. Rollback and clone
// stay refused while the copy is away; a snapshot deleted while it is away goes on its return.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { adminRequest } from "../../cmd/_cli.ts";
import { BLOCK_BYTES, checkCut, WriteHistory } from "./_cut-checker.ts";
import { readExport, readStamps, startWriters } from "./_writers.ts";
import { TestCluster, waitFor, waitSetsWhole, type TestNode } from "./_cluster.ts";

const PAGE = 64 * 1024; // small pages: the written region spans pages of every node
const BLOCKS = 256; // 1 MiB written region, 16 pages
const SNAPSHOTS_PER_MODE = 4;
const TIMEOUT_MS = 1000;

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await TestCluster.start(3, {}, () => ["--replica-timeout", `${TIMEOUT_MS}ms`]);
  expect((await cluster.shoal(["volume", "create", "away", "--size", "4M", "--page-size", `${PAGE}`, "--replicas", "2"])).exitCode).toBe(0);
  await waitSetsWhole(cluster, "away");
});
afterAll(async () => {
  await cluster?.stop();
});

test("snapshots taken while a copy's node is killed -9 (hold and timestamp) hold the same cut on every copy once it is back", async () => {
  const [node1, node2, victim] = cluster.nodes as [TestNode, TestNode, TestNode];
  const history = new WriteHistory();
  // Writers through the nodes that stay (a node's own clients lose their connection when it is killed).
  const writers = await startWriters([node1, node2], "away", history, { writersPerNode: 2, blocks: BLOCKS });
  const names: string[] = [];
  const verdicts: string[] = [];
  try {
    await Bun.sleep(100);
    // A snapshot every copy holds, deleted while the victim is away: its catch-up waits until it has dropped that layer too.
    expect((await cluster.shoal(["snap", "create", "away", "--name", "before"], { node: node1 })).exitCode).toBe(0);
    await Bun.sleep(100);
    await victim.kill9();
    for (const node of [node1, node2]) {
      await waitFor(`${node.id} to drop ${victim.id}`, async () => JSON.parse((await cluster.shoal(["route", "show", "away", "--json"], { node })).stdout).replicaSets?.whole === false);
    }
    expect((await cluster.shoal(["snap", "delete", "away@before"], { node: node1 })).exitCode).toBe(0);
    for (const mode of ["hold", "timestamp"] as const) {
      for (let index = 0; index < SNAPSHOTS_PER_MODE; index++) {
        const name = `${mode}${index}`;
        const coordinator = index % 2 === 0 ? node1 : node2;
        await adminRequest(coordinator.meshAddress, "admin.snap.create", { volumes: ["away"], name, mode, holdTimeoutMs: 2000 });
        names.push(name);
        for (const node of [node1, node2]) {
          const verdict = checkCut(history, await readStamps(node, `away@${name}`, BLOCKS));
          if (!verdict.ok) verdicts.push(`${name} through ${node.id} while ${victim.id} is away: ${verdict.reason}`);
        }
        await Bun.sleep(50);
      }
    }
    // Rollback and clone would need the returning copy to replay them: still refused while it is away.
    for (const args of [["snap", "rollback", "away@hold0"], ["snap", "clone", "away@hold0", "copy"]]) {
      const refused = await cluster.shoal(args, { node: node1 });
      expect(refused.exitCode).toBe(5);
      expect(refused.stderr).toContain("volume 'away' has pages with a copy missing");
      expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    }
    await victim.start();
    await waitSetsWhole(cluster, "away");
    await Bun.sleep(200);
  } finally {
    const { errors, firstError } = await writers.stop();
    expect(firstError).toBeUndefined();
    expect(errors).toBe(0);
  }
  expect(verdicts).toEqual([]);
  // The returning node took the layers from its head before its catch-up copies were installed.
  expect(victim.stderrLog).toContain("cut while this copy was away, from the pages it held");
  const catchUpLines = victim.stderrLog.split("\n").filter((line) => line.includes("cut while this copy was away") || line.includes("disagree"));
  console.log(`${victim.id} on its return:\n${catchUpLines.map((line) => line.slice(0, 200)).join("\n")}`);
  // Each node reads its own copy of the pages it holds (the returning one too, now in its sets):
  // three identical reads of each snapshot, each a cut of what the clients wrote.
  for (const name of names) {
    const reads = await Promise.all(cluster.nodes.map((node) => readExport(node, `away@${name}`, BLOCKS * BLOCK_BYTES)));
    for (const [index, read] of reads.entries()) expect(read.equals(reads[0]!) ? "same" : `${name} differs on ${cluster.nodes[index]!.id}`).toBe("same");
    const verdict = checkCut(history, await readStamps(victim, `away@${name}`, BLOCKS));
    expect(verdict.ok ? "a cut" : `${name} through ${victim.id}: ${verdict.reason}`).toBe("a cut");
  }
  const heads = await Promise.all(cluster.nodes.map((node) => readExport(node, "away", 4 * 1024 * 1024)));
  for (const [index, head] of heads.entries()) expect(head.equals(heads[0]!) ? "same" : `the head differs on ${cluster.nodes[index]!.id}`).toBe("same");
  const shown = JSON.parse((await cluster.shoal(["route", "show", "away", "--json"], { node: node1 })).stdout);
  console.log(`${names.length} snapshots while ${victim.id} was away, ${history.writes.size} writes; node1's member: ${JSON.stringify(shown.replicaSets)}`);
}, 60_000);
