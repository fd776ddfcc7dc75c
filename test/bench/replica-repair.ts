// The repair benchmark (issue 18): how fast a replicated volume gets its copies back when a node
// is gone for good (`route forget` of a killed node) and when a live node is retired (`route
// drain`), against a page move of the same bytes, on one four-node group. Not a *.test.ts.
//
//   bun test/bench/replica-repair.ts [--size 512M] [--writes 100] [--timeout 1s] [--bin PATH]
//
// A two-copy volume of --size is written whole through node1 (4 MiB writes, then a FLUSH). node3
// is killed -9; once the others have dropped it, `route forget node3` is timed from the command
// to every page having two copies again, over the bytes the others sent (their copiedBytes).
// Then `route drain node4` the same way. Meanwhile a writer through node1 (--writes 4 KiB random
// writes a second, 0 for none) measures what clients see (p99 and max latency). The anchor: a `route move` of as
// many bytes of a one-copy volume's pages, node1 -> node2, in the same run.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { benchCommandLine, buildShoal, loadAverage, printReport, progress, stats, table } from "./_bench.ts";
import { TestCluster, waitFor, waitSetsWhole, type TestNode } from "../integration/_cluster.ts";
import { parseSize } from "../../core/geometry.ts";

const MiB = 1024 * 1024;
const PAGE = 4 * MiB;

const USAGE = `usage: bun test/bench/replica-repair.ts [--size 512M] [--writes 100] [--timeout 1s] [--bin PATH]
route forget of a killed node and route drain of a live one on a two-copy volume (time, bytes
copied, MB/s, client latency meanwhile) against a route move of the same bytes; four nodes.`;

function parseOptions(): { sizeBytes: number; writesPerSecond: number; timeout: string; bin?: string } {
  const flags = { size: { type: "string", default: "512M" }, writes: { type: "string", default: "100" }, timeout: { type: "string", default: "1s" }, bin: { type: "string" } } as const;
  return benchCommandLine(USAGE, flags, (values) => {
    const sizeBytes = parseSize(String(values.size));
    if (sizeBytes < 16 * PAGE || sizeBytes % PAGE !== 0) throw new Error(`--size ${values.size}: give at least 16 whole 4 MiB pages`);
    const timeout = String(values.timeout);
    if (!/^\d+(ms|s)$/.test(timeout)) throw new Error(`--timeout ${timeout}: give a duration such as 1s or 500ms`);
    const writesPerSecond = Number(values.writes);
    if (!Number.isInteger(writesPerSecond) || writesPerSecond < 0) throw new Error(`--writes ${values.writes}: give a whole number of writes a second`);
    return { sizeBytes, writesPerSecond, timeout, ...(typeof values.bin === "string" ? { bin: values.bin } : {}) };
  });
}

async function copiedBytes(cluster: TestCluster, nodes: TestNode[]): Promise<number> {
  let total = 0;
  for (const node of nodes) total += Number(JSON.parse((await cluster.shoal(["route", "show", "two", "--json"], { node })).stdout).replicaSets.copiedBytes);
  return total;
}

async function fill(node: TestNode, volume: string, pages: number[]): Promise<void> {
  const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: volume });
  const data = new Uint8Array(PAGE);
  for (const page of pages) {
    data.fill((page * 31 + 7) & 0xff);
    await client.write(page * PAGE, data);
  }
  await client.flush();
  await client.close();
}

/** 4 KiB random writes through a node, `perSecond` of them (paced, 4 lanes), until stopped: the latencies of those issued while `measuring`. */
function lightWriter(node: TestNode, sizeBytes: number, perSecond: number) {
  const samples: number[] = [];
  let measuring = false;
  let stop = perSecond === 0;
  const run = (async () => {
    if (stop) return;
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: "two" });
    const lanes = 4;
    const gapMs = (1000 * lanes) / perSecond;
    const lane = async (index: number) => {
      const data = new Uint8Array(4096).fill(index);
      let nextMs = performance.now() + (gapMs * index) / lanes;
      for (let seq = 0; !stop; seq++) {
        const offset = ((seq * 7919 + index * 104729) % (sizeBytes / 4096)) * 4096;
        await Bun.sleep(Math.max(0, nextMs - performance.now()));
        nextMs += gapMs;
        const startedMs = performance.now();
        const counted = measuring;
        await client.write(offset, data);
        if (counted) samples.push(performance.now() - startedMs);
      }
    };
    await Promise.all(Array.from({ length: lanes }, (_, index) => lane(index)));
    await client.close();
  })();
  return {
    measure(on: boolean) {
      measuring = on;
    },
    take(): number[] {
      return samples.splice(0);
    },
    async stop() {
      stop = true;
      await run;
    },
  };
}

