// Drives the snapshot protocol on one node: feeds the coordinator and participant state machines
// with mesh messages, ticks and write stamps, and carries out their effects against the page
// store (copy-on-write cuts), the hold queue, the catalog and the group's snapshot records. The
// store's side of a cut is cut-layers.ts; the snapshots admin clients ask for, snapshot-requests.ts.
import type { Catalog } from "../../core/cluster/catalog.ts";
import { asShoalError, ShoalError } from "../../core/errors.ts";
import { HoldQueue } from "../../core/snapshot/hold-queue.ts";
import { RecentCuts, type RecentCut } from "../../core/snapshot/recent-cuts.ts";
import { placeReplicatedWrite } from "../../core/snapshot/replicated-write-placement.ts";
import { snapshotLayerId, type CutRecord, type SnapshotRecord } from "../../core/snapshot/snapshot-record.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import { settleWith } from "../../core/snapshot/durability-gate.ts";
import { SnapshotCoordinator, type CoordinatorEffect, type SnapshotResult } from "../../core/snapshot/snapshot-coordinator.ts";
import { SnapshotEffectRunner, type SnapshotEffectHost } from "../../core/snapshot/snapshot-effect-runner.ts";
import {
  isToCoordinator,
  type CoordinatorRecord,
  type ParticipantRecord,
  type PrepareMessage,
  type SnapshotMessage,
} from "../../core/snapshot/snapshot-messages.ts";
import { SnapshotParticipant, type ParticipantEffect } from "../../core/snapshot/snapshot-participant.ts";
import type { FrameHeader } from "../mesh/frame.ts";
import type { Group } from "../mesh/group.ts";
import type { MeshLog } from "../mesh/mesh.ts";
import type { SnapshotGate } from "../node/volume-router.ts";
import type { ReplicationsInFlight } from "../node/replica-writes.ts";
import type { SnapshotActivity } from "../move/page-mover.ts";
import type { RunningMoveSteps } from "../move/running-move-steps.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";
import { NodeClock } from "./node-clock.ts";
import { CutLayers } from "./cut-layers.ts";
import { SnapshotRequests, type CreateSnapshot } from "./snapshot-requests.ts";

export interface SnapshotServiceOptions {
  group: Group;
  store: PageStore;
  catalog: Catalog;
  log: MeshLog;
  /** Added to this node's clock (SHOAL_CLOCK_SKEW_MS), so tests can skew real processes. */
  clockSkewMs: number;
  /** The bound on clock error between any node and real time that timestamp mode relies on. */
  maxClockSkewMs: number;
  /** Move steps running here: a prepare waits for its volumes' steps to end. */
  moveSteps: RunningMoveSteps;
  /** Writes this node applied as a primary and is still passing to replicas: a hold waits for them before ready. */
  replications: ReplicationsInFlight;
}

/** Requests waiting on a hold beyond this make the node give the hold up. */
const MAX_HELD_REQUESTS = 4096;
export class SnapshotService implements SnapshotGate, SnapshotActivity {
  readonly holds: HoldQueue;
  /**
   * Protocol records are written without an fsync on the event loop (see Catalog.durable); what a
   * record promises must reach nobody before it is on disk. The runner (shared with the
   * simulation) holds back the messages that rest on a record until it is durable.
   */
  private readonly runner: SnapshotEffectRunner;
  private readonly coordinator: SnapshotCoordinator;
  private readonly participant: SnapshotParticipant;
  private readonly incarnation = crypto.randomUUID().slice(0, 8);
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Turns of the event loop waited out before a commit wait ends (see rearm). */
  private poll: ReturnType<typeof setImmediate> | undefined;
  /** When the protocol next wants a tick (Infinity: never). */
  private wakeAtMs = Infinity;
  /** Acknowledgements waiting on a timestamp-mode snapshot's commit wait, by snapshot id. */
  private readonly fenceWaiters = new Map<string, { promise: Promise<void>; resolve: () => void }>();
  private stopped = false;
  private readonly clock: NodeClock;
  private readonly cuts = new RecentCuts();
  private readonly layers: CutLayers;
  /** The snapshots admin clients asked this node to coordinate, and who waits for each. */
  private readonly requests: SnapshotRequests;

