// The store's metadata log: every layer-table change and every page-map change, appended as one
// checksummed frame per commit and made durable with one fdatasync. A frame is applied whole or
// not at all. The file starts with a checkpoint (the whole table and every map); when appends
// have made it large, a new checkpoint replaces it (temp file, sync, rename, sync directory).
//
// Frame: magic u32 | payload length u32 | crc32(payload) u32 | payload
// Payload: table JSON length u32 (0: unchanged) | table JSON | layer count u32 |
//          per layer: key u32 | page count u32 | per page: page f64 | state count u32 |
//          run count u32 | runs of equal states (length u16, state u8)
// A state count of 0 removes the page from the layer's map. Runs, not a byte per chunk: a
// random 4 KiB write over a big volume touches a fresh page (1,024 chunk states for 4 MiB) and
// its record is then 3 runs, 9 bytes.
import { ShoalError } from "../errors.ts";
import type { FileIO } from "./file-io.ts";
import type { TableRecord } from "./_layers.ts";

export const JOURNAL_FILE = "journal";
const TEMP_FILE = "journal.tmp";
const FRAME_MAGIC = 0x4a4c4853; // "SHLJ" little-endian
const FRAME_HEADER_BYTES = 12;
const MAX_FRAME_BYTES = 1 << 30;

export interface PageRecord {
  page: number;
  /** undefined: the layer no longer holds the page. */
  states: Uint8Array | undefined;
}

export interface CommitRecord {
  table: TableRecord | undefined;
  layers: { key: number; pages: PageRecord[] }[];
}

export function encodeCommit(record: CommitRecord): Uint8Array {
  return encodeFrame(record.table, record.layers.map(({ key, pages }) => encodeSection(key, pages.map(({ page }) => page), (index) => pages[index]!.states)));
}

/**
 * One layer's part of a frame: key u32 | page count u32 | per page (see the format above). Commits
 * encode it when they capture the maps, in the same turn: the bytes are the copy that later
 * changes cannot reach, and a page's runs are found in one pass, a word at a time where the
 * states allow (a random write's page is 1,024 states in 3 runs). Built in one reused buffer.
 */
export function encodeSection(key: number, pages: number[], statesOf: (index: number) => Uint8Array | undefined): Uint8Array {
  let at = 8;
  for (let index = 0; index < pages.length; index++) {
    const states = statesOf(index);
    const stateCount = states?.byteLength ?? 0;
    ensureScratch(at + 16 + 3 * stateCount);
    scratchView.setFloat64(at, pages[index]!, true);
    scratchView.setUint32(at + 8, stateCount, true);
    const runsAt = at + 16;
    at = states === undefined ? runsAt : writeRuns(scratch, runsAt, states);
    scratchView.setUint32(runsAt - 4, (at - runsAt) / 3, true);
  }
  scratchView.setUint32(0, key, true);
  scratchView.setUint32(4, pages.length, true);
  return scratch.slice(0, at);
}

/** A frame from the table (undefined: unchanged) and encodeSection's parts. */
export function encodeFrame(tableRecord: TableRecord | undefined, sections: Uint8Array[]): Uint8Array {
  const table = tableRecord === undefined ? new Uint8Array(0) : new TextEncoder().encode(JSON.stringify(tableRecord));
  let bytes = FRAME_HEADER_BYTES + 4 + table.byteLength + 4;
  for (const section of sections) bytes += section.byteLength;
  if (bytes > MAX_FRAME_BYTES) throw new ShoalError("TOO_LARGE", `a page-map commit of ${bytes} bytes is over the journal's ${MAX_FRAME_BYTES}-byte frame limit`);
  const frame = new Uint8Array(bytes);
  const view = new DataView(frame.buffer);
  let at = FRAME_HEADER_BYTES;
  view.setUint32(at, table.byteLength, true);
  frame.set(table, at + 4);
  at += 4 + table.byteLength;
  view.setUint32(at, sections.length, true);
  at += 4;
  for (const section of sections) {
    frame.set(section, at);
    at += section.byteLength;
  }
  view.setUint32(0, FRAME_MAGIC, true);
  view.setUint32(4, bytes - FRAME_HEADER_BYTES, true);
  view.setUint32(8, Bun.hash.crc32(frame.subarray(FRAME_HEADER_BYTES)), true);
  return frame;
}

let scratch = new Uint8Array(64 * 1024);
let scratchView = new DataView(scratch.buffer);

