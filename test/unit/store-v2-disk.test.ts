// What the extent-file store costs on disk and how it meets damage: syscalls per FLUSH and per
// cut counted through its file-I/O interface, files per layer, bounded dirty data, and a clear
// refusal (file named) of a damaged journal or layer file, never wrong bytes.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { RealFileIO } from "../../core/store/file-io.ts";
import { PageStore } from "../../core/store/page-store.ts";
import { setFatalHandler } from "../../core/invariant.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4 * MiB;
const dirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-store-v2-disk-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

/** The real file I/O, counting the calls that reach the disk. */
class CountingIO extends RealFileIO {
  counts = { fdatasync: 0, syncDir: 0, open: 0, rename: 0, unlink: 0 };
  reset(): void {
    for (const key of Object.keys(this.counts) as (keyof typeof this.counts)[]) this.counts[key] = 0;
  }
  override fdatasync(fd: number): Promise<void> {
    this.counts.fdatasync++;
    return super.fdatasync(fd);
  }
  override syncDir(dir: string): Promise<void> {
    this.counts.syncDir++;
    return super.syncDir(dir);
  }
  override open(filePath: string, create: boolean): number {
    this.counts.open++;
    return super.open(filePath, create);
  }
  override rename(from: string, to: string): void {
    this.counts.rename++;
    super.rename(from, to);
  }
  override unlink(filePath: string): void {
    this.counts.unlink++;
    super.unlink(filePath);
  }
  override unlinkAsync(filePath: string): Promise<void> {
    this.counts.unlink++;
    return super.unlinkAsync(filePath);
  }
}

const block = (fill: number) => new Uint8Array(4 * KiB).fill(fill);

