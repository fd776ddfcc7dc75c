// Copy-on-write costs of the layered PageStore, against the same store without layers as the
// anchor, in one run: 4 KiB random writes and reads right after a snapshot vs steady state,
// freezeLayer time for a head with 64 MiB vs 8 GiB written, and how long a layer deletion
// holds the event loop. Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/page-store-layers.ts [--dir /path/on/the/disk/to/measure]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { PageStore } from "../../core/store/page-store.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE_BYTES = 4 * MiB;
const BLOCK_BYTES = 4 * KiB;
const WRITE_PAGES = 16; // 64 MiB, written in full before the snapshot
const RANDOM_OPS = 8192;
const FREEZE_REPEATS = 7;

const { values } = parseArgs({ options: { dir: { type: "string" } } });
const root = fs.mkdtempSync(path.join(values.dir ?? os.tmpdir(), "shoal-layers-bench-"));

function percentiles(samplesNs: number[]): { p50: number; p90: number; p99: number; max: number; mean: number } {
  const sorted = [...samplesNs].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! / 1000;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1]! / 1000, mean: sorted.reduce((a, b) => a + b, 0) / sorted.length / 1000 };
}

function show(label: string, samplesNs: number[], anchorP50Us?: number): number {
  const p = percentiles(samplesNs);
  const ratio = anchorP50Us === undefined ? "" : `  p50 ratio ${(p.p50 / anchorP50Us).toFixed(2)}x`;
  console.log(
    `${label.padEnd(52)} n=${String(samplesNs.length).padStart(5)}  p50 ${p.p50.toFixed(1).padStart(6)} µs  p90 ${p.p90.toFixed(1).padStart(6)}  p99 ${p.p99.toFixed(1).padStart(7)}  max ${p.max.toFixed(0).padStart(6)}  mean ${p.mean.toFixed(1).padStart(6)}${ratio}`,
  );
  return p.p50;
}

/** xorshift32: unlike an LCG's low bits, every bit is usable for picking blocks. */
function xorshift(state: number): number {
  let x = state || 1;
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

function fill(seed: number, bytes: number): Uint8Array {
  const data = new Uint8Array(bytes);
  let state = seed;
  for (let index = 0; index < bytes; index += 4) {
    state = (state * 1103515245 + 12345) >>> 0;
    data[index] = state & 0xff;
    data[index + 1] = (state >>> 8) & 0xff;
  }
  return data;
}

/** Random aligned 4 KiB writes; also sorts each sample by whether it was a chunk's first write. */
function randomWrites(store: PageStore, layer: string, pages: number, count: number, seed: number): { all: number[]; firstInChunk: number[]; later: number[] } {
  const block = fill(seed, BLOCK_BYTES);
  const touched = new Set<number>();
  const all: number[] = [];
  const firstInChunk: number[] = [];
  const later: number[] = [];
  let state = seed;
  for (let index = 0; index < count; index++) {
    state = xorshift(state);
    const blockIndex = state % ((pages * PAGE_BYTES) / BLOCK_BYTES);
    const page = Math.floor((blockIndex * BLOCK_BYTES) / PAGE_BYTES);
    const offset = (blockIndex * BLOCK_BYTES) % PAGE_BYTES;
    const started = Bun.nanoseconds();
    store.write(layer, page, offset, block, PAGE_BYTES);
    const elapsed = Bun.nanoseconds() - started;
    all.push(elapsed);
    const chunk = Math.floor((blockIndex * BLOCK_BYTES) / (64 * KiB));
    if (touched.has(chunk)) later.push(elapsed);
    else {
      touched.add(chunk);
      firstInChunk.push(elapsed);
    }
  }
  return { all, firstInChunk, later };
}

function randomReads(store: PageStore, layer: string, pages: number, count: number, seed: number): number[] {
  const target = new Uint8Array(BLOCK_BYTES);
  const samples: number[] = [];
  let state = seed;
  for (let index = 0; index < count; index++) {
    state = xorshift(state);
    const blockIndex = state % ((pages * PAGE_BYTES) / BLOCK_BYTES);
    const started = Bun.nanoseconds();
    store.read(layer, Math.floor((blockIndex * BLOCK_BYTES) / PAGE_BYTES), (blockIndex * BLOCK_BYTES) % PAGE_BYTES, BLOCK_BYTES, target, 0);
    samples.push(Bun.nanoseconds() - started);
  }
  return samples;
}

async function writeLatency(): Promise<void> {
  console.log(`\n4 KiB random writes over ${WRITE_PAGES} pages of 4 MiB (64 MiB, all written before), 64 KiB chunks`);
  const store = new PageStore({ dir: path.join(root, "latency") });
  const page = fill(1, PAGE_BYTES);
  for (let index = 0; index < WRITE_PAGES; index++) store.write("v", index, 0, page, PAGE_BYTES);
  await store.flush();
  randomWrites(store, "v", WRITE_PAGES, RANDOM_OPS, 99); // warm up the JIT; dirty the page cache like the runs below
  const steady = randomWrites(store, "v", WRITE_PAGES, RANDOM_OPS, 2);
  const anchor = show("steady state, no snapshot (anchor)", steady.all);
  const readAnchor = show("reads, steady state, no snapshot (anchor)", randomReads(store, "v", WRITE_PAGES, RANDOM_OPS, 3));
  await store.flush();

  store.freezeLayer("v", "v@s1");
  const after = randomWrites(store, "v", WRITE_PAGES, RANDOM_OPS, 4);
  show("right after freezeLayer: all writes", after.all, anchor);
  show("  of which a chunk's first write (64 KiB copy)", after.firstInChunk, anchor);
  show("  of which later writes to a copied chunk", after.later, anchor);
  show("reads of the head right after (mixed chunks)", randomReads(store, "v", WRITE_PAGES, RANDOM_OPS, 5), readAnchor);
  await store.flush();
  const layered = randomWrites(store, "v", WRITE_PAGES, RANDOM_OPS, 6);
  show("layered head, chunks already its own", layered.later, anchor);

  // One page only: the first write to the page after the snapshot creates its file.
  store.freezeLayer("v", "v@s2");
  const onePage = randomWrites(store, "v", 1, 1024, 7);
  show("one page right after freezeLayer: 1024 writes", onePage.all, anchor);
  await store.flush();
  // The anchor again, on a fresh base layer in the same state (written, flushed, then warm).
  for (let index = 0; index < WRITE_PAGES; index++) store.write("w", index, 0, page, PAGE_BYTES);
  await store.flush();
  randomWrites(store, "w", WRITE_PAGES, RANDOM_OPS, 8);
  show("steady state, no snapshot, again (anchor 2)", randomWrites(store, "w", WRITE_PAGES, RANDOM_OPS, 9).all);
  store.close();
}

async function freezeTime(): Promise<void> {
  console.log("\nfreezeLayer time, head with one 4 KiB block written per 4 MiB page (sparse); anchor: an empty head");
  const store = new PageStore({ dir: path.join(root, "freeze") });
  const block = fill(8, BLOCK_BYTES);
  const results = new Map<string, number[]>();
  const record = (label: string, us: number) => {
    let list = results.get(label);
    if (!list) results.set(label, (list = []));
    list.push(us);
  };
  const timeFreeze = (head: string): number => {
    const started = Bun.nanoseconds();
    store.freezeLayer(head, `${head}@snap`);
    return (Bun.nanoseconds() - started) / 1000;
  };
  for (let repeat = 0; repeat < FREEZE_REPEATS; repeat++) {
    for (const [label, bytes] of [
      ["64 MiB written", 64 * MiB],
      ["8 GiB written", 8 * 1024 * MiB],
    ] as const) {
      const volume = `vol-${bytes}-${repeat}`;
      for (let page = 0; page < bytes / PAGE_BYTES; page++) store.write(volume, page, 0, block, PAGE_BYTES);
      await store.flush();
      timeFreeze(`warm-${bytes}-${repeat}`); // the first call after an await runs cold; not counted
      record(label, timeFreeze(volume));
      record("empty head (anchor)", timeFreeze(`empty-${bytes}-${repeat}`));
      await store.flush();
    }
  }
  const median = (list: number[]) => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)]!;
  const anchor = median(results.get("empty head (anchor)")!);
  for (const [label, us] of results) {
    console.log(`${label.padEnd(20)} median ${median(us).toFixed(1).padStart(6)} µs  min ${Math.min(...us).toFixed(1).padStart(6)} µs  ratio to anchor ${(median(us) / anchor).toFixed(2)}x  (n=${us.length})`);
  }
  store.close();
}

