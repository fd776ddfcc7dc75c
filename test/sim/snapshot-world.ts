// A deterministic world for the snapshot protocol: N simulated nodes with skewed, jumping clocks,
// a lossy/duplicating/reordering mesh, crashes that keep only durable state, clients writing
// through random nodes, and a layered block store per node that honours hold, cut and commit wait
// exactly as the real node must. It records a history; snapshot-checker.ts judges it.
import { SnapshotCoordinator, type CoordinatorEffect } from "../../core/snapshot-coordinator.ts";
import { SnapshotEffectRunner, type RecordStore, type SnapshotEffectHost } from "../../core/snapshot-effect-runner.ts";
import type { CoordinatorRecord, NodeId, ParticipantRecord, SnapshotMessage, SnapshotMode } from "../../core/snapshot-messages.ts";
import { isToCoordinator } from "../../core/snapshot-messages.ts";
import { SnapshotParticipant, type ParticipantEffect } from "../../core/snapshot-participant.ts";
import { Network } from "./kernel/network.ts";
import { Prng } from "./kernel/prng.ts";
import { Scheduler } from "./kernel/scheduler.ts";
import { SimNode } from "./kernel/sim-node.ts";

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
  /** Share of duplicates that arrive much later, like a retransmission after a reconnect. */
  lateDupRate: number;
  clockJumpsMax: number;
  /** Protocol records reach the disk up to this long after they are written (0: at once). */
  recordSyncMaxMs: number;
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

const BLOCKS_PER_PAGE = 2;
const EVENT_BUDGET = 200_000;

type Payload =
  | { kind: "snap"; msg: SnapshotMessage }
  | { kind: "piece"; piece: PieceRecord; entry: NodeId }
  | { kind: "pieceAck"; pieceId: number; writeId: number };

interface QueuedPiece {
  piece: PieceRecord;
  entry: NodeId;
  enqueuedAtMs: number;
}