describe("PageStore v2 costs", () => {
  test("a FLUSH costs one fdatasync per layer written and one journal commit, however many pages", async () => {
    const dir = tempDir();
    const io = new CountingIO();
    const store = new PageStore({ dir, io });
    // 1,000 pages over a 1 TiB address space, in three volumes.
    for (let index = 0; index < 1000; index++) store.write(["a", "b", "c"][index % 3]!, index * 262, 0, block(1 + (index % 200)), PAGE);
    io.reset();
    await store.flush();
    expect(io.counts).toEqual({ fdatasync: 3 + 1, syncDir: 1, open: 0, rename: 0, unlink: 0 }); // 3 files, journal; the new files' names
    expect(fs.readdirSync(path.join(dir, "store")).sort()).toEqual(["1.layer", "2.layer", "3.layer", "journal"]);
    // Each page's map record is runs of chunk states (a 4 KiB write in a 4 MiB page: 2 runs), not 1,024 bytes.
    expect(fs.statSync(path.join(dir, "store", "journal")).size).toBeLessThan(1000 * 32);
    for (let index = 0; index < 500; index++) store.write("a", index * 523, 4 * KiB, block(7), PAGE);
    io.reset();
    await store.flush();
    expect(io.counts).toEqual({ fdatasync: 1 + 1, syncDir: 0, open: 0, rename: 0, unlink: 0 });
    io.reset();
    await store.flush(); // nothing left
    expect(io.counts.fdatasync + io.counts.syncDir).toBe(0);
    store.close();
    const reopened = new PageStore({ dir });
    const read = new Uint8Array(8 * KiB);
    reopened.read("a", 999 * 262 - 262 * 0, 0, 8 * KiB, read, 0);
    reopened.read("a", 523 * 499, 0, 8 * KiB, read, 0);
    expect(read.subarray(4 * KiB).every((byte) => byte === 7)).toBe(true);
    reopened.close();
  });

  test("a snapshot's cut syncs the snapshot's file and the journal, not other volumes' writes", async () => {
    const dir = tempDir();
    const io = new CountingIO();
    const store = new PageStore({ dir, io });
    for (let page = 0; page < 300; page++) store.write("a", page * 100, 0, block(1), PAGE);
    for (let page = 0; page < 300; page++) store.write("b", page * 100, 0, block(2), PAGE);
    store.freezeLayer("a", "a@s1");
    io.reset();
    await store.flushLayers(["a@s1"]);
    expect(io.counts).toEqual({ fdatasync: 1 + 1, syncDir: 1, open: 0, rename: 0, unlink: 0 });
    expect(store.dirtyBytes).toBe(300 * 4 * KiB); // b's writes wait for the next FLUSH
    // The head's first writes after the cut make one new file, not one per page.
    io.reset();
    for (let page = 0; page < 300; page++) store.write("a", page * 100, 100, new Uint8Array(10).fill(9), PAGE);
    expect(io.counts.open).toBe(1);
    store.close();
  });

  test("deleting a snapshot is a merge into its child and one unlink", async () => {
    const dir = tempDir();
    const io = new CountingIO();
    const store = new PageStore({ dir, io });
    for (let page = 0; page < 200; page++) store.write("v", page, 0, block(page % 250), PAGE);
    store.freezeLayer("v", "v@s1");
    for (let page = 0; page < 200; page += 2) store.write("v", page, 0, block(251), PAGE);
    await store.flush();
    io.reset();
    await store.deleteLayer("v@s1");
    expect(io.counts.unlink).toBe(1);
    const layerFiles = () => fs.readdirSync(path.join(dir, "store")).filter((name) => name.endsWith(".layer"));
    for (let waitedMs = 0; waitedMs < 5000 && layerFiles().length > 1; waitedMs += 5) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(layerFiles()).toHaveLength(1); // removed off the event loop
    const read = new Uint8Array(4 * KiB);
    for (const page of [0, 1, 198, 199]) {
      store.read("v", page, 0, 4 * KiB, read, 0);
      expect(read.every((byte) => byte === (page % 2 === 0 ? 251 : page % 250))).toBe(true);
    }
    store.close();
  });

  test("dirty data stays bounded: past the limit a write-back starts, and a writer that waits on it never holds more", async () => {
    const limit = 1 * MiB;
    const store = new PageStore({ dir: tempDir(), dirtyLimitBytes: limit });
    let most = 0;
    const data = new Uint8Array(64 * KiB).fill(3);
    for (let index = 0; index < 256; index++) {
      if (store.dirtyBytes >= limit) await store.writeBack();
      store.write("v", index, 0, data, PAGE);
      most = Math.max(most, store.dirtyBytes);
    }
    expect(most).toBeLessThanOrEqual(limit + data.byteLength);
    await store.writeBack();
    expect(store.dirtyBytes).toBe(0);
    // A writer that does not wait: past the limit the store starts a write-back by itself.
    for (let index = 0; index < 32; index++) store.write("v", index, 0, data, PAGE);
    // It took what was dirty when the limit was crossed; the rest waits for the next.
    expect(store.dirtyBytes).toBe(32 * data.byteLength - limit);
    const syncs = store.syncCount;
    for (let waitedMs = 0; waitedMs < 5000 && store.syncCount === syncs; waitedMs += 5) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(store.syncCount).toBeGreaterThan(syncs);
    store.close();
  });

  test("writeBackIfDirty: nothing to sync is no sync; below the limit it writes back what is dirty, one write-back at a time", async () => {
    const store = new PageStore({ dir: tempDir(), dirtyLimitBytes: 64 * MiB });
    store.writeBackIfDirty();
    expect(store.syncCount).toBe(0);
    store.write("v", 0, 0, new Uint8Array(64 * KiB).fill(9), PAGE);
    store.writeBackIfDirty();
    store.writeBackIfDirty(); // the one running covers it
    expect(store.dirtyBytes).toBe(0); // taken by the write-back
    for (let waitedMs = 0; waitedMs < 5000 && store.syncCount < 3; waitedMs += 5) await new Promise((resolve) => setTimeout(resolve, 5));
    await new Promise((resolve) => setTimeout(resolve, 20));
    const syncs = store.syncCount;
    expect(syncs).toBe(3); // one write-back: the new layer file, the directory, the journal
    store.writeBackIfDirty();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(store.syncCount).toBe(syncs);
    store.close();
  });
});

