// The failover benchmark (issue 18): how long a client's writes stall when a copy's node is
// killed -9, and how fast a returning copy is brought up to date (resync) against a page move of
// the same bytes, on one three-node group. Not a *.test.ts.
//
//   bun test/bench/replica-failover.ts [--away 64M] [--timeout 3s] [--bin PATH]
//
// A writer through node1 (4 KiB random writes, 16 in flight) runs on a two-copy volume while node3
// is killed: the stall is each write's latency around the kill (p50/p99/max of the writes issued
// from 1 s before to 5 s after). While node3 is away the writer fills --away of whole pages; node3
// restarts and the time from its start to its sets being whole again, over the bytes the others
// copied to it, is the resync rate. A `route move` of as many bytes of pages on a one-copy volume
// (node1 -> node3) is the anchor, measured in the same run.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { benchCommandLine, buildShoal, loadAverage, printReport, progress, stats, table } from "./_bench.ts";
import { TestCluster, waitSetsWhole } from "../integration/_cluster.ts";
import { parseSize } from "../../core/geometry.ts";

const MiB = 1024 * 1024;
const PAGE = 4 * MiB;

const USAGE = `usage: bun test/bench/replica-failover.ts [--away 64M] [--timeout 3s] [--bin PATH]
The stall of 4 KiB writers on a two-copy volume around a kill -9 of a copy's node, and the resync
of the returning copy against a route move of the same bytes, one three-node group.`;

function parseOptions(): { awayBytes: number; timeout: string; bin?: string } {
  const flags = { away: { type: "string", default: "64M" }, timeout: { type: "string", default: "3s" }, bin: { type: "string" } } as const;
  return benchCommandLine(USAGE, flags, (values) => {
    const awayBytes = parseSize(String(values.away));
    if (awayBytes < PAGE || awayBytes % PAGE !== 0) throw new Error(`--away ${values.away}: give a whole number of 4 MiB pages`);
    const timeout = String(values.timeout);
    if (!/^\d+(ms|s)$/.test(timeout)) throw new Error(`--timeout ${timeout}: give a duration such as 3s or 500ms`);
    return { awayBytes, timeout, ...(typeof values.bin === "string" ? { bin: values.bin } : {}) };
  });
}

async function main(): Promise<void> {
  const { awayBytes, timeout, bin } = parseOptions();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-bench-failover-"));
  process.env.SHOAL_BIN = await buildShoal(work, bin);
  const cluster = await TestCluster.start(3, {}, () => ["--replica-timeout", timeout]);
  try {
    const sizeMiB = Math.max(256, (awayBytes / MiB) * 4);
    for (const [name, copies] of [["two", 2], ["one", 1]] as const) {
      const created = await cluster.shoal(["volume", "create", name, "--size", `${sizeMiB}M`, "--replicas", String(copies)]);
      if (created.exitCode !== 0) throw new Error(created.stderr);
    }
    await waitSetsWhole(cluster, "two");
    const [node1, , node3] = cluster.nodes;
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "two" });
    const samples: { atMs: number; ms: number }[] = [];
    let stop = false;
    const writer = async (lane: number) => {
      const data = new Uint8Array(4096).fill(lane);
      for (let seq = 0; !stop; seq++) {
        const offset = ((seq * 7919 + lane * 104729) % ((sizeMiB * MiB) / 4096)) * 4096;
        const startedMs = performance.now();
        await client.write(offset, data);
        samples.push({ atMs: startedMs, ms: performance.now() - startedMs });
      }
    };
    const lanes = Array.from({ length: 16 }, (_, lane) => writer(lane));
    await Bun.sleep(1000);
    const killedMs = performance.now();
    await node3!.kill9();
    await Bun.sleep(5000);
    stop = true;
    await Promise.all(lanes);
    const around = samples.filter((sample) => sample.atMs >= killedMs - 1000 && sample.atMs <= killedMs + 5000).map((sample) => sample.ms);
    const stall = stats(around);
    // While node3 is away: whole pages written, all of which its copies must get back.
    const away = new Uint8Array(PAGE).fill(0x5a);
    for (let offset = 0; offset < awayBytes; offset += PAGE) await client.write(offset, away);
    await client.flush();
    await client.close();
    const restartMs = performance.now();
    await node3!.start();
    await waitSetsWhole(cluster, "two");
    const resyncMs = performance.now() - restartMs;
    let copiedBytes = 0;
    for (const node of cluster.nodes.slice(0, 2)) {
      copiedBytes += Number(JSON.parse((await cluster.shoal(["route", "show", "two", "--json"], { node })).stdout).replicaSets.copiedBytes);
    }
    // The anchor: the same bytes of pages written on the one-copy volume, moved node1 -> node3.
    const one = await NbdClient.connect({ host: "127.0.0.1", port: node1!.nbdPort, exportName: "one" });
    const pages = awayBytes / PAGE;
    for (let page = 0; page < pages * 3; page += 3) await one.write(page * PAGE, away);
    await one.flush();
    await one.close();
    const moveStartedMs = performance.now();
    const moved = await cluster.shoal(["route", "move", "one", "--pages", `0-${pages * 3 - 3}/3`, "--to", "node3"]);
    if (moved.exitCode !== 0) throw new Error(moved.stderr);
    const moveMs = performance.now() - moveStartedMs;
    const rows = [
      ["client stall around a kill -9 (16 writers, 4 KiB)", `p50 ${stall.p50Ms.toFixed(1)} ms, p99 ${stall.p99Ms.toFixed(0)} ms, max ${stall.maxMs.toFixed(0)} ms over ${stall.count} writes`],
      ["resync of a returning copy (restart to whole)", `${(copiedBytes / MiB).toFixed(0)} MiB copied in ${(resyncMs / 1000).toFixed(2)} s = ${(copiedBytes / MiB / (resyncMs / 1000)).toFixed(0)} MB/s (including the node's start)`],
      ["page move of the same bytes (route move)", `${(awayBytes / MiB).toFixed(0)} MiB in ${(moveMs / 1000).toFixed(2)} s = ${(awayBytes / MiB / (moveMs / 1000)).toFixed(0)} MB/s (including the CLI's start)`],
      ["load average", loadAverage().toFixed(2)],
    ];
    printReport(`Failover, three nodes, --replica-timeout ${timeout}, ${awayBytes / MiB} MiB written while away`, false, () => ({}));
    console.log(table(["measure", "value"], rows));
  } finally {
    await cluster.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
  progress("done");
}

await main();
