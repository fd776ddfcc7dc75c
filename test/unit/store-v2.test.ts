import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PageStore } from "../../core/store/page-store.ts";
import { LayerModel, prng, SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES, SCENARIO_PAGES } from "./_layer-model.ts";
import { buildScenarioOn as buildScenario, expectReads as expectLayerReads } from "./_store-v2-model.ts";

const PAGE = 64 * 1024;
const dirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-store-v2-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

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

// ---- layers: snapshots, clones, rollback, deletion

const KiB = 1024;

function layerFiles(dir: string): string[] {
  const root = path.join(dir, "store");
  return fs.readdirSync(root).filter((name) => name.endsWith(".layer")).map((name) => path.join(root, name));
}

function reopen(store: PageStore, dir: string, options: { chunkSizeBytes?: number; maxOpenFiles?: number } = {}): PageStore {
  store.close();
  return new PageStore({ dir, ...options });
}

function parentsOf(store: PageStore): Record<string, string | undefined> {
  return Object.fromEntries(store.layers().map((layer) => [layer.id, layer.parent]));
}

describe("PageStore v2 layers", () => {
  test("a snapshot keeps every byte of a chunk the head then overwrites in part; only that chunk is copied", () => {
    const dir = tempDir();
    const store = new PageStore({ dir, chunkSizeBytes: 64 * KiB });
    const pageBytes = 4 * 1024 * KiB;
    const random = prng(7);
    const original = random.bytes(pageBytes);
    store.write("v", 0, 0, original, pageBytes);
    store.freezeLayer("v", "v@s1");
    const patch = random.bytes(4 * KiB);
    store.write("v", 0, 70_000, patch, pageBytes);

    const model = new LayerModel(pageBytes, 1);
    model.write("v@s1", 0, 0, original);
    model.write("v", 0, 0, original);
    model.write("v", 0, 70_000, patch);
    expectLayerReads(store, model, "v@s1");
    expectLayerReads(store, model, "v");
    // The head holds one 64 KiB chunk of its own, not a copy of the 4 MiB page.
    expect(store.usage().get("v")).toEqual({ pages: 1, bytes: 64 * KiB });
    const files = layerFiles(dir);
    expect(files.length).toBe(2); // one per layer
    expect(Math.min(...files.map((file) => fs.statSync(file).blocks * 512))).toBeLessThanOrEqual(2 * 64 * KiB);
    expect(store.parentOf("v")).toBe("v@s1");
    expect(store.parentOf("v@s1")).toBeUndefined();
  });

  test("writes of whole chunks after a snapshot copy nothing, and reads mix head and snapshot chunks", () => {
    const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
    const page = 64 * KiB;
    const random = prng(8);
    const model = new LayerModel(page, 2);
    const base = random.bytes(page);
    store.write("v", 1, 0, base, page);
    model.write("v", 1, 0, base);
    store.freezeLayer("v", "v@s1");
    model.copy("v@s1", "v");
    const whole = random.bytes(8 * KiB);
    store.write("v", 1, 16 * KiB, whole, page); // chunks 4 and 5, exactly
    model.write("v", 1, 16 * KiB, whole);
    expect(store.usage().get("v")).toEqual({ pages: 1, bytes: 8 * KiB });
    // A read spanning snapshot chunks, head chunks and snapshot chunks again.
    const target = new Uint8Array(20 * KiB);
    store.read("v", 1, 10 * KiB, 20 * KiB, target, 0);
    expect(Buffer.from(target).equals(Buffer.from(model.bytesOf("v").subarray(page + 10 * KiB, page + 30 * KiB)))).toBe(true);
    expectLayerReads(store, model, "v");
    expectLayerReads(store, model, "v@s1");
  });

  test("a chain of snapshots: every layer reads as it was when frozen", () => {
    const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
    const page = 64 * KiB;
    const model = new LayerModel(page, 4);
    const random = prng(9);
    for (let round = 1; round <= 5; round++) {
      for (let count = 0; count < 6; count++) {
        const at = random.int(page - 5000);
        const data = random.bytes(1 + random.int(5000));
        const target = random.int(4);
        store.write("v", target, at, data, page);
        model.write("v", target, at, data);
      }
      store.freezeLayer("v", `v@s${round}`);
      model.copy(`v@s${round}`, "v");
    }
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    expect(parentsOf(store)).toEqual({ v: "v@s5", "v@s5": "v@s4", "v@s4": "v@s3", "v@s3": "v@s2", "v@s2": "v@s1", "v@s1": undefined });
  });

  test("a head takes 1023 snapshots; the next freeze is refused beforehand and changes nothing", async () => {
    const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
    store.write("v", 0, 0, new Uint8Array([1]), 64 * KiB);
    for (let index = 1; index <= 1023; index++) {
      expect(store.freezeRefusal("v")).toBeUndefined();
      store.freezeLayer("v", `v@s${index}`);
    }
    expect(store.freezeRefusal("v")?.code).toBe("TOO_LARGE");
    expect(() => store.freezeLayer("v", "v@s1024")).toThrow(/delete older snapshots/);
    expect(store.hasLayer("v@s1024")).toBe(false);
    expect(store.parentOf("v")).toBe("v@s1023");
    await store.deleteLayer("v@s1");
    expect(store.freezeRefusal("v")).toBeUndefined();
    expect(store.freezeRefusal("unknown")).toBeUndefined(); // a volume with no pages here yet
  });

  test("a clone of a middle snapshot reads as that snapshot, then diverges without touching it", () => {
    const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
    const page = 64 * KiB;
    const model = new LayerModel(page, 3);
    const random = prng(10);
    const write = (id: string, target: number, at: number, length: number) => {
      const data = random.bytes(length);
      store.write(id, target, at, data, page);
      model.write(id, target, at, data);
    };
    write("v", 0, 0, page);
    write("v", 1, 100, 9000);
    store.freezeLayer("v", "v@s1");
    model.copy("v@s1", "v");
    write("v", 0, 5000, 300);
    store.freezeLayer("v", "v@s2");
    model.copy("v@s2", "v");
    write("v", 0, 5100, 50);
    store.freezeLayer("v", "v@s3");
    model.copy("v@s3", "v");
    store.createLayer("clone", "v@s2");
    model.copy("clone", "v@s2");
    expectLayerReads(store, model, "clone");
    write("clone", 0, 4090, 20);
    write("clone", 2, 0, 10);
    store.zero("clone", 1, 0, page, page);
    model.zero("clone", 1, 0, page);
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    expect(store.parentOf("clone")).toBe("v@s2");
    // A layer with a layer stacked on it is read-only.
    expect(() => store.write("v@s2", 0, 0, new Uint8Array(1), page)).toThrow(expect.objectContaining({ code: "READ_ONLY" }));
  });

  test("rollback: the head reads exactly as the snapshot, and goes on from there", async () => {
    const dir = tempDir();
    const store = new PageStore({ dir, chunkSizeBytes: 4 * KiB });
    const page = 64 * KiB;
    const model = new LayerModel(page, 3);
    const random = prng(11);
    const write = (target: number, at: number, length: number) => {
      const data = random.bytes(length);
      store.write("v", target, at, data, page);
      model.write("v", target, at, data);
    };
    write(0, 0, page);
    store.freezeLayer("v", "v@s1");
    model.copy("v@s1", "v");
    write(0, 10, 10);
    write(1, 0, page);
    store.freezeLayer("v", "v@s2");
    model.copy("v@s2", "v");
    write(2, 0, 20_000);
    store.resetLayer("v", "v@s1");
    model.copy("v", "v@s1");
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    expect(store.usage().get("v")).toEqual({ pages: 0, bytes: 0 });
    write(0, 7, 3);
    await store.flush();
    const reopened = reopen(store, dir);
    for (const id of model.layers.keys()) expectLayerReads(reopened, model, id);
    expect(parentsOf(reopened)).toEqual({ v: "v@s1", "v@s2": "v@s1", "v@s1": undefined });
    reopened.resetLayer("v", undefined);
    model.copy("v", undefined);
    expectLayerReads(reopened, model, "v");
    expect(reopened.isAllocated("v", 0)).toBe(false);
  });

  test("deleting a middle snapshot keeps what every other layer reads, and drops its pages", async () => {
    const dir = tempDir();
    const store = new PageStore({ dir, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
    const model = new LayerModel(SCENARIO_PAGE_BYTES, SCENARIO_PAGES);
    buildScenario(store, model, 12);
    store.freezeLayer("v", "v@s3");
    model.copy("v@s3", "v");
    await store.deleteLayer("v@s2");
    model.delete("v@s2");
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    expect(store.hasLayer("v@s2")).toBe(false);
    expect(store.parentOf("v@s3")).toBe("v@s1");
    await store.flush();
    const reopened = reopen(store, dir, { chunkSizeBytes: SCENARIO_CHUNK_BYTES });
    for (const id of model.layers.keys()) expectLayerReads(reopened, model, id);
    expect(parentsOf(reopened)).toEqual({ v: "v@s3", "v@s3": "v@s1", "v@s1": undefined, c: "v@s1" });
    // Deleting again is a no-op: a retry after a crash is safe.
    await reopened.deleteLayer("v@s2");
  });

  test("deleting a snapshot with two children (a newer snapshot and a clone) gives both what they read through it", async () => {
    const dir = tempDir();
    const store = new PageStore({ dir, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
    const model = new LayerModel(SCENARIO_PAGE_BYTES, SCENARIO_PAGES);
    buildScenario(store, model, 13);
    expect(store.layers().filter((layer) => layer.parent === "v@s1").map((layer) => layer.id).sort()).toEqual(["c", "v@s2"]);
    await store.deleteLayer("v@s1");
    model.delete("v@s1");
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    expect(store.parentOf("v@s2")).toBeUndefined();
    expect(store.parentOf("c")).toBeUndefined();
    // Then the base of what is left, with a single child (the head) which adopts files by rename.
    await store.deleteLayer("v@s2");
    model.delete("v@s2");
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    await store.flush();
    const reopened = reopen(store, dir);
    for (const id of model.layers.keys()) expectLayerReads(reopened, model, id);
    expect(parentsOf(reopened)).toEqual({ v: undefined, c: undefined });
  });

  test("deleting a layer lets client I/O run between its steps", async () => {
    const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
    const page = 256 * KiB;
    const random = prng(14);
    const model = new LayerModel(page, 40);
    for (let target = 0; target < 40; target++) {
      const data = random.bytes(page);
      store.write("v", target, 0, data, page);
      model.write("v", target, 0, data);
    }
    store.freezeLayer("v", "v@s1");
    model.copy("v@s1", "v");
    store.createLayer("c", "v@s1");
    model.copy("c", "v@s1");
    const deletion = store.deleteLayer("v@s1");
    model.delete("v@s1");
    let turns = 0;
    let done = false;
    void deletion.then(() => (done = true));
    while (!done) {
      // A client keeps writing to both children while their parent's pages move into them.
      const target = random.int(40);
      const at = random.int(page - 100);
      const data = random.bytes(100);
      store.write(turns % 2 === 0 ? "v" : "c", target, at, data, page);
      model.write(turns % 2 === 0 ? "v" : "c", target, at, data);
      turns++;
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(turns).toBeGreaterThan(40);
    expectLayerReads(store, model, "v");
    expectLayerReads(store, model, "c");
  });

  test("layer changes survive close and reopen at every step", async () => {
    const dir = tempDir();
    let store = new PageStore({ dir, chunkSizeBytes: 4 * KiB });
    const page = 64 * KiB;
    const model = new LayerModel(page, 2);
    const random = prng(15);
    const check = async (flush: boolean) => {
      if (flush) await store.flush();
      const parents = parentsOf(store);
      store = reopen(store, dir);
      expect(parentsOf(store)).toEqual(parents);
      for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    };
    const write = (id: string, target: number, at: number, length: number) => {
      const data = random.bytes(length);
      store.write(id, target, at, data, page);
      model.write(id, target, at, data);
    };
    write("v", 0, 0, page);
    await check(true);
    store.freezeLayer("v", "v@a");
    model.copy("v@a", "v");
    await check(false);
    write("v", 0, 3000, 2000);
    await check(true);
    store.createLayer("c", "v@a");
    model.copy("c", "v@a");
    await check(false);
    write("c", 1, 0, 10);
    store.zero("c", 0, 4096, 8192, page);
    model.zero("c", 0, 4096, 8192);
    await check(true);
    store.freezeLayer("v", "v@b");
    model.copy("v@b", "v");
    store.resetLayer("v", "v@a");
    model.copy("v", "v@a");
    await check(false);
    await store.deleteLayer("v@a");
    model.delete("v@a");
    await check(false);
    expect(parentsOf(store)).toEqual({ v: undefined, "v@b": undefined, c: undefined });
  });

  test("changedPages lists the pages held above an ancestor, from metadata alone", () => {
    const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
    const page = 64 * KiB;
    const one = new Uint8Array([1]);
    for (const target of [0, 1, 2]) store.write("v", target, 0, one, page);
    store.freezeLayer("v", "v@s1");
    for (const target of [5, 2]) store.write("v", target, 9, one, page);
    store.freezeLayer("v", "v@s2");
    store.write("v", 7, 0, one, page);
    expect(store.changedPages("v", "v@s2")).toEqual([7]);
    expect(store.changedPages("v", "v@s1")).toEqual([2, 5, 7]);
    expect(store.changedPages("v", undefined)).toEqual([0, 1, 2, 5, 7]);
    expect(store.changedPages("v@s2", "v@s1")).toEqual([2, 5]);
    expect(store.changedPages("v@s1", undefined)).toEqual([0, 1, 2]);
    expect(store.changedPages("v@s2", "v@s2")).toEqual([]);
    expect(() => store.changedPages("v@s1", "v@s2")).toThrow(expect.objectContaining({ code: "BAD_ARGUMENT" }));
  });

  test("trim in a layered head records zeros over the parent's bytes; in a base layer it frees the page", async () => {
    const dir = tempDir();
    let store = new PageStore({ dir, chunkSizeBytes: 4 * KiB });
    const page = 64 * KiB;
    const model = new LayerModel(page, 3);
    const random = prng(16);
    for (let target = 0; target < 3; target++) {
      const data = random.bytes(page);
      store.write("v", target, 0, data, page);
      model.write("v", target, 0, data);
    }
    store.freezeLayer("v", "v@s1");
    model.copy("v@s1", "v");
    const trim = (target: number, at: number, length: number) => {
      store.zero("v", target, at, length, page);
      model.zero("v", target, at, length);
    };
    trim(0, 0, page); // whole page over a parent: a sparse page of zeros
    trim(1, 8 * KiB, 16 * KiB); // whole chunks: recorded as zero chunks, nothing copied
    trim(2, 1000, 10_000); // partial chunks at both ends
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    expect(store.isAllocated("v", 0)).toBe(true);
    expect(store.usage().get("v")!.bytes).toBeLessThan(page + 3 * 4 * KiB);
    await store.flush();
    store = reopen(store, dir);
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
    // A write into a zeroed chunk keeps the rest of it zero.
    const data = random.bytes(10);
    store.write("v", 1, 9000, data, page);
    model.write("v", 1, 9000, data);
    trim(1, 0, page);
    trim(1, 0, page);
    expectLayerReads(store, model, "v");
    // In a base layer a whole-page trim deletes the file.
    expect(() => store.zero("v@s1", 0, 0, page, page)).toThrow(expect.objectContaining({ code: "READ_ONLY" }));
    await store.deleteLayer("v");
    model.delete("v");
    store.zero("v@s1", 0, 0, page, page);
    model.zero("v@s1", 0, 0, page);
    expect(store.isAllocated("v@s1", 0)).toBe(false);
    expectLayerReads(store, model, "v@s1");
  });

  test("a layer being deleted refuses reads; unknown parents and taken ids are refused", async () => {
    const store = new PageStore({ dir: tempDir() });
    store.write("v", 0, 0, new Uint8Array([1]), 64 * KiB);
    store.freezeLayer("v", "v@s1");
    expect(() => store.freezeLayer("v", "v@s1")).toThrow(expect.objectContaining({ code: "SNAPSHOT_EXISTS" }));
    expect(() => store.createLayer("c", "nope")).toThrow(expect.objectContaining({ code: "UNKNOWN_SNAPSHOT" }));
    expect(() => store.createLayer("bad/id", undefined)).toThrow(expect.objectContaining({ code: "BAD_ARGUMENT" }));
    expect(() => store.resetLayer("v@s1", undefined)).toThrow(expect.objectContaining({ code: "CONFLICT" }));
    const deletion = store.deleteLayer("v@s1");
    expect(() => store.read("v@s1", 0, 0, 1, new Uint8Array(1), 0)).toThrow(expect.objectContaining({ code: "CONFLICT" }));
    expect(() => store.createLayer("c", "v@s1")).toThrow(expect.objectContaining({ code: "CONFLICT" }));
    await deletion;
    const target = new Uint8Array(1);
    store.read("v", 0, 0, 1, target, 0);
    expect(target[0]).toBe(1);
  });

  test("a snapshot's unflushed pages are made durable by the next flush", async () => {
    const dir = tempDir();
    const store = new PageStore({ dir });
    store.write("v", 0, 0, new Uint8Array([9]), 64 * KiB);
    store.freezeLayer("v", "v@s1");
    const before = store.syncCount;
    await store.flush();
    expect(store.syncCount).toBeGreaterThan(before);
    const again = store.syncCount;
    await store.flush(); // nothing left to sync
    expect(store.syncCount).toBe(again);
    const reopened = reopen(store, dir);
    const target = new Uint8Array(1);
    reopened.read("v@s1", 0, 0, 1, target, 0);
    expect(target[0]).toBe(9);
    reopened.read("v", 0, 0, 1, target, 0);
    expect(target[0]).toBe(9);
  });

  test("a data directory of the one-file-per-page store is refused with how to carry it over", () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, "pages", "old-uid~1"), { recursive: true });
    fs.writeFileSync(path.join(dir, "pages", "old-uid~1", "3"), new Uint8Array(64 * KiB).fill(4));
    expect(() => new PageStore({ dir })).toThrow(expect.objectContaining({ code: "IO_ERROR", message: expect.stringContaining("archive restore") }));
    // An empty leftover directory is no data: the store starts.
    const empty = tempDir();
    fs.mkdirSync(path.join(empty, "pages"));
    new PageStore({ dir: empty }).close();
  });
});

// ---- crash safety: a child process builds layers and is killed with SIGKILL mid-way

const CRASH_CHILD = path.join(import.meta.dir, "_store-v2-crash-child.ts");

function runCrashChild(dir: string, seed: number, ...args: string[]): void {
  const result = Bun.spawnSync([process.execPath, CRASH_CHILD, dir, String(seed), ...args], { stdout: "pipe", stderr: "pipe" });
  if (result.signalCode !== "SIGKILL") throw new Error(`crash child ended with ${result.exitCode}/${result.signalCode}: ${result.stderr.toString()}`);
}

function scenarioModel(seed: number): LayerModel {
  const model = new LayerModel(SCENARIO_PAGE_BYTES, SCENARIO_PAGES);
  const scratch = tempDir();
  const store = new PageStore({ dir: scratch, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
  buildScenario(store, model, seed);
  store.close();
  return model;
}

describe("PageStore v2 crash safety", () => {
  test("kill -9 right after a flush loses nothing", () => {
    const dir = tempDir();
    runCrashChild(dir, 21, "flush");
    const model = scenarioModel(21);
    const store = new PageStore({ dir, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
  });

  test("kill -9 after a FUA write into a fresh snapshot's head keeps the write and the snapshot", () => {
    const dir = tempDir();
    runCrashChild(dir, 22, "fua");
    const model = scenarioModel(22);
    model.copy("v@s3", "v");
    model.write("v", 1, 5000, new Uint8Array(3000).fill(0x5a));
    const store = new PageStore({ dir, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
    for (const id of model.layers.keys()) expectLayerReads(store, model, id);
  });

  for (const [layer, label] of [
    ["v@s1", "with two children"],
    ["v@s2", "with one child"],
  ] as const) {
    test(`kill -9 at any step of deleting a snapshot ${label}: every other layer reads right, and a retry finishes`, async () => {
      const seed = 23;
      const model = scenarioModel(seed);
      model.delete(layer);
      for (const ticks of [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]) {
        const dir = tempDir();
        runCrashChild(dir, seed, "delete", layer, String(ticks));
        const store = new PageStore({ dir, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
        for (const id of model.layers.keys()) expectLayerReads(store, model, id);
        await store.deleteLayer(layer);
        expect(store.hasLayer(layer)).toBe(false);
        for (const id of model.layers.keys()) expectLayerReads(store, model, id);
        store.close();
      }
    }, 60_000);
  }
});

// ---- property test: random operations against the byte model, many seeds

interface RandomRun {
  store: PageStore;
  model: LayerModel;
  parents: Map<string, string | undefined>;
  deleting: Set<string>;
  pending: Promise<void>[];
}

const RANDOM_PAGE = 32 * KiB;
const RANDOM_CHUNK = 4 * KiB;
const RANDOM_PAGES = 3;

function childrenIn(run: RandomRun, id: string): number {
  let count = 0;
  for (const parent of run.parents.values()) if (parent === id) count++;
  return count;
}

function pick<T>(random: ReturnType<typeof prng>, items: T[]): T | undefined {
  return items.length === 0 ? undefined : items[random.int(items.length)];
}

function randomRange(random: ReturnType<typeof prng>): { at: number; length: number } {
  switch (random.int(5)) {
    case 0:
      return { at: 0, length: RANDOM_PAGE };
    case 1: {
      const first = random.int(RANDOM_PAGE / RANDOM_CHUNK);
      return { at: first * RANDOM_CHUNK, length: (1 + random.int(RANDOM_PAGE / RANDOM_CHUNK - first)) * RANDOM_CHUNK };
    }
    case 2: {
      const at = random.int(RANDOM_PAGE);
      return { at, length: 1 + random.int(Math.min(3 * RANDOM_CHUNK, RANDOM_PAGE - at)) };
    }
    default: {
      const at = random.int(RANDOM_PAGE - 1);
      return { at, length: 1 + random.int(Math.min(300, RANDOM_PAGE - at)) };
    }
  }
}

async function runRandomOps(seed: number, steps: number): Promise<void> {
  const random = prng(seed);
  const dir = tempDir();
  const options = { dir, chunkSizeBytes: RANDOM_CHUNK, dirtyLimitBytes: (1 + random.int(8)) * RANDOM_CHUNK };
  const run: RandomRun = { store: new PageStore(options), model: new LayerModel(RANDOM_PAGE, RANDOM_PAGES), parents: new Map(), deleting: new Set(), pending: [] };
  let counter = 0;
  const live = () => [...run.model.layers.keys()].filter((id) => !run.deleting.has(id));
  const writable = () => live().filter((id) => childrenIn(run, id) === 0);
  const context = (step: number, op: string) => `seed ${seed} step ${step} ${op}`;
  const trace = process.env.SHOAL_TRACE ? (line: string) => console.log(line) : () => {};
  const settle = async () => {
    await Promise.all(run.pending.splice(0));
  };
  run.store.createLayer("v", undefined);
  run.model.copy("v", undefined);
  run.parents.set("v", undefined);
  for (let step = 0; step < steps; step++) {
    const roll = random.int(100);
    if (roll < 40) {
      const id = pick(random, writable());
      if (id === undefined) continue;
      const page = random.int(RANDOM_PAGES);
      const { at, length } = randomRange(random);
      const data = random.bytes(length);
      trace(`${step} write ${id} ${page} ${at}+${length}`);
      run.store.write(id, page, at, data, RANDOM_PAGE);
      run.model.write(id, page, at, data);
    } else if (roll < 50) {
      const id = pick(random, writable());
      if (id === undefined) continue;
      const page = random.int(RANDOM_PAGES);
      const { at, length } = randomRange(random);
      trace(`${step} zero ${id} ${page} ${at}+${length}`);
      run.store.zero(id, page, at, length, RANDOM_PAGE);
      run.model.zero(id, page, at, length);
    } else if (roll < 60) {
      const head = pick(random, writable());
      if (head === undefined) continue;
      const snap = `${head}@s${counter++}`;
      trace(`${step} freeze ${head} ${snap}`);
      run.store.freezeLayer(head, snap);
      run.model.copy(snap, head);
      // The head's layer object becomes the snapshot: whatever sat on the head now sits on it.
      for (const [id, parent] of run.parents) if (parent === head) run.parents.set(id, snap);
      run.parents.set(snap, run.parents.get(head));
      run.parents.set(head, snap);
    } else if (roll < 67) {
      const from = pick(random, live());
      if (from === undefined) continue;
      const clone = `c${counter++}`;
      trace(`${step} clone ${clone} ${from}`);
      run.store.createLayer(clone, from);
      run.model.copy(clone, from);
      run.parents.set(clone, from);
    } else if (roll < 73) {
      const head = pick(random, writable());
      const target = pick(random, live().filter((id) => id !== head));
      if (head === undefined) continue;
      const parent = random.int(4) === 0 ? undefined : target;
      trace(`${step} reset ${head} ${parent}`);
      run.store.resetLayer(head, parent);
      run.model.copy(head, parent);
      run.parents.set(head, parent);
    } else if (roll < 81) {
      const id = pick(random, live());
      if (id === undefined || live().length < 2) continue;
      trace(`${step} delete ${id}`);
      run.deleting.add(id);
      run.model.delete(id);
      const deletion = run.store.deleteLayer(id).then(() => {
        const parent = run.parents.get(id);
        for (const [child, childParent] of run.parents) if (childParent === id) run.parents.set(child, parent);
        run.parents.delete(id);
        run.deleting.delete(id);
      });
      if (random.int(2) === 0) await deletion;
      else run.pending.push(deletion);
    } else if (roll < 86) {
      await settle();
      trace(`${step} reopen`);
      if (random.int(2) === 0) await run.store.flush();
      run.store.close();
      run.store = new PageStore(options);
      for (const id of live()) expectLayerReads(run.store, run.model, id);
    } else if (roll < 94) {
      const id = pick(random, live());
      if (id === undefined) continue;
      const page = random.int(RANDOM_PAGES);
      const { at, length } = randomRange(random);
      const target = new Uint8Array(length);
      run.store.read(id, page, at, length, target, 0);
      const start = page * RANDOM_PAGE + at;
      const expected = run.model.bytesOf(id).subarray(start, start + length);
      if (!Buffer.from(target).equals(Buffer.from(expected))) expect(context(step, `read ${id} ${page}+${at}/${length}`)).toBe("equal to the model");
    } else {
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  await settle();
  for (const id of live()) expectLayerReads(run.store, run.model, id);
  expect(parentsOf(run.store)).toEqual(Object.fromEntries(run.parents));
  // changedPages covers every page that differs from an ancestor.
  for (const id of live()) {
    for (let ancestor = run.parents.get(id); ancestor !== undefined; ancestor = run.parents.get(ancestor)) {
      const changed = new Set(run.store.changedPages(id, ancestor));
      for (let page = 0; page < RANDOM_PAGES; page++) {
        const mine = run.model.bytesOf(id).subarray(page * RANDOM_PAGE, (page + 1) * RANDOM_PAGE);
        const theirs = run.model.bytesOf(ancestor).subarray(page * RANDOM_PAGE, (page + 1) * RANDOM_PAGE);
        if (!Buffer.from(mine).equals(Buffer.from(theirs))) expect(changed.has(page)).toBe(true);
      }
    }
  }
  await run.store.flush();
  run.store.close();
  const reopened = new PageStore(options);
  for (const id of live()) expectLayerReads(reopened, run.model, id);
  reopened.close();
}

describe("PageStore v2 layers against a model", () => {
  test("random writes, trims, snapshots, clones, rollbacks, deletions and reopens, many seeds", async () => {
    // SHOAL_SEED=n reruns one seed (SHOAL_TRACE=1 prints its operations); SHOAL_SEEDS and
    // SHOAL_STEPS make a longer soak.
    const only = Number(process.env.SHOAL_SEED ?? 0);
    const seeds = Number(process.env.SHOAL_SEEDS ?? 30);
    const steps = Number(process.env.SHOAL_STEPS ?? 150);
    for (let seed = only || 1; seed <= (only || seeds); seed++) {
      try {
        await runRandomOps(seed, steps);
      } catch (err) {
        throw new Error(`seed ${seed} failed (SHOAL_SEED=${seed} reruns it): ${(err as Error).message}`);
      }
    }
  }, 600_000);
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


describe("PageStore v2.flushVolume", () => {
  test("syncs the head and the snapshot layers writes were frozen into, not other volumes' writes", async () => {
    const store = new PageStore({ dir: tempDir() });
    store.write("a", 0, 0, new Uint8Array(4 * 1024).fill(1), PAGE);
    store.freezeLayer("a", "a@s1"); // the unsynced write now sits in a@s1
    store.write("a", 1, 0, new Uint8Array(4 * 1024).fill(2), PAGE);
    store.write("ab", 0, 0, new Uint8Array(4 * 1024).fill(3), PAGE); // another volume, same prefix
    const before = store.syncCount;
    await store.flushVolume("a");
    const forA = store.syncCount - before;
    expect(forA).toBeGreaterThanOrEqual(2); // a's file and the journal
    expect(store.dirtyBytes).toBe(4 * 1024); // ab's write was left for its own flush
    await store.flushLayers(["a", "a@s1"]);
    expect(store.syncCount).toBe(before + forA); // nothing of a's was left
    await store.flushLayers(["ab"]);
    expect(store.syncCount).toBeGreaterThan(before + forA);
    expect(store.dirtyBytes).toBe(0);
    store.close();
  });
});

describe("PageStore v2 flushes that overlap", () => {
  /** Runs only queued microtasks, never the event loop: no fsync can complete meanwhile. */
  async function microtasksOnly(count: number): Promise<void> {
    for (let index = 0; index < count; index++) await Promise.resolve();
  }

  test("a flush that arrives while a commit runs waits for a commit that covers it", async () => {
    const store = new PageStore({ dir: tempDir() });
    store.write("a", 0, 0, new Uint8Array(4 * 1024).fill(1), PAGE);
    await store.flush();
    for (const second of [() => store.flush(), () => store.flushVolume("a"), () => store.flushLayers(["a"]), () => store.syncPage("a", 0)]) {
      store.write("a", 0, 0, new Uint8Array(4 * 1024).fill(2), PAGE);
      const first = store.flush(); // captures the maps and starts syncing
      store.write("a", 1, 0, new Uint8Array(4 * 1024).fill(3), PAGE); // after the capture: the first commit misses it
      let secondDone = false;
      const done = second().then(() => (secondDone = true));
      await microtasksOnly(200);
      expect(secondDone).toBe(false); // no fsync can have finished yet
      await Promise.all([first, done]);
      expect(store.dirtyBytes).toBe(0); // the second one covered the write the first missed
    }
    store.close();
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