/** What a crash loses: the hold queue, requests in flight, acks waiting on commit waits, the timer. */
interface Volatile {
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

function freshVolatile(): Volatile {
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
interface Durable {
  head: Map<string, number>;
  snapshots: Map<string, NodeSnapshot>;
  coordinatorRecords: Map<string, CoordinatorRecord>;
  participantRecords: Map<string, ParticipantRecord>;
  appliedPieces: Set<number>;
}

class SnapshotNode extends SimNode<Durable, Volatile> {
  offsetMs = 0;
  /** Rebuilt from the records at every boot. */
  coordinator!: SnapshotCoordinator;
  participant!: SnapshotParticipant;
  /** The node's own effect runner (core/snapshot-effect-runner.ts), on simulated I/O. */
  runner!: SnapshotEffectRunner;
  snapshotCounter = 0;

  constructor(id: NodeId) {
    const durable: Durable = { head: new Map(), snapshots: new Map(), coordinatorRecords: new Map(), participantRecords: new Map(), appliedPieces: new Set() };
    super(id, durable, freshVolatile);
  }
}

interface ClientState {
  id: number;
  current?: number;
}

export function runWorld(options: WorldOptions): History {
  const world = new World(options);
  return world.run();
}

class World {
  private order = 0;
  private readonly sim: Scheduler;
  private readonly network: Network<Payload>;
  private readonly rng: Prng;
  private readonly faultRng: Prng;
  /** Draws the record sync delays: a stream of its own, so the other streams stay as they were before it. */
  private readonly syncRng: Prng;
  private readonly nodes: SnapshotNode[] = [];
  private readonly scenario: Scenario;
  private readonly history: History;
  private readonly sabotage: Sabotage;
  private nextWriteId = 1;
  private nextPieceId = 1;
  private stepCrashesLeft = 2;
  private healed = false;
  private readonly clients = new Map<number, ClientState>();

  constructor(private readonly options: WorldOptions) {
    this.sim = new Scheduler(options.trace);
    this.rng = new Prng(options.seed);
    this.faultRng = this.rng.fork();
    const netRng = this.rng.fork();
    this.sabotage = options.sabotage ?? {};
    this.scenario = makeScenario(this.rng);
    this.syncRng = new Prng(options.seed ^ 0x5bd1e995);
    this.scenario.recordSyncMaxMs = this.syncRng.chance(0.5) ? 0 : this.syncRng.range(0.1, 8);
    const { delayMaxMs, lossRate, dupRate, lateDupRate, slowRate } = this.scenario;
    // Any order: the mesh keeps order per connection, but a reconnect resends, and the protocol
    // must not rely on order anyway.
    const netOptions = { delayMaxMs, lossRate, dupRate, lateDupRate, slowRate, fifoPerLink: false, selfImmediate: true };
    this.network = new Network<Payload>(this.sim, netRng, netOptions, (from, to, payload) => this.deliver(this.node(to), from, payload));
    const ids = Array.from({ length: this.scenario.nodeCount }, (_, i) => `n${i}`);
    this.history = {
      seed: options.seed,
      mode: options.mode,
      scenario: this.scenario,
      volumes: makeVolumes(this.rng, ids),
      writes: new Map(),
      pieces: new Map(),
      applyLog: new Map(),
      snapshots: new Map(),
      outcomes: new Map(),
      nodes: [],
      holdWaits: [],
      errors: [],
      eventCount: 0,
    };
    for (const id of ids) {
      const node = new SnapshotNode(id);
      node.offsetMs = this.rng.range(-this.scenario.skewMs, this.scenario.skewMs);
      this.nodes.push(node);
      this.boot(node, false);
    }
  }

  run(): History {
    this.planWorkload();
    this.planFaults();
    this.at(this.scenario.activeEndMs, () => this.heal());
    const { events, error } = this.sim.run(this.scenario.quiesceEndMs, EVENT_BUDGET);
    if (error !== undefined) this.history.errors.push(error);
    this.history.eventCount = events;
    this.history.nodes = this.nodes.map(finalNode);
    return this.history;
  }

  // ---- scheduling and clocks ----

  private get nowMs(): number {
    return this.sim.nowMs;
  }

  private at(atMs: number, run: () => void): void {
    this.sim.at(atMs, run);
  }

  private atOn(node: SnapshotNode, atMs: number, run: () => void): void {
    this.sim.atOn(node, atMs, run);
  }

  private clock(node: SnapshotNode): number {
    return this.nowMs + node.offsetMs;
  }

  private log(line: string): void {
    this.sim.log(line);
  }

  private node(id: NodeId): SnapshotNode {
    return this.nodes.find((n) => n.id === id)!;
  }

  // ---- workload and faults ----

  private planWorkload(): void {
    const s = this.scenario;
    for (let i = 0; i < s.clientCount; i++) {
      const client: ClientState = { id: i };
      this.at(this.rng.range(0, 5), () => this.issueWrite(client));
    }
    const snapshotCount = this.rng.int(1, 3);
    for (let i = 0; i < snapshotCount; i++) {
      const atMs = this.rng.range(10, s.activeEndMs - 150);
      const volumes = this.history.volumes.filter(() => this.rng.chance(0.6)).map((v) => v.name);
      if (volumes.length === 0) volumes.push(this.rng.pick(this.history.volumes).name);
      this.at(atMs, () => this.startSnapshot(volumes));
    }
    for (const node of this.nodes) {
      const jumps = this.rng.int(0, s.clockJumpsMax);
      for (let i = 0; i < jumps; i++) {
        this.at(this.rng.range(0, s.activeEndMs), () => this.jumpClock(node));
      }
    }
  }

  private planFaults(): void {
    const s = this.scenario;
    if (s.faultFree) return;
    const crashes = this.faultRng.int(0, 2);
    for (let i = 0; i < crashes; i++) {
      const node = this.faultRng.pick(this.nodes);
      const downMs = this.faultRng.chance(0.3) ? this.faultRng.range(0.5, 10) : this.faultRng.range(5, 250);
      this.at(this.faultRng.range(0, s.activeEndMs - 50), () => this.crash(node, downMs));
    }
    const suspicions = this.faultRng.int(0, 2);
    for (let i = 0; i < suspicions; i++) {
      const observer = this.faultRng.pick(this.nodes);
      const suspect = this.faultRng.pick(this.nodes);
      this.at(this.faultRng.range(0, s.activeEndMs), () => {
        if (observer === suspect || !observer.up) return;
        this.log(`${observer.id} falsely suspects ${suspect.id}`);
        this.peerDown(observer, suspect.id);
      });
    }
  }

  /**
   * The time daemon sets this node's clock. A node follows such a step only while no snapshot relies
   * on its earlier readings (transport/node-clock.ts); until then its clock runs on unstepped.
   */
  private jumpClock(node: SnapshotNode): void {
    if (!this.sabotage.clockStepsAnytime && node.up && (node.coordinator.clockInUse() || node.participant.clockInUse())) {
      this.at(this.nowMs + this.rng.range(1, 20), () => this.jumpClock(node));
      return;
    }
    node.offsetMs = this.rng.range(-this.scenario.skewMs, this.scenario.skewMs);
    this.log(`${node.id} clock offset now ${node.offsetMs.toFixed(3)}`);
    if (node.up) this.rearm(node, true);
  }

  private heal(): void {
    this.healed = true;
    this.network.heal();
    for (const node of this.nodes) if (!node.up) this.restart(node);
  }

  // ---- node lifecycle ----

  private boot(node: SnapshotNode, recovering: boolean): void {
    node.coordinator = new SnapshotCoordinator({
      nodeId: node.id,
      retryIntervalMs: 25,
      maxRetryIntervalMs: 200,
      maxDeliveryAttempts: 6,
      cutMarginMs: this.scenario.cutMarginMs,
      maxCutLeadMs: 500,
      // Simulated clocks read exactly: offset bounds get no slack, the hardest case for them.
      clockResolutionMs: 0,
    });
    node.participant = new SnapshotParticipant({
      nodeId: node.id,
      incarnation: `${node.id}#${node.incarnation}`,
      maxClockSkewMs: this.scenario.skewMs,
      clockResolutionMs: 0,
      maxPrepareAgeMs: 200,
      maxCutLeadMs: 500,
      queryIntervalMs: 20,
      maxQueryIntervalMs: 200,
    });
    node.runner = new SnapshotEffectRunner(this.effectHost(node), node.participant);
    if (!recovering) return;
    // A cut whose record never reached the disk is an orphan, removed at start (SnapshotService.cleanOrphanLayers).
    for (const [snapshotId, snapshot] of node.durable.snapshots) {
      if (snapshot.state === "pending" && !node.durable.participantRecords.has(snapshotId)) node.durable.snapshots.delete(snapshotId);
    }
    const now = this.clock(node);
    const coordinatorRecords = [...node.durable.coordinatorRecords.values()].map(clone);
    this.runCoordinatorEffects(node, node.coordinator.recover(coordinatorRecords, now));
    if (!node.up) return;
    const participantRecords = [...node.durable.participantRecords.values()].map(clone);
    this.runParticipantEffects(node, node.participant.recover(participantRecords, now));
    if (node.up) this.rearm(node, true);
  }

  private crash(node: SnapshotNode, downMs: number): void {
    if (!node.up || this.healed) return;
    this.log(`${node.id} CRASH (down ${downMs.toFixed(1)} ms)`);
    for (const queued of node.volatile.queue) this.recordHoldWait(node, queued);
    node.crash();
    for (const other of this.nodes) {
      if (other === node) continue;
      this.at(this.nowMs + this.faultRng.range(1, 20), () => {
        if (other.up) this.peerDown(other, node.id);
      });
    }
    this.at(this.nowMs + downMs, () => this.restart(node));
  }

  private restart(node: SnapshotNode): void {
    if (node.up) return;
    node.restart();
    node.offsetMs = this.rng.range(-this.scenario.skewMs, this.scenario.skewMs);
    this.log(`${node.id} RESTART as incarnation ${node.incarnation}`);
    this.boot(node, true);
  }

  private peerDown(node: SnapshotNode, down: NodeId): void {
    const now = this.clock(node);
    this.runCoordinatorEffects(node, node.coordinator.onPeerDown(down, now));
    if (node.up) this.runParticipantEffects(node, node.participant.onPeerDown(down, now));
    if (node.up) this.rearm(node, false);
  }

  /** A crash between two effects of one batch: the "random step" crash of the brief. */
  private maybeStepCrash(node: SnapshotNode): boolean {
    if (this.healed || this.stepCrashesLeft <= 0 || !this.faultRng.chance(this.scenario.stepCrashRate)) return false;
    this.stepCrashesLeft--;
    this.log(`${node.id} step crash inside an effect batch`);
    this.crash(node, this.faultRng.chance(0.3) ? this.faultRng.range(0.5, 10) : this.faultRng.range(5, 250));
    return true;
  }

  // ---- timers ----

  /** One timer per node, at the earlier of the two machines' wake times (re-armed after every call). */
  private rearm(node: SnapshotNode, force: boolean): void {
    const wakes = [node.coordinator.nextWakeAtMs(), node.participant.nextWakeAtMs()].filter((w): w is number => w !== undefined);
    const wakeAtMs = wakes.length === 0 ? undefined : Math.min(...wakes);
    if (!force && wakeAtMs === node.volatile.armedWakeAtMs) return;
    node.volatile.armedWakeAtMs = wakeAtMs;
    const generation = ++node.volatile.timerGeneration;
    if (wakeAtMs === undefined) return;
    // The tiny nudge keeps float rounding from firing a hair before the local clock reads wakeAtMs.
    this.atOn(node, wakeAtMs - node.offsetMs + 1e-6, () => {
      if (generation !== node.volatile.timerGeneration) return;
      node.volatile.armedWakeAtMs = undefined;
      const now = this.clock(node);
      this.runCoordinatorEffects(node, node.coordinator.onTick(now));
      if (node.up) this.runParticipantEffects(node, node.participant.onTick(now));
      if (node.up) this.rearm(node, true);
    });
  }

  // ---- network ----

  /** Sends through the simulated mesh, after the sabotages that corrupt what the protocol sends. */
  private send(from: SnapshotNode, to: NodeId, payload: Payload): void {
    if (this.sabotage.allCutEarly && payload.kind === "snap" && payload.msg.type === "snap.cut") {
      const allCut: SnapshotMessage = { type: "snap.allcut", snapshotId: payload.msg.snapshotId };
      for (const node of this.nodes) if (node.up) this.at(this.nowMs, () => this.deliver(node, to, { kind: "snap", msg: allCut }));
    }
    if (this.sabotage.shortCommitWait && payload.kind === "snap" && payload.msg.type === "snap.take" && payload.msg.commitWaitMs !== undefined) {
      payload = { ...payload, msg: { ...payload.msg, commitWaitMs: payload.msg.commitWaitMs * 0.7 } };
    }
    this.network.send(from.id, to, payload);
  }

  private deliver(node: SnapshotNode, from: NodeId, payload: Payload): void {
    if (!node.up) return;
    switch (payload.kind) {
      case "snap":
        return this.deliverSnapshotMessage(node, from, payload.msg);
      case "piece":
        return this.receivePiece(node, payload.piece, payload.entry);
      case "pieceAck":
        return this.receivePieceAck(node, payload.pieceId, payload.writeId);
    }
  }

  private deliverSnapshotMessage(node: SnapshotNode, from: NodeId, msg: SnapshotMessage): void {
    const now = this.clock(node);
    this.log(`${from} -> ${node.id} ${msg.type} ${msg.snapshotId} ${detail(msg)}`);
    if (isToCoordinator(msg)) this.runCoordinatorEffects(node, node.coordinator.onMessage(from, msg, now));
    else this.runParticipantEffects(node, node.participant.onMessage(from, msg, now));
    if (node.up) this.rearm(node, false);
  }

  // ---- effects ----

  private runCoordinatorEffects(node: SnapshotNode, effects: CoordinatorEffect[]): void {
    node.runner.runCoordinator(effects);
  }

  private runParticipantEffects(node: SnapshotNode, effects: ParticipantEffect[]): void {
    node.runner.runParticipant(effects);
  }

  /** The simulated node's I/O under the real effect runner. */
  private effectHost(node: SnapshotNode): SnapshotEffectHost {
    const coordinatorRecords = this.recordStore<CoordinatorRecord>(node, "coordinator");
    const participantRecords = this.recordStore<ParticipantRecord>(node, "participant");
    return {
      send: (to, msg) => this.send(node, to, { kind: "snap", msg }),
      coordinatorRecords,
      participantRecords,
      nowMs: () => this.clock(node),
      ready: () => {},
      publish: () => {},
      done: (effect) => {
        const list = this.history.outcomes.get(effect.snapshotId) ?? [];
        list.push(effect.ok ? { ok: true } : { ok: false, code: effect.error.code, message: effect.error.message });
        this.history.outcomes.set(effect.snapshotId, list);
      },
      hold: (snapshotId, volumes) => {
        node.volatile.holds.set(snapshotId, volumes);
        node.volatile.awaitingDrain.set(snapshotId, volumes);
        this.atOn(node, this.nowMs, () => this.checkDrains(node));
      },
      release: (snapshotId) => {
        node.volatile.holds.delete(snapshotId);
        node.volatile.awaitingDrain.delete(snapshotId);
        this.startReleased(node);
        return undefined;
      },
      cut: (effect) => {
        node.durable.snapshots.set(effect.snapshotId, { state: "pending", volumes: effect.volumes, values: this.freeze(node, effect.volumes) });
        return {
          durable: (done) => {
            participantRecords.put(effect.snapshotId, effect.record);
            participantRecords.durable(done);
          },
        };
      },
      commit: (snapshotId) => commitSnapshot(node, snapshotId),
      discard: (snapshotId) => node.durable.snapshots.delete(snapshotId),
      unfence: (snapshotId) => this.unfence(node, snapshotId),
      beforeEffect: (role, effect) => {
        if (this.maybeStepCrash(node)) return false;
        this.log(`${node.id} ${role} ${effect.kind} ${describeEffect(effect)}`);
        return true;
      },
      durabilityFailed: (role, err) => {
        throw new Error(`${node.id}: the simulated ${role} record store failed: ${String(err)}`);
      },
    };
  }

  /**
   * A node's protocol records: written to memory, on disk only after a sync that takes up to
   * recordSyncMaxMs (a crash before loses them); `durable` completes when the sync has run.
   */
  private recordStore<R extends CoordinatorRecord | ParticipantRecord>(node: SnapshotNode, role: "coordinator" | "participant"): RecordStore<R> {
    const stored = (role === "coordinator" ? node.durable.coordinatorRecords : node.durable.participantRecords) as Map<string, R>;
    const syncMaxMs = this.scenario.recordSyncMaxMs;
    const write = (snapshotId: string, record: R | undefined): void => {
      if (syncMaxMs > 0) node.volatile.unsyncedRecords.push({ role, snapshotId, record: record && clone(record) });
      else if (record) stored.set(snapshotId, clone(record));
      else stored.delete(snapshotId);
    };
    return {
      put: (snapshotId, record) => write(snapshotId, record),
      delete: (snapshotId) => write(snapshotId, undefined),
      durable: (done) => {
        if (syncMaxMs === 0) return done();
        const early = this.sabotage.recordsDurableEarly === true;
        this.atOn(node, this.nowMs + this.syncRng.range(0, syncMaxMs), () => {
          this.syncRecords(node);
          if (!early) done();
        });
        if (early) done();
      },
    };
  }

  private syncRecords(node: SnapshotNode): void {
    for (const { role, snapshotId, record } of node.volatile.unsyncedRecords) {
      const stored: Map<string, CoordinatorRecord | ParticipantRecord> = role === "coordinator" ? node.durable.coordinatorRecords : node.durable.participantRecords;
      if (record) stored.set(snapshotId, record);
      else stored.delete(snapshotId);
    }
    node.volatile.unsyncedRecords = [];
  }

  /** The copy-on-write cut, modelled as a copy of this node's blocks of the volumes. */
  private freeze(node: SnapshotNode, volumes: string[]): Map<string, number> {
    const values = new Map<string, number>();
    for (const layout of this.history.volumes) {
      if (!volumes.includes(layout.name)) continue;
      for (let block = 0; block < layout.blocks; block++) {
        if (layout.ownerOfBlock[block] !== node.id) continue;
        const key = `${layout.name}:${block}`;
        values.set(key, node.durable.head.get(key) ?? 0);
      }
    }
    return values;
  }

  // ---- snapshots ----

  private startSnapshot(volumes: string[]): void {
    const candidates = this.nodes.filter((n) => n.up);
    if (candidates.length === 0) return;
    const node = this.rng.pick(candidates);
    const participants = new Set<NodeId>();
    for (const layout of this.history.volumes) {
      if (volumes.includes(layout.name)) for (const owner of layout.ownerOfBlock) participants.add(owner);
    }
    const snapshotId = `${node.id}.${node.incarnation}.${++node.snapshotCounter}`;
    const meta: SnapshotMeta = { snapshotId, coordinator: node.id, volumes, participants: [...participants].sort(), startedAtMs: this.nowMs };
    this.history.snapshots.set(snapshotId, meta);
    this.log(`${node.id} START snapshot ${snapshotId} of ${volumes.join(",")} with ${meta.participants.join(",")}`);
    const effects = node.coordinator.startSnapshot({
      snapshotId,
      name: `snap-${snapshotId}`,
      volumes,
      mode: this.options.mode,
      participants: meta.participants,
      holdTimeoutMs: this.scenario.holdTimeoutMs,
      maxClockSkewMs: this.scenario.skewMs,
      nowMs: this.clock(node),
    });
    this.runCoordinatorEffects(node, effects);
    if (node.up) this.rearm(node, false);
  }

  // ---- writes ----

  private issueWrite(client: ClientState): void {
    if (this.nowMs >= this.scenario.activeEndMs) return;
    const candidates = this.nodes.filter((n) => n.up);
    if (candidates.length === 0) {
      this.at(this.nowMs + 5, () => this.issueWrite(client));
      return;
    }
    const entry = this.rng.pick(candidates);
    const layout = this.rng.pick(this.history.volumes);
    const first = this.rng.int(0, layout.blocks - 1);
    const last = Math.min(layout.blocks - 1, first + this.rng.int(0, 2));
    const writeId = this.nextWriteId++;
    const pieces = this.cutIntoPieces(writeId, layout, first, last);
    const write: WriteRecord = { writeId, issueOrder: ++this.order, ackOrder: Infinity, issueAtMs: this.nowMs, ackAtMs: Infinity, pieceIds: pieces.map((p) => p.pieceId) };
    this.history.writes.set(writeId, write);
    client.current = writeId;
    entry.volatile.pendingWrites.set(writeId, new Set(write.pieceIds));
    for (const piece of pieces) this.send(entry, piece.owner, { kind: "piece", piece, entry: entry.id });
    // A client gives up after a while; an abandoned write counts as never acknowledged.
    const timeoutMs = 3 * this.scenario.holdTimeoutMs + 50;
    this.at(this.nowMs + timeoutMs, () => {
      if (client.current === writeId) this.settleWrite(client);
    });
    this.clients.set(writeId, client);
  }

  private settleWrite(client: ClientState): void {
    client.current = undefined;
    this.at(this.nowMs + this.rng.range(0, 4), () => this.issueWrite(client));
  }

  /** One piece per page: a page is the unit a single owner applies atomically. */
  private cutIntoPieces(writeId: number, layout: VolumeLayout, first: number, last: number): PieceRecord[] {
    const pieces: PieceRecord[] = [];
    for (let block = first; block <= last; block++) {
      const previous = pieces[pieces.length - 1];
      if (previous && Math.floor(previous.blocks[0]! / BLOCKS_PER_PAGE) === Math.floor(block / BLOCKS_PER_PAGE)) {
        previous.blocks.push(block);
        continue;
      }
      const piece: PieceRecord = { pieceId: this.nextPieceId++, writeId, volume: layout.name, blocks: [block], owner: layout.ownerOfBlock[block]! };
      pieces.push(piece);
      this.history.pieces.set(piece.pieceId, piece);
    }
    return pieces;
  }

  private receivePiece(node: SnapshotNode, piece: PieceRecord, entry: NodeId): void {
    if (node.durable.appliedPieces.has(piece.pieceId) || node.volatile.acceptedPieces.has(piece.pieceId)) return;
    node.volatile.acceptedPieces.add(piece.pieceId);
    if (this.isHeld(node, piece.volume)) {
      node.volatile.queue.push({ piece, entry, enqueuedAtMs: this.nowMs });
      return;
    }
    this.startPiece(node, piece, entry);
  }

  private isHeld(node: SnapshotNode, volume: string): boolean {
    if (this.sabotage.ignoreHold) return false;
    for (const volumes of node.volatile.holds.values()) if (volumes.includes(volume)) return true;
    return false;
  }

  private startPiece(node: SnapshotNode, piece: PieceRecord, entry: NodeId): void {
    node.volatile.inflight.set(piece.volume, (node.volatile.inflight.get(piece.volume) ?? 0) + 1);
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.execDelayMaxMs), () => this.applyPiece(node, piece, entry));
  }

