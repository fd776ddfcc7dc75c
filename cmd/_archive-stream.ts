// `archive create | restore | verify | list`: moves archive bytes between nodes (over NBD) and
// files, tapes or pipes. The format itself (tar records, manifest, digests) is core/archive/.
import * as fs from "node:fs";
import { ArchiveReader, type ArchiveEvent } from "../core/archive/reader.ts";
import { ArchiveWriter } from "../core/archive/writer.ts";
import type { ArchiveManifest } from "../core/archive/manifest.ts";
import { ShoalError } from "../core/errors.ts";
import { formatSize } from "../core/geometry.ts";
import { parseHostPort } from "../core/member.ts";
import { NbdClient } from "../transport/nbd-client.ts";
import { RESTORE_SUFFIX } from "../transport/volume-router.ts";
import { adminRequest } from "./_cli.ts";
import { connectExport, Progress } from "./_volume-stream.ts";

/** Pages read ahead of the writer: bounds memory at this many pages whatever the volume size. */
const PAGES_IN_FLIGHT = 4;
/** Restore writes in flight. */
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

/** A byte sink with backpressure: a file, a tape device or stdout. */
class Sink {
  private readonly stream: NodeJS.WritableStream;
  constructor(target: string) {
    this.stream = target === "-" ? process.stdout : fs.createWriteStream(target);
  }
  async write(chunks: Uint8Array[]): Promise<void> {
    for (const chunk of chunks) {
      if (!this.stream.write(chunk)) await new Promise<void>((resolve) => this.stream.once("drain", () => resolve()));
    }
  }
  async close(): Promise<void> {
    if (this.stream === process.stdout) return;
    await new Promise<void>((resolve, reject) => (this.stream as fs.WriteStream).end((err?: Error | null) => (err ? reject(err) : resolve())));
  }
}

export async function createArchive(
  nodeAddress: string,
  volume: string,
  snapshot: string,
  since: string | undefined,
  target: string,
  recordSizeBytes: number | undefined,
): Promise<ArchiveSummary> {
  const startMs = performance.now();
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
  const sink = new Sink(target);
  const progress = new Progress(`archive ${volume}@${snapshot}`, pages.length * pageSizeBytes);
  let bytes = 0;
  try {
    await sink.write(writer.start());
    // Pages are pulled from their owners in parallel and written in page order.
    const reads: Promise<Uint8Array>[] = [];
    let next = 0;
    const readAhead = () => {
      while (reads.length < PAGES_IN_FLIGHT && next < pages.length) {
        const page = pages[next++]!;
        const offset = page * pageSizeBytes;
        reads.push(clientOf.get(page)!.read(offset, Math.min(pageSizeBytes, sizeBytes - offset)));
      }
    };
    readAhead();
    for (const page of pages) {
      const data = await reads.shift()!;
      readAhead();
      await sink.write(writer.page(page, data));
      bytes += data.byteLength;
      progress.update(bytes);
    }
    await sink.write(writer.finish());
    await sink.close();
  } finally {
    await Promise.all(clients.map((client) => client.close().catch(() => {})));
  }
  progress.update(bytes, true);
  const seconds = (performance.now() - startMs) / 1000;
  return {
    volume,
    snapshot,
    snapshotId: writer.manifest.snapshot.id,
    base: writer.manifest.base?.name ?? null,
    pages: pages.length,
    bytes: writer.emittedBytes,
    seconds,
    bytesPerSecond: Math.round(writer.emittedBytes / Math.max(seconds, 0.001)),
  };
}

