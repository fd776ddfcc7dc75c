// How a node dies when it must: one loud log line (with the stack, for the bug report) and an
// exit, no shutdown steps (they would flush and sync state that can no longer be trusted). A
// supervisor restarts it; start-up recovers from what is on disk, as after a power cut.
import { ShoalError } from "../../core/errors.ts";
import { fatal, InvariantError, setFatalHandler } from "../../core/invariant.ts";

interface FatalLog {
  error(message: string, fields?: Record<string, string | number | boolean | undefined>): void;
}

/**
 * Makes `fatal` (core/invariant.ts) end the process, and routes the process's own last-resort
 * events there too: a promise rejection nobody handles or an exception nobody catches means an
 * error path was lost, a programmer error; a node that runs on after it serves from a state no
 * test has seen. (Bun would also exit, but with a bare stack on stderr outside the log.)
 */
export function exitOnFatal(log: FatalLog, exit: (code: number) => never = (code) => process.exit(code)): void {
  setFatalHandler((error, reason) => {
    const message = error instanceof Error ? error.message : String(error);
    const exitCode = fatalExitCode(error);
    // A bug's stack goes in the log for the report; a disk's error needs none.
    const stack = exitCode === 1 && error instanceof Error && error.stack ? `\n${error.stack}` : "";
    log.error(`FATAL ${reason}: ${message}; the node stops now and recovers from its data directory when restarted${stack}`);
    exit(exitCode);
  });
  process.on("unhandledRejection", (reason) => fatal(reason, "unhandled promise rejection"));
  process.on("uncaughtException", (error) => fatal(error, "uncaught exception"));
}

/** 6 for a failed disk operation (an errno such as EIO), the error's own code for a ShoalError, else 1. */
export function fatalExitCode(error: unknown): number {
  if (error instanceof InvariantError) return 1;
  if (error instanceof ShoalError) return error.exitCode;
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && /^E[A-Z]+$/.test(code) ? 6 : 1;
}
