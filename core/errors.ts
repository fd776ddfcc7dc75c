// One error type for the whole system, with a stable code that scripts and peers can match on.
// The table below is the single place that maps a code to an NBD errno and a CLI exit code.

export type ErrorCode =
  | "BAD_ARGUMENT"
  | "NOT_READY"
  | "BAD_FRAME"
  | "BAD_ARCHIVE"
  | "BAD_REQUEST"
  | "OUT_OF_RANGE"
  | "TOO_LARGE"
  | "UNKNOWN_VOLUME"
  | "VOLUME_EXISTS"
  | "UNKNOWN_NODE"
  | "UNKNOWN_SNAPSHOT"
  | "SNAPSHOT_EXISTS"
  | "NOT_OWNER"
  | "STALE_ROUTE"
  | "READ_ONLY"
  | "NODE_DOWN"
  | "TIMEOUT"
  | "HOLD_TIMEOUT"
  | "CONFLICT"
  | "CLOCK_SKEW"
  | "IO_ERROR"
  | "BAD_PATH"
  | "NO_SPACE"
  | "SHUTTING_DOWN"
  | "NOT_AUTHENTICATED"
  | "INTERNAL";

// NBD errno values from the NBD protocol (doc/proto.md, "Error values").
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

interface CodeInfo {
  nbdErrno: number;
  exitCode: number;
}

// Exit codes: 1 generic failure, 2 usage, 3 not found, 4 conflict/exists, 5 unavailable (node down,
// timeout), 6 I/O or data error, 7 refused by TLS authentication. Scripts branch on these.
const CODE_TABLE: Record<ErrorCode, CodeInfo> = {
  BAD_ARGUMENT: { nbdErrno: NBD_EINVAL, exitCode: 2 },
  BAD_FRAME: { nbdErrno: NBD_EINVAL, exitCode: 6 },
  // A snapshot archive that is corrupt, truncated, out of order or from a newer shoal: a data error.
  BAD_ARCHIVE: { nbdErrno: NBD_EIO, exitCode: 6 },
  BAD_REQUEST: { nbdErrno: NBD_EINVAL, exitCode: 2 },
  OUT_OF_RANGE: { nbdErrno: NBD_EINVAL, exitCode: 2 },
  TOO_LARGE: { nbdErrno: NBD_EOVERFLOW, exitCode: 2 },
  UNKNOWN_VOLUME: { nbdErrno: NBD_EINVAL, exitCode: 3 },
  VOLUME_EXISTS: { nbdErrno: NBD_EINVAL, exitCode: 4 },
  UNKNOWN_NODE: { nbdErrno: NBD_EINVAL, exitCode: 3 },
  UNKNOWN_SNAPSHOT: { nbdErrno: NBD_EINVAL, exitCode: 3 },
  SNAPSHOT_EXISTS: { nbdErrno: NBD_EINVAL, exitCode: 4 },
  NOT_OWNER: { nbdErrno: NBD_EIO, exitCode: 5 },
  STALE_ROUTE: { nbdErrno: NBD_EIO, exitCode: 5 },
  READ_ONLY: { nbdErrno: NBD_EPERM, exitCode: 2 },
  NODE_DOWN: { nbdErrno: NBD_EIO, exitCode: 5 },
  TIMEOUT: { nbdErrno: NBD_EIO, exitCode: 5 },
  HOLD_TIMEOUT: { nbdErrno: NBD_EIO, exitCode: 5 },
  CONFLICT: { nbdErrno: NBD_EIO, exitCode: 4 },
  // A node's clock is further from its peers' than the configured bound: fix time sync, then retry.
  CLOCK_SKEW: { nbdErrno: NBD_EIO, exitCode: 5 },
  IO_ERROR: { nbdErrno: NBD_EIO, exitCode: 6 },
  // A file named on the command line that cannot be opened as asked (missing, a directory, no
  // permission, read-only file system): the argument needs fixing, retrying will not help.
  BAD_PATH: { nbdErrno: NBD_EINVAL, exitCode: 2 },
  NO_SPACE: { nbdErrno: NBD_ENOSPC, exitCode: 6 },
  SHUTTING_DOWN: { nbdErrno: NBD_ESHUTDOWN, exitCode: 5 },
  /** The node is alive but still joining its group: ask again in a moment. */
  NOT_READY: { nbdErrno: NBD_EIO, exitCode: 5 },
  // No certificate, one from another CA, or one whose role may not do this: fix credentials.
  NOT_AUTHENTICATED: { nbdErrno: NBD_EPERM, exitCode: 7 },
  INTERNAL: { nbdErrno: NBD_EIO, exitCode: 1 },
};

