// Makes writes and map changes durable: per commit, one fdatasync per layer file written since
// the last, one directory fsync if a layer file was made, then one journal frame and its
// fdatasync. The map states written are captured before the data syncs start, so a chunk is
// never recorded as the layer's own before its bytes are on disk. Commits run one at a time;
// requests that arrive while one runs are served together by the next (group commit).
import { fatal } from "../invariant.ts";
import type { FileIO } from "./file-io.ts";
import { statesView } from "./_chunks.ts";
import { encodeFrame, encodeSection, type Journal } from "./_journal.ts";
import type { LayerTable, StoreLayer } from "./_layers.ts";

/** A journal over this size (by default), and this many times its checkpoint, is rewritten as a new checkpoint. */
export const DEFAULT_JOURNAL_COMPACT_BYTES = 16 * 1024 * 1024;
const COMPACT_RATIO = 4;

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** A layer file no layer names any more, to close and remove once a table without it is durable. */
export interface FileToRemove {
  path: string;
  fd: number;
}

export class Commits {
  private running = false;
  /** The next commit: the layers it covers (undefined: all) and who waits for it. */
  private queued: { layers: Set<StoreLayer> | undefined; waiters: Waiter[] } | undefined;
  private committedTableVersion = -1;
  /** A layer file was made since the directory was last synced. */
  newFiles = false;
  readonly filesToRemove: FileToRemove[] = [];
  /** fdatasync/fsync calls made: proves a flush reached the disk (tests, metrics). */
  syncCount = 0;
  /** Bytes written into layer files and not yet synced, over all layers. */
  dirtyBytes = 0;

  constructor(
    private readonly io: FileIO,
    private readonly dir: string,
    private readonly table: LayerTable,
    private readonly journal: Journal,
    private readonly compactBytes: number,
  ) {}

