// A minimal writer of the one-file-per-page store's layout (pages/, see
// core/store/old-page-directory.ts), for conversion tests only: the old store itself
// is gone. It keeps layers in memory as the old store held them on disk (a root layer's pages
// plain, a stacked layer's chunked, copy-on-write by chunk, zeros by state) and writes them out.
import * as fs from "node:fs";
import * as path from "node:path";
import { OLD_CHUNK_HEADER_BYTES, OLD_HEADER_MAGIC, OLD_HEADER_VERSION } from "../../core/store/old-page-directory.ts";
import type { LayeredStore } from "./_store-v2-model.ts";

const DATA = 1;
const ZERO = 2;

interface FixturePage {
  bytes: Uint8Array;
  /** Per-chunk states of a stacked layer's page (0 read below, 1 data, 2 zeros); undefined for a root layer's. */
  states: Uint8Array | undefined;
}

interface FixtureLayer {
  id: string;
  parent: FixtureLayer | undefined;
  pages: Map<number, FixturePage>;
  deleting: boolean;
}

export class OldFormatFixture implements LayeredStore {
  private readonly layers = new Map<string, FixtureLayer>();

  constructor(private readonly chunkSizeBytes: number) {}

  read(layerId: string, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    for (let at = 0; at < length; at++) target[targetOffset + at] = this.byteAt(this.layers.get(layerId), page, pageOffset + at);
  }

  write(layerId: string, page: number, pageOffset: number, data: Uint8Array, pageSizeBytes: number): void {
    const held = this.pageFor(layerId, page, pageSizeBytes, pageOffset, data.byteLength);
    held.bytes.set(data, pageOffset);
  }

  zero(layerId: string, page: number, pageOffset: number, length: number, pageSizeBytes: number): void {
    const whole = (chunk: number) => chunk * this.chunkSizeBytes >= pageOffset && (chunk + 1) * this.chunkSizeBytes <= pageOffset + length;
    const held = this.pageFor(layerId, page, pageSizeBytes, pageOffset, length, whole);
    const layer = this.layers.get(layerId)!;
    held.bytes.fill(0, pageOffset, pageOffset + length);
    if (layer.parent === undefined) return;
    for (let chunk = this.firstChunk(pageOffset); chunk <= this.lastChunk(pageOffset, length); chunk++) if (whole(chunk)) held.states![chunk] = ZERO;
  }

  freezeLayer(headLayerId: string, snapshotLayerId: string): void {
    const head = this.layers.get(headLayerId)!;
    this.layers.delete(headLayerId);
    head.id = snapshotLayerId;
    this.layers.set(snapshotLayerId, head);
    this.layers.set(headLayerId, { id: headLayerId, parent: head, pages: new Map(), deleting: false });
  }

  createLayer(layerId: string, parentLayerId: string | undefined): void {
    const parent = parentLayerId === undefined ? undefined : this.layers.get(parentLayerId)!;
    this.layers.set(layerId, { id: layerId, parent, pages: new Map(), deleting: false });
  }

  /** Marks a layer as the old store did when a crash cut its deletion short. */
  markDeleting(layerId: string): void {
    this.layers.get(layerId)!.deleting = true;
  }

  /**
   * Writes <dataDir>/pages/ as the old store left it: layers.json and one directory per layer
   * (`legacy`: no table, one directory per volume named by its uid, as before layers), with the
   * leftovers a crash could leave (a spare, a half-dropped file, an unnamed directory).
   */
  writeTo(dataDir: string, options: { legacy?: boolean } = {}): void {
    const pagesDir = path.join(dataDir, "pages");
    fs.mkdirSync(path.join(pagesDir, "~spares"), { recursive: true });
    fs.writeFileSync(path.join(pagesDir, "~spares", "1"), new Uint8Array(0));
    fs.mkdirSync(path.join(pagesDir, "gone~99"));
    fs.writeFileSync(path.join(pagesDir, "gone~99", "0"), new Uint8Array(16).fill(7));
    let dirSeq = 1;
    const records: { id: string; parent?: string; dir: string; deleting?: boolean }[] = [];
    for (const layer of this.layers.values()) {
      if (options.legacy && layer.parent !== undefined) throw new Error("a legacy directory holds volumes only");
      const dir = options.legacy ? layer.id : `${layer.id}~${dirSeq++}`;
      records.push({ id: layer.id, ...(layer.parent ? { parent: layer.parent.id } : {}), dir, ...(layer.deleting ? { deleting: true } : {}) });
      if (layer.pages.size === 0) continue; // the old store made a layer's directory on its first page
      const layerDir = path.join(pagesDir, dir);
      fs.mkdirSync(layerDir);
      fs.writeFileSync(path.join(layerDir, "3.drop1"), new Uint8Array(8).fill(9));
      for (const [page, held] of layer.pages) this.writePageFile(layerDir, page, held);
    }
    if (!options.legacy) {
      const table = { format: 1, chunkSizeBytes: this.chunkSizeBytes, nextDirSeq: dirSeq, layers: records };
      fs.writeFileSync(path.join(pagesDir, "layers.json"), `${JSON.stringify(table, null, 1)}\n`);
    }
  }

