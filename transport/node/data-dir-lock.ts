// One `shoal node` per data directory. Two processes on one catalog and one set of page files
// would each serve writes the other never sees. The lock is flock(2) on DIR/lock, so the kernel
// drops it when its holder dies in any way (kill -9 included) and no stale lock needs clearing;
// the file holds the holder's pid only so that a refusal can name it.
import { dlopen, FFIType, read } from "bun:ffi";
import * as fs from "node:fs";
import * as path from "node:path";
import { ShoalError } from "../../core/errors.ts";

const LOCK_EX = 2;
const LOCK_NB = 4;

/** The C library and how it names its errno, per platform flock(2) exists on. */
const LIBC: Record<string, { file: string; errnoLocation: string; wouldBlock: number }> = {
  linux: { file: "libc.so.6", errnoLocation: "__errno_location", wouldBlock: 11 },
  darwin: { file: "libSystem.B.dylib", errnoLocation: "__error", wouldBlock: 35 },
};

export interface DataDirLock {
  /** Drops the lock (closing the file is what releases it). */
  release(): void;
}

/** Takes DIR's lock for this process, or throws CONFLICT naming the process that holds it. */
export function lockDataDir(dir: string): DataDirLock {
  const lockPath = path.join(dir, "lock");
  const fd = fs.openSync(lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  try {
    const errno = tryLock(fd);
    if (errno !== undefined) throw refusal(dir, lockPath, errno);
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  let held = true;
  return {
    release() {
      if (held) fs.closeSync(fd);
      held = false;
    },
  };
}

/** undefined when locked; otherwise errno, as a negative number when it is "held by another". */
function tryLock(fd: number): number | undefined {
  const libc = LIBC[process.platform];
  if (!libc) throw new ShoalError("INTERNAL", `locking a data directory is not supported on ${process.platform}`);
  const lib = dlopen(libc.file, {
    flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    [libc.errnoLocation]: { args: [], returns: FFIType.ptr },
  });
  try {
    if (lib.symbols.flock(fd, LOCK_EX | LOCK_NB) === 0) return undefined;
    // Read at once, before anything else can make a system call and overwrite it.
    const errno = read.i32(lib.symbols[libc.errnoLocation]!() as never, 0);
    return errno === libc.wouldBlock ? -errno : errno;
  } finally {
    lib.close();
  }
}

function refusal(dir: string, lockPath: string, errno: number): ShoalError {
  if (errno >= 0) return new ShoalError("IO_ERROR", `cannot lock ${lockPath} (errno ${errno}); does the file system of ${dir} support flock?`);
  let holder = "";
  try {
    holder = fs.readFileSync(lockPath, "utf8").trim();
  } catch {
    // The holder's pid is only for the message.
  }
  const who = /^\d+$/.test(holder) ? `pid ${holder}` : "pid unknown";
  return new ShoalError("CONFLICT", `data dir ${dir} is in use by another shoal node (${who}); stop that one first`);
}