  constructor(private readonly options: SnapshotServiceOptions) {
    const nodeId = options.group.selfId;
    // Small steps are the monotonic clock drifting from the wall clock (where the time daemon
    // slews one and not the other); large ones are the time being set, worth a line.
    const onStep = (stepMs: number) => {
      if (Math.abs(stepMs) >= 50) options.log.info(`wall clock was set by ${stepMs.toFixed(1)} ms; the snapshot clock follows`);
    };
    this.clock = new NodeClock(options.clockSkewMs, onStep);
    const clockResolutionMs = this.clock.resolutionMs;
    this.coordinator = new SnapshotCoordinator({ nodeId, clockResolutionMs });
    this.participant = new SnapshotParticipant({ nodeId, incarnation: this.incarnation, maxClockSkewMs: options.maxClockSkewMs, clockResolutionMs });
    this.runner = new SnapshotEffectRunner(this.effectHost(), this.participant);
    this.layers = new CutLayers(options, this.cuts);
    const run = (effects: CoordinatorEffect[]) => this.runCoordinator(effects);
    this.requests = new SnapshotRequests(options.group, this.coordinator, run, () => this.nowMs(), this.incarnation, options.maxClockSkewMs);
    this.holds = new HoldQueue(MAX_HELD_REQUESTS, (snapshotIds) => {
      for (const snapshotId of snapshotIds) {
        const error = new ShoalError("HOLD_TIMEOUT", `node ${nodeId} had ${MAX_HELD_REQUESTS} requests waiting on the hold`);
        this.runParticipant(this.participant.abandon(snapshotId, error, this.nowMs()));
      }
    }, () => performance.now());
  }

  nowMs(): number {
    if (!this.coordinator.clockInUse() && !this.participant.clockInUse()) this.clock.followWallClock();
    return this.clock.nowMs();
  }

  /** Recovers both roles from the catalog: undecided snapshots abort, decided ones finish. */
  start(): void {
    const { catalog } = this.options;
    const now = this.nowMs();
    this.runCoordinator(this.coordinator.recover(catalog.protocolRecords<CoordinatorRecord>("coordinator"), now));
    const participantRecords = catalog.protocolRecords<CutRecord>("participant").filter((record) => this.layers.survived(record));
    this.runParticipant(this.participant.recover(participantRecords, now));
    this.layers.deleteOrphans();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    clearImmediate(this.poll);
  }

  // ---- the data path's questions (SnapshotGate)

  beforeWrite(volume: string): Promise<void> | undefined {
    let nowMs = this.nowMs();
    // A timer the busy event loop has not run yet: its work (a commit wait ending) goes first.
    if (this.wakeAtMs <= nowMs) {
      this.tick();
      nowMs = this.nowMs();
    }
    const admission = this.participant.beforeWrite(volume, nowMs);
    if (admission.effects.length > 0) this.runParticipant(admission.effects);
    // Running the cut may have ended its fence at once (a cut the store refused is given up).
    const fences = admission.fences.filter((snapshotId) => this.participant.isFenced(snapshotId));
    if (fences.length === 0) return undefined;
    const waits = fences.map((snapshotId) => this.unfenced(snapshotId));
    return waits.length === 1 ? waits[0] : Promise.all(waits).then(() => {});
  }

  /** The snapshots this node cut of `volume` lately, which a write it applies as a primary names (see RecentCuts). */
  recentCuts(volume: string): readonly RecentCut[] {
    return this.cuts.of(volume);
  }

