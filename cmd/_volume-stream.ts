// `volume import` and `volume export`: a whole volume in or out through any node's NBD server,
// many requests in flight, all-zero chunks sent as WRITE_ZEROES so the volume stays sparse.
import { ShoalError } from "../core/errors.ts";
import { formatSize } from "../core/geometry.ts";
import { parseHostPort } from "../core/member.ts";
import { NbdClient } from "../transport/nbd-client.ts";
import { adminRequest } from "./_cli.ts";
import { FileSink } from "./_file-sink.ts";
import { openSource } from "./_file-source.ts";
import { RequestsInFlight } from "./_requests-in-flight.ts";

const CHUNK_BYTES = 4 * 1024 * 1024;
const IN_FLIGHT_MAX = 8;

export interface StreamSummary {
  volume: string;
  bytes: number;
  seconds: number;
  bytesPerSecond: number;
}

/** An NBD connection to an export through the node at a mesh address (asks it for its NBD address). */
export async function connectExport(nodeAddress: string, exportName: string): Promise<NbdClient> {
  const info = await adminRequest(nodeAddress, "admin.node.info");
  const { host, port } = parseHostPort(String(info.nbdAddress));
  return NbdClient.connect({ host, port, exportName });
}

export class Progress {
  private lastMs = 0;
  private readonly startMs = Date.now();
  constructor(private readonly label: string, private readonly totalBytes: number | undefined) {}

  update(doneBytes: number, final = false): void {
    if (!process.stderr.isTTY) return;
    const nowMs = Date.now();
    if (!final && nowMs - this.lastMs < 250) return;
    this.lastMs = nowMs;
    const seconds = Math.max((nowMs - this.startMs) / 1000, 0.001);
    const rate = doneBytes / seconds;
    const total = this.totalBytes ? ` of ${formatSize(this.totalBytes)}` : "";
    const eta = this.totalBytes && rate > 0 ? `, ETA ${Math.ceil((this.totalBytes - doneBytes) / rate)}s` : "";
    process.stderr.write(`\r${this.label}: ${formatSize(doneBytes)}${total} at ${formatSize(Math.round(rate))}/s${eta}   ${final ? "\n" : ""}`);
  }
}

function isAllZero(bytes: Uint8Array): boolean {
  // Check 8 bytes at a time; page-aligned buffers make this cheap next to the network.
  const words = new BigUint64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 3);
  for (let index = 0; index < words.length; index++) if (words[index] !== 0n) return false;
  for (let index = words.length << 3; index < bytes.byteLength; index++) if (bytes[index] !== 0) return false;
  return true;
}

export async function importVolume(nodeAddress: string, volume: string, source: string): Promise<StreamSummary> {
  // A path that cannot be read fails before the group is asked for anything.
  const input = openSource(source, "import", "a FILE argument");
  const client = await connectExport(nodeAddress, volume);
  if (input.sizeBytes !== undefined && input.sizeBytes > client.sizeBytes) {
    await client.close().catch(() => {});
    // Refused before the first write: the volume is left exactly as it was.
    throw new ShoalError("OUT_OF_RANGE", `'${source}' (${input.sizeBytes} bytes) is larger than volume '${volume}' (${client.sizeBytes} bytes); nothing was written`);
  }
  const startMs = Date.now();
  const progress = new Progress(`import ${volume}`, input.sizeBytes);
  const writes = new RequestsInFlight(IN_FLIGHT_MAX);
  let offset = 0;
  let chunk = new Uint8Array(CHUNK_BYTES);
  let filled = 0;
  const send = async (bytes: Uint8Array, at: number) => {
    if (at + bytes.byteLength > client.sizeBytes) {
      throw new ShoalError("OUT_OF_RANGE", `input is larger than volume '${volume}' (${client.sizeBytes} bytes)`);
    }
    await writes.add(isAllZero(bytes) ? client.writeZeroes(at, bytes.byteLength) : client.write(at, bytes));
  };
  try {
    for await (const piece of input.chunks) {
      let used = 0;
      while (used < piece.byteLength) {
        const take = Math.min(CHUNK_BYTES - filled, piece.byteLength - used);
        chunk.set(piece.subarray(used, used + take), filled);
        filled += take;
        used += take;
        if (filled === CHUNK_BYTES) {
          await send(chunk, offset);
          offset += filled;
          chunk = new Uint8Array(CHUNK_BYTES);
          filled = 0;
          progress.update(offset);
        }
      }
    }
    if (filled > 0) {
      await send(chunk.subarray(0, filled), offset);
      offset += filled;
    }
    await writes.drain();
    await client.flush();
  } finally {
    await client.close().catch(() => {});
  }
  progress.update(offset, true);
  return summary(volume, offset, startMs);
}

export async function exportVolume(nodeAddress: string, volume: string, target: string): Promise<StreamSummary> {
  // A path that cannot take the image fails before the group is asked for anything.
  const sink = FileSink.open(target, "export to", "a FILE argument");
  try {
    const { bytes, startMs } = await readVolume(nodeAddress, volume, sink);
    await sink.close(); // the flush to disk is part of the export's time
    return summary(volume, bytes, startMs);
  } catch (err) {
    sink.abort();
    throw err;
  }
}

async function readVolume(nodeAddress: string, volume: string, sink: FileSink): Promise<{ bytes: number; startMs: number }> {
  const client = await connectExport(nodeAddress, volume);
  const startMs = Date.now();
  const size = client.sizeBytes;
  const progress = new Progress(`export ${volume}`, size);
  const reads: Promise<Uint8Array>[] = [];
  let nextOffset = 0;
  const queueRead = () => {
    if (nextOffset >= size) return;
    reads.push(quiet(client.read(nextOffset, Math.min(CHUNK_BYTES, size - nextOffset))));
    nextOffset += CHUNK_BYTES;
  };
  try {
    for (let index = 0; index < IN_FLIGHT_MAX; index++) queueRead();
    let written = 0;
    while (reads.length > 0) {
      const data = await reads.shift()!;
      queueRead();
      await sink.write([data]);
      written += data.byteLength;
      progress.update(written);
    }
  } finally {
    await client.close().catch(() => {});
  }
  progress.update(size, true);
  return { bytes: size, startMs };
}

/**
 * Requests run ahead of the one awaited; after the first failure (a page on a node that is down,
 * say) the rest fail too and are never awaited. Marked handled, they are not reported again with
 * a stack trace each; awaiting the promise still throws.
 */
function quiet<T>(request: Promise<T>): Promise<T> {
  request.catch(() => {});
  return request;
}

function summary(volume: string, bytes: number, startMs: number): StreamSummary {
  const seconds = (Date.now() - startMs) / 1000;
  return { volume, bytes, seconds, bytesPerSecond: Math.round(bytes / Math.max(seconds, 0.001)) };
}
