// What every layer of a PageStore should read, kept as plain bytes: the model the layer tests
// and the crash child check the store against (the checks are in _store-v2-model.ts). Also a
// seeded PRNG and the fixed scenario's geometry.

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
