// Where `archive create -o` and `volume export` put their bytes: a regular file, a device (tape,
// /dev/null) or FIFO, or stdout. Every write is awaited and every failure becomes one typed error
// naming the file, so a full disk ends the command instead of leaving it waiting for a 'drain'.
import * as fs from "node:fs";
import * as path from "node:path";
import { fileError, ShoalError } from "../core/errors.ts";
import { stdoutTakesDirectWrites, writeViews } from "./_descriptor-writes.ts";
import { EXIT_BROKEN_PIPE, exitOnStdoutError, isBrokenPipe } from "./_output.ts";

/**
 * A regular file is written under a temporary name beside it, flushed to disk and renamed over the
 * target only when complete: a failed run leaves no partial file behind, and the file a previous
 * run left at that path (last night's archive) survives. A device or FIFO is written in place.
 */
export class FileSink {
  private closed = false;
  private readonly onExit = () => this.removePartial();
  private readonly onSignal = (signal: NodeJS.Signals) => {
    this.removePartial();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };

  private constructor(
    private readonly target: string,
    private readonly finalPath: string,
    /** Set once the file is open; undefined for stdout. */
    private fd: number | undefined,
    private readonly partialPath: string | undefined,
    private readonly action: string,
  ) {
    if (!partialPath) return;
    // Ctrl-C, a stop of the cron job or an error that ends the process: no partial file stays.
    // Registered before the partial file is made: a signal between the two would otherwise end
    // the process by its default action and leave the file (seen under load in the suite).
    process.on("exit", this.onExit);
    process.once("SIGINT", this.onSignal);
    process.once("SIGTERM", this.onSignal);
  }

  /**
   * Opens the target now, so a bad path fails before any node is asked for anything.
   * `fileArgument` is how the command names a file ("-o FILE"), for the terminal refusal.
   */
  static open(target: string, action: string, fileArgument: string): FileSink {
    if (target === "-") {
      // Megabytes of binary on a terminal are never what was meant.
      if (process.stdout.isTTY) throw new ShoalError("BAD_ARGUMENT", `stdout is a terminal; give ${fileArgument} or pipe the output on`);
      return new FileSink("stdout", "stdout", undefined, undefined, action);
    }
    // /dev/stdout and friends name a descriptor the shell opened (a pipe has no path to rename onto).
    if (DESCRIPTOR_PATH.test(path.resolve(target))) return FileSink.inPlace(target, action);
    const finalPath = resolvedTarget(target, action);
    const existing = fs.existsSync(finalPath) ? fs.statSync(finalPath) : undefined;
    const inPlace = existing !== undefined && !existing.isFile();
    const partialPath = inPlace ? undefined : path.join(path.dirname(finalPath), `.${path.basename(finalPath)}.partial-${process.pid}`);
    const sink = new FileSink(target, finalPath, undefined, partialPath, action);
    try {
      // The rename would replace a file we may not write; refuse as writing it in place would.
      if (partialPath && existing) fs.accessSync(finalPath, fs.constants.W_OK);
      // A new file gets what `>` would give it (0666 less the umask); a replaced one keeps its mode,
      // so an archive someone made private (0600) does not come back readable by all.
      sink.fd = fs.openSync(partialPath ?? finalPath, "w", 0o666);
      if (partialPath && existing) fs.fchmodSync(sink.fd, existing.mode & 0o7777);
      return sink;
    } catch (err) {
      sink.abort();
      const note = missingDirectory(err, finalPath) ? `directory '${path.dirname(finalPath)}' does not exist` : undefined;
      throw fileError(err, action, target, note);
    }
  }

  private static inPlace(target: string, action: string): FileSink {
    try {
      return new FileSink(target, target, fs.openSync(target, "w", 0o666), undefined, action);
    } catch (err) {
      throw fileError(err, action, target);
    }
  }

