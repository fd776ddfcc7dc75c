import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  ArchiveReader,
  ArchiveWriter,
  RecordBlocker,
  verifyArchive,
  type ArchiveEvent,
  type ArchiveManifest,
  type ArchiveSpec,
  type PageRange,
} from "../../core/archive/index.ts";
import { encodeTarHeader } from "../../core/archive/_tar-header.ts";
import { ShoalError } from "../../core/errors.ts";

const PAGE_BYTES = 64 * 1024; // the smallest page size: small archives, every code path
const LAST_PAGE_BYTES = 8192;
const VOLUME_BYTES = 12 * PAGE_BYTES + LAST_PAGE_BYTES; // 13 pages, the last one partial
const CREATED_AT_MS = 1_700_000_123_456;

/** xorshift32: a seeded stream of numbers for chunk sizes and offsets. */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
}

function pageData(page: number, sizeBytes = PAGE_BYTES): Uint8Array {
  const next = random(page + 7);
  const data = new Uint8Array(sizeBytes);
  for (let at = 0; at < sizeBytes; at += 4) new DataView(data.buffer).setUint32(at, next());
  return data;
}

function spec(overrides: Partial<ArchiveSpec> = {}): ArchiveSpec {
  return {
    volume: "db1",
    volumeUid: "vol-uid-1",
    sizeBytes: VOLUME_BYTES,
    pageSizeBytes: PAGE_BYTES,
    snapshot: { name: "nightly", id: "snap-id-9", cutAtMs: CREATED_AT_MS - 5000 },
    base: null,
    pages: [0, 1, 2, 3, 5, 8, 9, 12],
    createdAtMs: CREATED_AT_MS,
    ...overrides,
  };
}

/** Page contents by page number; "zero" pages are handed in with zero(), all-zero data with page(). */
type Contents = Map<number, Uint8Array | "zero">;

function contentsFor(pages: readonly number[]): Contents {
  const contents: Contents = new Map();
  for (const page of pages) contents.set(page, pageData(page, page === 12 ? LAST_PAGE_BYTES : PAGE_BYTES));
  return contents;
}

function writeArchive(archiveSpec: ArchiveSpec, contents: Contents): { writer: ArchiveWriter; chunks: Uint8Array[]; bytes: Uint8Array } {
  const writer = new ArchiveWriter(archiveSpec);
  const chunks = [...writer.start()];
  for (const page of archiveSpec.pages) {
    const data = contents.get(page)!;
    if (data === "zero") writer.zero(page);
    else chunks.push(...writer.page(page, data));
  }
  chunks.push(...writer.finish());
  return { writer, chunks, bytes: concat(chunks) };
}

/** The archive the round-trip tests use: page 2 is all zeros (found by the writer), page 5 is reported zero. */
function sampleArchive(overrides: Partial<ArchiveSpec> = {}) {
  const archiveSpec = spec(overrides);
  const contents = contentsFor(archiveSpec.pages);
  if (contents.has(2)) contents.set(2, new Uint8Array(PAGE_BYTES));
  if (contents.has(5)) contents.set(5, "zero");
  return { archiveSpec, contents, ...writeArchive(archiveSpec, contents) };
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0));
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return bytes;
}

interface ReadBack {
  manifest?: ArchiveManifest;
  pages: Map<number, Uint8Array>;
  zeros: PageRange[];
  ended: boolean;
  /** Distinct buffers page data came in. */
  buffers: Set<ArrayBuffer>;
}

/**
 * Feeds chunks to a reader. Page data is kept as it comes and compared after the whole stream was
 * read, which proves that each page event owns its data; or copied and released at once, so
 * that the reader gathers later pages into the same few buffers.
 */
