// `volume import` and `volume export`: a whole volume in or out, each chunk read from or written
// to the node that owns it (the node asked serves what has no owner up), many requests in flight,
// all-zero chunks sent as WRITE_ZEROES so the volume stays sparse.
import { ShoalError } from "../core/errors.ts";
import { formatSize } from "../core/geometry.ts";
import { parseHostPort } from "../core/cluster/member.ts";
import { NbdClient } from "../transport/nbd/nbd-client.ts";
import { ReceivedBufferCollector } from "../transport/wire/received-buffers.ts";
import { adminRequest } from "./_cli.ts";
import { FileSink } from "./_file-sink.ts";
import { openSource } from "./_file-source.ts";
import { connectPageOwners, type OwnerSegment, type PageOwners } from "./_page-owners.ts";
import { RequestsInFlight } from "./_requests-in-flight.ts";

const CHUNK_BYTES = 4 * 1024 * 1024;
/**
 * Chunks in flight across all owners: enough to keep three nodes busy while one reply is written
 * out. 16 was no faster on two CPUs and raised the CLI's peak RSS (garbage between collections)
 * from 270 to 370 MB for 512 MiB exported.
 */
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

/** Bytes done, rate and ETA on one stderr line, for a person watching a terminal (not --quiet). */
export class Progress {
  private lastMs = 0;
  private readonly startMs = Date.now();
  private readonly shown: boolean;
  constructor(private readonly label: string, private readonly totalBytes: number | undefined, quiet: boolean) {
    this.shown = !quiet && process.stderr.isTTY === true;
  }