function ensureScratch(bytes: number): void {
  if (bytes <= scratch.byteLength) return;
  const grown = new Uint8Array(Math.max(bytes, scratch.byteLength * 2));
  grown.set(scratch);
  scratch = grown;
  scratchView = new DataView(scratch.buffer);
}

function decodePayload(payload: Uint8Array, bad: (why: string) => Error): CommitRecord {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  let at = 0;
  const need = (count: number) => {
    if (at + count > payload.byteLength) throw bad("a frame shorter than its contents");
  };
  need(4);
  const tableBytes = view.getUint32(at, true);
  at += 4;
  need(tableBytes + 4);
  let table: TableRecord | undefined;
  if (tableBytes > 0) {
    try {
      table = JSON.parse(new TextDecoder().decode(payload.subarray(at, at + tableBytes)));
    } catch {
      throw bad("a layer table that is not JSON");
    }
  }
  at += tableBytes;
  const layerCount = view.getUint32(at, true);
  at += 4;
  const layers: CommitRecord["layers"] = [];
  for (let index = 0; index < layerCount; index++) {
    need(8);
    const key = view.getUint32(at, true);
    const pageCount = view.getUint32(at + 4, true);
    at += 8;
    const pages: PageRecord[] = [];
    for (let pageIndex = 0; pageIndex < pageCount; pageIndex++) {
      need(16);
      const page = view.getFloat64(at, true);
      const stateCount = view.getUint32(at + 8, true);
      const runs = view.getUint32(at + 12, true);
      at += 16;
      need(3 * runs);
      if (!Number.isSafeInteger(page) || page < 0) throw bad(`page number ${page}`);
      if (stateCount > MAX_STATES) throw bad(`page ${page} with ${stateCount} chunk states`);
      const states = stateCount === 0 ? undefined : new Uint8Array(stateCount);
      let filled = 0;
      for (let run = 0; run < runs; run++, at += 3) {
        const length = view.getUint16(at, true);
        if (states === undefined || filled + length > stateCount) throw bad(`page ${page} whose chunk-state runs overrun its ${stateCount} chunks`);
        states.fill(view.getUint8(at + 2), filled, filled + length);
        filled += length;
      }
      if (filled !== stateCount) throw bad(`page ${page} whose chunk-state runs cover ${filled} of its ${stateCount} chunks`);
      pages.push({ page, states });
    }
    layers.push({ key, pages });
  }
  if (at !== payload.byteLength) throw bad("a frame longer than its contents");
  return { table, layers };
}

/** A page's chunk states are at most this many (see _chunks.ts), so a run's length fits a u16. */
const MAX_STATES = 65_535;

/** Writes the states' runs (length u16, state u8) at `at`; returns where they end. */
function writeRuns(target: Uint8Array, at: number, states: Uint8Array): number {
  // Whole words compared where the states are word-aligned (they are: each page's own array).
  const words = states.byteOffset % 4 === 0 ? new Uint32Array(states.buffer, states.byteOffset, states.byteLength >> 2) : undefined;
  const count = states.length;
  for (let index = 0; index < count; ) {
    const state = states[index]!;
    let end = index + 1;
    if (words !== undefined) {
      while (end < count && (end & 3) !== 0 && states[end] === state) end++;
      const repeated = Math.imul(state, 0x01010101) >>> 0;
      while (end + 4 <= count && (end & 3) === 0 && words[end >> 2] === repeated) end += 4;
    }
    while (end < count && states[end] === state) end++;
    const length = end - index;
    target[at] = length & 0xff;
    target[at + 1] = length >>> 8;
    target[at + 2] = state;
    at += 3;
    index = end;
  }
  return at;
}

/** The frame starting at `at`, or undefined when none valid does. */
function frameAt(bytes: Uint8Array, at: number): Uint8Array | undefined {
  if (at + FRAME_HEADER_BYTES > bytes.byteLength) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset + at, FRAME_HEADER_BYTES);
  if (view.getUint32(0, true) !== FRAME_MAGIC) return undefined;
  const length = view.getUint32(4, true);
  if (at + FRAME_HEADER_BYTES + length > bytes.byteLength) return undefined;
  const payload = bytes.subarray(at + FRAME_HEADER_BYTES, at + FRAME_HEADER_BYTES + length);
  return Bun.hash.crc32(payload) === view.getUint32(8, true) ? payload : undefined;
}

/** The layer table a journal's bytes record last (read-only: for tools watching a running node). */
export function lastTableIn(bytes: Uint8Array, source: string): TableRecord | undefined {
  const bad = (why: string) => new ShoalError("IO_ERROR", `the page-store journal ${source} is damaged (${why})`);
  let table: TableRecord | undefined;
  for (let at = 0; ; ) {
    const payload = frameAt(bytes, at);
    if (payload === undefined) return table;
    table = decodePayload(payload, bad).table ?? table;
    at += FRAME_HEADER_BYTES + payload.byteLength;
  }
}

