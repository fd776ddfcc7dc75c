// One page as one layer holds it on disk, and the chunk map that lets a layer hold only part of a
// page (copy-on-write after a snapshot copies a chunk, 4 KiB by default, not a 4 MiB page).
//
// Two file forms, told apart by name so a file can move between layers by rename:
//   `<page>`    plain: exactly the page's bytes, sparse; every chunk is the layer's own.
//   `<page>.c`  chunked: a 4 KiB header, then the page's bytes at offset 4096. The header is
//               16 bytes of format (magic, version, page and chunk size) and one state byte per
//               chunk: ABSENT (read the layer below), DATA (read here) or ZERO (reads as zeros).
// One byte per chunk, no checksum over the header: a torn header write leaves every chunk's
// state either old or new, and both are valid. The header is written only after the data it
// describes is synced (see PageStore.syncFile), so a crash never exposes a chunk as DATA
// before its bytes are on disk. A header that was never synced is all zeros: all ABSENT.
import * as fs from "node:fs";
import { ShoalError } from "../../errors.ts";
import type { Layer } from "./_layer-table.ts";

export const ABSENT = 0;
export const DATA = 1;
export const ZERO = 2;

export const CHUNK_HEADER_BYTES = 4096;
const HEADER_MAGIC = 0x43504853; // "SHPC" little-endian
const HEADER_VERSION = 1;
const STATES_OFFSET_BYTES = 16;
/** States must fit the header; bigger pages get bigger chunks. */
export const MAX_CHUNKS_PER_PAGE = 2048;
export const MIN_CHUNK_SIZE_BYTES = 4096;
export const MAX_CHUNK_SIZE_BYTES = 64 * 1024 * 1024;
const MAX_PAGE_SIZE_BYTES = 1 << 30;

export interface PageFile {
  /** The layer whose directory holds the file; changes when a deleted layer hands it to a child. */
  layer: Layer;
  readonly page: number;
  pageSizeBytes: number;
  chunkShift: number;
  /** Per-chunk state for a chunked file; undefined for a plain one (every chunk DATA). */
  readonly states: Uint8Array | undefined;
  /** Chunks in DATA state (chunked files only), for usage. */
  dataChunks: number;
  /** Open descriptor or -1; owned by OpenPageFiles. */
  fd: number;
  newer: PageFile | undefined;
  older: PageFile | undefined;
  /** Written since the last fdatasync. */
  dataDirty: boolean;
  /** States changed since the header was last written. */
  headerDirty: boolean;
  /** Order of the last header written (see PageStore.claimHeader). */
  headerWrittenSeq: number;
  /** The fdatasync in flight; the descriptor must not be closed under it. */
  syncing: Promise<void> | undefined;
}

export function newPageFile(layer: Layer, page: number, pageSizeBytes: number, chunkShift: number, states: Uint8Array | undefined): PageFile {
  let dataChunks = 0;
  if (states !== undefined) for (const state of states) if (state === DATA) dataChunks++;
  return {
    layer,
    page,
    pageSizeBytes,
    chunkShift,
    states,
    dataChunks,
    fd: -1,
    newer: undefined,
    older: undefined,
    dataDirty: false,
    headerDirty: false,
    headerWrittenSeq: 0,
    syncing: undefined,
  };
}

export function fileName(page: number, chunked: boolean): string {
  return chunked ? `${page}.c` : String(page);
}

/** Parses a directory entry: a page number and its form, or undefined for anything else. */
export function parseFileName(name: string): { page: number; chunked: boolean } | undefined {
  const match = /^(0|[1-9]\d{0,15})(\.c)?$/.exec(name);
  if (!match) return undefined;
  const page = Number(match[1]);
  return Number.isSafeInteger(page) ? { page, chunked: match[2] !== undefined } : undefined;
}

/** Where page byte 0 sits in the file. */
export function dataOffsetOf(file: PageFile): number {
  return file.states === undefined ? 0 : CHUNK_HEADER_BYTES;
}

/** Chunk size for a page: the store's, but never bigger than the page nor so small the header overflows. */
export function chunkShiftFor(pageSizeBytes: number, chunkSizeBytes: number): number {
  if (!isPowerOfTwo(pageSizeBytes) || pageSizeBytes > MAX_PAGE_SIZE_BYTES) {
    throw new ShoalError("BAD_ARGUMENT", `page size ${pageSizeBytes} must be a power of two of at most ${MAX_PAGE_SIZE_BYTES} bytes to be layered`);
  }
  const chunkBytes = Math.max(Math.min(chunkSizeBytes, pageSizeBytes), pageSizeBytes / MAX_CHUNKS_PER_PAGE);
  return Math.log2(chunkBytes);
}