function readArchive(chunks: Iterable<Uint8Array>, release = false): ReadBack {
  const reader = new ArchiveReader();
  const result: ReadBack = { pages: new Map(), zeros: [], ended: false, buffers: new Set() };
  const take = (events: ArchiveEvent[]) => {
    for (const event of events) {
      if (event.kind === "manifest") {
        result.manifest = event.manifest;
      } else if (event.kind === "page") {
        result.pages.set(event.page, release ? new Uint8Array(event.data) : event.data);
        result.buffers.add(event.data.buffer as ArrayBuffer);
        if (release) reader.release(event.data);
      } else if (event.kind === "zero") {
        result.zeros.push([event.firstPage, event.pageCount]);
      } else {
        result.ended = true;
      }
    }
  };
  for (const chunk of chunks) take(reader.push(chunk));
  take(reader.end());
  return result;
}

function* pieces(bytes: Uint8Array, sizeOf: () => number): Generator<Uint8Array> {
  for (let at = 0; at < bytes.byteLength; ) {
    const size = Math.max(1, sizeOf());
    yield bytes.subarray(at, at + size);
    at += size;
  }
}

/** A tar entry as shoal writes it, for building archives the writer would never produce. */
function tarEntry(name: string, data: Uint8Array, mtimeSeconds = Math.floor(CREATED_AT_MS / 1000)): Uint8Array {
  const padding = new Uint8Array((512 - (data.byteLength % 512)) % 512);
  return concat([encodeTarHeader({ name, sizeBytes: data.byteLength, mtimeSeconds }), data, padding]);
}

/** The entries of a shoal archive as [offset, length] of header + data + padding, by name. */
function entriesOf(bytes: Uint8Array): { name: string; offsetBytes: number; lengthBytes: number }[] {
  const entries = [];
  for (let at = 0; at + 512 <= bytes.byteLength; ) {
    const block = bytes.subarray(at, at + 512);
    if (block.every((byte) => byte === 0)) break;
    const name = new TextDecoder().decode(block.subarray(0, 100)).replace(/\0.*$/s, "");
    const sizeBytes = parseInt(new TextDecoder().decode(block.subarray(124, 135)), 8);
    const lengthBytes = 512 + Math.ceil(sizeBytes / 512) * 512;
    entries.push({ name, offsetBytes: at, lengthBytes });
    at += lengthBytes;
  }
  return entries;
}

/** Entries followed by tar's end blocks and zeros up to a whole record. */
function withEnd(body: Uint8Array, recordSizeBytes = 10240): Uint8Array {
  const total = Math.ceil((body.byteLength + 1024) / recordSizeBytes) * recordSizeBytes;
  const bytes = new Uint8Array(total);
  bytes.set(body);
  return bytes;
}

function archiveErrorOf(chunks: Iterable<Uint8Array>): ShoalError {
  const verdict = verifyArchive(chunks);
  if (verdict.error === undefined) throw new Error("the archive was accepted");
  expect(verdict.error.code).toBe("BAD_ARCHIVE");
  return verdict.error;
}

