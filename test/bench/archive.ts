// Snapshot archive throughput, in memory: the writer over 1 GiB of 4 MiB pages, and the reader
// over its output fed back as the writer's chunks and as 10 KiB records (a tape's reads), with a
// new buffer a page and with page buffers released for reuse, against the anchor that bounds them, SHA-256 of the same
// bytes once, measured in the same run. Writer alone ~1x the anchor; writer + reader hash every
// byte twice, so ~0.5x is the ceiling.
// Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/archive.ts [--gib N]
import { createHash } from "node:crypto";
import { parseArgs } from "node:util";
import { ArchiveReader, ArchiveWriter, DEFAULT_RECORD_SIZE_BYTES, recordsOf } from "../../core/archive/index.ts";

const MiB = 1024 * 1024;
const PAGE_BYTES = 4 * MiB;
const { values } = parseArgs({ options: { gib: { type: "string", default: "1" } } });
const PAGES = Math.round(Number(values.gib) * 256);
const TOTAL_BYTES = PAGES * PAGE_BYTES;

// Distinct pages (a page number stamped into a random buffer) so no digest is a repeat.
const base = new Uint8Array(PAGE_BYTES);
crypto.getRandomValues(base.subarray(0, 65536));
for (let at = 65536; at < PAGE_BYTES; at += 65536) base.copyWithin(at, 0, 65536);
function pageData(page: number): Uint8Array {
  new DataView(base.buffer).setUint32(0, page + 1);
  return base;
}

function timed(label: string, run: () => number, anchorMBps?: number): number {
  run(); // warm-up: JIT and allocator
  const started = performance.now();
  const bytes = run();
  const seconds = (performance.now() - started) / 1000;
  const mbps = bytes / 1e6 / seconds;
  const ratio = anchorMBps === undefined ? "" : `  ratio ${(mbps / anchorMBps).toFixed(2)}x`;
  console.log(`${label.padEnd(56)} ${(bytes / MiB).toFixed(0).padStart(6)} MiB  ${seconds.toFixed(2).padStart(6)} s  ${mbps.toFixed(0).padStart(6)} MB/s${ratio}`);
  return mbps;
}

function spec() {
  return {
    volume: "bench",
    volumeUid: "bench-uid",
    sizeBytes: TOTAL_BYTES,
    pageSizeBytes: PAGE_BYTES,
    snapshot: { name: "s1", id: "snap-1", cutAtMs: 1 },
    base: null,
    pages: Array.from({ length: PAGES }, (_, page) => page),
    createdAtMs: 1000,
    recordSizeBytes: DEFAULT_RECORD_SIZE_BYTES,
  };
}

/** Writes the archive; hands each chunk to `sink` (which must use it before the next page). */
function writeArchive(sink: (chunk: Uint8Array) => void): number {
  const writer = new ArchiveWriter(spec());
  let bytes = 0;
  const take = (chunks: Uint8Array[]) => {
    for (const chunk of chunks) {
      bytes += chunk.byteLength;
      sink(chunk);
    }
  };
  take(writer.start());
  for (let page = 0; page < PAGES; page++) take(writer.page(page, pageData(page)));
  take(writer.finish());
  return bytes;
}

console.log(`archive of ${PAGES} pages of 4 MiB (${(TOTAL_BYTES / MiB).toFixed(0)} MiB), records of ${DEFAULT_RECORD_SIZE_BYTES} bytes`);
const anchor = timed("anchor: SHA-256 of the page bytes, once", () => {
  const hash = createHash("sha256");
  for (let page = 0; page < PAGES; page++) hash.update(pageData(page));
  hash.digest();
  return TOTAL_BYTES;
});
timed("writer alone", () => writeArchive(() => {}), anchor);
/** Reads the archive as it is written; releases each page's buffer once done with it, or not. */
function readWhileWriting(recordChunks: boolean, release: boolean): number {
  const reader = new ArchiveReader();
  const push = (chunk: Uint8Array) => {
    for (const event of reader.push(chunk)) if (release && event.kind === "page") reader.release(event.data);
  };
  const bytes = writeArchive((chunk) => {
    if (!recordChunks) return push(chunk);
    for (const record of recordsOf(chunk, DEFAULT_RECORD_SIZE_BYTES)) push(record);
  });
  if (reader.end()[0]?.kind !== "end") throw new Error("archive did not verify");
  return bytes;
}

for (const release of [false, true]) {
  const buffers = release ? "buffers released" : "a new buffer a page";
  timed(`writer + reader, writer's chunks, ${buffers}`, () => readWhileWriting(false, release), anchor);
  timed(`writer + reader, 10 KiB records, ${buffers}`, () => readWhileWriting(true, release), anchor);
}
