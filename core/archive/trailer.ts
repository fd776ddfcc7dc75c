// The archive's last entry: each page entry's SHA-256, the candidates that were all zeros, and
// the stream digest (defined in format.ts). The reader rebuilds the trailer it expects from what
// it read and demands the same bytes, so no byte of the trailer can change unnoticed.
import { TRAILER_FORMAT } from "./format.ts";
import type { PageRange } from "./_page-ranges.ts";
import { archiveError, parseJsonObject } from "./manifest.ts";

export interface ArchiveTrailer {
  format: typeof TRAILER_FORMAT;
  /** Page entries in the archive (candidates minus zero pages). */
  pageEntries: number;
  /** Candidates that were all zeros and so have no entry. */
  zeroPages: PageRange[];
  /** Hex SHA-256 of each page entry's data, in entry order. */
  pageSha256: string[];
  /** Offset of the trailer's header: the bytes streamSha256 covers. */
  streamBytes: number;
  streamSha256: string;
}

export function encodeTrailer(trailer: ArchiveTrailer): Uint8Array {
  const ordered: ArchiveTrailer = {
    format: trailer.format,
    pageEntries: trailer.pageEntries,
    zeroPages: trailer.zeroPages,
    pageSha256: trailer.pageSha256,
    streamBytes: trailer.streamBytes,
    streamSha256: trailer.streamSha256,
  };
  return new TextEncoder().encode(`${JSON.stringify(ordered)}\n`);
}

/** Parses a trailer far enough to say which field is wrong; exact bytes are compared after. */
export function decodeTrailer(bytes: Uint8Array): ArchiveTrailer {
  const value = parseJsonObject(bytes, "trailer");
  if (value.format !== TRAILER_FORMAT) throw archiveError(`the trailer's format is ${JSON.stringify(value.format)}, not "${TRAILER_FORMAT}"`);
  if (!Number.isSafeInteger(value.pageEntries)) throw archiveError("the trailer has no page entry count");
  if (!Array.isArray(value.pageSha256) || !value.pageSha256.every((hex) => typeof hex === "string")) throw archiveError("the trailer has no list of page SHA-256s");
  if (!Array.isArray(value.zeroPages)) throw archiveError("the trailer has no list of zero pages");
  if (!Number.isSafeInteger(value.streamBytes) || typeof value.streamSha256 !== "string") throw archiveError("the trailer has no stream digest");
  return value as unknown as ArchiveTrailer;
}
