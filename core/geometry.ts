// Block and page arithmetic for volumes: sizes with suffixes, and cutting a byte range into the
// per-page pieces that the router sends to each page's owner.
import { ShoalError } from "./errors.ts";

export const BLOCK_SIZE_BYTES = 512;
export const DEFAULT_PAGE_BLOCKS = 8192;
export const DEFAULT_PAGE_SIZE_BYTES = BLOCK_SIZE_BYTES * DEFAULT_PAGE_BLOCKS; // 4 MiB
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024; // NBD's customary maximum payload
export const MIN_PAGE_SIZE_BYTES = 64 * 1024;
export const MAX_PAGE_SIZE_BYTES = 256 * 1024 * 1024;
/**
 * The most pages a volume may have: 64 TiB at the default 4 MiB page (1 TiB at 64 KiB pages).
 * Every node holds each volume's owner map in memory at 2 bytes a page (32 MiB at this bound),
 * and rebuilds it whenever a table arrives; a larger volume needs a larger page size.
 */
export const MAX_VOLUME_PAGES = 16 * 1024 * 1024;

const SUFFIXES: Record<string, number> = {
  "": 1,
  B: 1,
  K: 1024,
  M: 1024 ** 2,
  G: 1024 ** 3,
  T: 1024 ** 4,
  P: 1024 ** 5,
};

/** Parses "10G", "4M", "512", "1.5T", "64KiB" into bytes (binary units, as qemu-img and rbd do). */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$/i.exec(text);
  if (!match) {
    throw new ShoalError("BAD_ARGUMENT", `'${text}' is not a size; use a number with an optional K, M, G, T or P suffix`);
  }
  const bytes = Number(match[1]) * SUFFIXES[match[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(Math.round(bytes))) throw new ShoalError("BAD_ARGUMENT", `size '${text}' is too large`);
  return Math.round(bytes);
}

export function formatSize(bytes: number): string {
  const units = ["B", "K", "M", "G", "T", "P"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1 && value % 1024 === 0) {
    value /= 1024;
    unit++;
  }
  if (value >= 1024 && unit < units.length - 1) {
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit++;
    }
    return `${value.toFixed(1)}${units[unit]}`;
  }
  return `${value}${units[unit]}`;
}

export interface Geometry {
  sizeBytes: number;
  pageSizeBytes: number;
}

export function validateGeometry(geometry: Geometry): void {
  const { sizeBytes, pageSizeBytes } = geometry;
  if (!Number.isSafeInteger(pageSizeBytes) || pageSizeBytes % BLOCK_SIZE_BYTES !== 0) {
    throw new ShoalError("BAD_ARGUMENT", `page size ${pageSizeBytes} must be a multiple of ${BLOCK_SIZE_BYTES} bytes`);
  }
  if (pageSizeBytes < MIN_PAGE_SIZE_BYTES || pageSizeBytes > MAX_PAGE_SIZE_BYTES) {
    throw new ShoalError("BAD_ARGUMENT", `page size must be between ${formatSize(MIN_PAGE_SIZE_BYTES)} and ${formatSize(MAX_PAGE_SIZE_BYTES)}`);
  }
  if ((pageSizeBytes & (pageSizeBytes - 1)) !== 0) {
    throw new ShoalError("BAD_ARGUMENT", `page size ${pageSizeBytes} must be a power of two`);
  }
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % BLOCK_SIZE_BYTES !== 0) {
    throw new ShoalError("BAD_ARGUMENT", `volume size must be a positive multiple of ${BLOCK_SIZE_BYTES} bytes`);
  }
  const pages = pageCount(geometry);
  if (pages > MAX_VOLUME_PAGES) {
    throw new ShoalError(
      "BAD_ARGUMENT",
      `volume size ${formatSize(sizeBytes)} at ${formatSize(pageSizeBytes)} pages is ${pages} pages, over the maximum of ${MAX_VOLUME_PAGES} ` +
        `(${formatSize(MAX_VOLUME_PAGES * pageSizeBytes)} at this page size); use a smaller --size or a larger --page-size`,
    );
  }
}

export function pageCount(geometry: Geometry): number {
  return Math.ceil(geometry.sizeBytes / geometry.pageSizeBytes);
}

/** One page's share of a request: `length` bytes at `pageOffset` in `page`, `bufferOffset` into the request. */
export interface PageSlice {
  page: number;
  pageOffset: number;
  length: number;
  bufferOffset: number;
}

/** Throws OUT_OF_RANGE unless [offset, offset+length) lies inside the volume. */
export function checkRange(geometry: Geometry, offset: number, length: number): void {
  if (offset < 0 || length < 0 || offset + length > geometry.sizeBytes) {
    throw new ShoalError(
      "OUT_OF_RANGE",
      `request of ${length} bytes at offset ${offset} is past the end of the volume (${geometry.sizeBytes} bytes)`,
    );
  }
}

/** Cuts a byte range into per-page slices, in order. */
export function slicePages(geometry: Geometry, offset: number, length: number): PageSlice[] {
  checkRange(geometry, offset, length);
  const slices: PageSlice[] = [];
  const pageSize = geometry.pageSizeBytes;
  let cursor = offset;
  const end = offset + length;
  while (cursor < end) {
    const page = Math.floor(cursor / pageSize);
    const pageOffset = cursor - page * pageSize;
    const sliceLength = Math.min(pageSize - pageOffset, end - cursor);
    slices.push({ page, pageOffset, length: sliceLength, bufferOffset: cursor - offset });
    cursor += sliceLength;
  }
  return slices;
}
