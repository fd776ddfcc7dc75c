// Routes block requests to page owners. A request is cut by page; pages this node owns go to its
// PageStore, the rest to their owners over the mesh, and the answer is put back together in
// order. Requests that arrive from peers run through the same `executeLocal*` code.
import type { BlockDevice, ExportCatalog, Extent } from "../core/block-device.ts";
import type { HoldQueue } from "../core/hold-queue.ts";
import { parseSnapshotRef, snapshotLayerId } from "../core/snapshot-record.ts";
import { ShoalError } from "../core/errors.ts";
import { MAX_REQUEST_BYTES, slicePages, type PageSlice } from "../core/geometry.ts";
import type { PageStore } from "../core/page-store.ts";
import { ownerOf } from "../core/routing.ts";
import type { VolumeRecord } from "../core/volume.ts";
import type { FrameHeader, Payload } from "./frame.ts";
import { dataBuffers } from "./buffer-pool.ts";
import { nodeMetrics } from "./node-metrics.ts";
import type { Group } from "./group.ts";
import type { Reply } from "./mesh-connection.ts";

/** Export-name suffix through which `archive restore` writes a volume that is being restored. */
export const RESTORE_SUFFIX = "%restore";

/** How many pages one BLOCK_STATUS answer covers at most; clients ask again for the rest. */
const STATUS_PAGES_MAX = 1024;

/**
 * What the snapshot protocol asks of the data path on a page's owner: hold-mode snapshots queue
 * requests to held volumes, and timestamp-mode snapshots see every write's stamp before it is
 * applied and may delay its acknowledgement (commit wait).
 */
export interface SnapshotGate {
  readonly holds: HoldQueue;
  /** Cuts due before this write, then the local time its ack must wait for (0: none). */
  beforeWrite(volume: string): number;
  nowMs(): number;
}

/** What a request addresses: a volume's writable head, or one of its snapshots (read-only). */
export interface Target {
  record: VolumeRecord;
  /** Page-store layer: the volume uid for the head, snapshotLayerId(...) for a snapshot. */
  layer: string;
}

export class VolumeRouter implements ExportCatalog {
  /** Peers this node forwarded writes to since its last flush: a flush must reach them. */
  private readonly dirtyPeers = new Set<string>();
  /** Set by the snapshot service once it runs. */
  gate: SnapshotGate | undefined;

  constructor(
    private readonly group: Group,
    private readonly store: PageStore,
  ) {}

  // ---- ExportCatalog (NBD)

  open(name: string): BlockDevice | undefined {
    if (name.includes("@")) {
      const { volume, name: snapshotName } = parseSnapshotRef(name);
      const record = this.group.volumes.get(volume);
      const snapshot = this.group.liveSnapshots(volume).find((candidate) => candidate.name === snapshotName);
      if (!record || record.deleted || !snapshot) return undefined;
      return new VolumeDevice(this, record.name, record.uid, record.sizeBytes, record.pageSizeBytes, snapshotLayerId(record.uid, snapshot.snapshotId), name);
    }
    // An archive restore writes through the export "VOL%restore"; clients see "VOL" only once
    // the restore has finished, so a half-restored volume never looks like a whole one.
    const restoring = name.endsWith(RESTORE_SUFFIX);
    const volume = restoring ? name.slice(0, -RESTORE_SUFFIX.length) : name;
    const record = this.group.volumes.get(volume);
    if (!record || record.deleted || Boolean(record.restoring) !== restoring) return undefined;
    return new VolumeDevice(this, record.name, record.uid, record.sizeBytes, record.pageSizeBytes, record.uid, name);
  }

  list(): { name: string; description: string }[] {
    const volumes = this.group
      .liveVolumes()
      .filter((record) => !record.restoring)
      .map((record) => ({ name: record.name, description: `shoal volume ${record.name}` }));
    const snapshots = this.group.liveSnapshots().map((snapshot) => ({
      name: `${snapshot.volume}@${snapshot.name}`,
      description: `shoal snapshot ${snapshot.name} of ${snapshot.volume} (read-only)`,
    }));
    return [...volumes, ...snapshots];
  }

