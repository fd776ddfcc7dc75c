// The one-node store benchmark (issue 15): fio on a 1 TiB Shoal volume served by one node against
// nbdkit's file plugin on a 1 TiB sparse file, both measured in the same run, interleaved.
// Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/store-fio.ts [--rounds 2] [--runtime 15] [--size 4G] [--volume-size 1T]
//                               [--jobs rw4k,sw4g,sr4g,rr4k,sw1g] [--end-fsync]
//                               [--node-args="--dirty-limit 2G"] [--bin PATH] [--timeout-minutes 60]
//
// Jobs (fio nbd engine, 1 connection, iodepth 16; random jobs use fio's fixed seed, so both
// servers get the same offsets), run in the order --jobs gives:
//   rw4k  4 KiB random write over the whole volume, --runtime s
//   rr4k  4 KiB random read over the first --size (what sw4g wrote), --runtime s
//   sw1g  1 MiB sequential write of --size / 4 (1 GiB by default)
//   sw4g  1 MiB sequential write of --size (4 GiB)
//   sr4g  1 MiB sequential read of --size
// Fairness:
// - Every round runs every job on both servers, and the server that goes first ALTERNATES per
//   round: whichever runs second inherits the first one's page-cache and writeback state (a
//   previous run found the second got about half the IOPS). `sync` runs before every run and
//   nothing else is dropped; Dirty and Writeback from /proc/meminfo are printed before each run.
// - --end-fsync passes fio --end_fsync=1 to the write jobs: an NBD FLUSH after the last write,
//   inside the measured time. Shoal keeps at most --dirty-limit (128 MiB by default) unsynced, so a
//   FLUSH never inherits seconds of work; nbdkit leaves up to the kernel's dirty ratio (~20% of
//   RAM) in the page cache and, without the FLUSH, does its disk work after the run ends.
// - CPU per request: the server process's user+system time (/proc/PID/stat, every thread) over
//   the run divided by the requests fio completed.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../../core/geometry.ts";
import { freePort, run, shoalCommand, TestNode, waitGroupUp } from "../integration/_cluster.ts";
import { buildShoal, loadAverage, processCpuMs, progress, runBench, sourceRevision, syncDisks, table } from "./_bench.ts";
import { Resources, startNbdkitFile } from "./_bench-processes.ts";
import { type FioResult, runFio } from "./_fio.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const FIO_IODEPTH = 16;
const NODE_START_TIMEOUT_MS = 20_000;
/** A sequential job covers its whole size but never runs longer than this. */
const SEQUENTIAL_RUNTIME_SECONDS_MAX = 300;

type JobKey = "rw4k" | "rr4k" | "sw1g" | "sw4g" | "sr4g";

interface StoreJob {
  key: JobKey;
  rw: string;
  blockSize: string;
  timeBased: boolean;
  /** The bytes the job covers, from the options. */
  sizeBytes(options: Options): number;
}

const STORE_JOBS: Record<JobKey, StoreJob> = {
  rw4k: { key: "rw4k", rw: "randwrite", blockSize: "4k", timeBased: true, sizeBytes: (options) => options.volumeSizeBytes },
  rr4k: { key: "rr4k", rw: "randread", blockSize: "4k", timeBased: true, sizeBytes: (options) => options.sizeBytes },
  sw1g: { key: "sw1g", rw: "write", blockSize: "1M", timeBased: false, sizeBytes: (options) => options.sizeBytes / 4 },
  sw4g: { key: "sw4g", rw: "write", blockSize: "1M", timeBased: false, sizeBytes: (options) => options.sizeBytes },
  sr4g: { key: "sr4g", rw: "read", blockSize: "1M", timeBased: false, sizeBytes: (options) => options.sizeBytes },
};