async function deletionStall(): Promise<void> {
  console.log("\ndeleteLayer of a 64 MiB snapshot whose head and a clone both wrote into every page (copies, not renames)");
  const store = new PageStore({ dir: path.join(root, "delete") });
  const page = fill(9, PAGE_BYTES);
  for (let index = 0; index < WRITE_PAGES; index++) store.write("v", index, 0, page, PAGE_BYTES);
  store.freezeLayer("v", "v@s1");
  store.createLayer("clone", "v@s1");
  const block = fill(10, BLOCK_BYTES);
  for (let index = 0; index < WRITE_PAGES; index++) {
    store.write("v", index, 0, block, PAGE_BYTES);
    store.write("clone", index, PAGE_BYTES - BLOCK_BYTES, block, PAGE_BYTES);
  }
  await store.flush();
  const startedNs = Bun.nanoseconds();
  const during = await eventLoopTurns(store.deleteLayer("v@s1"));
  const elapsedMs = (Bun.nanoseconds() - startedNs) / 1e6;
  // The anchor: the same probe for as long, with nothing else running (this machine's noise).
  const idle = await eventLoopTurns(new Promise((resolve) => setTimeout(resolve, elapsedMs)));
  console.log(`deleted in ${elapsedMs.toFixed(0)} ms`);
  for (const [label, turns] of [
    ["event-loop turns during the deletion", during],
    ["event-loop turns idle, as long (anchor)", idle],
  ] as const) {
    const sorted = [...turns].sort((a, b) => a - b);
    const over = turns.filter((ns) => ns > 1e6).length;
    console.log(
      `${label.padEnd(42)} n=${turns.length}  p99 ${(sorted[Math.floor(0.99 * sorted.length)]! / 1e3).toFixed(0)} µs  p99.9 ${(sorted[Math.floor(0.999 * sorted.length)]! / 1e3).toFixed(0)} µs  max ${(sorted[sorted.length - 1]! / 1e6).toFixed(2)} ms  over 1 ms: ${over}`,
    );
  }
  store.close();
}

/** Lengths of event-loop turns (gaps between setImmediate callbacks) until `work` settles. */
async function eventLoopTurns(work: Promise<unknown>): Promise<number[]> {
  const turns: number[] = [];
  let last = Bun.nanoseconds();
  let done = false;
  const probe = () => {
    const now = Bun.nanoseconds();
    turns.push(now - last);
    last = now;
    if (!done) setImmediate(probe);
  };
  setImmediate(probe);
  await work;
  done = true;
  return turns;
}

try {
  await writeLatency();
  await freezeTime();
  await deletionStall();
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
