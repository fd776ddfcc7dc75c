// The pages this node owns, one sparse file per written page under <data>/pages/<volume uid>/.
// A page never written has no file and reads as zeros, so an empty 1 TiB volume takes no space.
// Reads and writes are synchronous pread/pwrite (page-cache hits cost microseconds and an async
// hop would cost more); fsync is asynchronous and only on FLUSH, FUA and eviction.
import * as fs from "node:fs";
import * as path from "node:path";
import { ShoalError } from "./errors.ts";

export interface PageStoreOptions {
  dir: string;
  /** Open page files kept; beyond this the least recently used is synced if dirty and closed. */
  maxOpenFiles?: number;
}

interface OpenPage {
  fd: number;
  /** Syncs running on this fd; it must not be closed under them. */
  pins: number;
}

export interface VolumeUsage {
  pages: number;
  bytes: number;
}

export class PageStore {
  private readonly dir: string;
  private readonly maxOpenFiles: number;
  /** Allocated pages per volume uid, loaded at start so reads of holes need no syscall. */
  private readonly allocated = new Map<string, Map<number, number>>();
  private readonly open = new Map<string, OpenPage>();
  private readonly dirtyPages = new Set<string>();
  private readonly dirtyDirs = new Set<string>();
  /** fsync/fdatasync calls made, for tests and metrics: proves a flush reached this store. */
  syncCount = 0;

  constructor(options: PageStoreOptions) {
    this.dir = path.join(options.dir, "pages");
    this.maxOpenFiles = options.maxOpenFiles ?? 512;
    fs.mkdirSync(this.dir, { recursive: true });
    this.loadAllocation();
  }

  private loadAllocation(): void {
    for (const uid of fs.readdirSync(this.dir)) {
      const pages = new Map<number, number>();
      for (const name of fs.readdirSync(path.join(this.dir, uid))) {
        const page = Number(name);
        if (Number.isInteger(page) && String(page) === name) pages.set(page, pageBytesOnDisk(path.join(this.dir, uid, name)));
      }
      this.allocated.set(uid, pages);
    }
  }

  isAllocated(uid: string, page: number): boolean {
    return this.allocated.get(uid)?.has(page) ?? false;
  }

  /** Reads `length` bytes at `pageOffset` of a page into target[targetOffset...]. */
  read(uid: string, page: number, pageOffset: number, length: number, target: Uint8Array, targetOffset: number): void {
    if (!this.isAllocated(uid, page)) {
      target.fill(0, targetOffset, targetOffset + length);
      return;
    }
    const fd = this.fdFor(uid, page, false);
    let done = 0;
    while (done < length) {
      const count = fs.readSync(fd, target, targetOffset + done, length - done, pageOffset + done);
      if (count === 0) break;
      done += count;
    }
    // A page file is created at full length, so a short read means someone truncated it.
    if (done < length) target.fill(0, targetOffset + done, targetOffset + length);
  }

  write(uid: string, page: number, pageOffset: number, data: Uint8Array, pageSizeBytes: number): void {
    const fd = this.fdFor(uid, page, true, pageSizeBytes);
    let done = 0;
    while (done < data.byteLength) {
      done += fs.writeSync(fd, data, done, data.byteLength - done, pageOffset + done);
    }
    this.dirtyPages.add(pageKey(uid, page));
  }

  /** Zeroes a range; a whole page is dropped (its file removed), freeing the space. */
  zero(uid: string, page: number, pageOffset: number, length: number, pageSizeBytes: number): void {
    if (!this.isAllocated(uid, page)) return;
    if (pageOffset === 0 && length === pageSizeBytes) {
      this.dropPage(uid, page);
      return;
    }
    const zeros = new Uint8Array(Math.min(length, 1024 * 1024));
    for (let done = 0; done < length; done += zeros.byteLength) {
      this.write(uid, page, pageOffset + done, zeros.subarray(0, Math.min(zeros.byteLength, length - done)), pageSizeBytes);
    }
  }

  private dropPage(uid: string, page: number): void {
    const key = pageKey(uid, page);
    this.closePage(key, false);
    this.dirtyPages.delete(key);
    fs.rmSync(this.pagePath(uid, page), { force: true });
    this.allocated.get(uid)?.delete(page);
    this.dirtyDirs.add(path.join(this.dir, uid));
  }

  /** Makes one page durable (FUA), including its directory entry if the file is new. */
  async syncPage(uid: string, page: number): Promise<void> {
    const key = pageKey(uid, page);
    if (this.dirtyPages.has(key)) {
      this.dirtyPages.delete(key);
      await this.syncOpen(key);
    }
    const dir = path.join(this.dir, uid);
    if (this.dirtyDirs.has(dir)) {
      this.dirtyDirs.delete(dir);
      await syncDirectory(dir);
    }
  }

