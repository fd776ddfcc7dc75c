// Moving pages between page stores (export/import/remove): every layer of the family arrives,
// stacks are completed, a clone keeps what it reads through.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ImportBatch, type PageExport, PageStore } from "../../core/store/page-store.ts";
import { familyOf } from "../../transport/move/page-mover.ts";
import { LayerModel, prng } from "./_layer-model.ts";
import { expectReads as expectLayerReads } from "./_store-v2-model.ts";

const KiB = 1024;
const PAGE = 64 * KiB;
const dirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-move-v2-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

/** A source store with a volume "v" (three snapshots) and a clone "c" of v@s2, written at random. */
function sourceWithHistory(seed: number) {
  const store = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
  const model = new LayerModel(PAGE, 4);
  const random = prng(seed);
  const write = (id: string) => {
    const page = random.int(4);
    const at = random.int(PAGE - 9000);
    const data = random.bytes(1 + random.int(9000));
    store.write(id, page, at, data, PAGE);
    model.write(id, page, at, data);
  };
  for (let round = 1; round <= 3; round++) {
    for (let count = 0; count < 8; count++) write("v");
    store.freezeLayer("v", `v@s${round}`);
    model.copy(`v@s${round}`, "v");
  }
  for (let count = 0; count < 5; count++) write("v");
  store.createLayer("c", "v@s2");
  model.copy("c", "v@s2");
  for (let count = 0; count < 5; count++) write("c");
  store.zero("v", 3, 0, PAGE, PAGE);
  model.zero("v", 3, 0, PAGE);
  return { store, model };
}

/** Installs pages the way a target does: all of them, then one sync. */
async function install(target: PageStore, pages: [number, PageExport][]): Promise<void> {
  const batch = new ImportBatch();
  for (const [page, exported] of pages) target.importPage(page, exported, familyOf("v"), batch);
  await target.syncImport(batch);
}