  /**
   * The layer a replicated write goes into on this replica, by its primary's decision (see
   * replicated-write-placement.ts): the snapshots the primary cut first are cut here first, and a
   * write the primary applied before a cut this replica has made goes under that cut.
   */
  replicaLayer(volume: string, uid: string, cutBefore: readonly RecentCut[]): string {
    const unfinished = this.participant.unfinishedTimestampCuts();
    // The common case, every replicated write with no snapshot ever cut: nothing to place.
    if (cutBefore.length === 0 && unfinished.size === 0) return uid;
    const placement = placeReplicatedWrite(cutBefore, this.cuts.of(volume).map((cut) => cut.snapshotId), unfinished);
    for (const { snapshotId, cutAtMs } of placement.cutFirst) {
      if (cutAtMs !== undefined) this.runParticipant(this.participant.cutForPrimary(snapshotId, cutAtMs, this.nowMs()));
    }
    if (placement.under === undefined) return uid;
    const layer = snapshotLayerId(uid, placement.under);
    // A cut given up since (its layer gone or going) holds nothing: the head takes the write.
    return this.options.store.isWritableLayer(layer) ? layer : uid;
  }

  /** Resolves when the participant unfences the snapshot (its commit wait is over). */
  private unfenced(snapshotId: string): Promise<void> {
    let waiter = this.fenceWaiters.get(snapshotId);
    if (!waiter) {
      let resolve!: () => void;
      const promise = new Promise<void>((done) => (resolve = done));
      waiter = { promise, resolve };
      this.fenceWaiters.set(snapshotId, waiter);
    }
    return waiter.promise;
  }

  // ---- admin

  /** Split phases: resolves once every participant is ready (see SnapshotRequests); returns the snapshot id. */
  prepare(request: CreateSnapshot): Promise<string> {
    return this.requests.prepare(request);
  }

  /** Split phases: cut the snapshot prepared under `name`; resolves when it is complete. */
  take(name: string): Promise<SnapshotResult> {
    return this.requests.take(name);
  }

  /** Split phases: before take, abort (everyone resumes); after take, nothing is left to undo. */
  release(name: string): Promise<"aborted" | "complete"> {
    return this.requests.release(name);
  }

  create(request: CreateSnapshot): Promise<SnapshotResult> {
    return this.requests.create(request);
  }

  /** Rolls this node's pages of a volume back to a snapshot layer (the admin checked it exists). */
  async rollbackLocal(volumeUid: string, layer: string): Promise<void> {
    const { store } = this.options;
    if (!store.hasLayer(layer)) throw new ShoalError("UNKNOWN_SNAPSHOT", `node ${this.options.group.selfId} has no layer ${layer}`);
    store.resetLayer(volumeUid, layer);
    await store.flush();
  }

  // ---- mesh

  /** Handles "snap.msg" from a peer (or this node). */
  onMessage(from: string, args: FrameHeader): FrameHeader {
    const msg = args.msg as SnapshotMessage | undefined;
    if (!msg || typeof msg !== "object" || typeof msg.type !== "string" || typeof msg.snapshotId !== "string") {
      throw new ShoalError("BAD_REQUEST", "snapshot message is malformed");
    }
    this.deliver(from, msg);
    return {};
  }

  onPeerDown(node: string): void {
    const now = this.nowMs();
    this.runCoordinator(this.coordinator.onPeerDown(node, now));
    this.runParticipant(this.participant.onPeerDown(node, now));
  }

  private deliver(from: string, msg: SnapshotMessage): void {
    if (msg.type === "snap.prepare" && !(this.routingAgrees(from, msg) && this.roomForCut(from, msg))) return;
    const now = this.nowMs();
    if (isToCoordinator(msg)) this.runCoordinator(this.coordinator.onMessage(from, msg, now));
    else this.runParticipant(this.participant.onMessage(from, msg, now));
  }

  /**
   * A snapshot's participants are the page owners in the coordinator's tables: a node whose table
   * for a volume is another version (a page move committed in between) refuses, and the
   * coordinator tries again with the new table. A move step running here finishes first; none
   * starts while a snapshot involves the volume (see PageMover).
   */
  private routingAgrees(from: string, msg: PrepareMessage): boolean {
    const { group } = this.options;
    const { moveSteps } = this.options;
    if (moveSteps.anyOf(msg.volumes)) {
      void moveSteps.idle(msg.volumes).then(() => this.deliver(from, msg));
      return false;
    }
    for (const [volume, version] of Object.entries(msg.routingVersions ?? {})) {
      const local = group.volumes.get(volume)?.routing.version;
      if (local === undefined || local === version) continue;
      const error = new ShoalError("STALE_ROUTE", `node ${group.selfId} has routing version ${local} of '${volume}', the coordinator ${version}: pages moved; try again`);
      this.send(from, { type: "snap.refuse", snapshotId: msg.snapshotId, error: error.toWire() });
      return false;
    }
    return true;
  }

