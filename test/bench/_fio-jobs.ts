// The four fio jobs the data-path benchmarks run against every target (datapath.ts, forwarding.ts).

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
