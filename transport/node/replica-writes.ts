// The replicated half of the write path. The primary of a page applies a write, then passes it to
// the page's other replicas in parallel (`page.replicate`) and acknowledges once every one has
// applied it; a replica applies what its primary sends and never routes it on. Reads may then be
// served by any replica while the sets stay as created (every acknowledged write is on all).
import { ShoalError } from "../../core/errors.ts";
import { holdsCopy, ownerOf, replicasOf } from "../../core/cluster/routing.ts";
import type { VolumeRecord } from "../../core/cluster/volume.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import type { HoldQueue } from "../../core/snapshot/hold-queue.ts";
import type { RecentCut } from "../../core/snapshot/recent-cuts.ts";
import { Payload, type FrameHeader } from "../mesh/frame.ts";
import type { Group } from "../mesh/group.ts";
import type { Reply } from "../mesh/mesh-connection.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";
import { appliersOf, checkedLength, pageArgs, type Applier } from "./page-wire.ts";
import type { ReplicaHost } from "./replica-host.ts";

/** What the replica side asks of the snapshot service. */
export interface ReplicaHolds {
  readonly holds: HoldQueue;
  /** Snapshots this node has cut of the volume lately: a write it applies after them must not enter a replica's cut of them. */
  recentCuts(volume: string): readonly RecentCut[];
  /** The layer a replicated write goes into here, by the cuts its primary had made (cutting first what the primary cut first). */
  replicaLayer(volume: string, uid: string, cutBefore: readonly RecentCut[]): string;
}

/**
 * Replications this node sent as a primary and that are not answered yet, per volume name. A
 * hold-mode snapshot's participant waits for its volumes' ones before it says ready: a write the
 * primary applied before its hold must be on every replica before any replica cuts.
 */
export class ReplicationsInFlight {
  private readonly byVolume = new Map<string, Set<Promise<unknown>>>();

  track<T>(volume: string, promise: Promise<T>): Promise<T> {
    let pending = this.byVolume.get(volume);
    if (!pending) this.byVolume.set(volume, (pending = new Set()));
    pending.add(promise);
    const done = () => {
      pending.delete(promise);
      if (pending.size === 0 && this.byVolume.get(volume) === pending) this.byVolume.delete(volume);
    };
    promise.then(done, done);
    return promise;
  }

  /** Settles once every replication of `volumes` in flight now has (undefined when none is). */
  idle(volumes: string[]): Promise<void> | undefined {
    const pending = volumes.flatMap((volume) => [...(this.byVolume.get(volume) ?? [])]);
    if (pending.length === 0) return undefined;
    return Promise.allSettled(pending).then(() => {});
  }
}

/**
 * FUA waits for the disk; past the dirty limit a writer waits for the write-back, so writers go
 * at the disk's pace and a FLUSH or a cut never inherits more than the limit's worth of syncing.
 */
export function durableAfterWrite(store: PageStore, layer: string, page: number, fua: boolean): Promise<void> | undefined {
  if (fua) return store.syncPage(layer, page);
  return store.dirtyBytes >= store.dirtyLimitBytes ? store.writeBack() : undefined;
}

/** One write as it is passed to the replicas: bytes (parts, as they arrived) or a zeroed range. */
export type ReplicatedWrite = { parts: Uint8Array[] } | { zeroBytes: number };

export class ReplicaWrites {
  constructor(
    private readonly group: Group,
    private readonly store: PageStore,
    private readonly snapshots: ReplicaHolds,
    private readonly inFlight: ReplicationsInFlight,
    private readonly bootId: string,
    private readonly replicaHost: ReplicaHost,
    /**
     * Delays every replicated write this node receives (SHOAL_REPLICA_DELAY_MS), so tests can
     * widen the window in which a replica's copy lags its primary's; 0 in real use.
     */
    private readonly delayMs = 0,
  ) {}