  /** Makes every write that completed before the call durable. */
  async flush(): Promise<void> {
    const pages = [...this.dirtyPages];
    const dirs = [...this.dirtyDirs];
    this.dirtyPages.clear();
    this.dirtyDirs.clear();
    await Promise.all(pages.map((key) => this.syncOpen(key)));
    await Promise.all(dirs.map(syncDirectory));
  }

  private async syncOpen(key: string): Promise<void> {
    const entry = this.open.get(key);
    if (!entry) return; // evicted: eviction synced it
    entry.pins++;
    this.syncCount++;
    try {
      await new Promise<void>((resolve, reject) => fs.fdatasync(entry.fd, (err) => (err ? reject(err) : resolve())));
    } finally {
      entry.pins--;
    }
  }

  /** Pages and bytes on disk per volume uid. */
  usage(): Map<string, VolumeUsage> {
    const result = new Map<string, VolumeUsage>();
    for (const [uid, pages] of this.allocated) {
      let bytes = 0;
      for (const size of pages.values()) bytes += size;
      result.set(uid, { pages: pages.size, bytes });
    }
    return result;
  }

  /** Removes every page of a volume (deleted volumes). */
  dropVolume(uid: string): void {
    for (const key of [...this.open.keys()]) if (key.startsWith(`${uid}/`)) this.closePage(key, false);
    for (const key of [...this.dirtyPages]) if (key.startsWith(`${uid}/`)) this.dirtyPages.delete(key);
    fs.rmSync(path.join(this.dir, uid), { recursive: true, force: true });
    this.allocated.delete(uid);
    this.dirtyDirs.add(this.dir);
  }

  close(): void {
    for (const key of [...this.open.keys()]) this.closePage(key, true);
  }

  private pagePath(uid: string, page: number): string {
    return path.join(this.dir, uid, String(page));
  }

  private fdFor(uid: string, page: number, create: boolean, pageSizeBytes = 0): number {
    const key = pageKey(uid, page);
    const entry = this.open.get(key);
    if (entry) {
      // Re-insert to keep the Map in least-recently-used order.
      this.open.delete(key);
      this.open.set(key, entry);
      return entry.fd;
    }
    const filePath = this.pagePath(uid, page);
    let fd: number;
    if (create && !this.isAllocated(uid, page)) {
      const dir = path.dirname(filePath);
      fs.mkdirSync(dir, { recursive: true });
      fd = fs.openSync(filePath, "w+");
      fs.ftruncateSync(fd, pageSizeBytes);
      let pages = this.allocated.get(uid);
      if (!pages) this.allocated.set(uid, (pages = new Map()));
      pages.set(page, pageSizeBytes);
      this.dirtyDirs.add(dir);
    } else {
      fd = fs.openSync(filePath, "r+");
    }
    this.open.set(key, { fd, pins: 0 });
    this.evictIfNeeded();
    return fd;
  }

  private evictIfNeeded(): void {
    if (this.open.size <= this.maxOpenFiles) return;
    for (const [key, entry] of this.open) {
      if (this.open.size <= this.maxOpenFiles) return;
      if (entry.pins > 0) continue;
      this.closePage(key, this.dirtyPages.has(key));
    }
  }

  private closePage(key: string, sync: boolean): void {
    const entry = this.open.get(key);
    if (!entry) return;
    if (sync) {
      this.syncCount++;
      fs.fdatasyncSync(entry.fd);
      this.dirtyPages.delete(key);
    }
    this.open.delete(key);
    if (entry.pins === 0) fs.closeSync(entry.fd);
    else setTimeout(() => fs.closeSync(entry.fd), 1000); // a sync still holds it; close after
  }
}

function pageKey(uid: string, page: number): string {
  return `${uid}/${page}`;
}

function pageBytesOnDisk(filePath: string): number {
  return fs.statSync(filePath).size;
}

async function syncDirectory(dir: string): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(dir, "r");
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") return; // dropped since
    throw err;
  }
  try {
    await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
  } finally {
    fs.closeSync(fd);
  }
}

export function assertPageRange(pageOffset: number, length: number, pageSizeBytes: number): void {
  if (pageOffset < 0 || length < 0 || pageOffset + length > pageSizeBytes) {
    throw new ShoalError("OUT_OF_RANGE", `range ${pageOffset}+${length} is outside a page of ${pageSizeBytes} bytes`);
  }
}