describe("snapshot archive: round trip", () => {
  for (const release of [false, true]) {
    const buffers = release ? "page buffers released and reused" : "page data owned by each event";
    test(`pages, zero pages and the manifest come back as written, however the stream is cut into chunks (${buffers})`, () => {
      const { writer, chunks, bytes, contents } = sampleArchive();
      const seeded = random(42);
      const chunkings: [string, () => Iterable<Uint8Array>][] = [
        ["the writer's chunks", () => chunks],
        ["one chunk", () => [bytes]],
        ["10 KiB records", () => pieces(bytes, () => 10240)],
        ["random sizes", () => pieces(bytes, () => seeded() % 70_000)],
        ["single bytes", () => pieces(bytes, () => 1)],
      ];
      for (const [label, input] of chunkings) {
        const back = readArchive(input(), release);
        expect({ label, ended: back.ended }).toEqual({ label, ended: true });
        expect(back.manifest).toEqual(writer.manifest);
        expect([...back.pages.keys()]).toEqual([0, 1, 3, 8, 9, 12]);
        for (const [page, data] of back.pages) expect({ label, page, same: Buffer.compare(data, contents.get(page) as Uint8Array) === 0 }).toEqual({ label, page, same: true });
        expect(back.zeros).toEqual([
          [2, 1],
          [5, 1],
        ]);
        // Pages that straddle chunks are gathered: into two buffers in turn when released.
        if (release && label !== "one chunk") expect(back.buffers.size).toBeLessThanOrEqual(3);
      }
    });
  }

  test("the end event carries the trailer: page digests, zero pages, stream digest", () => {
    const { bytes } = sampleArchive();
    const verdict = verifyArchive([bytes]);
    expect(verdict.error).toBeUndefined();
    expect(verdict.pageEntries).toBe(6);
    expect(verdict.zeroPages).toBe(2);
    const trailer = verdict.trailer!;
    expect(trailer.pageEntries).toBe(6);
    expect(trailer.zeroPages).toEqual([
      [2, 1],
      [5, 1],
    ]);
    expect(trailer.pageSha256[0]).toBe(new Bun.CryptoHasher("sha256").update(pageData(0)).digest("hex"));
    const trailerEntry = entriesOf(bytes).find((entry) => entry.name === "shoal-archive/trailer.json")!;
    expect(trailer.streamBytes).toBe(trailerEntry.offsetBytes);
    expect(trailer.streamSha256).toMatch(/^[0-9a-f]{64}$/);
  });

  test("candidates that all turn out zero leave only manifest and trailer; no candidates at all is an archive too", () => {
    const allZero = spec({ pages: [4, 5, 6] });
    const contents: Contents = new Map<number, Uint8Array | "zero">([
      [4, "zero"],
      [5, new Uint8Array(PAGE_BYTES)],
      [6, "zero"],
    ]);
    const back = readArchive([writeArchive(allZero, contents).bytes]);
    expect(back.pages.size).toBe(0);
    expect(back.zeros).toEqual([[4, 3]]);
    const empty = readArchive([writeArchive(spec({ pages: [] }), new Map()).bytes]);
    expect(empty.ended).toBe(true);
    expect(empty.manifest!.pages).toEqual([]);
  });

  test("an incremental archive names its snapshot, its base and how unlisted pages read", () => {
    const base = { name: "weekly", id: "snap-id-3" };
    const { bytes } = sampleArchive({ base, pages: [1, 2, 3, 5, 6, 7, 12], recordSizeBytes: 4096 });
    const manifestEntry = entriesOf(bytes)[0]!;
    expect(manifestEntry.name).toBe("shoal-archive/manifest.json");
    const json = JSON.parse(new TextDecoder().decode(bytes.subarray(512, manifestEntry.offsetBytes + manifestEntry.lengthBytes)).replace(/\0+$/, ""));
    expect(json).toEqual({
      format: "shoal-archive",
      version: 1,
      volume: "db1",
      volumeUid: "vol-uid-1",
      sizeBytes: VOLUME_BYTES,
      pageSizeBytes: PAGE_BYTES,
      snapshot: { name: "nightly", id: "snap-id-9", cutAtMs: CREATED_AT_MS - 5000 },
      base,
      pages: [
        [1, 3],
        [5, 3],
        [12, 1],
      ],
      candidatePages: 7,
      omitted: "zero",
      unlisted: "base",
      createdAtMs: CREATED_AT_MS,
      recordSizeBytes: 4096,
    });
    expect(readArchive([bytes]).manifest).toEqual(json);
    const full = readArchive([sampleArchive().bytes]).manifest!;
    expect([full.base, full.unlisted, full.recordSizeBytes]).toEqual([null, "zero", 10240]);
  });

  test("a cut time read to a fraction of a millisecond is written in whole milliseconds, as readers expect", () => {
    const cutAtMs = CREATED_AT_MS - 5000 + 0.731;
    const { bytes } = sampleArchive({ snapshot: { name: "nightly", id: "snap-id-9", cutAtMs } });
    expect(readArchive([bytes]).manifest!.snapshot.cutAtMs).toBe(CREATED_AT_MS - 5000);
  });
});

