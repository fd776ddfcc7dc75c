// A page as one layer holds it: one state byte per chunk (4 KiB by default). ABSENT reads
// through to the layer below, DATA reads the layer's own file, ZERO reads as zeros. The bytes
// sit in the layer's extent file at page * pageSizeBytes + chunk * chunkBytes.
import { ShoalError } from "../errors.ts";

export const ABSENT = 0;
export const DATA = 1;
export const ZERO = 2;

export const MIN_CHUNK_SIZE_BYTES = 4096;
export const MAX_CHUNK_SIZE_BYTES = 64 * 1024 * 1024;
/** Bigger pages get bigger chunks, as the one-file-per-page store did: pages move between the two unchanged. */
const MAX_CHUNKS_PER_PAGE = 2048;
const MAX_PAGE_SIZE_BYTES = 1 << 30;

/** A page a layer holds: per-chunk states; `dataChunks` counts DATA ones (for usage). */
export interface PageEntry {
  states: Uint8Array;
  dataChunks: number;
}

/**
 * A page the layer holds whole, every chunk its own, is the common case of a written volume; such
 * pages share one state array per chunk count instead of 1 KiB each (a fully written 1 TiB volume's
 * maps: 256 MiB otherwise). Shared arrays are never written: setState copies one before a change.
 */
const allDataStates = new Map<number, Uint8Array>();

function sharedAllData(chunks: number): Uint8Array {
  let states = allDataStates.get(chunks);
  if (states === undefined) {
    states = new Uint8Array(chunks).fill(DATA);
    allDataStates.set(chunks, states);
  }
  return states;
}

export function newEntry(chunks: number, fill: number): PageEntry {
  if (fill === DATA) return { states: sharedAllData(chunks), dataChunks: chunks };
  return { states: new Uint8Array(chunks).fill(fill), dataChunks: 0 };
}

export function entryFrom(states: Uint8Array): PageEntry {
  let dataChunks = 0;
  for (let index = 0; index < states.length; index++) if (states[index] === DATA) dataChunks++;
  return { states: dataChunks === states.length ? sharedAllData(states.length) : states, dataChunks };
}

export function setState(entry: PageEntry, chunk: number, state: number): boolean {
  const old = entry.states[chunk];
  if (old === state) return false;
  // All DATA means the shared array (see sharedAllData): change a copy.
  if (entry.dataChunks === entry.states.length) entry.states = entry.states.slice();
  if (old === DATA) entry.dataChunks--;
  if (state === DATA) entry.dataChunks++;
  entry.states[chunk] = state;
  if (entry.dataChunks === entry.states.length) entry.states = sharedAllData(entry.states.length);
  return true;
}

/** Chunk size for a page: the store's, but never bigger than the page nor so small the states overflow. */
export function chunkShiftFor(pageSizeBytes: number, chunkSizeBytes: number): number {
  if (!isPowerOfTwo(pageSizeBytes) || pageSizeBytes > MAX_PAGE_SIZE_BYTES) {
    throw new ShoalError("BAD_ARGUMENT", `page size ${pageSizeBytes} must be a power of two of at most ${MAX_PAGE_SIZE_BYTES} bytes`);
  }
  return Math.log2(Math.max(Math.min(chunkSizeBytes, pageSizeBytes), pageSizeBytes / MAX_CHUNKS_PER_PAGE));
}

export function validateChunkSize(chunkSizeBytes: number): void {
  if (!isPowerOfTwo(chunkSizeBytes) || chunkSizeBytes < MIN_CHUNK_SIZE_BYTES || chunkSizeBytes > MAX_CHUNK_SIZE_BYTES) {
    throw new ShoalError("BAD_ARGUMENT", `chunk size ${chunkSizeBytes} must be a power of two between ${MIN_CHUNK_SIZE_BYTES} and ${MAX_CHUNK_SIZE_BYTES} bytes`);
  }
}

function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && 2 ** Math.round(Math.log2(value)) === value;
}

export function allData(states: Uint8Array, first: number, last: number): boolean {
  for (let chunk = first; chunk <= last; chunk++) if (states[chunk] !== DATA) return false;
  return true;
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

/** Runs of consecutive chunks in `state` as [first chunk, count]: one read or write each. */
export function* runsOf(states: Uint8Array, state: number): Generator<[number, number]> {
  for (let chunk = 0; chunk < states.length; chunk++) {
    if (states[chunk] !== state) continue;
    const first = chunk;
    while (chunk + 1 < states.length && states[chunk + 1] === state) chunk++;
    yield [first, chunk - first + 1];
  }
}
