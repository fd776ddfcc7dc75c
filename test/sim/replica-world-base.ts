// The replica-set world's ground floor: members on a lossy, duplicating, reordering mesh; crashes
// (memory and records not yet durable lost, disk kept), pauses (a stopped process: nothing runs,
// messages and timers wait, then all of it at once), partitions that cut one member off from the
// others (clients still reach it, as a client on that node would). Members host the protocol's
// runner in replica-members.ts; clients are in replica-world.ts.
import type { ReplicaMember } from "../../core/replica/replica-member.ts";
import { cloneReplicaTable, describeTable, initialTable, type ReplicaTable } from "../../core/replica/replica-table.ts";
import { Network } from "./kernel/network.ts";
import { SimWorld } from "./kernel/sim-world.ts";
import {
  EVENT_BUDGET,
  SETTLE_CHECK_MS,
  makeScenario,
  Member,
  type MemberDisk,
  type HistoryEvent,
  type Payload,
  type ReplicaHistory,
  type ReplicaMode,
  type ReplicaSabotage,
  type ReplicaScenario,
} from "./replica-node.ts";

export interface ReplicaWorldOptions {
  seed: number;
  mode: ReplicaMode;
  sabotage?: ReplicaSabotage;
  trace?: (line: string) => void;
  /**
   * "reorder" (default): messages lost, duplicated (late too) and reordered on every link, and the
   * store keeps a stamp per chunk so a late duplicate of a write never undoes a newer one.
   * "fifo": each link delivers in send order, duplicates and all. Some schedules only happen in
   * order: a member's restart learning a table straight from a join copy found a lost write that
   * the reordering runs had not (4c2a48f).
   * "tcp": the node's mesh and store: in order, never duplicated (a lost message stands for a
   * broken connection), and the store overwrites whatever it is given, as the node's page store
   * does (it keeps no per-chunk stamp). What the protocol itself must then keep in order (a
   * resync copy must never land after a newer write or copy of the chunk) is put to the test.
   */
  links?: ReplicaLinks;
}

export type ReplicaLinks = "reorder" | "fifo" | "tcp";
export const REPLICA_LINKS: readonly ReplicaLinks[] = ["reorder", "fifo", "tcp"];

/** A history event before the world numbers it (Omit over each member of the union). */
type Distributed = HistoryEvent extends infer E ? (E extends HistoryEvent ? Omit<E, "order"> : never) : never;

export abstract class ReplicaWorldBase extends SimWorld {
  protected order = 0;
  protected readonly scenario: ReplicaScenario;
  protected readonly sabotage: ReplicaSabotage;
  /** The store overwrites a chunk with whatever is applied (links "tcp"), as the node's does. */
  protected readonly storeOverwrites: boolean;
  protected readonly network: Network<Payload>;
  protected readonly members: Member[] = [];
  protected readonly byId = new Map<string, Member>();
  protected readonly memberIds: string[];
  protected readonly home = new Map<string, string[][]>();
  protected readonly history: ReplicaHistory;
  /** Paused members and what waits for them (deliveries and timers, in arrival order). */
  protected readonly paused = new Map<string, (() => void)[]>();
  /** Members cut off from the other members. */
  protected readonly isolated = new Set<string>();
  protected healed = false;
  /** Everything settled after the heal: members stop re-arming their timers so the run ends. */
  protected settled = false;

  constructor(options: ReplicaWorldOptions) {
    super(options.seed, options.trace);
    this.sabotage = options.sabotage ?? {};
    this.scenario = makeScenario(this.rng, options.mode);
    const s = this.scenario;
    const links = options.links ?? "reorder";
    this.storeOverwrites = links === "tcp";
    const netOptions = { delayMaxMs: s.delayMaxMs, lossRate: s.lossRate, dupRate: links === "tcp" ? 0 : s.dupRate, lateDupRate: 0.3, fifoPerLink: links !== "reorder", selfImmediate: true };
    this.network = new Network<Payload>(this.sim, this.netRng, netOptions, (from, to, payload) => this.deliver(from, to, payload), (from, to, payload) =>
      this.log(`${from} -> ${to} ${payload.kind} LOST`),
    );
    this.memberIds = Array.from({ length: s.memberCount }, (_, i) => `n${i}`);
    const replicas = s.mode === "r2" ? 2 : 3;
    const tables: ReplicaTable[] = [];
    for (let v = 0; v < s.volumeCount; v++) {
      const volume = `vol${v}`;
      // Each group's R replicas on distinct members, rotating so every member gets a share.
      const placement = Array.from({ length: s.groupsPerVolume }, (_, group) => Array.from({ length: replicas }, (_, r) => this.memberIds[(v + group + r) % s.memberCount]!));
      this.home.set(volume, placement);
      tables.push(initialTable(volume, placement));
    }
    for (const id of this.memberIds) {
      const member = new Member(id, tables.map(cloneReplicaTable), (node, disk) => this.boot(node, disk));
      this.members.push(member);
      this.byId.set(id, member);
    }
    this.history = {
      seed: options.seed,
      scenario: s,
      members: this.memberIds,
      home: this.home,
      writes: [],
      reads: [],
      events: [],
      pendingWrites: [],
      final: [],
      crashes: 0,
      pauses: 0,
      partitions: 0,
      setChanges: 0,
      refusals: new Map(),
      copiesApplied: 0,
      joinsApplied: 0,
      recordWritesLost: 0,
      errors: [],
      eventCount: 0,
    };
    for (const table of tables) for (const id of this.memberIds) this.event({ kind: "record", node: id, volume: table.volume, version: 1, table });
  }

