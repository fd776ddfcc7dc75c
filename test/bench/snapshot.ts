// The snapshot benchmark: what taking, keeping and deleting snapshots costs the clients of a real
// three-node group. A steady 4 KiB random write load (one NBD client per node) runs on a volume
// striped over all three while it is snapshotted; every write's latency is recorded here and each
// measure is judged against the same load without snapshots, measured in the same run.
// Not a *.test.ts: `bun test` skips it. This file is the entry point; each measure is its own module
// (_snapshot-hold.ts, -timestamp, -create, -delete), on the group in _snapshot-group.ts, the flags
// in _snapshot-options.ts, the report in _snapshot-report.ts.
//
//   bun test/bench/snapshot.ts [--snapshots 100] [--interval-ms 200] [--rate 400] [--inflight 32]
//                              [--duration 10] [--load-size 1G] [--big 8G] [--delete-size 1G]
//                              [--only hold,ts,del,create] [--json] [--bin PATH] [--profile DIR]
//                              [--timeout-minutes 30]
//
// Measures (each on its own fresh volume, filled with sequential 1 MiB writes, then `sync`, so no
// measure pays for another's writeback; every latency anchor is that volume's own steady state):
// 1. Hold-mode stall: N hold-mode snapshots, one started every --interval-ms. Judged per snapshot:
//    the longest any request waited in a hold queue, as the nodes report it with the snapshot.
//    Also shown, from the client side: the longest latency of any write in flight at some point
//    during the create call, minus the steady-state p50 (it also counts delays that are not the hold's).
// 2. Timestamp mode: p99 over --duration s without snapshots, then over --duration s with
//    timestamp-mode snapshots taken back to back (the next starts when the previous returns), then
//    over --duration s with one started every second, counting the writes issued during a create.
// 3. Create time vs data written: hold-mode creates on a volume with 64 MiB written and on one
//    with --big written (both --big in size, not written to meanwhile), alternating, while the
//    load runs on a third volume.
// 4. Post-snapshot: p50 of writes issued in the first second after a hold-mode create returned
//    (copy-on-write of 4 KiB chunks), against the steady-state p50. Same volume as 1, before it.
// 5. Delete stall: --delete-size written, snapshotted, overwritten in full (so the snapshot alone
//    holds the old data), then deleted; p99 of writes from the delete call until every node's
//    layer table no longer names the layer and disk use stopped dropping (statfs; at least 1 s).
//
// Measures 1 and 2 also report what snapshots cost in CPU (/proc: user + system, all threads):
// the nodes' busy cores without and with snapshots, and the extra node CPU per snapshot.
//
// Load: each client issues writes at --rate per second (open loop, so a stall delays writes that
// were due rather than hiding them), at most --inflight in flight; a write due while the client
// is at that bound is skipped and counted. Latency is performance.now() from issue to reply in
// this process; its own event-loop lag is reported, since it inflates every number here.
// With --json the tables go to stderr and stdout carries one JSON document. --profile DIR runs
// the nodes under Bun's CPU profiler (markdown, one file per node, over the whole run).
import { buildShoal, loadAverage, printReport, progress, runBench, sourceRevision } from "./_bench.ts";
import { run } from "../integration/_cluster.ts";
import { ForeignCpuMonitor } from "./_foreign-cpu.ts";
import { measureCreateVsData } from "./_snapshot-create.ts";
import { measureDelete } from "./_snapshot-delete.ts";
import { GiB, KiB, NODE_COUNT, Resources, SMALL_WRITTEN_BYTES, startGroup, type Context } from "./_snapshot-group.ts";
import { measureHold } from "./_snapshot-hold.ts";
import { parseOptions, type MeasureKey, type Options } from "./_snapshot-options.ts";
import { renderReport, TARGETS, verdicts, type Results, type RunInfo } from "./_snapshot-report.ts";
import { measureTimestamp } from "./_snapshot-timestamp.ts";

/** Headroom beyond the estimated footprint before --big is scaled down to 2 GiB. */
const DISK_HEADROOM_BYTES = 8 * GiB;

