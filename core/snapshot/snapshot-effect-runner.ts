// Carries out the snapshot protocol's effects in the order durability demands, for the node
// (transport/snapshot/snapshot-service.ts) and the simulation (test/sim/snapshot-world.ts) alike: what
// each role must have on disk before which message may leave. The host supplies the I/O (send,
// record stores, the page store's cut, the hold queue) through a small interface; no sockets,
// timers or clock reads here.
//
// The rules: records are written without waiting, and the messages and answers that rest on a
// record wait, in order, for the role's last record write to be durable: the coordinator's commit,
// the snapshot's publication and its "done"; the participant's "taken" (after a cut) and its ack
// of a commit. Everything else goes at once: a coordinator that forgets a snapshot in a crash
// answers abort, which is what it means, and a "ready" must not wait, for the node holds its
// clients' requests until take.
import type { ShoalError } from "../errors.ts";
import { DurabilityGate, type Completion } from "./durability-gate.ts";
import type { CoordinatorEffect } from "./snapshot-coordinator.ts";
import type { CoordinatorRecord, HoldReport, NodeId, ParticipantRecord, SnapshotMessage } from "./snapshot-messages.ts";
import type { ParticipantEffect, SnapshotParticipant } from "./snapshot-participant.ts";

/** Hold reports kept for snapshots not yet committed here (oldest first out: reports of aborted holds are never asked for). */
const MAX_HOLD_REPORTS = 64;

export interface RecordStore<R> {
  put(snapshotId: string, record: R): void;
  remove(snapshotId: string): void;
  /** Makes every record put so far durable, then calls `done`. */
  durable(done: Completion): void;
}

export type CutEffect = Extract<ParticipantEffect, { kind: "cut" }>;
export type DoneEffect = Extract<CoordinatorEffect, { kind: "done" }>;

export interface SnapshotEffectHost {
  /** Puts a message on the wire now. */
  send(to: NodeId, msg: SnapshotMessage): void;
  coordinatorRecords: RecordStore<CoordinatorRecord>;
  participantRecords: RecordStore<ParticipantRecord>;
  nowMs(): number;
  /** Every participant is ready (split phases). */
  ready(snapshotId: string): void;
  /** The coordinator's committed record is durable: make the snapshot known to the group. */
  publish(record: CoordinatorRecord): void;
  /** The outcome, once the record it rests on is durable. */
  done(effect: DoneEffect): void;
  hold(snapshotId: string, volumes: string[]): void;
  /** Starts what the hold queued; returns what the hold cost, if measured. */
  release(snapshotId: string, volumes: string[]): HoldReport | undefined;
  /** Freezes the cut now; returns why it cannot be made, or the work that makes the cut and its record durable. */
  cut(effect: CutEffect): { refusal: ShoalError } | { durable: (done: Completion) => void };
  /** Makes a cut visible where the record alone does not (the node's group publishes it instead; the node times it). */
  commit?(snapshotId: string): void;
  /** Deletes a pending cut's data (its record is the runner's). */
  discard(snapshotId: string): void;
  unfence(snapshotId: string): void;
  /** Before each effect; false stops the batch there (the simulation's crash between two effects). */
  beforeEffect?(role: "coordinator" | "participant", effect: CoordinatorEffect | ParticipantEffect): boolean;
  /** After each whole batch: the machines may want another wake-up time. */
  afterBatch?(): void;
  /** Making a record durable failed: the messages resting on it are held back. */
  durabilityFailed(role: "coordinator" | "participant", err: unknown): void;
}

export class SnapshotEffectRunner {
  private readonly coordinatorGate: DurabilityGate;
  private readonly participantGate: DurabilityGate;
  /** What this node's holds cost its clients, told to the coordinator with "taken" (by snapshot id). */
  private readonly holdReports = new Map<string, HoldReport>();
  /** Answers queued behind the participant's record, by destination, type and snapshot. */
  private readonly answersQueued = new Set<string>();

  constructor(
    private readonly host: SnapshotEffectHost,
    private readonly participant: SnapshotParticipant,
  ) {
    this.coordinatorGate = new DurabilityGate((err) => host.durabilityFailed("coordinator", err));
    this.participantGate = new DurabilityGate((err) => host.durabilityFailed("participant", err));
  }

