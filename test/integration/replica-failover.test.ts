// Failover of a replicated volume on three real nodes (--replicas 2, --replica-timeout 1s):
// writers through every node (our NBD client and qemu-io) keep going while each node in turn is
// killed -9 and restarted, then SIGSTOPped past the timeout and resumed. No writer through a node
// that stays up sees an error, no acknowledged write is lost (every node reads back what was
// acknowledged), and once the returning node has caught up every copy holds the same bytes.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { run, TestCluster, waitFor, waitSetsWhole, type TestNode } from "./_cluster.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4 * MiB;
/** 12 pages: page p on node(p % 3 + 1) and node((p + 1) % 3 + 1); every node is primary of 4 and second copy of 4. */
const SIZE = 48 * MiB;
const BLOCK = 4 * KiB;
const TIMEOUT_MS = 1000;

let cluster: TestCluster;
/** What the volume must read as: every acknowledged write, in the order each writer made them. */
const model = new Uint8Array(SIZE);

beforeAll(async () => {
  cluster = await TestCluster.start(3, {}, () => ["--replica-timeout", `${TIMEOUT_MS}ms`]);
  expect((await cluster.shoal(["volume", "create", "f", "--size", "48M", "--replicas", "2"])).exitCode).toBe(0);
  await waitSetsWhole(cluster, "f");
});
afterAll(async () => {
  if (process.env.FO_DEBUG) for (const node of cluster?.nodes ?? []) await Bun.write(`/tmp/fo/${node.id}.log`, node.stderrLog);
  await cluster?.stop();
});

/**
 * A writer through one node: 4 KiB writes at offsets of its own (writer w takes the blocks whose
 * index is w mod 6 in the first 3 MiB of every page, so each writer touches every page), each with a stamp;
 * a write enters the model when acknowledged. Stalls are measured; errors are kept, not thrown.
 */
class Writer {
  errors: string[] = [];
  acked = 0;
  stallMsMax = 0;
  private stopped = false;
  private done: Promise<void> | undefined;
  private seq = 0;

  constructor(
    readonly node: TestNode,
    private readonly slot: number,
  ) {}

  start(): void {
    this.stopped = false;
    this.done = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }

  private async loop(): Promise<void> {
    const client = await NbdClient.connect({ host: "127.0.0.1", port: this.node.nbdPort, exportName: "f" });
    try {
      while (!this.stopped) {
        // Its own blocks of every page's first 3 MiB (qemu-io writes the last MiB): no two writers share a block.
        const slotBlocks = (PAGE - MiB) / BLOCK / 6;
        const index = (this.seq * 7919) % (slotBlocks * (SIZE / PAGE));
        const offset = Math.floor(index / slotBlocks) * PAGE + ((index % slotBlocks) * 6 + this.slot) * BLOCK;
        const data = new Uint8Array(BLOCK).fill((this.slot * 37 + this.seq) & 0xff);
        new DataView(data.buffer).setUint32(0, this.slot * 1_000_000 + this.seq);
        this.seq++;
        const startedMs = performance.now();
        try {
          await client.write(offset, data);
          model.set(data, offset);
          this.acked++;
        } catch (err) {
          this.errors.push(`${this.node.id}: ${(err as Error).message}`);
          return;
        }
        this.stallMsMax = Math.max(this.stallMsMax, performance.now() - startedMs);
      }
      await client.flush();
    } finally {
      await client.close().catch(() => {});
    }
  }
}

/** qemu-io through one node: 64 KiB writes of a pattern to a region of its own (the last MiB of a page), each batch acknowledged whole. */
async function qemuWrites(node: TestNode, round: number): Promise<void> {
  const page = (round * 5) % 12;
  const offset = page * PAGE + PAGE - MiB;
  const value = 0x10 + round;
  const result = await run(["qemu-io", "-f", "raw", "-c", `write -P ${value} ${offset} 1M`, "-c", "flush", node.nbdUrl("f")]);
  if (result.exitCode !== 0) console.log("DEBUG", node.stderrLog.split("\n").filter((l) => l.includes("WARN") || l.includes("replica")).slice(-15).join("\n"));
  expect(`${result.exitCode} ${result.stdout.includes("failed") ? result.stdout : ""}${result.stderr}`).toBe("0 ");
  model.fill(value, offset, offset + MiB);
}

async function readWhole(node: TestNode, exportName = "f"): Promise<Uint8Array> {
  const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName });
  try {
    const whole = new Uint8Array(SIZE);
    const chunk = 8 * MiB; // under the server's 32 MiB request limit
    for (let offset = 0; offset < SIZE; offset += chunk) whole.set(await client.read(offset, chunk), offset);
    return whole;
  } finally {
    await client.close();
  }
}

function firstDifference(actual: Uint8Array, expected: Uint8Array): number {
  for (let index = 0; index < expected.length; index++) if (actual[index] !== expected[index]) return index;
  return -1;
}

/** Writers run through the nodes other than `victim` (a node's own clients lose their connection when it is killed). */
async function withWriters(nodes: TestNode[], during: () => Promise<void>): Promise<Writer[]> {
  const writers = nodes.map((node) => new Writer(node, cluster.nodes.indexOf(node) * 2));
  writers.push(...nodes.map((node) => new Writer(node, cluster.nodes.indexOf(node) * 2 + 1)));
  for (const writer of writers) writer.start();
  try {
    await during();
  } finally {
    await Promise.all(writers.map((writer) => writer.stop()));
  }
  return writers;
}

