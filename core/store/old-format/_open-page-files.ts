// A bounded set of open page-file descriptors, least recently used first out. The list is
// threaded through the PageFile objects themselves, so touching a file on the hot path
// allocates nothing. A descriptor with an fdatasync in flight is never closed under it.
import * as fs from "node:fs";
import type { PageFile } from "./_page-file.ts";

/** How far past the oldest open file eviction looks for clean files before syncing a dirty one. */
const CLEAN_SCAN_LIMIT = 64;

export class OpenPageFiles {
  private newest: PageFile | undefined;
  private oldest: PageFile | undefined;
  private count = 0;

  constructor(
    private readonly limit: number,
    private readonly pathOf: (file: PageFile) => string,
    /** Makes a dirty file durable before it is closed (eviction must not lose the sync). */
    private readonly beforeEvict: (file: PageFile) => void,
  ) {}

  /** The file's descriptor, opened if need be. Valid until the next call (which may evict). */
  fdOf(file: PageFile): number {
    if (file.fd >= 0) {
      if (file !== this.newest) {
        this.unlink(file);
        this.pushNewest(file);
      }
      return file.fd;
    }
    return this.adopt(file, fs.openSync(this.pathOf(file), "r+"));
  }

  /** Registers a descriptor the caller just opened (a new file). */
  adopt(file: PageFile, fd: number): number {
    file.fd = fd;
    this.pushNewest(file);
    this.count++;
    this.evictIfNeeded();
    return fd;
  }

  /** Closes without syncing (the caller synced, or the file's contents no longer matter). */
  close(file: PageFile): void {
    if (file.fd < 0) return;
    this.unlink(file);
    this.count--;
    const fd = file.fd;
    file.fd = -1;
    if (file.syncing) file.syncing.then(() => fs.closeSync(fd), () => fs.closeSync(fd));
    else fs.closeSync(fd);
  }

  /** Open files, oldest first; a snapshot, so the caller may close them while iterating. */
  list(): PageFile[] {
    const files: PageFile[] = [];
    for (let file = this.oldest; file !== undefined; file = file.newer) files.push(file);
    return files;
  }

  private evictIfNeeded(): void {
    if (this.count <= this.limit) return;
    // A clean file closes for free; a dirty one costs a synchronous fdatasync on the event loop.
    // So look a bounded way past the oldest for clean files first.
    let scanned = 0;
    let candidate = this.oldest;
    while (this.count > this.limit && candidate !== undefined && candidate !== this.newest && scanned < CLEAN_SCAN_LIMIT) {
      const next = candidate.newer;
      if (candidate.syncing === undefined && !candidate.dataDirty && !candidate.headerDirty) this.close(candidate);
      candidate = next;
      scanned++;
    }
    candidate = this.oldest;
    while (this.count > this.limit && candidate !== undefined && candidate !== this.newest) {
      const next = candidate.newer;
      if (candidate.syncing === undefined) {
        this.beforeEvict(candidate);
        this.close(candidate);
      }
      candidate = next;
    }
  }

  private pushNewest(file: PageFile): void {
    file.older = this.newest;
    file.newer = undefined;
    if (this.newest) this.newest.newer = file;
    else this.oldest = file;
    this.newest = file;
  }

  private unlink(file: PageFile): void {
    if (file.older) file.older.newer = file.newer;
    else this.oldest = file.newer;
    if (file.newer) file.newer.older = file.older;
    else this.newest = file.older;
    file.newer = undefined;
    file.older = undefined;
  }
}
