// The snapshot world's pieces below the world itself: the messages on its mesh, a node split
// into what a crash keeps (block store, snapshots, protocol records) and what it drops, the
// scenario draw and small helpers.
import type { CoordinatorEffect, SnapshotCoordinator } from "../../core/snapshot/snapshot-coordinator.ts";
import type { SnapshotEffectRunner } from "../../core/snapshot/snapshot-effect-runner.ts";
import type { CoordinatorRecord, NodeId, ParticipantRecord, SnapshotMessage } from "../../core/snapshot/snapshot-messages.ts";
import type { ParticipantEffect, SnapshotParticipant } from "../../core/snapshot/snapshot-participant.ts";
import type { Prng } from "./kernel/prng.ts";
import { SimNode } from "./kernel/sim-node.ts";
import type { FinalNode, NodeSnapshot, PieceRecord, Scenario, VolumeLayout } from "./snapshot-history.ts";

export const BLOCKS_PER_PAGE = 2;
export const EVENT_BUDGET = 200_000;

export type Payload =
  | { kind: "snap"; msg: SnapshotMessage }
  | { kind: "piece"; piece: PieceRecord; entry: NodeId }
  | { kind: "pieceAck"; pieceId: number; writeId: number };

export interface QueuedPiece {
  piece: PieceRecord;
  entry: NodeId;
  enqueuedAtMs: number;
}

/** What a crash loses: the hold queue, requests in flight, acks waiting on commit waits, the timer. */
export interface Volatile {
  holds: Map<string, string[]>;
  queue: QueuedPiece[];
  inflight: Map<string, number>;
  awaitingDrain: Map<string, string[]>;
  acceptedPieces: Set<number>;
  pendingWrites: Map<number, Set<number>>;
  /** Applied pieces whose ack waits for snapshots' commit waits to end (unfence). */
  fencedAcks: { piece: PieceRecord; entry: NodeId; fences: Set<string> }[];
  timerGeneration: number;
  armedWakeAtMs: number | undefined;
  /** Protocol record writes (a deletion: no record) not yet on disk, in order. */
  unsyncedRecords: { role: "coordinator" | "participant"; snapshotId: string; record: CoordinatorRecord | ParticipantRecord | undefined }[];
}

export function freshVolatile(): Volatile {
  return {
    holds: new Map(),
    queue: [],
    inflight: new Map(),
    awaitingDrain: new Map(),
    acceptedPieces: new Set(),
    pendingWrites: new Map(),
    fencedAcks: [],
    unsyncedRecords: [],
    timerGeneration: 0,
    armedWakeAtMs: undefined,
  };
}

/** What survives a crash: the block store, its snapshots and the protocol records. */
export interface Durable {
  head: Map<string, number>;
  snapshots: Map<string, NodeSnapshot>;
  coordinatorRecords: Map<string, CoordinatorRecord>;
  participantRecords: Map<string, ParticipantRecord>;
  appliedPieces: Set<number>;
}

export class SnapshotNode extends SimNode<Durable, Volatile> {
  offsetMs = 0;
  /** Rebuilt from the records at every boot. */
  coordinator!: SnapshotCoordinator;
  participant!: SnapshotParticipant;
  /** The node's own effect runner (core/snapshot/snapshot-effect-runner.ts), on simulated I/O. */
  runner!: SnapshotEffectRunner;
  snapshotCounter = 0;

  constructor(id: NodeId) {
    const durable: Durable = { head: new Map(), snapshots: new Map(), coordinatorRecords: new Map(), participantRecords: new Map(), appliedPieces: new Set() };
    super(id, durable, freshVolatile);
  }
}

export interface ClientState {
  id: number;
  current?: number;
}

export function makeScenario(rng: Prng): Scenario {
  const scenario = drawScenario(rng);
  // The coordinator halves its cut margin per committed snapshot down to minCutMarginMs. A
  // fault-free run keeps it over the delay bound (such a run must never fail); a faulty one lets
  // it fall to nothing, so late takes (refused, aborted) are common and the checker judges them.
  // Derived, not drawn: every seed's other values stay as they were.
  return { ...scenario, minCutMarginMs: scenario.faultFree ? scenario.cutMarginMs : 0 };
}

