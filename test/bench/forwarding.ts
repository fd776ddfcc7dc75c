// The forwarding benchmark: fio through a node that forwards every request over the mesh to the
// page owner, against fio straight to the owner, same group, same volume, interleaved (direct,
// forwarded, direct, forwarded ...), with the CPU each node spends per request. Not a *.test.ts.
//
//   bun test/bench/forwarding.ts [--size 512M] [--runtime 5] [--rounds 2] [--json] [--bin PATH]
//
// A three-node group; volume "fwd" lives whole on node1 (`volume create --nodes node1`). Direct:
// fio's nbd engine to node1. Forwarded: the same to node2, which owns none of its pages and sends
// each to node1 over the mesh. Four jobs, one connection, iodepth 16 (as datapath.ts): 1 MiB
// sequential write and read over --size, 4 KiB random write and read for --runtime s. CPU per
// request is each node's /proc/PID/stat user+system time over the job divided by fio's request
// count (10 ms ticks: short jobs are coarse), and fio's own from its resource usage. When the two
// CPUs are the limit, forwarded/direct is about (direct owner + fio) / (entry + owner + fio) per
// request, so the table shows where a ratio comes from. Target: forwarded >= 0.6x direct, every job.
import * as path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../../core/geometry.ts";
import { fioSpecOf, JOBS, type Job } from "./_fio-jobs.ts";
import { runFio } from "./_fio.ts";
import { Resources } from "./_bench-processes.ts";
import { buildShoal, loadAverage, printReport, processCpuMs, progress, runBench, sourceRevision, syncDisks, table } from "./_bench.ts";
import { freePort, run, shoalCommand, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";

const MiB = 1024 * 1024;
const TARGET_RATIO = 0.6;
const FIO_IODEPTH = 16;

type PathName = "direct" | "forwarded";

interface Measure {
  mbPerSecond: number;
  iops: number;
  requests: number;
  /** CPU per request, µs, of the node the client talks to and of the owner (the same node when direct). */
  entryCpuUsPerRequest: number;
  ownerCpuUsPerRequest: number;
  /** The client's own share: fio and libnbd, on the same two CPUs. */
  fioCpuUsPerRequest: number;
  load: number;
}

interface Options {
  sizeBytes: number;
  runtimeSeconds: number;
  rounds: number;
  json: boolean;
  bin?: string;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      size: { type: "string", default: "512M" },
      runtime: { type: "string", default: "5" },
      rounds: { type: "string", default: "2" },
      json: { type: "boolean", default: false },
      bin: { type: "string" },
    },
    strict: true,
  });
  const sizeBytes = parseSize(values.size!);
  const runtimeSeconds = Number(values.runtime);
  const rounds = Number(values.rounds);
  if (sizeBytes < 16 * MiB || sizeBytes % MiB !== 0) throw new Error(`--size ${values.size}: give a whole number of MiB, at least 16M`);
  if (!Number.isInteger(runtimeSeconds) || runtimeSeconds < 1 || runtimeSeconds > 600) throw new Error(`--runtime ${values.runtime}: give 1..600 seconds`);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 9) throw new Error(`--rounds ${values.rounds}: give 1..9`);
  return { sizeBytes, runtimeSeconds, rounds, json: values.json!, bin: values.bin };
}

async function startGroup(resources: Resources): Promise<TestNode[]> {
  for (let index = 1; index <= 3; index++) {
    const node = new TestNode(`node${index}`, path.join(resources.root, `node${index}`), await freePort(), await freePort());
    resources.nodes.push(node);
    await node.start(index === 1 ? undefined : resources.nodes[0]!.meshAddress);
  }
  await waitGroupUp(resources.nodes, 20_000);
  return resources.nodes;
}

/** Names each fio run's output file apart. */
let fioRuns = 0;

async function measure(resources: Resources, job: Job, entry: TestNode, owner: TestNode, options: Options): Promise<Measure> {
  await syncDisks();
  const load = loadAverage();
  const entryBefore = processCpuMs(entry.proc!.pid);
  const ownerBefore = processCpuMs(owner.proc!.pid);
  const run = { name: `${job.key}-${++fioRuns}`, uri: entry.nbdUrl("fwd"), iodepth: FIO_IODEPTH, sizeBytes: options.sizeBytes, runtimeSeconds: options.runtimeSeconds, endFsync: false };
  const result = await runFio(resources, fioSpecOf(job, run));
  const perRequestUs = (before: number, pid: number) => ((processCpuMs(pid) - before) * 1000) / Math.max(result.requests, 1);
  return {
    ...result,
    entryCpuUsPerRequest: perRequestUs(entryBefore, entry.proc!.pid),
    ownerCpuUsPerRequest: perRequestUs(ownerBefore, owner.proc!.pid),
    fioCpuUsPerRequest: result.fioCpuUs / Math.max(result.requests, 1),
    load,
  };
}

