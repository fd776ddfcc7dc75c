// The pages this node holds, in copy-on-write layers: a volume's head layer (id = volume uid)
// over its snapshots, clones over a snapshot. Files, open descriptors and syncs grow with the
// number of layers, not with the pages written:
//   <data>/store/journal        the layer table and every layer's page map (see _journal.ts)
//   <data>/store/<key>.layer    one sparse extent file per layer: page p at p * pageSizeBytes
// A layer holds a page chunk by chunk (4 KiB by default; see _chunks.ts), so the first write
// after a snapshot copies one chunk, not the page. Taking a snapshot copies no byte and touches
// no file: the head's layer becomes the snapshot and a new empty head (a new file, made on its
// first write) is stacked on it. A FLUSH costs one fdatasync per layer file written since the
// last, then one journal append and its fdatasync (see _commits.ts).
import { ShoalError } from "../errors.ts";
import { ABSENT, DATA, stateOf, validateChunkSize } from "./_chunks.ts";
import { Commits, DEFAULT_JOURNAL_COMPACT_BYTES } from "./_commits.ts";
import { DataPath } from "./_data-path.ts";
import { LayerDeletion } from "./_deletion.ts";
import { MAX_CHAIN_LAYERS, type StoreLayer, validateLayerId } from "./_layers.ts";
import { openJournal, openLayerFiles } from "./_load.ts";
import { ImportBatch, type PageExport, PageMoves, type PageRange } from "./_moves.ts";
import { type FileIO, type FreeingClock, RealFileIO } from "./file-io.ts";

export { DEFAULT_CHUNK_SIZE_BYTES } from "./_load.ts";
export { ImportBatch, type PageExport, type PagePiece, type PageRange } from "./_moves.ts";
export type { FileIO, FreeingClock } from "./file-io.ts";

export interface PageStoreOptions {
  dir: string;
  /** Copy-on-write unit for layers with a parent; fixed when the store is first created. */
  chunkSizeBytes?: number;
  /** Unsynced bytes beyond which the store starts a background write-back (default 128 MiB). */
  dirtyLimitBytes?: number;
  /** Journal size past which it is rewritten as one checkpoint (default 16 MiB); tests make it small. */
  journalCompactBytes?: number;
  /** File operations; tests pass a simulated disk. */
  io?: FileIO;
  /**
   * Lets client I/O run between the steps of a snapshot deletion's merge; the node passes a
   * turn of its event loop (core/ sets no timers). By default a microtask: nothing waits.
   */
  yieldToClients?: () => Promise<void>;
  /**
   * The clock that paces freeing a removed layer's file (file-io.ts unlinkAsync); the node passes
   * the real one (core/ reads no clock). Absent: the file goes in one unlink.
   */
  freeingClock?: FreeingClock;
  /** Accepted for the old store's callers; one descriptor per layer file is kept open. */
  maxOpenFiles?: number;
}

export interface VolumeUsage {
  pages: number;
  bytes: number;
}

export interface LayerInfo {
  id: string;
  parent: string | undefined;
  /** Pages and bytes this layer holds itself (not through its parents). */
  pages: number;
  bytes: number;
  /** A deletion started and has not finished (a crash interrupted it): call deleteLayer again. */
  deleting: boolean;
}

export const DEFAULT_DIRTY_LIMIT_BYTES = 128 * 1024 * 1024;
export const STORE_DIR_NAME = "store";
/** Where the one-file-per-page store kept its pages. */
export const OLD_PAGES_DIR_NAME = "pages";

export class PageStore {
  private readonly dir: string;
  private readonly io: FileIO;
  private readonly path: DataPath;
  private readonly commits: Commits;
  private readonly deletion: LayerDeletion;
  private readonly moves: PageMoves;
  readonly dirtyLimitBytes: number;
  /** Deletions run one at a time: each walks a parent/child neighbourhood the next may change. */
  private deletions: Promise<void> = Promise.resolve();
  private writingBack = false;
  private closed = false;

