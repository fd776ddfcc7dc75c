// PageStore v2's data path: reads, writes, zeroing, per-layer space (exclusiveBytes) and the
// segment files that keep one layer's file under ext4's largest file size.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PageStore } from "../../core/store/page-store.ts";
import { PAGE, removeTempDirs, tempDir } from "./_store-v2-fixture.ts";

afterEach(removeTempDirs);

describe("PageStore v2", () => {
  test("unwritten pages read as zeros and take no space", () => {
    const store = new PageStore({ dir: tempDir() });
    const target = new Uint8Array(100).fill(7);
    store.read("v", 3, 0, 100, target, 0);
    expect(target.every((b) => b === 0)).toBe(true);
    expect(store.isAllocated("v", 3)).toBe(false);
    expect(store.usage().size).toBe(0);
  });
  test("writes read back, at offsets, and survive reopening", async () => {
    const dir = tempDir();
    const store = new PageStore({ dir });
    store.write("v", 1, 1000, new Uint8Array([1, 2, 3]), PAGE);
    await store.flush();
    store.close();
    const reopened = new PageStore({ dir });
    const target = new Uint8Array(5);
    reopened.read("v", 1, 999, 5, target, 0);
    expect([...target]).toEqual([0, 1, 2, 3, 0]);
    // Bytes held are the chunks written (4 KiB here), not the whole page.
    expect(reopened.usage().get("v")).toEqual({ pages: 1, bytes: 4 * 1024 });
  });
  test("zeroing a whole page frees it; a partial zero keeps the rest", () => {
    const store = new PageStore({ dir: tempDir() });
    store.write("v", 0, 0, new Uint8Array(PAGE).fill(5), PAGE);
    store.zero("v", 0, 10, 10, PAGE);
    const target = new Uint8Array(30);
    store.read("v", 0, 0, 30, target, 0);
    expect([...target.subarray(9, 21)]).toEqual([5, ...new Array(10).fill(0), 5]);
    store.zero("v", 0, 0, PAGE, PAGE);
    expect(store.isAllocated("v", 0)).toBe(false);
  });
  test("many pages in one layer: one file, data stays", async () => {
    const store = new PageStore({ dir: tempDir() });
    for (let page = 0; page < 20; page++) store.write("v", page, 0, new Uint8Array([page + 1]), PAGE);
    await store.flush();
    for (let page = 0; page < 20; page++) {
      const target = new Uint8Array(1);
      store.read("v", page, 0, 1, target, 0);
      expect(target[0]).toBe(page + 1);
    }
  });
  test("deleting a volume's head removes every page of that volume only", async () => {
    const store = new PageStore({ dir: tempDir() });
    store.write("a", 0, 0, new Uint8Array([1]), PAGE);
    store.write("b", 0, 0, new Uint8Array([2]), PAGE);
    await store.deleteLayer("a");
    expect(store.isAllocated("a", 0)).toBe(false);
    expect(store.isAllocated("b", 0)).toBe(true);
  });
});

describe("PageStore v2.exclusiveBytes", () => {
  test("a snapshot frees only the chunks every layer above it has overwritten", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-excl-"));
    try {
      const store = new PageStore({ dir, chunkSizeBytes: 64 * 1024 });
      const pageBytes = 256 * 1024; // four 64 KiB chunks
      store.write("vol", 0, 0, new Uint8Array(pageBytes).fill(1), pageBytes);
      store.write("vol", 1, 0, new Uint8Array(pageBytes).fill(2), pageBytes);
      store.freezeLayer("vol", "vol@s1");
      expect(store.exclusiveBytes("vol@s1")).toBe(0); // the head reads everything through
      store.write("vol", 0, 0, new Uint8Array(64 * 1024).fill(3), pageBytes); // one whole chunk
      store.write("vol", 1, 10, new Uint8Array(10).fill(4), pageBytes); // part of a chunk: copied up
      expect(store.exclusiveBytes("vol@s1")).toBe(2 * 64 * 1024);
      store.createLayer("clone", "vol@s1"); // a clone reads everything through again
      expect(store.exclusiveBytes("vol@s1")).toBe(0);
      store.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("PageStore v2 segment files", () => {
  test("pages past 16 TiB (ext4's largest file) land in 4 TiB segment files, survive reopening and go with their layer", async () => {
    const dir = tempDir();
    const pageBytes = 4 * 1024 * 1024;
    const TiB = 2 ** 40;
    const store = new PageStore({ dir });
    const lastPage = (64 * TiB) / pageBytes - 1; // the last page of a 64 TiB volume
    const middlePage = (5 * TiB) / pageBytes; // segment 1
    store.write("v", 0, 0, new Uint8Array(4096).fill(1), pageBytes);
    store.write("v", middlePage, 4096, new Uint8Array(4096).fill(2), pageBytes);
    store.write("v", lastPage, pageBytes - 4096, new Uint8Array(4096).fill(3), pageBytes);
    await store.flush();
    const files = fs.readdirSync(path.join(dir, "store")).filter((name) => name.endsWith(".layer")).sort();
    expect(files).toHaveLength(3);
    for (const name of files) expect(fs.statSync(path.join(dir, "store", name)).size).toBeLessThanOrEqual(4 * TiB);
    store.close();
    const reopened = new PageStore({ dir });
    const target = new Uint8Array(4096);
    reopened.read("v", lastPage, pageBytes - 4096, 4096, target, 0);
    expect(target.every((byte) => byte === 3)).toBe(true);
    reopened.read("v", middlePage, 4096, 4096, target, 0);
    expect(target.every((byte) => byte === 2)).toBe(true);
    await reopened.deleteLayer("v");
    await reopened.flush();
    await Bun.sleep(50); // the removed layer's files are unlinked off the event loop
    expect(fs.readdirSync(path.join(dir, "store")).filter((name) => name.endsWith(".layer"))).toEqual([]);
    reopened.close();
  });
});
