// The snapshots admin clients ask this node to coordinate: each one's id, the callers waiting for
// its outcome, and the names split-phase snapshots (prepare, take, release) go by until they end.
// The SnapshotService runs the coordinator; this keeps who waits for what, and checks a request.
import { ShoalError } from "../../core/errors.ts";
import { holders } from "../../core/cluster/routing.ts";
import type { SnapshotCoordinator, CoordinatorEffect, SnapshotResult } from "../../core/snapshot/snapshot-coordinator.ts";
import type { DoneEffect } from "../../core/snapshot/snapshot-effect-runner.ts";
import type { SnapshotMode } from "../../core/snapshot/snapshot-messages.ts";
import { validateSnapshotName } from "../../core/snapshot/snapshot-record.ts";
import type { Group } from "../mesh/group.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";

export interface CreateSnapshot {
  volumes: string[];
  name: string;
  mode: SnapshotMode;
  holdTimeoutMs?: number;
}

/** Ended split-phase snapshots whose outcome a late `release` may still ask for. */
const MAX_ENDED_PREPARED = 64;

export class SnapshotRequests {
  /** Who waits for each snapshot coordinated here, by snapshot id, until it ends. */
  private readonly waiting = new Map<
    string,
    { resolve: (r: SnapshotResult) => void; reject: (e: ShoalError) => void; promise: Promise<SnapshotResult>; onReady: () => void }
  >();
  /** Split-phase snapshots coordinated here, by name, until they end (taken, released or failed). */
  private readonly prepared = new Map<string, string>();
  /** How the last few ended, so a `release` after them can say (bounded: no one must release). */
  private readonly preparedEnded = new Map<string, "aborted" | "complete">();
  private counter = 0;

  constructor(
    private readonly group: Group,
    private readonly coordinator: SnapshotCoordinator,
    /** Carries out the coordinator's effects (the service's effect runner). */
    private readonly run: (effects: CoordinatorEffect[]) => void,
    private readonly nowMs: () => number,
    /** This process's incarnation: snapshot ids made here never repeat across restarts. */
    private readonly incarnation: string,
    private readonly maxClockSkewMs: number,
  ) {}

  /**
   * Split phases: resolves once every participant is ready (holding, in hold mode); they stay so
   * until take(), release() or the hold timeout. Returns the snapshot id.
   */
  async prepare(request: CreateSnapshot): Promise<string> {
    for (const [name, snapshotId] of this.prepared) {
      if (name === request.name && this.waiting.has(snapshotId)) {
        throw new ShoalError("SNAPSHOT_EXISTS", `a snapshot '${name}' is already being prepared on this node`);
      }
    }
    let onReady!: () => void;
    const ready = new Promise<void>((resolve) => (onReady = resolve));
    const { snapshotId, promise: done } = this.begin(request, true, onReady);
    this.prepared.set(request.name, snapshotId);
    done.then(
      () => this.endPrepared(request.name, snapshotId, "complete"),
      () => this.endPrepared(request.name, snapshotId, "aborted"),
    );
    // Whichever comes first: ready, or the snapshot failing while preparing.
    await Promise.race([ready, done]);
    return snapshotId;
  }

  /** Split phases: cut the snapshot prepared under `name`; resolves when it is complete. */
  take(name: string): Promise<SnapshotResult> {
    const snapshotId = this.preparedId(name);
    const done = this.waiting.get(snapshotId)!.promise;
    this.run(this.coordinator.take(snapshotId, this.nowMs()));
    return done;
  }

  /** Split phases: before take, abort (everyone resumes); after take, nothing is left to undo. */
  async release(name: string): Promise<"aborted" | "complete"> {
    const snapshotId = this.prepared.get(name);
    const ended = this.preparedEnded.get(name);
    this.preparedEnded.delete(name);
    if (snapshotId === undefined && ended) return ended;
    if (snapshotId === undefined) throw new ShoalError("UNKNOWN_SNAPSHOT", `no snapshot '${name}' was prepared on this node`);
    this.prepared.delete(name);
    const waiter = this.waiting.get(snapshotId);
    if (!waiter) return "complete";
    this.run(this.coordinator.release(snapshotId, this.nowMs()));
    try {
      await waiter.promise;
      return "complete";
    } catch {
      return "aborted";
    }
  }

