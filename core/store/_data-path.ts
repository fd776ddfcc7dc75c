// Reads and writes through a stack of layers. A layer's pages sit in its one extent file at
// page * pageSizeBytes; a chunk the layer does not hold (ABSENT) reads from the layer below,
// and the first partial write to such a chunk copies it up first. Everything here is
// synchronous pread/pwrite: page-cache hits cost microseconds and an async hop would cost more.
import { ShoalError } from "../errors.ts";
import type { FileIO } from "./file-io.ts";
import { ABSENT, allData, chunkShiftFor, DATA, newEntry, type PageEntry, setState, stateOf, ZERO } from "./_chunks.ts";
import type { Commits } from "./_commits.ts";
import type { LayerTable, StoreLayer } from "./_layers.ts";

export const LAYER_FILE_SUFFIX = ".layer";

/**
 * A layer's address space is cut into files of this size: ext4 takes files up to 16 TiB, and a
 * 64 TiB volume's last page sits at 64 TiB. A volume up to 4 TiB keeps one file per layer; a page
 * never straddles two (page sizes are powers of two up to 1 GiB).
 */
export const SEGMENT_BYTES = 4 * 2 ** 40;

/** `KEY.layer` for a layer's first segment, `KEY.S.layer` for the others. */
export function segmentFileName(key: number, segment: number): string {
  return segment === 0 ? `${key}${LAYER_FILE_SUFFIX}` : `${key}.${segment}${LAYER_FILE_SUFFIX}`;
}

/** The layer key and segment a file name stands for, or undefined for any other name. */
export function parseSegmentFileName(name: string): { key: number; segment: number } | undefined {
  const match = /^(\d+)(?:\.(\d+))?\.layer$/.exec(name);
  if (!match) return undefined;
  const segment = match[2] === undefined ? 0 : Number(match[2]);
  if (segment === 0 && match[2] !== undefined) return undefined;
  return { key: Number(match[1]), segment };
}

/** Where a byte of the layer's address space sits: which segment file, at what position. */
export function segmentOf(position: number): { segment: number; at: number } {
  const segment = Math.floor(position / SEGMENT_BYTES);
  return { segment, at: position - segment * SEGMENT_BYTES };
}

export class DataPath {
  private scratch = new Uint8Array(0);
  private zeros = new Uint8Array(0);

  constructor(
    readonly io: FileIO,
    readonly dir: string,
    readonly table: LayerTable,
    readonly commits: Commits,
  ) {}

  fileOf(layer: StoreLayer, segment: number): string {
    return `${this.dir}/${segmentFileName(layer.key, segment)}`;
  }

  /** A segment of the layer's file, made on its first write; its name is durable with the next commit. */
  fdOf(layer: StoreLayer, segment: number): number {
    let fd = layer.fds[segment];
    if (fd === undefined) {
      fd = this.io.open(this.fileOf(layer, segment), true);
      layer.fds[segment] = fd;
      this.commits.newFiles = true;
    }
    return fd;
  }

  chunkShiftOf(layer: StoreLayer): number {
    return chunkShiftFor(layer.pageSizeBytes, this.table.chunkSizeBytes);
  }

  /** A layer takes the page size of its first page; its file's layout depends on it. */
  adoptPageSize(layer: StoreLayer, pageSizeBytes: number): void {
    if (layer.pageSizeBytes === pageSizeBytes) return;
    if (layer.pageSizeBytes !== 0) {
      throw new ShoalError("CONFLICT", `layer '${layer.id}' holds ${layer.pageSizeBytes}-byte pages, not ${pageSizeBytes}-byte ones`);
    }
    chunkShiftFor(pageSizeBytes, this.table.chunkSizeBytes); // refuses a page size that cannot be chunked
    layer.pageSizeBytes = pageSizeBytes;
    this.table.changed();
  }

  positionOf(layer: StoreLayer, page: number, pageOffset: number): number {
    return page * layer.pageSizeBytes + pageOffset;
  }

  // ---- reading

  isAllocated(layer: StoreLayer, page: number): boolean {
    if (layer.parent === undefined) return layer.pages.has(page);
    return heldFrom(this.table.chainOf(layer), 0, page);
  }

  read(layer: StoreLayer, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    const entry = layer.pages.get(page);
    if (entry !== undefined) {
      const shift = this.chunkShiftOf(layer);
      if (allData(entry, pageOffset >> shift, (pageOffset + length - 1) >> shift)) {
        this.readOwn(layer, page, pageOffset, length, target, targetOffset);
        return;
      }
    } else if (layer.parent === undefined) {
      target.fill(0, targetOffset, targetOffset + length);
      return;
    }
    this.readThrough(this.table.chainOf(layer), 0, page, pageOffset, length, target, targetOffset);
  }

