// The layers a page store holds and how they stack. A layer may have a parent; a read falls
// through to the parent for every chunk the layer does not hold. Layers with children are never
// written, so what a child sees through them never changes under it. Each layer has a key, never
// reused, naming its extent file: renaming a layer (a snapshot taking over the head's pages) is a
// table change, not a file operation.
import { ShoalError } from "../errors.ts";
import type { PageEntry } from "./_chunks.ts";

/** Longest parent chain a read may walk; deeper stacks are refused where they would be made. */
export const MAX_CHAIN_LAYERS = 1024;
export const MAX_LAYERS = 100_000;
const LAYER_ID = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$/;

export class StoreLayer {
  /** Pages this layer holds itself. */
  readonly pages = new Map<number, PageEntry>();
  /** Pages whose entry changed since the map was last committed (a removed entry included). */
  readonly dirtyPages = new Set<number>();
  deleting = false;
  /** Layers whose parent this is: while non-zero the layer is read-only. */
  children = 0;
  /** Page size of every page in the file; 0 until the first page arrives. */
  pageSizeBytes = 0;
  /** Open extent files by segment (see SEGMENT_BYTES); a segment's file is made on its first write. */
  fds: number[] = [];
  /** Bytes written since the file was last synced. */
  dirtyBytes = 0;
  /** This layer then its ancestors, valid while chainEpoch matches the table's. */
  chain: StoreLayer[] = [];
  chainEpoch = -1;

  constructor(
    public id: string,
    public parent: StoreLayer | undefined,
    public key: number,
  ) {}
}

export interface LayerRecord {
  id: string;
  parent?: string;
  key: number;
  pageSizeBytes: number;
  deleting?: boolean;
}

export interface TableRecord {
  chunkSizeBytes: number;
  nextKey: number;
  layers: LayerRecord[];
}

export class LayerTable {
  private readonly byId = new Map<string, StoreLayer>();
  private epoch = 0;
  /** Bumped on every change the journal must record. */
  version = 0;
  nextKey = 1;
  /**
   * Layers that gained a child since the table was last committed. A commit of the table also
   * commits their maps and data: a table naming a child over a parent whose map is older than
   * the moment the child was stacked would show the child bytes it never held.
   */
  readonly stackedOn = new Set<StoreLayer>();

  constructor(readonly chunkSizeBytes: number) {}

  get(id: string): StoreLayer | undefined {
    return this.byId.get(id);
  }

  all(): IterableIterator<StoreLayer> {
    return this.byId.values();
  }

  create(id: string, parent: StoreLayer | undefined): StoreLayer {
    validateLayerId(id);
    if (this.byId.has(id)) throw new ShoalError("SNAPSHOT_EXISTS", `layer '${id}' already exists on this node`);
    if (this.byId.size >= MAX_LAYERS) throw new ShoalError("TOO_LARGE", `this node already holds ${MAX_LAYERS} layers; delete snapshots before taking more`);
    const layer = new StoreLayer(id, undefined, this.nextKey++);
    this.byId.set(id, layer);
    this.setParent(layer, parent);
    this.changed();
    return layer;
  }

  /** The head's layer object becomes the snapshot (its file, map and dirty state) and a new empty head is stacked on it. */
  freeze(head: StoreLayer, snapshotId: string): StoreLayer {
    validateLayerId(snapshotId);
    if (this.byId.has(snapshotId)) throw new ShoalError("SNAPSHOT_EXISTS", `layer '${snapshotId}' already exists on this node`);
    this.assertChainRoom(head, 1);
    const headId = head.id;
    this.byId.delete(headId);
    head.id = snapshotId;
    this.byId.set(snapshotId, head);
    const newHead = new StoreLayer(headId, undefined, this.nextKey++);
    newHead.pageSizeBytes = head.pageSizeBytes;
    this.byId.set(headId, newHead);
    this.setParent(newHead, head);
    this.changed();
    return newHead;
  }

  setParent(layer: StoreLayer, parent: StoreLayer | undefined): void {
    if (layer.parent === parent) return;
    if (parent !== undefined) this.assertChainRoom(parent, 1);
    if (layer.parent) layer.parent.children--;
    layer.parent = parent;
    if (parent) {
      parent.children++;
      this.stackedOn.add(parent);
    }
    this.epoch++;
    this.changed();
  }

  /** Gives a layer a new, empty file (rollback); the caller removes the old one. */
  renew(layer: StoreLayer): void {
    layer.key = this.nextKey++;
    layer.pages.clear();
    layer.dirtyPages.clear();
    layer.dirtyBytes = 0;
    this.changed();
  }

