// The snapshot archive format, version 1: what a stream holds, in what order, and the limits a
// reader enforces. The writer and the reader both follow this file; change it only with a version.
//
// A POSIX ustar stream (`tar -tvf` lists it; GNU tar and bsdtar extract it), made of:
//   1. `shoal-archive/manifest.json`  the volume, the snapshot (and base, for an incremental), the
//      geometry and the *candidate* pages, in page order, as ranges;
//   2. `shoal-archive/pages/NNNNNNNNNN` one entry per candidate page that holds data, in page order,
//      each exactly pageSizeBytes long (the volume's last page may be shorter);
//   3. `shoal-archive/trailer.json`   the SHA-256 of each page entry, which candidates turned out
//      to be all zeros (and so have no entry), and a digest of the whole stream before it;
//   4. two zero blocks (tar's end-of-archive), then zeros up to a whole record.
// Every entry header is the same ustar header shoal writes (mode 0644, uid/gid 0, mtime =
// createdAtMs in seconds, typeflag '0'); a reader rejects any other.
//
// Zero pages. The writer must state its page list before the first page, but only learns that a
// page is all zeros when it reads it. So the manifest lists candidates, and a candidate with no
// entry is all zeros; the trailer names those (`zeroPages`) so that the list is also written
// down, not only implied. Pages not listed at all are zeros in a full archive and unchanged from
// the base snapshot in an incremental one (`unlisted` in the manifest says which). A zero
// candidate of an incremental must be written as zeros on restore: it changed since the base.
//
// The stream digest. `streamSha256` is SHA-256 over the stream's bytes from offset 0 up to the
// trailer's header (`streamBytes` of them), except that each page entry's data (its size, not its
// block padding) is replaced by the 32 raw bytes of that data's SHA-256. It binds headers,
// manifest, padding and order as a digest of the raw bytes would, and, with the per-page digests
// it contains, every data byte too; but each data byte is hashed once, not twice. SHA-256 is this
// format's bottleneck (about 1.4 GB/s a core here, vs 0.7 GB/s for two passes), so that halves
// the CPU an archive costs. Its price: `sha256sum` cannot check it; `shoal archive verify` can.

/** Bumped on any change a version-1 reader would misread. */
export const ARCHIVE_FORMAT_VERSION = 1;
export const MANIFEST_FORMAT = "shoal-archive";
export const TRAILER_FORMAT = "shoal-archive-trailer";

export const ARCHIVE_DIRECTORY = "shoal-archive";
export const MANIFEST_NAME = `${ARCHIVE_DIRECTORY}/manifest.json`;
export const TRAILER_NAME = `${ARCHIVE_DIRECTORY}/trailer.json`;
export const PAGE_NAME_PREFIX = `${ARCHIVE_DIRECTORY}/pages/`;
/** Zero-padded so that names sort in page order; 10 digits cover every u32 page number. */
export const PAGE_NAME_DIGITS = 10;
export const MAX_PAGE_NUMBER = 10 ** PAGE_NAME_DIGITS - 1;

export const TAR_BLOCK_BYTES = 512;
/** tar's end-of-archive marker: two zero blocks. */
export const END_BLOCKS_BYTES = 2 * TAR_BLOCK_BYTES;
/** GNU tar's default blocking factor 20 (and bsdtar's): what `tar -tf /dev/st0` expects. */
export const DEFAULT_RECORD_SIZE_BYTES = 20 * TAR_BLOCK_BYTES;
/** Larger than any tape drive's block; a reader holds one record. */
export const MAX_RECORD_SIZE_BYTES = 8 * 1024 * 1024;

/**
 * Candidate pages in one archive. Bounds the manifest (a range is at most 15 bytes of JSON), the
 * trailer (67 bytes of JSON a page entry) and the 40 bytes a page entry the reader keeps until
 * the trailer: 4 TiB of data at 4 MiB pages. Larger volumes take larger pages or incrementals.
 */
export const MAX_ARCHIVE_PAGES = 1 << 20;
/** Candidate ranges are a few bytes each; a range per page for 1M pages stays under this. */
export const MAX_MANIFEST_BYTES = 32 * 1024 * 1024;
export const MAX_TRAILER_BYTES = 80 * 1024 * 1024;
