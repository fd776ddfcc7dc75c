// A data directory of the one-file-per-page store is converted to the extent-file store when
// a node starts: every byte of every layer reads the same, stacked the same; a deletion a crash
// cut short in the old store finishes; a directory from before layer tables converts; a
// conversion a crash cut short starts over, and one whose old directory's removal was cut short
// finishes it. The old directories are written by test/unit/_old-format-fixture.ts.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { convertOldStore } from "../../core/store/convert-old-store.ts";
import { PageStore } from "../../core/store/page-store.ts";
import { LayerModel, prng, SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES, SCENARIO_PAGES } from "./_layer-model.ts";
import { OldFormatFixture } from "./_old-format-fixture.ts";
import { buildScenarioOn, expectReads } from "./_store-v2-model.ts";

const dirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-store-v2-convert-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

const PARENTS = { v: "v@s2", "v@s2": "v@s1", "v@s1": undefined, c: "v@s1", e: "v@s2" };

/** An old-format data dir with v, v@s1, v@s2, a clone c of v@s1, and an empty layer e over v@s2. */
function oldDataDir(seed: number): { dir: string; model: LayerModel; fixture: OldFormatFixture } {
  const dir = tempDir();
  const fixture = new OldFormatFixture(SCENARIO_CHUNK_BYTES);
  const model = new LayerModel(SCENARIO_PAGE_BYTES, SCENARIO_PAGES);
  buildScenarioOn(fixture, model, seed);
  fixture.createLayer("e", "v@s2");
  model.copy("e", "v@s2");
  for (const id of model.layers.keys()) expectReads(fixture, model, id); // the fixture holds what the model says
  return { dir, model, fixture };
}

function parentsOf(store: PageStore): Record<string, string | undefined> {
  return Object.fromEntries(store.layers().map((layer) => [layer.id, layer.parent]));
}

describe("converting an old-format data directory", () => {
  test("every byte of every layer reads the same and stacks the same; the old directory is gone", async () => {
    for (const seed of [31, 32, 33, 34]) {
      const { dir, model, fixture } = oldDataDir(seed);
      fixture.writeTo(dir);
      const lines: string[] = [];
      expect(await convertOldStore(dir, (line) => lines.push(line))).toBeGreaterThan(0);
      expect(lines.join("\n")).toContain("converted");
      expect(fs.existsSync(path.join(dir, "pages"))).toBe(false);
      const store = new PageStore({ dir });
      for (const id of model.layers.keys()) expectReads(store, model, id);
      expect(parentsOf(store)).toEqual(PARENTS);
      store.close();
      expect(await convertOldStore(dir, () => {})).toBe(0); // nothing left to do
    }
  });

  test("a layer whose deletion a crash cut short is deleted; the layers on it read as before", async () => {
    const { dir, model, fixture } = oldDataDir(35);
    fixture.markDeleting("v@s1");
    fixture.writeTo(dir);
    await convertOldStore(dir, () => {});
    const store = new PageStore({ dir });
    model.delete("v@s1");
    for (const id of model.layers.keys()) expectReads(store, model, id);
    expect(parentsOf(store)).toEqual({ v: "v@s2", "v@s2": undefined, c: undefined, e: "v@s2" });
    store.close();
  });

  test("a directory from before layer tables: every directory a volume, every page plain", async () => {
    const dir = tempDir();
    const fixture = new OldFormatFixture(SCENARIO_CHUNK_BYTES);
    const model = new LayerModel(SCENARIO_PAGE_BYTES, SCENARIO_PAGES);
    const random = prng(36);
    for (const id of ["vol-a", "vol-b"]) {
      fixture.createLayer(id, undefined);
      for (let page = 0; page < SCENARIO_PAGES; page += 2) {
        const data = random.bytes(SCENARIO_PAGE_BYTES - 100);
        fixture.write(id, page, 100, data, SCENARIO_PAGE_BYTES);
        model.write(id, page, 100, data);
      }
    }
    fixture.writeTo(dir, { legacy: true });
    expect(fs.existsSync(path.join(dir, "pages", "layers.json"))).toBe(false);
    expect(await convertOldStore(dir, () => {})).toBe(SCENARIO_PAGES / 2);
    const store = new PageStore({ dir });
    for (const id of model.layers.keys()) expectReads(store, model, id);
    expect(parentsOf(store)).toEqual({ "vol-a": undefined, "vol-b": undefined });
    store.close();
  });

  test("a damaged page file header stops the conversion, named, and leaves the old directory whole", async () => {
    const { dir, fixture } = oldDataDir(37);
    fixture.writeTo(dir);
    const table = JSON.parse(fs.readFileSync(path.join(dir, "pages", "layers.json"), "utf8")) as { layers: { id: string; dir: string }[] };
    const headDir = path.join(dir, "pages", table.layers.find((layer) => layer.id === "v")!.dir);
    const chunked = fs.readdirSync(headDir).find((name) => name.endsWith(".c"))!;
    const fd = fs.openSync(path.join(headDir, chunked), "r+");
    fs.writeSync(fd, new Uint8Array([1, 2, 3, 4]), 0, 4, 0);
    fs.closeSync(fd);
    await expect(convertOldStore(dir, () => {})).rejects.toMatchObject({ code: "IO_ERROR", message: expect.stringContaining(chunked) });
    expect(fs.existsSync(path.join(headDir, chunked))).toBe(true);
    expect(fs.existsSync(path.join(dir, "store"))).toBe(false);
  });

  test("a conversion cut short starts over; one cut short after the rename finishes the removal", async () => {
    const { dir, model, fixture } = oldDataDir(32);
    fixture.writeTo(dir);
    fs.mkdirSync(path.join(dir, "store.converting", "store"), { recursive: true });
    fs.writeFileSync(path.join(dir, "store.converting", "store", "journal"), "half a conversion");
    await convertOldStore(dir, () => {});
    expect(fs.existsSync(path.join(dir, "store.converting"))).toBe(false);
    // As if the crash came between the rename and the old directory's removal.
    fs.mkdirSync(path.join(dir, "pages", "v~1"), { recursive: true });
    fs.writeFileSync(path.join(dir, "pages", "v~1", "0"), "stale");
    expect(() => new PageStore({ dir })).toThrow(expect.objectContaining({ code: "IO_ERROR" }));
    await convertOldStore(dir, () => {});
    const store = new PageStore({ dir });
    for (const id of model.layers.keys()) expectReads(store, model, id);
    store.close();
  });
});
