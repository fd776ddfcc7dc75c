// The snapshot world's ground floor: its state, the run, virtual time and skewed clocks, faults,
// node crashes and restarts, the one timer per node, and the mesh. The protocol's wiring and the
// clients' writes (snapshot-world.ts) are the layer above.
import { SnapshotCoordinator, type CoordinatorEffect } from "../../core/snapshot/snapshot-coordinator.ts";
import type { SnapshotEffectHost } from "../../core/snapshot/snapshot-effect-runner.ts";
import { SnapshotEffectRunner } from "../../core/snapshot/snapshot-effect-runner.ts";
import { isToCoordinator, type NodeId, type SnapshotMessage } from "../../core/snapshot/snapshot-messages.ts";
import { SnapshotParticipant, type ParticipantEffect } from "../../core/snapshot/snapshot-participant.ts";
import { Network } from "./kernel/network.ts";
import { Prng } from "./kernel/prng.ts";
import { SimWorld } from "./kernel/sim-world.ts";
import type { History, PieceRecord, Sabotage, Scenario, WorldOptions } from "./snapshot-history.ts";
import { detail, EVENT_BUDGET, finalNode, makeScenario, makeVolumes, SnapshotNode, clone, type ClientState, type Payload } from "./snapshot-node.ts";

export abstract class SnapshotWorldBase extends SimWorld {
  protected order = 0;
  protected readonly network: Network<Payload>;
  /** Draws the store's behaviour (record sync delays, refused cuts): a stream of its own, so the other streams stay as they were before it. */
  protected readonly syncRng: Prng;
  protected readonly nodes: SnapshotNode[] = [];
  protected readonly scenario: Scenario;
  protected readonly history: History;
  protected readonly sabotage: Sabotage;
  protected nextWriteId = 1;
  protected nextPieceId = 1;
  protected stepCrashesLeft = 2;
  protected healed = false;
  protected readonly clients = new Map<number, ClientState>();

  constructor(protected readonly options: WorldOptions) {
    super(options.seed, options.trace);
    this.sabotage = options.sabotage ?? {};
    this.scenario = makeScenario(this.rng);
    this.syncRng = new Prng(options.seed ^ 0x5bd1e995);
    this.scenario.recordSyncMaxMs = this.syncRng.chance(0.5) ? 0 : this.syncRng.range(0.1, 8);
    this.scenario.cutRefusalRate = this.scenario.faultFree || this.syncRng.chance(0.7) ? 0 : this.syncRng.range(0.05, 0.4);
    const { delayMaxMs, lossRate, dupRate, lateDupRate, slowRate } = this.scenario;
    // Any order: the mesh keeps order per connection, but a reconnect resends, and the protocol
    // must not rely on order anyway.
    const netOptions = { delayMaxMs, lossRate, dupRate, lateDupRate, slowRate, fifoPerLink: false, selfImmediate: true };
    this.network = new Network<Payload>(this.sim, this.netRng, netOptions, (from, to, payload) => this.deliver(this.node(to), from, payload));
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
    const { activeEndMs, quiesceEndMs } = this.scenario;
    this.runPhases({ activeEndMs, quiesceEndMs, eventBudget: EVENT_BUDGET }, this.history);
    this.history.nodes = this.nodes.map(finalNode);
    return this.history;
  }

  // ---- clocks and nodes ----

  /** The node's own clock: virtual time plus its offset (skew and steps). */
  protected clock(node: SnapshotNode): number {
    return this.nowMs + node.offsetMs;
  }

  protected node(id: NodeId): SnapshotNode {
    return this.nodes.find((n) => n.id === id)!;
  }

  // ---- workload and faults ----