  protected event(event: Distributed): void {
    this.history.events.push({ ...event, order: ++this.order } as HistoryEvent);
  }

  // ---- faults

  protected planFaults(): void {
    const s = this.scenario;
    const when = (): number => this.faultRng.range(50, s.activeEndMs - 100);
    for (let i = 0; i < s.crashes; i++) {
      const member = this.faultRng.pick(this.members);
      const downMs = this.faultRng.chance(0.3) ? this.faultRng.range(1, 30) : this.faultRng.range(60, 400);
      this.at(when(), () => this.crash(member, downMs));
    }
    for (let i = 0; i < s.pauses; i++) {
      const member = this.faultRng.pick(this.members);
      const pauseMs = this.faultRng.range(40, 300);
      this.at(when(), () => this.pause(member, pauseMs));
    }
    for (let i = 0; i < s.partitions; i++) {
      const member = this.faultRng.pick(this.members);
      const cutMs = this.faultRng.range(60, 400);
      this.at(when(), () => this.isolate(member, cutMs));
    }
  }

  protected heal(): void {
    this.healed = true;
    this.at(this.nowMs + SETTLE_CHECK_MS, () => this.checkSettled());
    this.network.heal();
    this.isolated.clear();
    for (const member of this.members) {
      this.resume(member);
      if (!member.up) this.restart(member);
    }
  }

  protected crash(member: Member, downMs: number): void {
    if (!member.up || this.healed) return;
    this.history.crashes++;
    this.log(`${member.id} CRASH (down ${downMs.toFixed(1)} ms)`);
    this.paused.delete(member.id);
    this.history.recordWritesLost += member.volatile.persisting;
    member.crash();
    this.at(this.nowMs + downMs, () => this.restart(member));
  }

  protected restart(member: Member): void {
    if (member.up) return;
    member.restart();
    this.log(`${member.id} RESTART ${[...member.durable.catalog.tables.values()].map(describeTable).join("; ")}`);
    this.startTimers(member);
  }

  private pause(member: Member, pauseMs: number): void {
    if (!member.up || this.paused.has(member.id) || this.healed) return;
    this.history.pauses++;
    this.log(`${member.id} PAUSE ${pauseMs.toFixed(1)} ms`);
    this.paused.set(member.id, []);
    this.at(this.nowMs + pauseMs, () => this.resume(member));
  }

  private resume(member: Member): void {
    const waiting = this.paused.get(member.id);
    if (waiting === undefined) return;
    this.paused.delete(member.id);
    this.log(`${member.id} RESUME (${waiting.length} waiting)`);
    for (const run of waiting) if (member.up && !this.paused.has(member.id)) run();
  }

  private isolate(member: Member, cutMs: number): void {
    if (this.healed || this.isolated.has(member.id)) return;
    this.history.partitions++;
    this.log(`${member.id} CUT OFF from the other members for ${cutMs.toFixed(1)} ms`);
    this.isolated.add(member.id);
    this.at(this.nowMs + cutMs, () => this.isolated.delete(member.id));
  }

  private checkSettled(): void {
    if (this.isSettled()) {
      this.settled = true;
      this.log("SETTLED");
      return;
    }
    this.at(this.nowMs + SETTLE_CHECK_MS, () => this.checkSettled());
  }

  /** A member's own timer: dies with its incarnation, waits while it is paused; none once the run settled (unless `always`: a write under way). */
  protected timer(member: Member, atMs: number, run: () => void, always = false): void {
    if (this.settled && !always) return;
    // One armed before the run settled does not fire after it either: a late suspicion would
    // otherwise drop a replica from a set that nobody's timers will ever add back.
    this.atOn(member, atMs, () => {
      if (!this.settled || always) this.whenRunning(member, run);
    });
  }

  private whenRunning(member: Member, run: () => void): void {
    const waiting = this.paused.get(member.id);
    if (waiting !== undefined) waiting.push(run);
    else run();
  }

  // ---- mesh

  protected send(from: string, to: string, payload: Payload): void {
    if (from !== to && this.byId.has(from) && this.byId.has(to) && (this.isolated.has(from) || this.isolated.has(to))) return;
    this.network.send(from, to, payload);
  }

  private deliver(from: string, to: string, payload: Payload): void {
    const member = this.byId.get(to);
    if (member === undefined) return this.clientReceives(to, from, payload);
    if (!member.up) return;
    const incarnation = member.incarnation;
    this.whenRunning(member, () => {
      if (member.up && member.incarnation === incarnation) this.receive(member, from, payload);
    });
  }

  run(): ReplicaHistory {
    const { activeEndMs, quiesceEndMs } = this.scenario;
    for (const member of this.members) this.startTimers(member);
    this.runPhases({ activeEndMs, quiesceEndMs, eventBudget: EVENT_BUDGET }, this.history);
    this.finish();
    return this.history;
  }

  /** A process starts: its runner, built from what its disk holds. */
  protected abstract boot(id: string, disk: MemberDisk): ReplicaMember;
  /** Arms the (re)started process's first tick. */
  protected abstract startTimers(member: Member): void;
  protected abstract receive(member: Member, from: string, payload: Payload): void;
  protected abstract clientReceives(client: string, from: string, payload: Payload): void;
  protected abstract finish(): void;
  /** Nothing left to do: what the checker's liveness rule demands at the end. */
  protected abstract isSettled(): boolean;
}
