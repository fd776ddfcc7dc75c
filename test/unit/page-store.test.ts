import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PageStore } from "../../core/page-store.ts";

const PAGE = 64 * 1024;
const dirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-store-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

describe("PageStore", () => {
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
    expect(reopened.usage().get("v")).toEqual({ pages: 1, bytes: PAGE });
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
  test("more pages than open files: evicted dirty pages are synced and data stays", async () => {
    const store = new PageStore({ dir: tempDir(), maxOpenFiles: 4 });
    for (let page = 0; page < 20; page++) store.write("v", page, 0, new Uint8Array([page + 1]), PAGE);
    await store.flush();
    for (let page = 0; page < 20; page++) {
      const target = new Uint8Array(1);
      store.read("v", page, 0, 1, target, 0);
      expect(target[0]).toBe(page + 1);
    }
  });
  test("dropVolume removes every page of that volume only", () => {
    const store = new PageStore({ dir: tempDir() });
    store.write("a", 0, 0, new Uint8Array([1]), PAGE);
    store.write("b", 0, 0, new Uint8Array([2]), PAGE);
    store.dropVolume("a");
    expect(store.isAllocated("a", 0)).toBe(false);
    expect(store.isAllocated("b", 0)).toBe(true);
  });
});
