// The pages this node holds, in copy-on-write layers: a volume's head layer (id = volume uid)
// over its snapshots, clones over a snapshot. One sparse file per page a layer holds; a layer
// with a parent holds pages chunk by chunk (see _page-file.ts), so the first write after a
// snapshot copies one 4 KiB chunk (the default), not the page. Taking a snapshot renames no file
// and copies no byte: the head's layer object becomes the snapshot and a new empty head is
// stacked on it; the head's first write to each page renames a spare file made ahead into place.
// Reads and writes are synchronous pread/pwrite (page-cache hits cost microseconds and an async
// hop would cost more); fsync is asynchronous and only on FLUSH, FUA and eviction.
//
// On disk, under <data>/pages/:
//   layers.json           the layer table: id, parent, directory, deleting (see _layer-table.ts)
//   <dir>/<page>          a plain page file (every chunk the layer's own)
//   <dir>/<page>.c        a chunked page file (4 KiB chunk-state header, then the page)
//   ~spares/<n>           empty chunked files made ahead (see _spare-page-files.ts)
// Layer-table changes are saved in the background and are durable once flush() or a FUA
// syncPage() returns; a directory the durable table does not name is removed at start.
import * as fs from "node:fs";
import * as path from "node:path";
import { ShoalError } from "../../errors.ts";
import { fdatasyncAsync, syncDirectory, syncDirectorySync } from "./_durable-fs.ts";
import { type Layer, LayerTable, MAX_CHAIN_LAYERS, validateLayerId } from "./_layer-table.ts";
import { LayerTableFile } from "./_layer-table-file.ts";
import { OpenPageFiles } from "./_open-page-files.ts";
import { SPARES_DIR_NAME, SparePageFiles } from "./_spare-page-files.ts";
import {
  ABSENT,
  allData,
  CHUNK_HEADER_BYTES,
  chunkShiftFor,
  chunksIn,
  DATA,
  dataOffsetOf,
  encodeHeader,
  fileName,
  isAllZero,
  newPageFile,
  type PageFile,
  parseFileName,
  preadFull,
  pwriteFull,
  readHeader,
  validateChunkSize,
  ZERO,
} from "./_page-file.ts";

export interface PageStoreOptions {
  dir: string;
  /** Open page files kept; beyond this the least recently used is synced if dirty and closed. */
  maxOpenFiles?: number;
  /** Copy-on-write unit for layers with a parent; fixed when the store is first created. */
  chunkSizeBytes?: number;
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

/** One layer's copy of a page on its way to another node (see exportPage). */
export interface PagePiece {
  layer: string;
  pageSizeBytes: number;
  /** Chunked copies: chunk size and per-chunk states; `data` is then the DATA chunks in order. */
  chunkShift?: number;
  states?: Uint8Array;
  /** The bytes, in as many parts as they arrived in (one after another). */
  data: Uint8Array[];
}

/** Pages installed by importPage and not yet made durable (see syncImport). */
export class ImportBatch {
  readonly files = new Set<PageFile>();
}

export interface PageExport {
  /** The layers involved, root first, each with its parent. */
  layers: { id: string; parent?: string }[];
  pieces: PagePiece[];
}

/**
 * 4 KiB: a 4 KiB-aligned write after a snapshot replaces whole chunks and copies nothing (at
 * 64 KiB every such write read and rewrote 60 KiB it did not change, and the cut's flush had
 * sixteen times the bytes to sync). One state byte per chunk: 1024 for a 4 MiB page.
 */
export const DEFAULT_CHUNK_SIZE_BYTES = 4 * 1024;
/** Marks a dropped page file awaiting its unlink. */
const TRASH_MARK = ".drop";
const ZERO_WRITE_BYTES_MAX = 1024 * 1024;
/** Time between two page files a deletion unlinks: spreads the filesystem's work (see moveBatch). */
const DROP_SPACING_MS = 4;
/**
 * Syncs one flush keeps in flight. The runtime's small thread pool also makes spare page files
 * and syncs the catalog: a flush of a thousand dirty files must not queue those behind it.
 */
const FLUSH_SYNCS_IN_FLIGHT = 1;
/** Pages a layer deletion moves before making them durable together and dropping the originals. */
const DELETE_BATCH_PAGES = 32;

export class PageStore {
  private readonly dir: string;
  private readonly table: LayerTable;
  private readonly tableFile: LayerTableFile;
  private readonly open: OpenPageFiles;
  /** Files with writes or chunk states not yet durable. */
  private readonly dirty = new Set<PageFile>();
  /**
   * Files whose sync is running: no longer dirty, not yet durable. A flush waits for them too,
   * or one that overlapped another (two clients' FLUSHes, a snapshot cut's) returned early.
   */
  private readonly syncing = new Set<PageFile>();
  /** The same for directories: each one's running sync. */
  private readonly syncingDirs = new Map<string, Promise<void>>();
  private readonly dirtyDirs = new Set<string>();
  /** Deletions run one at a time: each walks a parent/child neighbourhood the next may change. */
  private deletions: Promise<void> = Promise.resolve();
  /** Orders header writes: one captured earlier never overwrites one captured later. */
  private headerSeq = 0;
  private trashSeq = 0;
  private scratch = new Uint8Array(0);
  private zeros = new Uint8Array(0);
  private closed = false;
  /** Empty page files made ahead, which a page's first write in a layer renames into place. */
  private readonly spareFiles: SparePageFiles;
  /** Directories of heads made ahead that no file is in yet (at most one per head). */
  private readonly dirsMadeAhead = new Set<string>();
  /** fsync/fdatasync calls made, for tests and metrics: proves a flush reached this store. */
  syncCount = 0;

  constructor(options: PageStoreOptions) {
    this.dir = path.join(options.dir, "pages");
    fs.mkdirSync(this.dir, { recursive: true });
    this.spareFiles = new SparePageFiles(this.dir);
    this.open = new OpenPageFiles(Math.max(2, options.maxOpenFiles ?? 512), (file) => this.pathOf(file), (file) => this.syncFileNow(file));
    if (options.chunkSizeBytes !== undefined) validateChunkSize(options.chunkSizeBytes);
    const saved = LayerTableFile.load(this.dir);
    if (saved !== undefined && options.chunkSizeBytes !== undefined && options.chunkSizeBytes !== saved.chunkSizeBytes) {
      throw new ShoalError(
        "BAD_ARGUMENT",
        `the page store in ${this.dir} was created with ${saved.chunkSizeBytes}-byte chunks; start it with that chunk size (or none)`,
      );
    }
    this.table = saved ?? new LayerTable(options.chunkSizeBytes ?? DEFAULT_CHUNK_SIZE_BYTES);
    this.tableFile = new LayerTableFile(this.dir, this.table, (count) => (this.syncCount += count));
    this.loadPages(saved === undefined);
    if (saved === undefined || this.table.version > 0) this.tableFile.saveNow();
  }

