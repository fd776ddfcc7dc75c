// What every layer of a PageStore should read, kept as plain bytes: the model the layer tests
// and the crash child check the store against. Also a seeded PRNG and a fixed scenario.
import { expect } from "bun:test";
import type { PageStore } from "../../core/store/old-format/page-store.ts";

export class LayerModel {
  readonly layers = new Map<string, Uint8Array>();

  constructor(
    readonly pageSizeBytes: number,
    readonly pages: number,
  ) {}

  bytesOf(id: string): Uint8Array {
    return this.layers.get(id) ?? new Uint8Array(this.pageSizeBytes * this.pages);
  }

  write(id: string, page: number, offset: number, data: Uint8Array): void {
    const bytes = this.bytesOf(id);
    bytes.set(data, page * this.pageSizeBytes + offset);
    this.layers.set(id, bytes);
  }

  zero(id: string, page: number, offset: number, length: number): void {
    const bytes = this.bytesOf(id);
    const start = page * this.pageSizeBytes + offset;
    bytes.fill(0, start, start + length);
    this.layers.set(id, bytes);
  }

  /** A snapshot, a clone or a rollback: `id` reads as `from` does now. */
  copy(id: string, from: string | undefined): void {
    this.layers.set(id, from === undefined ? new Uint8Array(this.pageSizeBytes * this.pages) : this.bytesOf(from).slice());
  }

  delete(id: string): void {
    this.layers.delete(id);
  }
}

/** Fails with the first differing byte, not a megabyte diff. */
export function expectLayerReads(store: PageStore, model: LayerModel, id: string): void {
  const expected = model.bytesOf(id);
  const actual = new Uint8Array(model.pageSizeBytes);
  for (let page = 0; page < model.pages; page++) {
    actual.fill(0xee);
    store.read(id, page, 0, model.pageSizeBytes, actual, 0);
    const want = expected.subarray(page * model.pageSizeBytes, (page + 1) * model.pageSizeBytes);
    if (Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))) continue;
    const at = firstDifference(actual, want);
    if (at >= 0) expect(`layer ${id} page ${page} byte ${at}: ${actual[at]}`).toBe(`layer ${id} page ${page} byte ${at}: ${want[at]}`);
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let index = 0; index < a.byteLength; index++) if (a[index] !== b[index]) return index;
  return -1;
}

/** mulberry32: small, fast, and one seed reproduces a whole run. */
export function prng(seed: number): { next(): number; int(limit: number): number; bytes(length: number): Uint8Array } {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (limit) => Math.floor(next() * limit),
    bytes: (length) => {
      // Four bytes per draw, none zero (a zero byte would hide a missing write).
      const data = new Uint8Array(length);
      for (let index = 0; index < length; index += 4) {
        const word = (next() * 4294967296) >>> 0;
        for (let lane = 0; lane < 4 && index + lane < length; lane++) data[index + lane] = 1 + (((word >>> (lane * 8)) & 0xff) % 255);
      }
      return data;
    },
  };
}

export const SCENARIO_PAGE_BYTES = 64 * 1024;
export const SCENARIO_CHUNK_BYTES = 4096;
export const SCENARIO_PAGES = 8;

/**
 * A fixed history: volume v written, frozen as v@s1, written (partial chunks, a trim), frozen
 * as v@s2, written again; a clone c of v@s1 written too. v@s1 then has two children (v@s2, c).
 */
export function buildScenario(store: PageStore, model: LayerModel, seed: number): void {
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
