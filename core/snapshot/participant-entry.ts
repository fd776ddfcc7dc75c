// One snapshot as the participant tracks it (snapshot-participant.ts): its record, when it wants
// a tick, how it is persisted, and the effects that name it. Pure data and functions; the
// participant owns the transitions.
import type { ParticipantEffect } from "./snapshot-participant.ts";
import type { NodeId, ParticipantRecord, SnapshotMode, WireError } from "./snapshot-messages.ts";

export type Phase = "holding" | "ready" | "prepared" | "armed" | "pending";

export interface Entry {
  snapshotId: string;
  name: string;
  coordinator: NodeId;
  volumes: string[];
  mode: SnapshotMode;
  startedAtMs: number;
  maxClockSkewMs: number;
  prepareNonce: string;
  prepareSentAtMs: number;
  phase: Phase;
  /** holding/ready: end of hold; prepared: give up waiting for take. */
  deadlineMs: number;
  cutAtMs?: number;
  /** Timestamp mode: the commit wait the coordinator measured for this node (see TakeMessage). */
  commitWaitMs?: number;
  nextQueryAtMs: number;
  queryIntervalMs: number;
}

export function newEntry(
  snapshotId: string,
  name: string,
  coordinator: NodeId,
  volumes: string[],
  mode: SnapshotMode,
  startedAtMs: number,
  maxClockSkewMs: number,
  prepareNonce: string,
  prepareSentAtMs: number,
): Entry {
  return {
    snapshotId,
    name,
    coordinator,
    volumes: [...volumes],
    mode,
    startedAtMs,
    maxClockSkewMs,
    prepareNonce,
    prepareSentAtMs,
    phase: "prepared",
    deadlineMs: Infinity,
    nextQueryAtMs: Infinity,
    queryIntervalMs: 0,
  };
}

export function entryWakeAtMs(entry: Entry): number {
  switch (entry.phase) {
    case "holding":
    case "ready":
    case "prepared":
      return entry.deadlineMs;
    case "armed":
      return entry.cutAtMs!;
    case "pending":
      return entry.nextQueryAtMs;
  }
}

/** Older snapshots win hold conflicts: a total order on (start time, id). */
export function isOlder(a: { startedAtMs: number; snapshotId: string }, b: { startedAtMs: number; snapshotId: string }): boolean {
  return a.startedAtMs < b.startedAtMs || (a.startedAtMs === b.startedAtMs && a.snapshotId < b.snapshotId);
}

export function recordOf(entry: Entry, state: "pending" | "committed"): ParticipantRecord {
  return {
    snapshotId: entry.snapshotId,
    name: entry.name,
    coordinator: entry.coordinator,
    volumes: entry.volumes,
    mode: entry.mode,
    state,
  };
}

export function refuse(to: NodeId, snapshotId: string, error: WireError): ParticipantEffect {
  return { kind: "send", to, msg: { type: "snap.refuse", snapshotId, error } };
}

export function taken(entry: Entry): ParticipantEffect {
  return { kind: "send", to: entry.coordinator, msg: { type: "snap.taken", snapshotId: entry.snapshotId } };
}

export function release(entry: Entry): ParticipantEffect {
  return { kind: "release", snapshotId: entry.snapshotId, volumes: entry.volumes };
}
