// Crash-consistent snapshots on real processes: writers on every node write stamped blocks
// through NBD while snapshots are taken through rotating coordinators, in hold mode and in
// timestamp mode with skewed clocks; every snapshot is read back over NBD and checked as a cut.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { adminRequest } from "../../cmd/_cli.ts";
import { BLOCK_BYTES, checkCut, readStamp, stampBlock, WriteHistory } from "./_cut-checker.ts";
import { connect, readStamps, startWriters } from "./_writers.ts";
import { run, TestCluster, waitFor, type TestNode } from "./_cluster.ts";

const PAGE = 64 * 1024; // small pages: the written region spans many pages on every node
const BLOCKS = 256; // 1 MiB written region
const WRITERS_PER_NODE = 2;

async function readBlock(node: TestNode, exportName: string): Promise<Uint8Array> {
  const client = await connect(node, exportName);
  try {
    return await client.read(0, BLOCK_BYTES);
  } finally {
    await client.close();
  }
}

async function snapshotsUnderLoad(cluster: TestCluster, mode: "hold" | "timestamp", count: number) {
  const volume = `load-${mode}`;
  const created = await cluster.shoal(["volume", "create", volume, "--size", "4M", "--page-size", `${PAGE}`]);
  expect(created.exitCode).toBe(0);
  const history = new WriteHistory();
  const writers = await startWriters(cluster.nodes, volume, history, { writersPerNode: WRITERS_PER_NODE, blocks: BLOCKS });
  const verdicts: string[] = [];
  const distinctCuts = new Set<string>();
  const holds: { heldMs: number; queued: number; longestWaitMs: number }[] = [];
  let failures = 0;
  try {
    for (let index = 0; index < count; index++) {
      const coordinator = cluster.nodes[index % cluster.nodes.length]!;
      try {
        const result = await adminRequest(coordinator.meshAddress, "admin.snap.create", { volumes: [volume], name: `s${index}`, mode, holdTimeoutMs: 2000 });
        holds.push(...Object.values(result.holds as Record<string, (typeof holds)[number]>));
      } catch (err) {
        failures++;
        console.log(`snapshot s${index} (${mode}) failed cleanly: ${(err as Error).message}`);
        continue;
      }
      const reader = cluster.nodes[(index + 1) % cluster.nodes.length]!;
      const stamps = await readStamps(reader, `${volume}@s${index}`, BLOCKS);
      distinctCuts.add([...stamps.values()].join(","));
      const verdict = checkCut(history, stamps);
      if (!verdict.ok) verdicts.push(`snapshot s${index} (${mode}) is not a cut: ${verdict.reason}`);
    }
  } finally {
    const { errors } = await writers.stop();
    expect(errors).toBe(0);
  }
  const queued = holds.reduce((sum, hold) => sum + hold.queued, 0);
  const longestHeldMs = Math.max(0, ...holds.map((hold) => hold.heldMs));
  console.log(`${mode}: ${count - failures} snapshots checked, ${failures} refused, ${history.writes.size} writes, ${distinctCuts.size} distinct cuts; ${queued} requests held, longest hold ${longestHeldMs.toFixed(1)} ms`);
  if (mode === "hold") {
    // Every participant reports its hold, and no request it queued waited longer than the hold.
    expect(holds.length).toBe((count - failures) * cluster.nodes.length);
    for (const hold of holds) expect(hold.longestWaitMs).toBeLessThanOrEqual(hold.heldMs);
    expect(queued).toBeGreaterThan(0); // six writers never pause: some of their requests met a hold
  } else {
    expect(holds).toEqual([]);
  }
  // Every snapshot caught the writers mid-flight: a checker fed identical states proves little.
  expect(distinctCuts.size).toBeGreaterThan((count - failures) * 0.9);
  return { verdicts, failures, writes: history.writes.size };
}

