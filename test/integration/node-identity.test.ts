// One node per data directory, one data directory per node id, and a start that checks its flags
// before it opens anything: second processes and impostors are refused, and the group they tried
// to take over keeps serving. Real processes, real qemu-io.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import * as fs from "node:fs";
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import { freePort, run, shoalCommand, TestCluster, TestNode, waitFor } from "./_cluster.ts";

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await TestCluster.start(2);
  expect((await cluster.shoal(["volume", "create", "v", "--size", "16M"])).exitCode).toBe(0);
  // Page 0 on node1, page 1 on node2: reads through node1 cross to node2.
  const write = await qemuIo(cluster.nodes[0]!.nbdUrl("v"), "write -P 0x5c 0 8M", "flush");
  expect(write.exitCode).toBe(0);
});
afterAll(async () => {
  await cluster?.stop();
});

function qemuIo(url: string, ...commands: string[]) {
  return run(["qemu-io", "-f", "raw", ...commands.flatMap((c) => ["-c", c]), url]);
}

/** Both pages read back through `node`, the one on the other node included. */
async function expectReadsThrough(node: TestNode): Promise<void> {
  const read = await qemuIo(node.nbdUrl("v"), "read -P 0x5c 0 8M");
  expect(read.stdout).not.toMatch(/Pattern verification failed|error/i);
  expect(read.exitCode).toBe(0);
}

/** `shoal node ARGS` that is expected to fail at start; bounded, so a node that starts fails the test. */
function startFails(args: string[]) {
  return run([...shoalCommand(), "node", ...args], { timeoutMs: 20_000 });
}

async function memberAsSeenBy(node: TestNode, id: string): Promise<{ meshAddress: string; nbdAddress: string; state: string }> {
  const nodes = (await adminRequest(node.meshAddress, "admin.route.nodes", {}, 5000)).nodes as { id: string; meshAddress: string; nbdAddress: string; state: string }[];
  const found = nodes.find((member) => member.id === id);
  if (!found) throw new Error(`${node.id} does not list ${id}`);
  const { meshAddress, nbdAddress, state } = found;
  return { meshAddress, nbdAddress, state };
}

async function addresses(count: number): Promise<string[]> {
  return Promise.all(Array.from({ length: count }, async () => `127.0.0.1:${await freePort()}`));
}

describe("one node per data directory", () => {
  test("a second node on a running node's data dir exits 4 naming the holder's pid; the first keeps serving", async () => {
    const node1 = cluster.nodes[0]!;
    const [listen, nbd] = await addresses(2);
    const second = await startFails(["--data", node1.dataDir, "--listen", listen!, "--nbd", nbd!]);
    expect(second.exitCode).toBe(4);
    expect(second.stderr.trim()).toBe(`shoal: data dir ${node1.dataDir} is in use by another shoal node (pid ${node1.proc!.pid}); stop that one first [CONFLICT]`);
    // It gave up before opening a port or touching the catalog.
    expect(second.stderr).not.toContain("listening");
    expect(node1.proc!.exitCode).toBeNull();
    await expectReadsThrough(node1);
  });

  test("kill -9 releases the lock: the node starts again on its data dir and serves what it had", async () => {
    const node2 = cluster.nodes[1]!;
    await node2.kill9();
    await node2.start();
    await cluster.waitConverged();
    await expectReadsThrough(node2);
    expect(fs.readFileSync(path.join(node2.dataDir, "lock"), "utf8").trim()).toBe(String(node2.proc!.pid));
  });
});