export class Journal {
  private fd = -1;
  /** Where the next frame goes. */
  sizeBytes = 0;
  /** Size of the checkpoint the file starts with: appends beyond a few times that call for a new one. */
  checkpointBytes = 0;
  /** Set by close: a commit still in flight then fails at its append, which is no disk fault. */
  closed = false;

  constructor(
    private readonly io: FileIO,
    private readonly dir: string,
  ) {}

  get path(): string {
    return `${this.dir}/${JOURNAL_FILE}`;
  }

  /**
   * Reads every commit. The one append that can be torn (the last, its sync unfinished at a
   * crash) is cut off; a bad frame with a good one after it is damage, never skipped.
   */
  load(): CommitRecord[] | undefined {
    this.io.unlink(`${this.dir}/${TEMP_FILE}`);
    if (!this.io.exists(this.path)) return undefined;
    this.fd = this.io.open(this.path, false);
    const size = this.io.sizeOf(this.fd);
    const bytes = new Uint8Array(size);
    this.io.pread(this.fd, bytes, 0, size, 0);
    const bad = (why: string) => new ShoalError("IO_ERROR", `the page-store journal ${this.path} is damaged (${why}); restore this node's data directory from a backup, or remove it and let the group copy the pages back`);
    const records: CommitRecord[] = [];
    let at = 0;
    for (;;) {
      const payload = frameAt(bytes, at);
      if (payload === undefined) break;
      records.push(decodePayload(payload, bad));
      if (at === 0) this.checkpointBytes = payload.byteLength;
      at += FRAME_HEADER_BYTES + payload.byteLength;
    }
    if (records.length === 0) throw bad(size === 0 ? "empty" : "no valid checkpoint at its start");
    if (at < size) {
      for (let next = at + 1; next + FRAME_HEADER_BYTES <= size; next++) {
        if (frameAt(bytes, next) !== undefined) throw bad(`a bad frame at byte ${at} with valid ones after it`);
      }
      this.io.ftruncate(this.fd, at);
      this.io.fdatasyncNow(this.fd);
    }
    this.sizeBytes = at;
    return records;
  }

  /** Replaces (or starts) the journal with one checkpoint, synchronously: a new store, or close. */
  replaceNow(checkpoint: Uint8Array): void {
    if (this.closed) throw closedError();
    const temp = `${this.dir}/${TEMP_FILE}`;
    const fd = this.io.open(temp, true);
    this.io.ftruncate(fd, 0);
    this.io.pwrite(fd, checkpoint, 0);
    this.io.fdatasyncNow(fd);
    this.io.rename(temp, this.path);
    this.io.syncDirNow(this.dir);
    if (this.fd >= 0) this.io.close(this.fd);
    this.fd = fd;
    this.sizeBytes = this.checkpointBytes = checkpoint.byteLength;
  }

  /** Appends one commit and makes it durable. */
  async append(frame: Uint8Array): Promise<void> {
    if (this.closed) throw closedError();
    const at = this.sizeBytes;
    this.sizeBytes += frame.byteLength;
    this.io.pwrite(this.fd, frame, at);
    await this.io.fdatasync(this.fd);
  }

  /** Replaces the journal with one checkpoint; until the rename is durable the old one stands. */
  async replace(checkpoint: Uint8Array): Promise<void> {
    if (this.closed) throw closedError();
    const temp = `${this.dir}/${TEMP_FILE}`;
    const fd = this.io.open(temp, true);
    try {
      this.io.ftruncate(fd, 0);
      this.io.pwrite(fd, checkpoint, 0);
      await this.io.fdatasync(fd);
      this.io.rename(temp, this.path);
      if (this.closed) throw closedError(); // close() wrote a newer checkpoint meanwhile
    } catch (err) {
      this.io.close(fd);
      throw err;
    }
    const old = this.fd;
    this.fd = fd;
    this.sizeBytes = this.checkpointBytes = checkpoint.byteLength;
    this.io.close(old);
    await this.io.syncDir(this.dir);
  }

  close(): void {
    if (this.fd >= 0) this.io.close(this.fd);
    this.fd = -1;
    this.closed = true;
  }
}

function closedError(): ShoalError {
  return new ShoalError("SHUTTING_DOWN", "the page store closed before this change was made durable; it was made durable by the close");
}