describe("snapshot archive: records", () => {
  test("every chunk the writer returns is whole records, and page data passes through uncopied", () => {
    for (const recordSizeBytes of [512, 4096, 10240, 65536, 1024 * 1024]) {
      const { chunks, bytes, contents } = sampleArchive({ recordSizeBytes });
      for (const chunk of chunks) {
        expect(chunk.byteLength).toBeGreaterThan(0);
        expect(chunk.byteLength % recordSizeBytes).toBe(0);
      }
      expect(bytes.byteLength % recordSizeBytes).toBe(0);
      expect(bytes.subarray(bytes.byteLength - 1024).every((byte) => byte === 0)).toBe(true);
      const pageBuffers = new Set([...contents.values()].filter((data) => data !== "zero").map((data) => (data as Uint8Array).buffer));
      const viewed = chunks.filter((chunk) => pageBuffers.has(chunk.buffer as ArrayBuffer)).length;
      if (recordSizeBytes <= PAGE_BYTES / 2) expect(viewed).toBeGreaterThan(0);
      expect(verifyArchive(chunks).error).toBeUndefined();
    }
  });

  test("a page handed in as pieces (views of received chunks) makes the same archive, its pieces passed on uncopied", () => {
    const { archiveSpec, contents, bytes: whole } = sampleArchive();
    const next = random(21);
    const writer = new ArchiveWriter(archiveSpec);
    const chunks = [...writer.start()];
    const pieceBuffers = new Set<ArrayBufferLike>();
    for (const page of archiveSpec.pages) {
      const data = contents.get(page)!;
      if (data === "zero") {
        writer.zero(page);
        continue;
      }
      // Each piece in its own buffer, as a socket hands them over; empty pieces are allowed.
      const split = [...pieces(data, () => next() % 20_000), new Uint8Array(0)].map((piece) => piece.slice());
      for (const piece of split) pieceBuffers.add(piece.buffer);
      chunks.push(...writer.page(page, split));
    }
    chunks.push(...writer.finish());
    expect(Buffer.compare(concat(chunks), whole)).toBe(0);
    expect(chunks.some((chunk) => pieceBuffers.has(chunk.buffer))).toBe(true);
    expect(verifyArchive(chunks).error).toBeUndefined();
    // The same size check as for one buffer: pieces adding up to too few bytes are a programmer error.
    const short = new ArchiveWriter(archiveSpec);
    short.start();
    expect(() => short.page(0, [pageData(0).subarray(0, 1000)])).toThrow(ShoalError);
  });

  test("the record blocker turns any chunks into whole records; only flush pads, with zeros", () => {
    const next = random(9);
    const input = pageData(1, 300_000);
    const blocker = new RecordBlocker(10240);
    const out: Uint8Array[] = [];
    for (const piece of pieces(input, () => next() % 30_000)) blocker.push(piece, out);
    expect(out.every((chunk) => chunk.byteLength % 10240 === 0)).toBe(true);
    expect(blocker.emittedBytes).toBe(Math.floor(300_000 / 10240) * 10240);
    blocker.flush(out);
    const bytes = concat(out);
    expect(bytes.byteLength).toBe(Math.ceil(300_000 / 10240) * 10240);
    expect(Buffer.compare(bytes.subarray(0, 300_000), input)).toBe(0);
    expect(bytes.subarray(300_000).every((byte) => byte === 0)).toBe(true);
  });
});

