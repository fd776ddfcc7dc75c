// The page-move world's pieces below the world itself: the messages on its mesh, the requests
// clients send, a node split into what a crash keeps (table, synced pages, the coordinator's
// plan) and what it drops, the scenario draw and small helpers.
import type { MoveStepRunner, StepCompletion } from "../../core/move/move-step-runner.ts";
import type { RoutingTable } from "../../core/cluster/routing.ts";
import { SimNode } from "./kernel/sim-node.ts";
import type { Prng } from "./kernel/prng.ts";
import { CRASH_POINTS, type FinalNode, type MoveScenario } from "./move-history.ts";

export const VOLUME = "vol";
export const VOLUME_UID = "vol-uid";
export const MAX_HOPS = 3;
export const EVENT_BUDGET = 300_000;
export const QUIET_DELAY_MAX_MS = 2;
export const PUBLISH_TIMEOUT_MS = 30;
export const COORDINATOR_TIMEOUT_MS = 250;
export const CLIENT_TIMEOUT_MS = 300;
export const FLUSH_TIMEOUT_MS = 60;
export const MAX_POINT_CRASHES = 3;

export interface PageCopy {
  /** The stamp of the last write; undefined for a page moved before anyone wrote it. */
  stamp: string | undefined;
  /** The routing version an install brought it for (0: written here as its owner). */
  installedFor: number;
}

export interface ClientOp {
  id: string;
  client: number;
  kind: "write" | "read" | "flush";
  page: number;
  /** A write that must be durable before its answer (NBD FUA); others wait for a flush. */
  fua: boolean;
  /** The node the client is connected to; answers go back through it, as replies on the mesh do. */
  entry: string;
  /** The entry's incarnation when the request arrived: a restart ends the connection. */
  entryIncarnation: number;
  /** The nodes that passed it on, entry first: the answer goes back the same way. */
  path: { node: string; incarnation: number }[];
}

/** A flush owed to a peer: since its incarnation then; `seq` tells a debt settled from one renewed since. */
export interface FlushDebt {
  incarnation: number | undefined;
  seq: number;
}

export interface PendingFlush {
  op: ClientOp;
  peers: [string, FlushDebt][];
  waiting: Set<string>;
}

export interface DecidedStep {
  stepId: string;
  version: number;
  from: string;
  to: string;
  pages: number[];
}

export interface RunningStep extends StepAttempt {
  /** The node's own step runner around the step's state machine. */
  runner: MoveStepRunner;
}

/** One attempt at a step on its source, and what it waits for. */
export interface StepAttempt {
  /** Completions the source waits for, fed by the target's answers. */
  copied?: (result: { written: number[] }) => void;
  installed?: StepCompletion;
  published?: StepCompletion;
  decided: DecidedStep;
  /** Unique per attempt: answers to an earlier attempt are ignored, as request ids do on the mesh. */
  key: string;
  coordinator: string;
  timerGeneration: number;
  publishTimer: number;
}

export type Payload =
  | { kind: "request"; op: ClientOp; hops: number }
  | { kind: "reply"; opId: string; ok: boolean; stamp?: string; code?: string; entryIncarnation: number }
  /** `by`: the node that answered on this hop; `appliedBy`: the one that applied the write. */
  | { kind: "answer"; op: ClientOp; ok: boolean; stamp?: string; code?: string; by: string; appliedBy: string; appliedIncarnation: number }
  /** Sync your store; fail if you restarted since `expectIncarnation` (writes may be lost). */
  | { kind: "store.flush"; key: string; expectIncarnation?: number }
  | { kind: "store.flushed"; key: string; ok: boolean }
  | { kind: "step.start"; step: DecidedStep; key: string }
  | { kind: "step.done"; stepId: string; key: string; ok: boolean; table?: RoutingTable; code?: string }
  | { kind: "install"; key: string; version: number; pages: [number, PageCopy | undefined][]; precopy?: boolean }
  | { kind: "installed"; key: string; precopy?: boolean }
  | { kind: "publish"; key: string; table: RoutingTable }
  | { kind: "published"; key: string }
  | { kind: "gossip"; table: RoutingTable; answer: boolean };

/** What survives a crash: the catalog's table, the synced pages, the coordinator's plan. */
export interface Durable {
  table: RoutingTable;
  pages: Map<number, PageCopy>;
  coordinatorPlan?: { committed: number; decided?: DecidedStep; attempts: number };
}