  /** The current record of the volume a device was opened on; fails if it was deleted or replaced. */
  current(name: string, uid: string, layer: string): Target {
    const record = this.group.volumes.get(name);
    if (!record || record.deleted || record.uid !== uid) {
      throw new ShoalError("UNKNOWN_VOLUME", `volume '${name}' was deleted or replaced while in use`);
    }
    return { record, layer };
  }

  // ---- client-side operations, cut by page and sent to each page's owner

  read(target: Target, offset: number, length: number, into: Uint8Array, intoOffset: number): Promise<void> | void {
    const { record } = target;
    let pending: Promise<void>[] | undefined;
    for (const slice of slicePages(record, offset, length)) {
      const owner = ownerOf(record.routing, slice.page);
      nodeMetrics.countPage("read", owner === this.group.selfId ? "local" : "forwarded", slice.length);
      const at = intoOffset + slice.bufferOffset;
      const done =
        owner === this.group.selfId
          ? this.executeLocalRead(target, slice.page, slice.pageOffset, slice.length, into, at)
          : this.forwardRead(owner, target, slice, into, at);
      if (done) (pending ??= []).push(done);
    }
    if (pending) return Promise.all(pending).then(() => {});
  }

  private async forwardRead(owner: string, target: Target, slice: PageSlice, into: Uint8Array, at: number): Promise<void> {
    const response = await this.group
      .link(owner)
      .request("page.read", { ...this.addressOf(target), p: slice.page, o: slice.pageOffset, n: slice.length });
    if (response.payload.byteLength !== slice.length) {
      throw new ShoalError("IO_ERROR", `node ${owner} returned ${response.payload.byteLength} bytes for a ${slice.length}-byte read`);
    }
    response.payload.copyTo(into, at);
  }

  write(target: Target, offset: number, data: Uint8Array, fua: boolean): Promise<void> | void {
    const { record } = target;
    let pending: Promise<unknown>[] | undefined;
    for (const slice of slicePages(record, offset, data.byteLength)) {
      const owner = ownerOf(record.routing, slice.page);
      const piece = data.subarray(slice.bufferOffset, slice.bufferOffset + slice.length);
      nodeMetrics.countPage("write", owner === this.group.selfId ? "local" : "forwarded", slice.length);
      let done: Promise<unknown> | void;
      if (owner === this.group.selfId) done = this.executeLocalWrite(target, slice.page, slice.pageOffset, [piece], fua);
      else {
        this.dirtyPeers.add(owner);
        done = this.group.link(owner).request("page.write", { ...this.addressOf(target), p: slice.page, o: slice.pageOffset, f: fua }, piece);
      }
      if (done) (pending ??= []).push(done);
    }
    if (pending) return Promise.all(pending).then(() => {});
  }

  zero(target: Target, offset: number, length: number, fua: boolean): Promise<void> | void {
    const { record } = target;
    let pending: Promise<unknown>[] | undefined;
    for (const slice of slicePages(record, offset, length)) {
      const owner = ownerOf(record.routing, slice.page);
      nodeMetrics.countPage("zero", owner === this.group.selfId ? "local" : "forwarded", slice.length);
      let done: Promise<unknown> | void;
      if (owner === this.group.selfId) done = this.executeLocalZero(target, slice.page, slice.pageOffset, slice.length, fua);
      else {
        this.dirtyPeers.add(owner);
        done = this.group
          .link(owner)
          .request("page.zero", { ...this.addressOf(target), p: slice.page, o: slice.pageOffset, n: slice.length, f: fua });
      }
      if (done) (pending ??= []).push(done);
    }
    if (pending) return Promise.all(pending).then(() => {});
  }