  remove(layer: StoreLayer): void {
    if (layer.children > 0) throw new ShoalError("INTERNAL", `layer '${layer.id}' still has children`);
    this.setParent(layer, undefined);
    this.byId.delete(layer.id);
    this.epoch++;
    this.changed();
  }

  childrenOf(layer: StoreLayer): StoreLayer[] {
    if (layer.children === 0) return [];
    const children: StoreLayer[] = [];
    for (const candidate of this.byId.values()) if (candidate.parent === layer) children.push(candidate);
    return children;
  }

  /** The layer then its ancestors, cached until the next parent change. */
  chainOf(layer: StoreLayer): StoreLayer[] {
    if (layer.chainEpoch === this.epoch) return layer.chain;
    const chain: StoreLayer[] = [];
    for (let at: StoreLayer | undefined = layer; at !== undefined; at = at.parent) {
      if (chain.length >= MAX_CHAIN_LAYERS) throw new ShoalError("INTERNAL", `layer '${layer.id}' sits on more than ${MAX_CHAIN_LAYERS} layers (or a cycle)`);
      chain.push(at);
    }
    layer.chain = chain;
    layer.chainEpoch = this.epoch;
    return chain;
  }

  changed(): void {
    this.version++;
  }

  depthAfterFreeze(head: StoreLayer): number {
    return this.chainOf(head).length + 1;
  }

  private assertChainRoom(parent: StoreLayer, extra: number): void {
    if (this.chainOf(parent).length + extra > MAX_CHAIN_LAYERS) {
      throw new ShoalError("TOO_LARGE", `layer '${parent.id}' already has ${MAX_CHAIN_LAYERS - 1} layers below it; delete older snapshots first`);
    }
  }

  toRecord(): TableRecord {
    const layers: LayerRecord[] = [];
    for (const layer of this.byId.values()) {
      layers.push({ id: layer.id, ...(layer.parent ? { parent: layer.parent.id } : {}), key: layer.key, pageSizeBytes: layer.pageSizeBytes, ...(layer.deleting ? { deleting: true } : {}) });
    }
    return { chunkSizeBytes: this.chunkSizeBytes, nextKey: this.nextKey, layers };
  }

  /**
   * Replaces the layers with a recorded table (journal replay). A layer whose key the record
   * keeps keeps its map; the others are dropped. Refuses anything inconsistent rather than guessing.
   */
  applyRecord(record: TableRecord, bad: (why: string) => Error): void {
    if (record.chunkSizeBytes !== this.chunkSizeBytes || !Number.isSafeInteger(record.nextKey) || !Array.isArray(record.layers)) throw bad("a layer table with missing fields");
    const byKey = new Map<number, StoreLayer>();
    for (const layer of this.byId.values()) byKey.set(layer.key, layer);
    this.byId.clear();
    const keys = new Set<number>();
    for (const entry of record.layers) {
      if (typeof entry?.id !== "string" || !LAYER_ID.test(entry.id) || !Number.isSafeInteger(entry.key) || entry.key >= record.nextKey || !Number.isSafeInteger(entry.pageSizeBytes)) {
        throw bad(`layer entry ${JSON.stringify(entry)} is invalid`);
      }
      if (this.byId.has(entry.id) || keys.has(entry.key)) throw bad(`layer '${entry.id}' or key ${entry.key} is repeated`);
      keys.add(entry.key);
      const layer = byKey.get(entry.key) ?? new StoreLayer(entry.id, undefined, entry.key);
      layer.id = entry.id;
      layer.deleting = entry.deleting === true;
      layer.pageSizeBytes = entry.pageSizeBytes;
      layer.parent = undefined;
      layer.children = 0;
      this.byId.set(entry.id, layer);
    }
    for (const entry of record.layers) {
      if (entry.parent === undefined) continue;
      const parent = this.byId.get(entry.parent);
      if (parent === undefined) throw bad(`layer '${entry.id}' has unknown parent '${entry.parent}'`);
      const layer = this.byId.get(entry.id)!;
      layer.parent = parent;
      parent.children++;
    }
    this.nextKey = record.nextKey;
    this.epoch++;
    for (const layer of this.byId.values()) this.chainOf(layer); // refuses cycles and overlong chains
  }

  byKey(key: number): StoreLayer | undefined {
    for (const layer of this.byId.values()) if (layer.key === key) return layer;
    return undefined;
  }
}

export function validateLayerId(id: string): void {
  if (typeof id !== "string" || !LAYER_ID.test(id)) {
    throw new ShoalError("BAD_ARGUMENT", `'${String(id)}' is not a valid layer id: 1-200 letters, digits, '.', '_', ':', '@' or '-', starting with a letter or digit`);
  }
}
