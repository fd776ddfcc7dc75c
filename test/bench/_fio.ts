// One fio job over fio's nbd engine (one connection), its JSON report parsed into what the
// data-path benchmarks print.
import * as fs from "node:fs";
import * as path from "node:path";
import type { Resources } from "./_bench-processes.ts";

/** fio is killed if it outlives its own runtime bound by this much (a hung connection). */
const FIO_GRACE_MS = 60_000;

export interface FioSpec {
  /** Names the job and its output file; unique within a run. */
  name: string;
  uri: string;
  rw: string;
  blockSize: string;
  iodepth: number;
  sizeBytes: number;
  /** Time-based jobs loop over `sizeBytes` for exactly this long; others stop here at the latest. */
  runtimeSeconds: number;
  timeBased: boolean;
  /** fio's end_fsync: a FLUSH after the last write, inside the measured time. */
  endFsync: boolean;
}

export interface FioResult {
  mbPerSecond: number;
  iops: number;
  bytes: number;
  /** Requests completed (reads or writes, whichever the job did). */
  requests: number;
  runtimeMs: number;
  /** A size-bound job stopped by its runtime bound before covering the whole size. */
  capped: boolean;
  /** fio's own CPU (user + system) over the job, µs: the client shares the two CPUs with the nodes. */
  fioCpuUs: number;
}

export function fioArgs(spec: FioSpec, outputFile: string): string[] {
  const args = [
    "fio",
    `--name=${spec.name}`,
    "--ioengine=nbd",
    `--uri=${spec.uri}`,
    `--rw=${spec.rw}`,
    `--bs=${spec.blockSize}`,
    `--iodepth=${spec.iodepth}`,
    `--size=${spec.sizeBytes}`,
    "--numjobs=1",
    "--output-format=json",
    `--output=${outputFile}`,
    `--runtime=${spec.runtimeSeconds}`,
  ];
  if (spec.timeBased) args.push("--time_based");
  if (spec.endFsync) args.push("--end_fsync=1");
  return args;
}

export async function runFio(resources: Resources, spec: FioSpec): Promise<FioResult> {
  const outputFile = path.join(resources.root, `fio-${spec.name}.json`);
  const proc = resources.spawn(fioArgs(spec, outputFile));
  const timer = setTimeout(() => proc.kill("SIGKILL"), spec.runtimeSeconds * 1000 + FIO_GRACE_MS);
  const [stderr, exitCode] = await Promise.all([new Response(proc.stderr as ReadableStream).text(), proc.exited]);
  clearTimeout(timer);
  if (exitCode !== 0) throw new Error(`fio ${spec.name} on ${spec.uri} failed (exit ${exitCode}${proc.signalCode ? `, ${proc.signalCode}` : ""}): ${stderr}`);
  const fioCpuUs = Number(proc.resourceUsage()?.cpuTime.total ?? 0);
  return { ...parseFioOutput(fs.readFileSync(outputFile, "utf8"), spec), fioCpuUs };
}

function parseFioOutput(text: string, spec: FioSpec): Omit<FioResult, "fioCpuUs"> {
  const report = JSON.parse(text.slice(text.indexOf("{"))) as { jobs: FioJobReport[] };
  const jobReport = report.jobs[0]!;
  if (jobReport.error !== 0) throw new Error(`fio ${spec.name} reported error ${jobReport.error}`);
  const side = spec.rw.includes("write") ? jobReport.write : jobReport.read;
  return {
    mbPerSecond: side.bw_bytes / 1e6,
    iops: side.iops,
    bytes: side.io_bytes,
    requests: side.total_ios,
    runtimeMs: side.runtime,
    capped: !spec.timeBased && side.io_bytes < spec.sizeBytes,
  };
}

interface FioJobReport {
  error: number;
  read: FioSide;
  write: FioSide;
}

interface FioSide {
  bw_bytes: number;
  iops: number;
  io_bytes: number;
  total_ios: number;
  runtime: number;
}