  /** Durability for every write completed through this node, wherever its pages live. */
  async flush(): Promise<void> {
    const peers = [...this.dirtyPeers];
    this.dirtyPeers.clear();
    const results = await Promise.allSettled([
      this.store.flush(),
      ...peers.map((peer) => this.group.link(peer).request("store.flush", {})),
    ]);
    const failed = results.findIndex((result) => result.status === "rejected");
    if (failed >= 0) {
      for (const peer of peers) this.dirtyPeers.add(peer); // still owed a flush
      throw (results[failed] as PromiseRejectedResult).reason;
    }
  }

  async blockStatus(target: Target, offset: number, length: number): Promise<Extent[]> {
    const { record } = target;
    const slices = slicePages(record, offset, length).slice(0, STATUS_PAGES_MAX);
    const allocated = new Array<boolean>(slices.length);
    const remoteByOwner = new Map<string, number[]>();
    slices.forEach((slice, index) => {
      const owner = ownerOf(record.routing, slice.page);
      if (owner === this.group.selfId) allocated[index] = this.store.isAllocated(target.layer, slice.page);
      else {
        let indexes = remoteByOwner.get(owner);
        if (!indexes) remoteByOwner.set(owner, (indexes = []));
        indexes.push(index);
      }
    });
    await Promise.all(
      [...remoteByOwner].map(async ([owner, indexes]) => {
        const response = await this.group
          .link(owner)
          .request("page.status", { ...this.addressOf(target), ps: indexes.map((index) => slices[index]!.page) });
        const answers = response.result.a as boolean[];
        indexes.forEach((index, position) => (allocated[index] = Boolean(answers[position])));
      }),
    );
    const extents: Extent[] = [];
    slices.forEach((slice, index) => {
      const hole = !allocated[index];
      const last = extents[extents.length - 1];
      if (last && last.hole === hole) last.length += slice.length;
      else extents.push({ length: slice.length, hole });
    });
    return extents;
  }

  /** How a target is named on the wire: the volume uid, and the layer when it is not the head. */
  private addressOf(target: Target): { v: string; l?: string } {
    return target.layer === target.record.uid ? { v: target.record.uid } : { v: target.record.uid, l: target.layer };
  }

  // ---- execution on the owner (local requests and forwarded ones alike)

  private assertOwner(record: VolumeRecord, page: number): void {
    if (page < 0 || page >= record.routing.owners.length || ownerOf(record.routing, page) !== this.group.selfId) {
      throw new ShoalError(
        "NOT_OWNER",
        `node ${this.group.selfId} does not own page ${page} of '${record.name}' (routing version ${record.routing.version})`,
      );
    }
  }

  /** Requests to a volume's head wait while a hold-mode snapshot holds it; snapshots never do. */
  private heldFor(target: Target): boolean {
    return target.layer === target.record.uid && this.gate !== undefined && this.gate.holds.isHeld(target.record.name);
  }

  executeLocalRead(target: Target, page: number, pageOffset: number, length: number, into: Uint8Array, at: number): Promise<void> | void {
    this.assertOwner(target.record, page);
    if (this.heldFor(target)) {
      return this.gate!.holds.enqueue(target.record.name, () => this.executeLocalRead(target, page, pageOffset, length, into, at));
    }
    this.store.read(target.layer, page, pageOffset, length, into, at);
  }

  /** `parts` are written one after another from `pageOffset` (a forwarded payload arrives in chunks). */
  executeLocalWrite(target: Target, page: number, pageOffset: number, parts: Uint8Array[], fua: boolean): Promise<void> | void {
    const { record } = target;
    this.assertOwner(record, page);
    if (target.layer !== record.uid) throw new ShoalError("READ_ONLY", `snapshots of '${record.name}' are read-only`);
    if (this.heldFor(target)) {
      return this.gate!.holds.enqueue(record.name, () => this.executeLocalWrite(target, page, pageOffset, parts, fua));
    }
    const ackNotBeforeMs = this.gate ? this.gate.beforeWrite(record.name) : 0;
    let at = pageOffset;
    for (const part of parts) {
      this.store.write(target.layer, page, at, part, record.pageSizeBytes);
      at += part.byteLength;
    }
    return this.acknowledge(target, page, fua, ackNotBeforeMs);
  }

