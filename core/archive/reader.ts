// Reads and verifies a snapshot archive (format.ts) as it streams in, without I/O: push() the
// bytes, act on the events. Page events are tentative: a page's digest is in the trailer, so a
// corrupt page is only known at the end. A restore must keep the volume marked incomplete until
// end() returns the `end` event; any ShoalError("BAD_ARCHIVE") before that means it is not usable.
//
// Memory: one entry being gathered (a page, or the bounded manifest or trailer), the page buffers
// the caller hands back for reuse, and 48 bytes a page entry until the trailer. A page event's
// data is a view of the pushed chunk when the page lies in one chunk, else a buffer of its own,
// so a restore may keep several writes in flight; release() it when done and the reader gathers
// a later page into it: a fresh 4 MiB buffer a page costs page faults and collector work that
// rival hashing the page (see test/bench/archive.ts).
import { createHash, type Hash } from "node:crypto";
import { ShoalError } from "../errors.ts";
import { decodeTarHeader, encodeTarHeader, isZeroBlock, paddingBytesAfter, type TarHeader } from "./_tar-header.ts";
import { PageDigestLog } from "./_page-digest-log.ts";
import { appendRange, PageRangeCursor, type PageRange } from "./_page-ranges.ts";
import { END_BLOCKS_BYTES, MANIFEST_NAME, MAX_MANIFEST_BYTES, MAX_TRAILER_BYTES, PAGE_NAME_DIGITS, PAGE_NAME_PREFIX, TAR_BLOCK_BYTES, TRAILER_FORMAT, TRAILER_NAME } from "./format.ts";
import { archiveError, decodeManifest, sameBytes, type ArchiveManifest } from "./manifest.ts";
import { decodeTrailer, encodeTrailer, type ArchiveTrailer } from "./trailer.ts";

export type ArchiveEvent =
  | { kind: "manifest"; manifest: ArchiveManifest }
  /** Tentative until `end`: the page's digest is checked against the trailer. */
  | { kind: "page"; page: number; data: Uint8Array }
  /** Candidates with no entry: all zeros. An incremental restore must write them as zeros. */
  | { kind: "zero"; firstPage: number; pageCount: number }
  /** Only from end(): every byte checked, nothing after the archive. */
  | { kind: "end"; manifest: ArchiveManifest; trailer: ArchiveTrailer };

type EntryKind = "manifest" | "page" | "trailer";

interface Entry {
  kind: EntryKind;
  name: string;
  page: number;
  sizeBytes: number;
  offsetBytes: number;
}

/** What the next `bytes` of the stream are. */
type Stage =
  | { kind: "header" }
  | { kind: "data"; entry: Entry }
  | { kind: "padding"; entry: Entry }
  | { kind: "end-blocks" }
  | { kind: "record-padding" }
  | { kind: "done" };

/** Released page buffers kept for reuse: enough for a restore's writes in flight. */
const MAX_FREE_PAGE_BUFFERS = 16;
const PAGE_NAME = new RegExp(`^${PAGE_NAME_PREFIX}(\\d{${PAGE_NAME_DIGITS}})$`);

export class ArchiveReader {
  private stage: Stage = { kind: "header" };
  /** Bytes of the stage's current piece, when it spans pushes. */
  private gather: Uint8Array | undefined;
  /** Page buffers handed out in events, and those handed back (see release()). */
  private readonly lentPageBuffers = new WeakSet<Uint8Array>();
  private readonly freePageBuffers: Uint8Array[] = [];
  private gatheredBytes = 0;
  /** Stream offset of the first byte not yet part of a completed piece. */
  private offsetBytes = 0;
  private failure: ShoalError | undefined;

  private manifest: ArchiveManifest | undefined;
  private trailer: ArchiveTrailer | undefined;
  private mtimeSeconds = 0;
  private candidates: PageRangeCursor | undefined;
  private lastPage = -1;
  private lastGood: { name: string; endBytes: number } | undefined;
  private readonly streamHash: Hash = createHash("sha256");
  private streamBytes = 0;
  private readonly pageEntries = new PageDigestLog();
  private readonly zeroPages: PageRange[] = [];

  /** The events the chunk completes. Throws BAD_ARCHIVE at the first bad byte, and ever after. */
  push(chunk: Uint8Array): ArchiveEvent[] {
    return this.guarded(() => {
      const events: ArchiveEvent[] = [];
      this.feed(chunk, events);
      return events;
    });
  }

  /** The `end` event if the archive was whole; BAD_ARCHIVE naming where it stopped if not. */
  end(): ArchiveEvent[] {
    return this.guarded(() => {
      if (this.stage.kind !== "done") {
        throw archiveError(`the archive is truncated: it stops at offset ${this.offsetBytes + this.gatheredBytes} ${this.whereTruncated()}; ${this.lastGoodText()}. A volume restored from it is incomplete`);
      }
      return [{ kind: "end", manifest: this.manifest!, trailer: this.trailer! }];
    });
  }