  runCoordinator(effects: CoordinatorEffect[]): void {
    const { host } = this;
    for (const effect of effects) {
      if (host.beforeEffect && !host.beforeEffect("coordinator", effect)) return;
      switch (effect.kind) {
        case "send": {
          const { to, msg } = effect;
          // Only a commit rests on a record (the decision).
          if (msg.type === "snap.commit") this.coordinatorGate.after(() => host.send(to, msg));
          else host.send(to, msg);
          break;
        }
        case "persist": {
          const { record } = effect;
          host.coordinatorRecords.put(record.snapshotId, record);
          this.coordinatorGate.track((done) => host.coordinatorRecords.durable(done));
          // The decision is the point of no return: publish the snapshot once it is durable, so
          // a crash before "done" cannot leave a committed snapshot nobody lists (recovery
          // publishes again), nor one listed that recovery would abort.
          if (record.state === "committed") this.coordinatorGate.after(() => host.publish(record));
          break;
        }
        case "unpersist":
          host.coordinatorRecords.remove(effect.snapshotId);
          break;
        case "ready":
          host.ready(effect.snapshotId);
          break;
        case "done":
          this.coordinatorGate.after(() => host.done(effect));
          break;
      }
    }
    host.afterBatch?.();
  }

  runParticipant(effects: ParticipantEffect[]): void {
    const { host } = this;
    /** Cuts the store refused, by snapshot id: nothing more is said of them but why. */
    const failedCuts = new Map<string, ShoalError>();
    for (const effect of effects) {
      if (host.beforeEffect && !host.beforeEffect("participant", effect)) return;
      switch (effect.kind) {
        case "send":
          this.sendAnswer(effect.to, effect.msg, failedCuts);
          break;
        case "hold":
          host.hold(effect.snapshotId, effect.volumes);
          break;
        case "release": {
          const report = host.release(effect.snapshotId, effect.volumes);
          if (!report) break;
          if (this.holdReports.size >= MAX_HOLD_REPORTS) this.holdReports.delete(this.holdReports.keys().next().value!);
          this.holdReports.set(effect.snapshotId, report);
          break;
        }
        case "cut": {
          const cut = host.cut(effect);
          if ("refusal" in cut) failedCuts.set(effect.snapshotId, cut.refusal);
          else this.participantGate.track(cut.durable);
          break;
        }
        case "commit":
          this.holdReports.delete(effect.snapshotId);
          host.commit?.(effect.snapshotId);
          host.participantRecords.put(effect.snapshotId, effect.record);
          this.participantGate.track((done) => host.participantRecords.durable(done));
          break;
        case "discard":
          this.holdReports.delete(effect.snapshotId);
          host.discard(effect.snapshotId);
          host.participantRecords.remove(effect.snapshotId);
          break;
        case "forget":
          host.participantRecords.remove(effect.snapshotId);
          break;
        case "unfence":
          host.unfence(effect.snapshotId);
          break;
      }
    }
    for (const [snapshotId, error] of failedCuts) this.runParticipant(this.participant.cutFailed(snapshotId, error, host.nowMs()));
    host.afterBatch?.();
  }

  /** "taken" after a cut and "ack" of a commit rest on the participant's record; the rest go at once. */
  private sendAnswer(to: NodeId, msg: SnapshotMessage, failedCuts: Map<string, ShoalError>): void {
    if (failedCuts.has(msg.snapshotId) && (msg.type === "snap.taken" || msg.type === "snap.cut")) return;
    if (msg.type === "snap.taken") {
      const hold = this.holdReports.get(msg.snapshotId);
      if (hold) msg = { ...msg, hold };
    }
    if (msg.type === "snap.taken" || (msg.type === "snap.ack" && msg.outcome === "committed")) this.sendAfterRecord(to, msg);
    else this.host.send(to, msg);
  }

  /**
   * Sends an answer that rests on the participant's record once that is durable. The take the
   * coordinator resends and the participant's own query both ask for "taken" again while a cut's
   * flush runs (100+ ms under load): one copy queued is enough, the rest would leave at the same
   * moment (and draw as many commits and acks).
   */
  private sendAfterRecord(to: NodeId, msg: SnapshotMessage): void {
    const key = `${to} ${msg.type} ${msg.snapshotId}`;
    if (this.answersQueued.has(key)) return;
    this.answersQueued.add(key);
    const settled = () => this.answersQueued.delete(key);
    this.participantGate.after(
      () => {
        settled();
        this.host.send(to, msg);
      },
      settled,
    );
  }
}