  executeLocalZero(target: Target, page: number, pageOffset: number, length: number, fua: boolean): Promise<void> | void {
    const { record } = target;
    this.assertOwner(record, page);
    if (target.layer !== record.uid) throw new ShoalError("READ_ONLY", `snapshots of '${record.name}' are read-only`);
    if (this.heldFor(target)) {
      return this.gate!.holds.enqueue(record.name, () => this.executeLocalZero(target, page, pageOffset, length, fua));
    }
    const ackNotBeforeMs = this.gate ? this.gate.beforeWrite(record.name) : 0;
    this.store.zero(target.layer, page, pageOffset, length, record.pageSizeBytes);
    return this.acknowledge(target, page, fua, ackNotBeforeMs);
  }

  /** FUA waits for the disk; a timestamp-mode commit wait waits for the clock. */
  private acknowledge(target: Target, page: number, fua: boolean, ackNotBeforeMs: number): Promise<void> | void {
    const waitMs = ackNotBeforeMs > 0 ? ackNotBeforeMs - this.gate!.nowMs() : 0;
    if (!fua && waitMs <= 0) return;
    const synced = fua ? this.store.syncPage(target.layer, page) : Promise.resolve();
    if (waitMs <= 0) return synced;
    return Promise.all([synced, Bun.sleep(waitMs)]).then(() => {});
  }

  // ---- mesh requests from peers

  /** Handles page-level mesh requests; returns undefined for ops that are not its own. */
  handle(op: string, args: FrameHeader, payload: Payload): Reply | Promise<Reply> | undefined {
    switch (op) {
      case "page.read": {
        const { target, page, pageOffset } = this.pageArgs(args);
        const length = checkedLength(args.n, target.record, pageOffset);
        nodeMetrics.countPage("read", "peer", length);
        const data = dataBuffers.acquire(length);
        const release = () => dataBuffers.release(data);
        let done: Promise<void> | void;
        try {
          done = this.executeLocalRead(target, page, pageOffset, length, data, 0);
        } catch (err) {
          release();
          throw err;
        }
        return done ? done.then(() => ({ payload: data, release }), (err) => Promise.reject(err)) : { payload: data, release };
      }
      case "page.write": {
        const { target, page, pageOffset } = this.pageArgs(args);
        nodeMetrics.countPage("write", "peer", checkedLength(payload.byteLength, target.record, pageOffset));
        // Written part by part as the chunks arrived: no gathering copy.
        const done = this.executeLocalWrite(target, page, pageOffset, payload.parts, Boolean(args.f));
        return done ? done.then(() => ({})) : {};
      }
      case "page.zero": {
        const { target, page, pageOffset } = this.pageArgs(args);
        const length = checkedLength(args.n, target.record, pageOffset);
        nodeMetrics.countPage("zero", "peer", length);
        const done = this.executeLocalZero(target, page, pageOffset, length, Boolean(args.f));
        return done ? done.then(() => ({})) : {};
      }
      case "page.status": {
        const target = this.targetOf(args);
        const pages = Array.isArray(args.ps) ? (args.ps as unknown[]).slice(0, STATUS_PAGES_MAX) : [];
        return { result: { a: pages.map((page) => this.store.isAllocated(target.layer, Number(page))) } };
      }
      case "store.flush":
        return this.store.flush().then(() => ({}));
      case "store.usage":
        return { result: { usage: storeUsage(this.store) } };
      case "store.changedPages":
        return { result: { pages: this.ownChangedPages(this.targetOf(args), args.since === undefined ? undefined : String(args.since)) } };
      default:
        return undefined;
    }
  }