interface Options {
  rounds: number;
  runtimeSeconds: number;
  sizeBytes: number;
  volumeSizeBytes: number;
  jobs: StoreJob[];
  endFsync: boolean;
  nodeArgs: string[];
  bin?: string;
  timeoutMs: number;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      rounds: { type: "string", default: "2" },
      runtime: { type: "string", default: "15" },
      size: { type: "string", default: "4G" },
      "volume-size": { type: "string", default: "1T" },
      jobs: { type: "string", default: "rw4k,sw4g,sr4g,rr4k,sw1g" },
      "end-fsync": { type: "boolean", default: false },
      "node-args": { type: "string", default: "" },
      bin: { type: "string" },
      "timeout-minutes": { type: "string", default: "60" },
    },
    strict: true,
  });
  const rounds = Number(values.rounds);
  const runtimeSeconds = Number(values.runtime);
  const sizeBytes = parseSize(values.size!);
  const volumeSizeBytes = parseSize(values["volume-size"]!);
  const timeoutMinutes = Number(values["timeout-minutes"]);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 9) throw new Error(`--rounds ${values.rounds}: give 1..9`);
  if (!Number.isInteger(runtimeSeconds) || runtimeSeconds < 1 || runtimeSeconds > 600) throw new Error(`--runtime ${values.runtime}: give 1..600 seconds`);
  if (sizeBytes < 4 * MiB || sizeBytes % (4 * MiB) !== 0) throw new Error(`--size ${values.size}: give a multiple of 4 MiB`);
  if (volumeSizeBytes < sizeBytes) throw new Error(`--volume-size ${values["volume-size"]}: must hold --size ${values.size}`);
  if (!(timeoutMinutes > 0)) throw new Error(`--timeout-minutes ${values["timeout-minutes"]}: give a positive number`);
  const jobs = values.jobs!.split(",").map((key) => {
    const job = STORE_JOBS[key.trim() as JobKey];
    if (!job) throw new Error(`--jobs: unknown job ${key}; give some of ${Object.keys(STORE_JOBS).join(",")}`);
    return job;
  });
  const nodeArgs = values["node-args"]!.split(/\s+/).filter((arg) => arg !== "");
  return { rounds, runtimeSeconds, sizeBytes, volumeSizeBytes, jobs, endFsync: values["end-fsync"]!, nodeArgs, bin: values.bin, timeoutMs: timeoutMinutes * 60_000 };
}

// ---- the two servers

interface Server {
  label: "shoal" | "nbdkit";
  uri: string;
  pid: number;
}

async function startShoal(resources: Resources, options: Options): Promise<Server> {
  const node = new TestNode("n1", path.join(resources.root, "n1"), await freePort(), await freePort());
  node.extraArgs = options.nodeArgs;
  resources.nodes.push(node);
  await node.start();
  await waitGroupUp([node], NODE_START_TIMEOUT_MS);
  const created = await run([...shoalCommand(), "volume", "create", "huge", "--size", String(options.volumeSizeBytes), "--node", node.meshAddress], { timeoutMs: 60_000 });
  if (created.exitCode !== 0) throw new Error(`volume create huge failed: ${created.stderr}`);
  return { label: "shoal", uri: node.nbdUrl("huge"), pid: node.proc!.pid };
}

// ---- one run: sync, machine state, fio, the server's CPU

interface RunResult {
  fio: FioResult;
  cpuMicrosPerRequest: number;
  dirtyKiB: number;
  writebackKiB: number;
  load: number;
}

function meminfoKiB(field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(fs.readFileSync("/proc/meminfo", "utf8"));
  return match ? Number(match[1]) : Number.NaN;
}

async function measureRun(resources: Resources, job: StoreJob, server: Server, round: number, options: Options): Promise<RunResult> {
  await syncDisks();
  const dirtyKiB = meminfoKiB("Dirty");
  const writebackKiB = meminfoKiB("Writeback");
  const cpuBeforeMs = processCpuMs(server.pid);
  const fio = await runFio(resources, {
    name: `${server.label}-${job.key}-${round}`,
    uri: server.uri,
    rw: job.rw,
    blockSize: job.blockSize,
    iodepth: FIO_IODEPTH,
    sizeBytes: job.sizeBytes(options),
    runtimeSeconds: job.timeBased ? options.runtimeSeconds : SEQUENTIAL_RUNTIME_SECONDS_MAX,
    timeBased: job.timeBased,
    endFsync: options.endFsync && job.rw.includes("write"),
  });
  const cpuMs = processCpuMs(server.pid) - cpuBeforeMs;
  const result = { fio, cpuMicrosPerRequest: fio.requests > 0 ? (cpuMs * 1000) / fio.requests : Number.NaN, dirtyKiB, writebackKiB, load: loadAverage() };
  progress(
    `round ${round} ${job.key} ${server.label.padEnd(6)} ${formatValue(job, fio).padStart(12)} cpu ${result.cpuMicrosPerRequest.toFixed(1).padStart(7)} us/req; before: Dirty ${dirtyKiB} kB Writeback ${writebackKiB} kB; load ${result.load.toFixed(2)}${fio.capped ? " (capped)" : ""}`,
  );
  return result;
}

