// The page-move world's ground floor: its state, the run, virtual time and faults, node crashes
// and restarts, routing-table beliefs and the mesh's delivery. Client traffic (move-clients.ts)
// and the move protocol's roles (move-world.ts) are the layers above.
import type { MoveStepEffect } from "../../core/move/page-move.ts";
import { ownerOf, stripedTable, type RoutingTable } from "../../core/cluster/routing.ts";
import { Network } from "./kernel/network.ts";
import { SimWorld } from "./kernel/sim-world.ts";
import type { CrashPoint, MoveHistory, MoveSabotage, MoveScenario, MoveWorldOptions } from "./move-history.ts";
import {
  cloneTable,
  describeTable,
  EVENT_BUDGET,
  finalNode,
  makeScenario,
  MAX_POINT_CRASHES,
  MoveNode,
  ownersOf,
  syncPages,
  type ClientOp,
  type ClientState,
  type DecidedStep,
  type Payload,
} from "./move-node.ts";

export abstract class MoveWorldBase extends SimWorld {
  protected order = 0;
  protected timerSeq = 0;
  protected readonly network: Network<Payload>;
  protected readonly scenario: MoveScenario;
  protected readonly sabotage: MoveSabotage;
  protected readonly nodes: MoveNode[] = [];
  protected readonly byId = new Map<string, MoveNode>();
  protected readonly clients: ClientState[] = [];
  protected readonly history: MoveHistory;
  protected readonly pointsPassed = new Map<CrashPoint, number>();
  protected pointCrashesLeft = MAX_POINT_CRASHES;
  protected debtSeq = 0;
  protected healed = false;
  protected readonly coordinatorId: string;