  private writePageFile(layerDir: string, page: number, held: FixturePage): void {
    if (held.states === undefined) {
      fs.writeFileSync(path.join(layerDir, String(page)), held.bytes);
      return;
    }
    const fd = fs.openSync(path.join(layerDir, `${page}.c`), "w");
    try {
      const header = new Uint8Array(OLD_CHUNK_HEADER_BYTES);
      const view = new DataView(header.buffer);
      view.setUint32(0, OLD_HEADER_MAGIC, true);
      view.setUint16(4, OLD_HEADER_VERSION, true);
      view.setUint32(8, held.bytes.byteLength, true);
      view.setUint32(12, this.chunkSizeBytes, true);
      header.set(held.states, 16);
      fs.writeSync(fd, header, 0, header.byteLength, 0);
      held.states.forEach((state, chunk) => {
        const start = chunk * this.chunkSizeBytes;
        // Chunks not DATA hold whatever: garbage here proves the reader never takes them.
        const bytes = state === DATA ? held.bytes.subarray(start, start + this.chunkSizeBytes) : new Uint8Array(this.chunkSizeBytes).fill(0x5a);
        fs.writeSync(fd, bytes, 0, bytes.byteLength, OLD_CHUNK_HEADER_BYTES + start);
      });
    } finally {
      fs.closeSync(fd);
    }
  }

  /** The layer's page, its chunks in the range made its own first (copied from below unless `replaced`). */
  private pageFor(layerId: string, page: number, pageSizeBytes: number, offset: number, length: number, replaced: (chunk: number) => boolean = () => false): FixturePage {
    if (!this.layers.has(layerId)) this.createLayer(layerId, undefined); // a volume's first write makes its layer
    const layer = this.layers.get(layerId)!;
    let held = layer.pages.get(page);
    if (held === undefined) {
      held = { bytes: new Uint8Array(pageSizeBytes), states: layer.parent === undefined ? undefined : new Uint8Array(pageSizeBytes / this.chunkSizeBytes) };
      layer.pages.set(page, held);
    }
    if (held.states === undefined || length === 0) return held;
    for (let chunk = this.firstChunk(offset); chunk <= this.lastChunk(offset, length); chunk++) {
      if (held.states[chunk] === DATA) continue;
      const start = chunk * this.chunkSizeBytes;
      for (let at = start; at < start + this.chunkSizeBytes; at++) {
        held.bytes[at] = replaced(chunk) || held.states[chunk] === ZERO ? 0 : this.byteAt(layer.parent, page, at);
      }
      held.states[chunk] = DATA;
    }
    return held;
  }

  private byteAt(layer: FixtureLayer | undefined, page: number, offset: number): number {
    for (let at = layer; at !== undefined; at = at.parent) {
      const held = at.pages.get(page);
      if (held === undefined) continue;
      const state = held.states === undefined ? DATA : held.states[Math.floor(offset / this.chunkSizeBytes)];
      if (state === DATA) return held.bytes[offset]!;
      if (state === ZERO) return 0;
    }
    return 0;
  }

  private firstChunk(offset: number): number {
    return Math.floor(offset / this.chunkSizeBytes);
  }

  private lastChunk(offset: number, length: number): number {
    return Math.floor((offset + length - 1) / this.chunkSizeBytes);
  }
}