  /** Runs a call; the first error is kept and thrown again by every later call. */
  private guarded(call: () => ArchiveEvent[]): ArchiveEvent[] {
    if (this.failure) throw this.failure;
    try {
      return call();
    } catch (err) {
      this.failure = err instanceof ShoalError ? err : new ShoalError("INTERNAL", String(err));
      throw this.failure;
    }
  }

  /**
   * Hands back a page event's data once the caller is done with it (written, hashed, copied): the
   * reader will gather a later page into it. Data that is not a reader's buffer is ignored.
   */
  release(data: Uint8Array): void {
    if (!this.lentPageBuffers.has(data)) return;
    this.lentPageBuffers.delete(data);
    if (this.freePageBuffers.length < MAX_FREE_PAGE_BUFFERS) this.freePageBuffers.push(data);
  }

  private feed(chunk: Uint8Array, events: ArchiveEvent[]): void {
    let at = 0;
    while (at < chunk.byteLength) {
      if (this.stage.kind === "done") throw archiveError(`${chunk.byteLength - at} bytes follow the end of the archive at offset ${this.offsetBytes}`);
      const pieceBytes = this.pieceBytes();
      let piece: Uint8Array;
      if (this.gather === undefined && chunk.byteLength - at >= pieceBytes) {
        piece = chunk.subarray(at, at + pieceBytes);
        at += pieceBytes;
      } else {
        this.gather ??= this.gatherBuffer(pieceBytes);
        const taken = Math.min(chunk.byteLength - at, pieceBytes - this.gatheredBytes);
        this.gather.set(chunk.subarray(at, at + taken), this.gatheredBytes);
        this.gatheredBytes += taken;
        at += taken;
        if (this.gatheredBytes < pieceBytes) return;
        piece = this.gather;
        this.gather = undefined;
        this.gatheredBytes = 0;
      }
      this.consume(piece, events);
    }
  }

  private gathersPage(): boolean {
    return this.stage.kind === "data" && this.stage.entry.kind === "page";
  }

  /**
   * Where a piece that spans pushes is gathered. Always a plain Uint8Array over unzeroed memory
   * (every byte is written before use), never a Buffer, whose slice() would not copy.
   */
  private gatherBuffer(pieceBytes: number): Uint8Array {
    if (!this.gathersPage() || pieceBytes !== this.manifest!.pageSizeBytes) return unzeroed(pieceBytes);
    const buffer = this.freePageBuffers.pop() ?? unzeroed(pieceBytes);
    this.lentPageBuffers.add(buffer);
    return buffer;
  }

  /** Bytes the current stage consumes at once: 0 only for an empty entry, which no valid archive has. */
  private pieceBytes(): number {
    const stage = this.stage;
    switch (stage.kind) {
      case "header":
        return TAR_BLOCK_BYTES;
      case "data":
        return stage.entry.sizeBytes;
      case "padding":
        return paddingBytesAfter(stage.entry.sizeBytes);
      case "end-blocks":
        return END_BLOCKS_BYTES;
      case "record-padding":
        return this.recordPaddingBytes();
      case "done":
        return 0;
    }
  }

  private consume(piece: Uint8Array, events: ArchiveEvent[]): void {
    const stage = this.stage;
    const pieceOffset = this.offsetBytes;
    this.offsetBytes += piece.byteLength;
    switch (stage.kind) {
      case "header":
        return this.onHeader(piece, pieceOffset, events);
      case "data":
        return this.onData(stage.entry, piece, events);
      case "padding":
        if (!isZeroBlock(piece)) throw archiveError(`the padding after entry '${stage.entry.name}' (offset ${pieceOffset}) is not zeros`);
        if (stage.entry.kind !== "trailer") this.streamHash.update(piece);
        return this.entryDone(stage.entry);
      case "end-blocks":
        if (!isZeroBlock(piece)) throw archiveError(`tar's two end-of-archive blocks at offset ${pieceOffset}, after the trailer, are not zeros`);
        return this.moveTo({ kind: "record-padding" });
      case "record-padding":
        if (!isZeroBlock(piece)) throw archiveError(`the padding of the last record, at offset ${pieceOffset}, is not zeros`);
        return this.moveTo({ kind: "done" });
      case "done":
        throw new ShoalError("INTERNAL", "archive reader consumed bytes after the end");
    }
  }

