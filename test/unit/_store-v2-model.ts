// The layer model's checks (see _layer-model.ts): what every layer of a store should read, and
// a fixed scenario to build.
import { expect } from "bun:test";
import { LayerModel, prng, SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES, SCENARIO_PAGES } from "./_layer-model.ts";

/** What the model checks need of a store: the page store and the old-format fixture both have it. */
export interface LayeredStore {
  read(layerId: string, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void;
  write(layerId: string, page: number, pageOffset: number, data: Uint8Array, pageSizeBytes: number): void;
  zero(layerId: string, page: number, pageOffset: number, length: number, pageSizeBytes: number): void;
  freezeLayer(headLayerId: string, snapshotLayerId: string): void;
  createLayer(layerId: string, parentLayerId: string | undefined): void;
}

/** Fails with the first differing byte, not a megabyte diff. */
export function expectReads(store: LayeredStore, model: LayerModel, id: string): void {
  const expected = model.bytesOf(id);
  const actual = new Uint8Array(model.pageSizeBytes);
  for (let page = 0; page < model.pages; page++) {
    actual.fill(0xee);
    store.read(id, page, 0, model.pageSizeBytes, actual, 0);
    const want = expected.subarray(page * model.pageSizeBytes, (page + 1) * model.pageSizeBytes);
    if (Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))) continue;
    const at = actual.findIndex((byte, index) => byte !== want[index]);
    expect(`layer ${id} page ${page} byte ${at}: ${actual[at]}`).toBe(`layer ${id} page ${page} byte ${at}: ${want[at]}`);
  }
}

/** A fixed history: v written, frozen as v@s1, written (partial chunks, trims), frozen as v@s2, written again; a clone c of v@s1 written too. */
export function buildScenarioOn(store: LayeredStore, model: LayerModel, seed: number): void {
  const random = prng(seed);
  const write = (id: string, page: number, offset: number, length: number) => {
    const data = random.bytes(length);
    store.write(id, page, offset, data, SCENARIO_PAGE_BYTES);
    model.write(id, page, offset, data);
  };
  const scatter = (id: string, count: number) => {
    for (let index = 0; index < count; index++) {
      const page = random.int(SCENARIO_PAGES);
      const offset = random.int(SCENARIO_PAGE_BYTES - 1);
      write(id, page, offset, 1 + random.int(Math.min(3 * SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES - offset - 1)));
    }
  };
  for (let page = 0; page < SCENARIO_PAGES - 1; page++) write("v", page, 0, SCENARIO_PAGE_BYTES);
  store.freezeLayer("v", "v@s1");
  model.copy("v@s1", "v");
  scatter("v", 20);
  store.zero("v", 2, 0, SCENARIO_PAGE_BYTES, SCENARIO_PAGE_BYTES);
  model.zero("v", 2, 0, SCENARIO_PAGE_BYTES);
  store.zero("v", 3, 100, 3 * SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES);
  model.zero("v", 3, 100, 3 * SCENARIO_CHUNK_BYTES);
  store.freezeLayer("v", "v@s2");
  model.copy("v@s2", "v");
  scatter("v", 10);
  store.createLayer("c", "v@s1");
  model.copy("c", "v@s1");
  scatter("c", 15);
}