  readOwn(layer: StoreLayer, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    const { segment, at } = segmentOf(this.positionOf(layer, page, pageOffset));
    const fd = layer.fds[segment];
    const done = fd === undefined ? 0 : this.io.pread(fd, target, targetOffset, length, at);
    if (done < length) target.fill(0, targetOffset + done, targetOffset + length); // a sparse tail
  }

  /** Reads a range as chain[from] sees it: per chunk, from the first layer that holds it; runs with one source are one pread. */
  readThrough(chain: StoreLayer[], from: number, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    let top = from;
    while (top < chain.length && !chain[top]!.pages.has(page)) top++;
    if (top === chain.length) {
      target.fill(0, targetOffset, targetOffset + length);
      return;
    }
    const shift = this.chunkShiftOf(chain[top]!);
    const end = pageOffset + length;
    let runStart = pageOffset;
    let runSource = sourceOf(chain, top, page, pageOffset >> shift);
    for (let at = ((pageOffset >> shift) + 1) << shift; at < end; at += 1 << shift) {
      const source = sourceOf(chain, top, page, at >> shift);
      if (source === runSource) continue;
      this.readRun(runSource, page, runStart, at, pageOffset, target, targetOffset);
      runSource = source;
      runStart = at;
    }
    this.readRun(runSource, page, runStart, end, pageOffset, target, targetOffset);
  }

  private readRun(source: StoreLayer | null, page: number, start: number, stop: number, pageOffset: number, target: Uint8Array, targetOffset: number): void {
    const at = targetOffset + start - pageOffset;
    if (source === null) target.fill(0, at, at + stop - start);
    else this.readOwn(source, page, start, stop - start, target, at);
  }

  heldBelow(layer: StoreLayer, page: number): boolean {
    return layer.parent !== undefined && heldFrom(this.table.chainOf(layer), 1, page);
  }

  // ---- writing

  write(layer: StoreLayer, page: number, pageOffset: number, data: Uint8Array): void {
    const entry = layer.pages.get(page) ?? this.createEntry(layer, page, this.heldBelow(layer, page));
    const shift = this.chunkShiftOf(layer);
    const end = pageOffset + data.byteLength;
    const first = pageOffset >> shift;
    const last = (end - 1) >> shift;
    if (allData(entry, first, last)) {
      this.writeOwn(layer, page, pageOffset, data);
      return;
    }
    // Only the first and last chunk can be partly covered; one that is not yet the layer's own
    // is written whole (its bytes from below, or zeros, around the new ones). The rest is one pwrite.
    let start = pageOffset;
    let stop = end;
    if (this.isPartialForeign(entry, first, shift, pageOffset, end)) {
      this.writeChunkAround(layer, page, entry, first, pageOffset, data);
      start = Math.min(end, (first + 1) << shift);
    }
    if (last !== first && this.isPartialForeign(entry, last, shift, pageOffset, end)) {
      this.writeChunkAround(layer, page, entry, last, pageOffset, data);
      stop = last << shift;
    }
    if (start >= stop) return;
    this.writeOwn(layer, page, start, data.subarray(start - pageOffset, stop - pageOffset));
    for (let chunk = start >> shift; chunk <= (stop - 1) >> shift; chunk++) if (setState(entry, chunk, DATA)) layer.dirtyPages.add(page);
  }

  writeOwn(layer: StoreLayer, page: number, pageOffset: number, data: Uint8Array): void {
    const { segment, at } = segmentOf(this.positionOf(layer, page, pageOffset));
    this.io.pwrite(this.fdOf(layer, segment), data, at);
    this.commits.noteWritten(layer, data.byteLength);
  }

  private isPartialForeign(entry: PageEntry, chunk: number, shift: number, start: number, end: number): boolean {
    if (stateOf(entry, chunk) === DATA) return false;
    return start > chunk << shift || end < (chunk + 1) << shift;
  }

  private writeChunkAround(layer: StoreLayer, page: number, entry: PageEntry, chunk: number, pageOffset: number, data: Uint8Array): void {
    const shift = this.chunkShiftOf(layer);
    const chunkStart = chunk << shift;
    const chunkBytes = 1 << shift;
    const scratch = this.scratchOf(chunkBytes);
    // ZERO: the file may still hold bytes from before the zeroing.
    if (stateOf(entry, chunk) === ZERO) scratch.fill(0);
    else this.readThrough(this.table.chainOf(layer), 1, page, chunkStart, chunkBytes, scratch, 0);
    const from = Math.max(pageOffset, chunkStart);
    const to = Math.min(pageOffset + data.byteLength, chunkStart + chunkBytes);
    scratch.set(data.subarray(from - pageOffset, to - pageOffset), from - chunkStart);
    this.writeOwn(layer, page, chunkStart, scratch);
    if (setState(entry, chunk, DATA)) layer.dirtyPages.add(page);
  }

