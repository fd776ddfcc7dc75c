// Coordinates page moves from this node: locks each volume's routing table for the move (only
// the lock holder changes it), then has each source run a move step per batch of pages, building
// every step's table on the one before. Jobs run in the background; `route move/rebalance/drain`
// start one and poll its progress.
import { asShoalError, ShoalError } from "../../core/errors.ts";
import { batchMoves, type PageMove } from "../../core/move/move-plan.ts";
import { withOwner } from "../../core/cluster/routing.ts";
import type { VolumeRecord } from "../../core/cluster/volume.ts";
import type { Group } from "../mesh/group.ts";
import type { MeshLog } from "../mesh/mesh.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";
import type { PageMover } from "./page-mover.ts";

/** Pages per step: bigger steps move faster, smaller ones keep each page frozen for less time. */
const STEP_PAGES = 8;
const STEP_TIMEOUT_MS = 120_000;
const ORPHAN_SWEEP_MS = 5000;
/** Finished jobs kept for `route status`. */
const FINISHED_JOBS_KEPT = 100;

export interface MoveTask {
  volume: string;
  moves: PageMove[];
}

export interface MoveJobStatus {
  moveId: string;
  kind: string;
  state: "running" | "done" | "failed";
  volumes: string[];
  pagesTotal: number;
  pagesMoved: number;
  bytesMoved: number;
  startedAtMs: number;
  finishedAtMs?: number;
  error?: { code: string; message: string };
}

export class MoveService {
  private readonly jobs = new Map<string, MoveJobStatus>();
  private counter = 0;
  private sweeper: ReturnType<typeof setInterval> | undefined;
  private readonly incarnation = crypto.randomUUID().slice(0, 8);

  constructor(
    private readonly group: Group,
    private readonly mover: PageMover,
    private readonly log: MeshLog,
  ) {}

  /**
   * Moves this node coordinated before a restart did not survive it: their locks go. Checked
   * again now and then, because a step that was running at a source when this node died may
   * commit a table still carrying the lock after the first unlock.
   */
  start(): void {
    const sweep = () => void this.unlockOrphans();
    sweep();
    this.sweeper = setInterval(sweep, ORPHAN_SWEEP_MS);
    this.sweeper.unref?.();
  }

  stop(): void {
    clearInterval(this.sweeper);
  }

  private async unlockOrphans(): Promise<void> {
    for (const record of this.group.liveVolumes()) {
      const lock = record.moving;
      if (lock?.by !== this.group.selfId || this.jobs.get(lock.moveId)?.state === "running") continue;
      this.log.warn(`move ${lock.moveId} of '${record.name}' was cut short by a restart of this node; unlocking the volume (run the move again)`, { volume: record.name, move: lock.moveId });
      await this.unlock(record.name, lock.moveId).catch((err) => this.log.warn(`unlocking '${record.name}' failed: ${asShoalError(err).message}`));
    }
  }

  /** A forgotten node's moves can never finish: drop their locks. */
  async unlockMovesOf(node: string): Promise<void> {
    for (const record of this.group.liveVolumes()) {
      if (record.moving?.by === node) await this.unlock(record.name, record.moving.moveId);
    }
  }

  /** Starts a job; every volume is locked before it returns, so conflicts fail the command at once. */
  async run(kind: string, tasks: MoveTask[]): Promise<MoveJobStatus> {
    const moveId = `${this.group.selfId}.${this.incarnation}.${++this.counter}`;
    const nonEmpty = tasks.filter((task) => task.moves.length > 0);
    for (const task of nonEmpty) {
      for (const node of new Set(task.moves.map((move) => move.to))) {
        if (!this.group.isUp(node)) throw new ShoalError("NODE_DOWN", `node ${node} is down; pages cannot move to it (nothing was changed)`);
      }
    }
    const status: MoveJobStatus = {
      moveId,
      kind,
      state: "running",
      volumes: nonEmpty.map((task) => task.volume),
      pagesTotal: nonEmpty.reduce((sum, task) => sum + task.moves.length, 0),
      pagesMoved: 0,
      bytesMoved: 0,
      startedAtMs: Date.now(),
    };
    // Known as running before any lock is taken, so the orphan sweep leaves its locks alone.
    this.jobs.set(moveId, status);
    const locked: string[] = [];
    try {
      for (const task of nonEmpty) {
        await this.lock(task.volume, moveId);
        locked.push(task.volume);
      }
    } catch (err) {
      this.jobs.delete(moveId);
      for (const volume of locked) await this.unlock(volume, moveId).catch(() => undefined);
      throw err;
    }
    this.trimJobs();
    void this.execute(status, nonEmpty);
    return { ...status };
  }