  constructor(options: PageStoreOptions) {
    this.io = options.io ?? new RealFileIO(options.freeingClock);
    this.dir = `${options.dir}/${STORE_DIR_NAME}`;
    refuseOldFormat(this.io, options.dir);
    if (options.chunkSizeBytes !== undefined) validateChunkSize(options.chunkSizeBytes);
    this.io.mkdirs(this.dir);
    const { table, journal } = openJournal(this.io, this.dir, options.chunkSizeBytes);
    this.commits = new Commits(this.io, this.dir, table, journal, options.journalCompactBytes ?? DEFAULT_JOURNAL_COMPACT_BYTES);
    this.commits.markLoaded();
    this.path = new DataPath(this.io, this.dir, table, this.commits);
    openLayerFiles(this.io, this.dir, table, (layer, segment) => this.path.fileOf(layer, segment));
    this.deletion = new LayerDeletion(
      this.path,
      (layers) => this.commits.request(layers),
      (layer) => this.removeLayerFiles(layer),
      () => this.closed,
      options.yieldToClients ?? (() => Promise.resolve()),
    );
    this.moves = new PageMoves(this.path);
    this.dirtyLimitBytes = options.dirtyLimitBytes ?? DEFAULT_DIRTY_LIMIT_BYTES;
  }

  private get table() {
    return this.path.table;
  }

  // ---- the data path

  /** True when the layer or a layer below it holds the page (it may not read as zeros). */
  isAllocated(layerId: string, page: number): boolean {
    const layer = this.table.get(layerId);
    return layer !== undefined && this.path.isAllocated(layer, page);
  }

  /** Reads `length` bytes at `pageOffset` of a page into target[targetOffset...]. */
  read(layerId: string, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    const layer = this.table.get(layerId);
    if (layer === undefined || length === 0) {
      target.fill(0, targetOffset, targetOffset + length);
      return;
    }
    if (layer.deleting) throw deletingError(layer);
    this.path.read(layer, page, pageOffset, length, target, targetOffset);
  }

  /**
   * Writes into a layer nothing is stacked on. A layer that had layers stacked on it (a snapshot)
   * must not be written before a commit has made their removal durable: written in place, its
   * new bytes would show through a child that a crash stacks on it again. The node writes heads only.
   */
  write(layerId: string, page: number, pageOffset: number, data: Uint8Array, pageSizeBytes: number): void {
    if (data.byteLength === 0) return;
    const layer = this.table.get(layerId) ?? this.table.create(layerId, undefined);
    if (layer.deleting || layer.children > 0) throw notWritableError(layer);
    assertPageRange(pageOffset, data.byteLength, pageSizeBytes);
    this.path.adoptPageSize(layer, pageSizeBytes);
    this.path.write(layer, page, pageOffset, data);
    this.writeBackIfOverLimit();
  }

  /**
   * Zeroes a range. A whole page of a base layer is forgotten (its blocks freed); a layer with
   * a parent records zeros, or the parent's bytes would show through.
   */
  zero(layerId: string, page: number, pageOffset: number, length: number, pageSizeBytes: number): void {
    const layer = this.table.get(layerId);
    if (layer === undefined || length === 0) return;
    if (layer.deleting || layer.children > 0) throw notWritableError(layer);
    assertPageRange(pageOffset, length, pageSizeBytes);
    this.path.adoptPageSize(layer, pageSizeBytes);
    this.path.zero(layer, page, pageOffset, length);
    this.writeBackIfOverLimit();
  }

  /**
   * Writes into a snapshot layer with a head stacked on it: a replicated write whose primary
   * applied it before its own cut of that snapshot, reaching a replica after the replica's cut
   * (core/snapshot/replicated-write-placement.ts). The layers stacked on it read it through where
   * they hold no copy of the page's chunk; none does, as no later write of the page has reached
   * this copy yet. A layer being deleted is refused as for any write.
   */
  writeUnder(layerId: string, page: number, pageOffset: number, data: Uint8Array, pageSizeBytes: number): void {
    const layer = this.requireLayer(layerId);
    if (layer.deleting) throw notWritableError(layer);
    assertPageRange(pageOffset, data.byteLength, pageSizeBytes);
    this.path.write(layer, page, pageOffset, data);
    this.writeBackIfOverLimit();
  }

  /** Zeroes a range of a snapshot layer with a head stacked on it (see writeUnder). */
  zeroUnder(layerId: string, page: number, pageOffset: number, length: number, pageSizeBytes: number): void {
    const layer = this.requireLayer(layerId);
    if (layer.deleting) throw notWritableError(layer);
    assertPageRange(pageOffset, length, pageSizeBytes);
    this.path.zero(layer, page, pageOffset, length);
    this.writeBackIfOverLimit();
  }

