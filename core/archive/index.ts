// Snapshot archives: a volume snapshot as a POSIX tar stream of whole records (format.ts).
export * from "./format.ts";
export { ArchiveWriter, isAllZero, pageEntryName } from "./writer.ts";
export { ArchiveReader, verifyArchive, type ArchiveEvent, type ArchiveVerdict } from "./reader.ts";
export { RecordBlocker, recordsOf } from "./record-blocker.ts";
export type { ArchiveManifest, ArchiveSpec } from "./manifest.ts";
export type { ArchiveTrailer } from "./trailer.ts";
export type { PageRange } from "./_page-ranges.ts";