  /** Refuses a prepare whose cut this node's store could not make (a volume at its snapshot limit). */
  private roomForCut(from: string, msg: PrepareMessage): boolean {
    const refusal = this.layers.refusal(msg.volumes);
    if (refusal === undefined) return true;
    this.send(from, { type: "snap.refuse", snapshotId: msg.snapshotId, error: refusal.toWire() });
    return false;
  }

  /** A snapshot of the volume is prepared or cut here and not finished: page moves wait. */
  involves(volume: string): boolean {
    return this.participant.involves(volume);
  }

  private send(to: string, msg: SnapshotMessage): void {
    const { group } = this.options;
    // A prepare leaves after the coordinator's record is durable: stamp it now, not when it was
    // made, so the round trip the ready measures (and the clock offsets bounded by it) leave the
    // record's fsync out.
    if (msg.type === "snap.prepare") msg = { ...msg, sentAtMs: this.nowMs() };
    if (to === group.selfId) {
      // As if over the network: never re-enter the state machine. The messages to the other
      // nodes must leave first, whatever the order of the sends: a take to this node cuts here
      // and runs the released requests, and a remote participant would hold its clients that much
      // longer. Their batches are flushed by microtasks queued at their first send, so this one
      // queues itself twice to come after all sends of this turn. Microtasks, not a later
      // event-loop turn: under load a turn is milliseconds, and this node may hold.
      queueMicrotask(() => queueMicrotask(() => this.deliver(to, msg)));
      return;
    }
    // Lost messages are the protocol's business (it resends); a down peer is reported by the link.
    group
      .link(to)
      .request("snap.msg", { msg: msg as unknown as FrameHeader }, undefined, 5000)
      .catch(() => {});
  }

  // ---- effects

  private runCoordinator(effects: CoordinatorEffect[]): void {
    this.runner.runCoordinator(effects);
  }

  private runParticipant(effects: ParticipantEffect[]): void {
    this.runner.runParticipant(effects);
  }