/** Random jobs compare IOPS, sequential ones MB/s. */
function value(job: StoreJob, fio: FioResult): number {
  return job.timeBased ? fio.iops : fio.mbPerSecond;
}

function formatValue(job: StoreJob, fio: FioResult): string {
  return job.timeBased ? `${Math.round(fio.iops)} IOPS` : `${fio.mbPerSecond.toFixed(1)} MB/s${fio.capped ? "*" : ""}`;
}

interface Row {
  job: StoreJob;
  round: number;
  first: Server["label"];
  shoal: RunResult;
  nbdkit: RunResult;
}

/** Every round runs each job on both servers; odd rounds start with Shoal, even ones with nbdkit. */
async function measureRounds(resources: Resources, servers: [Server, Server], options: Options): Promise<Row[]> {
  const rows: Row[] = [];
  for (let round = 1; round <= options.rounds; round++) {
    const order = round % 2 === 1 ? servers : ([servers[1], servers[0]] as const);
    for (const job of options.jobs) {
      const results = new Map<Server["label"], RunResult>();
      for (const server of order) results.set(server.label, await measureRun(resources, job, server, round, options));
      rows.push({ job, round, first: order[0].label, shoal: results.get("shoal")!, nbdkit: results.get("nbdkit")! });
    }
  }
  return rows;
}

// ---- report

function ratio(row: Row): number {
  return value(row.job, row.shoal.fio) / value(row.job, row.nbdkit.fio);
}

function renderReport(rows: Row[], options: Options, revision: string): string {
  const perRun = rows.map((row) => [
    row.job.key,
    String(row.round),
    row.first,
    formatValue(row.job, row.shoal.fio),
    formatValue(row.job, row.nbdkit.fio),
    `${ratio(row).toFixed(2)}x`,
    row.shoal.cpuMicrosPerRequest.toFixed(1),
    row.nbdkit.cpuMicrosPerRequest.toFixed(1),
    `${row.shoal.load.toFixed(1)} / ${row.nbdkit.load.toFixed(1)}`,
  ]);
  const perJob = options.jobs.map((job) => {
    const ratios = rows.filter((row) => row.job === job).map(ratio).sort((a, b) => a - b);
    return [job.key, ratios.map((r) => `${r.toFixed(2)}x`).join(", "), `${ratios[Math.floor((ratios.length - 1) / 2)]!.toFixed(2)}x`];
  });
  const loads = rows.flatMap((row) => [row.shoal.load, row.nbdkit.load]);
  return [
    `shoal ${revision} (one node, ${options.volumeSizeBytes / GiB} GiB volume${options.nodeArgs.length ? `, node ${options.nodeArgs.join(" ")}` : ""}) vs nbdkit file plugin on a sparse file of the same size`,
    `fio nbd engine, iodepth ${FIO_IODEPTH}, 1 connection; random jobs ${options.runtimeSeconds} s; sequential ${options.sizeBytes / 4 / MiB} / ${options.sizeBytes / MiB} MiB; ${options.rounds} rounds, first server alternating; sync before every run`,
    `${options.endFsync ? "--end-fsync: write jobs end with an NBD FLUSH inside the measured time" : "no end_fsync: writes may still sit in the page cache when fio stops the clock"}; ${os.cpus().length} CPUs; load ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}; * = sequential job stopped by its ${SEQUENTIAL_RUNTIME_SECONDS_MAX} s bound`,
    "",
    table(["JOB", "ROUND", "FIRST", "SHOAL", "NBDKIT", "RATIO", "SHOAL US/REQ", "NBDKIT US/REQ", "LOAD S / N"], perRun, 3),
    "",
    table(["JOB", "RATIOS", "LOWER MEDIAN"], perJob, 2),
  ].join("\n");
}

// ---- main

async function measure(resources: Resources, options: Options): Promise<void> {
  progress(`temp dir ${resources.root}; load average ${loadAverage()}`);
  const revision = await sourceRevision();
  process.env.SHOAL_BIN = await buildShoal(resources.root, options.bin);
  const shoal = await startShoal(resources, options);
  const nbdkit = await startNbdkitFile(resources, options.volumeSizeBytes);
  const rows = await measureRounds(resources, [shoal, { label: "nbdkit", ...nbdkit }], options);
  console.log(renderReport(rows, options, revision));
}

async function main(): Promise<void> {
  const options = parseOptions();
  const resources = new Resources();
  await runBench(resources, options.timeoutMs, () => measure(resources, options));
}

await main().catch((err: unknown) => {
  console.error(`store-fio: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
