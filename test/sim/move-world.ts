// A deterministic world for the page-move protocol: 3-4 simulated nodes sharing one volume, each
// with a durable and an in-memory routing table and a page store whose writes survive a crash only
// once synced; clients on connections to random nodes writing stamped values (FUA or not), reading
// and flushing; nodes that route by their own (maybe stale) tables and pass requests on (at most
// MAX_HOPS times), answers going back the same way; tables spread by gossip; one coordinator
// running moves as core/page-move.ts MoveSteps on the sources; a lossy, delaying network (FIFO per
// link, like the mesh's TCP connections, reordered across links); crashes anywhere, including
// between every two effects of a step. It records a history; move-checker.ts judges it.
//
// Rules the world follows where the real node's are not written down yet (each has a broken
// variant in MoveSabotage that the checker catches):
//   - a node keeps, across restarts, pages installed for a routing version newer than its table;
//   - a step's version is decided once, durably, by the coordinator, and the source commits it
//     only on top of the version before it (the coordinator learns the new table from the answer);
//   - answers carry the node (and incarnation, standing for a boot id) that applied a write; the
//     entry owes that node a flush from when the answer arrives; store.flush syncs one store and
//     fails if that node restarted since; a debt is settled only by a flush that succeeded.
import { MoveStep, type MoveStepEffect } from "../../core/page-move.ts";
import { ownerOf, pagesOf, stripedTable, withOwner, type RoutingTable } from "../../core/routing.ts";
import { Network } from "./kernel/network.ts";
import { Prng } from "./kernel/prng.ts";
import { Scheduler } from "./kernel/scheduler.ts";
import { SimNode } from "./kernel/sim-node.ts";

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
  restartDropsByTableOnly?: boolean;
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
   * not synced) answers the flush as if nothing happened: the rule of today's VolumeRouter.dirtyPeers.
   */
  flushIgnoresRestart?: boolean;
  /**
   * A flush takes the node's debts and clears them as it starts (today's VolumeRouter.flush): a
   * second flush running meanwhile finds nothing owed and succeeds, though the first may fail.
   */
  flushClearsDebtsAtStart?: boolean;
}