  private startReleased(node: SnapshotNode): void {
    const stillHeld: QueuedPiece[] = [];
    for (const queued of node.volatile.queue) {
      if (this.isHeld(node, queued.piece.volume)) {
        stillHeld.push(queued);
        continue;
      }
      this.recordHoldWait(node, queued);
      this.startPiece(node, queued.piece, queued.entry);
    }
    node.volatile.queue = stillHeld;
  }

  private recordHoldWait(node: SnapshotNode, queued: QueuedPiece): void {
    this.history.holdWaits.push({ node: node.id, pieceId: queued.piece.pieceId, waitedMs: this.nowMs - queued.enqueuedAtMs });
  }

  /** Apply is atomic on the owner's loop: stamp, ask the participant (maybe cut first), write, then ack. */
  private applyPiece(node: SnapshotNode, piece: PieceRecord, entry: NodeId): void {
    const stampMs = this.clock(node);
    const admission = node.participant.beforeWrite(piece.volume, stampMs);
    this.runParticipantEffects(node, admission.effects);
    if (!node.up) return;
    for (const block of piece.blocks) {
      const key = `${piece.volume}:${block}`;
      node.durable.head.set(key, piece.pieceId);
      const log = this.history.applyLog.get(key) ?? [];
      log.push(piece.pieceId);
      this.history.applyLog.set(key, log);
    }
    node.durable.appliedPieces.add(piece.pieceId);
    node.volatile.acceptedPieces.delete(piece.pieceId);
    node.volatile.inflight.set(piece.volume, node.volatile.inflight.get(piece.volume)! - 1);
    this.checkDrains(node);
    this.rearm(node, false);
    if (this.sabotage.ignoreCommitWait || admission.fences.length === 0) {
      this.send(node, entry, { kind: "pieceAck", pieceId: piece.pieceId, writeId: piece.writeId });
      return;
    }
    // The participant unfences each snapshot when its clock reads T + 2e, or earlier when every
    // participant has cut (allcut), the snapshot committed or it aborted.
    this.log(`${node.id} piece ${piece.pieceId} commit-waits for ${admission.fences.join(",")} (until ${admission.ackNotBeforeMs.toFixed(3)} at the latest)`);
    node.volatile.fencedAcks.push({ piece, entry, fences: new Set(admission.fences) });
  }