  async write(chunks: Uint8Array[]): Promise<void> {
    if (this.target === "stdout" && this.fd === undefined) return writeStdout(chunks);
    // A regular file takes the chunks in one writev; a device (a tape makes a block of each
    // write) or a FIFO gets them one write at a time, as it always has.
    if (this.partialPath) return this.writeFile(() => writeViews(this.fd!, chunks));
    for (const chunk of chunks) await this.writeFile(() => writeViews(this.fd!, [chunk]));
  }

  /** Everything written: make it durable and give it its name. */
  async close(): Promise<void> {
    if (this.fd === undefined) return;
    const fd = this.fd;
    try {
      if (this.partialPath) await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
      this.closeFd(true);
      if (this.partialPath) fs.renameSync(this.partialPath, this.finalPath);
      this.removeExitHandlers();
    } catch (err) {
      this.abort();
      throw fileError(err, this.action, this.target);
    }
  }

  /** The command failed: drop the partial file, keep whatever was at the target before. */
  abort(): void {
    if (this.fd === undefined && !this.partialPath) return;
    if (this.fd !== undefined) this.closeFd(false);
    this.removePartial();
    this.removeExitHandlers();
  }

  /** Only a file this run made: when the open failed there is none (and on a read-only file system rm fails). */
  private removePartial(): void {
    if (this.partialPath && this.fd !== undefined) fs.rmSync(this.partialPath, { force: true });
  }

  private removeExitHandlers(): void {
    process.off("exit", this.onExit);
    process.off("SIGINT", this.onSignal);
    process.off("SIGTERM", this.onSignal);
  }

  /** Once only: a second close could hit a descriptor the process has since reused for a socket. */
  private closeFd(reportErrors: boolean): void {
    if (this.closed) return;
    this.closed = true;
    try {
      fs.closeSync(this.fd!);
    } catch (err) {
      // Some file systems (NFS) report a lost write only at close; on the failure path it changes nothing.
      if (reportErrors) throw err;
    }
  }

  private async writeFile(write: () => Promise<void>): Promise<void> {
    try {
      await write();
    } catch (err) {
      // A FIFO or /dev/stdout whose reader left: end as for stdout itself, quietly.
      if (isBrokenPipe(err)) process.exit(EXIT_BROKEN_PIPE);
      throw fileError(err, this.action, this.target);
    }
  }
}

/** Whether bytes written to `target` land on this process's stdout (so a summary must not). */
export function writesToStdout(target: string): boolean {
  return target === "-" || /^\/(dev\/stdout|dev\/fd\/1|proc\/self\/fd\/1)$/.test(target);
}

const DESCRIPTOR_PATH = /^\/(dev\/(stdout|stderr|fd\/)|proc\/[^/]+\/fd\/)/;

function missingDirectory(err: unknown, finalPath: string): boolean {
  return (err as { code?: unknown }).code === "ENOENT" && !fs.existsSync(path.dirname(finalPath));
}

/** The path a rename must replace: through a symbolic link to the file it names. */
function resolvedTarget(target: string, action: string): string {
  try {
    return fs.existsSync(target) ? fs.realpathSync(target) : path.resolve(target);
  } catch (err) {
    throw fileError(err, action, target);
  }
}

/** Stdout with backpressure; a failure ends the process (quietly for a reader that left). */
async function writeStdout(chunks: Uint8Array[]): Promise<void> {
  if (stdoutTakesDirectWrites()) return writeViews(1, chunks).catch((err: unknown) => exitOnStdoutError(err));
  for (const chunk of chunks) await writeStdoutStream(chunk);
}

function writeStdoutStream(chunk: Uint8Array): Promise<void> {
  return new Promise<void>((resolve) => {
    // Past the high-water mark, wait until this chunk is handed to the OS (the callback).
    const buffered = process.stdout.write(chunk, (err) => {
      if (err) exitOnStdoutError(err);
      resolve();
    });
    if (buffered) resolve();
  });
}