describe("hold-mode snapshots of a striped volume under load", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await TestCluster.start(3);
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test("100 snapshots, each read back over NBD, are all crash-consistent cuts", async () => {
    const { verdicts, failures, writes } = await snapshotsUnderLoad(cluster, "hold", 100);
    expect(verdicts).toEqual([]);
    // A prepare delayed past its bound on an overloaded machine fails cleanly (and is retried by
    // the coordinator); what must never happen is a listed snapshot that is not a cut.
    expect(failures).toBeLessThan(5);
    expect(writes).toBeGreaterThan(1000);
  }, 180_000);

  test("snapshots are listed, exported read-only on every node, cloned, rolled back and deleted by content", async () => {
    const [node1, node2, node3] = cluster.nodes;
    expect((await cluster.shoal(["volume", "create", "data", "--size", "16M"])).exitCode).toBe(0);
    const qemuIo = (node: TestNode, name: string, ...commands: string[]) =>
      run(["qemu-io", "-f", "raw", ...commands.flatMap((c) => ["-c", c]), node.nbdUrl(name)]);
    expect((await qemuIo(node1!, "data", "write -P 0x11 0 12M")).exitCode).toBe(0);
    const created = await cluster.shoal(["snap", "create", "data", "--name", "before", "--json"], { node: node2 });
    expect(created.exitCode).toBe(0);
    const snapshot = JSON.parse(created.stdout);
    expect(snapshot).toMatchObject({ name: "before", mode: "hold", volumes: ["data"] });
    // T of a hold-mode snapshot: when take went out, between the start and the answer.
    expect(snapshot.cutAtMs).toBeGreaterThanOrEqual(snapshot.startedAtMs);
    expect(snapshot.cutAtMs).toBeLessThanOrEqual(Date.now());
    expect(Object.keys(snapshot.holds).sort()).toEqual([...snapshot.participants].sort());
    expect((await qemuIo(node1!, "data", "write -P 0x22 4M 4100K")).exitCode).toBe(0);

    const listed = JSON.parse((await cluster.shoal(["snap", "list", "data", "--json"], { node: node3 })).stdout);
    expect(listed.snapshots.map((s: { name: string }) => s.name)).toEqual(["before"]);
    const nbdList = await run(["nbdinfo", "--list", "--json", `nbd://127.0.0.1:${node3!.nbdPort}`]);
    expect(JSON.parse(nbdList.stdout).exports.map((e: { "export-name": string }) => e["export-name"])).toContain("data@before");

    const snapRead = await qemuIo(node3!, "data@before", "read -P 0x11 0 12M", "read -P 0 12M 4M");
    expect(snapRead.stdout).not.toMatch(/verification failed|error/i);
    const refused = await qemuIo(node3!, "data@before", "write -P 0x33 0 4k");
    expect(refused.exitCode === 0 && !/error|read-only|denied/i.test(refused.stdout + refused.stderr)).toBe(false);

    expect((await cluster.shoal(["snap", "clone", "data@before", "copy"])).exitCode).toBe(0);
    expect((await qemuIo(node2!, "copy", "read -P 0x11 0 12M", "write -P 0x44 0 1M", "read -P 0x44 0 1M")).stdout).not.toMatch(/verification failed|error/i);
    expect((await qemuIo(node1!, "data@before", "read -P 0x11 0 1M")).stdout).not.toMatch(/verification failed|error/i);

    expect((await cluster.shoal(["snap", "rollback", "data@before"])).exitCode).toBe(0);
    const rolled = await qemuIo(node1!, "data", "read -P 0x11 0 12M", "read -P 0 12M 4M");
    expect(rolled.stdout).not.toMatch(/verification failed|error/i);

    const deleteResult = await cluster.shoal(["snap", "delete", "data@before"]);
    expect(deleteResult.exitCode).toBe(0);
    expect((await cluster.shoal(["snap", "list", "data", "--json"])).stdout).not.toContain("before");
    // The clone read through the deleted snapshot: its pages must have been merged into it.
    const cloneAfter = await qemuIo(node3!, "copy", "read -P 0x44 0 1M", "read -P 0x11 1M 11M");
    expect(cloneAfter.stdout).not.toMatch(/verification failed|error/i);
    const missing = await cluster.shoal(["snap", "delete", "data@before"]);
    expect(missing.exitCode).toBe(3);
  }, 120_000);
});

