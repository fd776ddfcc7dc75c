// Volumes up to the maximum (64 TiB at 4 MiB pages) on real processes: the routing table travels
// as runs, so a three-node group creates, serves, snapshots, moves, archives and catches a
// restarted member up on them, and keeps its links steady; sizes over the maximum are refused
// with exit 2 before anything is created anywhere.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import { ShoalError } from "../../core/errors.ts";
import type { FrameHeader } from "../../transport/mesh/frame.ts";
import type { MeshConnection, Reply } from "../../transport/mesh/mesh-connection.ts";
import { MeshServer } from "../../transport/mesh/mesh.ts";
import { Database } from "bun:sqlite";
import { run, TestCluster, waitFor, type TestNode } from "./_cluster.ts";

const TiB = 1024 ** 4;
const MiB = 1024 ** 2;

/** qemu-io on `url`; leading "-r" opens it read-only (as a snapshot's export must be). */
function qemuIo(url: string, ...commands: string[]) {
  const flags = commands.filter((c) => c.startsWith("-"));
  return run(["qemu-io", "-f", "raw", ...flags, ...commands.filter((c) => !c.startsWith("-")).flatMap((c) => ["-c", c]), url]);
}

/** A qemu-io run whose every command (reads with -P patterns included) succeeded. */
function expectClean(result: { exitCode: number; stdout: string; stderr: string }): void {
  expect(result.stdout + result.stderr).not.toMatch(/verification failed|error|not found/i);
  expect(result.exitCode).toBe(0);
}

