// A three-node group of real processes driven by qemu-io, qemu-img, nbdcopy, nbdinfo and our CLI.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { run, shoalCommand, TestCluster, waitFor } from "./_cluster.ts";

const MiB = 1024 * 1024;
let cluster: TestCluster;

beforeAll(async () => {
  cluster = await TestCluster.start(3);
});
afterAll(async () => {
  await cluster?.stop();
});

function qemuIo(url: string, ...commands: string[]) {
  return run(["qemu-io", "-f", "raw", ...commands.flatMap((c) => ["-c", c]), url]);
}

async function sha256File(file: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(file).stream()) hasher.update(chunk);
  return hasher.digest("hex");
}

describe("volumes on a three-node group", () => {
  test("volume create spreads pages over all nodes and every member reports the same routing table", async () => {
    const created = await cluster.shoal(["volume", "create", "vol1", "--size", "64M", "--json"]);
    expect(created.exitCode).toBe(0);
    const summary = JSON.parse(created.stdout);
    expect(summary).toMatchObject({ name: "vol1", sizeBytes: 64 * MiB, pageSizeBytes: 4 * MiB, pageCount: 16, nodes: ["node1", "node2", "node3"] });
    const shows = await Promise.all(cluster.nodes.map((node) => cluster.shoal(["route", "show", "vol1", "--json"], { node })));
    for (const show of shows) expect(show.exitCode).toBe(0);
    const docs = shows.map((show) => JSON.parse(show.stdout));
    expect(docs[1]).toEqual(docs[0]);
    expect(docs[2]).toEqual(docs[0]);
    expect(docs[0].nodes.map((n: { pages: number }) => n.pages)).toEqual([6, 5, 5]);
    const human = await cluster.shoal(["route", "show", "vol1"]);
    expect(human.stdout).toContain("0-15/3");
  });

  test("qemu-io writes through node 1 land on pages of nodes 2 and 3 and read back through node 3", async () => {
    const [node1, , node3] = cluster.nodes;
    const write = await qemuIo(
      node1!.nbdUrl("vol1"),
      "write -P 0xab 4M 1M", // page 1: node2
      "write -P 0xcd 8M 1M", // page 2: node3
      "write -P 0x5a 4092K 8K", // spans page 0 (node1) and page 1 (node2)
      "flush",
    );
    expect(write.exitCode).toBe(0);
    expect(write.stdout).not.toContain("error");
    const read = await qemuIo(node3!.nbdUrl("vol1"), "read -P 0xab 5M 0", "read -P 0xab 4100K 1020K", "read -P 0xcd 8M 1M", "read -P 0x5a 4092K 8K", "read -P 0 12M 4M");
    expect(read.exitCode).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed|error/);
    const info = JSON.parse((await cluster.shoal(["volume", "info", "vol1", "--json"])).stdout);
    const written = Object.fromEntries(info.nodes.map((n: { node: string; pagesWritten: number }) => [n.node, n.pagesWritten]));
    expect(written).toEqual({ node1: 1, node2: 1, node3: 1 });
  });

  test("one read over pages of other nodes and of the node asked comes back whole and in order, structured or simple", async () => {
    const [node1, , node3] = cluster.nodes;
    expect((await cluster.shoal(["volume", "create", "span", "--size", "32M"])).exitCode).toBe(0);
    await waitFor("node3 to know volume span", async () => (await run(["nbdinfo", "--size", node3!.nbdUrl("span")])).exitCode === 0);
    // Pages 1, 2, 3 live on node2, node3, node1: read through node3, the answer is remote, local, remote.
    const expected = new Uint8Array(12 * MiB);
    for (let index = 0; index < expected.length; index += 4096) expected.fill((index / 4096) % 251, index, index + 4096);
    const writer = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "span" });
    try {
      await writer.write(4 * MiB, expected);
    } finally {
      await writer.close();
    }
    for (const structuredReplies of [true, false]) {
      const reader = await NbdClient.connect({ host: "127.0.0.1", port: node3!.nbdPort, exportName: "span", structuredReplies });
      try {
        const whole = await reader.read(4 * MiB, 12 * MiB);
        expect(Buffer.compare(whole, expected)).toBe(0);
        // Starts and ends inside forwarded pages.
        const middle = await reader.read(4 * MiB + 12345, 8 * MiB);
        expect(Buffer.compare(middle, expected.subarray(12345, 12345 + 8 * MiB))).toBe(0);
      } finally {
        await reader.close();
      }
    }
  });

  test("nbdinfo reports size, flags and holes through any node; --list lists volumes", async () => {
    const [, node2] = cluster.nodes;
    const info = await run(["nbdinfo", "--json", node2!.nbdUrl("vol1")]);
    expect(info.exitCode).toBe(0);
    const doc = JSON.parse(info.stdout);
    const exp = doc.exports[0];
    expect(exp["export-size"]).toBe(64 * MiB);
    expect(exp.can_flush).toBe(true);
    expect(exp.can_fua).toBe(true);
    expect(exp.can_trim).toBe(true);
    expect(exp.can_zero).toBe(true);
    expect(exp.can_multi_conn).toBe(true);
    expect(exp.is_read_only).toBe(false);
    const list = await run(["nbdinfo", "--list", "--json", `nbd://127.0.0.1:${node2!.nbdPort}`]);
    expect(list.exitCode).toBe(0);
    expect(JSON.parse(list.stdout).exports.map((e: { "export-name": string }) => e["export-name"])).toContain("vol1");
    const map = await run(["nbdinfo", "--map", node2!.nbdUrl("vol1")]);
    expect(map.exitCode).toBe(0);
    expect(map.stdout).toMatch(/hole/);
    expect(map.stdout).toMatch(/data/);
  });

  test("nbdcopy copies a random 256 MiB file in through one node and out through another, byte for byte", async () => {
    const dir = path.join(cluster.root, "copy");
    fs.mkdirSync(dir);
    const source = path.join(dir, "source.img");
    const target = path.join(dir, "target.img");
    const random = new Uint8Array(256 * MiB);
    for (let offset = 0; offset < random.byteLength; offset += 65536) crypto.getRandomValues(random.subarray(offset, offset + 65536));
    await Bun.write(source, random);
    expect((await cluster.shoal(["volume", "create", "big", "--size", "256M"])).exitCode).toBe(0);
    const [node1, node2, node3] = cluster.nodes;
    const copyIn = await run(["nbdcopy", source, node1!.nbdUrl("big")]);
    expect(copyIn.stderr).toBe("");
    expect(copyIn.exitCode).toBe(0);
    const copyOut = await run(["nbdcopy", node3!.nbdUrl("big"), target]);
    expect(copyOut.exitCode).toBe(0);
    expect(await sha256File(target)).toBe(await sha256File(source));
    const compare = await run(["qemu-img", "compare", "-f", "raw", "-F", "raw", source, node2!.nbdUrl("big")]);
    expect(compare.exitCode).toBe(0);
  }, 180_000);

  test("volume import through node 1 and export through node 3 round-trip, with stdin and stdout", async () => {
    expect((await cluster.shoal(["volume", "create", "imp", "--size", "12M"])).exitCode).toBe(0);
    const data = new Uint8Array(10 * MiB + 512);
    crypto.getRandomValues(data.subarray(0, 65536));
    data.fill(7, 6 * MiB, 7 * MiB);
    const imported = await cluster.shoal(["volume", "import", "imp", "-"], { stdin: data });
    expect(imported.stderr).toContain("imported");
    expect(imported.exitCode).toBe(0);
    const viaStdout = path.join(cluster.root, "stdout.img");
    const piped = await run(["bash", "-c", `${shoalCommand().join(" ")} volume export imp - --node ${cluster.nodes[2]!.meshAddress} > ${viaStdout}`]);
    expect(piped.exitCode).toBe(0);
    const viaFile = path.join(cluster.root, "file.img");
    const toFile = await cluster.shoal(["volume", "export", "imp", viaFile, "--json"], { node: cluster.nodes[2] });
    expect(toFile.exitCode).toBe(0);
    expect(JSON.parse(toFile.stdout).bytes).toBe(12 * MiB);
    for (const file of [viaStdout, viaFile]) {
      const back = new Uint8Array(await Bun.file(file).arrayBuffer());
      expect(back.byteLength).toBe(12 * MiB);
      expect(Buffer.compare(back.subarray(0, data.byteLength), data)).toBe(0);
      expect(back.subarray(data.byteLength).every((b) => b === 0)).toBe(true);
    }
  });

  test("admin commands fail with a one-line reason and a meaningful exit code", async () => {
    const unknown = await cluster.shoal(["volume", "info", "nope"]);
    expect(unknown.exitCode).toBe(3);
    expect(unknown.stderr.trim().split("\n").length).toBe(1);
    expect(unknown.stderr).toContain("no volume 'nope'");
    const exists = await cluster.shoal(["volume", "create", "vol1", "--size", "1G"]);
    expect(exists.exitCode).toBe(4);
    const badSize = await cluster.shoal(["volume", "create", "x", "--size", "lots"]);
    expect(badSize.exitCode).toBe(2);
    const badFlag = await cluster.shoal(["volume", "list", "--jsno"]);
    expect(badFlag.exitCode).toBe(2);
    expect(badFlag.stderr).toContain("--jsno");
    const badNode = await cluster.shoal(["volume", "create", "y", "--size", "1G", "--nodes", "node9"]);
    expect(badNode.exitCode).toBe(3);
    const down = await run([...shoalCommand(), "volume", "list", "--node", "127.0.0.1:1"]);
    expect(down.exitCode).toBe(5);
    const help = await cluster.shoal(["volume", "create", "--help"]);
    expect(help.exitCode).toBe(0);
    expect(help.stdout + help.stderr).toContain("--size");
  });

  test("route nodes lists every member up, the same from every node", async () => {
    const docs = await Promise.all(cluster.nodes.map(async (node) => JSON.parse((await cluster.shoal(["route", "nodes", "--json"], { node })).stdout)));
    for (const doc of docs) {
      expect(doc.nodes.map((n: { id: string; state: string }) => `${n.id}:${n.state}`)).toEqual(["node1:up", "node2:up", "node3:up"]);
    }
  });

  test("a flush through node 1 makes node 2 sync writes that reached it from another connection", async () => {
    const [node1, node2] = cluster.nodes;
    const syncsBefore = Number((await adminRequest(node2!.meshAddress, "admin.node.info")).storeSyncs);
    const write = await qemuIo(node1!.nbdUrl("vol1"), "write -P 0x11 4M 64K"); // page 1 on node2, no flush
    expect(write.exitCode).toBe(0);
    const flush = await qemuIo(node1!.nbdUrl("vol1"), "flush"); // another connection
    expect(flush.exitCode).toBe(0);
    const syncsAfter = Number((await adminRequest(node2!.meshAddress, "admin.node.info")).storeSyncs);
    expect(syncsAfter).toBeGreaterThan(syncsBefore);
  });

  test("a node restarted with its data dir serves the same data; kill -9 after FLUSH loses nothing", async () => {
    const [node1, node2] = cluster.nodes;
    const write = await qemuIo(node1!.nbdUrl("vol1"), "write -P 0x77 4M 2M", "flush"); // owner: node2
    expect(write.exitCode).toBe(0);
    await node2!.kill9();
    await node2!.start();
    await cluster.waitConverged();
    const read = await qemuIo(node1!.nbdUrl("vol1"), "read -P 0x77 4M 2M", "read -P 0xcd 8M 1M");
    expect(read.stdout).not.toMatch(/Pattern verification failed|error/);
    expect(read.exitCode).toBe(0);
    expect(await node2!.stop()).toBe(0); // clean SIGTERM exit
    await node2!.start();
    await cluster.waitConverged();
    const again = await qemuIo(node2!.nbdUrl("vol1"), "read -P 0x77 4M 2M");
    expect(again.stdout).not.toMatch(/Pattern verification failed|error/);
  });

  test("a FLUSH after the node holding unflushed forwarded writes restarted fails, once, instead of claiming them durable", async () => {
    const [node1, node2] = cluster.nodes;
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "vol1" });
    try {
      await client.write(4 * MiB, new Uint8Array(4096).fill(0x42)); // page 1: node2, not flushed
      await node2!.kill9();
      await node2!.start();
      await cluster.waitConverged();
      await expect(client.flush()).rejects.toThrow();
      await client.flush(); // reported once; nothing is owed any more
    } finally {
      await client.close();
    }
  });

  test("a node that was down catches up on volumes created and deleted meanwhile", async () => {
    const node3 = cluster.nodes[2]!;
    await node3.kill9();
    expect((await cluster.shoal(["volume", "create", "late", "--size", "8M", "--nodes", "node1,node2"])).exitCode).toBe(0);
    expect((await cluster.shoal(["volume", "delete", "imp"])).exitCode).toBe(0);
    await node3.start();
    await waitFor("node3 to learn of 'late' and forget 'imp'", async () => {
      const names = ((await adminRequest(node3.meshAddress, "admin.volume.list")).volumes as { name: string }[]).map((v) => v.name);
      return names.includes("late") && !names.includes("imp");
    });
    await cluster.waitConverged();
  });
});