/** What a crash drops; a restart rebuilds the table and page cache from the durable part. */
export interface Volatile {
  table: RoutingTable;
  memoryPages: Map<number, PageCopy>;
  frozen: Set<number>;
  /** While a step copies its pages unfrozen: the pages written meanwhile, sent again frozen. */
  copyWritten: Set<number> | undefined;
  queue: { op: ClientOp; hops: number }[];
  running: RunningStep | undefined;
  coordinatorWaiting: { key: string; timer: number } | undefined;
  /** Peers this node forwarded writes to since its last flush, with their incarnation then. */
  dirtyPeers: Map<string, FlushDebt>;
  flushes: Map<string, PendingFlush>;
}

export function freshVolatile(durable: Durable): Volatile {
  return {
    table: cloneTable(durable.table),
    memoryPages: new Map([...durable.pages].map(([page, copy]) => [page, { ...copy }])),
    frozen: new Set(),
    copyWritten: undefined,
    queue: [],
    running: undefined,
    coordinatorWaiting: undefined,
    dirtyPeers: new Map(),
    flushes: new Map(),
  };
}

export class MoveNode extends SimNode<Durable, Volatile> {
  constructor(id: string, table: RoutingTable) {
    super(id, { table: cloneTable(table), pages: new Map() }, freshVolatile);
  }
}

export interface ClientState {
  id: number;
  seq: number;
  current?: ClientOp;
  /** The node of the client's current connection, and how many more requests it sends on it. */
  entry?: string;
  sessionOpsLeft: number;
}

export function makeScenario(rng: Prng): MoveScenario {
  const faultFree = rng.chance(0.2);
  const planned = !faultFree && rng.chance(0.7);
  const delayMaxMs = rng.pick([0.5, 2, 5, 12]);
  const syncDelayMaxMs = rng.range(0, 3);
  return {
    faultFree,
    nodeCount: rng.int(3, 4),
    pageCount: rng.int(3, 8),
    clientCount: rng.int(1, 3),
    stepsPlanned: rng.int(2, 6),
    delayMaxMs,
    lossRate: faultFree ? 0 : rng.pick([0, 0.01, 0.05]),
    syncDelayMaxMs,
    fuaRate: rng.pick([1, 0.5, 0.1, 0]),
    writebackIntervalMs: rng.range(20, 200),
    gossipIntervalMs: rng.range(10, 40),
    // Above a round trip with a sync in it, or no install could ever finish; tight enough that
    // some attempts time out and abort.
    installTimeoutMs: 2 * delayMaxMs + syncDelayMaxMs + rng.range(1, 40),
    timedCrashes: faultFree ? 0 : rng.int(0, 2),
    ...(planned ? { plannedCrash: { point: rng.pick(CRASH_POINTS), occurrence: rng.int(1, 3) } } : {}),
    pointCrashRate: faultFree || rng.chance(0.5) ? 0 : rng.range(0.005, 0.05),
    activeEndMs: 400,
    quiesceEndMs: 1600,
  };
}

export function syncPages(node: MoveNode, pages: number[]): void {
  for (const page of pages) {
    const copy = node.volatile.memoryPages.get(page);
    if (copy === undefined) node.durable.pages.delete(page);
    else node.durable.pages.set(page, { ...copy });
  }
}

export function copyOf(copy: PageCopy | undefined): PageCopy | undefined {
  return copy === undefined ? undefined : { ...copy };
}

export function cloneTable(table: RoutingTable): RoutingTable {
  return { version: table.version, nodes: [...table.nodes], owners: new Uint16Array(table.owners) };
}

export function ownersOf(table: RoutingTable): string[] {
  return Array.from(table.owners, (index) => table.nodes[index]!);
}

export function describeTable(table: RoutingTable): { version: number; owners: string[] } {
  return { version: table.version, owners: ownersOf(table) };
}

export function finalNode(node: MoveNode): FinalNode {
  const stamps = (pages: Map<number, PageCopy>): Map<number, string | undefined> => new Map([...pages].map(([page, copy]) => [page, copy.stamp]));
  return {
    id: node.id,
    up: node.up,
    table: describeTable(node.volatile.table),
    durableTable: describeTable(node.durable.table),
    memoryPages: stamps(node.volatile.memoryPages),
    durablePages: stamps(node.durable.pages),
    frozen: node.volatile.frozen.size,
    queued: node.volatile.queue.length,
    stepRunning: node.volatile.running !== undefined,
  };
}