  protected planWorkload(): void {
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

  protected planFaults(): void {
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
   * on its earlier readings (transport/snapshot/node-clock.ts); until then its clock runs on unstepped.
   */
  protected jumpClock(node: SnapshotNode): void {
    if (!this.sabotage.clockStepsAnytime && node.up && (node.coordinator.clockInUse() || node.participant.clockInUse())) {
      this.at(this.nowMs + this.rng.range(1, 20), () => this.jumpClock(node));
      return;
    }
    node.offsetMs = this.rng.range(-this.scenario.skewMs, this.scenario.skewMs);
    this.log(`${node.id} clock offset now ${node.offsetMs.toFixed(3)}`);
    if (node.up) this.rearm(node, true);
  }

  protected heal(): void {
    this.healed = true;
    this.network.heal();
    for (const node of this.nodes) if (!node.up) this.restart(node);
  }

  // ---- node lifecycle ----

  protected boot(node: SnapshotNode, recovering: boolean): void {
    node.coordinator = new SnapshotCoordinator({
      nodeId: node.id,
      retryIntervalMs: 25,
      maxRetryIntervalMs: 200,
      maxDeliveryAttempts: 6,
      cutMarginMs: this.scenario.cutMarginMs,
      minCutMarginMs: this.scenario.minCutMarginMs,
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
    // A cut whose record never reached the disk is an orphan, removed at start (CutLayers.deleteOrphans).
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

  protected crash(node: SnapshotNode, downMs: number): void {
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

  protected restart(node: SnapshotNode): void {
    if (node.up) return;
    node.restart();
    node.offsetMs = this.rng.range(-this.scenario.skewMs, this.scenario.skewMs);
    this.log(`${node.id} RESTART as incarnation ${node.incarnation}`);
    this.boot(node, true);
  }

  protected peerDown(node: SnapshotNode, down: NodeId): void {
    const now = this.clock(node);
    this.runCoordinatorEffects(node, node.coordinator.onPeerDown(down, now));
    if (node.up) this.runParticipantEffects(node, node.participant.onPeerDown(down, now));
    if (node.up) this.rearm(node, false);
  }

  /** A crash between two effects of one batch: the "random step" crash of the brief. */
  protected maybeStepCrash(node: SnapshotNode): boolean {
    if (this.healed || this.stepCrashesLeft <= 0 || !this.faultRng.chance(this.scenario.stepCrashRate)) return false;
    this.stepCrashesLeft--;
    this.log(`${node.id} step crash inside an effect batch`);
    this.crash(node, this.faultRng.chance(0.3) ? this.faultRng.range(0.5, 10) : this.faultRng.range(5, 250));
    return true;
  }

  // ---- timers ----

  /** One timer per node, at the earlier of the two machines' wake times (re-armed after every call). */
  protected rearm(node: SnapshotNode, force: boolean): void {
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
  protected send(from: SnapshotNode, to: NodeId, payload: Payload): void {
    if (this.sabotage.allCutEarly && payload.kind === "snap" && payload.msg.type === "snap.cut") {
      const allCut: SnapshotMessage = { type: "snap.allcut", snapshotId: payload.msg.snapshotId };
      for (const node of this.nodes) if (node.up) this.at(this.nowMs, () => this.deliver(node, to, { kind: "snap", msg: allCut }));
    }
    if (this.sabotage.shortCommitWait && payload.kind === "snap" && payload.msg.type === "snap.take" && payload.msg.commitWaitMs !== undefined) {
      payload = { ...payload, msg: { ...payload.msg, commitWaitMs: payload.msg.commitWaitMs * 0.7 } };
    }
    this.network.send(from.id, to, payload);
  }

  protected deliver(node: SnapshotNode, from: NodeId, payload: Payload): void {
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

  protected deliverSnapshotMessage(node: SnapshotNode, from: NodeId, msg: SnapshotMessage): void {
    const now = this.clock(node);
    this.log(`${from} -> ${node.id} ${msg.type} ${msg.snapshotId} ${detail(msg)}`);
    if (isToCoordinator(msg)) this.runCoordinatorEffects(node, node.coordinator.onMessage(from, msg, now));
    else this.runParticipantEffects(node, node.participant.onMessage(from, msg, now));
    if (node.up) this.rearm(node, false);
  }

  // ---- what the layer above handles (snapshot-world.ts)

  protected abstract effectHost(node: SnapshotNode): SnapshotEffectHost;
  protected abstract runCoordinatorEffects(node: SnapshotNode, effects: CoordinatorEffect[]): void;
  protected abstract runParticipantEffects(node: SnapshotNode, effects: ParticipantEffect[]): void;
  protected abstract startSnapshot(volumes: string[]): void;
  protected abstract issueWrite(client: ClientState): void;
  protected abstract receivePiece(node: SnapshotNode, piece: PieceRecord, entry: NodeId): void;
  protected abstract receivePieceAck(node: SnapshotNode, pieceId: number, writeId: number): void;
  protected abstract recordHoldWait(node: SnapshotNode, queued: { piece: PieceRecord; enqueuedAtMs: number }): void;
}