  private endPrepared(name: string, snapshotId: string, outcome: "aborted" | "complete"): void {
    if (this.prepared.get(name) !== snapshotId) return; // released already, or prepared again
    this.prepared.delete(name);
    this.preparedEnded.delete(name);
    this.preparedEnded.set(name, outcome);
    for (const oldest of this.preparedEnded.keys()) {
      if (this.preparedEnded.size <= MAX_ENDED_PREPARED) break;
      this.preparedEnded.delete(oldest);
    }
  }

  private preparedId(name: string): string {
    const snapshotId = this.prepared.get(name);
    if (snapshotId === undefined || !this.waiting.has(snapshotId)) {
      throw new ShoalError("UNKNOWN_SNAPSHOT", `no snapshot '${name}' is prepared on this node; run \`shoal snap prepare\` here first (it may have timed out)`);
    }
    return snapshotId;
  }

  create(request: CreateSnapshot): Promise<SnapshotResult> {
    return this.begin(request, false, () => {}).promise;
  }

  private begin(request: CreateSnapshot, manualTake: boolean, onReady: () => void): { snapshotId: string; promise: Promise<SnapshotResult> } {
    const { group } = this;
    validateSnapshotName(request.name);
    if (request.volumes.length === 0) throw new ShoalError("BAD_ARGUMENT", "name at least one volume to snapshot");
    const participants = new Set<string>();
    const routingVersions: Record<string, number> = {};
    for (const volume of new Set(request.volumes)) {
      const record = group.volume(volume);
      // A copy that is away is in no set and no participant: it takes the snapshot's layer with
      // its catch-up copies when it returns (replica-pages.ts).
      routingVersions[volume] = record.routing.version;
      if (group.liveSnapshots(volume).some((snapshot) => snapshot.name === request.name)) {
        throw new ShoalError("SNAPSHOT_EXISTS", `volume '${volume}' already has a snapshot '${request.name}'`);
      }
      for (const node of holders(record.routing)) participants.add(node);
    }
    for (const node of participants) {
      if (!group.isUp(node)) throw new ShoalError("NODE_DOWN", `node ${node} holds pages of these volumes and is down; retry when it is back`);
    }
    const snapshotId = `${group.selfId}.${this.incarnation}.${++this.counter}`;
    let resolve!: (result: SnapshotResult) => void;
    let reject!: (error: ShoalError) => void;
    const promise = new Promise<SnapshotResult>((ok, fail) => {
      resolve = ok;
      reject = fail;
    });
    promise.catch(() => {}); // observed by whoever awaits it; never an unhandled rejection
    this.waiting.set(snapshotId, { resolve, reject, promise, onReady });
    nodeMetrics.snapshotStarted(snapshotId);
    this.run(
      this.coordinator.startSnapshot({
        snapshotId,
        name: request.name,
        volumes: [...new Set(request.volumes)],
        mode: request.mode,
        participants: [...participants].sort(),
        holdTimeoutMs: request.holdTimeoutMs,
        maxClockSkewMs: this.maxClockSkewMs,
        nowMs: this.nowMs(),
        manualTake,
        routingVersions,
      }),
    );
    return { snapshotId, promise };
  }

  /** Every participant of a snapshot coordinated here is ready (holding, in hold mode). */
  ready(snapshotId: string): void {
    this.waiting.get(snapshotId)?.onReady();
  }

  /** A snapshot coordinated here ended: its caller learns how. */
  finish(effect: DoneEffect): void {
    const waiter = this.waiting.get(effect.snapshotId);
    this.waiting.delete(effect.snapshotId);
    if (waiter) nodeMetrics.snapshotDone(effect.snapshotId, effect.ok);
    if (effect.ok) waiter?.resolve(effect.result);
    else waiter?.reject(effect.error);
  }
}
