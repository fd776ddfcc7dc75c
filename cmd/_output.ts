// How the CLI process ends when its own output fails: a reader that went away (`| head`, `| true`)
// ends it quietly as it would end `cat`; a full disk or a dead device behind stdout ends it with
// one line and exit 6. Without this, Bun reports the error with a stack trace and the process then
// waits forever on its open mesh and NBD connections.
import { asShoalError, fileError, ShoalError } from "../core/errors.ts";
import { PROGRAM, stripAnsi } from "./_usage.ts";

/**
 * The status a Unix tool killed by SIGPIPE reports (128 + 13). Bun ignores SIGPIPE, so a closed
 * pipe arrives as EPIPE; exiting with 141 keeps `set -o pipefail` scripts seeing what they would
 * see from `cat` or `tar`: the output was not all delivered.
 */
export const EXIT_BROKEN_PIPE = 141;

let installed = false;
/** Errors as one JSON object ({code, message, exitCode}) instead of a line of text: `--json`. */
let jsonErrors = false;

/**
 * Makes every failure of the process's own output, and any error nothing else caught, end the
 * process at once: nothing on stderr for a closed pipe, otherwise one line and the error's exit
 * code. `process.exit` also drops the connections that would otherwise keep it waiting in epoll.
 */
export function guardProcessOutput(options: { json: boolean }): void {
  jsonErrors = options.json;
  if (installed) return;
  installed = true;
  process.stdout.on("error", (err: unknown) => exitOnStdoutError(err));
  // Errors cannot be reported on a stderr that is gone: end as a closed pipe does.
  process.stderr.on("error", () => process.exit(EXIT_BROKEN_PIPE));
  // The last resort: an error that escaped every await (an 'error' event, a stray rejection).
  process.on("uncaughtException", (err: unknown) => exitWithError(err));
  process.on("unhandledRejection", (err: unknown) => exitWithError(err));
}

/** Stdout failed: a reader that left ends the process quietly, anything else is reported. */
export function exitOnStdoutError(err: unknown): never {
  if (isBrokenPipe(err)) process.exit(EXIT_BROKEN_PIPE);
  exitWithError(fileError(err, "write to", "stdout"));
}

export function isBrokenPipe(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "EPIPE" || code === "ERR_STREAM_DESTROYED";
}

/** One line on stderr and the error's exit code; the stack only when SHOAL_DEBUG asks for it. */
function exitWithError(err: unknown): never {
  if (isBrokenPipe(err)) process.exit(EXIT_BROKEN_PIPE);
  const error = err instanceof ShoalError ? err : asShoalError(err);
  // A bug report needs the stack; an operator running a command does not.
  const stack = process.env.SHOAL_DEBUG && err instanceof Error ? err.stack : undefined;
  exitWithErrorLine(error.code, error.message, error.exitCode, stack);
}

/** The one way a CLI command reports its failure: text for people, or {code, message} under --json. */
export function exitWithErrorLine(code: string, message: string, exitCode: number, stack?: string): never {
  const text = stripAnsi(message);
  try {
    process.stderr.write(jsonErrors ? `${JSON.stringify({ code, message: text, exitCode })}\n` : `${PROGRAM}: ${text}${code === "INTERNAL" ? "" : ` [${code}]`}\n`);
    if (stack) process.stderr.write(`${stack}\n`);
  } catch {
    // stderr is gone too: the exit code is all that is left to say it.
  }
  process.exit(exitCode);
}
