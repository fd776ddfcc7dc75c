// A simulated disk for the page store, in the style of TigerBeetle's test storage: every write,
// hole and truncate stays pending until an fdatasync of its file, every name made, renamed or
// removed until an fsync of its directory. powerLoss() returns the disk as a power cut would
// leave it: each pending write kept, lost or torn (512-byte sectors kept or lost one by one), and
// a prefix of the pending directory changes (a journaling filesystem applies those in order).
import type { FileIO } from "../../core/store/file-io.ts";

const BLOCK_BYTES = 4096;
const SECTOR_BYTES = 512;

type Pending = { kind: "write"; position: number; data: Uint8Array } | { kind: "truncate"; sizeBytes: number };

/** One file's bytes: blocks never changed in place, so a copy of the map is a snapshot. */
class Contents {
  constructor(
    public blocks = new Map<number, Uint8Array>(),
    public sizeBytes = 0,
  ) {}

  clone(): Contents {
    return new Contents(new Map(this.blocks), this.sizeBytes);
  }

  write(position: number, data: Uint8Array): void {
    for (let done = 0; done < data.byteLength; ) {
      const at = position + done;
      const index = Math.floor(at / BLOCK_BYTES);
      const offset = at - index * BLOCK_BYTES;
      const count = Math.min(BLOCK_BYTES - offset, data.byteLength - done);
      const block = new Uint8Array(BLOCK_BYTES);
      const old = this.blocks.get(index);
      if (old !== undefined) block.set(old);
      block.set(data.subarray(done, done + count), offset);
      this.blocks.set(index, block);
      done += count;
    }
    this.sizeBytes = Math.max(this.sizeBytes, position + data.byteLength);
  }

  truncate(sizeBytes: number): void {
    const keep = Math.ceil(sizeBytes / BLOCK_BYTES);
    for (const index of [...this.blocks.keys()]) if (index >= keep) this.blocks.delete(index);
    const lastIndex = Math.floor(sizeBytes / BLOCK_BYTES);
    const last = this.blocks.get(lastIndex);
    if (last !== undefined && sizeBytes % BLOCK_BYTES !== 0) {
      const block = last.slice();
      block.fill(0, sizeBytes % BLOCK_BYTES);
      this.blocks.set(lastIndex, block);
    }
    this.sizeBytes = sizeBytes;
  }

  read(target: Uint8Array, targetOffset: number, length: number, position: number): number {
    const count = Math.max(0, Math.min(length, this.sizeBytes - position));
    for (let done = 0; done < count; ) {
      const at = position + done;
      const index = Math.floor(at / BLOCK_BYTES);
      const offset = at - index * BLOCK_BYTES;
      const take = Math.min(BLOCK_BYTES - offset, count - done);
      const block = this.blocks.get(index);
      if (block === undefined) target.fill(0, targetOffset + done, targetOffset + done + take);
      else target.set(block.subarray(offset, offset + take), targetOffset + done);
      done += take;
    }
    return count;
  }
}

class Inode {
  pending: Pending[] = [];
  constructor(
    public current: Contents,
    public durable: Contents,
  ) {}
}

interface DirChange {
  dir: string;
  apply: (names: Map<string, Inode>) => void;
}

export class SimFileIO implements FileIO {
  private names = new Map<string, Inode>();
  private durableNames = new Map<string, Inode>();
  private pendingDir: DirChange[] = [];
  private readonly fds = new Map<number, Inode>();
  private nextFd = 3;
  /** Mutating operations so far: a crash point is "before operation n". */
  opCount = 0;
  /** Called before each mutating operation with its number. */
  beforeOp: ((op: number) => void) | undefined;

  /** Logs every mutating operation (debugging a failing seed). */
  log: ((line: string) => void) | undefined;

  private op(what = ""): void {
    this.opCount++;
    if (this.log !== undefined && what !== "") this.log(`disk op ${this.opCount}: ${what}`);
    this.beforeOp?.(this.opCount);
  }

  private inodeOf(fd: number): Inode {
    const inode = this.fds.get(fd);
    if (inode === undefined) throw Object.assign(new Error(`EBADF: fd ${fd}`), { code: "EBADF" });
    return inode;
  }

  open(filePath: string, create: boolean): number {
    let inode = this.names.get(filePath);
    if (inode === undefined) {
      if (!create) throw Object.assign(new Error(`ENOENT: ${filePath}`), { code: "ENOENT" });
      this.op(`create ${filePath}`);
      const made = new Inode(new Contents(), new Contents());
      inode = made;
      this.names.set(filePath, made);
      this.pendingDir.push({ dir: dirOf(filePath), apply: (names) => names.set(filePath, made) });
    }
    const fd = this.nextFd++;
    this.fds.set(fd, inode);
    return fd;
  }

  close(fd: number): void {
    this.inodeOf(fd);
    this.fds.delete(fd);
  }

  pread(fd: number, target: Uint8Array, targetOffset: number, length: number, position: number): number {
    return this.inodeOf(fd).current.read(target, targetOffset, length, position);
  }