/** Feeds a file or stdin through `onEvents`; the reader throws BAD_ARCHIVE at the first bad byte. */
async function readArchive(source: string, onEvents: (events: ArchiveEvent[], reader: ArchiveReader) => Promise<boolean | void>): Promise<void> {
  const reader = new ArchiveReader();
  const input = source === "-" ? Bun.stdin.stream() : Bun.file(source).stream();
  for await (const chunk of input as AsyncIterable<Uint8Array>) {
    if ((await onEvents(reader.push(chunk), reader)) === false) return;
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

/** An NBD connection to each node owning pages of `volume`, by page, from its routing table. */
/**
 * Which owner's connection writes each page, from the runs `route show` prints: a 64 TiB volume
 * has 16 Mi pages, so they are looked up in the runs, never listed one by one. Pages in no run
 * listed (a table shown only in part) go through the node asked, which forwards them.
 */
class PageOwners {
  constructor(
    private readonly runs: { first: number; last: number; step: number; owner: NbdClient }[],
    readonly clients: NbdClient[],
  ) {}

  get(page: number): NbdClient | undefined {
    for (const run of this.runs) {
      if (page >= run.first && page <= run.last && (page - run.first) % run.step === 0) return run.owner;
    }
    return undefined;
  }
}

async function ownerClients(nodeAddress: string, volume: string, exportName: string): Promise<PageOwners> {
  const [route, members] = await Promise.all([
    adminRequest(nodeAddress, "admin.route.show", { volume }),
    adminRequest(nodeAddress, "admin.route.nodes"),
  ]);
  const nbdOf = new Map((members.nodes as { id: string; nbdAddress: string }[]).map((member) => [member.id, member.nbdAddress]));
  const runs: { first: number; last: number; step: number; owner: NbdClient }[] = [];
  const clients: NbdClient[] = [];
  for (const entry of route.nodes as { node: string; runs: { first: number; last: number; step: number }[] }[]) {
    if (entry.runs.length === 0) continue;
    const { host, port } = parseHostPort(nbdOf.get(entry.node) ?? "");
    const owner = await NbdClient.connect({ host, port, exportName });
    clients.push(owner);
    for (const run of entry.runs) runs.push({ ...run, owner });
  }
  return new PageOwners(runs, clients);
}

/** The snapshot a successful restore leaves behind, so an incremental can prove its base. */
function restoredSnapshotName(snapshotId: string): string {
  return `restored.${snapshotId}`;
}

export async function restoreArchive(nodeAddress: string, volume: string, source: string, create: boolean): Promise<ArchiveSummary> {
  const startMs = performance.now();
  let manifest: ArchiveManifest | undefined;
  let client: NbdClient | undefined;
  let owners = new PageOwners([], []);
  const inFlight = new Set<Promise<void>>();
  let pages = 0;
  let bytes = 0;
  const track = async (request: Promise<void>) => {
    const tracked: Promise<void> = request.then(() => void inFlight.delete(tracked));
    inFlight.add(tracked);
    if (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
  };
  try {
    await readArchive(source, async (events, reader) => {
      for (const event of events) {
        if (event.kind === "manifest") {
          manifest = event.manifest;
          await prepareTarget(nodeAddress, volume, manifest, create);
          client = await connectExport(nodeAddress, `${volume}${RESTORE_SUFFIX}`);
          owners = await ownerClients(nodeAddress, volume, `${volume}${RESTORE_SUFFIX}`);
        } else if (event.kind === "page") {
          // Written straight to the page's owner: no forwarding hop.
          const { data } = event;
          await track((owners.get(event.page) ?? client!).write(event.page * manifest!.pageSizeBytes, data).then(() => reader.release(data)));
          pages++;
          bytes += event.data.byteLength;
        } else if (event.kind === "zero") {
          const offset = event.firstPage * manifest!.pageSizeBytes;
          const length = Math.min(event.pageCount * manifest!.pageSizeBytes, manifest!.sizeBytes - offset);
          await track(client!.writeZeroes(offset, length));
        } else if (event.kind === "end") {
          await Promise.all(inFlight);
          await client!.flush(); // reaches every node this connection forwarded to
          await Promise.all(owners.clients.map((owner) => owner.flush()));
        }
      }
    });
  } finally {
    await Promise.all(inFlight).catch(() => {});
    await client?.close().catch(() => {});
    await Promise.all(owners.clients.map((owner) => owner.close().catch(() => {})));
  }
  // Every digest matched: record what the volume now holds, then let clients see it.
  const done = manifest!;
  const marker = restoredSnapshotName(done.snapshot.id);
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
async function prepareTarget(nodeAddress: string, volume: string, manifest: ArchiveManifest, create: boolean): Promise<void> {
  if (create) {
    if (manifest.base) {
      throw new ShoalError("BAD_ARGUMENT", `this is an incremental archive (base '${manifest.base.name}', id ${manifest.base.id}); restore it onto the volume that holds its base, without --create`);
    }
    await adminRequest(nodeAddress, "admin.volume.create", {
      name: volume,
      sizeBytes: manifest.sizeBytes,
      pageSizeBytes: manifest.pageSizeBytes,
      restoring: true,
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
