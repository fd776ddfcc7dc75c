// Routes block requests to page owners. A request is cut by page; pages this node owns go to its
// PageStore, the rest to their owners over the mesh, and the answer is put back together in
// order. Requests that arrive from peers run through the same code. A replicated page's writes
// go to its primary (which passes them to the replicas, replica-writes.ts); its reads are served
// by any replica. What a FLUSH owes is flush-debts.ts; the page ops' wire arguments page-wire.ts;
// the NBD export over this router volume-device.ts.
import type { BlockDevice, ExportCatalog, Extent } from "../../core/block-device.ts";
import type { HoldQueue } from "../../core/snapshot/hold-queue.ts";
import { parseSnapshotRef, snapshotLayerId } from "../../core/snapshot/snapshot-record.ts";
import { ShoalError } from "../../core/errors.ts";
import { slicePages } from "../../core/geometry.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import { holdsCopy, ownerOf, replicasOf } from "../../core/cluster/routing.ts";
import type { VolumeRecord } from "../../core/cluster/volume.ts";
import { Payload, type FrameHeader } from "../mesh/frame.ts";
import type { PageMover } from "../move/page-mover.ts";
import { dataBuffers } from "../wire/buffer-pool.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";
import type { Group } from "../mesh/group.ts";
import type { Reply } from "../mesh/mesh-connection.ts";
import { readPeerArgs } from "../mesh/peer-ops.ts";
import { FlushDebts } from "./flush-debts.ts";
import { addressOf, answerFor, appliersOf, checkedLength, pageAddress, pageArgs, targetOf, type Applier } from "./page-wire.ts";
import { durableAfterWrite, ReplicaWrites, type ReplicaHolds, type ReplicationsInFlight } from "./replica-writes.ts";
import { VolumeDevice } from "./volume-device.ts";
import { FailoverHold } from "./failover-hold.ts";
import type { ReplicaHost } from "./replica-host.ts";

/** Export-name suffix through which `archive restore` writes a volume that is being restored. */
export const RESTORE_SUFFIX = "%restore";

/** How many pages one BLOCK_STATUS answer covers at most; clients ask again for the rest. */
const STATUS_PAGES_MAX = 1024;
/** Times a request may be passed on between nodes whose tables disagree (see readPage). */
const MAX_HOPS = 3;

/**
 * What the snapshot protocol asks of the data path on a page's owner: hold-mode snapshots queue
 * requests to held volumes, and timestamp-mode snapshots see every write's stamp before it is
 * applied and may delay its acknowledgement (commit wait).
 */
export interface SnapshotGate extends ReplicaHolds {
  readonly holds: HoldQueue;
  /** Makes the cuts due before this write; returns what its ack must wait for (the commit wait), if anything. */
  beforeWrite(volume: string): Promise<void> | undefined;
}

/** What a request addresses: a volume's writable head, or one of its snapshots (read-only). */
export interface Target {
  record: VolumeRecord;
  /** Page-store layer: the volume uid for the head, snapshotLayerId(...) for a snapshot. */
  layer: string;
}

export class VolumeRouter implements ExportCatalog {
  /** This process's incarnation, reported with every write it applies. */
  readonly bootId = crypto.randomUUID().slice(0, 8);
  private readonly replicas: ReplicaWrites;
  private readonly debts: FlushDebts;
  private readonly failover: FailoverHold;