  pwrite(fd: number, data: Uint8Array, position: number): void {
    const inode = this.inodeOf(fd);
    this.op(`pwrite fd ${fd} ${position}+${data.byteLength}`);
    inode.current.write(position, data);
    inode.pending.push({ kind: "write", position, data: data.slice() });
  }

  punchHole(fd: number, position: number, length: number): void {
    const inode = this.inodeOf(fd);
    const end = Math.min(position + length, inode.current.sizeBytes);
    if (end <= position) return;
    this.op();
    const zeros = new Uint8Array(end - position);
    inode.current.write(position, zeros);
    inode.pending.push({ kind: "write", position, data: zeros });
  }

  ftruncate(fd: number, sizeBytes: number): void {
    const inode = this.inodeOf(fd);
    this.op();
    inode.current.truncate(sizeBytes);
    inode.pending.push({ kind: "truncate", sizeBytes });
  }

  sizeOf(fd: number): number {
    return this.inodeOf(fd).current.sizeBytes;
  }

  fdatasync(fd: number): Promise<void> {
    this.fdatasyncNow(fd);
    return Promise.resolve();
  }

  fdatasyncNow(fd: number): void {
    const inode = this.inodeOf(fd);
    this.op(`fdatasync fd ${fd}`);
    inode.durable = inode.current.clone();
    inode.pending = [];
  }

  rename(from: string, to: string): void {
    const inode = this.names.get(from);
    if (inode === undefined) throw Object.assign(new Error(`ENOENT: ${from}`), { code: "ENOENT" });
    this.op(`rename ${from} ${to}`);
    this.names.delete(from);
    this.names.set(to, inode);
    this.pendingDir.push({
      dir: dirOf(to),
      apply: (names) => {
        names.delete(from);
        names.set(to, inode);
      },
    });
  }

  unlink(filePath: string): void {
    if (!this.names.has(filePath)) return;
    this.op(`unlink ${filePath}`);
    this.names.delete(filePath);
    this.pendingDir.push({ dir: dirOf(filePath), apply: (names) => names.delete(filePath) });
  }

  unlinkAsync(filePath: string): Promise<void> {
    this.unlink(filePath);
    return Promise.resolve();
  }

  mkdirs(_dir: string): void {}

  exists(filePath: string): boolean {
    if (this.names.has(filePath)) return true;
    for (const name of this.names.keys()) if (name.startsWith(`${filePath}/`)) return true;
    return false;
  }

  list(dir: string): string[] {
    const names: string[] = [];
    for (const name of this.names.keys()) if (dirOf(name) === dir) names.push(name.slice(dir.length + 1));
    return names;
  }

  syncDir(dir: string): Promise<void> {
    this.syncDirNow(dir);
    return Promise.resolve();
  }

  syncDirNow(dir: string): void {
    this.op(`fsync dir ${dir}`);
    const still: DirChange[] = [];
    for (const change of this.pendingDir) {
      if (change.dir === dir) change.apply(this.durableNames);
      else still.push(change);
    }
    this.pendingDir = still;
  }

  /** The disk after a power cut now, as a new disk (this one carries on untouched). */
  powerLoss(random: () => number): SimFileIO {
    const names = new Map(this.durableNames);
    const applied = Math.floor(random() * (this.pendingDir.length + 1));
    for (const change of this.pendingDir.slice(0, applied)) change.apply(names);
    const after = new SimFileIO();
    const copies = new Map<Inode, Inode>();
    for (const [name, inode] of names) {
      let copy = copies.get(inode);
      if (copy === undefined) {
        const contents = survivorOf(inode, random);
        copy = new Inode(contents, contents.clone());
        copies.set(inode, copy);
      }
      after.names.set(name, copy);
      after.durableNames.set(name, copy);
    }
    return after;
  }

  /** Files by name with their current sizes, for tests that damage a store on purpose. */
  fileNames(): string[] {
    return [...this.names.keys()];
  }
}

/** A file's contents after a power cut: the durable ones, then each pending change kept, lost or torn. */
function survivorOf(inode: Inode, random: () => number): Contents {
  const contents = inode.durable.clone();
  for (const change of inode.pending) {
    const roll = random();
    if (roll < 1 / 3) continue; // lost
    if (change.kind === "truncate") {
      contents.truncate(change.sizeBytes);
      continue;
    }
    if (roll < 2 / 3) {
      contents.write(change.position, change.data);
      continue;
    }
    // Torn: sector by sector (the pieces of the write within each 512-byte sector of the file).
    const end = change.position + change.data.byteLength;
    for (let at = change.position; at < end; ) {
      const stop = Math.min(end, (Math.floor(at / SECTOR_BYTES) + 1) * SECTOR_BYTES);
      if (random() < 0.5) contents.write(at, change.data.subarray(at - change.position, stop - change.position));
      at = stop;
    }
  }
  return contents;
}

function dirOf(filePath: string): string {
  const slash = filePath.lastIndexOf("/");
  return slash < 0 ? "." : filePath.slice(0, slash);
}
