// `archive create | restore | verify | list`: moves archive bytes between nodes (over NBD) and
// files, tapes or pipes. The format itself (tar records, manifest, digests) is core/archive/.
import { ArchiveReader, type ArchiveEvent } from "../core/archive/reader.ts";
import { ArchiveWriter } from "../core/archive/writer.ts";
import type { ArchiveManifest } from "../core/archive/manifest.ts";
import { asShoalError, ShoalError } from "../core/errors.ts";
import { formatSize } from "../core/geometry.ts";
import { parseHostPort } from "../core/cluster/member.ts";
import { NbdClient } from "../transport/nbd/nbd-client.ts";
import { RESTORE_SUFFIX } from "../transport/node/volume-router.ts";
import { adminRequest } from "./_cli.ts";
import { FileSink } from "./_file-sink.ts";
import { openSource } from "./_file-source.ts";
import { RequestsInFlight } from "./_requests-in-flight.ts";
import { connectPageOwners, type PageOwners } from "./_page-owners.ts";
import { bulkJobCollector, connectExport, Progress } from "./_volume-stream.ts";

/**
 * Pages read ahead of the writer: bounds memory at this many pages whatever the volume size. 8
 * was no faster on two CPUs (the CLI's CPU is the limit) and took its peak RSS to 270 MB for 1 GiB.
 */
const PAGES_IN_FLIGHT = 4;
/**
 * Reads of an archive file: one buffer used again and again (no fresh memory to fault in) while
 * pages are larger than it, as the default 4 MiB ones are.
 */
const ARCHIVE_READ_BYTES = 1024 * 1024;
/** Restore writes in flight, across all owners. */
const WRITES_IN_FLIGHT = 8;

export interface ArchiveSummary {
  volume: string;
  snapshot: string;
  snapshotId: string;
  base: string | null;
  pages: number;
  bytes: number;
  seconds: number;
  bytesPerSecond: number;
}

export async function createArchive(
  nodeAddress: string,
  volume: string,
  snapshot: string,
  since: string | undefined,
  target: string,
  recordSizeBytes: number | undefined,
  quiet = false,
): Promise<ArchiveSummary> {
  const startMs = performance.now();
  // A path that cannot take the archive fails before the group is asked for anything.
  const sink = FileSink.open(target, "write archive to", "-o FILE");
  try {
    const summary = await writeArchive(nodeAddress, volume, snapshot, since, sink, recordSizeBytes, quiet);
    await sink.close();
    const seconds = (performance.now() - startMs) / 1000;
    return { ...summary, seconds, bytesPerSecond: Math.round(summary.bytes / Math.max(seconds, 0.001)) };
  } catch (err) {
    sink.abort();
    throw err;
  }
}

async function writeArchive(
  nodeAddress: string,
  volume: string,
  snapshot: string,
  since: string | undefined,
  sink: FileSink,
  recordSizeBytes: number | undefined,
  quiet: boolean,
): Promise<Omit<ArchiveSummary, "seconds" | "bytesPerSecond">> {
  const plan = await adminRequest(nodeAddress, "admin.archive.plan", { volume, snapshot, ...(since ? { since } : {}) });
  const pages = plan.pages as number[];
  const writer = new ArchiveWriter({
    volume,
    volumeUid: String(plan.volumeUid),
    sizeBytes: Number(plan.sizeBytes),
    pageSizeBytes: Number(plan.pageSizeBytes),
    snapshot: plan.snapshot as ArchiveManifest["snapshot"],
    base: (plan.base as ArchiveManifest["base"]) ?? null,
    pages,
    createdAtMs: Date.now(),
    recordSizeBytes,
  });
  const pageSizeBytes = Number(plan.pageSizeBytes);
  const sizeBytes = Number(plan.sizeBytes);
  // One connection to each owner: every page is read where it lives, in parallel across nodes.
  const exportName = `${volume}@${snapshot}`;
  const clientOf = new Map<number, NbdClient>();
  const clients: NbdClient[] = [];
  try {
    for (const [address, owned] of Object.entries(plan.owners as Record<string, number[]>)) {
      if (owned.length === 0) continue;
      const { host, port } = parseHostPort(address);
      const owner = await NbdClient.connect({ host, port, exportName });
      clients.push(owner);
      for (const page of owned) clientOf.set(page, owner);
    }
  } catch (err) {
    await Promise.all(clients.map((client) => client.close().catch(() => {})));
    throw err;
  }
  const progress = new Progress(`archive ${volume}@${snapshot}`, pages.length * pageSizeBytes, quiet);
  const collect = bulkJobCollector();
  let bytes = 0;
  // Pages are pulled from their owners in parallel and written in page order.
  const reads: Promise<Uint8Array[]>[] = [];
  try {
    await sink.write(writer.start());
    let next = 0;
    const readAhead = () => {
      while (reads.length < PAGES_IN_FLIGHT && next < pages.length) {
        const page = pages[next++]!;
        const offset = page * pageSizeBytes;
        // As views of the received chunks: hashed and written from there, never gathered.
        reads.push(clientOf.get(page)!.readViews(offset, Math.min(pageSizeBytes, sizeBytes - offset)));
      }
    };
    readAhead();
    for (const page of pages) {
      const pieces = await reads.shift()!;
      readAhead();
      await sink.write(writer.page(page, pieces));
      let pieceBytes = 0;
      for (const piece of pieces) pieceBytes += piece.byteLength;
      bytes += pieceBytes;
      progress.update(bytes);
      collect.received(pieceBytes);
    }
    await sink.write(writer.finish());
  } catch (err) {
    // Reads still in flight fail once their connections close; nobody is waiting for them now.
    for (const read of reads) read.catch(() => {});
    throw err;
  } finally {
    await Promise.all(clients.map((client) => client.close().catch(() => {})));
  }
  progress.update(bytes, true);
  return {
    volume,
    snapshot,
    snapshotId: writer.manifest.snapshot.id,
    base: writer.manifest.base?.name ?? null,
    pages: pages.length,
    bytes: writer.emittedBytes,
  };
}

