// The replica-set world's pieces below the world itself: a member split into what a crash keeps
// (its catalog, folded from the records its runner handed out, and its page store's chunks) and
// what it drops (the runner, core/replica/replica-member.ts, with its suspicion clocks, proposers
// and copies in flight, and records not yet durable), the messages on the mesh, the scenario draw,
// the sabotage switches and the history the checker judges.
import type { Ballot } from "../../core/replica/acceptor.ts";
import type { ChunkValue } from "../../core/replica/fence.ts";
import type { PeerMessage } from "../../core/replica/member-messages.ts";
import { initialMemberState, type MemberState } from "../../core/replica/member-state.ts";
import type { ReplicaMember } from "../../core/replica/replica-member.ts";
import type { ReplicaTable } from "../../core/replica/replica-table.ts";
import type { Prng } from "./kernel/prng.ts";
import { SimNode } from "./kernel/sim-node.ts";

export type ReplicaMode = "r2" | "r3";
export const REPLICA_MODES: ReplicaMode[] = ["r2", "r3"];

export const EVENT_BUDGET = 400_000;
export const CHUNKS_PER_GROUP = 4;
export const HEARTBEAT_INTERVAL_MS = 15;
export const SUSPECT_AFTER_MS = 75;
export const POLICY_INTERVAL_MS = 20;
/** After the heal, how often the world looks whether everything settled (then it lets its timers run out). */
export const SETTLE_CHECK_MS = 25;
export const COPY_BATCH_CHUNKS = 2;
export const JOIN_CHUNKS_MAX = 2;
export const COPY_TIMEOUT_MS = 40;
export const JOIN_RESEND_MS = 30;
export const CLIENT_RETRY_MS = 40;
export const RECORD_DELAY_MS = 25;
export const PROPOSER = { attemptTimeoutMs: 40, backoffMs: 15, maxAttempts: 6 };

export interface ReplicaSabotage {
  /** The host reports acceptor slot records durable RECORD_DELAY_MS before they are, so promises and acceptances leave first (a crash between forgets them). */
  acceptorRepliesBeforeDurable?: boolean;
  /** Proposers count a minority of promises and acceptances as a quorum. */
  minorityQuorum?: boolean;
  /** Proposers ignore values already accepted for the slot. */
  ignoreAccepted?: boolean;
  /** Replicas serve writes and reads routed by any version. */
  ignoreFence?: boolean;
  /** A client counts a replica that has not recorded the write's version yet ("behind") as done: the version is live before it is active. */
  activateBeforeRecorded?: boolean;
  /** Survivors send the joiner its join copy without the chunks it still lacks (the resync is taken as enough). */
  joinWithoutCopy?: boolean;
  /** A read takes the first replica's answer without the others confirming the version. */
  readFromOne?: boolean;
  /** A resync source forgets a chunk as it sends the copy, not when the copy is confirmed. */
  resyncForgetsOnSend?: boolean;
  /** A member applies every resync copy it gets (any sender, any version, in the set or not). */
  takeAnyCopy?: boolean;
}
export const SABOTAGE_NAMES = [
  "acceptorRepliesBeforeDurable",
  "minorityQuorum",
  "ignoreAccepted",
  "ignoreFence",
  "activateBeforeRecorded",
  "joinWithoutCopy",
  "readFromOne",
  "resyncForgetsOnSend",
  "takeAnyCopy",
] as const;

export interface ReplicaScenario {
  mode: ReplicaMode;
  memberCount: number;
  volumeCount: number;
  groupsPerVolume: number;
  writerCount: number;
  readerCount: number;
  delayMaxMs: number;
  lossRate: number;
  dupRate: number;
  crashes: number;
  pauses: number;
  partitions: number;
  /** Chance that a member crashes right after it sent a promise or an acceptance. */
  pointCrashRate: number;
  /** How long a record write takes to become durable (what waits on it waits that long; a crash before loses it). */
  persistDelayMs: number;
  activeEndMs: number;
  quiesceEndMs: number;
}

export function makeScenario(rng: Prng, mode: ReplicaMode): ReplicaScenario {
  const memberCount = rng.int(3, 5);
  const calm = rng.chance(0.1);
  return {
    mode,
    memberCount,
    volumeCount: rng.int(1, 2),
    groupsPerVolume: rng.int(1, 3),
    writerCount: rng.int(2, 4),
    readerCount: rng.int(1, 2),
    delayMaxMs: rng.range(0.5, 6),
    lossRate: calm ? 0 : rng.pick([0, 0.01, 0.05, 0.1]),
    dupRate: calm ? 0 : rng.pick([0, 0.05, 0.2]),
    crashes: calm ? 0 : rng.int(0, 4),
    pauses: calm ? 0 : rng.int(0, 2),
    partitions: calm ? 0 : rng.int(0, 2),
    pointCrashRate: calm ? 0 : rng.pick([0, 0.02, 0.05, 0.1]),
    persistDelayMs: calm ? 0 : rng.pick([0, 0, 0.5, 2, 6]),
    activeEndMs: 1200,
    quiesceEndMs: 4000,
  };
}

