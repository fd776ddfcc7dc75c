// A page as one layer holds it: a state per chunk (4 KiB by default). ABSENT reads
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

/**
 * A page a layer holds: per-chunk states, two bits each, four chunks to a byte (chunk c in bits
 * 2(c % 4)..2(c % 4)+1 of byte c / 4): a 4 MiB page's 1,024 states in 256 bytes. A node keeps
 * the map of every page it holds in memory, and one byte per state made that 1 KiB per page
 * written (tens of MB on a node after seconds of random writes over a big volume).
 * `dataChunks` counts DATA ones (for usage).
 */
export interface PageEntry {
  packed: Uint8Array;
  chunks: number;
  dataChunks: number;
}

/** A byte whose four states are all `state`. */
const FILL_BYTES = [0x00, 0x55, 0xaa];

/**
 * A page the layer holds whole, every chunk its own, is the common case of a written volume; such
 * pages share one packed array per chunk count. Shared arrays are never written: setState copies
 * one before a change.
 */
const allDataPacked = new Map<number, Uint8Array>();

function sharedAllData(chunks: number): Uint8Array {
  let packed = allDataPacked.get(chunks);
  if (packed === undefined) {
    packed = new Uint8Array(packedBytes(chunks)).fill(FILL_BYTES[DATA]!);
    allDataPacked.set(chunks, packed);
  }
  return packed;
}

function packedBytes(chunks: number): number {
  return (chunks + 3) >> 2;
}

export function stateOf(entry: PageEntry, chunk: number): number {
  return (entry.packed[chunk >> 2]! >> ((chunk & 3) << 1)) & 3;
}

export function newEntry(chunks: number, fill: number): PageEntry {
  if (fill === DATA) return { packed: sharedAllData(chunks), chunks, dataChunks: chunks };
  return { packed: new Uint8Array(packedBytes(chunks)).fill(FILL_BYTES[fill]!), chunks, dataChunks: 0 };
}

/** An entry from one state byte per chunk (the journal's and a page move's form). */
export function entryFrom(states: Uint8Array): PageEntry {
  const chunks = states.length;
  let dataChunks = 0;
  for (let index = 0; index < chunks; index++) if (states[index] === DATA) dataChunks++;
  if (dataChunks === chunks) return { packed: sharedAllData(chunks), chunks, dataChunks };
  const packed = new Uint8Array(packedBytes(chunks));
  for (let index = 0; index < chunks; index++) packed[index >> 2] = packed[index >> 2]! | (states[index]! << ((index & 3) << 1));
  return { packed, chunks, dataChunks };
}

/** One byte per chunk: four state bytes per packed byte, little-endian words (see unpackInto). */
const UNPACKED_WORDS = new Uint32Array(256);
for (let byte = 0; byte < 256; byte++) {
  UNPACKED_WORDS[byte] = ((byte & 3) | (((byte >> 2) & 3) << 8) | (((byte >> 4) & 3) << 16) | (((byte >> 6) & 3) << 24)) >>> 0;
}
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** The states as one byte per chunk, in a new array. */
export function statesOf(entry: PageEntry): Uint8Array {
  return unpackInto(entry, new Uint8Array(packedBytes(entry.chunks) << 2)).subarray(0, entry.chunks);
}

let scratchStates = new Uint8Array(0);

/** The states as one byte per chunk in a shared buffer, valid until the next call: for encoding at once. */
export function statesView(entry: PageEntry): Uint8Array {
  const bytes = packedBytes(entry.chunks) << 2;
  if (scratchStates.byteLength < bytes) scratchStates = new Uint8Array(bytes);
  return unpackInto(entry, scratchStates).subarray(0, entry.chunks);
}

function unpackInto(entry: PageEntry, target: Uint8Array): Uint8Array {
  const { packed } = entry;
  if (LITTLE_ENDIAN && target.byteOffset % 4 === 0) {
    const words = new Uint32Array(target.buffer, target.byteOffset, packed.length);
    for (let index = 0; index < packed.length; index++) words[index] = UNPACKED_WORDS[packed[index]!]!;
  } else {
    for (let index = 0; index < packed.length << 2; index++) target[index] = (packed[index >> 2]! >> ((index & 3) << 1)) & 3;
  }
  return target;
}

export function setState(entry: PageEntry, chunk: number, state: number): boolean {
  const old = stateOf(entry, chunk);
  if (old === state) return false;
  // All DATA means the shared array (see sharedAllData): change a copy.
  if (entry.dataChunks === entry.chunks) entry.packed = entry.packed.slice();
  if (old === DATA) entry.dataChunks--;
  if (state === DATA) entry.dataChunks++;
  const shift = (chunk & 3) << 1;
  entry.packed[chunk >> 2] = (entry.packed[chunk >> 2]! & ~(3 << shift)) | (state << shift);
  if (entry.dataChunks === entry.chunks) entry.packed = sharedAllData(entry.chunks);
  return true;
}

/** The last chunk in `state`, or -1. */
export function lastChunkIn(entry: PageEntry, state: number): number {
  for (let chunk = entry.chunks - 1; chunk >= 0; chunk--) if (stateOf(entry, chunk) === state) return chunk;
  return -1;
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

export function allData(entry: PageEntry, first: number, last: number): boolean {
  if (entry.dataChunks === entry.chunks) return true;
  if (entry.dataChunks === 0) return false;
  for (let chunk = first; chunk <= last; chunk++) if (stateOf(entry, chunk) !== DATA) return false;
  return true;
}

/** Whether some chunk reads through to the layer below: a whole page held (the usual case) answers at once. */
export function hasAbsent(entry: PageEntry): boolean {
  if (entry.dataChunks === entry.chunks) return false;
  const wholeBytes = entry.chunks >> 2;
  // A state pair is ABSENT (0b00) when neither of its bits is set.
  for (let index = 0; index < wholeBytes; index++) {
    const byte = entry.packed[index]!;
    if (((byte | (byte >> 1)) & 0x55) !== 0x55) return true;
  }
  for (let chunk = wholeBytes << 2; chunk < entry.chunks; chunk++) if (stateOf(entry, chunk) === ABSENT) return true;
  return false;
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
export function* runsOf(entry: PageEntry, state: number): Generator<[number, number]> {
  for (let chunk = 0; chunk < entry.chunks; chunk++) {
    if (stateOf(entry, chunk) !== state) continue;
    const first = chunk;
    while (chunk + 1 < entry.chunks && stateOf(entry, chunk + 1) === state) chunk++;
    yield [first, chunk - first + 1];
  }
}
