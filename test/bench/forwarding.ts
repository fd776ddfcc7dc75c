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
import { lowerMedian, runFioGroupBench, type FioBenchOptions } from "./_fio-group-bench.ts";
import { fioSpecOf, JOBS, type Job } from "./_fio-jobs.ts";
import { runFio } from "./_fio.ts";
import type { Resources } from "./_bench-processes.ts";
import { loadAverage, printReport, processCpuMs, progress, syncDisks, table } from "./_bench.ts";
import { run, shoalCommand, type TestNode, waitFor } from "../integration/_cluster.ts";

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

const USAGE = `usage: bun test/bench/forwarding.ts [--size 512M] [--runtime 5] [--rounds 2] [--json] [--bin PATH]
fio through a node that forwards every request to the page owner against fio straight to the owner
(same group and volume, interleaved); CPU per request of each node and of fio. Target: >= ${TARGET_RATIO}x.`;

/** Names each fio run's output file apart. */
let fioRuns = 0;

async function measure(resources: Resources, job: Job, entry: TestNode, owner: TestNode, options: FioBenchOptions): Promise<Measure> {
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

/** The ratio the CPU per request predicts when the machine's CPUs are the limit: direct work over forwarded work. */
function cpuBoundRatio(direct: Measure[], forwarded: Measure[]): number {
  const m = (cells: Measure[], pick: (cell: Measure) => number) => lowerMedian(cells.map(pick));
  const directUs = m(direct, (cell) => cell.ownerCpuUsPerRequest) + m(direct, (cell) => cell.fioCpuUsPerRequest);
  const forwardedUs = m(forwarded, (cell) => cell.entryCpuUsPerRequest + cell.ownerCpuUsPerRequest) + m(forwarded, (cell) => cell.fioCpuUsPerRequest);
  return directUs / forwardedUs;
}

function render(rounds: Rounds, options: FioBenchOptions, revision: string): string {
  const rows = JOBS.map((job) => {
    const { direct, forwarded } = rounds[job.key];
    const ratios = direct.map((cell, index) => forwarded[index]!.mbPerSecond / cell.mbPerSecond);
    const ratio = lowerMedian(ratios);
    return [
      job.label,
      lowerMedian(direct.map((cell) => cell.mbPerSecond)).toFixed(1),
      lowerMedian(forwarded.map((cell) => cell.mbPerSecond)).toFixed(1),
      `${ratios.map((value) => value.toFixed(2)).join(", ")}`,
      `${ratio.toFixed(2)} ${ratio >= TARGET_RATIO ? "met" : "NOT met"}`,
      lowerMedian(direct.map((cell) => cell.ownerCpuUsPerRequest)).toFixed(0),
      lowerMedian(forwarded.map((cell) => cell.entryCpuUsPerRequest)).toFixed(0),
      lowerMedian(forwarded.map((cell) => cell.ownerCpuUsPerRequest)).toFixed(0),
      lowerMedian([...direct, ...forwarded].map((cell) => cell.fioCpuUsPerRequest)).toFixed(0),
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
  await runFioGroupBench(USAGE, { size: "512M", runtime: "5", rounds: "2" }, async ({ resources, nodes: [owner, entry], options, revision }) => {
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