  constructor(options: MoveWorldOptions) {
    super(options.seed, options.trace);
    this.sabotage = options.sabotage ?? {};
    this.scenario = makeScenario(this.rng);
    // FIFO per link, like the mesh's TCP connections, reordered across links; lossy, no duplicates.
    const netOptions = { delayMaxMs: this.scenario.delayMaxMs, lossRate: this.scenario.lossRate, fifoPerLink: true, selfImmediate: false };
    this.network = new Network<Payload>(this.sim, this.netRng, netOptions, (from, to, payload) => this.deliver(from, to, payload), (from, to, payload) =>
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
    const { activeEndMs, quiesceEndMs } = this.scenario;
    this.runPhases({ activeEndMs, quiesceEndMs, eventBudget: EVENT_BUDGET }, this.history);
    this.history.stepsCommitted = this.byId.get(this.coordinatorId)!.durable.coordinatorPlan!.committed;
    this.history.final = this.nodes.map(finalNode);
    return this.history;
  }

  // ---- workload and faults

  protected planWorkload(): void {
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

  protected planFaults(): void {
    for (let i = 0; i < this.scenario.timedCrashes; i++) {
      const node = this.faultRng.pick(this.nodes);
      this.at(this.faultRng.range(0, this.scenario.activeEndMs - 20), () => this.crash(node, "timed"));
    }
  }

  protected heal(): void {
    this.healed = true;
    this.network.heal();
    for (const node of this.nodes) if (!node.up) this.restart(node);
  }

  /** True if the node crashed here: the caller stops what it was doing. */
  protected crashPoint(node: MoveNode, point: CrashPoint): boolean {
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

  protected crash(node: MoveNode, why: string): void {
    if (!node.up || this.healed) return;
    this.history.crashes++;
    const downMs = this.faultRng.chance(0.3) ? this.faultRng.range(0.5, 10) : this.faultRng.range(10, 150);
    this.log(`${node.id} CRASH at ${why} (down ${downMs.toFixed(1)} ms)`);
    node.crash();
    this.recordBelief(node);
    this.at(this.nowMs + downMs, () => this.restart(node));
  }

  protected restart(node: MoveNode): void {
    if (node.up) return;
    node.restart();
    this.log(`${node.id} RESTART (table v${node.volatile.table.version})`);
    this.removeUnowned(node, this.sabotage.restartRemovesByTableOnly === true);
    this.recordBelief(node);
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.gossipIntervalMs), () => this.gossip(node));
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.writebackIntervalMs), () => this.writeback(node));
    if (node.durable.coordinatorPlan) this.atOn(node, this.nowMs + this.rng.range(0, 10), () => this.coordinate(node));
  }

  /**
   * Drops copies of pages this node does not own, except pages sent to it for a routing version
   * newer than its table: that step may have committed at the source, which dropped its own copy.
   */
  protected removeUnowned(node: MoveNode, ignoreInstallVersion: boolean): void {
    for (const pages of [node.volatile.memoryPages, node.durable.pages]) {
      for (const [page, copy] of pages) {
        if (ownerOf(node.volatile.table, page) === node.id) continue;
        if (!ignoreInstallVersion && copy.installedFor > node.volatile.table.version) continue;
        pages.delete(page);
        if (pages === node.durable.pages) this.log(`${node.id} drops its copy of page ${page} (not its own in v${node.volatile.table.version})`);
      }
    }
  }

  protected recordBelief(node: MoveNode): void {
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
  protected adopt(node: MoveNode, table: RoutingTable): boolean {
    if (table.version <= node.volatile.table.version) return false;
    node.durable.table = cloneTable(table);
    node.volatile.table = cloneTable(table);
    this.log(`${node.id} adopts table v${table.version} ${ownersOf(table).join(",")}`);
    this.removeUnowned(node, false);
    this.recordBelief(node);
    return true;
  }

  // ---- network

  protected send(from: string, to: string, payload: Payload): void {
    this.network.send(from, to, payload);
  }

  protected deliver(from: string, to: string, payload: Payload): void {
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
        const running = node.volatile.running;
        if (running?.key !== payload.key) return;
        if (!payload.precopy) return running.installed?.();
        const written = [...(node.volatile.copyWritten ?? [])];
        node.volatile.copyWritten = undefined;
        return running.copied?.({ written });
      }
      case "publish":
        if (this.adopt(node, payload.table) && this.crashPoint(node, "target:adopted")) return;
        return this.send(node.id, from, { kind: "published", key: payload.key });
      case "published":
        if (node.volatile.running?.key === payload.key) node.volatile.running.published?.();
        return;
      case "gossip":
        if (!this.adopt(node, payload.table) && !payload.answer && payload.table.version < node.volatile.table.version) {
          this.send(node.id, from, { kind: "gossip", table: node.volatile.table, answer: true });
        }
        return;
    }
  }

  protected gossip(node: MoveNode): void {
    const peers = this.nodes.filter((peer) => peer !== node);
    this.send(node.id, this.rng.pick(peers).id, { kind: "gossip", table: cloneTable(node.volatile.table), answer: false });
    this.atOn(node, this.nowMs + this.rng.range(0.5, 1.5) * this.scenario.gossipIntervalMs, () => this.gossip(node));
  }


  // ---- what the layers above handle (move-clients.ts, move-world.ts)

  protected abstract issue(client: ClientState): void;
  protected abstract receiveReply(reply: Extract<Payload, { kind: "reply" }>): void;
  protected abstract route(node: MoveNode, op: ClientOp, hops: number): void;
  protected abstract passAnswerBack(node: MoveNode, answer: Extract<Payload, { kind: "answer" }>): void;
  protected abstract flushAnswered(node: MoveNode, peer: string, key: string, ok: boolean): void;
  protected abstract writeback(node: MoveNode): void;
  protected abstract coordinate(node: MoveNode): void;
  protected abstract stepDone(node: MoveNode, done: Extract<Payload, { kind: "step.done" }>): void;
  protected abstract startStep(node: MoveNode, coordinator: string, step: DecidedStep, key: string): void;
  protected abstract runEffects(node: MoveNode, effects: MoveStepEffect[]): void;
  protected abstract install(node: MoveNode, source: string, install: Extract<Payload, { kind: "install" }>): void;
}