  /** Whether a layer exists here and is not being deleted (a write under it may go there). */
  isWritableLayer(layerId: string): boolean {
    const layer = this.table.get(layerId);
    return layer !== undefined && !layer.deleting;
  }

  // ---- durability

  /** Makes one page durable (FUA): its layer's file and map, and the layer table. */
  syncPage(layerId: string, _page: number): Promise<void> {
    return this.flushLayers([layerId]);
  }

  /** Makes every write and layer change that completed before the call durable. */
  flush(): Promise<void> {
    return this.commits.request(undefined);
  }

  /**
   * Makes durable what these layers hold and the layer table; other layers' unsynced writes
   * wait for the next flush. A snapshot's cut needs no more.
   */
  flushLayers(layerIds: string[]): Promise<void> {
    const layers = new Set<StoreLayer>();
    for (const id of layerIds) {
      const layer = this.table.get(id);
      if (layer !== undefined) layers.add(layer);
    }
    return this.commits.request(layers);
  }

  /**
   * Makes durable every write of one volume: its head and its snapshot layers (`HEAD@...`), which
   * hold the writes a cut froze before they were synced. A FLUSH owes no more than its export's
   * writes, so other volumes' unsynced data waits for their own FLUSH or the write-back.
   */
  flushVolume(headLayerId: string): Promise<void> {
    const prefix = `${headLayerId}@`;
    const layers = new Set<StoreLayer>();
    for (const layer of this.table.all()) if (layer.id === headLayerId || layer.id.startsWith(prefix)) layers.add(layer);
    return this.commits.request(layers);
  }

  /** Bytes written and not yet synced: what the next FLUSH would wait for. */
  get dirtyBytes(): number {
    return this.commits.dirtyBytes;
  }

  /** fsync/fdatasync calls made, for tests and metrics: proves a flush reached this store. */
  get syncCount(): number {
    return this.commits.syncCount;
  }

  /**
   * Writes back what is dirty now (a commit of every layer), so the next FLUSH or cut has
   * little to sync. The store starts one itself past dirtyLimitBytes; the node paces writers by
   * awaiting it while dirtyBytes is over the limit. A failure surfaces at the next flush.
   */
  writeBack(): Promise<void> {
    return this.flush().catch(() => undefined);
  }

  /**
   * Starts a background write-back when anything is unsynced and none is running. The node calls
   * it on a short interval so a FLUSH or a snapshot's cut finds only the last moments' writes to
   * sync, not everything up to the dirty limit.
   */
  writeBackIfDirty(): void {
    if (this.commits.dirtyBytes > 0) this.startWriteBack();
  }

  private writeBackIfOverLimit(): void {
    if (this.commits.dirtyBytes >= this.dirtyLimitBytes) this.startWriteBack();
  }

  private startWriteBack(): void {
    if (this.writingBack) return;
    this.writingBack = true;
    void this.writeBack().finally(() => (this.writingBack = false));
  }

  /** Nothing to wait for (the one-file-per-page store made spare files ahead). */
  settleSpares(): Promise<void> {
    return Promise.resolve();
  }

  /** Makes everything durable synchronously and closes every file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.commits.closeNow();
  }

  // ---- layers

  hasLayer(layerId: string): boolean {
    return this.table.get(layerId) !== undefined;
  }

  parentOf(layerId: string): string | undefined {
    return this.table.get(layerId)?.parent?.id;
  }

  /** An empty layer over a parent (a clone's head over a snapshot), or a new base layer. */
  createLayer(layerId: string, parentLayerId: string | undefined): void {
    const parent = parentLayerId === undefined ? undefined : this.requireLayer(parentLayerId);
    if (parent?.deleting) throw deletingError(parent);
    const layer = this.table.create(layerId, parent);
    if (parent !== undefined) layer.pageSizeBytes = parent.pageSizeBytes;
  }

  /** Why freezeLayer(headLayerId, ...) would fail now, or undefined. */
  freezeRefusal(headLayerId: string): ShoalError | undefined {
    const head = this.table.get(headLayerId);
    if (head === undefined) return undefined;
    if (head.deleting) return deletingError(head);
    if (this.table.depthAfterFreeze(head) > MAX_CHAIN_LAYERS) {
      return new ShoalError("TOO_LARGE", `${MAX_CHAIN_LAYERS - 1} snapshots are stacked under it, the most a volume can have; delete older snapshots first`);
    }
    return undefined;
  }

