// PageStore v2 layers: snapshots, clones, rollback and deletion, each checked against the byte model.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { PageStore } from "../../core/store/page-store.ts";
import { LayerModel, prng, SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES, SCENARIO_PAGES } from "./_layer-model.ts";
import { KiB, parentsOf, removeTempDirs, reopen, tempDir } from "./_store-v2-fixture.ts";
import { buildScenarioOn as buildScenario, expectReads as expectLayerReads } from "./_store-v2-model.ts";

afterEach(removeTempDirs);

function layerFiles(dir: string): string[] {
  const root = path.join(dir, "store");
  return fs.readdirSync(root).filter((name) => name.endsWith(".layer")).map((name) => path.join(root, name));
}

describe("PageStore v2 layers", () => {
  test("a write under a snapshot (a replicated write its primary applied before its cut) shows in the snapshot and through the head, and survives a reopen", () => {
    const dir = tempDir();
    let store = new PageStore({ dir, chunkSizeBytes: 64 * KiB });
    const pageBytes = 256 * KiB;
    const random = prng(11);
    const before = random.bytes(pageBytes);
    store.write("v", 0, 0, before, pageBytes);
    store.write("v", 1, 0, before, pageBytes);
    store.freezeLayer("v", "v@s1");
    const late = random.bytes(4 * KiB);
    const after = random.bytes(4 * KiB);
    store.writeUnder("v@s1", 0, 70_000, late, pageBytes); // a page the head has no copy of
    store.zeroUnder("v@s1", 1, 0, 8 * KiB, pageBytes);
    store.write("v", 0, 140_000, after, pageBytes); // a later write, in the head
    const model = new LayerModel(pageBytes, 2);
    for (const layer of ["v@s1", "v"]) {
      for (const page of [0, 1]) model.write(layer, page, 0, before);
      model.write(layer, 0, 70_000, late);
      model.write(layer, 1, 0, new Uint8Array(8 * KiB));
    }
    model.write("v", 0, 140_000, after);
    expectLayerReads(store, model, "v@s1");
    expectLayerReads(store, model, "v");
    return store.flush().then(() => {
      store = reopen(store, dir, { chunkSizeBytes: 64 * KiB });
      expectLayerReads(store, model, "v@s1");
      expectLayerReads(store, model, "v");
      store.close();
    });
  });

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

  test("deleting a snapshot whose head overwrote every chunk copies nothing and still yields to clients every few pages", async () => {
    let yields = 0;
    const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB, yieldToClients: () => new Promise((resolve) => setImmediate(() => { yields++; resolve(); })) });
    const page = 64 * KiB;
    const pages = 64;
    for (let target = 0; target < pages; target++) store.write("v", target, 0, new Uint8Array(page).fill(1), page);
    store.freezeLayer("v", "v@s1");
    for (let target = 0; target < pages; target++) store.write("v", target, 0, new Uint8Array(page).fill(2), page);
    await store.flush();
    await store.deleteLayer("v@s1");
    expect(store.hasLayer("v@s1")).toBe(false);
    // One yield per eight pages looked at (core/store/_deletion.ts): the pass never holds the loop whole.
    expect(yields).toBeGreaterThanOrEqual(pages / 8 - 1);
    const read = new Uint8Array(page);
    for (let target = 0; target < pages; target++) {
      store.read("v", target, 0, page, read, 0);
      expect(read.every((byte) => byte === 2)).toBe(true);
    }
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
