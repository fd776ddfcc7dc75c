// Routes block requests to page owners. A request is cut by page; pages this node owns go to its
// PageStore, the rest to their owners over the mesh, and the answer is put back together in
// order. Requests that arrive from peers run through the same `executeLocal*` code.
import type { BlockDevice, ExportCatalog, Extent } from "../core/block-device.ts";
import { ShoalError } from "../core/errors.ts";
import { MAX_REQUEST_BYTES, slicePages, type PageSlice } from "../core/geometry.ts";
import type { PageStore } from "../core/page-store.ts";
import { ownerOf } from "../core/routing.ts";
import type { VolumeRecord } from "../core/volume.ts";
import type { FrameHeader, Payload } from "./frame.ts";
import { dataBuffers } from "./buffer-pool.ts";
import type { Group } from "./group.ts";
import type { Reply } from "./mesh-connection.ts";

/** How many pages one BLOCK_STATUS answer covers at most; clients ask again for the rest. */
const STATUS_PAGES_MAX = 1024;

export class VolumeRouter implements ExportCatalog {
  /** Peers this node forwarded writes to since its last flush: a flush must reach them. */
  private readonly dirtyPeers = new Set<string>();

  constructor(
    private readonly group: Group,
    private readonly store: PageStore,
  ) {}

  // ---- ExportCatalog (NBD)

  open(name: string): BlockDevice | undefined {
    const record = this.group.volumes.get(name);
    if (!record || record.deleted) return undefined;
    return new VolumeDevice(this, record.name, record.uid, record.sizeBytes, record.pageSizeBytes);
  }

  list(): { name: string; description: string }[] {
    return this.group.liveVolumes().map((record) => ({ name: record.name, description: `shoal volume ${record.name}` }));
  }

  /** The current record of the volume a device was opened on; fails if it was deleted or replaced. */
  current(name: string, uid: string): VolumeRecord {
    const record = this.group.volumes.get(name);
    if (!record || record.deleted || record.uid !== uid) {
      throw new ShoalError("UNKNOWN_VOLUME", `volume '${name}' was deleted or replaced while in use`);
    }
    return record;
  }

  // ---- client-side operations, per slice