describe("moving pages between extent-file page stores", () => {
  test("every layer of the family reads the same on the target, also after reopening", async () => {
    for (const seed of [1, 2, 3]) {
      const { store: source, model } = sourceWithHistory(seed);
      const targetDir = tempDir();
      const target = new PageStore({ dir: targetDir, chunkSizeBytes: 4 * KiB });
      await install(target, [0, 1, 2, 3].map((page) => [page, source.exportPage(page, familyOf("v"))]));
      for (const id of ["v", "v@s1", "v@s2", "v@s3"]) expectLayerReads(target, model, id);
      target.close();
      const reopened = new PageStore({ dir: targetDir });
      for (const id of ["v", "v@s1", "v@s2", "v@s3"]) expectLayerReads(reopened, model, id);
      expect(reopened.parentOf("v")).toBe("v@s3");
      expect(reopened.parentOf("v@s1")).toBeUndefined();
    }
  });

  test("a layer the target lacks is inserted into its stack; other pages read as before", async () => {
    const { store: source, model } = sourceWithHistory(4);
    const target = new PageStore({ dir: tempDir(), chunkSizeBytes: 4 * KiB });
    // The target holds page 9 of v, with only the first snapshot: v -> v@s1.
    target.write("v", 9, 0, new Uint8Array(100).fill(5), PAGE);
    target.freezeLayer("v", "v@s1");
    target.write("v", 9, 50, new Uint8Array(10).fill(6), PAGE);
    await install(target, [[2, source.exportPage(2, familyOf("v"))]]);
    expect(target.parentOf("v")).toBe("v@s3");
    expect(target.parentOf("v@s3")).toBe("v@s2");
    expect(target.parentOf("v@s2")).toBe("v@s1");
    const read = (layer: string) => {
      const into = new Uint8Array(100);
      target.read(layer, 9, 0, 100, into, 0);
      return into;
    };
    expect([...read("v").subarray(45, 65)]).toEqual([5, 5, 5, 5, 5, ...Array(10).fill(6), 5, 5, 5, 5, 5]);
    expect(read("v@s1").every((byte) => byte === 5)).toBe(true);
    const actual = new Uint8Array(PAGE);
    for (const id of ["v", "v@s1", "v@s2", "v@s3"]) {
      target.read(id, 2, 0, PAGE, actual, 0);
      expect(Buffer.compare(actual, model.bytesOf(id).subarray(2 * PAGE, 3 * PAGE))).toBe(0);
    }
  });

  test("a range install replaces only that part of every layer's page: a catch-up of what changed while a copy was away", async () => {
    for (const seed of [6, 7, 8]) {
      const { store: source, model } = sourceWithHistory(seed);
      const targetDir = tempDir();
      const target = new PageStore({ dir: targetDir, chunkSizeBytes: 4 * KiB });
      await install(target, [0, 1, 2, 3].map((page) => [page, source.exportPage(page, familyOf("v"))]));
      // Stale bytes the target holds and the source does not (say, written before a rollback):
      // the head's range of page 1 at 16-32 KiB reads through to v@s3 at the source.
      target.write("v", 1, 20 * KiB, new Uint8Array(3 * KiB).fill(0x77), PAGE);
      const RANGE = 16 * KiB;
      const changed = new Set<string>([`1:${RANGE}`]);
      const random = prng(seed * 31);
      for (let count = 0; count < 12; count++) {
        const page = random.int(4);
        const at = random.int(PAGE - 5000);
        const data = random.bytes(1 + random.int(5000));
        if (random.int(4) === 0) {
          source.zero("v", page, at, data.byteLength, PAGE);
          model.zero("v", page, at, data.byteLength);
        } else {
          source.write("v", page, at, data, PAGE);
          model.write("v", page, at, data);
        }
        for (let range = Math.floor(at / RANGE); range * RANGE < at + data.byteLength; range++) changed.add(`${page}:${range * RANGE}`);
      }
      const batch = new ImportBatch();
      for (const key of changed) {
        const [page, offset] = key.split(":").map(Number) as [number, number];
        const range = { offset, length: RANGE };
        target.importPage(page, source.exportPage(page, familyOf("v"), undefined, range), familyOf("v"), batch, range);
      }
      await target.syncImport(batch);
      for (const id of ["v", "v@s1", "v@s2", "v@s3"]) expectLayerReads(target, model, id);
      target.close();
      const reopened = new PageStore({ dir: targetDir });
      for (const id of ["v", "v@s1", "v@s2", "v@s3"]) expectLayerReads(reopened, model, id);
      reopened.close();
      // Only the changed ranges travelled: a range export carries no more than its bytes per layer.
      const one = source.exportPage(0, familyOf("v"), undefined, { offset: 0, length: RANGE });
      for (const piece of one.pieces) expect(piece.data.reduce((sum, part) => sum + part.byteLength, 0)).toBeLessThanOrEqual(RANGE);
    }
  });

  test("a range off the chunk boundaries is refused", () => {
    const { store: source } = sourceWithHistory(9);
    expect(() => source.exportPage(0, familyOf("v"), undefined, { offset: 1000, length: 4 * KiB })).toThrow("does not fall on");
  });

  test("dropping moved pages keeps what a clone on the source still reads through", () => {
    const { store: source, model } = sourceWithHistory(5);
    source.removePages([0, 1, 2, 3], familyOf("v"));
    // v and v@s3 lose the pages; v@s2 and v@s1 carry the clone and keep them.
    expect(source.layers().find((layer) => layer.id === "v")!.pages).toBe(0);
    expect(source.layers().find((layer) => layer.id === "v@s3")!.pages).toBe(0);
    expectLayerReads(source, model, "c");
    expectLayerReads(source, model, "v@s2");
  });

  test("a family with no layers exports nothing; an install replaces a stale copy", async () => {
    const empty = new PageStore({ dir: tempDir() });
    const exported = empty.exportPage(0, familyOf("v"));
    expect(exported).toEqual({ layers: [], pieces: [] });
    const target = new PageStore({ dir: tempDir() });
    target.write("v", 0, 0, new Uint8Array(10).fill(1), PAGE);
    const fresh = new PageStore({ dir: tempDir() });
    fresh.write("v", 0, 0, new Uint8Array(10).fill(2), PAGE);
    await install(target, [[0, fresh.exportPage(0, familyOf("v"))]]);
    const into = new Uint8Array(10);
    target.read("v", 0, 0, 10, into, 0);
    expect([...into]).toEqual(Array(10).fill(2));
  });
});