function drawScenario(rng: Prng): Omit<Scenario, "minCutMarginMs"> {
  const faultFree = rng.chance(0.3);
  const skewMs = rng.pick([0, rng.range(0, 3), rng.range(2, 20), rng.range(10, 25)]);
  return {
    faultFree,
    nodeCount: rng.int(2, 5),
    skewMs,
    holdTimeoutMs: rng.range(Math.max(60, 4 * skewMs + 20), 200),
    delayMaxMs: rng.range(0.5, 15),
    lossRate: faultFree ? 0 : rng.range(0, 0.1),
    dupRate: faultFree ? 0 : rng.range(0, 0.08),
    slowRate: faultFree ? 0 : rng.range(0, 0.05),
    execDelayMaxMs: rng.range(0, 4),
    clientCount: rng.int(1, 4),
    activeEndMs: 600,
    quiesceEndMs: 4000,
    stepCrashRate: faultFree || rng.chance(0.5) ? 0 : rng.range(0.005, 0.05),
    cutMarginMs: faultFree || rng.chance(0.5) ? 20 : rng.range(0, 20),
    lateDupRate: rng.range(0, 0.5),
    clockJumpsMax: rng.pick([0, 2, 6]),
    recordSyncMaxMs: 0,
    cutRefusalRate: 0,
  };
}

export function makeVolumes(rng: Prng, nodes: NodeId[]): VolumeLayout[] {
  const count = rng.int(1, 3);
  const volumes: VolumeLayout[] = [];
  for (let i = 0; i < count; i++) {
    const pages = rng.int(1, 4);
    const ownerOfBlock: NodeId[] = [];
    for (let page = 0; page < pages; page++) {
      const owner = rng.pick(nodes);
      for (let b = 0; b < BLOCKS_PER_PAGE; b++) ownerOfBlock.push(owner);
    }
    volumes.push({ name: `v${i}`, blocks: pages * BLOCKS_PER_PAGE, ownerOfBlock });
  }
  return volumes;
}

export function commitSnapshot(node: SnapshotNode, snapshotId: string): void {
  const snapshot = node.durable.snapshots.get(snapshotId);
  if (!snapshot) throw new Error(`node ${node.id} told to commit snapshot ${snapshotId} it never cut`);
  snapshot.state = "committed";
}

export function finalNode(node: SnapshotNode): FinalNode {
  return {
    id: node.id,
    snapshots: node.durable.snapshots,
    participantEntries: node.participant.inspect().entries.map((e) => `${e.snapshotId}:${e.phase}`),
    coordinatorAttempts: node.coordinator.inspect().map((a) => `${a.snapshotId}:${a.phase}`),
    holds: node.volatile.holds.size,
    queued: node.volatile.queue.length,
  };
}

export function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

export function detail(msg: SnapshotMessage): string {
  switch (msg.type) {
    case "snap.take":
      return msg.cutAtMs === undefined ? "" : `T=${msg.cutAtMs.toFixed(3)}`;
    case "snap.refuse":
      return `${msg.error.code}: ${msg.error.message}`;
    case "snap.abort":
      return msg.reason.code;
    case "snap.ready":
      return `clock=${msg.clockMs.toFixed(3)}`;
    default:
      return "";
  }
}

export function describeEffect(effect: CoordinatorEffect | ParticipantEffect): string {
  switch (effect.kind) {
    case "send":
      return `${effect.msg.type} -> ${effect.to}`;
    case "done":
      return effect.ok ? `${effect.snapshotId} ok` : `${effect.snapshotId} FAILED ${effect.error.code}: ${effect.error.message}`;
    case "persist":
      return `${effect.record.snapshotId} ${effect.record.state}`;
    default:
      return "snapshotId" in effect ? effect.snapshotId : "";
  }
}