export class ShoalError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "ShoalError";
    this.code = code;
  }
  get nbdErrno(): number {
    return CODE_TABLE[this.code].nbdErrno;
  }
  get exitCode(): number {
    return CODE_TABLE[this.code].exitCode;
  }
  toWire(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === "string" && code in CODE_TABLE;
}

/** Rebuilds an error that crossed the mesh; unknown codes become INTERNAL rather than lying. */
export function errorFromWire(wire: { code?: unknown; message?: unknown }): ShoalError {
  const code = isErrorCode(wire.code) ? wire.code : "INTERNAL";
  return new ShoalError(code, String(wire.message ?? "unknown error"));
}

/** Any thrown value as a ShoalError; OS errors keep their meaning (ENOSPC stays NO_SPACE). */
export function asShoalError(err: unknown): ShoalError {
  if (err instanceof ShoalError) return err;
  const sysCode = (err as { code?: string } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (sysCode === "ENOSPC") return new ShoalError("NO_SPACE", message);
  if (sysCode === "EIO") return new ShoalError("IO_ERROR", message);
  return new ShoalError("INTERNAL", message);
}

// What the OS said, in words, for the errors an operator meets with files, pipes and devices.
const OS_ERROR_TEXT: Record<string, string> = {
  ENOENT: "no such file or directory",
  ENOTDIR: "a part of the path is not a directory",
  EISDIR: "it is a directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  ENAMETOOLONG: "file name too long",
  ELOOP: "too many symbolic links",
  ENXIO: "no such device",
  ENODEV: "no such device",
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EFBIG: "file too large",
  EIO: "input/output error",
  EPIPE: "broken pipe",
  EBADF: "not open",
};

/** Errors that mean "this path cannot be used as asked", as opposed to failures while doing I/O. */
const BAD_PATH_CODES = new Set(["ENOENT", "ENOTDIR", "EISDIR", "EACCES", "EPERM", "EROFS", "ENAMETOOLONG", "ELOOP", "ENXIO", "ENODEV"]);
const NO_SPACE_CODES = new Set(["ENOSPC", "EDQUOT", "EFBIG"]);

/**
 * An OS error on a named file as one line that names it: `action` says what was being done
 * ("write archive to", "read"), `file` is the path the operator gave (or "stdout"/"stdin"), and
 * `note` what the operator should know beyond the OS's words (which directory is missing).
 * A path that cannot be opened is BAD_PATH (exit 2); a full disk NO_SPACE and anything else met
 * while reading or writing IO_ERROR (both exit 6). A ShoalError passes through unchanged.
 */
export function fileError(err: unknown, action: string, file: string, note?: string): ShoalError {
  if (err instanceof ShoalError) return err;
  const sysCode = String((err as { code?: unknown } | null)?.code ?? "");
  const text = OS_ERROR_TEXT[sysCode] ?? (err instanceof Error ? err.message : String(err));
  const detail = sysCode && OS_ERROR_TEXT[sysCode] ? `${text} (${sysCode})` : text;
  const code: ErrorCode = NO_SPACE_CODES.has(sysCode) ? "NO_SPACE" : BAD_PATH_CODES.has(sysCode) ? "BAD_PATH" : "IO_ERROR";
  const named = file === "stdout" || file === "stdin" ? file : `'${file}'`;
  return new ShoalError(code, `cannot ${action} ${named}${note ? ` (${note})` : ""}: ${detail}`);
}

export function nbdErrnoFor(err: unknown): number {
  return asShoalError(err).nbdErrno;
}