export type SabotageName = keyof MoveSabotage;
export const SABOTAGE_NAMES: SabotageName[] = [
  "commitBeforeInstalled",
  "unfreezeBeforeCommit",
  "targetSkipsSync",
  "restartDropsByTableOnly",
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
  "source:drop",
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

const VOLUME = "vol";
const VOLUME_UID = "vol-uid";
const MAX_HOPS = 3;
const EVENT_BUDGET = 300_000;
const QUIET_DELAY_MAX_MS = 2;
const PUBLISH_TIMEOUT_MS = 30;
const COORDINATOR_TIMEOUT_MS = 250;
const CLIENT_TIMEOUT_MS = 300;
const FLUSH_TIMEOUT_MS = 60;
const MAX_POINT_CRASHES = 3;

interface PageCopy {
  /** The stamp of the last write; undefined for a page moved before anyone wrote it. */
  stamp: string | undefined;
  /** The routing version an install brought it for (0: written here as its owner). */
  installedFor: number;
}

interface ClientOp {
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
interface FlushDebt {
  incarnation: number | undefined;
  seq: number;
}

interface PendingFlush {
  op: ClientOp;
  peers: [string, FlushDebt][];
  waiting: Set<string>;
}

interface DecidedStep {
  stepId: string;
  version: number;
  from: string;
  to: string;
  pages: number[];
}

interface RunningStep {
  machine: MoveStep;
  decided: DecidedStep;
  /** Unique per attempt: answers to an earlier attempt are ignored, as request ids do on the mesh. */
  key: string;
  coordinator: string;
  timerGeneration: number;
  publishTimer: number;
}

type Payload =
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
interface Durable {
  table: RoutingTable;
  pages: Map<number, PageCopy>;
  coordinatorPlan?: { committed: number; decided?: DecidedStep; attempts: number };
}

/** What a crash drops; a restart rebuilds the table and page cache from the durable part. */
interface Volatile {
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

function freshVolatile(durable: Durable): Volatile {
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

class MoveNode extends SimNode<Durable, Volatile> {
  constructor(id: string, table: RoutingTable) {
    super(id, { table: cloneTable(table), pages: new Map() }, freshVolatile);
  }
}

interface ClientState {
  id: number;
  seq: number;
  current?: ClientOp;
  /** The node of the client's current connection, and how many more requests it sends on it. */
  entry?: string;
  sessionOpsLeft: number;
}

export function runMoveWorld(options: MoveWorldOptions): MoveHistory {
  return new MoveWorld(options).run();
}

class MoveWorld {
  private order = 0;
  private timerSeq = 0;
  private readonly sim: Scheduler;
  private readonly network: Network<Payload>;
  private readonly rng: Prng;
  private readonly faultRng: Prng;
  private readonly scenario: MoveScenario;
  private readonly sabotage: MoveSabotage;
  private readonly nodes: MoveNode[] = [];
  private readonly byId = new Map<string, MoveNode>();
  private readonly clients: ClientState[] = [];
  private readonly history: MoveHistory;
  private readonly pointsPassed = new Map<CrashPoint, number>();
  private pointCrashesLeft = MAX_POINT_CRASHES;
  private debtSeq = 0;
  private healed = false;
  private readonly coordinatorId: string;

  constructor(options: MoveWorldOptions) {
    this.sim = new Scheduler(options.trace);
    this.rng = new Prng(options.seed);
    this.faultRng = this.rng.fork();
    const netRng = this.rng.fork();
    this.sabotage = options.sabotage ?? {};
    this.scenario = makeScenario(this.rng);
    // FIFO per link, like the mesh's TCP connections, reordered across links; lossy, no duplicates.
    const netOptions = { delayMaxMs: this.scenario.delayMaxMs, lossRate: this.scenario.lossRate, fifoPerLink: true, selfImmediate: false };
    this.network = new Network<Payload>(this.sim, netRng, netOptions, (from, to, payload) => this.deliver(from, to, payload), (from, to, payload) =>
      this.log(`${from} -> ${to} ${payload.kind} LOST`),
    );
    const ids = Array.from({ length: this.scenario.nodeCount }, (_, i) => `n${i}`);
    const initial = stripedTable(this.scenario.pageCount, ids);
    for (const id of ids) {
      const node = new MoveNode(id, initial);
      this.nodes.push(node);
      this.byId.set(id, node);
    }
    this.coordinatorId = this.rng.pick(ids);
    this.byId.get(this.coordinatorId)!.durable.coordinatorPlan = { committed: 0, attempts: 0 };
    this.history = {
      seed: options.seed,
      scenario: this.scenario,
      nodes: ids,
      coordinator: this.coordinatorId,
      initialTable: describeTable(initial),
      writes: new Map(),
      reads: [],
      flushes: [],
      timeline: [],
      stepsCommitted: 0,
      stepAttempts: 0,
      stepOutcomes: new Map(),
      crashes: 0,
      final: [],
      errors: [],
      eventCount: 0,
    };
    for (const node of this.nodes) this.recordBelief(node);
  }

  run(): MoveHistory {
    this.planWorkload();
    this.planFaults();
    this.at(this.scenario.activeEndMs, () => this.heal());
    const { events, error } = this.sim.run(this.scenario.quiesceEndMs, EVENT_BUDGET);
    if (error !== undefined) this.history.errors.push(error);
    this.history.eventCount = events;
    this.history.stepsCommitted = this.byId.get(this.coordinatorId)!.durable.coordinatorPlan!.committed;
    this.history.final = this.nodes.map(finalNode);
    return this.history;
  }

  // ---- scheduling

  private get nowMs(): number {
    return this.sim.nowMs;
  }

  private at(atMs: number, run: () => void): void {
    this.sim.at(atMs, run);
  }

  private atOn(node: MoveNode, atMs: number, run: () => void): void {
    this.sim.atOn(node, atMs, run);
  }

  private log(line: string): void {
    this.sim.log(line);
  }

  // ---- workload and faults

  private planWorkload(): void {
    for (let i = 0; i < this.scenario.clientCount; i++) {
      const client: ClientState = { id: i, seq: 0, sessionOpsLeft: 0 };
      this.clients.push(client);
      this.at(this.rng.range(0, 5), () => this.issue(client));
    }
    for (const node of this.nodes) {
      this.atOn(node, this.rng.range(0, this.scenario.gossipIntervalMs), () => this.gossip(node));
      this.atOn(node, this.rng.range(0, this.scenario.writebackIntervalMs), () => this.writeback(node));
    }
    const coordinator = this.byId.get(this.coordinatorId)!;
    this.atOn(coordinator, this.rng.range(0, 40), () => this.coordinate(coordinator));
  }

  private planFaults(): void {
    for (let i = 0; i < this.scenario.timedCrashes; i++) {
      const node = this.faultRng.pick(this.nodes);
      this.at(this.faultRng.range(0, this.scenario.activeEndMs - 20), () => this.crash(node, "timed"));
    }
  }

  private heal(): void {
    this.healed = true;
    this.network.heal();
    for (const node of this.nodes) if (!node.up) this.restart(node);
  }

  /** True if the node crashed here: the caller stops what it was doing. */
  private crashPoint(node: MoveNode, point: CrashPoint): boolean {
    if (this.healed || !node.up) return false;
    const passed = (this.pointsPassed.get(point) ?? 0) + 1;
    this.pointsPassed.set(point, passed);
    const planned = this.scenario.plannedCrash;
    const hit = planned !== undefined && planned.point === point && planned.occurrence === passed;
    if (!hit && (this.pointCrashesLeft <= 0 || !this.faultRng.chance(this.scenario.pointCrashRate))) return false;
    if (!hit) this.pointCrashesLeft--;
    this.crash(node, point);
    return true;
  }

  // ---- node lifecycle

  private crash(node: MoveNode, why: string): void {
    if (!node.up || this.healed) return;
    this.history.crashes++;
    const downMs = this.faultRng.chance(0.3) ? this.faultRng.range(0.5, 10) : this.faultRng.range(10, 150);
    this.log(`${node.id} CRASH at ${why} (down ${downMs.toFixed(1)} ms)`);
    node.crash();
    this.recordBelief(node);
    this.at(this.nowMs + downMs, () => this.restart(node));
  }

  private restart(node: MoveNode): void {
    if (node.up) return;
    node.restart();
    this.log(`${node.id} RESTART (table v${node.volatile.table.version})`);
    this.dropUnowned(node, this.sabotage.restartDropsByTableOnly === true);
    this.recordBelief(node);
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.gossipIntervalMs), () => this.gossip(node));
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.writebackIntervalMs), () => this.writeback(node));
    if (node.durable.coordinatorPlan) this.atOn(node, this.nowMs + this.rng.range(0, 10), () => this.coordinate(node));
  }

  /**
   * Drops copies of pages this node does not own, except pages sent to it for a routing version
   * newer than its table: that step may have committed at the source, which dropped its own copy.
   */
  private dropUnowned(node: MoveNode, ignoreInstallVersion: boolean): void {
    for (const pages of [node.volatile.memoryPages, node.durable.pages]) {
      for (const [page, copy] of pages) {
        if (ownerOf(node.volatile.table, page) === node.id) continue;
        if (!ignoreInstallVersion && copy.installedFor > node.volatile.table.version) continue;
        pages.delete(page);
        if (pages === node.durable.pages) this.log(`${node.id} drops its copy of page ${page} (not its own in v${node.volatile.table.version})`);
      }
    }
  }

  private recordBelief(node: MoveNode): void {
    this.history.timeline.push({
      kind: "belief",
      order: ++this.order,
      atMs: this.nowMs,
      node: node.id,
      up: node.up,
      version: node.volatile.table.version,
      owners: node.up ? ownersOf(node.volatile.table) : [],
    });
  }

  /** A newer table from gossip, a publish or a step's answer: durable first, as the catalog does. */
  private adopt(node: MoveNode, table: RoutingTable): boolean {
    if (table.version <= node.volatile.table.version) return false;
    node.durable.table = cloneTable(table);
    node.volatile.table = cloneTable(table);
    this.log(`${node.id} adopts table v${table.version} ${ownersOf(table).join(",")}`);
    this.dropUnowned(node, false);
    this.recordBelief(node);
    return true;
  }

  // ---- network

  private send(from: string, to: string, payload: Payload): void {
    this.network.send(from, to, payload);
  }

  private deliver(from: string, to: string, payload: Payload): void {
    if (payload.kind === "reply") return this.receiveReply(payload);
    const node = this.byId.get(to)!;
    if (!node.up) return;
    switch (payload.kind) {
      case "request": {
        // Arriving from the client: this node is the entry of the connection.
        const fromClient = from.startsWith("client");
        return this.route(node, fromClient ? { ...payload.op, entryIncarnation: node.incarnation } : payload.op, payload.hops);
      }
      case "answer":
        return this.passAnswerBack(node, payload);
      case "store.flush": {
        const expected = payload.expectIncarnation;
        // Restarted since the writes it owes: they may be gone, and the flush must say so.
        if (expected !== undefined && expected !== node.incarnation) return this.send(node.id, from, { kind: "store.flushed", key: payload.key, ok: false });
        syncPages(node, [...node.volatile.memoryPages.keys()]);
        return this.send(node.id, from, { kind: "store.flushed", key: payload.key, ok: true });
      }
      case "store.flushed":
        return this.flushAnswered(node, from, payload.key, payload.ok);
      case "step.start":
        return this.startStep(node, from, payload.step, payload.key);
      case "step.done":
        return this.stepDone(node, payload);
      case "install":
        return this.install(node, from, payload);
      case "installed": {
        if (node.volatile.running?.key !== payload.key) return;
        if (!payload.precopy) return this.runEffects(node, node.volatile.running.machine.onInstalled());
        const written = [...(node.volatile.copyWritten ?? [])];
        node.volatile.copyWritten = undefined;
        return this.runEffects(node, node.volatile.running.machine.onCopied(written, this.nowMs));
      }
      case "publish":
        if (this.adopt(node, payload.table) && this.crashPoint(node, "target:adopted")) return;
        return this.send(node.id, from, { kind: "published", key: payload.key });
      case "published":
        if (node.volatile.running?.key === payload.key) this.runEffects(node, node.volatile.running.machine.onPublished());
        return;
      case "gossip":
        if (!this.adopt(node, payload.table) && !payload.answer && payload.table.version < node.volatile.table.version) {
          this.send(node.id, from, { kind: "gossip", table: node.volatile.table, answer: true });
        }
        return;
    }
  }

  private gossip(node: MoveNode): void {
    const peers = this.nodes.filter((peer) => peer !== node);
    this.send(node.id, this.rng.pick(peers).id, { kind: "gossip", table: cloneTable(node.volatile.table), answer: false });
    this.atOn(node, this.nowMs + this.rng.range(0.5, 1.5) * this.scenario.gossipIntervalMs, () => this.gossip(node));
  }

  // ---- client requests: routed by the receiving node's own table

  private issue(client: ClientState): void {
    if (this.nowMs >= this.scenario.activeEndMs) return;
    if (client.entry === undefined) {
      client.entry = this.rng.pick(this.nodes).id;
      client.sessionOpsLeft = this.rng.int(1, 12);
    }
    // A connection ends, mostly with a flush; the next one goes to a random node.
    let kind: ClientOp["kind"] = this.rng.chance(0.7) ? "write" : "read";
    if (client.sessionOpsLeft-- <= 0) {
      if (!this.rng.chance(0.75)) {
        client.entry = undefined;
        return this.issue(client);
      }
      kind = "flush";
    }
    const page = kind === "flush" ? 0 : this.rng.int(0, this.scenario.pageCount - 1);
    const fua = kind === "write" && this.rng.chance(this.scenario.fuaRate);
    const op: ClientOp = { id: `c${client.id}.${++client.seq}`, client: client.id, kind, page, fua, entry: client.entry, entryIncarnation: -1, path: [] };
    client.current = op;
    this.recordIssue(op);
    this.log(`client ${client.id} ${kind}${fua ? " fua" : ""} ${op.id}${kind === "flush" ? "" : ` page ${page}`} via ${client.entry}`);
    this.send(`client${client.id}`, client.entry, { kind: "request", op, hops: 0 });
    // A client gives up after a while and reconnects: the write's fate is unknown, never acknowledged.
    this.at(this.nowMs + CLIENT_TIMEOUT_MS, () => {
      if (client.current !== op) return;
      client.entry = undefined;
      this.next(client, 0);
    });
  }

  private recordIssue(op: ClientOp): void {
    const at = { issueOrder: ++this.order, issueAtMs: this.nowMs };
    if (op.kind === "write") {
      const { client, page, fua, entry } = op;
      this.history.writes.set(op.id, { stamp: op.id, client, page, fua, entry, entryIncarnation: -1, ...at, ackOrder: Infinity, ackAtMs: Infinity, applyOrder: Infinity, applyCount: 0 });
    } else if (op.kind === "read") {
      this.history.reads.push({ readId: op.id, page: op.page, ...at, returnOrder: Infinity, value: undefined });
    } else {
      this.history.flushes.push({ flushId: op.id, client: op.client, entry: op.entry, entryIncarnation: -1, ...at, ackOrder: Infinity });
    }
  }

  private next(client: ClientState, afterMs: number): void {
    client.current = undefined;
    this.at(this.nowMs + afterMs + this.rng.range(0, 4), () => this.issue(client));
  }

  private receiveReply(reply: Extract<Payload, { kind: "reply" }>): void {
    const client = this.clients.find((candidate) => candidate.current?.id === reply.opId);
    if (!client) return; // it gave up on this request already
    const op = client.current!;
    if (op.kind === "flush") client.entry = undefined;
    if (!reply.ok) {
      this.log(`client ${client.id} ${op.id} failed: ${reply.code}; retries later`);
      return this.next(client, 10);
    }
    const order = ++this.order;
    if (op.kind === "write") {
      const write = this.history.writes.get(op.id)!;
      write.ackOrder = order;
      write.ackAtMs = this.nowMs;
      write.entryIncarnation = reply.entryIncarnation;
    } else if (op.kind === "read") {
      const read = this.history.reads.find((candidate) => candidate.readId === op.id)!;
      read.returnOrder = order;
      read.value = reply.stamp;
    } else {
      const flush = this.history.flushes.find((candidate) => candidate.flushId === op.id)!;
      flush.ackOrder = order;
      flush.entryIncarnation = reply.entryIncarnation;
    }
    this.next(client, 0);
  }

  private route(node: MoveNode, op: ClientOp, hops: number): void {
    if (op.kind === "flush") return this.startFlush(node, op);
    const owner = ownerOf(node.volatile.table, op.page);
    if (owner !== node.id) {
      if (hops >= MAX_HOPS) return this.answer(node, op, { ok: false, code: "NOT_OWNER" });
      const path = [...op.path, { node: node.id, incarnation: node.incarnation }];
      return this.send(node.id, owner, { kind: "request", op: { ...op, path }, hops: hops + 1 });
    }
    if (node.volatile.frozen.has(op.page)) {
      node.volatile.queue.push({ op, hops });
      return;
    }
    if (op.kind === "read") return this.serveRead(node, op);
    this.applyWrite(node, op);
  }

  /** Answers go back the way the request came, as mesh replies do; the entry answers the client. */
  private answer(node: MoveNode, op: ClientOp, result: { ok: boolean; stamp?: string; code?: string }, applied?: { by: string; incarnation: number }): void {
    const previous = op.path[op.path.length - 1];
    if (previous === undefined) {
      this.send(node.id, `client${op.client}`, { kind: "reply", opId: op.id, entryIncarnation: node.incarnation, ...result });
      return;
    }
    const { by, incarnation } = applied ?? { by: node.id, incarnation: node.incarnation };
    this.send(node.id, previous.node, { kind: "answer", op, ...result, by: node.id, appliedBy: by, appliedIncarnation: incarnation });
  }

  /**
   * Passes an answer one hop back; a restart since lost the request. The entry owes the node that
   * applied a write a flush, from when the answer arrives (the write is in that node's store then),
   * so its flush reaches the page's owner however many hops the write took; store.flush stays local.
   */
  private passAnswerBack(node: MoveNode, answer: Extract<Payload, { kind: "answer" }>): void {
    const { op, ok, stamp, code } = answer;
    const self = op.path[op.path.length - 1];
    if (self === undefined || self.node !== node.id || self.incarnation !== node.incarnation) return;
    const back = { ...op, path: op.path.slice(0, -1) };
    const applied = { by: answer.appliedBy, incarnation: answer.appliedIncarnation };
    if (ok && op.kind === "write" && back.path.length === 0) {
      // Today's router owes the node it sent the write to, which then owes nothing further.
      if (this.sabotage.flushMissesForwardedWrites) this.owe(node, answer.by, answer.by === answer.appliedBy ? answer.appliedIncarnation : undefined);
      else this.owe(node, applied.by, applied.incarnation);
    }
    this.answer(node, back, { ok, ...(stamp !== undefined ? { stamp } : {}), ...(code !== undefined ? { code } : {}) }, applied);
  }

  /** The peer's incarnation stands for the boot id a mesh connection learns in its handshake. */
  private owe(node: MoveNode, peer: string, incarnation: number | undefined): void {
    const earlier = node.volatile.dirtyPeers.get(peer);
    // Owed since the first write not yet flushed: a later incarnation must not replace it.
    const since = earlier ? earlier.incarnation : this.sabotage.flushIgnoresRestart ? undefined : incarnation;
    node.volatile.dirtyPeers.set(peer, { incarnation: since, seq: ++this.debtSeq });
  }

  private serveRead(node: MoveNode, op: ClientOp): void {
    const copy = node.volatile.memoryPages.get(op.page);
    this.history.timeline.push({ kind: "serve", order: ++this.order, atMs: this.nowMs, node: node.id, page: op.page, readId: op.id });
    const read = this.history.reads.find((candidate) => candidate.readId === op.id)!;
    read.servedBy = node.id;
    this.answer(node, op, { ok: true, ...(copy?.stamp !== undefined ? { stamp: copy.stamp } : {}) });
  }

  /** The write lands in memory at once; a FUA write is answered only after a sync made it durable. */
  private applyWrite(node: MoveNode, op: ClientOp): void {
    node.volatile.memoryPages.set(op.page, { stamp: op.id, installedFor: 0 });
    node.volatile.copyWritten?.add(op.page);
    const order = ++this.order;
    const write = this.history.writes.get(op.id)!;
    write.applyOrder = order;
    write.appliedAt = node.id;
    write.applyCount++;
    this.history.timeline.push({ kind: "apply", order, atMs: this.nowMs, node: node.id, page: op.page, stamp: op.id });
    this.log(`${node.id} applies ${op.id} to page ${op.page}`);
    if (this.crashPoint(node, "owner:applied")) return;
    if (!op.fua) return this.answer(node, op, { ok: true });
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.syncDelayMaxMs), () => {
      syncPages(node, [op.page]);
      this.answer(node, op, { ok: true });
    });
  }

  // ---- flushes: the entry syncs its own store and every node that applied writes it answered

  private startFlush(node: MoveNode, op: ClientOp): void {
    syncPages(node, [...node.volatile.memoryPages.keys()]);
    // Debts are settled only when their flush succeeded, so a flush started meanwhile flushes them too.
    const peers = [...node.volatile.dirtyPeers];
    if (this.sabotage.flushClearsDebtsAtStart) node.volatile.dirtyPeers.clear();
    const key = `${op.id}@${node.id}.${node.incarnation}`;
    const pending: PendingFlush = { op, peers, waiting: new Set(peers.map(([peer]) => peer)) };
    this.log(`${node.id} flush ${key}: store synced, owes ${peers.map(([peer, debt]) => `${peer}@${debt.incarnation ?? "?"}`).join(",") || "nobody"}`);
    if (peers.length === 0) return this.answerFlush(node, pending, true);
    node.volatile.flushes.set(key, pending);
    for (const [peer, { incarnation }] of peers) {
      this.send(node.id, peer, { kind: "store.flush", key, ...(incarnation !== undefined ? { expectIncarnation: incarnation } : {}) });
    }
    this.atOn(node, this.nowMs + FLUSH_TIMEOUT_MS, () => {
      if (node.volatile.flushes.get(key) === pending) this.finishFlush(node, key, false);
    });
  }

  private flushAnswered(node: MoveNode, peer: string, key: string, ok: boolean): void {
    const pending = node.volatile.flushes.get(key);
    if (!pending) return;
    if (!ok) return this.finishFlush(node, key, false);
    pending.waiting.delete(peer);
    if (pending.waiting.size === 0) this.finishFlush(node, key, true);
  }

  /** A failed flush leaves the peers owed (a restarted one for good: its lost writes stay lost). */
  private finishFlush(node: MoveNode, key: string, ok: boolean): void {
    const pending = node.volatile.flushes.get(key)!;
    node.volatile.flushes.delete(key);
    this.log(`${node.id} flush ${key} ${ok ? "ok" : "FAILED"}`);
    for (const [peer, debt] of pending.peers) {
      if (this.sabotage.flushClearsDebtsAtStart) {
        if (!ok) node.volatile.dirtyPeers.set(peer, debt);
      } else if (ok && node.volatile.dirtyPeers.get(peer)?.seq === debt.seq) node.volatile.dirtyPeers.delete(peer);
    }
    this.answerFlush(node, pending, ok);
  }

  private answerFlush(node: MoveNode, pending: PendingFlush, ok: boolean): void {
    this.answer(node, pending.op, ok ? { ok } : { ok, code: "IO_ERROR" });
  }

  /** The page cache reaches the disk on its own now and then. */
  private writeback(node: MoveNode): void {
    syncPages(node, [...node.volatile.memoryPages.keys()]);
    this.atOn(node, this.nowMs + this.rng.range(0.5, 1.5) * this.scenario.writebackIntervalMs, () => this.writeback(node));
  }

  // ---- the coordinator: one step at a time, each decided durably before it is sent

  private coordinate(node: MoveNode): void {
    const plan = node.durable.coordinatorPlan!;
    if (node.volatile.coordinatorWaiting) return;
    if (plan.decided && node.volatile.table.version >= plan.decided.version && !this.sabotage.coordinatorForgetsTable) {
      return this.stepCommitted(node, undefined);
    }
    if (!plan.decided) {
      if (plan.committed >= this.scenario.stepsPlanned) return;
      plan.decided = this.decideStep(node);
      this.log(`coordinator ${node.id} decides step ${plan.decided.stepId}: v${plan.decided.version} pages ${plan.decided.pages.join(",")} ${plan.decided.from} -> ${plan.decided.to}`);
      if (this.crashPoint(node, "coordinator:decided")) return;
    }
    const decided = plan.decided;
    // A new key per attempt, unique across restarts (the attempt counter is durable).
    const key = `${decided.stepId}#${++plan.attempts}`;
    this.history.stepAttempts++;
    this.send(node.id, decided.from, { kind: "step.start", step: decided, key });
    if (this.crashPoint(node, "coordinator:sent")) return;
    const timer = ++this.timerSeq;
    node.volatile.coordinatorWaiting = { key, timer };
    this.atOn(node, this.nowMs + COORDINATOR_TIMEOUT_MS, () => {
      if (node.volatile.coordinatorWaiting?.timer !== timer) return;
      this.log(`coordinator ${node.id} step ${key} timed out; retries`);
      node.volatile.coordinatorWaiting = undefined;
      this.coordinate(node);
    });
  }

  private decideStep(node: MoveNode): DecidedStep {
    const table = node.volatile.table;
    const holding = this.nodes.filter((candidate) => pagesOf(table, candidate.id).length > 0);
    const from = this.rng.pick(holding).id;
    const to = this.rng.pick(this.nodes.filter((candidate) => candidate.id !== from)).id;
    const owned = pagesOf(table, from);
    const count = this.rng.int(1, Math.min(3, owned.length));
    const pages: number[] = [];
    while (pages.length < count) {
      const page = this.rng.pick(owned);
      if (!pages.includes(page)) pages.push(page);
    }
    const plan = node.durable.coordinatorPlan!;
    return { stepId: `s${plan.committed + 1}.${this.rng.int(0, 9999)}`, version: table.version + 1, from, to, pages: pages.sort((a, b) => a - b) };
  }

  private stepDone(node: MoveNode, done: Extract<Payload, { kind: "step.done" }>): void {
    const plan = node.durable.coordinatorPlan;
    if (!plan || node.volatile.coordinatorWaiting?.key !== done.key) return;
    node.volatile.coordinatorWaiting = undefined;
    const outcome = done.ok ? "ok" : done.code ?? "failed";
    this.history.stepOutcomes.set(outcome, (this.history.stepOutcomes.get(outcome) ?? 0) + 1);
    if (done.ok) return this.stepCommitted(node, done.table);
    this.log(`coordinator ${node.id} step ${done.key} failed (${done.code}); retries`);
    this.atOn(node, this.nowMs + this.rng.range(10, 40), () => this.coordinate(node));
  }

  /** The decided step's version is committed: learn its table, then plan the next on top of it. */
  private stepCommitted(node: MoveNode, table: RoutingTable | undefined): void {
    const plan = node.durable.coordinatorPlan!;
    if (table && !this.sabotage.coordinatorForgetsTable) this.adopt(node, table);
    plan.committed++;
    plan.decided = undefined;
    this.log(`coordinator ${node.id} step committed (${plan.committed}/${this.scenario.stepsPlanned})`);
    this.atOn(node, this.nowMs + this.rng.range(0, 40), () => this.coordinate(node));
  }

  // ---- the source: runs one MoveStep, carrying its effects out one by one

  private startStep(node: MoveNode, coordinator: string, step: DecidedStep, key: string): void {
    const refuse = (code: string): void => this.send(node.id, coordinator, { kind: "step.done", stepId: step.stepId, key, ok: false, code });
    if (node.volatile.running) return node.volatile.running.key === key ? undefined : refuse("CONFLICT");
    if (node.volatile.table.version >= step.version) {
      // Committed already (by an attempt whose answer was lost): the version has one content.
      return this.send(node.id, coordinator, { kind: "step.done", stepId: step.stepId, key, ok: true, table: cloneTable(node.volatile.table) });
    }
    if (node.volatile.table.version !== step.version - 1 && !this.sabotage.sourceIgnoresVersion) return refuse("STALE_ROUTE");
    if (step.pages.some((page) => ownerOf(node.volatile.table, page) !== node.id)) return refuse("NOT_OWNER");
    const machine = new MoveStep(
      { stepId: key, volume: VOLUME, volumeUid: VOLUME_UID, pages: step.pages, to: step.to, newVersion: step.version, nowMs: this.nowMs },
      { quietTimeoutMs: 50, installTimeoutMs: this.scenario.installTimeoutMs },
    );
    node.volatile.running = { machine, decided: step, key, coordinator, timerGeneration: 0, publishTimer: 0 };
    this.log(`${node.id} starts step ${key}: v${step.version} pages ${step.pages.join(",")} -> ${step.to}`);
    // No snapshots in this world: the volume is quiet as soon as the source looks.
    this.atOn(node, this.nowMs + this.rng.range(0, QUIET_DELAY_MAX_MS), () => {
      if (node.volatile.running?.key === key) this.runEffects(node, machine.onQuiet(this.nowMs));
    });
  }

  private runEffects(node: MoveNode, effects: MoveStepEffect[]): void {
    const running = node.volatile.running!;
    for (const effect of effects) {
      if (this.crashPoint(node, `source:${effect.kind}` as CrashPoint)) return;
      this.log(`${node.id} step ${running.key} effect ${effect.kind}`);
      this.runEffect(node, running, effect);
      if (!node.up) return;
    }
    if (this.crashPoint(node, "source:after-batch")) return;
    if (node.volatile.running === running) this.armStepTimer(node, running);
  }

  private runEffect(node: MoveNode, running: RunningStep, effect: MoveStepEffect): void {
    const { decided, key } = running;
    switch (effect.kind) {
      case "precopy": {
        node.volatile.copyWritten = new Set();
        const pages = effect.pages.map((page): [number, PageCopy | undefined] => [page, copyOf(node.volatile.memoryPages.get(page))]);
        this.send(node.id, effect.to, { kind: "install", key, version: decided.version, pages, precopy: true });
        return;
      }
      case "freeze":
        for (const page of effect.pages) node.volatile.frozen.add(page);
        return;
      case "install": {
        const pages = effect.pages.map((page): [number, PageCopy | undefined] => [page, copyOf(node.volatile.memoryPages.get(page))]);
        this.send(node.id, effect.to, { kind: "install", key, version: decided.version, pages });
        if (this.sabotage.unfreezeBeforeCommit) this.unfreeze(node, effect.pages);
        if (this.sabotage.commitBeforeInstalled) this.atOn(node, this.nowMs, () => node.volatile.running === running && this.runEffects(node, running.machine.onInstalled()));
        return;
      }
      case "commit": {
        // Compare-and-set on the version: a table that moved on under the step fails it (a
        // coordinator that builds on the committed version never lets that happen).
        const answer =
          node.volatile.table.version === decided.version - 1 || this.sabotage.sourceIgnoresVersion
            ? (this.commit(node, decided), () => running.machine.onCommitted())
            : () => running.machine.onFailed({ code: "STALE_ROUTE", message: `table is v${node.volatile.table.version}, not v${decided.version - 1}` });
        this.atOn(node, this.nowMs, () => node.volatile.running === running && this.runEffects(node, answer()));
        return;
      }
      case "publish": {
        this.send(node.id, effect.to, { kind: "publish", key, table: cloneTable(node.volatile.table) });
        const timer = ++this.timerSeq;
        running.publishTimer = timer;
        this.atOn(node, this.nowMs + PUBLISH_TIMEOUT_MS, () => {
          if (node.volatile.running === running && running.publishTimer === timer) {
            this.runEffects(node, running.machine.onFailed({ code: "TIMEOUT", message: `${effect.to} did not answer the publish` }));
          }
        });
        return;
      }
      case "drop":
        for (const page of effect.pages) {
          node.volatile.memoryPages.delete(page);
          node.durable.pages.delete(page);
        }
        return;
      case "unfreeze":
        return this.unfreeze(node, effect.pages);
      case "done":
        node.volatile.running = undefined;
        this.send(node.id, running.coordinator, {
          kind: "step.done",
          stepId: decided.stepId,
          key,
          ok: effect.ok,
          ...(effect.ok ? { table: cloneTable(node.volatile.table) } : { code: effect.error.code }),
        });
        return;
    }
  }

  /** The point of no return: the new version is durable here, built on the version before it. */
  private commit(node: MoveNode, decided: DecidedStep): void {
    const table = { ...withOwner(node.volatile.table, decided.pages, decided.to), version: decided.version };
    node.durable.table = cloneTable(table);
    node.volatile.table = cloneTable(table);
    this.history.timeline.push({ kind: "commit", order: ++this.order, atMs: this.nowMs, node: node.id, version: table.version, owners: ownersOf(table) });
    this.log(`${node.id} COMMITS v${table.version} ${ownersOf(table).join(",")}`);
    this.recordBelief(node);
  }

  private unfreeze(node: MoveNode, pages: number[]): void {
    for (const page of pages) node.volatile.frozen.delete(page);
    const queued = node.volatile.queue.filter((entry) => pages.includes(entry.op.page));
    node.volatile.queue = node.volatile.queue.filter((entry) => !pages.includes(entry.op.page));
    for (const { op, hops } of queued) {
      if (!node.up) return; // crashed while applying one of them: the rest are lost with it
      this.route(node, op, hops);
    }
  }

  private armStepTimer(node: MoveNode, running: RunningStep): void {
    const wakeAtMs = running.machine.nextWakeAtMs();
    const generation = ++running.timerGeneration;
    if (wakeAtMs === undefined) return;
    this.atOn(node, wakeAtMs, () => {
      if (node.volatile.running === running && running.timerGeneration === generation) this.runEffects(node, running.machine.onTick(this.nowMs));
    });
  }

  // ---- the target: stores the pages durably, then answers

  private install(node: MoveNode, source: string, install: Extract<Payload, { kind: "install" }>): void {
    // A version this node knows is committed already: the install is stale, never overwrite with it.
    if (install.version <= node.volatile.table.version) return this.log(`${node.id} ignores stale install ${install.key}`);
    const pages = install.pages.map(([page]) => page);
    for (const [page, copy] of install.pages) {
      if (copy === undefined) node.volatile.memoryPages.delete(page);
      else node.volatile.memoryPages.set(page, { stamp: copy.stamp, installedFor: install.version });
    }
    this.log(`${node.id} writes install ${install.key} pages ${pages.join(",")}`);
    if (this.sabotage.targetSkipsSync) {
      // Answers at once and syncs only a while later, as a lazy write-back would.
      this.send(node.id, source, { kind: "installed", key: install.key, precopy: install.precopy });
      this.atOn(node, this.nowMs + 20 + this.rng.range(0, this.scenario.syncDelayMaxMs), () => syncPages(node, pages));
      return;
    }
    if (this.crashPoint(node, "target:written")) return;
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.syncDelayMaxMs), () => {
      syncPages(node, pages);
      if (this.crashPoint(node, "target:synced")) return;
      this.send(node.id, source, { kind: "installed", key: install.key, precopy: install.precopy });
    });
  }
}

function makeScenario(rng: Prng): MoveScenario {
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

function syncPages(node: MoveNode, pages: number[]): void {
  for (const page of pages) {
    const copy = node.volatile.memoryPages.get(page);
    if (copy === undefined) node.durable.pages.delete(page);
    else node.durable.pages.set(page, { ...copy });
  }
}

function copyOf(copy: PageCopy | undefined): PageCopy | undefined {
  return copy === undefined ? undefined : { ...copy };
}

function cloneTable(table: RoutingTable): RoutingTable {
  return { version: table.version, nodes: [...table.nodes], owners: new Uint16Array(table.owners) };
}

export function ownersOf(table: RoutingTable): string[] {
  return Array.from(table.owners, (index) => table.nodes[index]!);
}

function describeTable(table: RoutingTable): { version: number; owners: string[] } {
  return { version: table.version, owners: ownersOf(table) };
}

function finalNode(node: MoveNode): FinalNode {
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
