// The four fio jobs the data-path benchmarks run against every target (datapath.ts, forwarding.ts).
import type { FioSpec } from "./_fio.ts";

/** A size-bound job (sequential) stops at this bound if it has not covered its size by then. */
export const SEQUENTIAL_RUNTIME_SECONDS_MAX = 120;

export interface Job {
  key: "seqWrite" | "seqRead" | "randWrite" | "randRead";
  label: string;
  rw: string;
  blockSize: string;
  timeBased: boolean;
}

/** Writes before reads, so every read hits written data. */
export const JOBS: Job[] = [
  { key: "seqWrite", label: "seq write 1M", rw: "write", blockSize: "1M", timeBased: false },
  { key: "seqRead", label: "seq read 1M", rw: "read", blockSize: "1M", timeBased: false },
  { key: "randWrite", label: "rand write 4K", rw: "randwrite", blockSize: "4k", timeBased: true },
  { key: "randRead", label: "rand read 4K", rw: "randread", blockSize: "4k", timeBased: true },
];

/** The fio run of `job` against `uri`: time-based jobs for `runtimeSeconds`, the others over the whole size. */
export function fioSpecOf(job: Job, run: { name: string; uri: string; iodepth: number; sizeBytes: number; runtimeSeconds: number; endFsync: boolean }): FioSpec {
  return {
    name: run.name,
    uri: run.uri,
    rw: job.rw,
    blockSize: job.blockSize,
    iodepth: run.iodepth,
    sizeBytes: run.sizeBytes,
    runtimeSeconds: job.timeBased ? run.runtimeSeconds : SEQUENTIAL_RUNTIME_SECONDS_MAX,
    timeBased: job.timeBased,
    endFsync: run.endFsync && job.rw.includes("write"),
  };
}