  /** A new map entry: chunks read through (ABSENT) where a layer below holds the page, else as zeros. */
  createEntry(layer: StoreLayer, page: number, heldBelow: boolean): PageEntry {
    const chunks = Math.max(1, layer.pageSizeBytes >> this.chunkShiftOf(layer));
    const entry = newEntry(chunks, heldBelow ? ABSENT : ZERO);
    layer.pages.set(page, entry);
    layer.dirtyPages.add(page);
    return entry;
  }

  // ---- zeroing

  zero(layer: StoreLayer, page: number, pageOffset: number, length: number): void {
    const existing = layer.pages.get(page);
    if (existing === undefined && !this.heldBelow(layer, page)) return; // reads as zeros already
    if (pageOffset === 0 && length === layer.pageSizeBytes) {
      this.zeroPage(layer, page, existing);
      return;
    }
    const entry = existing ?? this.createEntry(layer, page, true);
    const shift = this.chunkShiftOf(layer);
    const end = pageOffset + length;
    const wholeFirst = (pageOffset + (1 << shift) - 1) >> shift;
    const wholeEnd = end >> shift; // chunks [wholeFirst, wholeEnd) are covered entirely
    if (wholeFirst >= wholeEnd) {
      this.write(layer, page, pageOffset, this.zerosOf(length));
      return;
    }
    if (pageOffset < wholeFirst << shift) this.write(layer, page, pageOffset, this.zerosOf((wholeFirst << shift) - pageOffset));
    if (end > wholeEnd << shift) this.write(layer, page, wholeEnd << shift, this.zerosOf(end - (wholeEnd << shift)));
    let punch = false;
    for (let chunk = wholeFirst; chunk < wholeEnd; chunk++) {
      punch ||= stateOf(entry, chunk) === DATA;
      if (setState(entry, chunk, ZERO)) layer.dirtyPages.add(page);
    }
    if (punch) this.punch(layer, page, wholeFirst << shift, (wholeEnd - wholeFirst) << shift);
  }

  /** A whole page: a base layer forgets it; a layer with a parent records zeros over the parent's bytes. */
  private zeroPage(layer: StoreLayer, page: number, entry: PageEntry | undefined): void {
    if (layer.parent === undefined) {
      if (entry !== undefined) this.removeEntry(layer, page);
      return;
    }
    const target = entry ?? this.createEntry(layer, page, true);
    const punch = target.dataChunks > 0;
    for (let chunk = 0; chunk < target.chunks; chunk++) setState(target, chunk, ZERO);
    layer.dirtyPages.add(page);
    if (punch) this.punch(layer, page, 0, layer.pageSizeBytes);
  }

  /** Forgets a page the layer holds and frees its blocks. */
  removeEntry(layer: StoreLayer, page: number): void {
    const entry = layer.pages.get(page);
    if (entry === undefined) return;
    layer.pages.delete(page);
    layer.dirtyPages.add(page);
    if (entry.dataChunks > 0) this.punch(layer, page, 0, layer.pageSizeBytes);
  }

  punch(layer: StoreLayer, page: number, pageOffset: number, length: number): void {
    const { segment, at } = segmentOf(this.positionOf(layer, page, pageOffset));
    const fd = layer.fds[segment];
    if (fd === undefined) return;
    this.io.punchHole(fd, at, length);
  }

  scratchOf(bytes: number): Uint8Array {
    if (this.scratch.byteLength < bytes) this.scratch = new Uint8Array(bytes);
    return this.scratch.subarray(0, bytes);
  }

  /** A shared run of zeros; never written into. */
  private zerosOf(bytes: number): Uint8Array {
    if (this.zeros.byteLength < bytes) this.zeros = new Uint8Array(bytes);
    return this.zeros.subarray(0, bytes);
  }
}

/** The layer a chunk reads from (the first in the chain that holds it), or null for zeros. */
function sourceOf(chain: StoreLayer[], from: number, page: number, chunk: number): StoreLayer | null {
  for (let index = from; index < chain.length; index++) {
    const entry = chain[index]!.pages.get(page);
    if (entry === undefined) continue;
    const state = stateOf(entry, chunk);
    if (state === DATA) return chain[index]!;
    if (state === ZERO) return null;
  }
  return null;
}

function heldFrom(chain: StoreLayer[], from: number, page: number): boolean {
  for (let index = from; index < chain.length; index++) if (chain[index]!.pages.has(page)) return true;
  return false;
}
