// The snapshot benchmark: what taking, keeping and deleting snapshots costs the clients of a real
// three-node group. A steady 4 KiB random write load (one NBD client per node) runs on a volume
// striped over all three while it is snapshotted; every write's latency is recorded here and each
// measure is judged against the same load without snapshots, measured in the same run.
// Not a *.test.ts: `bun test` skips it.
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
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { adminRequest } from "../../cmd/_cli.ts";
import { parseSize } from "../../core/geometry.ts";
import { lastTableIn } from "../../core/store/_journal.ts";
import { connect, fillRandom, PacedWriteLoad } from "./_write-load.ts";
import { bounded, buildShoal, loadAverage, mainThreadRunQueueMs, percentile, printReport, processCpuMs, progress, runBench, sourceRevision, stats, syncDisks, table, type LatencyStats } from "./_bench.ts";
import { freePort, run, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";
import { scrape, sumOf } from "../integration/_prometheus.ts";
import { PHASES, phaseMeans, phaseTotals } from "./_snapshot-phases.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const NODE_COUNT = 3;
const FILL_WRITE_BYTES = 1 * MiB;
const FILL_INFLIGHT = 8;
/** stripedTable puts page p on the (p % nodes)-th node; fills send each page to its owner. */
const PAGE_BYTES = 4 * MiB;
const SMALL_WRITTEN_BYTES = 64 * MiB;
const CREATE_ROUNDS = 10;
/** Measure 2, second half: one timestamp-mode snapshot started this often. */
const TS_SPACED_INTERVAL_MS = 1000;
const POST_SNAPSHOTS = 5;
const POST_WINDOW_MS = 1000;
const POST_SPACING_MS = 3000;
const WARMUP_MS = 1000;
const HOLD_TIMEOUT_MS = 2000;
const ADMIN_TIMEOUT_MS = 30_000;
const NODE_START_TIMEOUT_MS = 20_000;
const FILL_TIMEOUT_MS = 900_000;
const DELETE_TIMEOUT_MS = 120_000;
const DELETE_POLL_MS = 100;
/** Disk use that has not dropped by more than this over DELETE_SETTLE_POLLS polls has settled. */
const DELETE_SETTLE_BYTES = 1 * MiB;
const DELETE_SETTLE_POLLS = 5;
const DELETE_WINDOW_MIN_MS = 1000;
/** --profile: how long nodes get to stop and write their CPU profiles. */
const GRACEFUL_STOP_MS = 30_000;
/** Headroom beyond the estimated footprint before --big is scaled down to 2 GiB. */
const DISK_HEADROOM_BYTES = 8 * GiB;

const TARGETS = {
  holdStallP99Ms: 5,
  timestampP99Ratio: 1.2,
  createTimeRatio: 1.5,
  postSnapshotP50Ratio: 2,
  deleteP99Ratio: 1.5,
};

interface Options {
  snapshots: number;
  intervalMs: number;
  ratePerClient: number;
  inflightPerClient: number;
  durationMs: number;
  loadSizeBytes: number;
  bigBytes: number;
  deleteSizeBytes: number;
  json: boolean;
  bin?: string;
  /** Nodes run with Bun's CPU profiler and write <node>.md here when the run ends normally. */
  profileDir?: string;
  timeoutMs: number;
  /** Which measures run (--only hold,ts,del,create). */
  only: Set<MeasureKey>;
}

// ---- processes and cleanup: everything started is registered here and killed on any exit

class Resources {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-snap-bench-"));
  readonly nodes: TestNode[] = [];
  private cleaned = false;

  /**
   * Kills the nodes (SIGKILL: the data is scratch) and removes the temp dir. Idempotent.
   * `graceful`: SIGTERM first (bounded), so nodes run with --profile write their profiles.
   */
  async cleanup(graceful = false): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    const running = this.nodes.map((node) => node.proc).filter((proc): proc is Subprocess => proc !== undefined);
    if (graceful) {
      for (const proc of running) if (proc.exitCode === null) proc.kill("SIGTERM");
      await Promise.race([Promise.all(running.map((proc) => proc.exited)), sleep(GRACEFUL_STOP_MS)]);
    }
    for (const proc of running) if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await Promise.all(running.map((proc) => proc.exited));
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      snapshots: { type: "string", default: "100" },
      "interval-ms": { type: "string", default: "200" },
      rate: { type: "string", default: "400" },
      inflight: { type: "string", default: "32" },
      duration: { type: "string", default: "10" },
      "load-size": { type: "string", default: "1G" },
      big: { type: "string", default: "8G" },
      "delete-size": { type: "string", default: "1G" },
      json: { type: "boolean", default: false },
      bin: { type: "string" },
      profile: { type: "string" },
      "timeout-minutes": { type: "string", default: "30" },
      only: { type: "string", default: "hold,ts,del,create" },
    },
    strict: true,
  });
  const integer = (name: string, text: string, min: number, max: number): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} ${text}: give ${min}..${max}`);
    return value;
  };
  const size = (name: string, text: string, min: number): number => {
    const bytes = parseSize(text);
    if (bytes < min || bytes % PAGE_BYTES !== 0) throw new Error(`--${name} ${text}: give a multiple of 4 MiB, at least ${min / MiB} MiB`);
    return bytes;
  };
  return {
    snapshots: integer("snapshots", values.snapshots!, 1, 10_000),
    intervalMs: integer("interval-ms", values["interval-ms"]!, 10, 60_000),
    ratePerClient: integer("rate", values.rate!, 10, 100_000),
    inflightPerClient: integer("inflight", values.inflight!, 1, 64),
    durationMs: integer("duration", values.duration!, 1, 600) * 1000,
    loadSizeBytes: size("load-size", values["load-size"]!, 64 * MiB),
    bigBytes: size("big", values.big!, 2 * SMALL_WRITTEN_BYTES),
    deleteSizeBytes: size("delete-size", values["delete-size"]!, 64 * MiB),
    json: values.json!,
    bin: values.bin,
    profileDir: values.profile === undefined ? undefined : path.resolve(values.profile),
    timeoutMs: integer("timeout-minutes", values["timeout-minutes"]!, 1, 600) * 60_000,
    only: parseOnly(values.only!),
  };
}

const MEASURES = ["hold", "ts", "del", "create"] as const;
type MeasureKey = (typeof MEASURES)[number];

function parseOnly(text: string): Set<MeasureKey> {
  const keys = text.split(",").map((key) => key.trim());
  for (const key of keys) if (!(MEASURES as readonly string[]).includes(key)) throw new Error(`--only ${text}: give some of ${MEASURES.join(",")}`);
  return new Set(keys as MeasureKey[]);
}

function sleep(ms: number): Promise<void> {
  return Bun.sleep(Math.max(0, ms));
}

// ---- the group

async function startGroup(resources: Resources, profileDir: string | undefined): Promise<TestNode[]> {
  if (profileDir) fs.mkdirSync(profileDir, { recursive: true });
  for (let index = 1; index <= NODE_COUNT; index++) {
    const id = `node${index}`;
    // The compiled binary honours BUN_OPTIONS; the profile is written when the node exits cleanly.
    const env: Record<string, string> = profileDir ? { BUN_OPTIONS: `--cpu-prof-md --cpu-prof-dir=${profileDir} --cpu-prof-name=${id}.md` } : {};
    const node = new TestNode(id, path.join(resources.root, id), await freePort(), await freePort(), env);
    node.extraArgs = ["--metrics", `127.0.0.1:${await freePort()}`];
    resources.nodes.push(node);
    await node.start(index === 1 ? undefined : resources.nodes[0]!.meshAddress);
  }
  await waitGroupUp(resources.nodes, NODE_START_TIMEOUT_MS);
  return resources.nodes;
}

/** Striped over every node (the default placement); returns the volume's uid. */
async function createVolume(nodes: TestNode[], name: string, sizeBytes: number): Promise<string> {
  const created = await adminRequest(nodes[0]!.meshAddress, "admin.volume.create", { name, sizeBytes }, ADMIN_TIMEOUT_MS);
  for (const node of nodes) {
    await waitFor(`${node.id} to know volume ${name}`, async () => {
      const volumes = (await adminRequest(node.meshAddress, "admin.volume.list", {}, 3000)).volumes as { name: string }[];
      return volumes.some((volume) => volume.name === name);
    });
  }
  return String(created.uid);
}

/**
 * Writes [0, bytes) with 1 MiB writes, each page through the node that owns it (no forwarding),
 * then FLUSHes, so the pages are allocated and durable before anything is measured.
 */
async function fillVolume(nodes: TestNode[], volume: string, bytes: number, pattern: Uint8Array): Promise<number> {
  const started = performance.now();
  const clients = await Promise.all(nodes.map((node) => connect(node, volume, FILL_INFLIGHT)));
  try {
    const work = clients.map(async (client, index) => {
      const inflight = new Set<Promise<void>>();
      for (let page = index; page * PAGE_BYTES < bytes; page += nodes.length) {
        for (let offset = page * PAGE_BYTES; offset < Math.min(bytes, (page + 1) * PAGE_BYTES); offset += FILL_WRITE_BYTES) {
          const write = client.write(offset, pattern).finally(() => inflight.delete(write));
          inflight.add(write);
          if (inflight.size >= FILL_INFLIGHT) await Promise.race(inflight);
        }
      }
      await Promise.all(inflight);
      await client.flush();
    });
    await bounded(Promise.all(work), FILL_TIMEOUT_MS, `filling ${bytes / MiB} MiB of ${volume}`);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
  }
  return performance.now() - started;
}

// ---- statistics

function median(samples: number[]): number {
  return percentile(Float64Array.from(samples).sort(), 0.5);
}

// ---- snapshots

interface CreateTiming {
  name: string;
  coordinator: string;
  startMs: number;
  endMs: number;
  wallMs: number;
  /** As the coordinator measured it, excluding the admin connection. */
  tookMs: number;
  /** Timestamp mode: the cut time T, on this process's performance.now() scale (NaN otherwise). */
  cutAtMs: number;
  /** Hold mode: each participant's report of its hold (held time, requests queued, longest wait). */
  holds: HoldReport[];
  error: string | undefined;
}

interface HoldReport {
  heldMs: number;
  queued: number;
  longestWaitMs: number;
}

async function createSnapshot(node: TestNode, volume: string, name: string, mode: "hold" | "timestamp"): Promise<CreateTiming> {
  const startMs = performance.now();
  let tookMs = Number.NaN;
  let cutAtMs = Number.NaN;
  let holds: HoldReport[] = [];
  let error: string | undefined;
  try {
    const result = await adminRequest(node.meshAddress, "admin.snap.create", { volumes: [volume], name, mode, holdTimeoutMs: HOLD_TIMEOUT_MS }, ADMIN_TIMEOUT_MS);
    tookMs = Number(result.tookMs);
    // The nodes' clocks are this machine's (no skew here): T in wall time, moved to our monotonic scale.
    if (typeof result.cutAtMs === "number") cutAtMs = result.cutAtMs - performance.timeOrigin;
    holds = Object.values((result.holds ?? {}) as Record<string, HoldReport>);
  } catch (err) {
    error = (err as Error).message;
  }
  const endMs = performance.now();
  return { name, coordinator: node.id, startMs, endMs, wallMs: endMs - startMs, tookMs, cutAtMs, holds, error };
}

function succeeded(timings: CreateTiming[]): CreateTiming[] {
  return timings.filter((timing) => timing.error === undefined);
}

function failures(timings: CreateTiming[]): { count: number; first: string | undefined } {
  const failed = timings.filter((timing) => timing.error !== undefined);
  return { count: failed.length, first: failed[0]?.error };
}

// ---- the measures

interface Context {
  nodes: TestNode[];
  options: Options;
}

/** A fresh volume of `sizeBytes`, written in full, synced; returns its uid. */
async function preparedVolume(context: Context, name: string, sizeBytes: number, writtenBytes = sizeBytes): Promise<string> {
  const uid = await createVolume(context.nodes, name, sizeBytes);
  const fillMs = await fillVolume(context.nodes, name, writtenBytes, fillRandom(new Uint8Array(FILL_WRITE_BYTES)));
  progress(`${name}: wrote ${writtenBytes / MiB} MiB in ${(fillMs / 1000).toFixed(1)} s (${((writtenBytes / 1e6) / (fillMs / 1000)).toFixed(0)} MB/s); syncing`);
  await syncDisks();
  return uid;
}

/** CPU the nodes and this process (the load's clients, the admin requests) had used at an instant. */
interface CpuSample {
  atMs: number;
  nodesMs: number;
  benchMs: number;
  /** The nodes' event-loop threads' time waiting for a CPU, summed. */
  nodesRunQueueMs: number;
}

function cpuSample(nodes: TestNode[]): CpuSample {
  let nodesMs = 0;
  let nodesRunQueueMs = 0;
  for (const node of nodes) {
    if (!node.proc) continue;
    nodesMs += processCpuMs(node.proc.pid);
    nodesRunQueueMs += mainThreadRunQueueMs(node.proc.pid);
  }
  return { atMs: performance.now(), nodesMs, benchMs: processCpuMs(process.pid), nodesRunQueueMs };
}

/** What snapshots cost in CPU: the busy cores without and with them, and the extra per snapshot. */
interface SnapshotCpu {
  nodesCoresWithout: number;
  nodesCoresWith: number;
  benchCoresWithout: number;
  benchCoresWith: number;
  /** Node CPU beyond the load's own, per snapshot taken in the window. */
  nodesMsPerSnapshot: number;
  benchMsPerSnapshot: number;
  /** Per node, ms per second its event loop was runnable but had no CPU. */
  runQueueMsPerSecondWithout: number;
  runQueueMsPerSecondWith: number;
}

function snapshotCpu(without: [CpuSample, CpuSample], during: [CpuSample, CpuSample], snapshots: number): SnapshotCpu {
  const cores = ([from, to]: [CpuSample, CpuSample], key: "nodesMs" | "benchMs" | "nodesRunQueueMs") => (to[key] - from[key]) / (to.atMs - from.atMs);
  const extraPerSnapshot = (key: "nodesMs" | "benchMs") => ((cores(during, key) - cores(without, key)) * (during[1].atMs - during[0].atMs)) / Math.max(1, snapshots);
  return {
    nodesCoresWithout: cores(without, "nodesMs"),
    nodesCoresWith: cores(during, "nodesMs"),
    benchCoresWithout: cores(without, "benchMs"),
    benchCoresWith: cores(during, "benchMs"),
    nodesMsPerSnapshot: extraPerSnapshot("nodesMs"),
    benchMsPerSnapshot: extraPerSnapshot("benchMs"),
    runQueueMsPerSecondWithout: (cores(without, "nodesRunQueueMs") * 1000) / NODE_COUNT,
    runQueueMsPerSecondWith: (cores(during, "nodesRunQueueMs") * 1000) / NODE_COUNT,
  };
}

function describeCpu(label: string, cpu: SnapshotCpu): string {
  return (
    `   CPU: nodes ${cpu.nodesCoresWithout.toFixed(2)} cores busy without snapshots, ${cpu.nodesCoresWith.toFixed(2)} with (${label}); ` +
    `${cpu.nodesMsPerSnapshot.toFixed(1)} ms of node CPU per snapshot, plus ${cpu.benchMsPerSnapshot.toFixed(1)} ms in this process (admin client)\n` +
    `   each node's event loop waited for a CPU ${cpu.runQueueMsPerSecondWithout.toFixed(0)} ms per second without snapshots, ${cpu.runQueueMsPerSecondWith.toFixed(0)} with (runnable, no CPU free: on two CPUs every process's work, ours included, delays the others)`
  );
}

/** Steady state on a running load: warm-up (discarded), then `durationMs` measured. */
async function steadyWindow(load: PacedWriteLoad, durationMs: number, nodes: TestNode[]): Promise<{ fromMs: number; toMs: number; stats: LatencyStats; cpu: [CpuSample, CpuSample] }> {
  await sleep(WARMUP_MS);
  const cpuFrom = cpuSample(nodes);
  const fromMs = performance.now();
  await sleep(durationMs);
  const toMs = performance.now();
  return { fromMs, toMs, stats: stats(load.log.issuedIn(fromMs, toMs)), cpu: [cpuFrom, cpuSample(nodes)] };
}

interface LoadHealth {
  issued: number;
  skipped: number;
  achievedWritesPerSecond: number;
  clientTickGapP99Ms: number;
  clientTickGapMaxMs: number;
}

function health(load: PacedWriteLoad, elapsedMs: number): LoadHealth {
  const gaps = load.ticks.values.slice(0, load.ticks.count).sort();
  return {
    issued: load.counters.issued,
    skipped: load.counters.skipped,
    achievedWritesPerSecond: load.counters.completed / (elapsedMs / 1000),
    clientTickGapP99Ms: percentile(gaps, 0.99),
    clientTickGapMaxMs: gaps.length === 0 ? Number.NaN : gaps[gaps.length - 1]!,
  };
}

/** Measures 4 then 1 on one volume: the post-snapshot windows first, while the layer chain is short. */
async function measureHold(context: Context) {
  const { nodes, options } = context;
  const volume = "hold";
  await preparedVolume(context, volume, options.loadSizeBytes);
  const load = await PacedWriteLoad.start(nodes, volume, options.loadSizeBytes, options);
  const startedMs = performance.now();
  try {
    const steady = await steadyWindow(load, options.durationMs, nodes);
    progress(`hold: steady p50 ${steady.stats.p50Ms.toFixed(2)} ms, p99 ${steady.stats.p99Ms.toFixed(2)} ms over ${steady.stats.count} writes`);
    const post: CreateTiming[] = [];
    for (let index = 0; index < POST_SNAPSHOTS; index++) {
      post.push(await createSnapshot(nodes[index % nodes.length]!, volume, `post${index}`, "hold"));
      await sleep(POST_SPACING_MS);
    }
    const stalls: CreateTiming[] = [];
    const phasesFrom = await phaseTotals(nodes);
    const seriesCpuFrom = cpuSample(nodes);
    for (let index = 0; index < options.snapshots; index++) {
      const timing = await createSnapshot(nodes[index % nodes.length]!, volume, `s${index}`, "hold");
      stalls.push(timing);
      await sleep(options.intervalMs - timing.wallMs);
    }
    const cpu = snapshotCpu(steady.cpu, [seriesCpuFrom, cpuSample(nodes)], stalls.length);
    const phases = phaseMeans(phasesFrom, await phaseTotals(nodes));
    await load.stop(); // waits for the writes in flight: the last create's overlaps complete
    return { steady, post: postSnapshot(load, steady.stats, post), stall: holdStall(load, steady.stats, stalls), cpu, phases, load: health(load, performance.now() - startedMs) };
  } finally {
    await load.stop().catch(() => undefined);
  }
}

function postSnapshot(load: PacedWriteLoad, steady: LatencyStats, timings: CreateTiming[]) {
  const ok = succeeded(timings);
  const firstSecond = ok.flatMap((timing) => load.log.issuedIn(timing.endMs, timing.endMs + POST_WINDOW_MS));
  const later = ok.flatMap((timing) => load.log.issuedIn(timing.endMs + POST_WINDOW_MS, timing.endMs + POST_SPACING_MS));
  const first = stats(firstSecond);
  return {
    snapshots: ok.length,
    failures: failures(timings),
    firstSecond: first,
    oneToThreeSeconds: stats(later),
    steadyP50Ms: steady.p50Ms,
    ratio: first.p50Ms / steady.p50Ms,
  };
}

/** The nodes' commit-wait histograms summed (timestamp mode: from each cut until every participant's clock has read T). */
async function commitWaitTotals(nodes: TestNode[]): Promise<{ seconds: number; cuts: number }> {
  let seconds = 0;
  let cuts = 0;
  for (const node of nodes) {
    const samples = await scrape(node.extraArgs[1]!);
    seconds += sumOf(samples, "shoal_snapshot_commit_wait_seconds_sum");
    cuts += sumOf(samples, "shoal_snapshot_commit_wait_seconds_count");
  }
  return { seconds, cuts };
}

function commitWaitSince(from: { seconds: number; cuts: number }, to: { seconds: number; cuts: number }): { meanMs: number; cuts: number } {
  const cuts = to.cuts - from.cuts;
  return { meanMs: cuts > 0 ? ((to.seconds - from.seconds) * 1000) / cuts : Number.NaN, cuts };
}

/**
 * The writes of the spaced snapshots by when they were issued relative to the cut time T: where
 * in a create the latency goes (prepare, the commit wait and first writes after T, the cut's flush).
 */
function sinceCutWindows(load: PacedWriteLoad, timings: CreateTiming[]): { label: string; stats: LatencyStats }[] {
  const withCut = timings.filter((timing) => Number.isFinite(timing.cutAtMs));
  const window = (label: string, from: (t: CreateTiming) => number, to: (t: CreateTiming) => number) => ({
    label,
    stats: stats(withCut.flatMap((timing) => load.log.issuedIn(from(timing), Math.min(to(timing), timing.endMs)))),
  });
  return [
    window("ts: 1/s, issued before T", (t) => t.startMs, (t) => t.cutAtMs),
    window("ts: 1/s, issued T..T+10 ms", (t) => t.cutAtMs, (t) => t.cutAtMs + 10),
    window("ts: 1/s, issued T+10..40 ms", (t) => t.cutAtMs + 10, (t) => t.cutAtMs + 40),
    window("ts: 1/s, issued T+40 ms..end", (t) => t.cutAtMs + 40, (t) => t.endMs),
  ];
}

function holdStall(load: PacedWriteLoad, steady: LatencyStats, timings: CreateTiming[]) {
  const ok = succeeded(timings);
  const perSnapshot = ok.map((timing) => {
    const overlapping = load.log.overlapping(timing.startMs, timing.endMs);
    const maxMs = overlapping.length === 0 ? 0 : Math.max(...overlapping);
    return { name: timing.name, wallMs: timing.wallMs, tookMs: timing.tookMs, overlappingWrites: overlapping.length, stallMs: Math.max(0, maxMs - steady.p50Ms) };
  });
  const stallStats = stats(perSnapshot.map((entry) => entry.stallMs));
  // As the nodes measured it: per snapshot, the longest any request sat in a hold queue, and the
  // longest hold (a bound on any wait, met or not).
  const longestWait = stats(ok.map((timing) => Math.max(0, ...timing.holds.map((hold) => hold.longestWaitMs))));
  const longestHold = stats(ok.map((timing) => Math.max(0, ...timing.holds.map((hold) => hold.heldMs))));
  const queuedPerSnapshot = stats(ok.map((timing) => timing.holds.reduce((sum, hold) => sum + hold.queued, 0)));
  // Writes issued between one create's return and the next create's start: the series' data path.
  const between = ok.slice(0, -1).flatMap((timing, index) => load.log.issuedIn(timing.endMs, ok[index + 1]!.startMs));
  const worst = [...perSnapshot].sort((a, b) => b.stallMs - a.stallMs).slice(0, 5);
  return {
    snapshots: ok.length,
    failures: failures(timings),
    steadyP50Ms: steady.p50Ms,
    stall: stallStats,
    longestWait,
    longestHold,
    queuedPerSnapshot,
    between: stats(between),
    createWall: stats(ok.map((timing) => timing.wallMs)),
    createTook: stats(ok.map((timing) => timing.tookMs)),
    worst,
  };
}

/** 2: p99 without snapshots, then with timestamp-mode snapshots back to back, same load and duration. */
async function measureTimestamp(context: Context) {
  const { nodes, options } = context;
  const volume = "ts";
  await preparedVolume(context, volume, options.loadSizeBytes);
  const load = await PacedWriteLoad.start(nodes, volume, options.loadSizeBytes, options);
  const startedMs = performance.now();
  try {
    const without = await steadyWindow(load, options.durationMs, nodes);
    const phasesFrom = await phaseTotals(nodes);
    const cpuFrom = cpuSample(nodes);
    const fromMs = performance.now();
    const timings: CreateTiming[] = [];
    while (performance.now() - fromMs < options.durationMs) {
      timings.push(await createSnapshot(nodes[timings.length % nodes.length]!, volume, `t${timings.length}`, "timestamp"));
    }
    const toMs = performance.now();
    const cpu = snapshotCpu(without.cpu, [cpuFrom, cpuSample(nodes)], timings.length);
    const phases = phaseMeans(phasesFrom, await phaseTotals(nodes));
    // Then one snapshot every TS_SPACED_INTERVAL_MS: writes issued while a create call runs.
    const spaced: CreateTiming[] = [];
    const commitWaitFrom = await commitWaitTotals(nodes);
    const spacedFromMs = performance.now();
    while (performance.now() - spacedFromMs < options.durationMs) {
      const timing = await createSnapshot(nodes[spaced.length % nodes.length]!, volume, `u${spaced.length}`, "timestamp");
      spaced.push(timing);
      await sleep(TS_SPACED_INTERVAL_MS - timing.wallMs);
    }
    const commitWait = commitWaitSince(commitWaitFrom, await commitWaitTotals(nodes));
    await load.stop();
    const withStats = stats(load.log.issuedIn(fromMs, toMs));
    const spacedOk = succeeded(spaced);
    const during = stats(spacedOk.flatMap((timing) => load.log.issuedIn(timing.startMs, timing.endMs)));
    const sinceCut = sinceCutWindows(load, spacedOk);
    const ok = succeeded(timings);
    return {
      without: without.stats,
      with: withStats,
      during,
      sinceCut,
      commitWait,
      snapshots: ok.length,
      spacedSnapshots: spacedOk.length,
      failures: failures([...timings, ...spaced]),
      createWall: stats(ok.map((timing) => timing.wallMs)),
      ratio: withStats.p99Ms / without.stats.p99Ms,
      duringRatio: during.p99Ms / without.stats.p99Ms,
      cpu,
      phases,
      load: health(load, performance.now() - startedMs),
    };
  } finally {
    await load.stop().catch(() => undefined);
  }
}

/**
 * 3: hold-mode create time with 64 MiB written vs --big written (both --big in size, idle), while
 * the load runs on a third volume: the same background for both, so only the data written differs.
 * (A load on the snapshotted volumes themselves would differ too: random writes over --big touch
 * far more page files after each snapshot than writes over 64 MiB.)
 */
async function measureCreateVsData(context: Context) {
  const { nodes, options } = context;
  await preparedVolume(context, "small", options.bigBytes, SMALL_WRITTEN_BYTES);
  await preparedVolume(context, "big", options.bigBytes);
  await preparedVolume(context, "background", options.loadSizeBytes);
  const load = await PacedWriteLoad.start(nodes, "background", options.loadSizeBytes, options);
  try {
    await sleep(WARMUP_MS);
    const small: CreateTiming[] = [];
    const big: CreateTiming[] = [];
    for (let round = 0; round < CREATE_ROUNDS; round++) {
      const coordinator = nodes[round % nodes.length]!;
      small.push(await createSnapshot(coordinator, "small", `c${round}`, "hold"));
      await sleep(options.intervalMs);
      big.push(await createSnapshot(coordinator, "big", `c${round}`, "hold"));
      await sleep(options.intervalMs);
    }
    await load.stop();
    const smallOk = succeeded(small);
    const bigOk = succeeded(big);
    return {
      smallWrittenBytes: SMALL_WRITTEN_BYTES,
      bigWrittenBytes: options.bigBytes,
      failures: { small: failures(small), big: failures(big) },
      small: { wall: stats(smallOk.map((timing) => timing.wallMs)), took: stats(smallOk.map((timing) => timing.tookMs)) },
      big: { wall: stats(bigOk.map((timing) => timing.wallMs)), took: stats(bigOk.map((timing) => timing.tookMs)) },
      ratio: median(bigOk.map((timing) => timing.wallMs)) / median(smallOk.map((timing) => timing.wallMs)),
    };
  } finally {
    await load.stop().catch(() => undefined);
  }
}

// ---- 5: deleting a snapshot that alone holds --delete-size

/**
 * Bytes in use on the filesystem holding the nodes' data dirs. statfs, not `du`: du walks every
 * page file of every layer (tens of thousands by now) and, polled every 100 ms on two CPUs, would
 * itself slow the writes it is watching. The load only overwrites chunks the head already holds,
 * so it allocates nothing: what changes here is the deletion (and anything else on this disk).
 */
function diskUsedBytes(nodes: TestNode[]): number {
  const stats = fs.statfsSync(nodes[0]!.dataDir);
  return (stats.blocks - stats.bfree) * stats.bsize;
}

/** Nodes whose layer table (as last saved: the store's journal, or a one-file-per-page store's layers.json) still names the layer. */
function nodesHoldingLayer(nodes: TestNode[], layerId: string): string[] {
  return nodes.filter((node) => {
    const oldTable = path.join(node.dataDir, "pages", "layers.json");
    const journal = path.join(node.dataDir, "store", "journal");
    const layers = fs.existsSync(oldTable) ? (JSON.parse(fs.readFileSync(oldTable, "utf8")) as { layers: { id: string }[] }).layers : (lastTableIn(fs.readFileSync(journal), journal)?.layers ?? []);
    return layers.some((layer) => layer.id === layerId);
  }).map((node) => node.id);
}

async function snapshotHeldBytes(node: TestNode, volume: string, name: string): Promise<number | null> {
  const listed = (await adminRequest(node.meshAddress, "admin.snap.list", { volume }, ADMIN_TIMEOUT_MS)).snapshots as { name: string; bytesHeldOnlyByIt: number | null }[];
  return listed.find((snapshot) => snapshot.name === name)?.bytesHeldOnlyByIt ?? null;
}

/** Polls until no node's layer table names the layer and disk usage stopped dropping. */
async function waitForDeletion(nodes: TestNode[], layerId: string): Promise<{ layerGoneMs: number; settledMs: number; usageAfterBytes: number }> {
  const startMs = performance.now();
  let layerGoneMs = Number.NaN;
  const usage: number[] = [];
  while (performance.now() - startMs < DELETE_TIMEOUT_MS) {
    usage.push(diskUsedBytes(nodes));
    if (Number.isNaN(layerGoneMs) && nodesHoldingLayer(nodes, layerId).length === 0) layerGoneMs = performance.now();
    const recent = usage.slice(-DELETE_SETTLE_POLLS);
    const settled = recent.length === DELETE_SETTLE_POLLS && recent[0]! - recent[recent.length - 1]! <= DELETE_SETTLE_BYTES;
    if (!Number.isNaN(layerGoneMs) && settled) return { layerGoneMs, settledMs: performance.now(), usageAfterBytes: usage[usage.length - 1]! };
    await sleep(DELETE_POLL_MS);
  }
  throw new Error(`the deletion of layer ${layerId} did not finish within ${DELETE_TIMEOUT_MS} ms (still named by ${nodesHoldingLayer(nodes, layerId).join(", ") || "no node"})`);
}

async function measureDelete(context: Context) {
  const { nodes, options } = context;
  const volume = "del";
  const bytes = options.deleteSizeBytes;
  const uid = await preparedVolume(context, volume, bytes);
  const snapshot = await createSnapshot(nodes[0]!, volume, "old", "hold");
  if (snapshot.error) throw new Error(`snapshot del@old failed: ${snapshot.error}`);
  const snapshotId = String(((await adminRequest(nodes[0]!.meshAddress, "admin.snap.list", { volume }, ADMIN_TIMEOUT_MS)).snapshots as { name: string; snapshotId: string }[]).find((s) => s.name === "old")!.snapshotId);
  // Whole 1 MiB writes cover whole chunks: no copy-up, the head simply takes every chunk.
  const overwriteMs = await fillVolume(nodes, volume, bytes, fillRandom(new Uint8Array(FILL_WRITE_BYTES)));
  progress(`del: overwrote ${bytes / MiB} MiB after the snapshot in ${(overwriteMs / 1000).toFixed(1)} s; syncing`);
  await syncDisks();
  const heldBytes = await snapshotHeldBytes(nodes[0]!, volume, "old");
  const load = await PacedWriteLoad.start(nodes, volume, bytes, options);
  const startedMs = performance.now();
  try {
    const steady = await steadyWindow(load, options.durationMs, nodes);
    const usageBeforeBytes = diskUsedBytes(nodes);
    progress(`del: steady p99 ${steady.stats.p99Ms.toFixed(2)} ms; deleting the snapshot`);
    const fromMs = performance.now();
    await adminRequest(nodes[0]!.meshAddress, "admin.snap.delete", { volume, name: "old" }, ADMIN_TIMEOUT_MS);
    const deleteCallMs = performance.now() - fromMs;
    const done = await waitForDeletion(nodes, `${uid}@${snapshotId}`);
    const toMs = Math.max(done.settledMs, fromMs + DELETE_WINDOW_MIN_MS);
    await sleep(toMs - performance.now());
    await load.stop();
    const during = stats(load.log.issuedIn(fromMs, toMs));
    return {
      snapshotHeldBytes: heldBytes,
      steady: steady.stats,
      during,
      deleteCallMs,
      layerGoneAfterMs: done.layerGoneMs - fromMs,
      windowMs: toMs - fromMs,
      freedBytes: usageBeforeBytes - done.usageAfterBytes,
      ratio: during.p99Ms / steady.stats.p99Ms,
      load: health(load, performance.now() - startedMs),
    };
  } finally {
    await load.stop().catch(() => undefined);
  }
}

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

// ---- other work on the machine

/**
 * CPU time used by processes this run did not start (user processes only: kernel threads also
 * do our own writeback), sampled every second from /proc. The bench shares two CPUs with
 * whatever else runs; a phase that had company is flagged instead of silently skewed.
 */
class ForeignCpuMonitor {
  private readonly lastTicks = new Map<number, number>();
  private readonly samples: { atMs: number; seconds: number; byCommand: Map<string, number> }[] = [];
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly ownPids: () => number[]) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), FOREIGN_CPU_SAMPLE_MS);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** CPU seconds used by others in [fromMs, toMs], and the command that used most. */
  usedIn(fromMs: number, toMs: number): { seconds: number; top: string | undefined } {
    const byCommand = new Map<string, number>();
    let seconds = 0;
    for (const sample of this.samples) {
      if (sample.atMs < fromMs || sample.atMs > toMs + FOREIGN_CPU_SAMPLE_MS) continue;
      seconds += sample.seconds;
      for (const [command, used] of sample.byCommand) byCommand.set(command, (byCommand.get(command) ?? 0) + used);
    }
    const top = [...byCommand].sort((a, b) => b[1] - a[1])[0];
    return { seconds, top: top === undefined ? undefined : `${top[0]} ${top[1].toFixed(1)} s` };
  }

  private sample(): void {
    const own = new Set(this.ownPids());
    const byCommand = new Map<string, number>();
    let seconds = 0;
    for (const entry of fs.readdirSync("/proc")) {
      const pid = Number(entry);
      if (!Number.isInteger(pid)) continue;
      const stat = readProcStat(pid);
      if (stat === undefined || stat.kernelThread) continue;
      // Children of our processes (sync, git, du) are ours too.
      if (own.has(pid) || own.has(stat.ppid)) continue;
      const previous = this.lastTicks.get(pid);
      this.lastTicks.set(pid, stat.ticks);
      if (previous === undefined || stat.ticks <= previous) continue;
      const used = (stat.ticks - previous) / CLOCK_TICKS_PER_SECOND;
      seconds += used;
      byCommand.set(stat.command, (byCommand.get(stat.command) ?? 0) + used);
    }
    this.samples.push({ atMs: performance.now(), seconds, byCommand });
  }
}

const CLOCK_TICKS_PER_SECOND = 100;
/** Other processes using this much CPU during a phase make its numbers suspect. */
const FOREIGN_CPU_NOISY_SECONDS = 5;
const FOREIGN_CPU_SAMPLE_MS = 1000;

function readProcStat(pid: number): { ppid: number; ticks: number; command: string; kernelThread: boolean } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined; // exited meanwhile
  }
  const close = text.lastIndexOf(")");
  const command = text.slice(text.indexOf("(") + 1, close);
  const fields = text.slice(close + 2).split(" "); // fields[0] is field 3 (state)
  const flags = Number(fields[6]);
  const PF_KTHREAD = 0x00200000;
  return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]), command, kernelThread: (flags & PF_KTHREAD) !== 0 };
}

// ---- report

const ms = (value: number) => (Number.isFinite(value) ? value.toFixed(2) : "-");
const x = (value: number) => (Number.isFinite(value) ? `${value.toFixed(2)}x` : "-");

/** Measures not chosen with --only are absent. */
type Results = {
  hold?: Awaited<ReturnType<typeof measureHold>>;
  timestamp?: Awaited<ReturnType<typeof measureTimestamp>>;
  createVsData?: Awaited<ReturnType<typeof measureCreateVsData>>;
  deletion?: Awaited<ReturnType<typeof measureDelete>>;
};

/** Each measure judged: `value` is the judged number (ms for 1, a ratio for the rest). */
function verdicts(results: Results) {
  const { hold, timestamp, createVsData, deletion } = results;
  const below = (value: number, limit: number) => Number.isFinite(value) && value < limit;
  const atMost = (value: number, limit: number) => Number.isFinite(value) && value <= limit;
  return [
    hold && {
      measure: "1 hold: longest queued wait p99 (p50)",
      value: hold.stall.longestWait.p99Ms,
      display: `${ms(hold.stall.longestWait.p99Ms)} ms (${ms(hold.stall.longestWait.p50Ms)})`,
      anchor: `hold p99 ${ms(hold.stall.longestHold.p99Ms)} ms`,
      target: `< ${TARGETS.holdStallP99Ms} ms`,
      met: below(hold.stall.longestWait.p99Ms, TARGETS.holdStallP99Ms),
    },
    hold && {
      measure: "1 client-seen stall p99 (p50), approx.",
      value: hold.stall.stall.p99Ms,
      display: `${ms(hold.stall.stall.p99Ms)} ms (${ms(hold.stall.stall.p50Ms)})`,
      anchor: `steady p50 ${ms(hold.stall.steadyP50Ms)} ms`,
      target: `< ${TARGETS.holdStallP99Ms} ms`,
      met: below(hold.stall.stall.p99Ms, TARGETS.holdStallP99Ms),
    },
    timestamp && {
      measure: "2 ts p99 back to back / none",
      value: timestamp.ratio,
      display: `${ms(timestamp.with.p99Ms)} ms`,
      anchor: `${ms(timestamp.without.p99Ms)} ms`,
      target: `<= ${TARGETS.timestampP99Ratio}x`,
      met: atMost(timestamp.ratio, TARGETS.timestampP99Ratio),
    },
    timestamp && {
      measure: "2 ts p99 during creates (1/s) / none",
      value: timestamp.duringRatio,
      display: `${ms(timestamp.during.p99Ms)} ms`,
      anchor: `${ms(timestamp.without.p99Ms)} ms`,
      target: `<= ${TARGETS.timestampP99Ratio}x`,
      met: atMost(timestamp.duringRatio, TARGETS.timestampP99Ratio),
    },
    createVsData && {
      measure: `3 create ${createVsData.bigWrittenBytes / GiB} GiB / 64 MiB written`,
      value: createVsData.ratio,
      display: `${ms(createVsData.big.wall.p50Ms)} ms`,
      anchor: `${ms(createVsData.small.wall.p50Ms)} ms`,
      target: `< ${TARGETS.createTimeRatio}x`,
      met: below(createVsData.ratio, TARGETS.createTimeRatio),
    },
    hold && {
      measure: "4 post-snapshot p50 (1st s) / steady",
      value: hold.post.ratio,
      display: `${ms(hold.post.firstSecond.p50Ms)} ms`,
      anchor: `${ms(hold.post.steadyP50Ms)} ms`,
      target: `<= ${TARGETS.postSnapshotP50Ratio}x`,
      met: atMost(hold.post.ratio, TARGETS.postSnapshotP50Ratio),
    },
    deletion && {
      measure: "5 delete p99 / steady",
      value: deletion.ratio,
      display: `${ms(deletion.during.p99Ms)} ms`,
      anchor: `${ms(deletion.steady.p99Ms)} ms`,
      target: `<= ${TARGETS.deleteP99Ratio}x`,
      met: atMost(deletion.ratio, TARGETS.deleteP99Ratio),
    },
  ].filter((verdict) => verdict !== undefined);
}

function latencyRow(label: string, s: LatencyStats): string[] {
  return [label, String(s.count), ms(s.p50Ms), ms(s.p90Ms), ms(s.p99Ms), ms(s.p999Ms), ms(s.maxMs)];
}

function renderReport(results: Results, options: Options, info: RunInfo): string {
  const { hold, timestamp, createVsData, deletion } = results;
  const summary = verdicts(results).map((v) => [v.measure, v.display, v.anchor, v.measure.startsWith("1 ") ? "" : x(v.value), v.target, v.met ? "met" : "NOT MET"]);
  const latencyRows = [
    ...(hold
      ? [
          latencyRow("hold: steady (no snapshots)", hold.steady.stats),
          latencyRow("hold: 1st s after a snapshot", hold.post.firstSecond),
          latencyRow("hold: 1-3 s after a snapshot", hold.post.oneToThreeSeconds),
          latencyRow("hold: between series snapshots", hold.stall.between),
          latencyRow("hold: per-snapshot stall", hold.stall.stall),
          latencyRow("hold: longest queued wait", hold.stall.longestWait),
          latencyRow("hold: longest hold (any node)", hold.stall.longestHold),
          latencyRow("hold: create wall", hold.stall.createWall),
          latencyRow("hold: create tookMs (coord.)", hold.stall.createTook),
        ]
      : []),
    ...(timestamp
      ? [
          latencyRow("ts: without snapshots", timestamp.without),
          latencyRow("ts: with snapshots back to back", timestamp.with),
          latencyRow("ts: during creates, 1/s", timestamp.during),
          ...timestamp.sinceCut.map((window) => latencyRow(window.label, window.stats)),
          latencyRow("ts: create wall", timestamp.createWall),
        ]
      : []),
    ...(createVsData
      ? [
          latencyRow(`create wall, 64 MiB written`, createVsData.small.wall),
          latencyRow(`create wall, ${createVsData.bigWrittenBytes / GiB} GiB written`, createVsData.big.wall),
          latencyRow(`create tookMs, 64 MiB written`, createVsData.small.took),
          latencyRow(`create tookMs, ${createVsData.bigWrittenBytes / GiB} GiB written`, createVsData.big.took),
        ]
      : []),
    ...(deletion ? [latencyRow("del: steady", deletion.steady), latencyRow("del: during the delete", deletion.during)] : []),
  ];
  const loads = ([["hold", hold?.load], ["ts", timestamp?.load], ["del", deletion?.load]] as [string, LoadHealth | undefined][]).filter(
    (entry): entry is [string, LoadHealth] => entry[1] !== undefined,
  );
  const failed = [
    hold && hold.post.failures.count + hold.stall.failures.count > 0 ? `hold-mode creates failed: ${hold.post.failures.count + hold.stall.failures.count} (${hold.stall.failures.first ?? hold.post.failures.first})` : "",
    timestamp && timestamp.failures.count > 0 ? `timestamp-mode creates failed: ${timestamp.failures.count} (${timestamp.failures.first})` : "",
    createVsData && createVsData.failures.small.count + createVsData.failures.big.count > 0 ? `create-vs-data creates failed: ${createVsData.failures.small.count + createVsData.failures.big.count}` : "",
  ].filter(Boolean);
  return [
    `shoal ${info.revision}; ${NODE_COUNT} nodes on loopback, volumes striped over all, 4 MiB pages, 4 KiB copy-on-write chunks`,
    `load: ${NODE_COUNT} NBD clients (one per node), 4 KiB random writes, ${options.ratePerClient}/s each (open loop), <= ${options.inflightPerClient} in flight each; steady windows ${options.durationMs / 1000} s after ${WARMUP_MS / 1000} s warm-up`,
    `${os.cpus().length} CPUs; load average ${info.loadAtStart.toFixed(2)} at start, ${info.loadAtEnd.toFixed(2)} at end (this run alone keeps ~4 processes busy)`,
    `other processes' CPU during each phase (incl. its fills): ${Object.entries(info.foreignCpu).map(([key, used]) => `${key} ${used.seconds.toFixed(1)} s${used.seconds >= FOREIGN_CPU_NOISY_SECONDS ? ` (NOISY: ${used.top})` : ""}`).join(", ")}`,
    ...info.notes,
    "",
    table(["MEASURE", "VALUE", "ANCHOR", "RATIO", "TARGET", "VERDICT"], summary, 2),
    "",
    ...(hold
      ? [
          `1: ${hold.stall.snapshots} hold-mode snapshots every ${options.intervalMs} ms; judged: per snapshot, the longest any request waited in a node's hold queue`,
          `   (the nodes' own reports; median ${hold.stall.queuedPerSnapshot.p50Ms.toFixed(0)} requests queued per snapshot). Client-seen stall: max latency of writes in flight`,
          `   during the create call - steady p50; an upper bound that also counts what else the snapshot costs (its flush, copy-on-write)`,
          `   worst: ${hold.stall.worst.map((w) => `${w.name} ${ms(w.stallMs)} ms (create ${ms(w.wallMs)} ms)`).join(", ")}`,
          describeCpu(`one snapshot every ${options.intervalMs} ms`, hold.cpu),
        ]
      : []),
    ...(timestamp
      ? [
          `2: ${timestamp.snapshots} timestamp-mode snapshots in ${options.durationMs / 1000} s, back to back (every write is one of the first after a cut); then ${timestamp.spacedSnapshots},`,
          `   one every ${TS_SPACED_INTERVAL_MS / 1000} s, counting the writes issued while a create call ran`,
          describeCpu("back to back", timestamp.cpu),
          `   commit wait (from a cut until every participant's clock has read T; acks of writes applied meanwhile wait): mean ${ms(timestamp.commitWait.meanMs)} ms over ${timestamp.commitWait.cuts} cuts of the one-a-second snapshots (nodes' histograms)`,
        ]
      : []),
    ...(createVsData ? [`3: ${CREATE_ROUNDS} hold-mode creates per volume, alternating, load on a third volume; ratio of median wall times (tookMs: as the coordinator measured)`] : []),
    ...(hold ? [`4: ${hold.post.snapshots} hold-mode snapshots ${POST_SPACING_MS / 1000} s apart; writes issued in the first ${POST_WINDOW_MS / 1000} s after each create returned`] : []),
    ...(deletion
      ? [
          `5: snapshot held ${deletion.snapshotHeldBytes === null ? "?" : `${(deletion.snapshotHeldBytes / MiB).toFixed(0)} MiB`} alone; delete call ${ms(deletion.deleteCallMs)} ms, layer gone from every node after ${ms(deletion.layerGoneAfterMs)} ms, window ${ms(deletion.windowMs)} ms, ${(deletion.freedBytes / MiB).toFixed(0)} MiB freed`,
        ]
      : []),
    ...failed,
    "",
    table(["WRITE LATENCY (ms)", "N", "P50", "P90", "P99", "P99.9", "MAX"], latencyRows),
    ...(hold || timestamp
      ? [
          "",
          table(
            ["CREATE PHASES (ms)", "N", "HOLD MEAN", "P50~", "N", "TS MEAN", "P50~"],
            PHASES.map(([, , , phase], index) => {
              const cell = (means: { meanMs: number; p50Ms: number; count: number }[] | undefined) => {
                const entry = means?.[index];
                return [String(entry?.count ?? "-"), ms(entry?.meanMs ?? Number.NaN), ms(entry?.p50Ms ?? Number.NaN)];
              };
              return [phase, ...cell(hold?.phases), ...cell(timestamp?.phases)];
            }),
          ),
          "hold series and timestamp back to back; coord. phases on the coordinator (taken + decide + ack = take), part. steps per participant",
          "(the slowest participant sets the coordinator's phase); P50~: from the nodes' histograms (doubling buckets), interpolated",
        ]
      : []),
    "",
    table(
      ["LOAD", "ISSUED", "SKIPPED", "WRITES/S", "CLIENT LAG P99", "CLIENT LAG MAX"],
      loads.map(([label, h]) => [label, String(h.issued), String(h.skipped), h.achievedWritesPerSecond.toFixed(0), ms(h.clientTickGapP99Ms), ms(h.clientTickGapMaxMs)]),
    ),
    "client lag: gaps between this process's 1 ms pacer ticks; large gaps inflate every latency above",
  ].join("\n");
}

interface RunInfo {
  revision: string;
  loadAtStart: number;
  loadAtEnd: number;
  notes: string[];
  /** CPU seconds other processes used during each measure's phase. */
  foreignCpu: Record<string, { seconds: number; top: string | undefined }>;
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