describe("a node id belongs to one data directory", () => {
  test("a new node joining with a running member's --id is refused; the group's record of the member and reads through it are unchanged", async () => {
    const [node1, node2] = cluster.nodes as [TestNode, TestNode];
    const before = await memberAsSeenBy(node1, "node2");
    const impostorDir = path.join(cluster.root, "impostor");
    const [listen, nbd] = await addresses(2);
    const impostor = await startFails(["--id", "node2", "--data", impostorDir, "--listen", listen!, "--nbd", nbd!, "--join", node1.meshAddress]);
    expect(impostor.exitCode).toBe(4);
    expect(impostor.stderr).toContain(`node id 'node2' is already a member of this group (mesh ${node2.meshAddress}) with another data directory; refusing ${listen}`);
    // A refused start leaves nothing behind: the retry with a new id starts clean.
    expect(fs.existsSync(impostorDir)).toBe(false);
    for (const node of cluster.nodes) expect(await memberAsSeenBy(node, "node2")).toEqual({ ...before, state: "up" });
    await expectReadsThrough(node1);
  });

  test("a copy of a member's data directory, started while the member runs, is refused and never re-points it", async () => {
    const [node1, node2] = cluster.nodes as [TestNode, TestNode];
    const copyDir = path.join(cluster.root, "node2-copy");
    await node2.stop();
    fs.cpSync(node2.dataDir, copyDir, { recursive: true });
    await node2.start();
    await waitFor("node1 to see node2 back", async () => (await memberAsSeenBy(node1, "node2")).state === "up");
    const before = await memberAsSeenBy(node1, "node2");
    const copy = new TestNode("node2", copyDir, await freePort(), await freePort());
    await copy.start();
    try {
      const refusal = `node 'node2' is up at ${node2.meshAddress}; refusing a second process that claims to be it at ${copy.meshAddress}`;
      await waitFor("node1 to refuse the copy's hello", () => copy.stderrLog.includes(refusal));
      for (const node of [node1, node2]) expect(await memberAsSeenBy(node, "node2")).toEqual(before);
      await expectReadsThrough(node1);
    } finally {
      await copy.kill9();
    }
  });

  test("a node that claims a member's id from another data directory is refused at hello and never re-points it", async () => {
    const [node1, node2] = cluster.nodes as [TestNode, TestNode];
    const before = await memberAsSeenBy(node1, "node2");
    // A third member joins properly, stops, and its catalog is made to claim node2's id (as a
    // hand-edited or mixed-up data directory would): it has the group, but not node2's identity.
    const node3 = await cluster.addNode();
    await cluster.waitConverged();
    await node3.stop();
    const catalog = new Database(path.join(node3.dataDir, "catalog.db"));
    catalog.query("UPDATE meta SET value = 'node2' WHERE key = 'node_id'").run();
    catalog.close();
    const impostor = new TestNode("node2", node3.dataDir, node3.meshPort, node3.nbdPort);
    await impostor.start();
    try {
      const refusal = `node id 'node2' is already a member of this group (mesh ${node2.meshAddress}) with another data directory; refusing ${impostor.meshAddress}`;
      await waitFor("node1 to refuse the impostor's hello", () => impostor.stderrLog.includes(refusal));
      // And the other way: node1, dialing member node3's address, finds the impostor there and does not link.
      const answer = `the node at ${impostor.meshAddress} is 'node2' from another data directory, not member 'node3'`;
      await waitFor("node1 to refuse the impostor's answer at node3's address", () => node1.stderrLog.includes(answer));
      for (const node of [node1, node2]) expect(await memberAsSeenBy(node, "node2")).toEqual({ ...before, state: "up" });
      await expectReadsThrough(node1);
      await expectReadsThrough(node2);
    } finally {
      await impostor.kill9();
    }
    // node3 is down for good now; the group must not wait on it in later tests.
    cluster.nodes.pop();
  });
});