  private onHeader(block: Uint8Array, offsetBytes: number, events: ArchiveEvent[]): void {
    if (isZeroBlock(block)) throw archiveError(`tar's end-of-archive marker at offset ${offsetBytes} comes before the trailer; ${this.lastGoodText()}`);
    const decoded = decodeTarHeader(block);
    if (!decoded.ok) {
      const hint = this.manifest === undefined ? " (is this a shoal archive?)" : `; ${this.lastGoodText()}`;
      throw archiveError(`the tar header at offset ${offsetBytes} is corrupt: ${decoded.reason}${hint}`);
    }
    const header = decoded.header;
    if (!sameBytes(block, encodeTarHeader(header))) {
      throw archiveError(`the tar header of '${header.name}' at offset ${offsetBytes} is not the header shoal writes (mode, owner, type or padding differ)`);
    }
    const entry = this.classify(header, offsetBytes, events);
    if (entry.kind === "trailer") {
      this.streamBytes = offsetBytes;
    } else {
      this.streamHash.update(block);
    }
    this.moveTo({ kind: "data", entry });
  }

  /** Which entry the header starts, checked against the order format.ts fixes. */
  private classify(header: TarHeader, offsetBytes: number, events: ArchiveEvent[]): Entry {
    const { name, sizeBytes } = header;
    const entry = (kind: EntryKind, page = -1): Entry => ({ kind, name, page, sizeBytes, offsetBytes });
    const manifest = this.manifest;
    if (manifest === undefined) {
      if (name !== MANIFEST_NAME) throw archiveError(`not a shoal archive: its first entry is '${name}', not '${MANIFEST_NAME}'`);
      if (sizeBytes > MAX_MANIFEST_BYTES) throw archiveError(`the manifest at offset ${offsetBytes} is ${sizeBytes} bytes, over the ${MAX_MANIFEST_BYTES} limit`);
      this.mtimeSeconds = header.mtimeSeconds;
      return entry("manifest");
    }
    if (header.mtimeSeconds !== this.mtimeSeconds) throw archiveError(`entry '${name}' at offset ${offsetBytes} has mtime ${header.mtimeSeconds}, not the manifest's ${this.mtimeSeconds}`);
    if (name === TRAILER_NAME) {
      if (sizeBytes > MAX_TRAILER_BYTES) throw archiveError(`the trailer at offset ${offsetBytes} is ${sizeBytes} bytes, over the ${MAX_TRAILER_BYTES} limit`);
      this.noteZeroPages(this.candidates!.rest(), events);
      return entry("trailer");
    }
    const match = PAGE_NAME.exec(name);
    if (match === null) throw archiveError(`unexpected entry '${name}' at offset ${offsetBytes}; ${this.lastGoodText()}`);
    const page = Number(match[1]);
    if (page <= this.lastPage) throw archiveError(`page entry '${name}' at offset ${offsetBytes} is out of order: it follows page ${this.lastPage}`);
    const { skipped, found } = this.candidates!.advanceTo(page);
    if (!found) throw archiveError(`page entry '${name}' at offset ${offsetBytes} is not a page the manifest lists`);
    const expectedBytes = Math.min(manifest.pageSizeBytes, manifest.sizeBytes - page * manifest.pageSizeBytes);
    if (sizeBytes !== expectedBytes) throw archiveError(`page entry '${name}' at offset ${offsetBytes} is ${sizeBytes} bytes; page ${page} has ${expectedBytes}`);
    this.noteZeroPages(skipped, events);
    this.lastPage = page;
    return entry("page", page);
  }

  private onData(entry: Entry, data: Uint8Array, events: ArchiveEvent[]): void {
    switch (entry.kind) {
      case "manifest": {
        this.streamHash.update(data);
        const manifest = this.withEntry(entry, () => decodeManifest(data));
        if (Math.floor(manifest.createdAtMs / 1000) !== this.mtimeSeconds) throw archiveError(`the manifest's createdAtMs ${manifest.createdAtMs} does not match its tar mtime ${this.mtimeSeconds}`);
        this.manifest = manifest;
        this.candidates = new PageRangeCursor(manifest.pages);
        events.push({ kind: "manifest", manifest });
        break;
      }
      case "page": {
        const digest = createHash("sha256").update(data).digest();
        this.streamHash.update(digest);
        this.pageEntries.add(entry.page, entry.offsetBytes, digest);
        events.push({ kind: "page", page: entry.page, data });
        break;
      }
      case "trailer":
        this.trailer = this.withEntry(entry, () => this.checkTrailer(data));
        break;
    }
    if (paddingBytesAfter(entry.sizeBytes) > 0) this.moveTo({ kind: "padding", entry });
    else this.entryDone(entry);
  }

