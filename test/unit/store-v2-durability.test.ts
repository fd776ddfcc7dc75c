// PageStore v2 durability: kill -9 mid-way loses nothing flushed, and flushes (per volume, and
// ones that overlap a running commit) sync what they must.
import { afterEach, describe, expect, test } from "bun:test";
import * as path from "node:path";
import { PageStore } from "../../core/store/page-store.ts";
import { LayerModel, SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES, SCENARIO_PAGES } from "./_layer-model.ts";
import { PAGE, removeTempDirs, tempDir } from "./_store-v2-fixture.ts";
import { buildScenarioOn as buildScenario, expectReads as expectLayerReads } from "./_store-v2-model.ts";

afterEach(removeTempDirs);

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
