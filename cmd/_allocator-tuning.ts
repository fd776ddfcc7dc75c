// Bun's allocator (mimalloc) hands freed memory back to the kernel 10 ms after it is freed. A
// node frees and reuses request buffers all the time (Bun allocates a fresh buffer for every
// socket read), so it pays madvise, page faults and TLB flushes over and over, and a delay does
// not stop it (mimalloc 3 seems to purge on its periodic collections too). So a node and the bulk
// jobs of the CLI (volume import/export, archive create/restore) never purge (-1). Measured
// 2026-12-02, one run each, load 1-2, 10 s delay -> never: a node's CPU per 1 MiB sequential
// overwrite 1172 -> 527 µs (1,385 instead of 744 MB/s), per 4 KiB random write 71 -> 64 µs;
// a forwarding node's per forwarded 1 MiB read 2500 -> 723 µs and 4 KiB read 48 -> 27 µs; an
// export 4.4-5.7 -> 2.2-2.5 CPU s per GiB. The price: RSS stays at its high-water mark instead of
// falling back 10 s after a burst (one node, 1 TiB volume, 20,000 + 5 x 4,000 random writes and 5
// snapshots: 134 instead of 117 MB; the forwarding node of snapshot-1tib 173 instead of 153 MB).
// An operator who wants memory back sets MIMALLOC_PURGE_DELAY=10000. mimalloc reads its options
// only at process start, so `shoal node` and those jobs re-execute themselves once (execve: same
// pid, same arguments, same descriptors) with the option set, unless the environment already
// says otherwise.
import { dlopen, FFIType, ptr } from "bun:ffi";

const OPTION = "MIMALLOC_PURGE_DELAY";
/** A node: never purge; freed memory is kept for the next requests (RSS stays at its high-water mark). */
export const NODE_PURGE_DELAY_MS = "-1";
/** A bulk job of the CLI: never purge; the job's memory is bounded and ends with it. */
const BULK_JOB_PURGE_DELAY_MS = "-1";

/** Returns only if it did not re-execute: already tuned, not Linux, or execve was refused. */
export function reexecWithAllocatorTuning(log: (message: string) => void = () => {}, purgeDelayMs = BULK_JOB_PURGE_DELAY_MS): void {
  if (process.env[OPTION] !== undefined || process.platform !== "linux") return;
  try {
    const libc = dlopen("libc.so.6", { execve: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 } });
    const env = { ...process.env, [OPTION]: purgeDelayMs };
    const file = cString(process.execPath);
    const argv = pointerArray(ownArguments().map(cString));
    const envp = pointerArray(Object.entries(env).map(([key, value]) => cString(`${key}=${value}`)));
    libc.symbols.execve(ptr(file), ptr(argv.pointers), ptr(envp.pointers));
    // Still here: execve failed. Run as we are; only the CPU cost differs.
    log(`could not re-execute with ${OPTION}=${purgeDelayMs}; set it in the environment to save CPU`);
  } catch (err) {
    log(`could not re-execute with ${OPTION}=${purgeDelayMs} (${(err as Error).message}); set it in the environment to save CPU`);
  }
}

/** argv as the kernel gave it: a compiled binary's process.argv has its embedded script second. */
function ownArguments(): string[] {
  const [, script, ...rest] = process.argv;
  const compiled = script === undefined || script.startsWith("/$bunfs/") || script.startsWith("B:/~BUN/");
  return compiled ? [process.execPath, ...rest] : [process.execPath, script, ...rest];
}

function cString(text: string): Buffer {
  return Buffer.from(`${text}\0`, "utf8");
}

/** A NULL-terminated array of pointers to the strings (which the caller keeps alive through the call). */
function pointerArray(strings: Buffer[]): { pointers: BigUint64Array; strings: Buffer[] } {
  const pointers = new BigUint64Array(strings.length + 1);
  strings.forEach((string, index) => (pointers[index] = BigInt(ptr(string))));
  return { pointers, strings };
}