  status(moveId: string): MoveJobStatus {
    const status = this.jobs.get(moveId);
    if (!status) throw new ShoalError("UNKNOWN_VOLUME", `no move '${moveId}' is known on node ${this.group.selfId} (ask the node that started it)`);
    return { ...status };
  }

  private async execute(status: MoveJobStatus, tasks: MoveTask[]): Promise<void> {
    let pending = [...tasks];
    try {
      for (const task of tasks) {
        let done = 0;
        nodeMetrics.setMoveProgress(task.volume, done, task.moves.length);
        for (const batch of batchMoves(task.moves, STEP_PAGES)) {
          const bytes = await this.step(task.volume, status.moveId, batch.from, batch.to, batch.pages);
          done += batch.pages.length;
          nodeMetrics.setMoveProgress(task.volume, done, task.moves.length);
          status.pagesMoved += batch.pages.length;
          status.bytesMoved += bytes;
        }
        nodeMetrics.removeMoveProgress(task.volume);
        await this.unlock(task.volume, status.moveId);
        pending = pending.filter((other) => other !== task);
      }
      status.state = "done";
    } catch (err) {
      const error = asShoalError(err);
      status.state = "failed";
      status.error = error.toWire();
      this.log.warn(`move ${status.moveId} failed: ${error.message}`, { move: status.moveId });
      for (const task of pending) {
        nodeMetrics.removeMoveProgress(task.volume);
        await this.unlock(task.volume, status.moveId).catch(() => undefined);
      }
    }
    status.finishedAtMs = Date.now();
  }

  /** One batch: the source freezes, ships and commits; the new table is then ours too. */
  private async step(volume: string, moveId: string, from: string, to: string, pages: number[]): Promise<number> {
    const current = this.group.volume(volume);
    if (current.moving?.moveId !== moveId) throw new ShoalError("CONFLICT", `volume '${volume}' is no longer locked by move ${moveId}`);
    if (!this.group.isUp(to)) throw new ShoalError("NODE_DOWN", `node ${to} (the target) is down`);
    if (!this.group.isUp(from)) throw new ShoalError("NODE_DOWN", `node ${from} (the source) is down`);
    const next: VolumeRecord = { ...current, version: current.version + 1, routing: withOwner(current.routing, pages, to) };
    const args = { pages, to, stepId: `${moveId}.${next.version}` };
    const result =
      from === this.group.selfId
        ? await this.mover.step(next, args)
        : (await this.group.link(from).request("move.step", { ...this.group.outbox.offerVolume(next), ...args }, undefined, STEP_TIMEOUT_MS)).result;
    this.group.applyVolume(next, "later"); // the source holds it durably
    return Number(result.bytes ?? 0);
  }

  /**
   * Takes the volume's move lock: a new record version naming this move, confirmed by every
   * member that is up. Two coordinators locking at once both publish the same version; every
   * member keeps the one with the larger move id, so the other learns it lost from the answers.
   */
  private async lock(volume: string, moveId: string): Promise<void> {
    const record = this.group.volume(volume);
    if (record.restoring) throw new ShoalError("CONFLICT", `volume '${volume}' is being restored from an archive; move it afterwards`);
    if (record.moving) {
      const holder = record.moving.by;
      throw new ShoalError(
        "CONFLICT",
        `volume '${volume}' is being moved by move ${record.moving.moveId} on node ${holder}${this.group.isUp(holder) ? "" : " (down: the lock goes when it restarts)"}; try again when it ends`,
      );
    }
    const locked: VolumeRecord = { ...record, version: record.version + 1, moving: { moveId, by: this.group.selfId, startedAtMs: Date.now() } };
    this.group.applyVolume(locked);
    const answers = await this.group.publishVolume(locked, []);
    const winner = this.group.volumes.get(volume)?.moving?.moveId;
    const rival = answers.find((answer) => answer.moveId !== moveId);
    if (winner !== moveId || rival) {
      throw new ShoalError("CONFLICT", `another move of '${volume}' started at the same time${rival ? ` (node ${rival.node} has move ${String(rival.moveId)})` : ""}; it goes ahead, this one does nothing`);
    }
  }

  private async unlock(volume: string, moveId: string): Promise<void> {
    const record = this.group.volume(volume);
    if (record.moving?.moveId !== moveId) return;
    const { moving: _, ...rest } = record;
    const unlocked: VolumeRecord = { ...rest, version: record.version + 1 };
    this.group.applyVolume(unlocked);
    await this.group.publishVolume(unlocked, []);
  }

  private trimJobs(): void {
    const finished = [...this.jobs.values()].filter((job) => job.state !== "running");
    for (const job of finished.slice(0, Math.max(0, finished.length - FINISHED_JOBS_KEPT))) this.jobs.delete(job.moveId);
  }
}
