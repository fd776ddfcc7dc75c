// Wire messages and durable records shared by the snapshot coordinator and participant.
// Kept apart from both state machines so the mesh codec, the node's router and the catalog can
// depend on the shapes without depending on the protocol logic.
import type { ErrorCode } from "../errors.ts";

export type NodeId = string;
export type SnapshotMode = "hold" | "timestamp";

export interface WireError {
  code: ErrorCode;
  message: string;
}

/** Coordinator -> participant: start holding (hold mode) or start watching writes (timestamp mode). */
export interface PrepareMessage {
  type: "snap.prepare";
  snapshotId: string;
  name: string;
  volumes: string[];
  mode: SnapshotMode;
  /** Coordinator clock when the snapshot started; with snapshotId it orders competing holds (older wins). */
  startedAtMs: number;
  /** Coordinator clock when this copy left (stamped at the send); echoed in ready to measure the round trip, and ages stale copies. */
  sentAtMs: number;
  holdTimeoutMs: number;
  maxClockSkewMs: number;
  /** Routing version per volume the coordinator chose participants by (absent in old messages). */
  routingVersions?: Record<string, number>;
}

/** Participant -> coordinator: holding and drained (hold mode), or prepared (timestamp mode). */
export interface ReadyMessage {
  type: "snap.ready";
  snapshotId: string;
  /** Names this participant's prepared state; take must echo it, so a re-prepare can never be cut by an old take. */
  prepareNonce: string;
  /** Participant clock when it answered. */
  clockMs: number;
  echoSentAtMs: number;
  /** How coarse the participant's clock readings are (absent: whole milliseconds). */
  clockResolutionMs?: number;
}

/** Coordinator -> participant: cut now (hold mode) or at the first local moment the clock reads cutAtMs. */
export interface TakeMessage {
  type: "snap.take";
  snapshotId: string;
  prepareNonce: string;
  /** Timestamp mode only: the cut time T on the coordinator's clock. */
  cutAtMs?: number;
  /**
   * Timestamp mode only: once its clock reads cutAtMs + commitWaitMs, every participant's clock
   * has read cutAtMs (from offsets measured on prepare/ready), so the commit wait may end then.
   */
  commitWaitMs?: number;
}

/** Participant -> coordinator: the cut is recorded durably (pending). Resent as a question while pending. */
export interface TakenMessage {
  type: "snap.taken";
  snapshotId: string;
  /** Hold mode: how long this participant held its clients' requests for the snapshot. */
  hold?: HoldReport;
}

/** What a hold cost one participant's clients, measured by the participant (monotonic clock). */
export interface HoldReport {
  /** From the hold starting to its release. */
  heldMs: number;
  /** Requests that arrived during the hold and waited for it. */
  queued: number;
  /** The longest any of them waited (0 if none). */
  longestWaitMs: number;
}

/**
 * Timestamp mode, participant -> coordinator: cut here (not yet durable; "taken" says that).
 * Coordinator -> participants, once every participant said so: every cut is made, so writes
 * applied after a cut need not wait out the commit wait any more. Both best effort: a lost one
 * only means acknowledgements wait until T + 2 * skew, as without them.
 */
export interface CutMessage {
  type: "snap.cut" | "snap.allcut";
  snapshotId: string;
}

export interface CommitMessage {
  type: "snap.commit";
  snapshotId: string;
}

export interface AbortMessage {
  type: "snap.abort";
  snapshotId: string;
  reason: WireError;
}

/** Participant -> coordinator: this participant will not (or can no longer) take part. */
export interface RefuseMessage {
  type: "snap.refuse";
  snapshotId: string;
  error: WireError;
}

/** Participant -> coordinator: the decision is applied here; the coordinator may stop resending it. */
export interface AckMessage {
  type: "snap.ack";
  snapshotId: string;
  outcome: "committed" | "aborted";
}

export type ToParticipantMessage = PrepareMessage | TakeMessage | CommitMessage | AbortMessage | (CutMessage & { type: "snap.allcut" });
export type ToCoordinatorMessage = ReadyMessage | TakenMessage | RefuseMessage | AckMessage | (CutMessage & { type: "snap.cut" });
export type SnapshotMessage = ToParticipantMessage | ToCoordinatorMessage;

/** Routes an incoming snapshot message to the right state machine on the receiving node. */
export function isToCoordinator(msg: SnapshotMessage): msg is ToCoordinatorMessage {
  return msg.type === "snap.ready" || msg.type === "snap.taken" || msg.type === "snap.refuse" || msg.type === "snap.ack" || msg.type === "snap.cut";
}

/**
 * What the coordinator keeps on disk. "started" is written before the first prepare leaves, so a
 * restarted coordinator knows whom to tell to discard; "committed" is the decision itself.
 */
export interface CoordinatorRecord {
  snapshotId: string;
  name: string;
  volumes: string[];
  mode: SnapshotMode;
  participants: NodeId[];
  startedAtMs: number;
  state: "started" | "committed";
  cutAtMs?: number;
  routingVersions?: Record<string, number>;
}

/**
 * What a participant keeps on disk, in the same transaction as the copy-on-write snapshot it
 * describes. "pending" is cut but invisible; "committed" is visible and kept a little longer so
 * late duplicate messages cannot re-prepare it.
 */
export interface ParticipantRecord {
  snapshotId: string;
  name: string;
  coordinator: NodeId;
  volumes: string[];
  mode: SnapshotMode;
  state: "pending" | "committed";
  /** Timestamp mode: the cut time T (local clock reading at which this participant cut). */
  cutAtMs?: number;
  /** Timestamp mode, pending only: writes applied after the cut may not be acknowledged before this local time. */
  commitWaitUntilMs?: number;
  /** Committed only: local time after which the record may be dropped. */
  forgetAtMs?: number;
}