  read(record: VolumeRecord, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> | void {
    let remote: Promise<void>[] | undefined;
    for (const slice of slicePages(record, offset, length)) {
      const owner = ownerOf(record.routing, slice.page);
      const at = targetOffset + slice.bufferOffset;
      if (owner === this.group.selfId) this.executeLocalRead(record, slice.page, slice.pageOffset, slice.length, target, at);
      else (remote ??= []).push(this.forwardRead(owner, record, slice, target, at));
    }
    if (remote) return Promise.all(remote).then(() => {});
  }

  private async forwardRead(owner: string, record: VolumeRecord, slice: PageSlice, target: Uint8Array, at: number): Promise<void> {
    const response = await this.group
      .link(owner)
      .request("page.read", { v: record.uid, p: slice.page, o: slice.pageOffset, n: slice.length });
    if (response.payload.byteLength !== slice.length) {
      throw new ShoalError("IO_ERROR", `node ${owner} returned ${response.payload.byteLength} bytes for a ${slice.length}-byte read`);
    }
    response.payload.copyTo(target, at);
  }

  write(record: VolumeRecord, offset: number, data: Uint8Array, fua: boolean): Promise<void> | void {
    const pending: Promise<unknown>[] = [];
    for (const slice of slicePages(record, offset, data.byteLength)) {
      const owner = ownerOf(record.routing, slice.page);
      const piece = data.subarray(slice.bufferOffset, slice.bufferOffset + slice.length);
      if (owner === this.group.selfId) {
        const synced = this.executeLocalWrite(record, slice.page, slice.pageOffset, piece, fua);
        if (synced) pending.push(synced);
      } else {
        this.dirtyPeers.add(owner);
        pending.push(this.group.link(owner).request("page.write", { v: record.uid, p: slice.page, o: slice.pageOffset, f: fua }, piece));
      }
    }
    if (pending.length > 0) return Promise.all(pending).then(() => {});
  }

  zero(record: VolumeRecord, offset: number, length: number, fua: boolean): Promise<void> | void {
    const pending: Promise<unknown>[] = [];
    for (const slice of slicePages(record, offset, length)) {
      const owner = ownerOf(record.routing, slice.page);
      if (owner === this.group.selfId) {
        const synced = this.executeLocalZero(record, slice.page, slice.pageOffset, slice.length, fua);
        if (synced) pending.push(synced);
      } else {
        this.dirtyPeers.add(owner);
        pending.push(this.group.link(owner).request("page.zero", { v: record.uid, p: slice.page, o: slice.pageOffset, n: slice.length, f: fua }));
      }
    }
    if (pending.length > 0) return Promise.all(pending).then(() => {});
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

  async blockStatus(record: VolumeRecord, offset: number, length: number): Promise<Extent[]> {
    const slices = slicePages(record, offset, length).slice(0, STATUS_PAGES_MAX);
    const allocated = new Array<boolean>(slices.length);
    const remoteByOwner = new Map<string, number[]>();
    slices.forEach((slice, index) => {
      const owner = ownerOf(record.routing, slice.page);
      if (owner === this.group.selfId) allocated[index] = this.store.isAllocated(record.uid, slice.page);
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
          .request("page.status", { v: record.uid, ps: indexes.map((index) => slices[index]!.page) });
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

  // ---- execution on the owner (local requests and forwarded ones alike)

  private assertOwner(record: VolumeRecord, page: number): void {
    if (page < 0 || page >= record.routing.owners.length || ownerOf(record.routing, page) !== this.group.selfId) {
      throw new ShoalError(
        "NOT_OWNER",
        `node ${this.group.selfId} does not own page ${page} of '${record.name}' (routing version ${record.routing.version})`,
      );
    }
  }

  executeLocalRead(record: VolumeRecord, page: number, pageOffset: number, length: number, target: Uint8Array, at: number): void {
    this.assertOwner(record, page);
    this.store.read(record.uid, page, pageOffset, length, target, at);
  }

  /** Returns a promise only when FUA needs to wait for the disk. */
  executeLocalWrite(record: VolumeRecord, page: number, pageOffset: number, data: Uint8Array, fua: boolean): Promise<void> | undefined {
    this.assertOwner(record, page);
    this.store.write(record.uid, page, pageOffset, data, record.pageSizeBytes);
    return fua ? this.store.syncPage(record.uid, page) : undefined;
  }

  executeLocalZero(record: VolumeRecord, page: number, pageOffset: number, length: number, fua: boolean): Promise<void> | undefined {
    this.assertOwner(record, page);
    this.store.zero(record.uid, page, pageOffset, length, record.pageSizeBytes);
    return fua ? this.store.syncPage(record.uid, page) : undefined;
  }

  // ---- mesh requests from peers

  /** Handles page-level mesh requests; returns undefined for ops that are not its own. */
  handle(op: string, args: FrameHeader, payload: Payload): Reply | Promise<Reply> | undefined {
    switch (op) {
      case "page.read": {
        const { record, page, pageOffset } = this.pageArgs(args);
        const length = checkedLength(args.n, record, pageOffset);
        const data = dataBuffers.acquire(length);
        try {
          this.executeLocalRead(record, page, pageOffset, length, data, 0);
        } catch (err) {
          dataBuffers.release(data);
          throw err;
        }
        return { payload: data, release: () => dataBuffers.release(data) };
      }
      case "page.write": {
        const { record, page, pageOffset } = this.pageArgs(args);
        checkedLength(payload.byteLength, record, pageOffset);
        // Written part by part as the chunks arrived: no gathering copy.
        let at = pageOffset;
        for (const part of payload.parts) {
          this.executeLocalWrite(record, page, at, part, false);
          at += part.byteLength;
        }
        return args.f ? this.store.syncPage(record.uid, page).then(() => ({})) : {};
      }
      case "page.zero": {
        const { record, page, pageOffset } = this.pageArgs(args);
        const length = checkedLength(args.n, record, pageOffset);
        const synced = this.executeLocalZero(record, page, pageOffset, length, Boolean(args.f));
        return synced ? synced.then(() => ({})) : {};
      }
      case "page.status": {
        const record = this.recordByUid(args.v);
        const pages = Array.isArray(args.ps) ? (args.ps as unknown[]).slice(0, STATUS_PAGES_MAX) : [];
        return { result: { a: pages.map((page) => this.store.isAllocated(record.uid, Number(page))) } };
      }
      case "store.flush":
        return this.store.flush().then(() => ({}));
      case "store.usage":
        return { result: { usage: Object.fromEntries(this.store.usage()) } };
      default:
        return undefined;
    }
  }

  private recordByUid(uid: unknown): VolumeRecord {
    const record = typeof uid === "string" ? this.group.volumeByUid(uid) : undefined;
    if (!record) throw new ShoalError("UNKNOWN_VOLUME", `node ${this.group.selfId} has no volume with uid ${String(uid)}`);
    return record;
  }

  private pageArgs(args: FrameHeader): { record: VolumeRecord; page: number; pageOffset: number } {
    const record = this.recordByUid(args.v);
    const page = args.p;
    const pageOffset = args.o;
    if (!Number.isInteger(page) || !Number.isInteger(pageOffset) || (pageOffset as number) < 0) {
      throw new ShoalError("BAD_REQUEST", "page request has no valid page or offset");
    }
    this.assertOwner(record, page as number);
    return { record, page: page as number, pageOffset: pageOffset as number };
  }
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

/** A volume as an NBD export: every call re-reads the record so routing changes apply at once. */
class VolumeDevice implements BlockDevice {
  readonly readOnly = false;

  constructor(
    private readonly router: VolumeRouter,
    readonly name: string,
    private readonly uid: string,
    readonly sizeBytes: number,
    readonly preferredBlockSizeBytes: number,
  ) {}

  read(offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> | void {
    return this.router.read(this.router.current(this.name, this.uid), offset, length, target, targetOffset);
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> | void {
    return this.router.write(this.router.current(this.name, this.uid), offset, data, fua);
  }

  flush(): Promise<void> {
    return this.router.flush();
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> | void {
    return this.router.zero(this.router.current(this.name, this.uid), offset, length, fua);
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> | void {
    return this.router.zero(this.router.current(this.name, this.uid), offset, length, fua);
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.router.blockStatus(this.router.current(this.name, this.uid), offset, length);
  }
}