  /**
   * On the primary, after applying the write: sends it to every other replica of the page and
   * resolves with who applied it; undefined for a page with one copy. A replica that fails the
   * write (down, refusing) fails this attempt: the entry node holds the client's request until a
   * newer set takes it (failover-hold.ts), so an acknowledgement promises the write is on every
   * copy of the set it was acknowledged under.
   */
  fanOut(record: VolumeRecord, page: number, pageOffset: number, write: ReplicatedWrite, fua: boolean): Promise<Applier[]> | undefined {
    if (!record.routing.replicaOwners?.length) return undefined;
    const args: FrameHeader = { v: record.uid, p: page, o: pageOffset, rv: record.routing.version };
    if (fua) args.f = true;
    if ("zeroBytes" in write) args.n = write.zeroBytes;
    Object.assign(args, cutArgs(this.snapshots.recentCuts(record.name)));
    const payload = "parts" in write ? Payload.concat(write.parts) : undefined;
    const replicas = replicasOf(record.routing, page).slice(1);
    const sent = Promise.all(
      replicas.map((node) =>
        this.group
          .link(node)
          .request("page.replicate", args, payload)
          .then(
            (response) => appliersOf(response.result, node)[0]!,
            (err) => {
              throw replicaFailure(node, record, page, err);
            },
          ),
      ),
    );
    return this.inFlight.track(record.name, sent);
  }

  /** `page.replicate` from a page's primary; undefined for other ops. */
  handle(op: string, args: FrameHeader, payload: Payload): Reply | Promise<Reply> | undefined {
    if (op !== "page.replicate") return undefined;
    const { record, page, pageOffset } = this.checked(args);
    const zeroBytes = args.n === undefined ? undefined : checkedLength(args.n, record, pageOffset);
    if (zeroBytes === undefined) checkedLength(payload.byteLength, record, pageOffset);
    const fua = args.f === true;
    if (this.delayMs > 0) return Bun.sleep(this.delayMs).then(() => this.admit(record, page, pageOffset, args, payload, zeroBytes, fua));
    return this.admit(record, page, pageOffset, args, payload, zeroBytes, fua);
  }

  private admit(record: VolumeRecord, page: number, pageOffset: number, args: FrameHeader, payload: Payload, zeroBytes: number | undefined, fua: boolean): Reply | Promise<Reply> {
    const cutBefore = cutsOf(args);
    const apply = () => this.apply(record, page, pageOffset, zeroBytes === undefined ? { parts: payload.parts } : { zeroBytes }, fua, cutBefore);
    // A write the primary applied after its cut of a snapshot this node still holds for must
    // come after this node's cut too; any other write runs now, hold or not: the primary
    // admitted it before its own hold and waits for it before it says ready.
    const after = cutBefore.map((cut) => cut.snapshotId);
    if (after.length > 0 && this.snapshots.holds.isHeldByAny(record.name, after)) return this.snapshots.holds.enqueue(record.name, apply, after);
    return apply();
  }

  private apply(record: VolumeRecord, page: number, pageOffset: number, write: ReplicatedWrite, fua: boolean, cutBefore: readonly RecentCut[]): Reply | Promise<Reply> {
    // The member's fence first (it refuses a set this node has left or a group it is still
    // joining), and its away maps note the write for the replicas that are out.
    const admitted = this.replicaHost.admitWrite(record, page, pageOffset, "parts" in write ? write.parts.reduce((sum, part) => sum + part.byteLength, 0) : write.zeroBytes);
    // Timestamp mode: the primary's clock placed the write on one side of each cut; this copy
    // places it on the same side (cutting first, or writing under a cut it has made already).
    const layer = this.snapshots.replicaLayer(record.name, record.uid, cutBefore);
    const under = layer !== record.uid;
    if (under) writesUnderCut.inc();
    if ("parts" in write) {
      let at = pageOffset;
      for (const part of write.parts) {
        if (under) this.store.writeUnder(layer, page, at, part, record.pageSizeBytes);
        else this.store.write(layer, page, at, part, record.pageSizeBytes);
        at += part.byteLength;
      }
      nodeMetrics.countPage("write", "peer", at - pageOffset);
    } else {
      if (under) this.store.zeroUnder(layer, page, pageOffset, write.zeroBytes, record.pageSizeBytes);
      else this.store.zero(layer, page, pageOffset, write.zeroBytes, record.pageSizeBytes);
      nodeMetrics.countPage("zero", "peer", write.zeroBytes);
    }
    const answer = { result: { n: this.group.selfId, b: this.bootId } };
    const synced = durableAfterWrite(this.store, layer, page, fua);
    if (admitted) return Promise.all([admitted, synced]).then(() => answer);
    return synced ? synced.then(() => answer) : answer;
  }