  private unfence(node: SnapshotNode, snapshotId: string): void {
    const waiting = node.volatile.fencedAcks;
    node.volatile.fencedAcks = [];
    for (const fenced of waiting) {
      fenced.fences.delete(snapshotId);
      if (fenced.fences.size > 0) node.volatile.fencedAcks.push(fenced);
      else this.send(node, fenced.entry, { kind: "pieceAck", pieceId: fenced.piece.pieceId, writeId: fenced.piece.writeId });
    }
  }

  private checkDrains(node: SnapshotNode): void {
    for (const [snapshotId, volumes] of node.volatile.awaitingDrain) {
      if (volumes.some((v) => (node.volatile.inflight.get(v) ?? 0) > 0)) continue;
      node.volatile.awaitingDrain.delete(snapshotId);
      this.atOn(node, this.nowMs, () => {
        this.runParticipantEffects(node, node.participant.onInflightDrained(snapshotId, this.clock(node)));
        if (node.up) this.rearm(node, false);
      });
    }
  }

  private receivePieceAck(node: SnapshotNode, pieceId: number, writeId: number): void {
    const remaining = node.volatile.pendingWrites.get(writeId);
    if (!remaining) return;
    remaining.delete(pieceId);
    if (remaining.size > 0) return;
    node.volatile.pendingWrites.delete(writeId);
    const client = this.clients.get(writeId)!;
    if (client.current !== writeId) return; // the client gave up already
    const write = this.history.writes.get(writeId)!;
    write.ackOrder = ++this.order;
    write.ackAtMs = this.nowMs;
    this.settleWrite(client);
  }
}

function makeScenario(rng: Prng): Scenario {
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
  };
}

function makeVolumes(rng: Prng, nodes: NodeId[]): VolumeLayout[] {
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

function commitSnapshot(node: SnapshotNode, snapshotId: string): void {
  const snapshot = node.durable.snapshots.get(snapshotId);
  if (!snapshot) throw new Error(`node ${node.id} told to commit snapshot ${snapshotId} it never cut`);
  snapshot.state = "committed";
}

function finalNode(node: SnapshotNode): FinalNode {
  return {
    id: node.id,
    snapshots: node.durable.snapshots,
    participantEntries: node.participant.inspect().entries.map((e) => `${e.snapshotId}:${e.phase}`),
    coordinatorAttempts: node.coordinator.inspect().map((a) => `${a.snapshotId}:${a.phase}`),
    holds: node.volatile.holds.size,
    queued: node.volatile.queue.length,
  };
}

function clone<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

function detail(msg: SnapshotMessage): string {
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

function describeEffect(effect: CoordinatorEffect | ParticipantEffect): string {
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