  // ---- loading

  /**
   * Attaches each layer's directory. A directory the table does not name is a change that never
   * became durable or one retired after it: removed. Before layer tables existed, every
   * directory was a volume (its name the uid) with no parent: adopted as such, once.
   */
  private loadPages(legacy: boolean): void {
    const byDirectory = this.table.byDirectory();
    for (const entry of fs.readdirSync(this.dir, { withFileTypes: true })) {
      // Spares a crash left behind (written or not, nothing names them) and directories no table names go.
      if (!entry.isDirectory() && entry.name !== SPARES_DIR_NAME) continue;
      const layer = entry.name === SPARES_DIR_NAME ? undefined : byDirectory.get(entry.name) ?? (legacy ? this.table.adoptLegacy(entry.name) : undefined);
      if (layer === undefined) {
        fs.rmSync(path.join(this.dir, entry.name), { recursive: true, force: true });
        continue;
      }
      layer.dirExists = true;
      this.loadLayerPages(layer);
    }
  }

  private loadLayerPages(layer: Layer): void {
    const dir = this.layerDir(layer);
    for (const name of fs.readdirSync(dir)) {
      const filePath = path.join(dir, name);
      if (name.includes(TRASH_MARK)) {
        fs.rmSync(filePath, { force: true });
        continue;
      }
      const parsed = parseFileName(name);
      if (parsed === undefined) continue;
      const file = this.loadPageFile(layer, parsed.page, parsed.chunked, filePath);
      // Empty (created, never synced, or a spare nobody took): it holds nothing; a missing file reads the same.
      if (file === undefined) {
        fs.rmSync(filePath, { force: true });
        continue;
      }
      if (layer.pages.has(parsed.page)) {
        throw new ShoalError("IO_ERROR", `${dir} holds page ${parsed.page} twice (plain and chunked); restore this node's data directory`);
      }
      layer.pages.set(parsed.page, file);
    }
  }

  private loadPageFile(layer: Layer, page: number, chunked: boolean, filePath: string): PageFile | undefined {
    if (!chunked) {
      const sizeBytes = fs.statSync(filePath).size;
      return sizeBytes === 0 ? undefined : newPageFile(layer, page, sizeBytes, 0, undefined);
    }
    const fd = fs.openSync(filePath, "r");
    try {
      const header = readHeader(fd, filePath, this.table.chunkSizeBytes);
      return header === undefined ? undefined : newPageFile(layer, page, header.pageSizeBytes, header.chunkShift, header.states);
    } finally {
      fs.closeSync(fd);
    }
  }

  // ---- the data path

  /** True when the layer or a layer below it holds the page (it may not read as zeros). */
  isAllocated(layerId: string, page: number): boolean {
    const layer = this.table.get(layerId);
    if (layer === undefined) return false;
    if (layer.parent === undefined) return layer.pages.has(page);
    return this.heldFrom(this.table.chainOf(layer), 0, page);
  }

  /** Reads `length` bytes at `pageOffset` of a page into target[targetOffset...]. */
  read(layerId: string, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    const layer = this.table.get(layerId);
    if (layer === undefined || length === 0) {
      target.fill(0, targetOffset, targetOffset + length);
      return;
    }
    if (layer.deleting) throw deletingError(layer);
    const file = layer.pages.get(page);
    if (file !== undefined && (file.states === undefined || allData(file.states, pageOffset >> file.chunkShift, (pageOffset + length - 1) >> file.chunkShift))) {
      this.readFile(file, pageOffset, length, target, targetOffset);
      return;
    }
    if (file === undefined && layer.parent === undefined) {
      target.fill(0, targetOffset, targetOffset + length);
      return;
    }
    this.readThrough(this.table.chainOf(layer), 0, page, pageOffset, length, target, targetOffset);
  }

  write(layerId: string, page: number, pageOffset: number, data: Uint8Array, pageSizeBytes: number): void {
    if (data.byteLength === 0) return;
    const layer = this.table.get(layerId) ?? this.createImplicitLayer(layerId);
    if (layer.deleting || layer.children > 0) throw notWritableError(layer);
    const file = layer.pages.get(page) ?? this.createPageFile(layer, page, pageSizeBytes, this.heldBelow(layer, page));
    if (file.states === undefined || allData(file.states, pageOffset >> file.chunkShift, (pageOffset + data.byteLength - 1) >> file.chunkShift)) {
      pwriteFull(this.open.fdOf(file), data, dataOffsetOf(file) + pageOffset);
      this.markDataDirty(file);
      return;
    }
    this.writeChunks(layer, file, pageOffset, data);
  }

  /**
   * Zeroes a range. A whole page of a base layer is dropped (its file removed, freeing the
   * space); a layer with a parent must record the zeros or the parent's bytes would show through.
   */
  zero(layerId: string, page: number, pageOffset: number, length: number, pageSizeBytes: number): void {
    const layer = this.table.get(layerId);
    if (layer === undefined || length === 0) return;
    if (layer.deleting || layer.children > 0) throw notWritableError(layer);
    const file = layer.pages.get(page);
    if (file === undefined && !this.heldBelow(layer, page)) return; // reads as zeros already
    if (pageOffset === 0 && length === pageSizeBytes) {
      this.zeroPage(layer, page, file, pageSizeBytes);
      return;
    }
    const target = file ?? this.createPageFile(layer, page, pageSizeBytes, true);
    if (target.states === undefined) this.writeZeros(target, pageOffset, length);
    else this.zeroChunks(layer, target, pageOffset, length);
  }

  // ---- durability

  /** Makes one page durable (FUA), with its directory entry and the layer table if they changed. */
  async syncPage(layerId: string, page: number): Promise<void> {
    const layer = this.table.get(layerId);
    const file = layer?.pages.get(page);
    if (file !== undefined) await this.syncFile(file);
    if (layer !== undefined) await this.syncDirIfDirty(this.layerDir(layer));
    await this.syncDirIfDirty(this.dir);
    await this.tableFile.persist();
  }

  /** Makes every write and layer change that completed before the call durable. */
  flush(): Promise<void> {
    return this.flushFiles([...this.dirty, ...this.syncing], [...this.dirtyDirs, ...this.syncingDirs.keys()]);
  }