  /** Compares the trailer with the one this reader would write for what it read; names the first difference. */
  private checkTrailer(bytes: Uint8Array): ArchiveTrailer {
    const trailer = decodeTrailer(bytes);
    const entries = this.pageEntries;
    if (trailer.pageEntries !== entries.count || trailer.pageSha256.length !== entries.count) {
      throw archiveError(`the trailer counts ${trailer.pageEntries} page entries and ${trailer.pageSha256.length} digests; the archive has ${entries.count}`);
    }
    for (let index = 0; index < entries.count; index++) {
      if (trailer.pageSha256[index] !== entries.digestHex(index)) {
        throw archiveError(`page ${entries.page(index)} (entry at offset ${entries.offsetBytes(index)}) does not match its SHA-256 in the trailer: its data is corrupt`);
      }
    }
    if (trailer.streamBytes !== this.streamBytes || trailer.streamSha256 !== this.streamHash.digest("hex")) {
      throw archiveError(`the stream digest in the trailer does not match the ${this.streamBytes} bytes before it: a header, the manifest or padding is corrupt`);
    }
    const expected: ArchiveTrailer = { ...trailer, format: TRAILER_FORMAT, zeroPages: this.zeroPages };
    if (!sameBytes(encodeTrailer(expected), bytes)) throw archiveError("the trailer's zero pages, or its form, differ from what the archive holds");
    return trailer;
  }

  private noteZeroPages(ranges: PageRange[], events: ArchiveEvent[]): void {
    for (const range of ranges) {
      appendRange(this.zeroPages, [range[0], range[1]]);
      events.push({ kind: "zero", firstPage: range[0], pageCount: range[1] });
    }
  }

  private entryDone(entry: Entry): void {
    this.lastGood = { name: entry.name, endBytes: this.offsetBytes };
    this.moveTo(entry.kind === "trailer" ? { kind: "end-blocks" } : { kind: "header" });
  }

  /** Enters `stage`, passing over stages that take no bytes. */
  private moveTo(stage: Stage): void {
    this.stage = stage;
    if (stage.kind === "record-padding" && this.recordPaddingBytes() === 0) this.stage = { kind: "done" };
  }

  private recordPaddingBytes(): number {
    const recordSizeBytes = this.manifest!.recordSizeBytes;
    return (recordSizeBytes - (this.offsetBytes % recordSizeBytes)) % recordSizeBytes;
  }

  /** Runs a check of one entry's content, prefixing its errors with the entry and offset. */
  private withEntry<T>(entry: Entry, check: () => T): T {
    try {
      return check();
    } catch (err) {
      if (!(err instanceof ShoalError) || err.code !== "BAD_ARCHIVE") throw err;
      throw archiveError(`entry '${entry.name}' at offset ${entry.offsetBytes}: ${err.message}`);
    }
  }

  private whereTruncated(): string {
    const stage = this.stage;
    switch (stage.kind) {
      case "data":
      case "padding":
        return `inside entry '${stage.entry.name}' (which starts at offset ${stage.entry.offsetBytes})`;
      case "header":
        return this.gatheredBytes > 0 ? "inside a tar header" : this.manifest ? "before the trailer" : "before the manifest";
      default:
        return "after the trailer, before the end of the last record";
    }
  }

  private lastGoodText(): string {
    return this.lastGood ? `the last good entry is '${this.lastGood.name}', ending at offset ${this.lastGood.endBytes}` : "no entry before it was whole";
  }
}

function unzeroed(sizeBytes: number): Uint8Array {
  const buffer = Buffer.allocUnsafe(sizeBytes);
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

export interface ArchiveVerdict {
  manifest?: ArchiveManifest;
  trailer?: ArchiveTrailer;
  pageEntries: number;
  zeroPages: number;
  /** The first problem; absent when the archive is whole and every digest matches. */
  error?: ShoalError;
}

/** Reads a whole archive and says whether it is good: what `shoal archive verify` reports. */
export function verifyArchive(chunks: Iterable<Uint8Array>): ArchiveVerdict {
  const reader = new ArchiveReader();
  const verdict: ArchiveVerdict = { pageEntries: 0, zeroPages: 0 };
  const tally = (events: ArchiveEvent[]) => {
    for (const event of events) {
      if (event.kind === "manifest") {
        verdict.manifest = event.manifest;
      } else if (event.kind === "page") {
        verdict.pageEntries++;
        reader.release(event.data);
      } else if (event.kind === "zero") {
        verdict.zeroPages += event.pageCount;
      } else {
        verdict.trailer = event.trailer;
      }
    }
  };
  try {
    for (const chunk of chunks) tally(reader.push(chunk));
    tally(reader.end());
  } catch (err) {
    if (!(err instanceof ShoalError)) throw err;
    verdict.error = err;
  }
  return verdict;
}
