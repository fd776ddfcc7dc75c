// What a page-move simulation run records, and the knobs that shape it: the scenario, the
// deliberately broken rules, the named crash points. move-world.ts produces it; move-checker.ts
// judges it.


/** Deliberately broken rules, to prove the checker catches them. */
export interface MoveSabotage {
  /** The source commits as soon as it has sent the pages, without the target's answer. */
  commitBeforeInstalled?: boolean;
  /** The source lets queued requests run right after sending the pages, before the commit. */
  unfreezeBeforeCommit?: boolean;
  /** The target answers "installed" before the pages are durable (and never syncs them itself). */
  targetSkipsSync?: boolean;
  /**
   * On restart a node drops every page its durable table does not give it, including pages it
   * was sent for a version it has not seen yet (the rule page-move.ts's header describes).
   */
  restartRemovesByTableOnly?: boolean;
  /** The coordinator takes a step's "ok" without adopting the table it produced. */
  coordinatorForgetsTable?: boolean;
  /** The source builds the new version on its own table, even when that table is stale. */
  sourceIgnoresVersion?: boolean;
  /**
   * The entry owes a flush to the node it passed a write to rather than the node that applied it
   * after more forwarding, and a flush reaching a node flushes only that node's store.
   */
  flushMissesForwardedWrites?: boolean;
  /**
   * A node owes a flush to a peer by id only, so a peer that restarted (and lost the writes it had
   * not synced) answers the flush as if nothing happened: the rule before debts named the applier's
   * incarnation (transport/node/flush-debts.ts).
   */
  flushIgnoresRestart?: boolean;
  /**
   * A flush takes the node's debts and clears them as it starts (the rule before flush-debts.ts
   * settled only what a flush paid): a second flush running meanwhile finds nothing owed and
   * succeeds, though the first may fail.
   */
  flushClearsDebtsAtStart?: boolean;
}

export type SabotageName = keyof MoveSabotage;
export const SABOTAGE_NAMES: SabotageName[] = [
  "commitBeforeInstalled",
  "unfreezeBeforeCommit",
  "targetSkipsSync",
  "restartRemovesByTableOnly",
  "coordinatorForgetsTable",
  "sourceIgnoresVersion",
  "flushMissesForwardedWrites",
  "flushIgnoresRestart",
  "flushClearsDebtsAtStart",
];

export interface MoveWorldOptions {
  seed: number;
  sabotage?: MoveSabotage;
  trace?: (line: string) => void;
}

/** Named places where a planned crash can strike (the source ones: just before that effect runs). */
export const CRASH_POINTS = [
  "source:precopy",
  "source:freeze",
  "source:install",
  "source:commit",
  "source:publish",
  "source:remove",
  "source:unfreeze",
  "source:done",
  "source:after-batch",
  "target:written",
  "target:synced",
  "target:adopted",
  "coordinator:decided",
  "coordinator:sent",
  "owner:applied",
] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export interface MoveScenario {
  faultFree: boolean;
  nodeCount: number;
  pageCount: number;
  clientCount: number;
  stepsPlanned: number;
  delayMaxMs: number;
  lossRate: number;
  syncDelayMaxMs: number;
  /** Share of writes sent with FUA (durable before the answer); the rest wait for a flush. */
  fuaRate: number;
  /** How often a node's page cache is written back on its own. */
  writebackIntervalMs: number;
  gossipIntervalMs: number;
  installTimeoutMs: number;
  timedCrashes: number;
  /** A crash planned at the n-th time the run passes a named point. */
  plannedCrash?: { point: CrashPoint; occurrence: number };
  /** Chance of a crash at any named point, besides the planned one. */
  pointCrashRate: number;
  activeEndMs: number;
  quiesceEndMs: number;
}

export interface WriteRecord {
  stamp: string;
  client: number;
  page: number;
  fua: boolean;
  /** The node the client sent it to, and that node's incarnation when it relayed the answer. */
  entry: string;
  entryIncarnation: number;
  issueOrder: number;
  issueAtMs: number;
  ackOrder: number;
  ackAtMs: number;
  /** Infinity until some owner applied it; a stamp is applied at most once. */
  applyOrder: number;
  appliedAt?: string;
  applyCount: number;
}

/** A client's flush: it makes durable every write the same connection had acknowledged before. */
export interface FlushRecord {
  flushId: string;
  client: number;
  entry: string;
  entryIncarnation: number;
  issueOrder: number;
  issueAtMs: number;
  ackOrder: number;
}

export interface ReadRecord {
  readId: string;
  page: number;
  issueOrder: number;
  issueAtMs: number;
  /** Infinity if the client never got the answer. */
  returnOrder: number;
  value: string | undefined;
  servedBy?: string;
}

/** One fact in the run's single real-time order, for the checker to replay. */
export type TimelineEvent =
  | { kind: "commit"; order: number; atMs: number; node: string; version: number; owners: string[] }
  /** A node's in-memory table changed, or it went down (owners empty) or came up. */
  | { kind: "belief"; order: number; atMs: number; node: string; up: boolean; version: number; owners: string[] }
  | { kind: "apply"; order: number; atMs: number; node: string; page: number; stamp: string }
  | { kind: "serve"; order: number; atMs: number; node: string; page: number; readId: string };

export interface FinalNode {
  id: string;
  up: boolean;
  table: { version: number; owners: string[] };
  durableTable: { version: number; owners: string[] };
  /** page -> stamp ("" for a page written as zeros never; absent pages are left out). */
  memoryPages: Map<number, string | undefined>;
  durablePages: Map<number, string | undefined>;
  frozen: number;
  queued: number;
  stepRunning: boolean;
}

export interface MoveHistory {
  seed: number;
  scenario: MoveScenario;
  nodes: string[];
  coordinator: string;
  initialTable: { version: number; owners: string[] };
  writes: Map<string, WriteRecord>;
  reads: ReadRecord[];
  flushes: FlushRecord[];
  timeline: TimelineEvent[];
  stepsCommitted: number;
  stepAttempts: number;
  stepOutcomes: Map<string, number>;
  crashes: number;
  final: FinalNode[];
  errors: string[];
  eventCount: number;
}
