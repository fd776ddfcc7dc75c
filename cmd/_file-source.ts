// Where `archive restore|verify|list -i` and `volume import` read their bytes: a file, a device
// or stdin. The file is opened before anything else happens, so a wrong path is one typed line
// naming it (not ENOENT from deep inside a stream), and a read that fails later names it too.
import * as fs from "node:fs";
import { fileError, ShoalError } from "../core/errors.ts";

export interface FileSource {
  /** The bytes, in order; a failed read throws a typed error naming the file. */
  chunks: AsyncIterable<Uint8Array>;
  /** The file's size when it is a regular file (for progress), else undefined. */
  sizeBytes: number | undefined;
  /**
   * Regular files only, instead of `chunks`: fills `target` with the next bytes (fewer only at the
   * end; 0 once all are read), so a bulk reader reuses its own buffers: one copy from the page
   * cache, no fresh chunk per read for the collector.
   */
  readInto: ((target: Uint8Array) => Promise<number>) | undefined;
}

/**
 * `action` says what the bytes are for ("read archive from", "import"); `fileArgument` is how the
 * command names a file ("-i FILE"), for the terminal refusal.
 */
export function openSource(source: string, action: string, fileArgument: string): FileSource {
  if (source === "-") {
    // Waiting for someone to type an archive is never what was meant.
    if (process.stdin.isTTY) throw new ShoalError("BAD_ARGUMENT", `stdin is a terminal; give ${fileArgument} or pipe the input in`);
    return { chunks: named(() => Bun.stdin.stream(), action, "stdin"), sizeBytes: undefined, readInto: undefined };
  }
  let fd: number;
  try {
    fd = fs.openSync(source, "r");
  } catch (err) {
    throw fileError(err, action, source);
  }
  const stat = fs.fstatSync(fd);
  if (stat.isDirectory()) {
    fs.closeSync(fd);
    throw fileError(Object.assign(new Error("is a directory"), { code: "EISDIR" }), action, source);
  }
  const regular = stat.isFile();
  return {
    chunks: named(() => Bun.file(fd).stream(), action, source, fd),
    sizeBytes: regular ? stat.size : undefined,
    readInto: regular ? reader(fd, action, source) : undefined,
  };
}

function reader(fd: number, action: string, file: string): (target: Uint8Array) => Promise<number> {
  let position = 0;
  let open = true;
  return async (target) => {
    let filled = 0;
    try {
      while (open && filled < target.byteLength) {
        const bytes = await new Promise<number>((resolve, reject) =>
          fs.read(fd, target, filled, target.byteLength - filled, position, (err, read) => (err ? reject(err) : resolve(read))),
        );
        if (bytes === 0) {
          open = false;
          fs.closeSync(fd);
        }
        filled += bytes;
        position += bytes;
      }
    } catch (err) {
      throw fileError(err, action, file);
    }
    return filled;
  };
}

/** The stream's own failures, renamed after the file; errors of the consumer pass through untouched. */
async function* named(stream: () => ReadableStream<Uint8Array>, action: string, file: string, fd?: number): AsyncIterable<Uint8Array> {
  let ended = false;
  try {
    for await (const chunk of stream() as unknown as AsyncIterable<Uint8Array>) yield chunk;
    ended = true;
  } catch (err) {
    ended = true;
    throw fileError(err, action, file);
  } finally {
    // Closed only once the stream has ended: a consumer that stops early (a bad archive, `archive
    // list` past the manifest) may leave a read in flight, and a socket opened next could reuse
    // the number under it. Such a command ends soon after, which closes it anyway.
    if (ended && fd !== undefined) fs.closeSync(fd);
  }
}