  /** Resolves once every write and change to these layers (all: undefined) made before the call is durable. */
  request(layers: Set<StoreLayer> | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.queued === undefined) this.queued = { layers, waiters: [] };
      else if (layers === undefined || this.queued.layers === undefined) this.queued.layers = undefined;
      else for (const layer of layers) this.queued.layers.add(layer);
      this.queued.waiters.push({ resolve, reject });
      this.kick();
    });
  }

  noteWritten(layer: StoreLayer, bytes: number): void {
    layer.dirtyBytes += bytes;
    this.dirtyBytes += bytes;
  }

  /** A layer's files go once a table without them is durable: what they hold unsynced is never needed. */
  removeFilesAtCommit(layer: StoreLayer, fileOf: (segment: number) => string): void {
    this.dirtyBytes -= layer.dirtyBytes;
    layer.dirtyBytes = 0;
    layer.fds.forEach((fd, segment) => this.filesToRemove.push({ path: fileOf(segment), fd }));
    layer.fds = [];
  }

  /**
   * Makes everything durable synchronously as one new checkpoint, then closes the journal: a
   * commit still in flight then fails at its append instead of landing an older map after this.
   */
  closeNow(): void {
    const layers = [...this.table.all()];
    for (const layer of layers) for (const fd of openFds(layer)) this.io.fdatasyncNow(fd);
    this.io.syncDirNow(this.dir);
    const sections = layers.map((layer) => captureMap(layer, true));
    this.journal.replaceNow(encodeFrame(this.table.toRecord(), sections.map(({ section }) => section)));
    this.journal.close();
    this.syncCount += layers.length + 3;
    for (const layer of layers) {
      layer.dirtyBytes = 0;
      for (const fd of openFds(layer)) this.io.close(fd);
      layer.fds = [];
    }
    this.dirtyBytes = 0;
    for (const file of this.filesToRemove.splice(0)) {
      if (file.fd >= 0) this.io.close(file.fd);
      this.io.unlink(file.path);
    }
  }

  /** The table as loaded is the durable one. */
  markLoaded(): void {
    this.committedTableVersion = this.table.version;
  }

  /** Whether anything waits to be made durable. */
  get idle(): boolean {
    return !this.running && this.queued === undefined;
  }

  private kick(): void {
    if (this.running || this.queued === undefined) return;
    const { layers, waiters } = this.queued;
    this.queued = undefined;
    this.running = true;
    this.run(layers).then(
      () => {
        this.running = false;
        for (const waiter of waiters) waiter.resolve();
        this.kick();
      },
      (err) => {
        this.running = false;
        for (const waiter of waiters) waiter.reject(err);
        this.kick();
      },
    );
  }

  private async run(only: Set<StoreLayer> | undefined): Promise<void> {
    const layers = only === undefined ? [...this.table.all()] : [...only].filter((layer) => this.table.get(layer.id) === layer);
    await this.commit(layers, false);
    if (this.journal.sizeBytes > this.compactBytes && this.journal.sizeBytes > COMPACT_RATIO * this.journal.checkpointBytes) {
      await this.commit([...this.table.all()], true);
    }
  }

  /** One commit (or, `checkpoint`, a whole new journal) over `layers`, captured in this turn. */
  private async commit(only: StoreLayer[], checkpoint: boolean): Promise<void> {
    const tableChanged = checkpoint || this.table.version !== this.committedTableVersion;
    const stackedOn = tableChanged ? [...this.table.stackedOn] : [];
    if (tableChanged) this.table.stackedOn.clear();
    const layers = [...new Set([...only, ...stackedOn.filter((layer) => this.table.get(layer.id) === layer)])];
    const syncs = layers.filter((layer) => layer.dirtyBytes > 0 && layer.fds.length > 0).map((layer) => ({ layer, bytes: layer.dirtyBytes }));
    for (const { layer, bytes } of syncs) {
      layer.dirtyBytes = 0;
      this.dirtyBytes -= bytes;
    }
    const sections = layers.filter((layer) => checkpoint || layer.dirtyPages.size > 0).map((layer) => captureMap(layer, checkpoint));
    const tableVersion = this.table.version;
    const tableRecord = tableChanged ? this.table.toRecord() : undefined;
    const removing = tableChanged ? this.filesToRemove.splice(0) : [];
    if (syncs.length === 0 && sections.length === 0 && !tableChanged) return;
    const syncDir = this.newFiles;
    this.newFiles = false;
    try {
      // The new file's name and the data are independent; the journal frame needs both durable.
      const fds = syncs.flatMap(({ layer }) => openFds(layer));
      await Promise.all([...fds.map((fd) => this.io.fdatasync(fd)), ...(syncDir ? [this.io.syncDir(this.dir)] : [])]);
      this.syncCount += fds.length + (syncDir ? 1 : 0);
      const frame = encodeFrame(tableRecord, sections.map(({ section }) => section));
      await (checkpoint ? this.journal.replace(frame) : this.journal.append(frame));
      this.syncCount += checkpoint ? 2 : 1;
    } catch (err) {
      // After a failed fsync the page cache may have dropped what it could not write, and a
      // retry would report success for lost bytes: the node stops here (core/invariant.ts).
      // Without a handler (unit tests) the commit stays owed, as below.
      if (!this.journal.closed) fatal(err, "syncing the page store failed");
      // Still owed: the next commit tries again and its callers hear of any failure.
      for (const { layer, bytes } of syncs) if (this.table.get(layer.id) === layer) this.noteWritten(layer, bytes);
      for (const { layer, pages } of sections) for (const page of pages) layer.dirtyPages.add(page);
      this.filesToRemove.unshift(...removing);
      for (const layer of stackedOn) this.table.stackedOn.add(layer);
      this.newFiles ||= syncDir;
      throw err;
    }
    if (tableChanged) this.committedTableVersion = Math.max(this.committedTableVersion, tableVersion);
    for (const file of removing) {
      if (file.fd >= 0) this.io.close(file.fd);
      // Off the event loop; durable with the next directory sync; start-up removes a leftover.
      this.io.unlinkAsync(file.path).catch(() => undefined);
    }
  }
}

/** The layer's open segment files (a sparse array: segments never written have none). */
function openFds(layer: StoreLayer): number[] {
  return layer.fds.filter((fd) => fd !== undefined);
}

/** The layer's map as it is now (the dirty pages, or `all`), encoded at once: later changes cannot reach the bytes. */
function captureMap(layer: StoreLayer, all: boolean): { layer: StoreLayer; pages: number[]; section: Uint8Array } {
  const pages = [...(all ? layer.pages.keys() : layer.dirtyPages.values())];
  layer.dirtyPages.clear();
  return { layer, pages, section: encodeSection(layer.key, pages, (index) => {
      const entry = layer.pages.get(pages[index]!);
      return entry === undefined ? undefined : statesView(entry);
    }) };
}
