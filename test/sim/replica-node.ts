// The replica-set world's pieces below the world itself: a member split into what a crash keeps
// (recorded tables = fences, Paxos slot records, chunk registers, which membership each copy is
// up to date for, changed-while-away maps) and what it drops (suspicion clocks, proposers, copies in flight), the messages on the
// mesh, the scenario draw, the sabotage switches and the history the checker judges.
import type { AcceptorReply, Ballot, SlotRecord } from "../../core/replica/acceptor.ts";
import type { AwayMapState } from "../../core/replica/away-map.ts";
import type { ChunkValue } from "../../core/replica/fence.ts";
import type { ReplicaTable } from "../../core/replica/replica-table.ts";
import type { SetChangeProposer } from "../../core/replica/set-change-proposer.ts";
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
  /** Acceptors answer at once and write their record RECORD_DELAY_MS later (a crash between forgets it). */
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
  /** Chance that a member crashes right after an acceptor reply that changed its record. */
  pointCrashRate: number;
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
    activeEndMs: 1200,
    quiesceEndMs: 4000,
  };
}

export interface MemberDurable {
  /** volume -> the newest chosen table recorded here: this member's fence for the volume. */
  tables: Map<string, ReplicaTable>;
  /** `${volume}@${version}` -> the acceptor's record for that slot. */
  slots: Map<string, SlotRecord>;
  /** `${volume}/${group}/${chunk}` -> the register's value here. */
  chunks: Map<string, ChunkValue>;
  /** `${volume}/${group}` -> the version this copy was last brought up to date for. */
  syncedSince: Map<string, number>;
  /** `${volume}/${group}/${node}` -> what that absent replica lacks. */
  awayMaps: Map<string, AwayMapState>;
  /** `${volume}/${group}/${node}@${since}`: that replica confirmed to this member that its copy is up to date for that membership. */
  peersUpToDate: Set<string>;
}

export interface MemberVolatile {
  lastHeardMs: Map<string, number>;
  proposers: Map<string, SetChangeProposer>;
  proposerTimer: Map<string, number>;
  /** Copies sent and not yet confirmed: batch id -> what it carried. */
  copiesInFlight: Map<number, { key: string; chunks: number[] }>;
  /** Acceptor records not yet on disk (only with acceptorRepliesBeforeDurable). */
  unsynced: Map<string, SlotRecord>;
}

export class Member extends SimNode<MemberDurable, MemberVolatile> {
  constructor(id: string, tables: ReplicaTable[]) {
    const durable: MemberDurable = { tables: new Map(tables.map((t) => [t.volume, t])), slots: new Map(), chunks: new Map(), syncedSince: new Map(), awayMaps: new Map(), peersUpToDate: new Set() };
    for (const table of tables) table.sets.forEach((set, group) => set.some((e) => e.node === id) && durable.syncedSince.set(`${table.volume}/${group}`, 1));
    super(id, durable, () => ({
      lastHeardMs: new Map(),
      proposers: new Map(),
      proposerTimer: new Map(),
      copiesInFlight: new Map(),
      unsynced: new Map(),
    }));
  }
}

export type Payload =
  | { kind: "heartbeat"; tables: ReplicaTable[] }
  | { kind: "prepare"; volume: string; version: number; ballot: Ballot }
  | { kind: "accept"; volume: string; version: number; ballot: Ballot; value: ReplicaTable }
  | { kind: "acceptor-reply"; volume: string; reply: AcceptorReply }
  | { kind: "write"; attempt: number; volume: string; group: number; chunk: number; value: ChunkValue; routed: number }
  | { kind: "read"; attempt: number; volume: string; group: number; chunk: number; routed: number }
  /** `order`: when the replica served it, in the history's order (the simulation's bookkeeping, not the protocol's). */
  | { kind: "answer"; attempt: number; ok: boolean; reason?: string; value?: ChunkValue; table: ReplicaTable; order: number }
  | { kind: "copy"; batch: number; volume: string; group: number; chunks: [number, ChunkValue][] }
  | { kind: "copied"; batch: number }
  | { kind: "join-request"; volume: string; group: number; since: number }
  | { kind: "join"; table: ReplicaTable; group: number; since: number; chunks: [number, ChunkValue][] }
  | { kind: "joined"; volume: string; group: number; since: number };

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
  /** What the protocol did, so the suite can tell the runs exercised it: refusals by reason, resync copies and join copies applied. */
  refusals: Map<string, number>;
  copiesApplied: number;
  joinsApplied: number;
  errors: string[];
  eventCount: number;
}
