// The layers a PageStore holds and how they stack. A layer may have a parent; a read falls
// through to the parent for every chunk the layer does not hold. Layers with children are never
// written, so what a child sees through them never changes under it.
// The table (ids, parents, directory names) is the store's only metadata besides the page files:
// it is what `layers.json` records. Directory names are opaque and never reused, so renaming a
// layer (a snapshot taking over the head's pages) is a table change, not a file operation.
import { ShoalError } from "../../errors.ts";
import type { PageFile } from "./_page-file.ts";

/** Longest parent chain a read may walk; deeper stacks are refused where they would be made. */
export const MAX_CHAIN_LAYERS = 1024;
export const MAX_LAYERS = 100_000;
const LAYER_ID = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$/;
const TABLE_FORMAT = 1;

export class Layer {
  /** Page files this layer holds itself, by page number. */
  readonly pages = new Map<number, PageFile>();
  deleting = false;
  /** Layers whose parent this is: while non-zero the layer is read-only. */
  children = 0;
  /** The directory exists on disk (it is made on the first page written). */
  dirExists = false;
  /** This layer then its ancestors, valid while chainEpoch matches the table's. */
  chain: Layer[] = [];
  chainEpoch = -1;

  constructor(
    public id: string,
    public parent: Layer | undefined,
    public dir: string,
  ) {}
}

export interface LayerRecord {
  id: string;
  parent?: string;
  dir: string;
  deleting?: boolean;
}

export class LayerTable {
  private readonly byId = new Map<string, Layer>();
  private epoch = 0;
  /** Bumped on every change layers.json must record; the store persists versions in order. */
  version = 0;
  private nextDirSeq = 1;

  constructor(readonly chunkSizeBytes: number) {}

  get(id: string): Layer | undefined {
    return this.byId.get(id);
  }

  all(): IterableIterator<Layer> {
    return this.byId.values();
  }

  get size(): number {
    return this.byId.size;
  }

  create(id: string, parent: Layer | undefined): Layer {
    validateLayerId(id);
    if (this.byId.has(id)) throw new ShoalError("SNAPSHOT_EXISTS", `layer '${id}' already exists on this node`);
    if (this.byId.size >= MAX_LAYERS) {
      throw new ShoalError("TOO_LARGE", `this node already holds ${MAX_LAYERS} layers; delete snapshots before taking more`);
    }
    const layer = new Layer(id, undefined, this.freshDir(id));
    this.byId.set(id, layer);
    this.setParent(layer, parent);
    this.changed();
    return layer;
  }

  /**
   * The head's layer object becomes the snapshot (keeping its directory, page files, open
   * descriptors and dirty state) and a new empty head is stacked on it. Nothing is copied.
   */
  freeze(head: Layer, snapshotId: string): Layer {
    validateLayerId(snapshotId);
    if (this.byId.has(snapshotId)) throw new ShoalError("SNAPSHOT_EXISTS", `layer '${snapshotId}' already exists on this node`);
    this.assertChainRoom(head, 1);
    const headId = head.id;
    this.byId.delete(headId);
    head.id = snapshotId;
    this.byId.set(snapshotId, head);
    const newHead = new Layer(headId, undefined, this.freshDir(headId));
    this.byId.set(headId, newHead);
    this.setParent(newHead, head);
    this.changed();
    return newHead;
  }

  setParent(layer: Layer, parent: Layer | undefined): void {
    if (layer.parent === parent) return;
    if (parent !== undefined) this.assertChainRoom(parent, 1);
    if (layer.parent) layer.parent.children--;
    layer.parent = parent;
    if (parent) parent.children++;
    this.epoch++;
    this.changed();
  }

  /** Gives a layer a new, empty directory (rollback); the caller retires the old one. */
  renew(layer: Layer): void {
    layer.dir = this.freshDir(layer.id);
    layer.dirExists = false;
    this.changed();
  }

  remove(layer: Layer): void {
    if (layer.children > 0) throw new ShoalError("INTERNAL", `layer '${layer.id}' still has children`);
    this.setParent(layer, undefined);
    this.byId.delete(layer.id);
    this.epoch++;
    this.changed();
  }

  childrenOf(layer: Layer): Layer[] {
    if (layer.children === 0) return [];
    const children: Layer[] = [];
    for (const candidate of this.byId.values()) if (candidate.parent === layer) children.push(candidate);
    return children;
  }