function report(what: string, writers: Writer[]): void {
  const stall = Math.max(...writers.map((writer) => writer.stallMsMax));
  console.log(`${what}: ${writers.reduce((sum, writer) => sum + writer.acked, 0)} writes acknowledged, longest stall ${stall.toFixed(0)} ms`);
  expect(writers.flatMap((writer) => writer.errors)).toEqual([]);
}

async function expectAllCopies(what: string): Promise<void> {
  await waitSetsWhole(cluster, "f");
  // Each node reads its own copy of the pages it holds (a synced copy answers locally) and
  // another's of the rest: three identical reads mean both copies of every page are identical.
  for (const node of cluster.nodes) {
    const whole = await readWhole(node);
    const at = firstDifference(whole, model);
    if (at >= 0) {
      let diffs = 0; const pages = new Set<number>();
      for (let i = 0; i < SIZE; i += BLOCK) if (whole[i + 5] !== model[i + 5] || whole[i] !== model[i]) { diffs++; pages.add(Math.floor(i / PAGE)); }
      console.log("DEBUG", node.id, "blocks differ", diffs, [...pages], "got", [...whole.subarray(at - (at % BLOCK), at - (at % BLOCK) + 8)], "want", [...model.subarray(at - (at % BLOCK), at - (at % BLOCK) + 8)]);
      for (const n of cluster.nodes) console.log(n.id, n.stderrLog.split("\n").filter((l) => l.includes("replica") || l.includes("group") || l.includes("WARN")).slice(-25).join("\n"));
    }
    expect(at === -1 ? "same" : `${what}: ${node.id} differs at byte ${at} (page ${Math.floor(at / PAGE)})`).toBe("same");
  }
}

test("each node in turn killed -9 under writers and restarted: no client error, no acknowledged write lost, copies identical after resync", async () => {
  for (const [round, victim] of cluster.nodes.entries()) {
    const others = cluster.nodes.filter((node) => node !== victim);
    const writers = await withWriters(others, async () => {
      await Bun.sleep(300);
      await victim.kill9();
      await qemuWrites(others[round % 2]!, round);
      if (round === 0) {
        // A snapshot while a copy is away: taken by the copies that stayed; the returning one
        // takes its layer with its catch-up copies (checked below, on every copy).
        await waitFor(`the others to drop ${victim.id}`, async () => {
          const shown = JSON.parse((await cluster.shoal(["route", "show", "f", "--json"], { node: others[0] })).stdout);
          return shown.replicaSets?.whole === false;
        });
        const taken = await cluster.shoal(["snap", "create", "f", "--name", "away"], { node: others[0] });
        expect(`${taken.exitCode} ${taken.stderr}`).toBe("0 ");
      }
      await Bun.sleep(TIMEOUT_MS);
      await victim.start();
      await waitSetsWhole(cluster, "f");
      await Bun.sleep(300);
    });
    report(`${victim.id} killed -9`, writers);
    await expectAllCopies(`after ${victim.id} was killed`);
    if (round === 0) {
      // The snapshot taken while node1 was away reads the same through every node: node1's copy of it came with its catch-up.
      const reads = await Promise.all(cluster.nodes.map((node) => readWhole(node, "f@away")));
      for (const [index, read] of reads.entries()) expect(firstDifference(read, reads[0]!) === -1 ? "same" : `f@away differs on ${cluster.nodes[index]!.id}`).toBe("same");
    }
  }
  const shown = JSON.parse((await cluster.shoal(["route", "show", "f", "--json"])).stdout);
  console.log(`node1's member: ${JSON.stringify(shown.replicaSets)}`);
  expect(shown.replicaSets.writtenWhileAwayBytes).toBeGreaterThan(0);
  expect(shown.replicaSets.copiedBytes).toBeGreaterThan(0);
}, 60_000);

test("each node in turn SIGSTOPped past the timeout under writers (its own too) and resumed: no client error, no acknowledged write lost, copies identical", async () => {
  for (const [round, victim] of cluster.nodes.entries()) {
    const writers = await withWriters(cluster.nodes, async () => {
      await Bun.sleep(300);
      victim.proc!.kill("SIGSTOP");
      try {
        await qemuWrites(cluster.nodes.find((node) => node !== victim)!, 3 + round);
        // Past the timeout: the others drop it from their sets and go on.
        await waitFor(`the others to drop ${victim.id}`, async () => {
          const shown = JSON.parse((await cluster.shoal(["route", "show", "f", "--json"], { node: cluster.nodes.find((node) => node !== victim)! })).stdout);
          return shown.replicaSets?.whole === false;
        });
        await Bun.sleep(TIMEOUT_MS);
      } finally {
        victim.proc!.kill("SIGCONT");
      }
      // Its writers' requests, held while it was stopped, are applied through the new sets.
      await waitSetsWhole(cluster, "f");
      await Bun.sleep(300);
    });
    report(`${victim.id} stopped`, writers);
    await expectAllCopies(`after ${victim.id} was stopped`);
  }
}, 60_000);