describe("PageStore v2 on damaged disks", () => {
  async function storeWithData(dir: string): Promise<void> {
    const store = new PageStore({ dir });
    store.write("v", 3, 0, block(5), PAGE);
    await store.flush();
    store.write("v", 4, 0, block(6), PAGE);
    await store.flush();
    store.close();
  }
  const journalOf = (dir: string) => path.join(dir, "store", "journal");

  test("a torn last commit is cut off; everything before it reads", async () => {
    const dir = tempDir();
    const store = new PageStore({ dir });
    store.write("v", 3, 0, block(5), PAGE);
    await store.flush();
    const size = fs.statSync(journalOf(dir)).size;
    store.write("v", 4, 0, block(6), PAGE);
    await store.flush();
    // As if the power went mid-append: the last frame half there.
    const grown = fs.statSync(journalOf(dir)).size;
    fs.truncateSync(journalOf(dir), size + Math.floor((grown - size) / 2));
    const reopened = new PageStore({ dir });
    const read = new Uint8Array(4 * KiB);
    reopened.read("v", 3, 0, 4 * KiB, read, 0);
    expect(read.every((byte) => byte === 5)).toBe(true);
    expect(reopened.isAllocated("v", 4)).toBe(false); // never acknowledged: gone, not garbage
    reopened.write("v", 5, 0, block(7), PAGE);
    await reopened.flush();
    reopened.close();
    const again = new PageStore({ dir });
    again.read("v", 5, 0, 4 * KiB, read, 0);
    expect(read.every((byte) => byte === 7)).toBe(true);
    again.close();
  });

  test("a damaged commit with good ones after it is refused, naming the journal", async () => {
    const dir = tempDir();
    const store = new PageStore({ dir });
    store.write("v", 3, 0, block(5), PAGE);
    await store.flush();
    const middle = fs.statSync(journalOf(dir)).size;
    store.write("v", 4, 0, block(6), PAGE);
    await store.flush();
    store.write("v", 5, 0, block(7), PAGE);
    await store.flush();
    const journal = fs.openSync(journalOf(dir), "r+");
    fs.writeSync(journal, new Uint8Array([0xff]), 0, 1, middle + 20);
    fs.closeSync(journal);
    expect(() => new PageStore({ dir })).toThrow(expect.objectContaining({ code: "IO_ERROR", message: expect.stringContaining(journalOf(dir)) }));
  });

  test("a layer file shorter than its map says is refused, naming the file", async () => {
    const dir = tempDir();
    await storeWithData(dir);
    const layerFile = path.join(dir, "store", "1.layer");
    fs.truncateSync(layerFile, 4 * PAGE);
    expect(() => new PageStore({ dir })).toThrow(expect.objectContaining({ code: "IO_ERROR", message: expect.stringContaining(`${layerFile} of layer 'v' is ${4 * PAGE} bytes`) }));
  });

  test("layer files without a journal, and an empty journal, are refused", async () => {
    const dir = tempDir();
    await storeWithData(dir);
    fs.writeFileSync(journalOf(dir), "");
    expect(() => new PageStore({ dir })).toThrow(expect.objectContaining({ code: "IO_ERROR", message: expect.stringContaining("empty") }));
    fs.rmSync(journalOf(dir));
    expect(() => new PageStore({ dir })).toThrow(expect.objectContaining({ code: "IO_ERROR", message: expect.stringContaining("no journal") }));
  });

  test("a store made with one chunk size refuses another", async () => {
    const dir = tempDir();
    new PageStore({ dir, chunkSizeBytes: 64 * KiB }).close();
    expect(() => new PageStore({ dir, chunkSizeBytes: 4 * KiB })).toThrow(expect.objectContaining({ code: "BAD_ARGUMENT" }));
    new PageStore({ dir }).close();
  });
});

describe("PageStore v2 and a failing disk", () => {
  test("a failed fdatasync is fatal: the node's handler hears of it, never a retry that could report lost bytes as durable", async () => {
    const io = new (class extends RealFileIO {
      failing = false;
      override fdatasync(fd: number): Promise<void> {
        if (this.failing) return Promise.reject(Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" }));
        return super.fdatasync(fd);
      }
    })();
    const heard: string[] = [];
    const previous = setFatalHandler((_err, reason) => heard.push(reason));
    try {
      const store = new PageStore({ dir: tempDir(), io });
      store.write("v", 0, 0, block(1), PAGE);
      await store.flush();
      expect(heard).toEqual([]);
      store.write("v", 0, 0, block(2), PAGE);
      io.failing = true;
      await expect(store.flush()).rejects.toThrow(/EIO/);
      expect(heard).toEqual(["syncing the page store failed"]);
      io.failing = false;
      store.close();
    } finally {
      setFatalHandler(previous);
    }
  });
});