/** How often each node logged a peer coming up: a reconnect storm shows as this growing. */
function upLines(nodes: TestNode[]): number[] {
  return nodes.map((node) => node.stderrLog.split("\n").filter((line) => / is up \(/.test(line)).length);
}

async function volumeNames(node: TestNode): Promise<string[]> {
  const listed = await adminRequest(node.meshAddress, "admin.volume.list", {}, 5000);
  return (listed.volumes as { name: string }[]).map((volume) => volume.name);
}

/** Every node sees every `expected` member up. */
async function waitAllUp(nodes: TestNode[], expected: string[]): Promise<void> {
  for (const node of nodes) {
    await waitFor(`${node.id} to see ${expected.join(", ")} up`, async () => {
      const members = (await adminRequest(node.meshAddress, "admin.route.nodes", {}, 5000)).nodes as { id: string; state: string }[];
      return members.length === expected.length && members.every((member) => member.state === "up");
    });
  }
}

/**
 * The links hold: every node sees every member up, and over a few seconds of heartbeats no link
 * comes up again more than once (a link dropped by a loaded 2-CPU VM's missed heartbeat comes
 * back once; a reconnect storm is hundreds a second), and no record is refused or oversized.
 */
async function expectSteadyGroup(nodes: TestNode[], members = nodes.map((node) => node.id)): Promise<void> {
  await waitAllUp(nodes, members);
  const before = upLines(nodes);
  const logStarts = nodes.map((node) => node.stderrLog.length);
  await Bun.sleep(3000); // an observation window: the condition is what does NOT happen in it
  const after = upLines(nodes);
  nodes.forEach((node, index) => {
    expect(after[index]! - before[index]!).toBeLessThanOrEqual(members.length - 1);
    expect(node.stderrLog.slice(logStarts[index])).not.toMatch(/refusing volume record|over the limit|could not be sent|sync .* failed/);
  });
  await waitAllUp(nodes, members);
}

describe("large volumes", () => {
  let cluster: TestCluster;
  let dir: string;
  beforeAll(async () => {
    cluster = await TestCluster.start(3);
    dir = fs.mkdtempSync(path.join(cluster.root, "archives-"));
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test("8 TiB and 64 TiB volumes: created, shown, served at their far end through every node, snapshotted, moved and archived; a member down at the create catches up", async () => {
    const [node1, node2, node3] = cluster.nodes as [TestNode, TestNode, TestNode];
    const created = await cluster.shoal(["volume", "create", "y8", "--size", "8T", "--json"]);
    expect(created.stderr).toBe("");
    expect(created.exitCode).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({ pageCount: 2 * 1024 * 1024, nodes: ["node1", "node2", "node3"] });

    // node3 misses the 64 TiB create and every change after it until it comes back.
    await node3.kill9();
    const big = await cluster.shoal(["volume", "create", "y64", "--size", "64T", "--nodes", "node1,node2", "--json"], { node: node2 });
    expect(big.stderr).toBe("");
    expect(big.exitCode).toBe(0);
    const lastPage64 = 16 * 1024 * 1024 - 1;
    expect(JSON.parse(big.stdout).pageCount).toBe(lastPage64 + 1);

    // route show prints the striped tables as one run per node, whatever the size.
    const shown = await cluster.shoal(["route", "show", "y8"]);
    expect(shown.exitCode).toBe(0);
    expect(shown.stdout).toContain("0-2097150/3");
    expect(shown.stdout).toContain("2-2097149/3");
    const shown64 = JSON.parse((await cluster.shoal(["route", "show", "y64", "--json"], { node: node2 })).stdout);
    expect(shown64.nodes.map((n: { runs: { text: string }[] }) => n.runs.map((run) => run.text))).toEqual([["0-16777214/2"], ["1-16777215/2"]]);

    // Data at the far end of both volumes, written through one node and read through another.
    const end8 = 8 * TiB - 4 * MiB;
    const end64 = 64 * TiB - 4 * MiB;
    expect((await qemuIo(node1.nbdUrl("y8"), `write -P 0x81 ${end8} 4M`, "write -P 0x80 0 64K", "flush")).exitCode).toBe(0);
    expect((await qemuIo(node1.nbdUrl("y64"), `write -P 0x64 ${end64} 4M`, `write -P 0x65 ${32 * TiB} 1M`, "flush")).exitCode).toBe(0);
    const read8 = await qemuIo(node2.nbdUrl("y8"), `read -P 0x81 ${end8} 4M`, "read -P 0x80 0 64K", `read -P 0 ${4 * TiB} 1M`);
    expectClean(read8);

    // node3 comes back: it learns of y64 (and what else it missed) and serves it.
    await node3.start();
    await cluster.waitConverged();
    await waitFor("node3 to catch up on y64", async () => (await volumeNames(node3)).includes("y64"));
    const read64 = await qemuIo(node3.nbdUrl("y64"), "-r", `read -P 0x64 ${end64} 4M`, `read -P 0x65 ${32 * TiB} 1M`);
    expectClean(read64);

    // A snapshot of both, and a move of y64's last page onto node3, which held none of it.
    const snap = await cluster.shoal(["snap", "create", "y8", "y64", "--name", "s1"]);
    expect(snap.stderr).toBe("");
    expect(snap.exitCode).toBe(0);
    const moved = await cluster.shoal(["route", "move", "y64", "--pages", `${lastPage64 - 2}-${lastPage64}`, "--to", "node3", "--json"]);
    expect(moved.stderr.split("\n").filter((line) => !line.startsWith("move "))).toEqual([""]);
    expect(moved.exitCode).toBe(0);
    expect(JSON.parse(moved.stdout)).toMatchObject({ state: "done", pagesMoved: 3 });
    await waitFor("every node to have the moved table", async () => {
      const docs = await Promise.all(cluster.nodes.map((node) => cluster.shoal(["route", "show", "y64", "--json"], { node })));
      return docs.every((doc) => {
        const parsed = JSON.parse(doc.stdout) as { nodes: { node: string; runs: { text: string }[] }[] };
        return parsed.nodes.find((n) => n.node === "node3")?.runs.map((run) => run.text).join(",") === `${lastPage64 - 2}-${lastPage64}`;
      });
    });
    for (const node of cluster.nodes) {
      const after = await qemuIo(node.nbdUrl("y64"), "-r", `read -P 0x64 ${end64} 4M`);
      expectClean(after);
      const before = await qemuIo(node.nbdUrl("y64@s1"), "-r", `read -P 0x64 ${end64} 4M`, `read -P 0 ${end64 - 4 * MiB} 4M`);
      expectClean(before);
    }

    // An archive of the 8 TiB snapshot holds the pages written, and verifies.
    const archive = path.join(dir, "y8.tar");
    const archived = await cluster.shoal(["archive", "create", "y8@s1", "-o", archive, "--json"]);
    expect(archived.stderr).toBe("");
    expect(archived.exitCode).toBe(0);
    expect(JSON.parse(archived.stdout).pages).toBe(2);
    const verified = await cluster.shoal(["archive", "verify", "-i", archive, "--json"]);
    expect(verified.exitCode).toBe(0);
    expect(JSON.parse(verified.stdout).ok).toBe(true);
    // And the 64 TiB one restores into a new volume that reads back the same at both ends.
    const archive64 = path.join(dir, "y64.tar");
    expect((await cluster.shoal(["archive", "create", "y64@s1", "-o", archive64])).exitCode).toBe(0);
    const restored = await cluster.shoal(["archive", "restore", "y64r", "-i", archive64, "--create", "--json"]);
    expect(restored.stderr).toBe("");
    expect(restored.exitCode).toBe(0);
    expect(JSON.parse(restored.stdout).pages).toBe(2);
    expectClean(await qemuIo(node3.nbdUrl("y64r"), "-r", `read -P 0x64 ${end64} 4M`, `read -P 0x65 ${32 * TiB} 1M`, `read -P 0 ${TiB} 1M`));

    await expectSteadyGroup(cluster.nodes);
  }, 240_000);

  test("128 GiB at 64 KiB pages (2 Mi pages) works like the rest", async () => {
    const created = await cluster.shoal(["volume", "create", "small-pages", "--size", "128G", "--page-size", "64K", "--json"]);
    expect(created.stderr).toBe("");
    expect(created.exitCode).toBe(0);
    const far = 128 * 1024 ** 3 - 64 * 1024;
    expect((await qemuIo(cluster.nodes[2]!.nbdUrl("small-pages"), `write -P 0x42 ${far} 64K`, "flush")).exitCode).toBe(0);
    const read = await qemuIo(cluster.nodes[0]!.nbdUrl("small-pages"), "-r", `read -P 0x42 ${far} 64K`);
    expectClean(read);
    await waitFor("every node to know small-pages", async () => (await Promise.all(cluster.nodes.map(volumeNames))).every((names) => names.includes("small-pages")));
    await expectSteadyGroup(cluster.nodes);
  }, 120_000);

  test("over the maximum (128T, 5P, 2T at 64K pages) is one line with exit 2, and no node has the volume", async () => {
    for (const [name, size, pageSize] of [["y128", "128T", undefined], ["y5p", "5P", undefined], ["y5p-big-pages", "5P", "256M"], ["y2t", "2T", "64K"]] as const) {
      // Through the CLI, and straight to a node (an older CLI would not check).
      const refused = await cluster.shoal(["volume", "create", name, "--size", size, ...(pageSize ? ["--page-size", pageSize] : [])]);
      expect(refused.exitCode).toBe(2);
      expect(refused.stdout).toBe("");
      expect(refused.stderr.trim().split("\n")).toHaveLength(1);
      expect(refused.stderr).toMatch(/over the maximum of 16777216 \(.+ at this page size\)/);
      const sizeBytes = { "128T": 128 * TiB, "5P": 5 * 1024 * TiB, "2T": 2 * TiB }[size];
      const direct = adminRequest(cluster.nodes[1]!.meshAddress, "admin.volume.create", { name, sizeBytes, pageSizeBytes: pageSize === "256M" ? 256 * MiB : pageSize ? 64 * 1024 : undefined });
      await expect(direct).rejects.toMatchObject({ code: "BAD_ARGUMENT" });
    }
    for (const node of cluster.nodes) expect((await volumeNames(node)).filter((name) => name.startsWith("y128") || name.startsWith("y5p") || name === "y2t")).toEqual([]);
    await expectSteadyGroup(cluster.nodes);
  }, 60_000);

  test("records a member cannot take (over the maximum, a table with a gap) are refused once, loudly; the links stay up and no sync storm follows", async () => {
    const [node1, node2, node3] = cluster.nodes as [TestNode, TestNode, TestNode];
    const info = await adminRequest(node1.meshAddress, "admin.node.info", {}, 5000);
    const members = (await adminRequest(node1.meshAddress, "admin.route.nodes", {}, 5000)).nodes as { id: string; meshAddress: string; nbdAddress: string }[];
    const runs = (...quads: number[]) => new Uint8Array(Uint32Array.from(quads).buffer);
    const record = (name: string, sizeBytes: number, routing: FrameHeader) => ({
      name, uid: `uid-${name}`, sizeBytes, pageSizeBytes: 4 * MiB, createdAtMs: 1, version: 7, deleted: false, routing,
    });
    const tooBig = record("bad-huge", 128 * TiB, { version: 1, nodes: ["node1"], runs: runs(0, 32 * 1024 * 1024 - 1, 1, 0) });
    const gap = record("bad-gap", 64 * MiB, { version: 1, nodes: ["node1", "node2"], runs: runs(0, 7, 1, 0) });
    // node3's place in the group is taken by an impostor that offers both records.
    await node3.kill9();
    // It answers as node3 from node3's own data directory (a member with a bug, not a stranger):
    // a stranger would be refused at hello before it could offer anything.
    const identity = readNodeIdentity(node3.dataDir);
    const dumps = new Map<string, number>();
    const pushed: Promise<unknown>[] = [];
    const pushedOn = new Set<MeshConnection>();
    const handler = (connection: MeshConnection, op: string, args: FrameHeader): Reply => {
      switch (op) {
        case "hello": {
          const peer = String((args.member as { id: string }).id);
          connection.peerId = peer;
          return { result: { groupId: info.groupId, nodeId: "node3", identity, digest: "impostor" } };
        }
        case "ping":
          // Once linked, it pushes one of them, as a member publishing a change would (before the
          // hello is answered a member takes no records from it).
          if (!pushedOn.has(connection)) {
            pushedOn.add(connection);
            pushed.push(connection.request("catalog.volume", { record: gap }, undefined, 5000).then(
              () => "taken",
              (err: ShoalError) => err.code,
            ));
          }
          return { result: { groupId: info.groupId, digest: "impostor" } };
        case "catalog.dump":
          dumps.set(connection.peerId!, (dumps.get(connection.peerId!) ?? 0) + 1);
          return { result: { groupId: info.groupId, members: members.map((m) => ({ ...m, joinedAtMs: 1 })), volumes: [tooBig, gap], snapshots: [] } };
        default:
          throw new ShoalError("BAD_REQUEST", `the impostor does not do ${op}`);
      }
    };
    const impostor = new MeshServer(handler, { info: () => {}, warn: () => {} });
    impostor.listen("127.0.0.1", node3.meshPort);
    try {
      await waitFor("node1 and node2 to link to the impostor and refuse its records", () =>
        [node1, node2].every((node) => /refusing volume record 'bad-huge'/.test(node.stderrLog) && /refusing volume record 'bad-gap'/.test(node.stderrLog)),
      );
      expect(await Promise.all(pushed)).toEqual(pushed.map(() => "BAD_FRAME"));
      const steady = [node1, node2];
      const dumpsBefore = new Map(dumps);
      // Several heartbeats, each carrying a digest that still differs: no new pull, links up.
      await expectSteadyGroup(steady, ["node1", "node2", "node3"]);
      expect(dumps).toEqual(dumpsBefore);
      for (const node of steady) {
        // Refused once each, loudly, naming what and why; not again at every heartbeat.
        const lines = node.stderrLog.split("\n").filter((line) => line.includes("refusing volume record"));
        expect(lines.filter((line) => line.includes("'bad-huge'"))).toHaveLength(1);
        expect(lines.find((line) => line.includes("'bad-huge'"))).toMatch(/over the maximum of 16777216/);
        // Offered twice (pushed, and in the dump), logged once.
        expect(lines.filter((line) => line.includes("'bad-gap'"))).toHaveLength(1);
        expect(lines.find((line) => line.includes("'bad-gap'"))).toMatch(/cover 8 pages, the volume has 16/);
        expect(dumps.get(node.id)).toBeLessThanOrEqual(2);
        expect(await volumeNames(node)).not.toContain("bad-huge");
        expect(await volumeNames(node)).not.toContain("bad-gap");
      }
    } finally {
      impostor.stop();
    }
    await node3.start();
    await cluster.waitConverged();
    await expectSteadyGroup(cluster.nodes);
  }, 120_000);
});

/** The random identity a node keeps in its data directory's catalog (read while it is stopped). */
function readNodeIdentity(dataDir: string): string {
  const db = new Database(path.join(dataDir, "catalog.db"), { readonly: true });
  try {
    return (db.query("SELECT value FROM meta WHERE key = 'node_identity'").get() as { value: string }).value;
  } finally {
    db.close();
  }
}