describe("start-up checks every flag before it opens anything", () => {
  test("a mesh port in use: exit 2 naming --listen and the address, and no data dir left behind", async () => {
    const dir = path.join(cluster.root, "fresh-mesh");
    const [nbd] = await addresses(1);
    const result = await startFails(["--data", dir, "--listen", cluster.nodes[0]!.meshAddress, "--nbd", nbd!]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain(`cannot listen for the mesh on ${cluster.nodes[0]!.meshAddress}: the address is in use; choose another with --listen`);
    expect(fs.existsSync(dir)).toBe(false);
  });

  test("an NBD or metrics port in use: exit 2 naming the flag and the address, and no data dir left behind", async () => {
    const dir = path.join(cluster.root, "fresh-nbd");
    const [listen, other] = await addresses(2);
    const taken = `127.0.0.1:${cluster.nodes[0]!.nbdPort}`;
    const nbd = await startFails(["--data", dir, "--listen", listen!, "--nbd", taken]);
    expect(nbd.exitCode).toBe(2);
    expect(nbd.stderr).toContain(`cannot listen for NBD on ${taken}: the address is in use; choose another with --nbd`);
    const metrics = await startFails(["--data", dir, "--listen", listen!, "--nbd", other!, "--metrics", taken]);
    expect(metrics.exitCode).toBe(2);
    expect(metrics.stderr).toContain(`cannot listen for metrics on ${taken}: the address is in use; choose another with --metrics`);
    expect(fs.existsSync(dir)).toBe(false);
  });

  test("a bad --metrics is refused before any listener opens or any directory is made", async () => {
    const dir = path.join(cluster.root, "never", "made");
    const [listen, nbd] = await addresses(2);
    const result = await startFails(["--data", dir, "--listen", listen!, "--nbd", nbd!, "--metrics", "nonsense"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim()).toBe("shoal: --metrics: 'nonsense' is not HOST:PORT [BAD_ARGUMENT]");
    expect(fs.existsSync(path.join(cluster.root, "never"))).toBe(false);
  });

  test("--id admin is refused at start: the mesh would serve that member's peer requests as an admin client's", async () => {
    const dir = path.join(cluster.root, "admin-id");
    const [listen, nbd] = await addresses(2);
    const result = await startFails(["--id", "admin", "--data", dir, "--listen", listen!, "--nbd", nbd!, "--join", cluster.nodes[0]!.meshAddress]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim()).toBe("shoal: --id: 'admin' is not a valid node id (letters, digits, '.', '_', '-', at most 64, not 'admin') [BAD_ARGUMENT]");
    expect(fs.existsSync(dir)).toBe(false);
  });

  test("a --data that is a file is refused with exit 2 and left alone", async () => {
    const file = path.join(cluster.root, "a-file");
    fs.writeFileSync(file, "not a directory\n");
    const [listen, nbd] = await addresses(2);
    const result = await startFails(["--data", file, "--listen", listen!, "--nbd", nbd!]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.trim()).toBe(`shoal: --data ${file}: not a directory [BAD_ARGUMENT]`);
    expect(fs.readFileSync(file, "utf8")).toBe("not a directory\n");
  });

  test("a flag given without its value is an error, never the default", async () => {
    const dir = path.join(cluster.root, "no-value");
    const env = { SHOAL_NODE: cluster.nodes[0]!.meshAddress };
    const cases: [string[], string][] = [
      [["node", "--data", dir, "--join"], "--join needs a value (HOST:PORT)"],
      [["node", "--data", dir, "--join="], "--join needs a value (HOST:PORT)"],
      [["node", "--data", dir, "--join", "--listen", "127.0.0.1:1"], "--join needs a value (HOST:PORT), not the flag '--listen'"],
      [["volume", "list", "--node"], "--node needs a value (HOST:PORT)"],
      [["volume", "list", "--node", ""], "--node needs a value (HOST:PORT)"],
      [["volume", "create", "w", "--size", "8M", "--nodes", ""], "--nodes needs a value"],
      [["route", "rebalance", "v", "--nodes", ""], "--nodes needs a value"],
    ];
    for (const [args, message] of cases) {
      const result = await run([...shoalCommand(), ...args], { env, timeoutMs: 20_000 });
      expect({ args, exitCode: result.exitCode, stderr: result.stderr }).toMatchObject({ exitCode: 2, stderr: expect.stringContaining(message) });
    }
    expect(fs.existsSync(dir)).toBe(false);
    const { volumes } = JSON.parse((await cluster.shoal(["volume", "list", "--json"])).stdout) as { volumes: { name: string }[] };
    expect(volumes.map((volume) => volume.name)).toEqual(["v"]);
  });
});

describe("a failed join", () => {
  test("a join that reaches no member leaves no data dir; one whose answer is lost keeps it, and the retry joins", async () => {
    const dir = path.join(cluster.root, "joiner");
    const [listen, nbd, nowhere] = await addresses(3);
    const unreachable = await startFails(["--id", "joiner", "--data", dir, "--listen", listen!, "--nbd", nbd!, "--join", nowhere!]);
    expect(unreachable.exitCode).toBe(5);
    expect(fs.existsSync(dir)).toBe(false);
    // A "member" that takes the join request and hangs up without an answer.
    const hangUp = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (socket) => void socket.end() } });
    try {
      const lost = await startFails(["--id", "joiner", "--data", dir, "--listen", listen!, "--nbd", nbd!, "--join", `127.0.0.1:${hangUp.port}`]);
      expect(lost.exitCode).toBe(5);
      expect(lost.stderr).toContain("the member may have taken this node in: start it again with the same --data to finish joining");
      expect(fs.existsSync(path.join(dir, "catalog.db"))).toBe(true);
    } finally {
      hangUp.stop(true);
    }
    const joiner = new TestNode("joiner", dir, Number(listen!.split(":")[1]), Number(nbd!.split(":")[1]));
    try {
      await joiner.start(cluster.nodes[0]!.meshAddress);
      await waitFor("node1 to see the joiner up", async () => (await memberAsSeenBy(cluster.nodes[0]!, "joiner"))?.state === "up");
    } finally {
      await joiner.kill9();
    }
  });
});