describe("snapshot archive: other tar programs", () => {
  const tools = [
    { tool: "tar", list: /^-rw-r--r-- 0\/0 +(\d+) [\d-]+ [\d:]+ (\S+)$/ },
    { tool: "bsdtar", list: /^-rw-r--r-- +0 0 +0 +(\d+) .* (\S+)$/ },
  ];
  for (const { tool, list } of tools) {
    test(`${tool} lists the entries and extracts every page byte for byte`, async () => {
      if (!Bun.which(tool)) throw new Error(`${tool} is not installed (Debian: ${tool === "bsdtar" ? "libarchive-tools" : "tar"}); npm test installs it`);
      const { bytes, contents, writer } = sampleArchive();
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), `shoal-archive-${tool}-`));
      try {
        const file = path.join(dir, "snap.tar");
        fs.writeFileSync(file, bytes);
        const listing = Bun.spawnSync([tool, "-tvf", file], { stdout: "pipe", stderr: "pipe" });
        expect(listing.stderr.toString()).toBe("");
        expect(listing.exitCode).toBe(0);
        const lines = listing.stdout.toString().trim().split("\n");
        const listed = lines.map((line) => list.exec(line)?.slice(1, 3));
        expect(listed).toEqual([
          [expect.any(String), "shoal-archive/manifest.json"],
          ...[0, 1, 3, 8, 9, 12].map((page) => [String(page === 12 ? LAST_PAGE_BYTES : PAGE_BYTES), `shoal-archive/pages/${String(page).padStart(10, "0")}`]),
          [expect.any(String), "shoal-archive/trailer.json"],
        ]);
        const target = path.join(dir, "out");
        fs.mkdirSync(target);
        const extract = Bun.spawnSync([tool, "-xf", file, "-C", target], { stdout: "pipe", stderr: "pipe" });
        expect(extract.stderr.toString()).toBe("");
        expect(extract.exitCode).toBe(0);
        for (const page of [0, 1, 3, 8, 9, 12]) {
          const extracted = fs.readFileSync(path.join(target, "shoal-archive/pages", String(page).padStart(10, "0")));
          expect(Buffer.compare(extracted, contents.get(page) as Uint8Array)).toBe(0);
        }
        expect(fs.readdirSync(path.join(target, "shoal-archive/pages")).length).toBe(6);
        expect(JSON.parse(fs.readFileSync(path.join(target, "shoal-archive/manifest.json"), "utf8"))).toEqual(writer.manifest);
        expect(JSON.parse(fs.readFileSync(path.join(target, "shoal-archive/trailer.json"), "utf8")).pageEntries).toBe(6);
        const mtimeMs = fs.statSync(path.join(target, "shoal-archive/trailer.json")).mtimeMs;
        expect(Math.floor(mtimeMs / 1000)).toBe(Math.floor(CREATED_AT_MS / 1000));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  test("GNU tar reads the stream from a pipe in 10 KiB records, as from a tape", () => {
    const { bytes } = sampleArchive();
    const listing = Bun.spawnSync(["tar", "-b", "20", "-tf", "-"], { stdin: bytes, stdout: "pipe", stderr: "pipe" });
    expect(listing.stderr.toString()).toBe("");
    expect(listing.stdout.toString().trim().split("\n").length).toBe(8);
  });
});

describe("snapshot archive: bad input is rejected, never accepted", () => {
  test("a stream cut short anywhere is truncated, naming the last good entry", () => {
    const { bytes } = sampleArchive();
    const next = random(3);
    const cuts = new Set<number>();
    for (let cut = 0; cut < bytes.byteLength; cut += 512) [cut, cut + 1, cut + 511].forEach((at) => cuts.add(at));
    for (let index = 0; index < 200; index++) cuts.add(next() % bytes.byteLength);
    cuts.add(bytes.byteLength - 1);
    for (const cut of cuts) {
      if (cut >= bytes.byteLength) continue;
      const error = archiveErrorOf([bytes.subarray(0, cut)]);
      expect(error.message).toMatch(/^the archive is truncated: it stops at offset \d+ .*(the last good entry is '|no entry before it was whole)/);
      expect(error.message).toContain(`offset ${cut}`);
    }
    const lastPage = archiveErrorOf([bytes.subarray(0, entriesOf(bytes).at(-1)!.offsetBytes + 512 + 100)]).message;
    expect(lastPage).toContain("inside entry 'shoal-archive/trailer.json'");
    expect(lastPage).toContain("the last good entry is 'shoal-archive/pages/0000000012'");
  });

  test("a flipped bit anywhere is rejected: headers, manifest, page data, trailer, end blocks, record padding", () => {
    const { bytes } = sampleArchive({ pages: [0, 2, 5, 12] });
    const dataBlocks = new Set<number>();
    for (const entry of entriesOf(bytes)) {
      if (!entry.name.includes("/pages/")) continue;
      for (let at = entry.offsetBytes + 512; at < entry.offsetBytes + entry.lengthBytes; at += 512) dataBlocks.add(at);
    }
    let checked = 0;
    const copy = new Uint8Array(bytes.byteLength);
    for (let at = 0; at < bytes.byteLength; at++) {
      // Every byte outside page data; page data every 37th byte (the same digest guards all of it).
      if (dataBlocks.has(at - (at % 512)) && at % 37 !== 0) continue;
      copy.set(bytes);
      copy[at]! ^= 1 << (at % 8);
      const verdict = verifyArchive([copy]);
      if (verdict.error?.code !== "BAD_ARCHIVE") throw new Error(`a flipped bit at offset ${at} was accepted`);
      checked++;
    }
    expect(checked).toBeGreaterThan(10_000);
  });

  test("a corrupt page names the page; a corrupt header names its offset", () => {
    const { bytes } = sampleArchive();
    const page3 = entriesOf(bytes).find((entry) => entry.name.endsWith("/0000000003"))!;
    const dataFlip = bytes.slice();
    dataFlip[page3.offsetBytes + 512 + 1000]! ^= 0x40;
    expect(archiveErrorOf([dataFlip]).message).toContain(`page 3 (entry at offset ${page3.offsetBytes}) does not match its SHA-256 in the trailer`);
    const headerFlip = bytes.slice();
    headerFlip[page3.offsetBytes + 3]! ^= 0x01;
    expect(archiveErrorOf([headerFlip]).message).toContain(`the tar header at offset ${page3.offsetBytes} is corrupt: its checksum`);
  });

  test("page entries out of order, repeated or not in the manifest are rejected at that entry", () => {
    const { bytes } = sampleArchive();
    const entries = entriesOf(bytes);
    const slice = (index: number) => bytes.subarray(entries[index]!.offsetBytes, entries[index]!.offsetBytes + entries[index]!.lengthBytes);
    const withOrder = (order: number[]) => withEnd(concat(order.map(slice)));
    // entries: 0 manifest, 1..6 pages 0 1 3 8 9 12, 7 trailer
    expect(archiveErrorOf([withOrder([0, 1, 3, 2, 4, 5, 6, 7])]).message).toMatch(/page entry 'shoal-archive\/pages\/0000000001' at offset \d+ is out of order: it follows page 3/);
    expect(archiveErrorOf([withOrder([0, 1, 2, 2, 3, 4, 5, 6, 7])]).message).toContain("is out of order: it follows page 1");
    expect(archiveErrorOf([withOrder([1, 0, 2, 3, 4, 5, 6, 7])]).message).toContain("not a shoal archive: its first entry is 'shoal-archive/pages/0000000000'");
    expect(archiveErrorOf([withOrder([0, 7, 1, 2, 3, 4, 5, 6])]).message).toContain("trailer");
    const stranger = tarEntry("shoal-archive/pages/0000000004", pageData(4));
    expect(archiveErrorOf([withEnd(concat([slice(0), slice(1), slice(2), stranger]))]).message).toMatch(/'shoal-archive\/pages\/0000000004' at offset \d+ is not a page the manifest lists/);
    const shortPage = tarEntry("shoal-archive/pages/0000000003", pageData(3, 4096));
    expect(archiveErrorOf([withEnd(concat([slice(0), slice(1), slice(2), shortPage]))]).message).toContain("is 4096 bytes; page 3 has 65536");
    const extra = tarEntry("shoal-archive/notes.txt", new Uint8Array(10));
    expect(archiveErrorOf([withEnd(concat([slice(0), extra]))]).message).toContain("unexpected entry 'shoal-archive/notes.txt'");
  });

  test("an archive that ends before its trailer is rejected, naming the last good entry", () => {
    const { bytes } = sampleArchive();
    const trailer = entriesOf(bytes).at(-1)!;
    const error = archiveErrorOf([withEnd(bytes.subarray(0, trailer.offsetBytes))]);
    expect(error.message).toBe(`tar's end-of-archive marker at offset ${trailer.offsetBytes} comes before the trailer; the last good entry is 'shoal-archive/pages/0000000012', ending at offset ${trailer.offsetBytes}`);
  });

  test("an archive from a newer shoal is refused by version, before anything else in it is judged", () => {
    const manifest = { format: "shoal-archive", version: 2, volume: "db1", somethingNew: { chunked: true } };
    const bytes = withEnd(tarEntry("shoal-archive/manifest.json", new TextEncoder().encode(JSON.stringify(manifest))));
    const error = archiveErrorOf([bytes]);
    expect(error.message).toContain("archive format version 2 is newer than this shoal (1)");
    expect(error.exitCode).toBe(6);
    expect(error.nbdErrno).toBe(5);
  });

  test("bytes after the end of the archive are refused", () => {
    const { bytes } = sampleArchive();
    expect(archiveErrorOf([bytes, new Uint8Array(10240)]).message).toBe(`10240 bytes follow the end of the archive at offset ${bytes.byteLength}`);
    expect(archiveErrorOf([bytes, new Uint8Array([0x78])]).message).toContain("follow the end of the archive");
    // A reader that failed stays failed.
    const reader = new ArchiveReader();
    reader.push(bytes);
    expect(() => reader.push(new Uint8Array(1))).toThrow(/follow the end/);
    expect(() => reader.end()).toThrow(/follow the end/);
  });

  test("a tar archive made by tar is not a shoal archive", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-archive-foreign-"));
    try {
      fs.writeFileSync(path.join(dir, "hello.txt"), "hello\n");
      const made = (format: string) => {
        const run = Bun.spawnSync(["tar", `--format=${format}`, "-cf", "-", "-C", dir, "hello.txt"], { stdout: "pipe", stderr: "pipe" });
        expect(run.exitCode).toBe(0);
        return new Uint8Array(run.stdout);
      };
      // GNU tar's own format has magic "ustar  "; its POSIX format has a pax header entry first.
      expect(archiveErrorOf([made("gnu")]).message).toMatch(/tar header at offset 0 is corrupt: it is not a POSIX ustar header .* \(is this a shoal archive\?\)/);
      expect(archiveErrorOf([made("posix")]).message).toMatch(/tar header at offset 0 is corrupt: its type is 'x'/);
      expect(archiveErrorOf([made("ustar")]).message).toMatch(/not the header shoal writes|not a shoal archive: its first entry is 'hello.txt'/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    expect(archiveErrorOf([new TextEncoder().encode("not a tar stream at all".padEnd(2000, "!"))]).message).toMatch(/tar header at offset 0 is corrupt/);
  });
});

describe("snapshot archive: writer misuse is a programmer error", () => {
  test("pages out of order, wrong sizes, missing candidates and calls out of turn throw INTERNAL", () => {
    const codeOf = (run: () => unknown) => {
      try {
        run();
      } catch (err) {
        return (err as ShoalError).code;
      }
      return "no error";
    };
    const started = () => {
      const writer = new ArchiveWriter(spec());
      writer.start();
      return writer;
    };
    expect(codeOf(() => new ArchiveWriter(spec()).page(0, pageData(0)))).toBe("INTERNAL");
    expect(codeOf(() => started().page(1, pageData(1)))).toBe("INTERNAL");
    expect(codeOf(() => started().page(0, pageData(0, 4096)))).toBe("INTERNAL");
    expect(codeOf(() => started().finish())).toBe("INTERNAL");
    expect(codeOf(() => new ArchiveWriter(spec({ pages: [3, 2] })))).toBe("INTERNAL");
    expect(codeOf(() => new ArchiveWriter(spec({ pages: [13] })))).toBe("BAD_ARGUMENT");
    expect(codeOf(() => new ArchiveWriter(spec({ recordSizeBytes: 1000 })))).toBe("BAD_ARGUMENT");
    expect(codeOf(() => new ArchiveWriter(spec({ pageSizeBytes: 3000 })))).toBe("BAD_ARGUMENT");
    const finished = writeArchive(spec({ pages: [] }), new Map()).writer;
    expect(codeOf(() => finished.finish())).toBe("INTERNAL");
  });
});