// ---- disk budget

async function availableBytes(dir: string): Promise<number> {
  const df = await run(["df", "-B1", "--output=avail", dir], { timeoutMs: 10_000 });
  if (df.exitCode !== 0) throw new Error(`df ${dir} failed: ${df.stderr}`);
  return Number(df.stdout.trim().split("\n").pop());
}

/**
 * The run writes the load volumes, the delete volume twice, --big and the copy-on-write chunks of
 * every snapshot under load (a 4 KiB chunk per 4 KiB write). Scales --big to 2 GiB when short.
 */
async function fitBigToDisk(options: Options, dir: string): Promise<string | undefined> {
  const available = await availableBytes(dir);
  const cowBytes = options.ratePerClient * NODE_COUNT * 64 * KiB * ((options.snapshots * options.intervalMs) / 1000 + options.durationMs / 1000);
  const rest = 3 * options.loadSizeBytes + 2 * options.deleteSizeBytes + SMALL_WRITTEN_BYTES + cowBytes + DISK_HEADROOM_BYTES;
  if (available >= rest + options.bigBytes) return undefined;
  const scaled = 2 * GiB;
  if (available < rest + scaled) throw new Error(`only ${(available / GiB).toFixed(1)} GiB free in ${dir}; this run needs about ${((rest + scaled) / GiB).toFixed(1)} GiB`);
  const note = `--big scaled from ${options.bigBytes / GiB} GiB to 2 GiB: only ${(available / GiB).toFixed(1)} GiB free in ${dir}`;
  options.bigBytes = scaled;
  return note;
}

// ---- main

async function measure(resources: Resources, options: Options): Promise<void> {
  const loadAtStart = loadAverage();
  progress(`temp dir ${resources.root}; load average ${loadAtStart}`);
  const notes: string[] = [];
  const scaled = await fitBigToDisk(options, resources.root);
  if (scaled) notes.push(`NOTE: ${scaled}`);
  const revision = await sourceRevision();
  process.env.SHOAL_BIN = await buildShoal(resources.root, options.bin);
  const nodes = await startGroup(resources, options.profileDir);
  const context: Context = { nodes, options };
  const monitor = new ForeignCpuMonitor(() => [process.pid, ...nodes.map((node) => node.proc?.pid ?? -1)]);
  monitor.start();
  const foreignCpu: RunInfo["foreignCpu"] = {};
  const phase = async <T>(key: MeasureKey, title: string, work: () => Promise<T>): Promise<T | undefined> => {
    if (!options.only.has(key)) return undefined;
    progress(title);
    const fromMs = performance.now();
    const result = await work();
    foreignCpu[key] = monitor.usedIn(fromMs, performance.now());
    return result;
  };
  const hold = await phase("hold", "measure 1 and 4: hold-mode snapshots", () => measureHold(context));
  const timestamp = await phase("ts", "measure 2: timestamp-mode snapshots", () => measureTimestamp(context));
  const deletion = await phase("del", "measure 5: deleting a snapshot that alone holds its data", () => measureDelete(context));
  const createVsData = await phase("create", `measure 3: create time, 64 MiB vs ${options.bigBytes / GiB} GiB written`, () => measureCreateVsData(context));
  monitor.stop();
  const results: Results = { hold, timestamp, createVsData, deletion };
  const info: RunInfo = { revision, loadAtStart, loadAtEnd: loadAverage(), notes, foreignCpu };
  printReport(renderReport(results, options, info), options.json, () => ({ ...info, options, targets: TARGETS, verdicts: verdicts(results), results }));
}

async function main(): Promise<void> {
  const options = parseOptions();
  const resources = new Resources();
  // Nodes run under the profiler write their profiles only when stopped gracefully.
  const profiled = options.profileDir !== undefined;
  const cleanup = (finished: boolean) => resources.cleanup(finished && profiled);
  await runBench({ nodes: resources.nodes, cleanup }, options.timeoutMs, () => measure(resources, options));
  if (profiled) progress(`node CPU profiles in ${options.profileDir}`);
}

await main();