  /**
   * Makes durable what these layers hold (their written files and directory entries) and the
   * layer table; other layers' unsynced writes wait for the next flush. A snapshot's cut needs
   * no more, and must not pay for every other volume's writes on the node.
   */
  flushLayers(layerIds: string[]): Promise<void> {
    const layers = new Set<Layer>();
    for (const id of layerIds) {
      const layer = this.table.get(id);
      if (layer !== undefined) layers.add(layer);
    }
    const files = [...this.dirty, ...this.syncing].filter((file) => layers.has(file.layer));
    // The store's own directory too: it holds the entries of layer directories made since.
    const dirs = [this.dir, ...[...layers].map((layer) => this.layerDir(layer))].filter((dir) => this.dirtyDirs.has(dir) || this.syncingDirs.has(dir));
    return this.flushFiles(files, dirs);
  }

  /**
   * Makes durable every write to a volume's head that completed before the call: those still in
   * the head, and those a snapshot froze into one of its layers (`HEAD@...`, see freezeLayer)
   * before they were synced, or a deleted snapshot's layer handed on to its child.
   */
  flushVolume(headLayerId: string): Promise<void> {
    const prefix = `${headLayerId}@`;
    const ids: string[] = [];
    for (const layer of this.table.all()) if (layer.id === headLayerId || layer.id.startsWith(prefix)) ids.push(layer.id);
    return this.flushLayers(ids);
  }

  private async flushFiles(files: PageFile[], dirs: string[]): Promise<void> {
    await inTurns(files, FLUSH_SYNCS_IN_FLIGHT, (file) => this.syncFile(file));
    await inTurns(dirs, FLUSH_SYNCS_IN_FLIGHT, (dir) => this.syncDirIfDirty(dir));
    await this.tableFile.persist();
  }

  /** Resolves once the spare page files being made are made; for tests. */
  settleSpares(): Promise<void> {
    return this.spareFiles.settled();
  }

  /** Syncs everything synchronously and closes every file; call after `await flush()`. */
  close(): void {
    if (this.closed) return;
    for (const file of [...this.dirty]) this.syncFileNow(file);
    for (const file of this.open.list()) this.open.close(file);
    this.spareFiles.close();
    for (const dir of this.dirtyDirs) syncDirectorySync(dir);
    this.dirtyDirs.clear();
    this.tableFile.close();
    this.closed = true;
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
    this.table.create(layerId, parent);
    this.tableFile.changed();
  }

  /**
   * Why freezeLayer(headLayerId, ...) would fail now, or undefined: a head that already sits on
   * MAX_CHAIN_LAYERS - 1 layers (that many snapshots of one volume) takes no more.
   */
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
   * the head's pages become the snapshot layer's and the head becomes an empty layer over it.
   * O(1): no page file is touched. Durable with the next flush().
   */
  freezeLayer(headLayerId: string, snapshotLayerId: string): void {
    validateLayerId(headLayerId);
    validateLayerId(snapshotLayerId);
    if (this.table.get(snapshotLayerId) !== undefined) {
      throw new ShoalError("SNAPSHOT_EXISTS", `layer '${snapshotLayerId}' already exists on this node`);
    }
    const head = this.table.get(headLayerId) ?? this.table.create(headLayerId, undefined);
    if (head.deleting) throw deletingError(head);
    this.dirsMadeAhead.delete(this.layerDir(head)); // a snapshot's now: never written
    const newHead = this.table.freeze(head, snapshotLayerId);
    this.tableFile.changed();
    this.makeDirAhead(newHead);
  }

  /** Rollback: drops the head's own pages and stacks it on `parentLayerId`; it then reads as that. */
  resetLayer(headLayerId: string, parentLayerId: string | undefined): void {
    const parent = parentLayerId === undefined ? undefined : this.requireLayer(parentLayerId);
    if (parent?.deleting) throw deletingError(parent);
    const head = this.table.get(headLayerId);
    if (head === undefined) {
      this.table.create(headLayerId, parent);
      this.tableFile.changed();
      return;
    }
    if (head.deleting) throw deletingError(head);
    if (head.children > 0) throw stackedError(head, "rolled back");
    if (parent === head) throw new ShoalError("BAD_ARGUMENT", `layer '${head.id}' cannot be its own parent`);
    this.forgetPages(head);
    if (head.dirExists) this.tableFile.retire(this.layerDir(head));
    this.table.renew(head);
    this.table.setParent(head, parent);
    this.tableFile.changed();
  }

  /**
   * Removes a layer. Layers stacked on it first receive the chunks they read through it (a sole
   * child lacking a page takes the file by rename), page by page, yielding to client I/O between
   * steps; only then do they move to the layer's parent. A crash at any point leaves every other
   * layer reading as before, and the layer marked so a second call finishes the job. Idempotent.
   */
  deleteLayer(layerId: string): Promise<void> {
    // Marked now, so reads fail from this call on rather than once the queue reaches it.
    const layer = this.table.get(layerId);
    if (layer !== undefined && !layer.deleting) {
      layer.deleting = true;
      this.table.changed();
      this.tableFile.changed();
    }
    const run = this.deletions.then(() => this.deleteLayerNow(layerId));
    // The next deletion runs whatever this one's fate; this one's caller gets its error.
    this.deletions = run.catch(() => undefined);
    return run;
  }

  /** Removes a layer at once, without moving its pages anywhere (a deleted volume's head). */
  dropVolume(layerId: string): void {
    const layer = this.table.get(layerId);
    if (layer === undefined) return;
    if (layer.deleting) throw deletingError(layer);
    if (layer.children > 0) throw stackedError(layer, "dropped");
    this.forgetPages(layer);
    if (layer.dirExists) this.tableFile.retire(this.layerDir(layer));
    this.table.remove(layer);
    this.tableFile.changed();
  }