  /**
   * Snapshots a head now, atomically with respect to reads and writes (nothing here awaits):
   * the head's layer becomes the snapshot and the head an empty layer over it. O(1); durable
   * with the next flush or flushLayers of the snapshot.
   */
  freezeLayer(headLayerId: string, snapshotLayerId: string): void {
    validateLayerId(headLayerId);
    validateLayerId(snapshotLayerId);
    if (this.table.get(snapshotLayerId) !== undefined) throw new ShoalError("SNAPSHOT_EXISTS", `layer '${snapshotLayerId}' already exists on this node`);
    const head = this.table.get(headLayerId) ?? this.table.create(headLayerId, undefined);
    if (head.deleting) throw deletingError(head);
    this.table.freeze(head, snapshotLayerId);
  }

  /** Rollback: drops the head's own pages and stacks it on `parentLayerId`; it then reads as that. */
  resetLayer(headLayerId: string, parentLayerId: string | undefined): void {
    const parent = parentLayerId === undefined ? undefined : this.requireLayer(parentLayerId);
    if (parent?.deleting) throw deletingError(parent);
    const head = this.table.get(headLayerId);
    if (head === undefined) {
      this.createLayer(headLayerId, parentLayerId);
      return;
    }
    if (head.deleting) throw deletingError(head);
    if (head.children > 0) throw stackedError(head, "rolled back");
    if (parent === head) throw new ShoalError("BAD_ARGUMENT", `layer '${head.id}' cannot be its own parent`);
    this.removeLayerFiles(head);
    this.table.renew(head);
    this.table.setParent(head, parent);
  }

  /**
   * Removes a layer. Layers stacked on it first receive the chunks they read through it, page by
   * page, yielding to client I/O between steps; then they move to its parent and its file goes.
   * A crash at any point leaves every other layer reading as before, and the layer marked so
   * a second call finishes the job. Idempotent.
   */
  deleteLayer(layerId: string): Promise<void> {
    // Marked now, so reads fail from this call on rather than once the queue reaches it.
    const marked = this.table.get(layerId);
    if (marked !== undefined && !marked.deleting) {
      marked.deleting = true;
      this.table.changed();
    }
    const run = this.deletions.then(() => {
      const layer = this.table.get(layerId);
      return layer === undefined ? undefined : this.deletion.run(layer); // already gone: a retry after a crash is safe
    });
    // The next deletion runs whatever this one's fate; this one's caller gets its error.
    this.deletions = run.catch(() => undefined);
    return run;
  }