  /** The layer then its ancestors, cached until the next parent change. */
  chainOf(layer: Layer): Layer[] {
    if (layer.chainEpoch === this.epoch) return layer.chain;
    const chain: Layer[] = [];
    for (let at: Layer | undefined = layer; at !== undefined; at = at.parent) {
      if (chain.length >= MAX_CHAIN_LAYERS) {
        throw new ShoalError("INTERNAL", `layer '${layer.id}' sits on more than ${MAX_CHAIN_LAYERS} layers (or a cycle)`);
      }
      chain.push(at);
    }
    layer.chain = chain;
    layer.chainEpoch = this.epoch;
    return chain;
  }

  changed(): void {
    this.version++;
  }

  /** Layers a freeze of this head would stack below the new head: the head's chain plus one. */
  depthAfterFreeze(head: Layer): number {
    return this.chainOf(head).length + 1;
  }

  private assertChainRoom(parent: Layer, extra: number): void {
    if (this.chainOf(parent).length + extra > MAX_CHAIN_LAYERS) {
      throw new ShoalError("TOO_LARGE", `layer '${parent.id}' already has ${MAX_CHAIN_LAYERS - 1} layers below it; delete older snapshots first`);
    }
  }

  private freshDir(id: string): string {
    return `${id}~${this.nextDirSeq++}`;
  }

  encode(): string {
    const layers: LayerRecord[] = [];
    for (const layer of this.byId.values()) {
      layers.push({ id: layer.id, ...(layer.parent ? { parent: layer.parent.id } : {}), dir: layer.dir, ...(layer.deleting ? { deleting: true } : {}) });
    }
    return `${JSON.stringify({ format: TABLE_FORMAT, chunkSizeBytes: this.chunkSizeBytes, nextDirSeq: this.nextDirSeq, layers }, null, 1)}\n`;
  }

  /** Rebuilds a table from layers.json; refuses anything inconsistent rather than guessing. */
  static decode(text: string, source: string): LayerTable {
    const bad = (why: string) => new ShoalError("IO_ERROR", `${source} is damaged (${why}); restore it from a backup of this node's data directory`);
    let parsed: { format?: unknown; chunkSizeBytes?: unknown; nextDirSeq?: unknown; layers?: unknown };
    try {
      parsed = JSON.parse(text);
    } catch {
      throw bad("not JSON");
    }
    if (parsed.format !== TABLE_FORMAT) throw bad(`format ${String(parsed.format)} is not ${TABLE_FORMAT}`);
    if (!Number.isSafeInteger(parsed.chunkSizeBytes) || !Number.isSafeInteger(parsed.nextDirSeq) || !Array.isArray(parsed.layers)) throw bad("missing fields");
    const table = new LayerTable(parsed.chunkSizeBytes as number);
    table.nextDirSeq = parsed.nextDirSeq as number;
    const records = parsed.layers as LayerRecord[];
    const dirs = new Set<string>();
    for (const record of records) {
      if (typeof record?.id !== "string" || typeof record.dir !== "string" || table.byId.has(record.id) || dirs.has(record.dir)) {
        throw bad(`layer entry ${JSON.stringify(record)} is invalid or repeated`);
      }
      dirs.add(record.dir);
      const layer = new Layer(record.id, undefined, record.dir);
      layer.deleting = record.deleting === true;
      table.byId.set(record.id, layer);
    }
    for (const record of records) {
      if (record.parent === undefined) continue;
      const parent = table.byId.get(record.parent);
      if (!parent) throw bad(`layer '${record.id}' has unknown parent '${record.parent}'`);
      table.setParent(table.byId.get(record.id)!, parent);
    }
    for (const layer of table.byId.values()) table.chainOf(layer); // refuses cycles and overlong chains
    table.version = 0;
    return table;
  }

  /** A directory from before layers existed: its name is the volume uid and it has no parent. */
  adoptLegacy(dir: string): Layer | undefined {
    if (!LAYER_ID.test(dir) || this.byId.has(dir)) return undefined;
    const layer = new Layer(dir, undefined, dir);
    this.byId.set(dir, layer);
    this.changed();
    return layer;
  }

  byDirectory(): Map<string, Layer> {
    const result = new Map<string, Layer>();
    for (const layer of this.byId.values()) result.set(layer.dir, layer);
    return result;
  }
}

export function validateLayerId(id: string): void {
  if (typeof id !== "string" || !LAYER_ID.test(id)) {
    throw new ShoalError("BAD_ARGUMENT", `'${String(id)}' is not a valid layer id: 1-200 letters, digits, '.', '_', ':', '@' or '-', starting with a letter or digit`);
  }
}
