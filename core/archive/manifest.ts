// The archive's first entry: which volume and snapshot it holds, the geometry, and the candidate
// pages that follow. One function writes its canonical JSON, so the reader can demand exactly it.
import { ShoalError } from "../errors.ts";
import { pageCount, validateGeometry } from "../geometry.ts";
import { rangeListProblem, rangesOf, pagesIn, type PageRange } from "./_page-ranges.ts";
import {
  ARCHIVE_FORMAT_VERSION,
  MANIFEST_FORMAT,
  MAX_ARCHIVE_PAGES,
  MAX_PAGE_NUMBER,
  MAX_RECORD_SIZE_BYTES,
  TAR_BLOCK_BYTES,
  DEFAULT_RECORD_SIZE_BYTES,
} from "./format.ts";

export interface ArchiveManifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  volume: string;
  volumeUid: string;
  sizeBytes: number;
  pageSizeBytes: number;
  /** The snapshot archived: its name, its unique id, and its cut time T. */
  snapshot: { name: string; id: string; cutAtMs: number };
  /** For an incremental: the snapshot whose contents the unlisted pages keep. */
  base: { name: string; id: string } | null;
  /** Candidate pages in page order: each has a page entry, or is all zeros (see `omitted`). */
  pages: PageRange[];
  candidatePages: number;
  /** What a candidate with no entry holds. */
  omitted: "zero";
  /** What a page not listed holds: zeros (a full archive) or the base's data (an incremental). */
  unlisted: "zero" | "base";
  createdAtMs: number;
  /** The writer's record: the stream is whole records of this size. */
  recordSizeBytes: number;
}

/** What the caller knows when it starts an archive; the writer derives the rest. */
export interface ArchiveSpec {
  volume: string;
  volumeUid: string;
  sizeBytes: number;
  pageSizeBytes: number;
  snapshot: { name: string; id: string; cutAtMs: number };
  base: { name: string; id: string } | null;
  /** Pages that may hold data (or, for an incremental, may differ from the base), increasing. */
  pages: readonly number[];
  createdAtMs: number;
  recordSizeBytes?: number;
}

const MAX_LABEL_CHARS = 256;

/** `--record-size` as typed, checked before any node is asked (so "abc" is not "record size NaN"). */
export function parseRecordSize(text: string): number {
  const recordSizeBytes = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  checkRecordSize(recordSizeBytes, text);
  return recordSizeBytes;
}

function checkRecordSize(recordSizeBytes: number, asGiven: string): void {
  if (!Number.isSafeInteger(recordSizeBytes) || recordSizeBytes < TAR_BLOCK_BYTES || recordSizeBytes > MAX_RECORD_SIZE_BYTES || recordSizeBytes % TAR_BLOCK_BYTES !== 0) {
    throw new ShoalError("BAD_ARGUMENT", `record size '${asGiven}' must be a number of bytes, a multiple of ${TAR_BLOCK_BYTES}, at most ${MAX_RECORD_SIZE_BYTES}`);
  }
}

export function manifestOf(spec: ArchiveSpec): ArchiveManifest {
  const recordSizeBytes = spec.recordSizeBytes ?? DEFAULT_RECORD_SIZE_BYTES;
  checkRecordSize(recordSizeBytes, String(recordSizeBytes));
  const pages = rangesOf(spec.pages);
  if (pages === undefined) throw new ShoalError("INTERNAL", "archive candidate pages must be strictly increasing integers");
  const manifest = canonicalManifest({
    ...spec,
    // Whole milliseconds, as every reader of this format version expects; node clocks read finer.
    snapshot: { ...spec.snapshot, cutAtMs: Math.floor(spec.snapshot.cutAtMs) },
    format: MANIFEST_FORMAT,
    version: ARCHIVE_FORMAT_VERSION,
    pages,
    candidatePages: spec.pages.length,
    omitted: "zero",
    unlisted: spec.base === null ? "zero" : "base",
    recordSizeBytes,
  });
  const problem = manifestProblem(manifest);
  if (problem !== undefined) throw new ShoalError("BAD_ARGUMENT", `cannot archive: the manifest ${problem}`);
  return manifest;
}

