// Writes a snapshot archive (format.ts) without doing I/O: each call returns the bytes to write
// next, as chunks of whole records. Page data is handed back as views, not copied: the caller
// must leave a page's buffer alone until the chunks returned for it are written.
import { createHash, type Hash } from "node:crypto";
import { ShoalError } from "../errors.ts";
import { encodeTarHeader, paddingBytesAfter } from "./_tar-header.ts";
import { appendRange, type PageRange } from "./_page-ranges.ts";
import { END_BLOCKS_BYTES, MANIFEST_NAME, PAGE_NAME_DIGITS, PAGE_NAME_PREFIX, TRAILER_FORMAT, TRAILER_NAME } from "./format.ts";
import { encodeManifest, manifestOf, type ArchiveManifest, type ArchiveSpec } from "./manifest.ts";
import { RecordBlocker } from "./record-blocker.ts";
import { encodeTrailer, type ArchiveTrailer } from "./trailer.ts";

type Phase = "new" | "pages" | "finished";

export class ArchiveWriter {
  readonly manifest: ArchiveManifest;
  private readonly candidates: readonly number[];
  /** Index in `candidates` of the next page the caller must hand in. */
  private nextCandidate = 0;
  private phase: Phase = "new";
  private readonly blocker: RecordBlocker;
  /** Every byte before the trailer, page data replaced by its digest (format.ts). */
  private readonly streamHash: Hash = createHash("sha256");
  private readonly pageSha256: string[] = [];
  private readonly zeroPages: PageRange[] = [];
  private readonly mtimeSeconds: number;

  /** Throws BAD_ARGUMENT for a spec no reader would accept (geometry, record size, page list). */
  constructor(spec: ArchiveSpec) {
    this.manifest = manifestOf(spec);
    this.candidates = spec.pages;
    this.blocker = new RecordBlocker(this.manifest.recordSizeBytes);
    this.mtimeSeconds = Math.floor(this.manifest.createdAtMs / 1000);
  }

  /** Bytes handed out so far; a multiple of the record size. */
  get emittedBytes(): number {
    return this.blocker.emittedBytes;
  }

  /** The manifest entry. */
  start(): Uint8Array[] {
    this.expectPhase("new", "start()");
    this.phase = "pages";
    return this.entry(MANIFEST_NAME, encodeManifest(this.manifest), []);
  }

  /**
   * The entry for the next candidate page, or nothing if its bytes are all zeros (the page is then
   * recorded as a zero page). Candidates must come in order, each once, by page() or zero().
   * `data` may be the page in pieces (views of the received chunks): they are hashed and passed
   * on as they are, never gathered into one buffer.
   */
  page(page: number, data: Uint8Array | readonly Uint8Array[]): Uint8Array[] {
    this.takeCandidate(page, "page()");
    const pieces = data instanceof Uint8Array ? [data] : data;
    const expectedBytes = this.pageBytes(page);
    const dataBytes = pieces.reduce((sum, piece) => sum + piece.byteLength, 0);
    if (dataBytes !== expectedBytes) {
      throw new ShoalError("INTERNAL", `archive page ${page} has ${dataBytes} bytes; it must have ${expectedBytes}`);
    }
    if (pieces.every(isAllZero)) {
      appendRange(this.zeroPages, [page, 1]);
      return [];
    }
    const hash = createHash("sha256");
    for (const piece of pieces) hash.update(piece);
    const digest = hash.digest();
    this.pageSha256.push(digest.toString("hex"));
    const out: Uint8Array[] = [];
    const header = encodeTarHeader({ name: pageEntryName(page), sizeBytes: dataBytes, mtimeSeconds: this.mtimeSeconds });
    this.streamHash.update(header);
    this.streamHash.update(digest);
    this.blocker.push(header, out);
    for (const piece of pieces) this.blocker.push(piece, out);
    // Pages are whole 512-byte blocks (geometry.ts), so no padding follows; kept for the rule's sake.
    this.pad(dataBytes, true, out);
    return out;
  }

  /** Records the next candidate as all zeros without its data: the caller knows it holds none. */
  zero(page: number): void {
    this.takeCandidate(page, "zero()");
    appendRange(this.zeroPages, [page, 1]);
  }

  /** The trailer, tar's end blocks, and zeros up to a whole record. */
  finish(): Uint8Array[] {
    this.expectPhase("pages", "finish()");
    if (this.nextCandidate < this.candidates.length) {
      throw new ShoalError("INTERNAL", `archive finished with candidate page ${this.candidates[this.nextCandidate]} and ${this.candidates.length - this.nextCandidate - 1} more not handed in`);
    }
    this.phase = "finished";
    const trailer: ArchiveTrailer = {
      format: TRAILER_FORMAT,
      pageEntries: this.pageSha256.length,
      zeroPages: this.zeroPages,
      pageSha256: this.pageSha256,
      streamBytes: this.blocker.acceptedBytes,
      streamSha256: this.streamHash.digest("hex"),
    };
    const out = this.entry(TRAILER_NAME, encodeTrailer(trailer), [], false);
    this.blocker.push(new Uint8Array(END_BLOCKS_BYTES), out);
    return this.blocker.flush(out);
  }

  private entry(name: string, data: Uint8Array, out: Uint8Array[], hashed = true): Uint8Array[] {
    const header = encodeTarHeader({ name, sizeBytes: data.byteLength, mtimeSeconds: this.mtimeSeconds });
    if (hashed) this.streamHash.update(header).update(data);
    this.blocker.push(header, out);
    this.blocker.push(data, out);
    this.pad(data.byteLength, hashed, out);
    return out;
  }

  private pad(sizeBytes: number, hashed: boolean, out: Uint8Array[]): void {
    const paddingBytes = paddingBytesAfter(sizeBytes);
    if (paddingBytes === 0) return;
    const padding = new Uint8Array(paddingBytes);
    if (hashed) this.streamHash.update(padding);
    this.blocker.push(padding, out);
  }

  private takeCandidate(page: number, call: string): void {
    this.expectPhase("pages", call);
    const expected = this.candidates[this.nextCandidate];
    if (page !== expected) {
      throw new ShoalError("INTERNAL", `archive ${call} got page ${page}; the next candidate page is ${expected ?? "none (all handed in)"}`);
    }
    this.nextCandidate++;
  }

  private pageBytes(page: number): number {
    const { sizeBytes, pageSizeBytes } = this.manifest;
    return Math.min(pageSizeBytes, sizeBytes - page * pageSizeBytes);
  }

  private expectPhase(phase: Phase, call: string): void {
    if (this.phase !== phase) throw new ShoalError("INTERNAL", `archive ${call} called while the writer is at '${this.phase}'`);
  }
}

export function pageEntryName(page: number): string {
  return `${PAGE_NAME_PREFIX}${String(page).padStart(PAGE_NAME_DIGITS, "0")}`;
}

/** Compared in slices against one shared zero buffer: memcmp speed, and stops at the first data. */
const ZERO_SLICE = new Uint8Array(64 * 1024);

export function isAllZero(data: Uint8Array): boolean {
  for (let at = 0; at < data.byteLength; at += ZERO_SLICE.byteLength) {
    const slice = data.subarray(at, at + ZERO_SLICE.byteLength);
    if (Buffer.compare(slice, ZERO_SLICE.subarray(0, slice.byteLength)) !== 0) return false;
  }
  return true;
}