async function main(): Promise<void> {
  const { sizeBytes, writesPerSecond, timeout, bin } = parseOptions();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-bench-repair-"));
  process.env.SHOAL_BIN = await buildShoal(work, bin);
  const cluster = await TestCluster.start(4, {}, () => ["--replica-timeout", timeout]);
  const rows: string[][] = [];
  try {
    const [node1, node2, node3, node4] = cluster.nodes as [TestNode, TestNode, TestNode, TestNode];
    const created = await cluster.shoal(["volume", "create", "two", "--size", `${sizeBytes / MiB}M`, "--replicas", "2"]);
    if (created.exitCode !== 0) throw new Error(created.stderr);
    await waitSetsWhole(cluster, "two");
    progress(`writing ${sizeBytes / MiB} MiB`);
    await fill(node1, "two", Array.from({ length: sizeBytes / PAGE }, (_, page) => page));
    const writer = lightWriter(node1, sizeBytes, writesPerSecond);
    await Bun.sleep(500);

    const timed = async (what: string, args: string[], live: TestNode[]): Promise<number> => {
      const before = await copiedBytes(cluster, live);
      writer.measure(true);
      const startedMs = performance.now();
      const result = await cluster.shoal(args);
      const tookMs = performance.now() - startedMs;
      writer.measure(false);
      if (result.exitCode !== 0) {
        for (const node of cluster.nodes) console.error(`--- ${node.id}\n${node.stderrLog.split("\n").slice(-12).join("\n")}`);
        throw new Error(`${args.join(" ")} (exit ${result.exitCode}): ${result.stderr.trim().split("\n").at(-1)}`);
      }
      const bytes = (await copiedBytes(cluster, live)) - before;
      const latency = stats(writer.take());
      rows.push([what, `${(bytes / MiB).toFixed(0)} MiB copied in ${(tookMs / 1000).toFixed(2)} s = ${(bytes / MiB / (tookMs / 1000)).toFixed(0)} MB/s`, `p99 ${latency.p99Ms.toFixed(0)} ms, max ${latency.maxMs.toFixed(0)} ms over ${latency.count} writes`]);
      progress(`${what}: ${rows.at(-1)![1]}`);
      return bytes;
    };

    await node3.kill9();
    await waitFor("the others to drop node3", async () => JSON.parse((await cluster.shoal(["route", "show", "two", "--json"])).stdout).replicaSets?.whole === false, 30_000);
    const forgotBytes = await timed("route forget of a killed node (command to whole)", ["route", "forget", "node3", "--json"], [node1, node2, node4]);
    await timed("route drain of a live node (command to whole)", ["route", "drain", "node4", "--json"], [node1, node2, node4]);
    await writer.stop();

    // The anchor: as many bytes of a one-copy volume's pages moved node1 -> node2.
    const pages = Math.max(1, Math.round(forgotBytes / PAGE));
    const one = await cluster.shoal(["volume", "create", "one", "--size", `${pages * 3 * 4}M`, "--replicas", "1"]);
    if (one.exitCode !== 0) throw new Error(one.stderr);
    const shown = JSON.parse((await cluster.shoal(["route", "show", "one", "--json"])).stdout);
    const onNode1 = (shown.nodes as { node: string; runs: { text: string }[] }[]).find((entry) => entry.node === "node1")!;
    const list = onNode1.runs.map((run) => run.text).join(",");
    const owned = expandRuns(list).slice(0, pages);
    await fill(node1, "one", owned);
    const moveStartedMs = performance.now();
    const moved = await cluster.shoal(["route", "move", "one", "--pages", owned.join(","), "--to", "node2"]);
    if (moved.exitCode !== 0) throw new Error(moved.stderr);
    const moveMs = performance.now() - moveStartedMs;
    rows.push(["page move of as many bytes (route move, node1 -> node2)", `${((owned.length * PAGE) / MiB).toFixed(0)} MiB in ${(moveMs / 1000).toFixed(2)} s = ${((owned.length * PAGE) / MiB / (moveMs / 1000)).toFixed(0)} MB/s`, ""]);
    rows.push(["load average", loadAverage().toFixed(2), ""]);
    printReport(`Repair, four nodes, --replica-timeout ${timeout}, a ${sizeBytes / MiB} MiB two-copy volume written whole, ${writesPerSecond} random 4 KiB writes a second through node1 meanwhile`, false, () => ({}));
    console.log(table(["measure", "value", "client 4 KiB writes meanwhile"], rows));
  } finally {
    await cluster.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
  progress("done");
}

/** "0-9/3,12" -> [0, 3, 6, 9, 12] (route show's run text). */
function expandRuns(text: string): number[] {
  const pages: number[] = [];
  for (const run of text.split(",").filter(Boolean)) {
    const [range, stepText] = run.split("/") as [string, string | undefined];
    const [first, last] = range.split("-").map(Number) as [number, number | undefined];
    const step = stepText ? Number(stepText) : 1;
    for (let page = first; page <= (last ?? first); page += step) pages.push(page);
  }
  return pages;
}

await main();