/** Feeds a file or stdin through `onEvents`; the reader throws BAD_ARCHIVE at the first bad byte. */
async function readArchive(source: string, onEvents: (events: ArchiveEvent[], reader: ArchiveReader) => Promise<boolean | void>): Promise<void> {
  const reader = new ArchiveReader();
  const input = openSource(source, "read archive from", "-i FILE");
  if (input.readInto) {
    let pageSizeBytes = 0;
    let spare: Uint8Array | undefined;
    for (;;) {
      const chunk = spare ?? new Uint8Array(ARCHIVE_READ_BYTES);
      const filled = await input.readInto(chunk);
      if (filled === 0) break;
      const events = reader.push(chunk.subarray(0, filled));
      for (const event of events) if (event.kind === "manifest") pageSizeBytes = event.manifest.pageSizeBytes;
      // A page larger than a read never lies in one pushed chunk, so the reader gathers it into
      // a buffer of its own and nothing it handed out points into `chunk`: read the next into it.
      spare = pageSizeBytes > ARCHIVE_READ_BYTES ? chunk : undefined;
      if ((await onEvents(events, reader)) === false) return;
    }
  } else {
    for await (const chunk of input.chunks) {
      if ((await onEvents(reader.push(chunk), reader)) === false) return;
    }
  }
  await onEvents(reader.end(), reader);
}

export async function verifyArchiveStream(source: string): Promise<{ manifest: ArchiveManifest; pages: number; zeroPages: number }> {
  let manifest: ArchiveManifest | undefined;
  let pages = 0;
  let zeroPages = 0;
  await readArchive(source, async (events, reader) => {
    for (const event of events) {
      if (event.kind === "manifest") manifest = event.manifest;
      else if (event.kind === "page") {
        pages++;
        reader.release(event.data); // page buffers are reused: fresh 4 MiB buffers are costly
      }
      else if (event.kind === "zero") zeroPages += event.pageCount;
    }
  });
  if (!manifest) throw new ShoalError("BAD_ARCHIVE", "the stream holds no archive");
  return { manifest, pages, zeroPages };
}

export async function readManifest(source: string): Promise<ArchiveManifest> {
  let manifest: ArchiveManifest | undefined;
  try {
    await readArchive(source, async (events) => {
      const found = events.find((event) => event.kind === "manifest");
      if (found && found.kind === "manifest") manifest = found.manifest;
      return manifest === undefined;
    });
  } catch (err) {
    if (!manifest) throw err;
  }
  if (!manifest) throw new ShoalError("BAD_ARCHIVE", "the stream ended before its manifest");
  return manifest;
}

/** The snapshot a successful restore leaves behind, so an incremental can prove its base. */
function restoredSnapshotName(snapshotId: string): string {
  return `restored.${snapshotId}`;
}

/** What a restore has done to its target so far: what a failure must undo or explain. */
interface RestoreTarget {
  state: "untouched" | "created" | "hidden";
  incremental: boolean;
  /** The snapshot a finished restore leaves; a failure after it was taken must delete it too. */
  marker?: string;
  /** Set by a signal: that handler cleans up, reports and exits; the failing stream stays quiet. */
  interrupted?: boolean;
  /** The create request in flight: a signal waits for its answer before deciding what to undo. */
  creating?: Promise<unknown>;
}

/**
 * A failed restore never leaves a half-made volume behind under a name the retry cannot use: a
 * volume it created (--create) is deleted again, and the error says so; an existing volume it was
 * replacing stays hidden (restoring) and the error says how to finish.
 */