/** The manifest entry's bytes: compact JSON in a fixed key order, and a newline for `tar -xO`. */
export function encodeManifest(manifest: ArchiveManifest): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(canonicalManifest(manifest))}\n`);
}

/**
 * Parses and checks a manifest entry. The version is checked before anything else so that a
 * newer archive is reported as newer, not as malformed.
 */
export function decodeManifest(bytes: Uint8Array): ArchiveManifest {
  const value = parseJsonObject(bytes, "manifest");
  if (value.format !== MANIFEST_FORMAT) throw archiveError(`the manifest's format is ${JSON.stringify(value.format)}, not "${MANIFEST_FORMAT}": not a shoal archive`);
  const version = value.version;
  if (!Number.isSafeInteger(version) || (version as number) < 1) throw archiveError(`the manifest's format version ${JSON.stringify(version)} is not a version`);
  if ((version as number) > ARCHIVE_FORMAT_VERSION) {
    throw archiveError(`archive format version ${version} is newer than this shoal (${ARCHIVE_FORMAT_VERSION}); read it with a newer shoal`);
  }
  const problem = manifestProblem(value as unknown as ArchiveManifest);
  if (problem !== undefined) throw archiveError(`the manifest ${problem}`);
  const manifest = canonicalManifest(value as unknown as ArchiveManifest);
  if (!sameBytes(encodeManifest(manifest), bytes)) throw archiveError("the manifest is not in the exact form shoal writes (extra fields, spacing or key order)");
  return manifest;
}

/** Why the manifest is unusable, or undefined. Shared by writer (BAD_ARGUMENT) and reader (BAD_ARCHIVE). */
function manifestProblem(m: ArchiveManifest): string | undefined {
  if (!isLabel(m.volume) || !isLabel(m.volumeUid)) return "has no valid volume name or uid";
  if (!isRecord(m.snapshot) || !isLabel(m.snapshot.name) || !isLabel(m.snapshot.id) || !isTimeMs(m.snapshot.cutAtMs)) return "has no valid snapshot name, id and cutAtMs";
  if (m.base !== null && (!isRecord(m.base) || !isLabel(m.base.name) || !isLabel(m.base.id))) return "has a base that is neither null nor a snapshot name and id";
  if (!isTimeMs(m.createdAtMs)) return "has no valid createdAtMs";
  if (m.omitted !== "zero" || m.unlisted !== (m.base === null ? "zero" : "base")) return "does not say how omitted and unlisted pages read";
  const rec = m.recordSizeBytes;
  if (!Number.isSafeInteger(rec) || rec < TAR_BLOCK_BYTES || rec > MAX_RECORD_SIZE_BYTES || rec % TAR_BLOCK_BYTES !== 0) return `has record size ${rec}, not a multiple of ${TAR_BLOCK_BYTES} up to ${MAX_RECORD_SIZE_BYTES}`;
  try {
    validateGeometry({ sizeBytes: m.sizeBytes, pageSizeBytes: m.pageSizeBytes });
  } catch (err) {
    return `has an invalid geometry: ${(err as Error).message}`;
  }
  const volumePages = pageCount(m);
  if (volumePages - 1 > MAX_PAGE_NUMBER) return `describes ${volumePages} pages, more than page names can number`;
  const rangeProblem = rangeListProblem(m.pages, volumePages);
  if (rangeProblem !== undefined) return `page list ${rangeProblem}`;
  const candidates = pagesIn(m.pages);
  if (candidates !== m.candidatePages) return `lists ${candidates} candidate pages but says ${JSON.stringify(m.candidatePages)}`;
  if (candidates > MAX_ARCHIVE_PAGES) return `lists ${candidates} pages, over the ${MAX_ARCHIVE_PAGES} an archive holds`;
  return undefined;
}

/** The manifest's fields in their one key order (what JSON.stringify then writes). */
function canonicalManifest(m: ArchiveManifest): ArchiveManifest {
  return {
    format: m.format,
    version: m.version,
    volume: m.volume,
    volumeUid: m.volumeUid,
    sizeBytes: m.sizeBytes,
    pageSizeBytes: m.pageSizeBytes,
    snapshot: { name: m.snapshot.name, id: m.snapshot.id, cutAtMs: m.snapshot.cutAtMs },
    base: m.base === null ? null : { name: m.base.name, id: m.base.id },
    pages: m.pages,
    candidatePages: m.candidatePages,
    omitted: m.omitted,
    unlisted: m.unlisted,
    createdAtMs: m.createdAtMs,
    recordSizeBytes: m.recordSizeBytes,
  };
}

export function archiveError(message: string): ShoalError {
  return new ShoalError("BAD_ARCHIVE", message);
}

export function parseJsonObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw archiveError(`the ${what} is not JSON: ${(err as Error).message}`);
  }
  if (!isRecord(value)) throw archiveError(`the ${what} is not a JSON object`);
  return value;
}

export function sameBytes(left: Uint8Array, right: Uint8Array): boolean {
  return left.byteLength === right.byteLength && Buffer.compare(left, right) === 0;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isLabel(value: unknown): value is string {
  return typeof value === "string" && value.length > 0 && value.length <= MAX_LABEL_CHARS;
}

function isTimeMs(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}