export function chunksIn(pageSizeBytes: number, chunkShift: number): number {
  return Math.max(1, Math.ceil(pageSizeBytes / 2 ** chunkShift));
}

export function validateChunkSize(chunkSizeBytes: number): void {
  if (!isPowerOfTwo(chunkSizeBytes) || chunkSizeBytes < MIN_CHUNK_SIZE_BYTES || chunkSizeBytes > MAX_CHUNK_SIZE_BYTES) {
    throw new ShoalError(
      "BAD_ARGUMENT",
      `chunk size ${chunkSizeBytes} must be a power of two between ${MIN_CHUNK_SIZE_BYTES} and ${MAX_CHUNK_SIZE_BYTES} bytes`,
    );
  }
}

function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && 2 ** Math.round(Math.log2(value)) === value;
}

/** The whole header for a state snapshot, ready for one pwrite at offset 0. */
export function encodeHeader(file: PageFile, states: Uint8Array): Uint8Array {
  const header = new Uint8Array(STATES_OFFSET_BYTES + states.byteLength);
  const view = new DataView(header.buffer);
  view.setUint32(0, HEADER_MAGIC, true);
  view.setUint16(4, HEADER_VERSION, true);
  view.setUint32(8, file.pageSizeBytes, true);
  view.setUint32(12, 2 ** file.chunkShift, true);
  header.set(states, STATES_OFFSET_BYTES);
  return header;
}

/**
 * Reads a chunked file's header: its page size, chunk shift and states, or undefined when the
 * header was never written (the file holds nothing yet). Anything else unexpected is damage.
 */
export function readHeader(fd: number, filePath: string, chunkSizeBytes: number): { pageSizeBytes: number; chunkShift: number; states: Uint8Array } | undefined {
  const header = new Uint8Array(CHUNK_HEADER_BYTES);
  const count = fs.readSync(fd, header, 0, CHUNK_HEADER_BYTES, 0);
  const view = new DataView(header.buffer);
  const magic = count >= STATES_OFFSET_BYTES ? view.getUint32(0, true) : 0;
  if (magic === 0 && header.every((byte) => byte === 0)) return undefined;
  const damaged = (why: string) =>
    new ShoalError("IO_ERROR", `page file ${filePath} has a damaged chunk header (${why}); restore the node's data directory from a replica or backup`);
  if (magic !== HEADER_MAGIC || view.getUint16(4, true) !== HEADER_VERSION) throw damaged("bad magic or version");
  const pageSizeBytes = view.getUint32(8, true);
  const chunkShift = chunkShiftFor(pageSizeBytes, chunkSizeBytes);
  if (view.getUint32(12, true) !== 2 ** chunkShift) throw damaged(`chunk size ${view.getUint32(12, true)} differs from the store's ${2 ** chunkShift}`);
  const chunks = chunksIn(pageSizeBytes, chunkShift);
  const states = header.slice(STATES_OFFSET_BYTES, STATES_OFFSET_BYTES + chunks);
  if (states.some((state) => state > ZERO)) throw damaged("unknown chunk state");
  return { pageSizeBytes, chunkShift, states };
}

/** True when chunks first..last of a chunked file are all the layer's own data. */
export function allData(states: Uint8Array, first: number, last: number): boolean {
  for (let chunk = first; chunk <= last; chunk++) if (states[chunk] !== DATA) return false;
  return true;
}

export function preadFull(fd: number, target: Uint8Array, targetOffset: number, length: number, position: number): number {
  let done = 0;
  while (done < length) {
    const count = fs.readSync(fd, target, targetOffset + done, length - done, position + done);
    if (count === 0) break;
    done += count;
  }
  return done;
}

export function pwriteFull(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.byteLength) done += fs.writeSync(fd, data, done, data.byteLength - done, position + done);
}

export function isAllZero(bytes: Uint8Array): boolean {
  if (bytes.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    for (let index = 0; index < words.length; index++) if (words[index] !== 0) return false;
    return true;
  }
  for (let index = 0; index < bytes.byteLength; index++) if (bytes[index] !== 0) return false;
  return true;
}