export async function restoreArchive(nodeAddress: string, volume: string, source: string, create: boolean, quiet = false): Promise<ArchiveSummary> {
  const target: RestoreTarget = { state: "untouched", incremental: false };
  const onSignal = (signal: NodeJS.Signals) => void interrupted(nodeAddress, volume, target, signal);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    return await restoreStream(nodeAddress, volume, source, create, target, quiet);
  } catch (err) {
    // Writes fail once the signal handler deletes the volume: it reports and exits, not this.
    if (target.interrupted) await new Promise<never>(() => {});
    throw await failedRestoreError(nodeAddress, volume, target, err);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** Bounds the clean-up of a failed restore: the node that failed it may be the one that is down. */
const CLEANUP_TIMEOUT_MS = 10_000;

async function failedRestoreError(nodeAddress: string, volume: string, target: RestoreTarget, err: unknown): Promise<ShoalError> {
  const error = asShoalError(err);
  const said = (what: string) => new ShoalError(error.code, `${error.message}; ${what}`);
  if (target.state === "hidden") {
    return said(
      target.incremental
        ? `volume '${volume}' stays hidden from clients (restoring): restore its base archive again, then this one`
        : `volume '${volume}' stays hidden from clients (restoring) until a restore into it completes: run the restore again`,
    );
  }
  if (target.state !== "created") return error;
  try {
    if (target.marker) await adminRequest(nodeAddress, "admin.snap.delete", { volume, name: target.marker }, CLEANUP_TIMEOUT_MS).catch(() => {});
    await adminRequest(nodeAddress, "admin.volume.delete", { name: volume }, CLEANUP_TIMEOUT_MS);
    return said(`removed volume '${volume}' that this restore created, so the same command can run again`);
  } catch (cleanupErr) {
    return said(`volume '${volume}' that this restore created could not be removed (${asShoalError(cleanupErr).message}): \`shoal volume delete ${volume}\`, then run the restore again`);
  }
}

/** Ctrl-C or a stop of the job: undo as a failure would, then end as the signal would have. */
async function interrupted(nodeAddress: string, volume: string, target: RestoreTarget, signal: NodeJS.Signals): Promise<void> {
  target.interrupted = true;
  // A volume the node may be creating right now is ours only once the node says so.
  await target.creating?.catch(() => {});
  const error = await failedRestoreError(nodeAddress, volume, target, new ShoalError("INTERNAL", `interrupted by ${signal}`));
  process.stderr.write(`shoal: ${error.message}\n`);
  process.exit(signal === "SIGINT" ? 130 : 143);
}

async function restoreStream(nodeAddress: string, volume: string, source: string, create: boolean, target: RestoreTarget, quiet: boolean): Promise<ArchiveSummary> {
  const startMs = performance.now();
  let manifest: ArchiveManifest | undefined;
  let client: NbdClient | undefined;
  let owners: PageOwners | undefined;
  let progress: Progress | undefined;
  let appliedBytes = 0; // bytes of pages and zero runs applied, against the manifest's candidate pages
  const writes = new RequestsInFlight(WRITES_IN_FLIGHT);
  let pages = 0;
  let bytes = 0;
  const track = (request: Promise<void>) => writes.add(request);
  try {
    await readArchive(source, async (events, reader) => {
      for (const event of events) {
        if (event.kind === "manifest") {
          manifest = event.manifest;
          await prepareTarget(nodeAddress, volume, manifest, create, target);
          client = await connectExport(nodeAddress, `${volume}${RESTORE_SUFFIX}`);
          owners = await connectPageOwners(nodeAddress, volume, `${volume}${RESTORE_SUFFIX}`);
          progress = new Progress(`restore ${volume}`, manifest.candidatePages * manifest.pageSizeBytes, quiet);
        } else if (event.kind === "page") {
          // Written straight to the page's owner: no forwarding hop.
          const { data } = event;
          await track((owners!.get(event.page) ?? client!).write(event.page * manifest!.pageSizeBytes, data).then(() => reader.release(data)));
          pages++;
          bytes += event.data.byteLength;
          progress!.update((appliedBytes += event.data.byteLength));
        } else if (event.kind === "zero") {
          const offset = event.firstPage * manifest!.pageSizeBytes;
          const length = Math.min(event.pageCount * manifest!.pageSizeBytes, manifest!.sizeBytes - offset);
          await track(client!.writeZeroes(offset, length));
          progress!.update((appliedBytes += length));
        } else if (event.kind === "end") {
          await writes.drain();
          await client!.flush(); // reaches every node this connection forwarded to
          await owners!.flush();
        }
      }
    });
  } finally {
    await writes.settle();
    await client?.close().catch(() => {});
    await owners?.close();
  }
  progress?.update(appliedBytes, true);
  // Every digest matched: record what the volume now holds, then let clients see it.
  const done = manifest!;
  const marker = restoredSnapshotName(done.snapshot.id);
  target.marker = marker;
  await adminRequest(nodeAddress, "admin.snap.delete", { volume, name: marker }).catch(() => {});
  await adminRequest(nodeAddress, "admin.snap.create", { volumes: [volume], name: marker, mode: "hold" });
  if (done.base) await adminRequest(nodeAddress, "admin.snap.delete", { volume, name: restoredSnapshotName(done.base.id) }).catch(() => {});
  await adminRequest(nodeAddress, "admin.volume.restoring", { name: volume, restoring: false });
  const seconds = (performance.now() - startMs) / 1000;
  return {
    volume,
    snapshot: done.snapshot.name,
    snapshotId: done.snapshot.id,
    base: done.base?.name ?? null,
    pages,
    bytes,
    seconds,
    bytesPerSecond: Math.round(bytes / Math.max(seconds, 0.001)),
  };
}

/**
 * Readies the volume an archive is restored into and hides it from clients until the restore
 * completes. A full archive goes into a new volume (--create) or replaces an existing one of the
 * same geometry; an incremental only onto a volume that holds exactly its base, proven by the
 * snapshot the base's restore left and no change since.
 */
async function prepareTarget(nodeAddress: string, volume: string, manifest: ArchiveManifest, create: boolean, target: RestoreTarget): Promise<void> {
  target.incremental = Boolean(manifest.base);
  if (create) {
    if (manifest.base) {
      throw new ShoalError("BAD_ARGUMENT", `this is an incremental archive (base '${manifest.base.name}', id ${manifest.base.id}); restore it onto the volume that holds its base, without --create`);
    }
    target.creating = adminRequest(nodeAddress, "admin.volume.create", {
      name: volume,
      sizeBytes: manifest.sizeBytes,
      pageSizeBytes: manifest.pageSizeBytes,
      restoring: true,
    }).then(() => {
      target.state = "created";
    });
    await target.creating.catch(async (err: unknown) => {
      throw await existingTargetError(nodeAddress, volume, err);
    });
    return;
  }
  const info = await adminRequest(nodeAddress, "admin.volume.info", { name: volume });
  if (Number(info.sizeBytes) !== manifest.sizeBytes || Number(info.pageSizeBytes) !== manifest.pageSizeBytes) {
    throw new ShoalError(
      "BAD_ARGUMENT",
      `volume '${volume}' is ${formatSize(Number(info.sizeBytes))} in pages of ${formatSize(Number(info.pageSizeBytes))}; the archive needs ${formatSize(manifest.sizeBytes)} in pages of ${formatSize(manifest.pageSizeBytes)}`,
    );
  }
  if (manifest.base) {
    const marker = restoredSnapshotName(manifest.base.id);
    const changed = await adminRequest(nodeAddress, "admin.volume.changedSince", { volume, snapshot: marker }).catch((err: ShoalError) => {
      if (err.code === "UNKNOWN_SNAPSHOT") {
        throw new ShoalError("CONFLICT", `volume '${volume}' does not hold this incremental's base (snapshot id ${manifest.base!.id}); restore the base archive first`);
      }
      throw err;
    });
    if (Number(changed.changedPages) > 0) {
      throw new ShoalError("CONFLICT", `volume '${volume}' changed in ${String(changed.changedPages)} page(s) since its base (id ${manifest.base.id}) was restored; refusing to apply the incremental`);
    }
  }
  await adminRequest(nodeAddress, "admin.volume.restoring", { name: volume, restoring: true });
  target.state = "hidden";
  if (!manifest.base) {
    // A full archive replaces everything: pages it does not list must read as zeros.
    const client = await connectExport(nodeAddress, `${volume}${RESTORE_SUFFIX}`);
    try {
      const step = Math.max(manifest.pageSizeBytes, Math.floor(1024 ** 3 / manifest.pageSizeBytes) * manifest.pageSizeBytes);
      for (let offset = 0; offset < manifest.sizeBytes; offset += step) await client.trim(offset, Math.min(step, manifest.sizeBytes - offset));
      await client.flush();
    } finally {
      await client.close();
    }
  }
}

/** --create onto a name in use; a volume left `restoring` gets a way forward, not just "exists". */
async function existingTargetError(nodeAddress: string, volume: string, err: unknown): Promise<unknown> {
  if (!(err instanceof ShoalError) || err.code !== "VOLUME_EXISTS") return err;
  const info = await adminRequest(nodeAddress, "admin.volume.info", { name: volume }).catch(() => undefined);
  if (info?.state !== "restoring") return err;
  return new ShoalError(
    "VOLUME_EXISTS",
    `volume '${volume}' already exists and is restoring (a restore into it is running, or one failed without removing it): run the restore without --create to replace its contents, or \`shoal volume delete ${volume}\` first`,
  );
}
