// The file operations the page store makes, as an interface: the real one below goes to the
// kernel; tests substitute a simulated disk that loses or tears every write not yet covered by
// an fsync at a crash point (test/unit/_sim-file-io.ts), so power loss can be tested, not only
// kill -9. Reads and writes are synchronous (page-cache hits cost microseconds, an async hop
// more); only the syncs, which wait on the disk, are asynchronous.
import { dlopen, FFIType } from "bun:ffi";
import * as fs from "node:fs";
import { FreeingPace } from "./_freeing-pace.ts";

export interface FileIO {
  /** Opens a file read-write, creating it when `create` (ENOENT otherwise). */
  open(filePath: string, create: boolean): number;
  close(fd: number): void;
  /** Reads up to `length` bytes; fewer only at the end of the file. */
  pread(fd: number, target: Uint8Array, targetOffset: number, length: number, position: number): number;
  /** Writes all of `data`. */
  pwrite(fd: number, data: Uint8Array, position: number): void;
  /** Makes a range read as zeros and frees its blocks; the file's size stays. */
  punchHole(fd: number, position: number, length: number): void;
  ftruncate(fd: number, sizeBytes: number): void;
  sizeOf(fd: number): number;
  /** Makes the file's bytes (and the size needed to read them) durable. */
  fdatasync(fd: number): Promise<void>;
  fdatasyncNow(fd: number): void;
  /** Atomically replaces `to` with `from`; durable once the directory is synced. */
  rename(from: string, to: string): void;
  /** Removes a name; a missing one is not an error. */
  unlink(filePath: string): void;
  /** The same off the event loop: freeing a big file's blocks is filesystem work that takes milliseconds. */
  unlinkAsync(filePath: string): Promise<void>;
  mkdirs(dir: string): void;
  exists(filePath: string): boolean;
  list(dir: string): string[];
  /** Makes the directory's entries (files made, renamed, removed in it) durable. */
  syncDir(dir: string): Promise<void>;
  syncDirNow(dir: string): void;
}

const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;

/** fallocate(2), which node:fs lacks; undefined where libc cannot be loaded (then holes are written as zeros). */
function loadFallocate(): ((fd: number, mode: number, offset: number, length: number) => number) | undefined {
  try {
    const libc = dlopen("libc.so.6", { fallocate: { args: [FFIType.i32, FFIType.i32, FFIType.i64, FFIType.i64], returns: FFIType.i32 } });
    return (fd, mode, offset, length) => libc.symbols.fallocate(fd, mode, offset, length) as number;
  } catch {
    return undefined;
  }
}

const ZERO_FILL_BYTES = 1024 * 1024;

/** Time for the paced freeing of a removed file: how long a step took, and a rest between steps. */
export interface FreeingClock {
  nowMs(): number;
  sleep(ms: number): Promise<void>;
}

export class RealFileIO implements FileIO {
  private readonly fallocate = loadFallocate();

  /** `clock`: paces unlinkAsync (the node's real clock); without one a file goes in one unlink. */
  constructor(private readonly clock?: FreeingClock) {}
  private zeros: Uint8Array | undefined;

  open(filePath: string, create: boolean): number {
    return fs.openSync(filePath, create ? fs.constants.O_RDWR | fs.constants.O_CREAT : fs.constants.O_RDWR, 0o644);
  }

  close(fd: number): void {
    fs.closeSync(fd);
  }

  pread(fd: number, target: Uint8Array, targetOffset: number, length: number, position: number): number {
    let done = 0;
    while (done < length) {
      const got = fs.readSync(fd, target, targetOffset + done, length - done, position + done);
      if (got === 0) break;
      done += got;
    }
    return done;
  }

  pwrite(fd: number, data: Uint8Array, position: number): void {
    for (let done = 0; done < data.byteLength; ) done += fs.writeSync(fd, data, done, data.byteLength - done, position + done);
  }

  punchHole(fd: number, position: number, length: number): void {
    if (length <= 0) return;
    if (this.fallocate !== undefined && this.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, position, length) === 0) return;
    // No hole punching here (another libc, a filesystem without it): the range still reads as zeros.
    const size = this.sizeOf(fd);
    const end = Math.min(position + length, size);
    this.zeros ??= new Uint8Array(ZERO_FILL_BYTES);
    for (let at = position; at < end; at += ZERO_FILL_BYTES) this.pwrite(fd, this.zeros.subarray(0, Math.min(ZERO_FILL_BYTES, end - at)), at);
  }

  ftruncate(fd: number, sizeBytes: number): void {
    fs.ftruncateSync(fd, sizeBytes);
  }

  sizeOf(fd: number): number {
    return fs.fstatSync(fd).size;
  }

  fdatasync(fd: number): Promise<void> {
    return new Promise<void>((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  }

  fdatasyncNow(fd: number): void {
    fs.fdatasyncSync(fd);
  }

  rename(from: string, to: string): void {
    fs.renameSync(from, to);
  }

  unlink(filePath: string): void {
    fs.rmSync(filePath, { force: true });
  }

  /**
   * Shrinks the file from the end in paced steps before the unlink (see _freeing-pace.ts):
   * freeing a 1 GiB file's blocks in one go, or in 64 MiB truncates back to back, holds the
   * filesystem's journal long enough to stall every writer on the disk.
   */
  async unlinkAsync(filePath: string): Promise<void> {
    const clock = this.clock;
    const pace = new FreeingPace();
    let stat = clock === undefined ? undefined : await statOrUndefined(filePath);
    while (clock !== undefined && stat !== undefined) {
      const length = pace.nextLength(stat.size, stat.blocks * 512);
      if (length === 0) break;
      const fromMs = clock.nowMs();
      await fs.promises.truncate(filePath, length);
      const elapsedMs = clock.nowMs() - fromMs;
      const heldBefore = stat.blocks * 512;
      stat = await statOrUndefined(filePath);
      await clock.sleep(pace.stepTook(elapsedMs, heldBefore - (stat?.blocks ?? 0) * 512));
    }
    await fs.promises.rm(filePath, { force: true });
  }

  mkdirs(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
  }

  exists(filePath: string): boolean {
    return fs.existsSync(filePath);
  }

  list(dir: string): string[] {
    return fs.readdirSync(dir);
  }

  async syncDir(dir: string): Promise<void> {
    const fd = fs.openSync(dir, "r");
    try {
      await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
    } finally {
      fs.closeSync(fd);
    }
  }

  syncDirNow(dir: string): void {
    const fd = fs.openSync(dir, "r");
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
}

async function statOrUndefined(filePath: string): Promise<fs.Stats | undefined> {
  try {
    return await fs.promises.stat(filePath);
  } catch {
    return undefined; // gone already
  }
}