describe("racing and failing snapshots", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await TestCluster.start(3);
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test("two snapshots started at once on different coordinators: both succeed or one fails with a reason", async () => {
    expect((await cluster.shoal(["volume", "create", "race", "--size", "8M", "--page-size", "64K"])).exitCode).toBe(0);
    for (let round = 0; round < 10; round++) {
      const outcomes = await Promise.all(
        [0, 1].map((index) =>
          adminRequest(cluster.nodes[index]!.meshAddress, "admin.snap.create", { volumes: ["race"], name: `r${round}-${index}`, mode: "hold", holdTimeoutMs: 2000 }).then(
            () => "ok",
            (err: Error) => err.message,
          ),
        ),
      );
      expect(outcomes.filter((outcome) => outcome === "ok").length).toBeGreaterThanOrEqual(1);
      for (const outcome of outcomes) if (outcome !== "ok") expect(outcome).toMatch(/older snapshot|overlapping|conflict|retry/i);
    }
    const listed = JSON.parse((await cluster.shoal(["snap", "list", "race", "--json"], { node: cluster.nodes[2] })).stdout).snapshots;
    expect(listed.length).toBeGreaterThanOrEqual(10);
  }, 60_000);

  test("a participant that is down makes the snapshot fail cleanly; nothing is listed", async () => {
    const node3 = cluster.nodes[2]!;
    expect((await cluster.shoal(["volume", "create", "spread", "--size", "12M"])).exitCode).toBe(0); // a page on each node
    await node3.kill9();
    const failed = await cluster.shoal(["snap", "create", "spread", "--name", "nope"]);
    expect(failed.exitCode).toBe(5);
    expect(failed.stderr).toContain("node3");
    expect(JSON.parse((await cluster.shoal(["snap", "list", "spread", "--json"])).stdout).snapshots).toEqual([]);
    await node3.start();
    await cluster.waitConverged();
    expect((await cluster.shoal(["snap", "create", "spread", "--name", "nope"])).exitCode).toBe(0);
  }, 60_000);

  test("a participant that stops answering (SIGSTOP) fails the snapshot by the hold timeout; nothing half-made is listed", async () => {
    const node3 = cluster.nodes[2]!;
    process.kill(node3.proc!.pid, "SIGSTOP");
    try {
      const startedMs = performance.now();
      const failed = await cluster.shoal(["snap", "create", "spread", "--name", "frozen", "--hold-timeout", "1s"]);
      expect(failed.exitCode).toBe(5);
      expect(performance.now() - startedMs).toBeLessThan(8000);
    } finally {
      process.kill(node3.proc!.pid, "SIGCONT");
    }
    await cluster.waitConverged();
    const names = JSON.parse((await cluster.shoal(["snap", "list", "spread", "--json"])).stdout).snapshots.map((s: { name: string }) => s.name);
    expect(names).toEqual(["nope"]);
  }, 60_000);
});

describe("a volume at its snapshot limit", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await TestCluster.start(2);
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test("refuses the 1024th snapshot with TOO_LARGE while clients keep writing; deleting one makes room", async () => {
    const [node1, node2] = cluster.nodes;
    // Pages on node1 only; the writer goes through node2 (forwarded), as the admin does.
    expect((await cluster.shoal(["volume", "create", "deep", "--size", "1M", "--page-size", "64K", "--nodes", "node1"])).exitCode).toBe(0);
    const writer = await connect(node2!, "deep");
    let stop = false;
    let writes = 0;
    let writeError: unknown;
    const loop = (async () => {
      for (let block = 0; !stop; block = (block + 1) % 64) {
        try {
          await writer.write(block * BLOCK_BYTES, stampBlock(++writes));
        } catch (err) {
          writeError ??= err;
        }
      }
    })();
    try {
      const limit = 1023;
      for (let index = 0; index < limit - 1; index++) {
        await adminRequest(node2!.meshAddress, "admin.snap.create", { volumes: ["deep"], name: `d${index}`, mode: index % 8 === 0 ? "timestamp" : "hold", holdTimeoutMs: 2000 });
      }
      // Two prepared at once, one below the limit: both pass prepare, the second is refused at its cut.
      for (const [node, name] of [[node1!, "last"], [node2!, "late"]] as const) {
        expect((await cluster.shoal(["snap", "prepare", "deep", "--name", name, "--mode", "timestamp"], { node })).exitCode).toBe(0);
      }
      expect((await cluster.shoal(["snap", "take", "last"], { node: node1 })).exitCode).toBe(0);
      const lateCut = await cluster.shoal(["snap", "take", "late"], { node: node2 });
      expect(lateCut.exitCode).toBe(2);
      expect(lateCut.stderr).toContain("TOO_LARGE");
      const refused = await cluster.shoal(["snap", "create", "deep", "--name", "one-more"], { node: node2 });
      expect(refused.exitCode).toBe(2);
      expect(refused.stderr).toContain("TOO_LARGE");
      expect(refused.stderr).toMatch(/1023 snapshots .*delete older snapshots first/);
      // Nothing was held or left behind: writes go on, and no half snapshot is listed.
      const before = writes;
      await Bun.sleep(200);
      expect(writes).toBeGreaterThan(before);
      const names = JSON.parse((await cluster.shoal(["snap", "list", "deep", "--json"])).stdout).snapshots.map((s: { name: string }) => s.name);
      expect(names.length).toBe(limit);
      expect(names).not.toContain("one-more");
      expect(names).not.toContain("late");
      expect((await cluster.shoal(["snap", "delete", "deep@d0"])).exitCode).toBe(0);
      // The deleted layer counts until the node has merged and unlinked it in the background
      // (seconds under a loaded full suite): the room comes then.
      await waitFor("room for one more snapshot after the delete", async () => (await cluster.shoal(["snap", "create", "deep", "--name", "one-more"], { node: node2 })).exitCode === 0);
    } finally {
      stop = true;
      await loop;
      await writer.close();
    }
    expect(writeError).toBeUndefined();
    const last = await readBlock(node1!, "deep@one-more");
    expect(readStamp(last)).toBeGreaterThan(0);
  }, 120_000);
});