  /**
   * The write's volume, page and offset, refused unless this node is a replica (not the primary)
   * of the page by the very routing version the primary routed it by: the version is the epoch a
   * replica set is fenced by, and a replica must never take a write from a set it has left.
   */
  private checked(args: FrameHeader): { record: VolumeRecord; page: number; pageOffset: number } {
    const { target, page, pageOffset } = pageArgs(this.group, this.store, args);
    const { record } = target;
    if (target.layer !== record.uid) throw new ShoalError("READ_ONLY", `snapshots of '${record.name}' are read-only`);
    const version = args.rv;
    if (version !== record.routing.version) {
      throw new ShoalError(
        "STALE_ROUTE",
        `node ${this.group.selfId} has routing version ${record.routing.version} of '${record.name}', the write was routed by version ${String(version)}`,
      );
    }
    const self = this.group.selfId;
    if (!holdsCopy(record.routing, page, self) || ownerOf(record.routing, page) === self) {
      throw new ShoalError("NOT_OWNER", `node ${self} is not a replica of page ${page} of '${record.name}' (routing version ${record.routing.version})`);
    }
    return { record, page, pageOffset };
  }
}

const writesUnderCut = nodeMetrics.registry
  .counter("shoal_replica_writes_under_cut_total", "replicated writes this node applied under a timestamp-mode cut it had made, because their primary applied them before its own cut")
  .with();

/** T in `ct` for a hold-mode cut, which has none. */
const NO_CUT_TIME = -1;

/** Encoded once per list: RecentCuts hands out the same list until its next cut, and every replicated write names it. */
const encodedCuts = new WeakMap<readonly RecentCut[], FrameHeader>();

/** The cuts a primary had made as `page.replicate` carries them: `c` their ids, `ct` their times T (timestamp mode). */
function cutArgs(cutBefore: readonly RecentCut[]): FrameHeader {
  if (cutBefore.length === 0) return {};
  let args = encodedCuts.get(cutBefore);
  if (args !== undefined) return args;
  args = { c: cutBefore.map((cut) => cut.snapshotId) };
  if (cutBefore.some((cut) => cut.cutAtMs !== undefined)) args.ct = cutBefore.map((cut) => cut.cutAtMs ?? NO_CUT_TIME);
  encodedCuts.set(cutBefore, args);
  return args;
}

function cutsOf(args: FrameHeader): RecentCut[] {
  const times = Array.isArray(args.ct) ? (args.ct as unknown[]) : [];
  return stringsOf(args.c).map((snapshotId, index): RecentCut => {
    const cutAtMs = times[index];
    return typeof cutAtMs === "number" && cutAtMs !== NO_CUT_TIME ? { snapshotId, cutAtMs } : { snapshotId };
  });
}

function stringsOf(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : [];
}

/** The client's error when a replica did not apply the write: which copy, and that it was not acknowledged. */
function replicaFailure(node: string, record: VolumeRecord, page: number, err: unknown): ShoalError {
  const code = err instanceof ShoalError ? err.code : "IO_ERROR";
  const reason = err instanceof Error ? err.message : String(err);
  return new ShoalError(code, `replica ${node} of page ${page} of '${record.name}' did not apply the write (${reason}); it is not acknowledged`);
}
