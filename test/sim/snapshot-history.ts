// What a snapshot simulation run records, and the knobs that shape it: the scenario and the
// deliberately broken rules. snapshot-world.ts produces it; snapshot-checker.ts judges it.
import type { NodeId, SnapshotMode } from "../../core/snapshot/snapshot-messages.ts";

/** Deliberate node bugs, to prove the checker can fail. */
export interface Sabotage {
  /** The node ignores `hold`: requests keep executing during the hold. */
  ignoreHold?: boolean;
  /** The node acknowledges writes at once, ignoring ackNotBeforeMs. */
  ignoreCommitWait?: boolean;
  /** Everyone is told "allcut" as soon as the first participant says it cut. */
  allCutEarly?: boolean;
  /** The coordinator tells each participant 70% of the commit wait the measured offsets need. */
  shortCommitWait?: boolean;
  /** Nodes follow clock steps even while a snapshot relies on their earlier readings. */
  clockStepsAnytime?: boolean;
  /** The record store reports records durable at once though they reach the disk later (so what rests on them leaves early). */
  recordsDurableEarly?: boolean;
}

export const SABOTAGE_NAMES: (keyof Sabotage)[] = ["ignoreHold", "ignoreCommitWait", "allCutEarly", "shortCommitWait", "clockStepsAnytime", "recordsDurableEarly"];

export interface WorldOptions {
  seed: number;
  mode: SnapshotMode;
  sabotage?: Sabotage;
  trace?: (line: string) => void;
}

export interface VolumeLayout {
  name: string;
  blocks: number;
  ownerOfBlock: NodeId[];
}

export interface PieceRecord {
  pieceId: number;
  writeId: number;
  volume: string;
  blocks: number[];
  owner: NodeId;
}

export interface WriteRecord {
  writeId: number;
  /** Positions in the one real-time order of the run (issue/ack counters share one sequence). */
  issueOrder: number;
  ackOrder: number;
  issueAtMs: number;
  ackAtMs: number;
  pieceIds: number[];
}

export interface SnapshotMeta {
  snapshotId: string;
  coordinator: NodeId;
  volumes: string[];
  participants: NodeId[];
  startedAtMs: number;
}

export interface NodeSnapshot {
  state: "pending" | "committed";
  volumes: string[];
  values: Map<string, number>;
}

export interface FinalNode {
  id: NodeId;
  snapshots: Map<string, NodeSnapshot>;
  participantEntries: string[];
  coordinatorAttempts: string[];
  holds: number;
  queued: number;
}

export interface Scenario {
  faultFree: boolean;
  nodeCount: number;
  skewMs: number;
  holdTimeoutMs: number;
  delayMaxMs: number;
  lossRate: number;
  dupRate: number;
  slowRate: number;
  execDelayMaxMs: number;
  clientCount: number;
  activeEndMs: number;
  quiesceEndMs: number;
  stepCrashRate: number;
  /** Coordinator slack on the cut time; below the delay bound, takes arrive late (faulty runs only). */
  cutMarginMs: number;
  /** The floor the coordinator's adaptive margin may fall to (see makeScenario). */
  minCutMarginMs: number;
  /** Share of duplicates that arrive much later, like a retransmission after a reconnect. */
  lateDupRate: number;
  clockJumpsMax: number;
  /** Protocol records reach the disk up to this long after they are written (0: at once). */
  recordSyncMaxMs: number;
  /** Share of cuts the store refuses (a volume at its snapshot limit); faulty runs only. */
  cutRefusalRate: number;
}

export interface History {
  seed: number;
  mode: SnapshotMode;
  scenario: Scenario;
  volumes: VolumeLayout[];
  writes: Map<number, WriteRecord>;
  pieces: Map<number, PieceRecord>;
  applyLog: Map<string, number[]>;
  snapshots: Map<string, SnapshotMeta>;
  outcomes: Map<string, { ok: boolean; code?: string; message?: string }[]>;
  nodes: FinalNode[];
  holdWaits: { node: NodeId; pieceId: number; waitedMs: number }[];
  errors: string[];
  eventCount: number;
}