  update(doneBytes: number, final = false): void {
    if (!this.shown) return;
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

/**
 * Bun hands each socket read over in a fresh buffer of up to 512 KiB, memory the collector does
 * not weigh: 256 MiB exported took the CLI's RSS to 190-245 MB. A full collection every 16 MiB
 * passed on keeps it near 110 MB, for the same CPU (measured over two rounds each).
 */
export function bulkJobCollector(): ReceivedBufferCollector {
  return new ReceivedBufferCollector(16 * 1024 * 1024, () => Bun.gc(true));
}

function isAllZero(bytes: Uint8Array): boolean {
  // 4 bytes at a time as plain numbers: BigInt words cost an allocation-free but slow compare each.
  if (bytes.byteOffset % 4 !== 0) return bytes.every((byte) => byte === 0);
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  for (let index = 0; index < words.length; index++) if (words[index] !== 0) return false;
  for (let index = words.length << 2; index < bytes.byteLength; index++) if (bytes[index] !== 0) return false;
  return true;
}

/** Whole pages when they are smaller than a chunk, so a chunk straddles no page boundary it need not. */
function chunkBytesFor(pageSizeBytes: number): number {
  return pageSizeBytes >= CHUNK_BYTES ? CHUNK_BYTES : Math.floor(CHUNK_BYTES / pageSizeBytes) * pageSizeBytes;
}

interface VolumeConnections {
  client: NbdClient;
  owners: PageOwners;
}

async function connectVolume(nodeAddress: string, volume: string): Promise<VolumeConnections> {
  const client = await connectExport(nodeAddress, volume);
  try {
    return { client, owners: await connectPageOwners(nodeAddress, volume, volume) };
  } catch (err) {
    await client.close().catch(() => {});
    throw err;
  }
}

export async function importVolume(nodeAddress: string, volume: string, source: string, quiet = false): Promise<StreamSummary> {
  // A path that cannot be read fails before the group is asked for anything.
  const input = openSource(source, "import", "a FILE argument");
  const { client, owners } = await connectVolume(nodeAddress, volume);
  if (input.sizeBytes !== undefined && input.sizeBytes > client.sizeBytes) {
    await Promise.all([client.close().catch(() => {}), owners.close()]);
    // Refused before the first write: the volume is left exactly as it was.
    throw new ShoalError("OUT_OF_RANGE", `'${source}' (${input.sizeBytes} bytes) is larger than volume '${volume}' (${client.sizeBytes} bytes); nothing was written`);
  }
  const startMs = Date.now();
  const progress = new Progress(`import ${volume}`, input.sizeBytes, quiet);
  const writes = new RequestsInFlight(IN_FLIGHT_MAX);
  const chunkBytes = chunkBytesFor(owners.pageSizeBytes);
  let offset = 0;
  /** Sends `bytes` (left alone until `done` runs) to the owner of their pages; waits while too many are out. */
  const send = async (bytes: Uint8Array, done?: () => void) => {
    if (offset + bytes.byteLength > client.sizeBytes) {
      throw new ShoalError("OUT_OF_RANGE", `input is larger than volume '${volume}' (${client.sizeBytes} bytes)`);
    }
    const request = writeToOwners(owners.segments(offset, bytes.byteLength, client), offset, bytes);
    offset += bytes.byteLength;
    await writes.add(done ? request.then(done) : request);
    progress.update(offset);
  };
  try {
    if (input.readInto) await sendFile(input.readInto, chunkBytes, send);
    else await sendStream(input.chunks, chunkBytes, send);
    await writes.drain();
    // The node asked forwarded what had no owner up; the owners flush what they took directly.
    await Promise.all([client.flush(), owners.flush()]);
  } finally {
    await writes.settle();
    await Promise.all([client.close().catch(() => {}), owners.close()]);
  }
  progress.update(offset, true);
  return summary(volume, offset, startMs);
}

/**
 * `bytes` (at `offset`) written piece by piece to the owners of `segments`; an all-zero piece as
 * WRITE_ZEROES, so the pages it covers stay holes.
 */
async function writeToOwners(segments: OwnerSegment[], offset: number, bytes: Uint8Array): Promise<void> {
  const writes = segments.map((segment) => {
    const piece = bytes.subarray(segment.offset - offset, segment.offset - offset + segment.length);
    return isAllZero(piece) ? segment.client.writeZeroes(segment.offset, segment.length) : segment.client.write(segment.offset, piece);
  });
  // All answered before the chunk's buffer is used again, even when one fails early.
  const results = await Promise.allSettled(writes);
  for (const result of results) if (result.status === "rejected") throw result.reason;
}

/** The pieces' views of `segments`, read from their owners at once, in order. */
async function readFromOwners(segments: OwnerSegment[]): Promise<Uint8Array[]> {
  if (segments.length === 1) return segments[0]!.client.readViews(segments[0]!.offset, segments[0]!.length);
  const pieces = await Promise.all(segments.map((segment) => quietly(segment.client.readViews(segment.offset, segment.length))));
  return pieces.flat();
}

type Send = (bytes: Uint8Array, done?: () => void) => Promise<void>;

/**
 * A regular file, read straight into chunk buffers that are used again once their write is
 * answered: at most IN_FLIGHT_MAX + 1 of them, allocated (and faulted in) once.
 */
async function sendFile(readInto: (target: Uint8Array) => Promise<number>, chunkBytes: number, send: Send): Promise<void> {
  const free: Uint8Array[] = [];
  for (;;) {
    const chunk = free.pop() ?? new Uint8Array(chunkBytes);
    const filled = await readInto(chunk);
    if (filled === 0) return;
    await send(chunk.subarray(0, filled), () => free.push(chunk));
    if (filled < chunkBytes) return;
  }
}

/** A pipe or device: its pieces gathered into whole chunks. */
async function sendStream(pieces: AsyncIterable<Uint8Array>, chunkBytes: number, send: Send): Promise<void> {
  let chunk = new Uint8Array(chunkBytes);
  let filled = 0;
  for await (const piece of pieces) {
    let used = 0;
    while (used < piece.byteLength) {
      const take = Math.min(chunkBytes - filled, piece.byteLength - used);
      chunk.set(piece.subarray(used, used + take), filled);
      filled += take;
      used += take;
      if (filled === chunkBytes) {
        await send(chunk);
        chunk = new Uint8Array(chunkBytes);
        filled = 0;
      }
    }
  }
  if (filled > 0) await send(chunk.subarray(0, filled));
}

export async function exportVolume(nodeAddress: string, volume: string, target: string, quiet = false): Promise<StreamSummary> {
  // A path that cannot take the image fails before the group is asked for anything.
  const sink = FileSink.open(target, "export to", "a FILE argument");
  try {
    const { bytes, startMs } = await readVolume(nodeAddress, volume, sink, quiet);
    await sink.close(); // the flush to disk is part of the export's time
    return summary(volume, bytes, startMs);
  } catch (err) {
    sink.abort();
    throw err;
  }
}

async function readVolume(nodeAddress: string, volume: string, sink: FileSink, quiet: boolean): Promise<{ bytes: number; startMs: number }> {
  const { client, owners } = await connectVolume(nodeAddress, volume);
  const startMs = Date.now();
  const size = client.sizeBytes;
  const chunkBytes = chunkBytesFor(owners.pageSizeBytes);
  const progress = new Progress(`export ${volume}`, size, quiet);
  const collect = bulkJobCollector();
  // Read from every owner at once and written out in order: the output's speed is the limit.
  const reads: Promise<Uint8Array[]>[] = [];
  let nextOffset = 0;
  const queueRead = () => {
    if (nextOffset >= size) return;
    const length = Math.min(chunkBytes, size - nextOffset);
    reads.push(quietly(readFromOwners(owners.segments(nextOffset, length, client))));
    nextOffset += length;
  };
  try {
    for (let index = 0; index < IN_FLIGHT_MAX; index++) queueRead();
    let written = 0;
    while (reads.length > 0) {
      const views = await reads.shift()!;
      queueRead();
      await sink.write(views);
      let viewBytes = 0;
      for (const view of views) viewBytes += view.byteLength;
      written += viewBytes;
      progress.update(written);
      collect.received(viewBytes);
    }
  } finally {
    await Promise.all([client.close().catch(() => {}), owners.close()]);
  }
  progress.update(size, true);
  return { bytes: size, startMs };
}

/**
 * Requests run ahead of the one awaited; after the first failure (a page on a node that is down,
 * say) the rest fail too and are never awaited. Marked handled, they are not reported again with
 * a stack trace each; awaiting the promise still throws.
 */
function quietly<T>(request: Promise<T>): Promise<T> {
  request.catch(() => {});
  return request;
}

function summary(volume: string, bytes: number, startMs: number): StreamSummary {
  const seconds = (Date.now() - startMs) / 1000;
  return { volume, bytes, seconds, bytesPerSecond: Math.round(bytes / Math.max(seconds, 0.001)) };
}
