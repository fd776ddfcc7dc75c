// Keeps `layers.json` in step with the in-memory LayerTable: saved in the background soon after
// each change, durably (temp file, sync, rename, sync directory) and in version order, so a
// crash leaves either the old table or the new one. Directories a change retired are removed
// only once a table that no longer names them is durable.
import * as fs from "node:fs";
import * as path from "node:path";
import { ShoalError } from "../../errors.ts";
import { replaceFileSync, syncDirectory, writeDurableTemp } from "./_durable-fs.ts";
import { LayerTable } from "./_layer-table.ts";

const TABLE_FILE = "layers.json";
const TEMP_SUFFIX = ".tmp";
const CLOSE_TEMP_SUFFIX = ".tmp-close";

export class LayerTableFile {
  private readonly tablePath: string;
  private durableVersion = 0;
  private writer: Promise<void> | undefined;
  private queued = false;
  private retired: string[] = [];
  private closed = false;

  constructor(
    private readonly dir: string,
    private readonly table: LayerTable,
    /** Counts fsync/fdatasync calls into the store's syncCount. */
    private readonly countSyncs: (count: number) => void,
  ) {
    this.tablePath = path.join(dir, TABLE_FILE);
  }

  /** The saved table, or undefined before the first start with layers (a legacy directory). */
  static load(dir: string): LayerTable | undefined {
    const tablePath = path.join(dir, TABLE_FILE);
    for (const suffix of [TEMP_SUFFIX, CLOSE_TEMP_SUFFIX]) fs.rmSync(`${tablePath}${suffix}`, { force: true });
    if (!fs.existsSync(tablePath)) return undefined;
    return LayerTable.decode(fs.readFileSync(tablePath, "utf8"), tablePath);
  }

  /** A directory no layer names any more: removed after the next durable save. */
  retire(dir: string): void {
    this.retired.push(dir);
  }

  /** Saves the table soon, in the background; whoever needs it durable awaits persist(). */
  changed(): void {
    if (this.queued) return;
    this.queued = true;
    queueMicrotask(() => {
      this.queued = false;
      // A failure leaves durableVersion behind: flush, FUA and deleteLayer save again and report it.
      this.persist().catch(() => undefined);
    });
  }

  /** Resolves once every change made before the call is durable. */
  async persist(): Promise<void> {
    const wanted = this.table.version;
    while (this.durableVersion < wanted) {
      if (this.writer !== undefined) {
        await this.writer;
        continue;
      }
      const writer = this.write();
      this.writer = writer;
      try {
        await writer;
      } finally {
        if (this.writer === writer) this.writer = undefined;
      }
    }
  }

  /** Saves synchronously (start, close) unless nothing changed. */
  saveNow(): void {
    if (this.closed) return;
    replaceFileSync(this.tablePath, `${this.tablePath}${CLOSE_TEMP_SUFFIX}`, this.table.encode(), this.dir);
    this.countSyncs(2);
    this.durableVersion = this.table.version;
  }

  /** Final synchronous save; a background save still in flight will not overwrite it. */
  close(): void {
    // A background save may have a rename of its older temp file queued: take the file away
    // first (rename is atomic: it either ran already, and is overwritten below, or finds nothing).
    fs.rmSync(`${this.tablePath}${TEMP_SUFFIX}`, { force: true });
    if (this.durableVersion < this.table.version) this.saveNow();
    this.closed = true;
  }

  private async write(): Promise<void> {
    const version = this.table.version;
    const text = this.table.encode();
    const retired = this.retired.splice(0);
    const temp = `${this.tablePath}${TEMP_SUFFIX}`;
    try {
      await writeDurableTemp(temp, text);
      this.countSyncs(1);
      if (this.closed) throw new ShoalError("SHUTTING_DOWN", "the page store closed while saving its layer table");
      // Off the event loop: a rename is journaled work that waits milliseconds while the disk
      // syncs, and every client of the node would wait with it. close() removes the temp file
      // first, so this rename can never put an older table over close()'s own save.
      await fs.promises.rename(temp, this.tablePath);
      await syncDirectory(this.dir);
      this.countSyncs(1);
    } catch (err) {
      this.retired.unshift(...retired);
      throw err;
    }
    this.durableVersion = Math.max(this.durableVersion, version);
    // Directories the durable table no longer names; if removing fails, start-up removes them.
    for (const dir of retired) fs.promises.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