type Rounds = Record<Job["key"], Record<PathName, Measure[]>>;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)]!; // lower median: never flatters
}

/** The ratio the CPU per request predicts when the machine's CPUs are the limit: direct work over forwarded work. */
function cpuBoundRatio(direct: Measure[], forwarded: Measure[]): number {
  const m = (cells: Measure[], pick: (cell: Measure) => number) => median(cells.map(pick));
  const directUs = m(direct, (cell) => cell.ownerCpuUsPerRequest) + m(direct, (cell) => cell.fioCpuUsPerRequest);
  const forwardedUs = m(forwarded, (cell) => cell.entryCpuUsPerRequest + cell.ownerCpuUsPerRequest) + m(forwarded, (cell) => cell.fioCpuUsPerRequest);
  return directUs / forwardedUs;
}

function render(rounds: Rounds, options: Options, revision: string): string {
  const rows = JOBS.map((job) => {
    const { direct, forwarded } = rounds[job.key];
    const ratios = direct.map((cell, index) => forwarded[index]!.mbPerSecond / cell.mbPerSecond);
    const ratio = median(ratios);
    return [
      job.label,
      median(direct.map((cell) => cell.mbPerSecond)).toFixed(1),
      median(forwarded.map((cell) => cell.mbPerSecond)).toFixed(1),
      `${ratios.map((value) => value.toFixed(2)).join(", ")}`,
      `${ratio.toFixed(2)} ${ratio >= TARGET_RATIO ? "met" : "NOT met"}`,
      median(direct.map((cell) => cell.ownerCpuUsPerRequest)).toFixed(0),
      median(forwarded.map((cell) => cell.entryCpuUsPerRequest)).toFixed(0),
      median(forwarded.map((cell) => cell.ownerCpuUsPerRequest)).toFixed(0),
      median([...direct, ...forwarded].map((cell) => cell.fioCpuUsPerRequest)).toFixed(0),
      cpuBoundRatio(direct, forwarded).toFixed(2),
      [...direct, ...forwarded].map((cell) => cell.load.toFixed(1)).join("/"),
    ];
  });
  const header = ["job", "direct MB/s", "forwarded MB/s", "ratio per round", `ratio (>= ${TARGET_RATIO})`, "direct: owner µs/req", "fwd: entry µs/req", "fwd: owner µs/req", "fio µs/req", "CPU ratio", "load"];
  return [
    `Forwarding vs direct, ${options.sizeBytes / MiB} MiB volume on node1, fio nbd iodepth ${FIO_IODEPTH}, ${options.rounds} interleaved rounds, revision ${revision}`,
    table(header, rows),
  ].join("\n");
}

async function main(): Promise<void> {
  const options = parseOptions();
  const resources = new Resources();
  await runBench({ nodes: resources.nodes, cleanup: () => resources.cleanup() }, 30 * 60_000, async () => {
    const revision = await sourceRevision();
    process.env.SHOAL_BIN = await buildShoal(resources.root, options.bin);
    const [owner, entry] = await startGroup(resources);
    const create = [...shoalCommand(), "volume", "create", "fwd", "--size", `${options.sizeBytes / MiB}M`, "--nodes", "node1", "--node", owner!.meshAddress];
    const created = await run(create, { timeoutMs: 60_000 });
    if (created.exitCode !== 0) throw new Error(`volume create failed: ${created.stderr}`);
    await waitFor("node2 to serve the volume", async () => (await run(["nbdinfo", "--size", entry!.nbdUrl("fwd")], { timeoutMs: 5000 })).exitCode === 0);
    const rounds = Object.fromEntries(JOBS.map((job) => [job.key, { direct: [], forwarded: [] }])) as unknown as Rounds;
    for (let round = 1; round <= options.rounds; round++) {
      for (const job of JOBS) {
        for (const [name, via] of [["direct", owner!], ["forwarded", entry!]] as const) {
          const cell = await measure(resources, job, via, owner!, options);
          rounds[job.key][name].push(cell);
          progress(
            `round ${round} ${job.label.padEnd(14)} ${name.padEnd(9)} ${cell.mbPerSecond.toFixed(1).padStart(8)} MB/s ${Math.round(cell.iops).toString().padStart(7)} IOPS ` +
              `entry ${cell.entryCpuUsPerRequest.toFixed(0)} µs/req owner ${cell.ownerCpuUsPerRequest.toFixed(0)} µs/req fio ${cell.fioCpuUsPerRequest.toFixed(0)} µs/req load ${cell.load}`,
          );
        }
      }
    }
    printReport(render(rounds, options, revision), options.json, () => ({ revision, options, rounds }));
  });
}

await main();