  layers(): LayerInfo[] {
    const result: LayerInfo[] = [];
    for (const layer of this.table.all()) {
      result.push({ id: layer.id, parent: layer.parent?.id, pages: layer.pages.size, bytes: this.heldBytes(layer), deleting: layer.deleting });
    }
    return result.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Bytes that deleting `layerId` would free: its chunks every layer stacked on it holds itself. */
  exclusiveBytes(layerId: string): number {
    const layer = this.table.get(layerId);
    if (layer === undefined) return 0;
    const children = this.table.childrenOf(layer);
    if (children.length === 0) return this.heldBytes(layer);
    const chunkBytes = layer.pageSizeBytes === 0 ? 0 : 2 ** this.path.chunkShiftOf(layer);
    let bytes = 0;
    for (const [page, entry] of layer.pages) {
      const own = children.map((child) => child.pages.get(page));
      if (own.some((entry) => entry === undefined)) continue;
      for (let chunk = 0; chunk < entry.chunks; chunk++) {
        if (stateOf(entry, chunk) === DATA && own.every((childEntry) => stateOf(childEntry!, chunk) !== ABSENT)) bytes += chunkBytes;
      }
    }
    return bytes;
  }

  /** Pages and bytes each layer holds itself. */
  usage(): Map<string, VolumeUsage> {
    const result = new Map<string, VolumeUsage>();
    for (const layer of this.table.all()) result.set(layer.id, { pages: layer.pages.size, bytes: this.heldBytes(layer) });
    return result;
  }

  /** Pages that may differ between a layer and its ancestor, sorted; from the maps alone. For incremental archives. */
  changedPages(layerId: string, ancestorLayerId: string | undefined): number[] {
    const layer = this.table.get(layerId);
    if (layer === undefined) {
      if (ancestorLayerId !== undefined) throw new ShoalError("UNKNOWN_SNAPSHOT", `node has no layer '${layerId}'`);
      return [];
    }
    const chain = this.table.chainOf(layer);
    const stop = ancestorLayerId === undefined ? chain.length : chain.findIndex((candidate) => candidate.id === ancestorLayerId);
    if (stop < 0) throw new ShoalError("BAD_ARGUMENT", `layer '${ancestorLayerId}' is not below layer '${layerId}'`);
    const pages = new Set<number>();
    for (let index = 0; index < stop; index++) for (const page of chain[index]!.pages.keys()) pages.add(page);
    return [...pages].sort((a, b) => a - b);
  }

  // ---- moving pages to another node

  /** A page as every layer of a volume's family holds it, for a move. Synchronous: one consistent moment. */
  exportPage(page: number, inFamily: (layerId: string) => boolean, allocate: (bytes: number) => Uint8Array = (bytes) => new Uint8Array(bytes), range?: PageRange): PageExport {
    return this.moves.export(page, inFamily, allocate, range);
  }

  /** Installs a page (or a range of it) exported by another node; durable once syncImport(batch) returns. */
  importPage(page: number, exported: PageExport, inFamily: (layerId: string) => boolean, batch: ImportBatch, range?: PageRange): void {
    this.moves.import(page, exported, inFamily, batch, range);
  }

  /** Starts making the batch durable in the background, so syncImport then waits for little. */
  startSync(batch: ImportBatch): void {
    this.commits.request(new Set(batch.layers)).catch(() => undefined); // a failure shows again at syncImport
  }

  /** Makes the pages of an import batch durable, with the layer table. */
  syncImport(batch: ImportBatch): Promise<void> {
    return this.commits.request(new Set(batch.layers));
  }

  /** Removes the family's copies of pages this node no longer owns; layers a foreign one stands on keep theirs. */
  removePages(pages: number[], inFamily: (layerId: string) => boolean): void {
    this.moves.removePages(pages, inFamily);
  }

  // ---- helpers

  private removeLayerFiles(layer: StoreLayer): void {
    this.commits.removeFilesAtCommit(layer, (segment) => this.path.fileOf(layer, segment));
  }

  private heldBytes(layer: StoreLayer): number {
    if (layer.pageSizeBytes === 0) return 0;
    const shift = this.path.chunkShiftOf(layer);
    let chunks = 0;
    for (const entry of layer.pages.values()) chunks += entry.dataChunks;
    return chunks * 2 ** shift;
  }

  private requireLayer(layerId: string): StoreLayer {
    const layer = this.table.get(layerId);
    if (layer === undefined) throw new ShoalError("UNKNOWN_SNAPSHOT", `this node has no layer '${layerId}'; \`shoal snap list\` shows what exists`);
    return layer;
  }
}

/**
 * A data directory of the one-file-per-page store (<data>/pages/) is not read by this one: it
 * says how to carry the data over rather than serve a volume without its pages.
 */
function refuseOldFormat(io: FileIO, dataDir: string): void {
  const oldDir = `${dataDir}/${OLD_PAGES_DIR_NAME}`;
  if (!io.exists(oldDir) || io.list(oldDir).length === 0) return;
  throw new ShoalError(
    "IO_ERROR",
    `${oldDir} holds pages in the old one-file-per-page format, which this version does not read; ` +
      "with the previous shoal, `shoal archive create` each volume, then start this version on an empty data directory and `shoal archive restore` them",
  );
}

function deletingError(layer: StoreLayer): ShoalError {
  return new ShoalError("CONFLICT", `layer '${layer.id}' is being deleted; finish with deleteLayer (a node restart interrupted it)`);
}

function stackedError(layer: StoreLayer, verb: string): ShoalError {
  return new ShoalError("CONFLICT", `layer '${layer.id}' has layers stacked on it (snapshots or clones) and cannot be ${verb}`);
}

function notWritableError(layer: StoreLayer): ShoalError {
  if (layer.deleting) return deletingError(layer);
  return new ShoalError("READ_ONLY", `layer '${layer.id}' has layers stacked on it and is read-only; write to its head layer instead`);
}

export function assertPageRange(pageOffset: number, length: number, pageSizeBytes: number): void {
  if (pageOffset < 0 || length < 0 || pageOffset + length > pageSizeBytes) {
    throw new ShoalError("OUT_OF_RANGE", `range ${pageOffset}+${length} is outside a page of ${pageSizeBytes} bytes`);
  }
}
