// What each admin operation answers, typed (object types, not interfaces, so each is a FrameHeader map): the other half of the table in admin-ops.ts. The node's
// handlers must return these (the compiler checks it) and the CLI reads them as such, so a field a
// command prints is one the node sends.
import type { ArchiveManifest } from "../../core/archive/manifest.ts";
import type { PageRun } from "../../core/cluster/routing.ts";
import type { MoveLock } from "../../core/cluster/volume.ts";
import type { SnapshotMode } from "../../core/snapshot/snapshot-messages.ts";

export type NodeInfo = {
  id: string;
  groupId: string | undefined;
  meshAddress: string;
  nbdAddress: string;
  version: string;
  uptimeMs: number;
  /** fsync/fdatasync calls the node's page store made (tests read it to prove a flush reached it). */
  storeSyncs: number;
};

/** `restoring` while an archive restore writes it; `degraded` while an owner of its pages is down. */
export type VolumeState = "ready" | "degraded" | "restoring";

export type VolumeSummary = {
  name: string;
  uid: string;
  sizeBytes: number;
  pageSizeBytes: number;
  pageCount: number;
  nodes: string[];
  /** Copies of each page, on distinct nodes (1: no replication). */
  replicas: number;
  routingVersion: number;
  state: VolumeState;
  nodesDown: string[];
};

/** A node's pages of a table, as runs (at most a bounded number listed; runCount says how many). */
export type NodePageRuns = {
  node: string;
  pages: number;
  runs: (PageRun & { text: string })[];
  runCount: number;
};

/** Pages and bytes of a node; null when the node did not answer. */
export type NodeUsage = {
  pagesWritten: number | null;
  bytesUsed: number | null;
};

export type VolumeInfo = Omit<VolumeSummary, "nodes"> & {
  createdAtMs: number;
  /** `pages`: pages the node is the primary of; `replicaPages`: pages it holds another copy of. */
  nodes: ({ node: string; pages: number; replicaPages: number } & NodeUsage)[];
  /** Per down owner, the pages nobody can read or write until it is back. */
  unreachable: NodePageRuns[];
};

export type NodeRow = NodeUsage & {
  id: string;
  meshAddress: string;
  nbdAddress: string;
  state: "up" | "down";
  self: boolean;
  lastHeartbeatMs: number | null;
  heartbeatAgeMs: number | null;
  version: string | null;
  uptimeMs: number | null;
};

export type RouteShow = {
  /** As asked: VOL or VOL@SNAP. */
  name: string;
  volume: string;
  uid: string;
  version: number;
  pageSizeBytes: number;
  pageCount: number;
  moving?: MoveLock;
  /** Copies of each page; `runs` are the pages a node is the primary of, `replicaRuns` those it holds another copy of. */
  replicas: number;
  nodes: (NodePageRuns & { bytesUsed: number | null; replicaPages: number; replicaRuns: (PageRun & { text: string })[]; replicaRunCount: number })[];
  /** A replicated volume's replica sets as the node asked holds them (absent when it hosts no member of the volume). */
  replicaSets?: ReplicaSetsReport;
};

export interface ReplicaSetsReport {
  /** The recorded table: "v5 node1@1+node2@5 ...", each replica with the version it joined in. */
  table: string;
  /** Every page group has all its home replicas, and this node's copies are up to date. */
  whole: boolean;
  /** The nodes whose majority changes the volume's sets (a forgotten node is not one). */
  voters: string[];
  /** Bytes written through this node's member while a replica of their group was away. */
  writtenWhileAwayBytes: number;
  /** Page bytes this node sent in resync and join copies. */
  copiedBytes: number;
}

/** A replicated volume's page groups whose copy on a forgotten or drained node went to another node, and how many to each. */
export interface Rehomed {
  volume: string;
  groups: number;
  to: Record<string, number>;
}

export type MovePlanEntry = {
  volume: string;
  steps: { from: string; to: string; pages: number; list: string }[];
};

/** A move job as started, planned (dry run, or nothing to move) or polled with route status. */
export type MoveAnswer = {
  moveId?: string;
  kind: string;
  state: "planned" | "running" | "done" | "failed";
  dryRun?: boolean;
  pagesTotal: number;
  pagesMoved?: number;
  bytesMoved?: number;
  startedAtMs?: number;
  finishedAtMs?: number;
  error?: { code: string; message: string };
  plan?: MovePlanEntry[];
  /** A drain's replicated volumes: the copies re-homed off the node (the members move them in the background). */
  rehomed?: Rehomed[];
};

export type SnapshotTaken = {
  snapshotId: string;
  name: string;
  volumes: string[];
  mode: SnapshotMode;
  participants: string[];
  startedAtMs: number;
  cutAtMs: number | null;
  pendingOn: string[];
  /** Hold mode: per participant, how long it held and what the requests it queued waited. */
  holds: Record<string, { heldMs: number; queued: number; longestWaitMs: number }>;
  tookMs: number;
};

export type SnapshotRow = {
  name: string;
  snapshotId: string;
  volume: string;
  mode: SnapshotMode;
  cutAtMs: number;
  createdAtMs: number;
  state: "complete" | "degraded";
  bytesHeldOnlyByIt: number | null;
};

/** What an archive of a snapshot must hold: the manifest's identity fields, and where each page is. */
export type ArchivePlan = Pick<ArchiveManifest, "volume" | "volumeUid" | "sizeBytes" | "pageSizeBytes" | "snapshot" | "base"> & {
  /** Per owner's NBD address, the pages to pull from it directly. */
  owners: Record<string, number[]>;
  pages: number[];
};

/** Every admin operation's answer (admin-ops.ts indexes it by operation: one missing fails to compile). */
export type AdminResults = {
  "admin.node.info": NodeInfo;
  "admin.volume.create": VolumeSummary;
  "admin.volume.list": { volumes: VolumeSummary[] };
  "admin.volume.info": VolumeInfo;
  "admin.volume.restoring": VolumeSummary;
  "admin.volume.delete": { name: string; deleted: true };
  "admin.volume.changedSince": { volume: string; snapshot: string; changedPages: number };
  "admin.route.nodes": { nodes: NodeRow[] };
  "admin.route.show": RouteShow;
  "admin.route.move": MoveAnswer;
  "admin.route.rebalance": MoveAnswer;
  "admin.route.drain": MoveAnswer;
  "admin.route.status": MoveAnswer;
  "admin.route.forget": { node: string; forgotten: true; rehomed: Rehomed[] };
  "admin.snap.create": SnapshotTaken;
  "admin.snap.prepare": { name: string; snapshotId: string; volumes: string[]; mode: SnapshotMode; state: "ready" };
  "admin.snap.take": SnapshotTaken;
  "admin.snap.release": { name: string; outcome: "aborted" | "complete" };
  "admin.snap.list": { snapshots: SnapshotRow[] };
  "admin.snap.delete": { volume: string; name: string; snapshotId: string; deleted: true };
  "admin.snap.rollback": { volume: string; name: string; snapshotId: string; rolledBack: true };
  "admin.snap.clone": VolumeSummary & { origin: string };
  "admin.archive.plan": ArchivePlan;
};