describe("split-phase snapshots for scripts that quiesce an application", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await TestCluster.start(2);
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test("prepare holds writes until take; the held write is not in the snapshot; release before take aborts", async () => {
    const [node1, node2] = cluster.nodes;
    expect((await cluster.shoal(["volume", "create", "app", "--size", "8M"])).exitCode).toBe(0);
    const client = await connect(node2!, "app");
    try {
      await client.write(0, stampBlock(1));
      const prepared = await cluster.shoal(["snap", "prepare", "app", "--name", "quiet", "--hold-timeout", "5s", "--json"], { node: node1 });
      expect(prepared.exitCode).toBe(0);
      let heldDone = false;
      const held = client.write(0, stampBlock(2)).then(() => (heldDone = true));
      await Bun.sleep(300);
      expect(heldDone).toBe(false); // held while prepared
      const took = await cluster.shoal(["snap", "take", "quiet", "--json"], { node: node1 });
      expect(took.exitCode).toBe(0);
      await held;
      expect((await cluster.shoal(["snap", "release", "quiet"], { node: node1 })).exitCode).toBe(0);
      expect(readStamp((await readBlock(node2!, "app@quiet")))).toBe(1);
      expect(readStamp(await client.read(0, BLOCK_BYTES))).toBe(2);

      expect((await cluster.shoal(["snap", "prepare", "app", "--name", "dropped"], { node: node1 })).exitCode).toBe(0);
      const released = await cluster.shoal(["snap", "release", "dropped", "--json"], { node: node1 });
      expect(JSON.parse(released.stdout).outcome).toBe("aborted");
      await client.write(0, stampBlock(3)); // no longer held
      const names = JSON.parse((await cluster.shoal(["snap", "list", "app", "--json"])).stdout).snapshots.map((s: { name: string }) => s.name);
      expect(names).toEqual(["quiet"]);
      const lateTake = await cluster.shoal(["snap", "take", "dropped"], { node: node1 });
      expect(lateTake.exitCode).toBe(3);
    } finally {
      await client.close();
    }
  }, 60_000);

  test("a prepared snapshot ends with its hold: a release after the timeout says aborted, and take finds nothing", async () => {
    const [node1, node2] = cluster.nodes;
    expect((await cluster.shoal(["volume", "create", "idle", "--size", "8M"])).exitCode).toBe(0);
    const client = await connect(node2!, "idle");
    try {
      expect((await cluster.shoal(["snap", "prepare", "idle", "--name", "lapsed", "--hold-timeout", "500ms"], { node: node1 })).exitCode).toBe(0);
      // Held until the hold times out: nobody takes the snapshot.
      await client.write(0, stampBlock(1));
    } finally {
      await client.close();
    }
    await waitFor("the prepared snapshot to time out", async () => (await cluster.shoal(["snap", "take", "lapsed"], { node: node1 })).exitCode === 3, 10_000);
    const released = await cluster.shoal(["snap", "release", "lapsed", "--json"], { node: node1 });
    expect([released.exitCode, JSON.parse(released.stdout).outcome]).toEqual([0, "aborted"]);
    // Told once; the name is free again.
    expect((await cluster.shoal(["snap", "release", "lapsed"], { node: node1 })).exitCode).toBe(3);
  }, 30_000);
});