  /**
   * Pages of a snapshot (or head) this node owns that may differ from `sinceLayer` (every written
   * page without one), from layer metadata only: no page data is read.
   */
  ownChangedPages(target: Target, sinceLayer: string | undefined): number[] {
    const { record } = target;
    return this.store
      .changedPages(target.layer, sinceLayer)
      .filter((page) => page < record.routing.owners.length && ownerOf(record.routing, page) === this.group.selfId);
  }

  private targetOf(args: FrameHeader): Target {
    const uid = args.v;
    const record = typeof uid === "string" ? this.group.volumeByUid(uid) : undefined;
    if (!record) throw new ShoalError("UNKNOWN_VOLUME", `node ${this.group.selfId} has no volume with uid ${String(uid)}`);
    if (args.l === undefined) return { record, layer: record.uid };
    const layer = String(args.l);
    if (!layer.startsWith(`${record.uid}@`) || !this.store.hasLayer(layer)) {
      throw new ShoalError("UNKNOWN_SNAPSHOT", `node ${this.group.selfId} has no snapshot layer ${layer}`);
    }
    return { record, layer };
  }

  private pageArgs(args: FrameHeader): { target: Target; page: number; pageOffset: number } {
    const target = this.targetOf(args);
    const page = args.p;
    const pageOffset = args.o;
    if (!Number.isInteger(page) || !Number.isInteger(pageOffset) || (pageOffset as number) < 0) {
      throw new ShoalError("BAD_REQUEST", "page request has no valid page or offset");
    }
    this.assertOwner(target.record, page as number);
    return { target, page: page as number, pageOffset: pageOffset as number };
  }
}

/** Per layer: pages and bytes it holds, and for snapshot layers the bytes deleting it would free. */
export function storeUsage(store: PageStore): Record<string, { pages: number; bytes: number; exclusiveBytes?: number }> {
  const usage: Record<string, { pages: number; bytes: number; exclusiveBytes?: number }> = {};
  for (const [layer, held] of store.usage()) {
    usage[layer] = layer.includes("@") ? { ...held, exclusiveBytes: store.exclusiveBytes(layer) } : held;
  }
  return usage;
}

function checkedLength(value: unknown, record: VolumeRecord, pageOffset: number): number {
  if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > MAX_REQUEST_BYTES) {
    throw new ShoalError("BAD_REQUEST", `page request length ${String(value)} is invalid`);
  }
  const length = value as number;
  if (pageOffset + length > record.pageSizeBytes) {
    throw new ShoalError("OUT_OF_RANGE", `range ${pageOffset}+${length} is outside a page of ${record.pageSizeBytes} bytes`);
  }
  return length;
}

/** A volume (or one of its snapshots) as an NBD export; every call re-reads the volume record. */
class VolumeDevice implements BlockDevice {
  readonly readOnly: boolean;

  constructor(
    private readonly router: VolumeRouter,
    private readonly volume: string,
    private readonly uid: string,
    readonly sizeBytes: number,
    readonly preferredBlockSizeBytes: number,
    private readonly layer: string,
    readonly name: string,
  ) {
    this.readOnly = layer !== uid;
  }

  private target(): Target {
    return this.router.current(this.volume, this.uid, this.layer);
  }

  read(offset: number, length: number, into: Uint8Array, intoOffset: number): Promise<void> | void {
    return this.router.read(this.target(), offset, length, into, intoOffset);
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> | void {
    return this.router.write(this.target(), offset, data, fua);
  }

  flush(): Promise<void> {
    return this.router.flush();
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> | void {
    return this.router.zero(this.target(), offset, length, fua);
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> | void {
    return this.router.zero(this.target(), offset, length, fua);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.router.blockStatus(this.target(), offset, length);
  }
}
