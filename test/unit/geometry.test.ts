import { describe, expect, test } from "bun:test";
import { ShoalError } from "../../core/errors.ts";
import { DEFAULT_PAGE_SIZE_BYTES, formatSize, pageCount, parseSize, slicePages, validateGeometry } from "../../core/geometry.ts";

describe("parseSize", () => {
  test("accepts binary suffixes in either case and plain bytes", () => {
    expect(parseSize("512")).toBe(512);
    expect(parseSize("4K")).toBe(4096);
    expect(parseSize("4m")).toBe(4 * 1024 * 1024);
    expect(parseSize("10G")).toBe(10 * 1024 ** 3);
    expect(parseSize("1T")).toBe(1024 ** 4);
    expect(parseSize("64KiB")).toBe(65536);
    expect(parseSize("1.5G")).toBe(1.5 * 1024 ** 3);
  });
  test("rejects what is not a size with BAD_ARGUMENT", () => {
    for (const bad of ["", "ten", "10X", "-5", "1e9"]) {
      expect(() => parseSize(bad)).toThrow(ShoalError);
    }
  });
  test("formatSize prints exact units when it can", () => {
    expect(formatSize(4 * 1024 * 1024)).toBe("4M");
    expect(formatSize(1024 ** 4)).toBe("1T");
    expect(formatSize(1536)).toBe("1.5K");
  });
});

describe("slicePages", () => {
  const geometry = { sizeBytes: 10 * DEFAULT_PAGE_SIZE_BYTES, pageSizeBytes: DEFAULT_PAGE_SIZE_BYTES };
  test("a request inside one page is one slice", () => {
    expect(slicePages(geometry, 4096, 8192)).toEqual([{ page: 0, pageOffset: 4096, length: 8192, bufferOffset: 0 }]);
  });
  test("a request across pages is cut at page boundaries, in order, covering every byte once", () => {
    const offset = DEFAULT_PAGE_SIZE_BYTES - 1024;
    const length = DEFAULT_PAGE_SIZE_BYTES + 4096;
    const slices = slicePages(geometry, offset, length);
    expect(slices.map((s) => s.page)).toEqual([0, 1, 2]);
    expect(slices.reduce((sum, s) => sum + s.length, 0)).toBe(length);
    expect(slices[1]).toEqual({ page: 1, pageOffset: 0, length: DEFAULT_PAGE_SIZE_BYTES, bufferOffset: 1024 });
    expect(slices[2]!.length).toBe(3072);
  });
  test("past the end is OUT_OF_RANGE", () => {
    expect(() => slicePages(geometry, geometry.sizeBytes - 512, 1024)).toThrow(/past the end/);
  });
  test("pageCount rounds a partial last page up", () => {
    expect(pageCount({ sizeBytes: DEFAULT_PAGE_SIZE_BYTES + 512, pageSizeBytes: DEFAULT_PAGE_SIZE_BYTES })).toBe(2);
  });
  test("validateGeometry refuses odd page sizes and sizes", () => {
    expect(() => validateGeometry({ sizeBytes: 1000, pageSizeBytes: DEFAULT_PAGE_SIZE_BYTES })).toThrow(ShoalError);
    expect(() => validateGeometry({ sizeBytes: 1 << 20, pageSizeBytes: 3 * 65536 })).toThrow(/power of two/);
    expect(() => validateGeometry({ sizeBytes: 1 << 20, pageSizeBytes: 512 })).toThrow(ShoalError);
  });
});