  layers(): LayerInfo[] {
    const result: LayerInfo[] = [];
    for (const layer of this.table.all()) {
      result.push({ id: layer.id, parent: layer.parent?.id, pages: layer.pages.size, bytes: heldBytes(layer), deleting: layer.deleting });
    }
    return result.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /**
   * Bytes that deleting `layerId` would free: its chunks that no layer stacked on it reads
   * through to (every child holds that chunk itself). A layer without children frees all it holds.
   */
  exclusiveBytes(layerId: string): number {
    const layer = this.table.get(layerId);
    if (layer === undefined) return 0;
    const children = [...this.table.all()].filter((candidate) => candidate.parent === layer);
    if (children.length === 0) return heldBytes(layer);
    let bytes = 0;
    for (const [page, file] of layer.pages) {
      // Plain files carry no chunk shift of their own; children chunk pages at the store's size.
      const chunkShift = file.states === undefined ? chunkShiftFor(file.pageSizeBytes, this.table.chunkSizeBytes) : file.chunkShift;
      const chunkBytes = 2 ** chunkShift;
      const chunks = file.states === undefined ? chunksIn(file.pageSizeBytes, chunkShift) : file.states.length;
      for (let chunk = 0; chunk < chunks; chunk++) {
        if (file.states !== undefined && file.states[chunk] !== DATA) continue;
        const shadowed = children.every((child) => {
          const own = child.pages.get(page);
          return own !== undefined && (own.states === undefined || own.states[chunk] !== ABSENT);
        });
        if (shadowed) bytes += chunkBytes;
      }
    }
    return bytes;
  }

  /** Pages and bytes each layer holds itself. */
  usage(): Map<string, VolumeUsage> {
    const result = new Map<string, VolumeUsage>();
    for (const layer of this.table.all()) result.set(layer.id, { pages: layer.pages.size, bytes: heldBytes(layer) });
    return result;
  }

  /**
   * Pages that may differ between a layer and its ancestor (all pages held anywhere in its chain
   * without one), sorted; from metadata only. For incremental archives.
   */
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

  /**
   * A page as every layer of a volume holds it, for a move: each layer of the family (the
   * volume's head and snapshots, per `inFamily`) with all layers below, root first, and the
   * bytes of every one that holds the page. Synchronous, so it is one consistent moment.
   * `allocate` provides the buffers (a pool's, so a move does not fault in fresh memory per page).
   */
  exportPage(page: number, inFamily: (layerId: string) => boolean, allocate: (bytes: number) => Uint8Array = (bytes) => new Uint8Array(bytes)): PageExport {
    const layers: Layer[] = [];
    const seen = new Set<Layer>();
    for (const layer of this.table.all()) {
      if (!inFamily(layer.id)) continue;
      const chain = this.table.chainOf(layer);
      for (let index = chain.length - 1; index >= 0; index--) {
        const member = chain[index]!;
        if (seen.has(member)) continue;
        seen.add(member);
        layers.push(member);
      }
    }
    const pieces: PagePiece[] = [];
    for (const layer of layers) {
      const file = layer.pages.get(page);
      if (file === undefined) continue;
      if (file.states === undefined) {
        const data = allocate(file.pageSizeBytes);
        this.readFile(file, 0, file.pageSizeBytes, data, 0);
        pieces.push({ layer: layer.id, pageSizeBytes: file.pageSizeBytes, data: [data] });
        continue;
      }
      // Only the chunks the layer holds itself travel; the others are states.
      const chunkBytes = 2 ** file.chunkShift;
      const data = allocate(file.dataChunks * chunkBytes);
      let at = 0;
      for (const [first, count] of dataRuns(file.states)) {
        this.readFile(file, first * chunkBytes, count * chunkBytes, data, at);
        at += count * chunkBytes;
      }
      pieces.push({ layer: layer.id, pageSizeBytes: file.pageSizeBytes, chunkShift: file.chunkShift, states: file.states.slice(), data: [data] });
    }
    return { layers: layers.map((layer) => ({ id: layer.id, ...(layer.parent ? { parent: layer.parent.id } : {}) })), pieces };
  }

  /**
   * Installs a page exported by another node (durable once syncImport(batch) returns). Layers this store lacks are created and
   * missing ones inserted where the source's stacks have them (an inserted layer holds nothing
   * for the other pages, so they read as before). The family's own copies of the page are
   * replaced; a foreign layer (a clone's origin snapshot, immutable) keeps a copy it has.
   */
  importPage(page: number, exported: PageExport, inFamily: (layerId: string) => boolean, batch: ImportBatch): void {
    this.stackLike(exported.layers);
    const pieces = new Map(exported.pieces.map((piece) => [piece.layer, piece]));
    for (const { id } of exported.layers) {
      const layer = this.table.get(id)!;
      const existing = layer.pages.get(page);
      if (existing !== undefined && !inFamily(id)) continue;
      if (existing !== undefined) this.dropPage(existing);
      const piece = pieces.get(id);
      if (piece !== undefined) batch.files.add(this.writePiece(layer, page, piece));
    }
  }

  /**
   * Starts syncing the batch's files in the background, so the disk writes while more pages
   * arrive; syncImport then waits for little. A failure shows again there (the file stays dirty).
   */
  startSync(batch: ImportBatch): void {
    for (const file of batch.files) this.syncFile(file).catch(() => undefined);
  }

  /** Makes the pages of an import batch durable: their files, directories and the layer table. */
  async syncImport(batch: ImportBatch): Promise<void> {
    await this.syncMoved(batch.files);
    await this.tableFile.persist();
  }

  /** Drops the family's copies of pages this node no longer owns; layers a foreign one stands on keep theirs. */
  dropPages(pages: number[], inFamily: (layerId: string) => boolean): void {
    const standsOn = new Set<Layer>();
    for (const layer of this.table.all()) if (!inFamily(layer.id)) for (const below of this.table.chainOf(layer)) standsOn.add(below);
    for (const layer of this.table.all()) {
      if (!inFamily(layer.id) || standsOn.has(layer)) continue;
      for (const page of pages) {
        const file = layer.pages.get(page);
        if (file !== undefined) this.dropPage(file);
      }
    }
  }

  /** Makes the given layers (root first, with parents) exist here stacked as they are at the source. */
  private stackLike(layers: { id: string; parent?: string }[]): void {
    const sourceParent = new Map(layers.map((layer) => [layer.id, layer.parent]));
    const isBelow = (candidate: string, start: string | undefined): boolean => {
      for (let at = start; at !== undefined; at = sourceParent.get(at)) if (at === candidate) return true;
      return false;
    };
    for (const { id, parent: parentId } of layers) {
      const parent = parentId === undefined ? undefined : this.requireLayer(parentId);
      const layer = this.table.get(id);
      if (layer === undefined) {
        this.table.create(id, parent);
        continue;
      }
      if (layer.deleting) throw deletingError(layer);
      if (layer.parent === parent) continue;
      // Here the layer sits on nothing, or on a layer the source has further down: stack it on
      // the one in between. Anything else means the two nodes disagree about history.
      if (layer.parent === undefined || isBelow(layer.parent.id, parentId)) this.table.setParent(layer, parent);
      else {
        throw new ShoalError("CONFLICT", `layer '${id}' stands on '${layer.parent.id}' here but on '${parentId ?? "nothing"}' at the source`);
      }
    }
    this.tableFile.changed();
  }

  private writePiece(layer: Layer, page: number, piece: PagePiece): PageFile {
    const chunked = piece.states !== undefined;
    if (chunked && piece.chunkShift !== chunkShiftFor(piece.pageSizeBytes, this.table.chunkSizeBytes)) {
      throw new ShoalError("CONFLICT", `page ${page} of layer '${layer.id}' comes in ${2 ** (piece.chunkShift ?? 0)}-byte chunks; this node uses ${this.table.chunkSizeBytes}`);
    }
    const file = this.createPageFile(layer, page, piece.pageSizeBytes, chunked);
    const fd = this.open.fdOf(file);
    // Written straight from the received parts: no gathering copy of a 4 MiB page.
    const bytes = new PartsCursor(piece.data);
    if (!chunked) {
      bytes.writeTo(fd, 0, bytes.remaining, (part) => !isAllZero(part));
    } else {
      const chunkBytes = 2 ** file.chunkShift;
      for (const [first, count] of dataRuns(piece.states!)) bytes.writeTo(fd, CHUNK_HEADER_BYTES + first * chunkBytes, count * chunkBytes, () => true);
      piece.states!.forEach((state, chunk) => {
        if (state !== ABSENT) this.setState(file, chunk, state);
      });
    }
    if (bytes.remaining !== 0) throw new ShoalError("BAD_REQUEST", `page ${page} of layer '${layer.id}' came with ${bytes.remaining} bytes too many`);
    this.markDataDirty(file);
    return file;
  }

  // ---- reading through layers

  private readFile(file: PageFile, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    const done = preadFull(this.open.fdOf(file), target, targetOffset, length, dataOffsetOf(file) + pageOffset);
    // Files are created at full length, so a short read means someone truncated it.
    if (done < length) target.fill(0, targetOffset + done, targetOffset + length);
  }

  /** Reads a range as chain[from] sees it: per chunk, from the first layer that has it. */
  private readThrough(chain: Layer[], from: number, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    let top: PageFile | undefined;
    let topIndex = from;
    for (; top === undefined && topIndex < chain.length; topIndex++) top = chain[topIndex]!.pages.get(page);
    topIndex--;
    if (top === undefined) {
      target.fill(0, targetOffset, targetOffset + length);
      return;
    }
    if (top.states === undefined) {
      this.readFile(top, pageOffset, length, target, targetOffset);
      return;
    }
    // Runs of chunks with the same source become one pread (or one fill).
    const shift = top.chunkShift;
    const end = pageOffset + length;
    let runStart = pageOffset;
    let runSource = sourceOf(chain, topIndex, page, pageOffset >> shift);
    for (let at = ((pageOffset >> shift) + 1) << shift; at < end; at += 1 << shift) {
      const source = sourceOf(chain, topIndex, page, at >> shift);
      if (source === runSource) continue;
      this.readRun(runSource, runStart, at, pageOffset, target, targetOffset);
      runSource = source;
      runStart = at;
    }
    this.readRun(runSource, runStart, end, pageOffset, target, targetOffset);
  }

  private readRun(source: PageFile | null, start: number, stop: number, pageOffset: number, target: Uint8Array, targetOffset: number): void {
    const at = targetOffset + start - pageOffset;
    if (source === null) target.fill(0, at, at + stop - start);
    else this.readFile(source, start, stop - start, target, at);
  }

  private heldBelow(layer: Layer, page: number): boolean {
    return layer.parent !== undefined && this.heldFrom(this.table.chainOf(layer), 1, page);
  }

  private heldFrom(chain: Layer[], from: number, page: number): boolean {
    for (let index = from; index < chain.length; index++) if (chain[index]!.pages.has(page)) return true;
    return false;
  }

  // ---- writing into a layer

  /** Chunk by chunk: a partial write to a chunk the layer lacks copies that chunk up first. */
  private writeChunks(layer: Layer, file: PageFile, pageOffset: number, data: Uint8Array): void {
    const states = file.states!;
    const chunkBytes = 2 ** file.chunkShift;
    const end = pageOffset + data.byteLength;
    for (let at = pageOffset; at < end; ) {
      const chunk = at >> file.chunkShift;
      const chunkStart = chunk * chunkBytes;
      const stop = Math.min(end, chunkStart + chunkBytes);
      const piece = data.subarray(at - pageOffset, stop - pageOffset);
      const state = states[chunk];
      if (state === DATA || (at === chunkStart && stop === chunkStart + chunkBytes)) {
        pwriteFull(this.open.fdOf(file), piece, CHUNK_HEADER_BYTES + at);
      } else {
        // ZERO: the region may still hold bytes from before the zeroing; write the whole chunk.
        const scratch = this.scratchOf(chunkBytes);
        if (state === ZERO) scratch.fill(0);
        else this.readThrough(this.table.chainOf(layer), 1, file.page, chunkStart, chunkBytes, scratch, 0);
        scratch.set(piece, at - chunkStart);
        pwriteFull(this.open.fdOf(file), scratch, CHUNK_HEADER_BYTES + chunkStart);
      }
      this.setState(file, chunk, DATA);
      at = stop;
    }
    this.markDataDirty(file);
  }

  private zeroChunks(layer: Layer, file: PageFile, pageOffset: number, length: number): void {
    const chunkBytes = 2 ** file.chunkShift;
    const end = pageOffset + length;
    for (let at = pageOffset; at < end; ) {
      const chunkStart = (at >> file.chunkShift) * chunkBytes;
      const stop = Math.min(end, chunkStart + chunkBytes);
      if (at === chunkStart && stop === chunkStart + chunkBytes) this.setState(file, at >> file.chunkShift, ZERO);
      else this.writeChunks(layer, file, at, this.zerosOf(stop - at));
      at = stop;
    }
  }

  private zeroPage(layer: Layer, page: number, file: PageFile | undefined, pageSizeBytes: number): void {
    if (layer.parent === undefined) {
      if (file !== undefined) this.dropPage(file);
      return;
    }
    if (file === undefined) {
      // A sparse plain file: every chunk the layer's own, all zeros.
      this.markDataDirty(this.createPageFile(layer, page, pageSizeBytes, false));
      return;
    }
    // Truncating frees the blocks; the header (kept, it is below the cut) still describes
    // chunks as before until it is rewritten after the next sync, and either way reads zeros
    // or the old bytes per chunk, never a mix within a sector.
    if (file.states !== undefined) for (let chunk = 0; chunk < file.states.length; chunk++) this.setState(file, chunk, ZERO);
    const fd = this.open.fdOf(file);
    fs.ftruncateSync(fd, dataOffsetOf(file));
    fs.ftruncateSync(fd, dataOffsetOf(file) + file.pageSizeBytes);
    this.markDataDirty(file);
  }

  private writeZeros(file: PageFile, pageOffset: number, length: number): void {
    for (let done = 0; done < length; done += ZERO_WRITE_BYTES_MAX) {
      pwriteFull(this.open.fdOf(file), this.zerosOf(Math.min(ZERO_WRITE_BYTES_MAX, length - done)), pageOffset + done);
    }
    this.markDataDirty(file);
  }

  private createPageFile(layer: Layer, page: number, pageSizeBytes: number, chunked: boolean): PageFile {
    const chunkShift = chunked ? chunkShiftFor(pageSizeBytes, this.table.chunkSizeBytes) : 0;
    const states = chunked ? new Uint8Array(chunksIn(pageSizeBytes, chunkShift)) : undefined;
    const file = newPageFile(layer, page, pageSizeBytes, chunkShift, states);
    this.ensureDir(layer);
    // A plain file is a base layer's page, made once in its life; chunked ones come after every snapshot.
    const fd = (chunked ? this.renameSpare(file) : undefined) ?? this.makeFile(file);
    layer.pages.set(page, file);
    this.dirtyDirs.add(this.layerDir(layer));
    this.open.adopt(file, fd);
    return file;
  }

  /** A spare renamed into the file's place, its descriptor; undefined when none is ready. */
  private renameSpare(file: PageFile): number | undefined {
    const spare = this.spareFiles.take(file.pageSizeBytes);
    if (spare === undefined) return undefined;
    try {
      fs.renameSync(spare.filePath, this.pathOf(file));
      return spare.fd;
    } catch {
      fs.closeSync(spare.fd); // left where it is; start-up removes it, and makeFile reports what is wrong
      return undefined;
    }
  }

  private makeFile(file: PageFile): number {
    const fd = fs.openSync(this.pathOf(file), "w+");
    try {
      fs.ftruncateSync(fd, dataOffsetOf(file) + file.pageSizeBytes);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    return fd;
  }

  /**
   * Removes a page file. Unlinking a written 4 MiB file frees its blocks and cached pages, which
   * takes milliseconds; so it is renamed out of the way (atomic, microseconds) and unlinked off
   * the event loop. A trash file left by a crash is removed at start.
   */
  private dropPage(file: PageFile): Promise<void> {
    this.open.close(file);
    this.markClean(file);
    const filePath = this.pathOf(file);
    const trash = `${filePath}${TRASH_MARK}${++this.trashSeq}`;
    let unlinked = Promise.resolve();
    try {
      fs.renameSync(filePath, trash);
      unlinked = fs.promises.unlink(trash).catch(() => undefined); // a leftover is removed at the next start
    } catch (err) {
      if ((err as { code?: string }).code !== "ENOENT") throw err;
    }
    file.layer.pages.delete(file.page);
    this.dirtyDirs.add(this.layerDir(file.layer));
    return unlinked;
  }

  /** Forgets every page of a layer whose directory is being retired (no unlink per file). */
  private forgetPages(layer: Layer): void {
    this.dirsMadeAhead.delete(this.layerDir(layer));
    for (const file of layer.pages.values()) {
      this.open.close(file);
      this.markClean(file);
    }
    layer.pages.clear();
  }

  private setState(file: PageFile, chunk: number, state: number): void {
    const states = file.states!;
    const old = states[chunk];
    if (old === state) return;
    if (old === DATA) file.dataChunks--;
    if (state === DATA) file.dataChunks++;
    states[chunk] = state;
    if (!file.headerDirty) {
      file.headerDirty = true;
      this.dirty.add(file);
    }
  }

  private markDataDirty(file: PageFile): void {
    if (file.dataDirty) return;
    file.dataDirty = true;
    this.dirty.add(file);
  }

  private markClean(file: PageFile): void {
    file.dataDirty = false;
    file.headerDirty = false;
    this.dirty.delete(file);
  }

  private createImplicitLayer(layerId: string): Layer {
    const layer = this.table.create(layerId, undefined);
    this.tableFile.changed();
    return layer;
  }

  private ensureDir(layer: Layer): void {
    if (layer.dirExists) return;
    const dir = this.layerDir(layer);
    if (!this.dirsMadeAhead.delete(dir)) fs.mkdirSync(dir, { recursive: true });
    layer.dirExists = true;
    this.dirtyDirs.add(this.dir); // the new entry must be durable before any file in it is
  }

  /**
   * A new head's directory, made off the event loop: its first write then needs no journal work.
   * Counted as made (and its entry owed a sync) only once a file goes in: an idle volume's
   * snapshots cost no sync.
   */
  private makeDirAhead(layer: Layer): void {
    const dir = this.layerDir(layer);
    fs.promises.mkdir(dir, { recursive: true }).then(
      // A layer renewed, dropped or frozen meanwhile leaves an empty directory: harmless, and
      // start-up removes it if no table names it.
      () => void (this.table.get(layer.id) === layer && this.layerDir(layer) === dir && !layer.dirExists && this.dirsMadeAhead.add(dir)),
      () => undefined, // ensureDir makes it inline and reports what goes wrong
    );
  }

  // ---- syncing files

  /** Data first, then the header that claims it: a crash never shows a chunk whose bytes are not on disk. */
  private async syncFile(file: PageFile): Promise<void> {
    // One sync per file at a time, so an older header never lands after a newer one. A failure
    // of the sync we waited for is its caller's to report; this call tries again below.
    while (file.syncing !== undefined) await file.syncing.catch(() => undefined);
    if (!file.dataDirty && !file.headerDirty) return;
    const run = this.runSync(file);
    file.syncing = run;
    this.syncing.add(file);
    try {
      await run;
    } finally {
      file.syncing = undefined;
      this.syncing.delete(file);
    }
  }

  private async runSync(file: PageFile): Promise<void> {
    // A chunk-state change (a trim of whole chunks) dirties a file without opening it.
    const fd = this.open.fdOf(file);
    const data = file.dataDirty;
    const header = file.headerDirty ? encodeHeader(file, file.states!) : undefined;
    const seq = ++this.headerSeq;
    this.markClean(file);
    try {
      if (data) {
        this.syncCount++;
        await fdatasyncAsync(fd);
      }
      if (header !== undefined && this.claimHeader(file, seq)) {
        pwriteFull(fd, header, 0);
        this.syncCount++;
        await fdatasyncAsync(fd);
      }
    } catch (err) {
      this.restoreDirty(file, data, header !== undefined);
      throw err;
    }
  }

  /** The synchronous form, for eviction and close. */
  private syncFileNow(file: PageFile): void {
    if (!file.dataDirty && !file.headerDirty) return;
    const fd = this.open.fdOf(file);
    const data = file.dataDirty;
    const header = file.headerDirty ? encodeHeader(file, file.states!) : undefined;
    const seq = ++this.headerSeq;
    this.markClean(file);
    try {
      if (data) {
        this.syncCount++;
        fs.fdatasyncSync(fd);
      }
      if (header !== undefined && this.claimHeader(file, seq)) {
        pwriteFull(fd, header, 0);
        this.syncCount++;
        fs.fdatasyncSync(fd);
      }
    } catch (err) {
      this.restoreDirty(file, data, header !== undefined);
      throw err;
    }
  }

  private claimHeader(file: PageFile, seq: number): boolean {
    if (file.headerWrittenSeq > seq) return false; // a newer header is already written
    file.headerWrittenSeq = seq;
    return true;
  }

  private restoreDirty(file: PageFile, data: boolean, header: boolean): void {
    if (file.layer.pages.get(file.page) !== file) return; // dropped meanwhile: nothing to keep
    if (data) file.dataDirty = true;
    if (header) file.headerDirty = true;
    if (data || header) this.dirty.add(file);
  }

  /**
   * Syncs a directory whose entries changed; if another caller's sync of it is running, waits for
   * that one instead (it started after those changes were made, or they would still be dirty).
   */
  private async syncDirIfDirty(dir: string): Promise<void> {
    if (!this.dirtyDirs.delete(dir)) return this.syncingDirs.get(dir);
    const run = syncDirectory(dir);
    this.syncingDirs.set(dir, run);
    try {
      await run;
    } catch (err) {
      this.dirtyDirs.add(dir);
      throw err;
    } finally {
      if (this.syncingDirs.get(dir) === run) this.syncingDirs.delete(dir);
    }
    this.syncCount++;
  }

  // ---- deleting a layer

  private async deleteLayerNow(layerId: string): Promise<void> {
    const layer = this.table.get(layerId);
    if (layer === undefined) return; // already gone: a retry after a crash is safe
    // Durably marked before anything moves: after a crash the half-emptied layer refuses reads.
    await this.tableFile.persist();
    const pages = [...layer.pages.keys()].sort((a, b) => a - b);
    for (let start = 0; start < pages.length; start += DELETE_BATCH_PAGES) {
      await this.moveBatch(layer, pages.slice(start, start + DELETE_BATCH_PAGES));
    }
    for (const child of this.table.childrenOf(layer)) this.table.setParent(child, layer.parent);
    if (layer.dirExists) this.tableFile.retire(this.layerDir(layer));
    this.table.remove(layer);
    await this.tableFile.persist();
  }

  /**
   * Gives every child the chunks it reads through `layer` for these pages, durably, then drops
   * the layer's files. Children are looked up at every step: clients keep writing to them, and
   * a child may be frozen (its object becomes the snapshot, still our child) or rolled back.
   */
  private async moveBatch(layer: Layer, pages: number[]): Promise<void> {
    const touched = new Set<PageFile>();
    // Whether any child got anything: a page every child overwrote in full (the common case
    // for an old snapshot) moves nothing, and then nothing needs an fsync before the drop:
    // a directory fsync commits the filesystem's journal, which flushes the clients' writes.
    let moved = false;
    // 1. Every child but one that lacks the page gets the chunks: merged into its file or copied.
    //    The layer's own file is synced too, so a child that adopts it gets durable bytes.
    for (const page of pages) {
      const source = layer.pages.get(page);
      if (source === undefined) continue;
      const lacking: Layer[] = [];
      for (const child of this.table.childrenOf(layer)) {
        if (child.pages.has(page)) moved = (await this.mergeInto(child, source, touched)) || moved;
        else lacking.push(child);
      }
      if (lacking.length > 0) touched.add(source);
      lacking.pop();
      for (const child of lacking) {
        await this.copyInto(child, source, touched);
        moved = true;
      }
      await this.pause();
    }
    if (moved || touched.size > 0) await this.syncMoved(touched);
    // 2. With those durable, a sole child still lacking a page takes the file itself, by rename.
    for (const page of pages) {
      const source = layer.pages.get(page);
      if (source === undefined) continue;
      let changed = false;
      for (const child of this.table.childrenOf(layer)) {
        if (child.pages.has(page)) changed = (await this.mergeInto(child, source, touched)) || changed;
      }
      // Looked up in the same turn as the rename: nothing can change in between.
      const lacking = this.table.childrenOf(layer).filter((child) => !child.pages.has(page));
      if (lacking.length === 1 && !changed) this.adopt(lacking[0]!, source);
      else for (const child of lacking) await this.copyInto(child, source, touched);
      moved ||= changed || lacking.length > 0;
      await this.pause();
    }
    if (moved) await this.syncMoved(touched);
    // 3. Every child now holds what it read through the layer: the layer's copies can go, one
    //    unlink at a time: freeing a 4 MiB file's blocks is filesystem journal work, and a burst
    //    of them stalls the clients' writes.
    for (const page of pages) {
      const source = layer.pages.get(page);
      if (source === undefined) continue;
      await this.unlinkDeleted(source);
      await this.pause(DROP_SPACING_MS);
    }
  }

  /**
   * Removes a page file of a layer being deleted, entirely off the event loop. Unlike dropPage no
   * rename first: nothing makes a file at this path again (the layer is marked deleting and its
   * directory goes with it), and a crash before the unlink leaves a file the resumed deletion drops.
   */
  private async unlinkDeleted(file: PageFile): Promise<void> {
    this.open.close(file);
    this.markClean(file);
    file.layer.pages.delete(file.page);
    await fs.promises.unlink(this.pathOf(file)).catch(() => undefined); // a leftover goes with the directory
  }

  /** Copies into a child's page file the chunks it lacks and `source` has; true if any changed. */
  private async mergeInto(child: Layer, source: PageFile, touched: Set<PageFile>): Promise<boolean> {
    let changed = false;
    for (let chunk = 0; ; chunk++) {
      // Looked up again after every yield: the child may have been rolled back or dropped.
      const target = child.pages.get(source.page);
      if (target === undefined || target.states === undefined || child.parent !== source.layer) return changed;
      if (chunk >= target.states.length) return changed;
      if (target.states[chunk] !== ABSENT) continue;
      const state = source.states === undefined ? DATA : source.states[chunk];
      if (state === ABSENT) continue;
      if (state === ZERO) this.setState(target, chunk, ZERO);
      else this.copyChunk(source, target, chunk);
      touched.add(target);
      changed = true;
      await this.pause();
    }
  }

  private async copyInto(child: Layer, source: PageFile, touched: Set<PageFile>): Promise<void> {
    // The child may have been rolled back or dropped while an earlier step yielded.
    if (child.parent !== source.layer || this.table.get(child.id) !== child) return;
    if (!child.pages.has(source.page)) touched.add(this.createPageFile(child, source.page, source.pageSizeBytes, true));
    await this.mergeInto(child, source, touched);
  }

  /** Lets client I/O run between deletion steps; a closed store stops the deletion there. */
  private async pause(ms = 0): Promise<void> {
    await (ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : yieldToClients());
    if (this.closed) throw new ShoalError("SHUTTING_DOWN", "the page store closed during a layer deletion; it resumes when deleteLayer is called again");
  }

  private copyChunk(source: PageFile, target: PageFile, chunk: number): void {
    const chunkBytes = 2 ** target.chunkShift;
    const start = chunk * chunkBytes;
    const scratch = this.scratchOf(chunkBytes);
    this.readFile(source, start, chunkBytes, scratch, 0);
    // An all-zero chunk (a hole in a sparse file, mostly) is recorded, not written.
    if (isAllZero(scratch)) {
      this.setState(target, chunk, ZERO);
      return;
    }
    pwriteFull(this.open.fdOf(target), scratch, CHUNK_HEADER_BYTES + start);
    this.markDataDirty(target);
    this.setState(target, chunk, DATA);
  }

  private adopt(child: Layer, source: PageFile): void {
    const from = source.layer;
    this.ensureDir(child);
    const fromPath = this.pathOf(source);
    source.layer = child;
    try {
      fs.renameSync(fromPath, this.pathOf(source));
    } catch (err) {
      source.layer = from;
      throw err;
    }
    from.pages.delete(source.page);
    child.pages.set(source.page, source);
    this.dirtyDirs.add(this.layerDir(child));
    this.dirtyDirs.add(this.layerDir(from));
  }

  private async syncMoved(touched: Set<PageFile>): Promise<void> {
    const files = [...touched];
    touched.clear();
    await Promise.all(files.map((file) => this.syncFile(file)));
    await Promise.all([...this.dirtyDirs, ...this.syncingDirs.keys()].map((dir) => this.syncDirIfDirty(dir)));
  }

  // ---- small helpers

  private requireLayer(layerId: string): Layer {
    const layer = this.table.get(layerId);
    if (layer === undefined) throw new ShoalError("UNKNOWN_SNAPSHOT", `this node has no layer '${layerId}'; \`shoal snap list\` shows what exists`);
    return layer;
  }

  private layerDir(layer: Layer): string {
    return path.join(this.dir, layer.dir);
  }

  private pathOf(file: PageFile): string {
    return path.join(this.dir, file.layer.dir, fileName(file.page, file.states !== undefined));
  }

  private scratchOf(bytes: number): Uint8Array {
    if (this.scratch.byteLength < bytes) this.scratch = new Uint8Array(bytes);
    return this.scratch.subarray(0, bytes);
  }

  /** A shared run of zeros; never written into. */
  private zerosOf(bytes: number): Uint8Array {
    if (this.zeros.byteLength < bytes) this.zeros = new Uint8Array(bytes);
    return this.zeros.subarray(0, bytes);
  }
}

/** Reads byte arrays one after another, as if they were one. */
class PartsCursor {
  private index = 0;
  private offset = 0;
  remaining: number;

  constructor(private readonly parts: Uint8Array[]) {
    this.remaining = parts.reduce((sum, part) => sum + part.byteLength, 0);
  }

  /** pwrites the next `length` bytes at `position`, skipping pieces `worth` turns down (all zeros into a sparse file). */
  writeTo(fd: number, position: number, length: number, worth: (piece: Uint8Array) => boolean): void {
    if (length > this.remaining) throw new ShoalError("BAD_REQUEST", `a page copy is ${length - this.remaining} bytes short`);
    this.remaining -= length;
    while (length > 0) {
      const part = this.parts[this.index]!;
      const take = Math.min(length, part.byteLength - this.offset);
      const piece = part.subarray(this.offset, this.offset + take);
      if (worth(piece)) pwriteFull(fd, piece, position);
      position += take;
      length -= take;
      this.offset += take;
      if (this.offset === part.byteLength) {
        this.index++;
        this.offset = 0;
      }
    }
  }
}

/** Per chunk: the file it reads from (first in the chain that has it), or null for zeros. */
function sourceOf(chain: Layer[], from: number, page: number, chunk: number): PageFile | null {
  for (let index = from; index < chain.length; index++) {
    const file = chain[index]!.pages.get(page);
    if (file === undefined) continue;
    if (file.states === undefined) return file;
    const state = file.states[chunk];
    if (state === DATA) return file;
    if (state === ZERO) return null;
  }
  return null;
}

function heldBytes(layer: Layer): number {
  let bytes = 0;
  for (const file of layer.pages.values()) bytes += file.states === undefined ? file.pageSizeBytes : file.dataChunks * 2 ** file.chunkShift;
  return bytes;
}

function yieldToClients(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function deletingError(layer: Layer): ShoalError {
  return new ShoalError("CONFLICT", `layer '${layer.id}' is being deleted; finish with deleteLayer (a node restart interrupted it)`);
}

function stackedError(layer: Layer, verb: string): ShoalError {
  return new ShoalError("CONFLICT", `layer '${layer.id}' has layers stacked on it (snapshots or clones) and cannot be ${verb}`);
}

function notWritableError(layer: Layer): ShoalError {
  if (layer.deleting) return deletingError(layer);
  return new ShoalError("READ_ONLY", `layer '${layer.id}' has layers stacked on it and is read-only; write to its head layer instead`);
}

export function assertPageRange(pageOffset: number, length: number, pageSizeBytes: number): void {
  if (pageOffset < 0 || length < 0 || pageOffset + length > pageSizeBytes) {
    throw new ShoalError("OUT_OF_RANGE", `range ${pageOffset}+${length} is outside a page of ${pageSizeBytes} bytes`);
  }
}

/** Runs `work` over `items` with at most `inFlight` running at once; rejects with the first failure, after all settled. */
async function inTurns<T>(items: T[], inFlight: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const lane = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await work(item).catch((err) => (failure ??= err));
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, items.length) }, lane));
  if (failure !== undefined) throw failure;
}

/** Runs of consecutive DATA chunks as [first chunk, count]: one read or write each, not one per chunk. */
function* dataRuns(states: Uint8Array): Generator<[number, number]> {
  for (let chunk = 0; chunk < states.length; chunk++) {
    if (states[chunk] !== DATA) continue;
    const first = chunk;
    while (chunk + 1 < states.length && states[chunk + 1] === DATA) chunk++;
    yield [first, chunk - first + 1];
  }
}