  constructor(
    private readonly group: Group,
    private readonly store: PageStore,
    /** The snapshot service: holds, cuts and commit waits before a write. */
    private readonly gate: SnapshotGate,
    /** Tells which pages a move step has frozen. */
    private readonly mover: PageMover,
    /** Replications this node sent as a primary, which a snapshot's hold waits for (shared with the snapshot service). */
    inFlight: ReplicationsInFlight,
    /** The replica-set protocol's members: fences and away maps for replicated writes, which copies may answer reads. */
    private readonly replicaHost: ReplicaHost,
    /** Delay before this node applies a replicated write (tests only; see ReplicaWrites). */
    replicaDelayMs = 0,
  ) {
    this.replicas = new ReplicaWrites(group, store, gate, inFlight, this.bootId, replicaHost, replicaDelayMs);
    // Held across set changes for three suspicion timeouts (one to notice, one to decide, one to
    // spare), and never less than the timeout plus 5 s: a decision on two busy CPUs took over 2 s
    // (a 1 s timeout's 3 s hold failed writes under the whole test suite).
    this.failover = new FailoverHold(group, replicaHost.log, replicaHost.setChangeWaitMs);
    this.debts = new FlushDebts(group, store, this.bootId, this.failover, () => replicaHost.syncRecords());
  }

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
    let pending: Promise<void>[] | undefined;
    for (const slice of slicePages(target.record, offset, length)) {
      nodeMetrics.countPage("read", holdsCopy(target.record.routing, slice.page, this.group.selfId) ? "local" : "forwarded", slice.length);
      const read = (to: Target) => this.readPage(to, slice.page, slice.pageOffset, slice.length, into, intoOffset + slice.bufferOffset, 0);
      const done = isReplicated(target.record) ? this.failover.run(target.record.uid, `a read of page ${slice.page} of '${target.record.name}'`, () => read(this.refreshed(target))) : read(target);
      if (done) (pending ??= []).push(done);
    }
    // One page (most requests): its own promise, no gathering one.
    if (pending) return pending.length === 1 ? pending[0] : Promise.all(pending).then(() => {});
  }

  write(target: Target, offset: number, data: Uint8Array, fua: boolean): Promise<void> | void {
    let pending: Promise<void>[] | undefined;
    let owe: ((appliers: Applier[] | void) => void) | undefined;
    for (const slice of slicePages(target.record, offset, data.byteLength)) {
      const piece = data.subarray(slice.bufferOffset, slice.bufferOffset + slice.length);
      nodeMetrics.countPage("write", ownerOf(target.record.routing, slice.page) === this.group.selfId ? "local" : "forwarded", slice.length);
      const once = (to: Target) => this.writePage(to, slice.page, slice.pageOffset, [piece], fua, 0);
      const done = isReplicated(target.record) ? this.failover.run(target.record.uid, `a write to page ${slice.page} of '${target.record.name}'`, () => once(this.refreshed(target))) : once(target);
      if (done) (pending ??= []).push(done.then((owe ??= this.debts.oweFor(target.record.uid))));
    }
    if (pending) return Promise.all(pending).then(() => {});
  }

  zero(target: Target, offset: number, length: number, fua: boolean): Promise<void> | void {
    let pending: Promise<void>[] | undefined;
    let owe: ((appliers: Applier[] | void) => void) | undefined;
    for (const slice of slicePages(target.record, offset, length)) {
      nodeMetrics.countPage("zero", ownerOf(target.record.routing, slice.page) === this.group.selfId ? "local" : "forwarded", slice.length);
      const once = (to: Target) => this.zeroPage(to, slice.page, slice.pageOffset, slice.length, fua, 0);
      const done = isReplicated(target.record) ? this.failover.run(target.record.uid, `a zero of page ${slice.page} of '${target.record.name}'`, () => once(this.refreshed(target))) : once(target);
      if (done) (pending ??= []).push(done.then((owe ??= this.debts.oweFor(target.record.uid))));
    }
    if (pending) return Promise.all(pending).then(() => {});
  }

  /** Durability for every write of the volume `uid` acknowledged through this node before the call (see FlushDebts). */
  flush(uid: string): Promise<void> {
    return this.debts.flush(uid);
  }

  /** A deleted or replaced volume's writes are owed nothing more. */
  removeVolume(uid: string): void {
    this.debts.forget(uid);
  }

  // ---- one page: run here if this node owns it, else send it to the owner
  // A node that gets a request for a page it no longer owns (the sender's table is older than
  // its own) passes it on to the owner it knows, at most MAX_HOPS times; a request that finds
  // its page frozen by a move waits and then routes again, by the table current by then.

  private readPage(target: Target, page: number, pageOffset: number, length: number, into: Uint8Array, at: number, hops: number): Promise<void> | void {
    const again = () => this.readPage(this.refreshed(target), page, pageOffset, length, into, at, hops);
    // Before the owner check: between a move's commit and its publish this node's table already
    // names the target, which does not know yet.
    if (this.mover.isFrozen(target.record.uid, page)) return this.afterThaw(target, page, again);
    // Any copy serves a read: while replica sets stay as created, a write is acknowledged only
    // once every replica has applied it.
    const local = holdsCopy(target.record.routing, page, this.group.selfId) && this.replicaHost.canServeLocally(target.record, page);
    if (!local) return this.forwardRead(target, page, pageOffset, length, into, at, hops);
    if (this.heldFor(target)) return this.gate.holds.enqueue(target.record.name, again);
    this.store.read(target.layer, page, pageOffset, length, into, at);
  }

  /**
   * `parts` are written one after another from `pageOffset` (a forwarded payload arrives in
   * chunks). Resolves to the nodes that applied the write, the primary first, when another did
   * (undefined: this one alone).
   */
  private writePage(target: Target, page: number, pageOffset: number, parts: Uint8Array[], fua: boolean, hops: number): Promise<Applier[] | void> | void {
    const { record } = target;
    if (target.layer !== record.uid) throw new ShoalError("READ_ONLY", `snapshots of '${record.name}' are read-only`);
    const again = () => this.writePage(this.refreshed(target), page, pageOffset, parts, fua, hops);
    if (this.mover.isFrozen(record.uid, page)) return this.afterThaw(target, page, again);
    const owner = ownerOf(record.routing, page);
    if (owner !== this.group.selfId) return this.forwardWrite(owner, target, page, pageOffset, parts, fua, hops);
    if (this.heldFor(target)) return this.gate.holds.enqueue(record.name, again);
    const admitted = this.replicaHost.admitWrite(record, page, pageOffset, parts.reduce((sum, part) => sum + part.byteLength, 0));
    this.mover.noteWrite(record.uid, page);
    const commitWait = this.gate.beforeWrite(record.name);
    let at = pageOffset;
    for (const part of parts) {
      this.store.write(target.layer, page, at, part, record.pageSizeBytes);
      at += part.byteLength;
    }
    return this.acknowledge(target, page, fua, joined(commitWait, admitted), this.replicas.fanOut(record, page, pageOffset, { parts }, fua));
  }

  private zeroPage(target: Target, page: number, pageOffset: number, length: number, fua: boolean, hops: number): Promise<Applier[] | void> | void {
    const { record } = target;
    if (target.layer !== record.uid) throw new ShoalError("READ_ONLY", `snapshots of '${record.name}' are read-only`);
    const again = () => this.zeroPage(this.refreshed(target), page, pageOffset, length, fua, hops);
    if (this.mover.isFrozen(record.uid, page)) return this.afterThaw(target, page, again);
    const owner = ownerOf(record.routing, page);
    if (owner !== this.group.selfId) {
      this.checkHops(record, page, hops);
      return this.group
        .link(owner)
        .request("page.zero", routedBy(record, pageAddress(target, page, pageOffset, hops + 1, length, fua)))
        .then((response) => appliersOf(response.result, owner));
    }
    if (this.heldFor(target)) return this.gate.holds.enqueue(record.name, again);
    const admitted = this.replicaHost.admitWrite(record, page, pageOffset, length);
    this.mover.noteWrite(record.uid, page);
    const commitWait = this.gate.beforeWrite(record.name);
    this.store.zero(target.layer, page, pageOffset, length, record.pageSizeBytes);
    return this.acknowledge(target, page, fua, joined(commitWait, admitted), this.replicas.fanOut(record, page, pageOffset, { zeroBytes: length }, fua));
  }

  /**
   * The owner's answer is copied into the reply buffer, once: writing the NBD reply from the
   * received chunks' views instead took one socket write per 64 KiB chunk, and cost the
   * forwarding node more CPU than the copy (4.6-7.5 vs 3.2-3.6 ms per 1 MiB read here).
   */
  private forwardRead(target: Target, page: number, pageOffset: number, length: number, into: Uint8Array, at: number, hops: number): Promise<void> {
    this.checkHops(target.record, page, hops);
    const args = pageAddress(target, page, pageOffset, hops + 1, length);
    const { routing } = target.record;
    // One copy (most volumes): straight to the owner, nothing more made per request.
    if (!routing.replicaOwners?.length) return this.readFrom(ownerOf(routing, page), args, length, into, at);
    // The primary first; a replica when it is down. Nodes known down are tried last, not never:
    // this node's view may be behind.
    const copies = replicasOf(routing, page).filter((node) => node !== this.group.selfId);
    if (copies.length === 0) throw new ShoalError("NOT_READY", `no copy of page ${page} of '${target.record.name}' can answer a read here yet (routing version ${routing.version})`);
    const ordered = [...copies.filter((node) => this.group.isUp(node)), ...copies.filter((node) => !this.group.isUp(node))];
    const attempt = (index: number): Promise<void> =>
      this.readFrom(ordered[index]!, args, length, into, at).catch((err) => {
        const code = err instanceof ShoalError ? err.code : undefined;
        if ((code === "NODE_DOWN" || code === "TIMEOUT") && index + 1 < ordered.length) return attempt(index + 1);
        throw err;
      });
    return attempt(0);
  }

  private readFrom(node: string, args: FrameHeader, length: number, into: Uint8Array, at: number): Promise<void> {
    return this.group
      .link(node)
      .request("page.read", args)
      .then((response) => {
        if (response.payload.byteLength !== length) {
          throw new ShoalError("IO_ERROR", `node ${node} returned ${response.payload.byteLength} bytes for a ${length}-byte read`);
        }
        response.payload.copyTo(into, at);
      });
  }

  private forwardWrite(owner: string, target: Target, page: number, pageOffset: number, parts: Uint8Array[], fua: boolean, hops: number): Promise<Applier[]> {
    this.checkHops(target.record, page, hops);
    const payload = Payload.concat(parts);
    return this.group
      .link(owner)
      .request("page.write", routedBy(target.record, pageAddress(target, page, pageOffset, hops + 1, undefined, fua)), payload)
      .then((response) => appliersOf(response.result, owner));
  }

  /** Tables disagree for longer than a few hops only while a move is being published: fail, the client retries. */
  private checkHops(record: VolumeRecord, page: number, hops: number): void {
    if (hops >= MAX_HOPS) {
      throw new ShoalError("NOT_OWNER", `page ${page} of '${record.name}' was passed on ${hops} times without reaching its owner (routing version ${record.routing.version} here)`);
    }
  }

  /** A request to a page a move is shipping: runs again (routed afresh) once the move step ends. */
  private afterThaw<T>(target: Target, page: number, again: () => Promise<T> | T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.mover.whenThawed(target.record.uid, page, () => {
        try {
          Promise.resolve(again()).then(resolve, reject);
        } catch (err) {
          reject(err);
        }
      });
    });
  }

  /** The target with the volume's record as it is now (a move may have changed the table). */
  private refreshed(target: Target): Target {
    const record = this.group.volumeByUid(target.record.uid);
    if (!record) throw new ShoalError("UNKNOWN_VOLUME", `volume '${target.record.name}' was deleted or replaced while in use`);
    return { record, layer: target.layer };
  }

  async blockStatus(target: Target, offset: number, length: number): Promise<Extent[]> {
    const { record } = target;
    const slices = slicePages(record, offset, length).slice(0, STATUS_PAGES_MAX);
    const allocated = new Array<boolean>(slices.length);
    const remoteByOwner = new Map<string, number[]>();
    slices.forEach((slice, index) => {
      if (holdsCopy(record.routing, slice.page, this.group.selfId) && this.replicaHost.canServeLocally(record, slice.page)) {
        allocated[index] = this.store.isAllocated(target.layer, slice.page);
      } else {
        // The primary, or the first copy that is up (what a read of the page would reach).
        const copies = replicasOf(record.routing, slice.page).filter((node) => node !== this.group.selfId);
        const owner = copies.find((node) => this.group.isUp(node)) ?? copies[0];
        // No other copy to ask (this one is still catching up): allocated, so the client reads it, through the hold.
        if (owner === undefined) return void (allocated[index] = true);
        let indexes = remoteByOwner.get(owner);
        if (!indexes) remoteByOwner.set(owner, (indexes = []));
        indexes.push(index);
      }
    });
    await Promise.all(
      [...remoteByOwner].map(async ([owner, indexes]) => {
        const response = await this.group
          .link(owner)
          .request("page.status", { ...addressOf(target), ps: indexes.map((index) => slices[index]!.page) });
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

  /** Requests to a volume's head wait while a hold-mode snapshot holds it; snapshots never do. */
  private heldFor(target: Target): boolean {
    return target.layer === target.record.uid && this.gate.holds.isHeld(target.record.name);
  }

  /**
   * FUA waits for the disk; a timestamp-mode commit wait waits for the clock; a replicated page
   * waits for its other copies, and resolves to every node that applied the write.
   */
  private acknowledge(
    target: Target,
    page: number,
    fua: boolean,
    commitWait: Promise<void> | undefined,
    copies: Promise<Applier[]> | undefined,
  ): Promise<Applier[] | void> | void {
    const synced = durableAfterWrite(this.store, target.layer, page, fua);
    const local = synced === undefined ? commitWait : commitWait ? Promise.all([synced, commitWait]).then(() => {}) : synced;
    if (copies === undefined) return local;
    const self: Applier = { n: this.group.selfId, b: this.bootId };
    return Promise.all([local, copies]).then(([, replicas]) => [self, ...replicas]);
  }

  // ---- mesh requests from peers

  /** Handles page-level mesh requests; returns undefined for ops that are not its own. */
  handle(op: string, args: FrameHeader, payload: Payload): Reply | Promise<Reply> | undefined {
    switch (op) {
      case "page.read": {
        const { target, page, pageOffset, hops } = pageArgs(this.group, this.store, args);
        const length = checkedLength(args.n, target.record, pageOffset);
        nodeMetrics.countPage("read", "peer", length);
        const data = dataBuffers.acquire(length);
        const release = () => dataBuffers.release(data);
        let done: Promise<void> | void;
        try {
          done = this.readPage(target, page, pageOffset, length, data, 0, hops);
        } catch (err) {
          release();
          throw err;
        }
        if (!done) return { payload: data, release };
        return done.then(
          () => ({ payload: data, release }),
          (err) => {
            release();
            throw err;
          },
        );
      }
      case "page.write": {
        const { target, page, pageOffset, hops } = pageArgs(this.group, this.store, args);
        checkRoutedBy(target.record, args, this.group.selfId);
        nodeMetrics.countPage("write", "peer", checkedLength(payload.byteLength, target.record, pageOffset));
        // Written part by part as the chunks arrived: no gathering copy.
        const done = this.writePage(target, page, pageOffset, payload.parts, Boolean(args.f), hops);
        if (done) return done.then((appliers) => ({ result: answerFor(appliers, this.group.selfId, this.bootId) }));
        return { result: answerFor(undefined, this.group.selfId, this.bootId) };
      }
      case "page.zero": {
        const { target, page, pageOffset, hops } = pageArgs(this.group, this.store, args);
        checkRoutedBy(target.record, args, this.group.selfId);
        const length = checkedLength(args.n, target.record, pageOffset);
        nodeMetrics.countPage("zero", "peer", length);
        const done = this.zeroPage(target, page, pageOffset, length, Boolean(args.f), hops);
        if (done) return done.then((appliers) => ({ result: answerFor(appliers, this.group.selfId, this.bootId) }));
        return { result: answerFor(undefined, this.group.selfId, this.bootId) };
      }
      case "page.status": {
        const target = targetOf(this.group, this.store, args);
        const pages = Array.isArray(args.ps) ? (args.ps as unknown[]).slice(0, STATUS_PAGES_MAX) : [];
        // A page this node no longer owns (the asker's table is older) is reported allocated:
        // the client then reads it, through the owner, rather than skipping data.
        const { routing } = target.record;
        return {
          result: {
            a: pages.map((page) => {
              const index = Number(page);
              const own = index >= 0 && index < routing.owners.length && holdsCopy(routing, index, this.group.selfId) && this.replicaHost.canServeLocally(target.record, index);
              return !own || this.store.isAllocated(target.layer, index);
            }),
          },
        };
      }
      case "store.flush":
        return this.debts.answerFlush(args);
      case "page.replicate":
        return this.replicas.handle(op, args, payload);
      case "store.usage":
        return { result: { usage: storeUsage(this.store) } };
      case "store.changedPages": {
        const { since } = readPeerArgs(op, args);
        return { result: { pages: this.ownChangedPages(targetOf(this.group, this.store, args), since) } };
      }
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

}

function isReplicated(record: VolumeRecord): boolean {
  return Boolean(record.routing.replicaOwners?.length);
}

function joined(a: Promise<void> | undefined, b: Promise<void> | undefined): Promise<void> | undefined {
  return a === undefined ? b : b === undefined ? a : Promise.all([a, b]).then(() => {});
}

/**
 * A write passed on to a replicated page's primary names the routing version it was routed by,
 * and the primary refuses any other (STALE_ROUTE): only the entry node holds and re-sends a write
 * (failover-hold.ts), so a copy of it that an abandoned attempt left in flight (to a paused node,
 * say) can never be applied over a newer write under a later set.
 */
function routedBy(record: VolumeRecord, args: FrameHeader): FrameHeader {
  if (isReplicated(record)) args.rv = record.routing.version;
  return args;
}

function checkRoutedBy(record: VolumeRecord, args: FrameHeader, self: string): void {
  if (!isReplicated(record) || args.rv === record.routing.version) return;
  throw new ShoalError("STALE_ROUTE", `node ${self} routes '${record.name}' by version ${record.routing.version}, the write was routed by version ${String(args.rv)}`);
}

/** Per layer: pages and bytes it holds, and for snapshot layers the bytes deleting it would free. */
export function storeUsage(store: PageStore): Record<string, { pages: number; bytes: number; exclusiveBytes?: number }> {
  const usage: Record<string, { pages: number; bytes: number; exclusiveBytes?: number }> = {};
  for (const [layer, held] of store.usage()) {
    usage[layer] = layer.includes("@") ? { ...held, exclusiveBytes: store.exclusiveBytes(layer) } : held;
  }
  return usage;
}
