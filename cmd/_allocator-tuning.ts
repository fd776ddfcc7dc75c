// Bun's allocator (mimalloc) hands freed memory back to the kernel 10 ms after it is freed. A
// node frees and reuses request buffers all the time, so it pays madvise, page faults and TLB
// flushes over and over: 14% of a node's samples under the snapshot benchmark's load, and on
// this virtual machine nodes used 0.39-0.41 instead of 0.49-0.63 cores for the same load with a
// 10 s delay (memory still goes back after 10 s unused; never purging saved a little more but
// kept a 170 MB peak). The bulk jobs of the CLI (volume import/export, archive create/restore)
// pay the same for the fresh buffer Bun allocates for every socket read, and there a delay does
// not do it (mimalloc 3 seems to purge on its periodic collections too): exporting 512 MiB with
// 10 s cost 100-170k page faults and 4.4-5.7 CPU s per GiB, with purging off (-1) 44-46k and
// 2.2-2.5 s, for a peak RSS of 127-131 MB instead of 108-111 (bounded by the job's requests in
// flight, and gone when the job ends). mimalloc reads its options only at process start, so
// `shoal node` and those jobs re-execute themselves once (execve: same pid, same arguments, same
// descriptors) with the option set, unless the environment already says otherwise.
import { dlopen, FFIType, ptr } from "bun:ffi";

const OPTION = "MIMALLOC_PURGE_DELAY";
/** A long-running node: freed memory goes back after 10 s unused. */
export const NODE_PURGE_DELAY_MS = "10000";
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
