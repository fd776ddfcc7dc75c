// A data directory of the one-file-per-page store is converted to the extent-file store when
// a node starts: every layer reads the same, stacked the same; a conversion a crash cut short
// starts over, and one whose old directory's removal was cut short finishes it.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PageStore as OldPageStore } from "../../core/store/old-format/page-store.ts";
import { convertOldStore } from "../../core/store/convert-old-store.ts";
import { PageStore } from "../../core/store/page-store.ts";
import { LayerModel, SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES, SCENARIO_PAGES } from "./_layer-model.ts";
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

/** An old-format data dir with v, v@s1, v@s2, a clone c of v@s1, and an empty layer e over v@s2. */
async function oldDataDir(seed: number): Promise<{ dir: string; model: LayerModel; parents: Record<string, string | undefined> }> {
  const dir = tempDir();
  const store = new OldPageStore({ dir, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
  const model = new LayerModel(SCENARIO_PAGE_BYTES, SCENARIO_PAGES);
  buildScenarioOn(store, model, seed);
  store.createLayer("e", "v@s2");
  model.copy("e", "v@s2");
  await store.flush();
  const parents = Object.fromEntries(store.layers().map((layer) => [layer.id, layer.parent]));
  store.close();
  return { dir, model, parents };
}

describe("converting an old-format data directory", () => {
  test("every layer reads the same and stacks the same; the old directory is gone", async () => {
    const { dir, model, parents } = await oldDataDir(31);
    const lines: string[] = [];
    expect(await convertOldStore(dir, (line) => lines.push(line))).toBeGreaterThan(0);
    expect(lines.join("\n")).toContain("converted");
    expect(fs.existsSync(path.join(dir, "pages"))).toBe(false);
    const store = new PageStore({ dir });
    for (const id of model.layers.keys()) expectReads(store, model, id);
    expect(Object.fromEntries(store.layers().map((layer) => [layer.id, layer.parent]))).toEqual(parents);
    store.close();
    expect(await convertOldStore(dir, () => {})).toBe(0); // nothing left to do
  });

  test("a conversion cut short starts over; one cut short after the rename finishes the removal", async () => {
    const { dir, model } = await oldDataDir(32);
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