  /** The node's side of the effects: the catalog's records, the page store, the hold queue. */
  private effectHost(): SnapshotEffectHost {
    const { catalog, log } = this.options;
    const records = <R extends { state: string }>(role: "coordinator" | "participant") => ({
      put: (snapshotId: string, record: R) => {
        if (role === "coordinator" && record.state === "committed") nodeMetrics.snapshotAllTaken(snapshotId);
        catalog.putProtocolRecord(role, snapshotId, record);
      },
      remove: (snapshotId: string) => catalog.removeProtocolRecord(role, snapshotId),
      durable: settleWith(() => catalog.durable()),
    });
    return {
      send: (to, msg) => {
        if (msg.type === "snap.take") nodeMetrics.snapshotTaking(msg.snapshotId);
        if (msg.type === "snap.ack" && msg.outcome === "committed") nodeMetrics.commitAcked(msg.snapshotId);
        this.send(to, msg);
      },
      coordinatorRecords: records<CoordinatorRecord>("coordinator"),
      participantRecords: records<ParticipantRecord>("participant"),
      nowMs: () => this.nowMs(),
      ready: (snapshotId) => {
        nodeMetrics.snapshotReady(snapshotId);
        this.requests.ready(snapshotId);
      },
      publish: (record) => {
        nodeMetrics.snapshotDecided(record.snapshotId);
        this.publish(record);
      },
      done: (effect) => this.requests.finish(effect),
      hold: (snapshotId, volumes) => {
        this.holds.hold(snapshotId, volumes);
        // Requests run synchronously on this node's event loop: none is mid-execution now. But a
        // write applied here as a primary may still be on its way to a replica, and must be on
        // it before any replica cuts (they cut only once every participant is ready).
        const drained = () => this.runParticipant(this.participant.onInflightDrained(snapshotId, this.nowMs()));
        const replicating = this.options.replications.idle(volumes);
        if (replicating) void replicating.then(drained);
        else queueMicrotask(drained);
      },
      release: (snapshotId, volumes) => {
        const report = this.holds.release(snapshotId, volumes);
        nodeMetrics.holdReleased(report);
        return report;
      },
      cut: (effect) => {
        const cut = this.layers.cut(effect);
        // Timestamp mode: writes this node applied as a primary before its cut must be on every
        // replica before "taken" (and so before the commit): a replica whose own clock cut first
        // places them under its cut only while that cut is unfinished (replicated-write-placement.ts).
        const replicating = "durable" in cut && effect.record.mode === "timestamp" ? this.options.replications.idle(effect.volumes) : undefined;
        return replicating === undefined || !("durable" in cut) ? cut : { durable: (done) => void replicating.then(() => cut.durable(done)) };
      },
      commit: (snapshotId) => nodeMetrics.commitReceived(snapshotId),
      discard: (snapshotId) => this.layers.discard(snapshotId),
      unfence: (snapshotId) => {
        nodeMetrics.commitWaitEnded(snapshotId);
        const waiter = this.fenceWaiters.get(snapshotId);
        this.fenceWaiters.delete(snapshotId);
        waiter?.resolve();
      },
      afterBatch: () => this.rearm(),
      durabilityFailed: (role, err) =>
        log.warn(`snapshot protocol: making the ${role}'s record durable failed (${asShoalError(err).message}); its messages are held back`),
    };
  }

  private publish(record: CoordinatorRecord): void {
    const { group } = this.options;
    for (const volume of record.volumes) {
      const volumeRecord = group.volumes.get(volume);
      if (!volumeRecord || volumeRecord.deleted) continue;
      const snapshot: SnapshotRecord = {
        snapshotId: record.snapshotId,
        name: record.name,
        volume,
        volumeUid: volumeRecord.uid,
        mode: record.mode,
        startedAtMs: record.startedAtMs,
        ...(record.cutAtMs !== undefined ? { cutAtMs: record.cutAtMs } : {}),
        createdAtMs: Math.floor(this.nowMs()),
        coordinator: group.selfId,
        participants: record.participants,
        version: 1,
        deleted: false,
      };
      if (group.applySnapshot(snapshot)) void group.publishSnapshot(snapshot);
    }
  }

  private rearm(): void {
    if (this.stopped) return;
    const wakeAtMs = Math.min(this.coordinator.nextWakeAtMs() ?? Infinity, this.participant.nextWakeAtMs() ?? Infinity);
    clearTimeout(this.timer);
    clearImmediate(this.poll);
    this.wakeAtMs = wakeAtMs;
    if (wakeAtMs === Infinity) return;
    const delayMs = wakeAtMs - this.nowMs();
    if (wakeAtMs !== this.participant.nextFenceEndMs()) {
      this.timer = setTimeout(() => this.tick(), Math.max(0, Math.ceil(delayMs)));
      return;
    }
    // Acknowledgements wait for this one. Timers here fire in whole milliseconds and at least
    // 1 ms out, so a commit wait ending in 1.3 ms would end after 2.2: time the bulk, then wait
    // out the last millisecond in turns of the event loop, which keep serving I/O.
    if (delayMs > 2) {
      this.timer = setTimeout(() => this.rearm(), Math.floor(delayMs) - 1);
      return;
    }
    const poll = () => {
      if (this.nowMs() >= wakeAtMs) this.tick();
      else this.poll = setImmediate(poll);
    };
    this.poll = setImmediate(poll);
  }

  private tick(): void {
    const now = this.nowMs();
    this.runCoordinator(this.coordinator.onTick(now));
    this.runParticipant(this.participant.onTick(now));
  }
}