describe("timestamp-mode snapshots with skewed clocks", () => {
  let cluster: TestCluster;
  const skewsMs = [0, 3, -3]; // each within the nodes' 5 ms bound of real time, 6 ms apart
  beforeAll(async () => {
    cluster = await TestCluster.start(3, (index) => ({ SHOAL_CLOCK_SKEW_MS: String(skewsMs[index]) }));
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test("100 snapshots under load with clocks 3 ms apart are all crash-consistent cuts", async () => {
    const { verdicts, failures } = await snapshotsUnderLoad(cluster, "timestamp", 100);
    expect(verdicts).toEqual([]);
    // A take that reaches a participant after its cut time is refused by design; the coordinator
    // retries such snapshots itself, so failures here are rare.
    expect(failures).toBeLessThan(5);
  }, 180_000);
});

describe("a coordinator killed in the middle of a snapshot", () => {
  let cluster: TestCluster;
  beforeAll(async () => {
    cluster = await TestCluster.start(3);
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test("holds end within the hold timeout, and after restart there is no half snapshot", async () => {
    const [node1, node2, node3] = cluster.nodes;
    // Pages on node2 and node3 only, so clients keep working while the coordinator (node1) is dead.
    expect((await cluster.shoal(["volume", "create", "held", "--size", "8M", "--page-size", "64K", "--nodes", "node2,node3"])).exitCode).toBe(0);
    const history = new WriteHistory();
    const writerNodes = [node2!, node3!];
    const writers = await Promise.all(writerNodes.map((node) => connect(node, "held")));
    let stop = false;
    let maxLatencyMs = 0;
    let errors = 0;
    const loops = writers.map(async (client, index) => {
      let block = index;
      while (!stop) {
        const record = history.issue(block % BLOCKS, performance.now());
        try {
          await client.write((block % BLOCKS) * BLOCK_BYTES, stampBlock(record.id));
          record.ackedAtMs = performance.now();
          maxLatencyMs = Math.max(maxLatencyMs, record.ackedAtMs - record.issuedAtMs);
        } catch {
          errors++;
        }
        block += writers.length;
      }
    });
    const holdTimeoutMs = 1000;
    const outcomes: string[] = [];
    for (let round = 0; round < 3; round++) {
      const attempt = adminRequest(node1!.meshAddress, "admin.snap.create", { volumes: ["held"], name: `k${round}`, mode: "hold", holdTimeoutMs }).then(
        () => "completed",
        (err: Error) => `failed: ${err.message}`,
      );
      await Bun.sleep(round); // 0, 1, 2 ms: kill at different points of the protocol
      await node1!.kill9();
      outcomes.push(await attempt);
      await Bun.sleep(holdTimeoutMs + 200); // let any hold lapse while the coordinator is dead
      await node1!.start();
      await cluster.waitConverged();
    }
    stop = true;
    await Promise.all(loops);
    await Promise.all(writers.map((client) => client.close()));
    expect(errors).toBe(0);
    // No client ever waited longer than the hold timeout (plus scheduling slack on a busy machine).
    expect(maxLatencyMs).toBeLessThan(holdTimeoutMs + 500);
    // Whatever point each kill hit, a snapshot is either complete and a cut, or not there at all.
    const listed = JSON.parse((await cluster.shoal(["snap", "list", "held", "--json"], { node: node2 })).stdout).snapshots as { name: string }[];
    for (const snapshot of listed) {
      const verdict = checkCut(history, await readStamps(node3!, `held@${snapshot.name}`, BLOCKS));
      expect(verdict.reason).toBeUndefined();
    }
    console.log(`coordinator kills: ${outcomes.join(" | ")}; listed afterwards: ${listed.map((s) => s.name).join(",") || "none"}; max write latency ${maxLatencyMs.toFixed(1)} ms`);
    const again = await cluster.shoal(["snap", "create", "held", "--name", "after"], { node: node1 });
    expect(again.exitCode).toBe(0);
  }, 120_000);
});
