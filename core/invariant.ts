// Programmer errors and states the node cannot trust, kept apart from operating errors (which stay
// typed ShoalErrors a client or the CLI can act on). A broken invariant is a bug: carrying on
// would turn it into wrong data, so it is a crash with a message, never an EIO and a node that runs on.

/** Thrown by `invariant`: a bug in shoal, never a condition a caller should handle. */
export class InvariantError extends Error {
  override name = "InvariantError";
}

/** Crashes (via the fatal hook) when `condition` is false; `message` says which rule broke. */
export function invariant(condition: unknown, message: string | (() => string)): asserts condition {
  if (condition) return;
  const error = new InvariantError(typeof message === "string" ? message : message());
  fatal(error, "invariant broken");
  throw error;
}

/**
 * What the process does when it cannot go on. The node installs one that logs and exits (see
 * transport/node/fatal-exit.ts); until then, and in unit tests, it is a no-op and the caller throws.
 */
export type FatalHandler = (error: unknown, reason: string) => void;

let handler: FatalHandler = () => {};

export function setFatalHandler(next: FatalHandler): FatalHandler {
  const previous = handler;
  handler = next;
  return previous;
}

/**
 * The one hook for "this node's state can no longer be trusted": a broken invariant, or a failed
 * fsync (after which the page cache may have dropped the dirty pages and a retry would report
 * success for lost bytes: PostgreSQL panics on it since 2018, and so do we). The node's handler
 * does not return; any other returns and the caller must not go on as if it had succeeded.
 */
export function fatal(error: unknown, reason: string): void {
  handler(error, reason);
}
