// The replicated-write benchmark: fio writes on a volume with two copies of each page against the
// same on a volume with one, same three-node group, interleaved (one copy, two copies, one, two
// ...), with the CPU all three nodes spend per write. Not a *.test.ts.
//
//   bun test/bench/replicas.ts [--size 512M] [--runtime 5] [--rounds 2] [--json] [--bin PATH]
//
// Both volumes are striped over the three nodes; fio's nbd engine talks to node1, which owns a
// third of the primaries (the rest it forwards, as a client of any node sees). Two jobs, one
// connection, iodepth 16: 4 KiB random writes for --runtime s and 1 MiB sequential writes over
// --size. Each write on the two-copy volume crosses one more link and is applied twice, all on
// the same two CPUs as fio, so the CPU per write (the three nodes' utime+stime over the job over
// fio's count) says where the ratio comes from. Target (issue 18): two copies >= 0.5x one copy.
import { lowerMedian, runFioGroupBench, type FioBenchOptions } from "./_fio-group-bench.ts";
import { fioSpecOf, JOBS, type Job } from "./_fio-jobs.ts";
import { runFio } from "./_fio.ts";
import type { Resources } from "./_bench-processes.ts";
import { loadAverage, printReport, processCpuMs, progress, syncDisks, table } from "./_bench.ts";
import { run, shoalCommand, type TestNode, waitFor } from "../integration/_cluster.ts";

const MiB = 1024 * 1024;
const TARGET_RATIO = 0.5;
const FIO_IODEPTH = 16;
const WRITE_JOBS = JOBS.filter((job) => job.key === "randWrite" || job.key === "seqWrite");
const COPIES = [1, 2] as const;

type Copies = (typeof COPIES)[number];

interface Measure {
  mbPerSecond: number;
  iops: number;
  requests: number;
  /** All three nodes' CPU per write, µs. */
  nodesCpuUsPerWrite: number;
  fioCpuUsPerWrite: number;
  load: number;
}

const USAGE = `usage: bun test/bench/replicas.ts [--size 512M] [--runtime 5] [--rounds 2] [--json] [--bin PATH]
fio 4 KiB random and 1 MiB sequential writes on a two-copy volume against a one-copy volume, same
three-node group, interleaved; the nodes' CPU per write. Target: two copies >= ${TARGET_RATIO}x one copy.`;

/** Names each fio run's output file apart. */
let fioRuns = 0;

async function measure(resources: Resources, job: Job, nodes: TestNode[], copies: Copies, options: FioBenchOptions): Promise<Measure> {
  await syncDisks();
  const load = loadAverage();
  const nodesCpuMs = () => nodes.reduce((sum, node) => sum + processCpuMs(node.proc!.pid), 0);
  const before = nodesCpuMs();
  const uri = nodes[0]!.nbdUrl(volumeName(copies));
  const result = await runFio(resources, fioSpecOf(job, { name: `${job.key}-${copies}-${++fioRuns}`, uri, iodepth: FIO_IODEPTH, sizeBytes: options.sizeBytes, runtimeSeconds: options.runtimeSeconds, endFsync: false }));
  const requests = Math.max(result.requests, 1);
  return {
    mbPerSecond: result.mbPerSecond,
    iops: result.iops,
    requests: result.requests,
    nodesCpuUsPerWrite: ((nodesCpuMs() - before) * 1000) / requests,
    fioCpuUsPerWrite: result.fioCpuUs / requests,
    load,
  };
}

function volumeName(copies: Copies): string {
  return `copies${copies}`;
}

type Rounds = Record<string, Record<Copies, Measure[]>>;

function render(rounds: Rounds, options: FioBenchOptions, revision: string): string {
  const rows = WRITE_JOBS.map((job) => {
    const cells = rounds[job.key]!;
    const ratios = cells[1].map((one, index) => cells[2][index]!.mbPerSecond / one.mbPerSecond);
    const ratio = lowerMedian(ratios);
    return [
      job.label,
      lowerMedian(cells[1].map((cell) => cell.mbPerSecond)).toFixed(1),
      lowerMedian(cells[2].map((cell) => cell.mbPerSecond)).toFixed(1),
      ratios.map((value) => value.toFixed(2)).join(", "),
      `${ratio.toFixed(2)} ${ratio >= TARGET_RATIO ? "met" : "NOT met"}`,
      lowerMedian(cells[1].map((cell) => cell.nodesCpuUsPerWrite)).toFixed(0),
      lowerMedian(cells[2].map((cell) => cell.nodesCpuUsPerWrite)).toFixed(0),
      lowerMedian([...cells[1], ...cells[2]].map((cell) => cell.fioCpuUsPerWrite)).toFixed(0),
      [...cells[1], ...cells[2]].map((cell) => cell.load.toFixed(1)).join("/"),
    ];
  });
  const header = ["job", "1 copy MB/s", "2 copies MB/s", "ratio per round", `ratio (>= ${TARGET_RATIO})`, "1 copy: nodes µs/write", "2 copies: nodes µs/write", "fio µs/write", "load"];
  return [
    `Two copies vs one, ${options.sizeBytes / MiB} MiB volumes striped over three nodes, fio nbd iodepth ${FIO_IODEPTH} to node1, ${options.rounds} interleaved rounds, revision ${revision}`,
    table(header, rows),
  ].join("\n");
}

async function main(): Promise<void> {
  await runFioGroupBench(USAGE, { size: "512M", runtime: "5", rounds: "2" }, async ({ resources, nodes, options, revision }) => {
    for (const copies of COPIES) {
      const create = [...shoalCommand(), "volume", "create", volumeName(copies), "--size", `${options.sizeBytes / MiB}M`, "--replicas", String(copies), "--node", nodes[0]!.meshAddress];
      const created = await run(create, { timeoutMs: 60_000 });
      if (created.exitCode !== 0) throw new Error(`volume create failed: ${created.stderr}`);
      await waitFor(`node1 to serve ${volumeName(copies)}`, async () => (await run(["nbdinfo", "--size", nodes[0]!.nbdUrl(volumeName(copies))], { timeoutMs: 5000 })).exitCode === 0);
    }
    const rounds: Rounds = Object.fromEntries(WRITE_JOBS.map((job) => [job.key, { 1: [], 2: [] }]));
    for (let round = 1; round <= options.rounds; round++) {
      for (const job of WRITE_JOBS) {
        for (const copies of COPIES) {
          const cell = await measure(resources, job, nodes, copies, options);
          rounds[job.key]![copies].push(cell);
          progress(
            `round ${round} ${job.label.padEnd(14)} ${copies} cop${copies === 1 ? "y  " : "ies"} ${cell.mbPerSecond.toFixed(1).padStart(8)} MB/s ${Math.round(cell.iops).toString().padStart(7)} IOPS ` +
              `nodes ${cell.nodesCpuUsPerWrite.toFixed(0)} µs/write fio ${cell.fioCpuUsPerWrite.toFixed(0)} µs/write load ${cell.load}`,
          );
        }
      }
    }
    printReport(render(rounds, options, revision), options.json, () => ({ revision, options, rounds }));
  });
}

await main();
