// The one-file-per-page store (core/store/old-format/page-store.ts, the anchor) against the extent-file store
// (core/store/), through the store API on one disk, in one run, old and new interleaved:
//   - 4 KiB random writes over a 1 TiB volume, then a snapshot's cut (freeze + flushLayers)
//     with those writes still unsynced, then a FLUSH; files and heap afterwards;
//   - 4 KiB random reads of the written blocks;
//   - 1 MiB sequential writes (then FLUSH) and reads over 1 GiB.
// No NBD, no network: what the store itself costs. The machine is shared; figures are noisy.
//   bun test/bench/store-v2.ts [--dir /path/on/the/disk] [--writes 8000] [--seq-mib 1024] [--rounds 2]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { PageStore as OldStore } from "../../core/store/old-format/page-store.ts";
import { PageStore as NewStore } from "../../core/store/page-store.ts";
import { progress, syncDisks, table } from "./_bench.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE_BYTES = 4 * MiB;
const BLOCK_BYTES = 4 * KiB;
const VOLUME_PAGES = (1024 * 1024 * MiB) / PAGE_BYTES; // 1 TiB

const { values } = parseArgs({ options: { dir: { type: "string" }, writes: { type: "string" }, "seq-mib": { type: "string" }, rounds: { type: "string" } } });
const WRITES = Number(values.writes ?? 8000);
const SEQ_MIB = Number(values["seq-mib"] ?? 1024);
const ROUNDS = Number(values.rounds ?? 2);
const root = fs.mkdtempSync(path.join(values.dir ?? os.tmpdir(), "shoal-store-v2-bench-"));

type Store = OldStore | NewStore;
interface Result {
  writeIops: number;
  cutMs: number;
  flushMs: number;
  files: number;
  heapMiB: number;
  readIops: number;
  seqWriteMBs: number;
  seqReadMBs: number;
}

function countFiles(dir: string): number {
  let count = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) count += entry.isDirectory() ? countFiles(path.join(dir, entry.name)) : 1;
  return count;
}

/** xorshift32 over the volume's 4 KiB blocks: every bit usable. */
function blocksOf(count: number, seed: number): number[] {
  const blocks: number[] = [];
  let x = seed;
  for (let index = 0; index < count; index++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const high = x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    blocks.push(((high % VOLUME_PAGES) * PAGE_BYTES) / BLOCK_BYTES + (x % (PAGE_BYTES / BLOCK_BYTES)));
  }
  return blocks;
}

async function measure(kind: "old" | "new", round: number): Promise<Result> {
  const dir = path.join(root, `${kind}-${round}`);
  fs.mkdirSync(dir);
  await syncDisks();
  const heapBefore = process.memoryUsage().heapUsed;
  const store: Store = kind === "old" ? new OldStore({ dir }) : new NewStore({ dir });
  const data = new Uint8Array(BLOCK_BYTES).fill(0x5a);
  const blocks = blocksOf(WRITES, 2463534242 + round);
  const blocksPerPage = PAGE_BYTES / BLOCK_BYTES;
  let started = performance.now();
  for (const block of blocks) {
    store.write("v", Math.floor(block / blocksPerPage), (block % blocksPerPage) * BLOCK_BYTES, data, PAGE_BYTES);
    // A writer that lets the event loop turn now and then, as a node serving NBD does.
    if (block % 64 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  const writeMs = performance.now() - started;
  started = performance.now();
  store.freezeLayer("v", "v@cut");
  await store.flushLayers(["v@cut"]);
  const cutMs = performance.now() - started;
  started = performance.now();
  await store.flush();
  const flushMs = performance.now() - started;
  const writeIops = WRITES / ((writeMs + cutMs + flushMs) / 1000);
  const files = countFiles(dir);
  const heapMiB = (process.memoryUsage().heapUsed - heapBefore) / MiB;
  const target = new Uint8Array(BLOCK_BYTES);
  started = performance.now();
  for (const block of blocks) store.read("v", Math.floor(block / blocksPerPage), (block % blocksPerPage) * BLOCK_BYTES, BLOCK_BYTES, target, 0);
  const readIops = WRITES / ((performance.now() - started) / 1000);
  // Sequential: a fresh volume, 1 MiB writes, then a FLUSH; then the reads.
  const big = new Uint8Array(MiB).fill(0x33);
  started = performance.now();
  for (let at = 0; at < SEQ_MIB; at++) {
    store.write("s", Math.floor(at / 4), (at % 4) * MiB, big, PAGE_BYTES);
    if (at % 16 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  await store.flush();
  const seqWriteMBs = (SEQ_MIB * MiB) / 1e6 / ((performance.now() - started) / 1000);
  started = performance.now();
  for (let at = 0; at < SEQ_MIB; at++) store.read("s", Math.floor(at / 4), (at % 4) * MiB, MiB, big, 0);
  const seqReadMBs = (SEQ_MIB * MiB) / 1e6 / ((performance.now() - started) / 1000);
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { writeIops, cutMs, flushMs, files, heapMiB, readIops, seqWriteMBs, seqReadMBs };
}

const results: Record<"old" | "new", Result[]> = { old: [], new: [] };
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const kind of round % 2 === 0 ? (["old", "new"] as const) : (["new", "old"] as const)) {
      progress(`round ${round + 1}/${ROUNDS}: ${kind} store`);
      results[kind].push(await measure(kind, round));
    }
  }
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}

const median = (numbers: number[]) => [...numbers].sort((a, b) => a - b)[Math.floor(numbers.length / 2)]!;
const rows: [string, keyof Result, number][] = [
  [`4K random write over 1 TiB, ${WRITES} writes + cut + FLUSH (IOPS)`, "writeIops", 0],
  ["  snapshot cut with those writes unsynced (ms)", "cutMs", 1],
  ["  FLUSH after the cut (ms)", "flushMs", 1],
  ["  files in the data dir after", "files", 0],
  ["  heap growth (MiB)", "heapMiB", 1],
  ["4K random read of the written blocks (IOPS)", "readIops", 0],
  [`1 MiB sequential write, ${SEQ_MIB} MiB + FLUSH (MB/s)`, "seqWriteMBs", 0],
  [`1 MiB sequential read, ${SEQ_MIB} MiB (MB/s)`, "seqReadMBs", 0],
];
console.log(`store API, one disk (${root}), median of ${ROUNDS} interleaved rounds; load average ${os.loadavg().map((load) => load.toFixed(1)).join(" ")}`);
console.log(
  table(
    ["measure", "old (anchor)", "new", "new/old"],
    rows.map(([label, key, digits]) => {
      const oldValue = median(results.old.map((result) => result[key]));
      const newValue = median(results.new.map((result) => result[key]));
      return [label, oldValue.toFixed(digits), newValue.toFixed(digits), `${(newValue / oldValue).toFixed(2)}x`];
    }),
  ),
);