export interface MemberDisk {
  /** The member's catalog: its state as the records it handed out made it (member-state.ts). */
  catalog: MemberState;
  /** The page store: `${volume}/${group}/${chunk}` -> the register's value here. */
  chunks: Map<string, ChunkValue>;
}

export interface MemberProcess {
  /** The protocol's state machine, rebuilt from the catalog at each restart. */
  runner: ReplicaMember;
  /** The tick asked for and armed (one timer at a time; an earlier wish arms another). */
  wakeAtMs: number;
  /** When the last record write queued will be durable (records are written in order). */
  persistDoneAtMs: number;
  /** Records written but not durable yet: a crash loses them. */
  persisting: number;
  /** Requests handed to the runner and not answered yet: who asked, and a write's value. */
  requests: Map<number, { from: string; attempt: number; value?: ChunkValue }>;
  /** Values this process accepted, by slot and ballot: the history counts an acceptance when its reply leaves. */
  acceptances: Map<string, ReplicaTable>;
}

export class Member extends SimNode<MemberDisk, MemberProcess> {
  /** `boot` builds the runner from the disk, as a node's start does (the world knows the incarnation). */
  constructor(id: string, tables: ReplicaTable[], boot: (id: string, disk: MemberDisk) => ReplicaMember) {
    const disk: MemberDisk = { catalog: initialMemberState(id, tables), chunks: new Map() };
    super(id, disk, (d) => ({ runner: boot(id, d), wakeAtMs: Infinity, persistDoneAtMs: 0, persisting: 0, requests: new Map(), acceptances: new Map() }));
  }
}

/** What travels on the simulated mesh: members' messages (a copy or join with its chunks' data) and clients' requests and answers. */
export type Payload =
  | { kind: "peer"; message: PeerMessage; data?: [number, ChunkValue][] }
  | { kind: "write"; attempt: number; volume: string; group: number; chunk: number; value: ChunkValue; routed: number }
  | { kind: "read"; attempt: number; volume: string; group: number; chunk: number; routed: number }
  /** `order`: when the replica served it, in the history's order (the simulation's bookkeeping, not the protocol's). */
  | { kind: "answer"; attempt: number; ok: boolean; reason?: string; value?: ChunkValue; table?: ReplicaTable; order: number };

/** One register's identity: `${volume}/${group}/${chunk}`. */
export function registerKey(volume: string, group: number, chunk: number): string {
  return `${volume}/${group}/${chunk}`;
}

export interface WriteRecord {
  register: string;
  stamp: number;
  issuedOrder: number;
  ackOrder: number;
  ackVersion: number;
  /** Which replica served the acknowledging attempt when (history order): the write is acknowledged in effect at the last. */
  applies: { node: string; order: number }[];
}

export interface ReadRecord {
  register: string;
  issuedOrder: number;
  returnOrder: number;
  stamp: number;
  version: number;
  from: string;
}

export type HistoryEvent =
  | { kind: "record"; order: number; node: string; volume: string; version: number; table: ReplicaTable }
  | { kind: "accepted"; order: number; node: string; volume: string; version: number; ballot: Ballot; value: ReplicaTable }
  | { kind: "claimed"; order: number; node: string; volume: string; version: number; value: ReplicaTable };

export interface ReplicaHistory {
  seed: number;
  scenario: ReplicaScenario;
  members: string[];
  home: Map<string, string[][]>;
  writes: WriteRecord[];
  reads: ReadRecord[];
  events: HistoryEvent[];
  /** Writes still unacknowledged at the end (with their register and stamp). */
  pendingWrites: string[];
  final: { node: string; tables: ReplicaTable[]; chunks: Map<string, number>; syncedSince: Map<string, number>; proposers: number }[];
  crashes: number;
  pauses: number;
  partitions: number;
  setChanges: number;
  /** An operator re-homed a node's copies: drained it (live) or forgot it (down until the heal); how many volumes it finished. */
  operator?: { leaving: "gone" | "live"; node: string; volumesRehomed: number };
  /** What the protocol did, so the suite can tell the runs exercised it: refusals by reason, resync copies and join copies applied. */
  refusals: Map<string, number>;
  copiesApplied: number;
  joinsApplied: number;
  /** Record writes a crash caught before they were durable (what waited on them never left). */
  recordWritesLost: number;
  errors: string[];
  eventCount: number;
}
