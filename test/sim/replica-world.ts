// A simulated group of 3-5 members holding volumes with 2 or 3 replicas per page group, under
// crashes, pauses, partitions, loss, duplication and reordering, with clients writing and reading
// registers (one chunk each) through the replica sets: the ground the replica-set protocol
// (core/replica/) is judged on by replica-checker.ts. A client here plays the page's primary: a
// write goes to every replica of the set it routes by, tagged with that version, and counts as
// acknowledged when all of them applied it; a read asks every replica of the set and is valid
// when all confirm the version (one of them, drawn per read, supplies the value). Members: see
// replica-members.ts.
import { cloneReplicaTable, homeOf, replicasOf, sameTable, type ReplicaTable } from "../../core/replica/replica-table.ts";
import { planRehome } from "../../core/replica/rehome-plan.ts";
import { Prng } from "./kernel/prng.ts";
import type { ChunkValue } from "../../core/replica/fence.ts";
import { ReplicaMembersWorld } from "./replica-members.ts";
import type { ReplicaWorldOptions } from "./replica-world-base.ts";
import { CHUNKS_PER_GROUP, CLIENT_RETRY_MS, registerKey, type Payload, type ReadRecord, type ReplicaHistory, type WriteRecord } from "./replica-node.ts";

export { REPLICA_LINKS, type ReplicaLinks, type ReplicaWorldOptions } from "./replica-world-base.ts";
export { REPLICA_MODES, SABOTAGE_NAMES, type ReplicaHistory, type ReplicaMode, type ReplicaSabotage } from "./replica-node.ts";

interface Register {
  volume: string;
  group: number;
  chunk: number;
  key: string;
}

interface ClientOp {
  kind: "write" | "read";
  register: Register;
  attempt: number;
  version: number;
  /** Replicas yet to answer ok for this attempt. */
  waiting: Set<string>;
  /** Which replica of this attempt served it when. */
  served: { node: string; order: number }[];
  write?: WriteRecord;
  value?: ChunkValue;
  read?: { issuedOrder: number; preferred: string; answers: Map<string, ChunkValue | undefined> };
}

interface Client {
  id: string;
  tables: Map<string, ReplicaTable>;
  owned: Register[];
  op?: ClientOp;
}

export class ReplicaWorld extends ReplicaMembersWorld {
  private readonly clients = new Map<string, Client>();
  private readonly lastStamp = new Map<string, number>();
  private attemptSeq = 0;
  /** The operator (planOperator) has not seen its re-homing done yet, nor given up. */
  private operatorAsking = false;
  private readonly registers: Register[] = [];

  protected planWorkload(): void {
    this.planOperator();
    const registers = this.registers;
    for (const [volume, placement] of this.home) {
      for (let group = 0; group < placement.length; group++) {
        for (let chunk = 0; chunk < CHUNKS_PER_GROUP; chunk++) registers.push({ volume, group, chunk, key: registerKey(volume, group, chunk) });
      }
    }
    const { writerCount, readerCount } = this.scenario;
    const initial = new Map([...this.members[0]!.durable.catalog.tables].map(([volume, table]) => [volume, cloneReplicaTable(table)]));
    for (let i = 0; i < writerCount + readerCount; i++) {
      const id = i < writerCount ? `w${i}` : `r${i - writerCount}`;
      // One writer per register: its stamps grow, and each write starts after the previous one's ack.
      const owned = i < writerCount ? registers.filter((_, index) => index % writerCount === i) : [];
      const client: Client = { id, tables: new Map([...initial].map(([volume, table]) => [volume, cloneReplicaTable(table)])), owned };
      this.clients.set(id, client);
      this.at(this.rng.range(0, 5), () => this.next(client));
    }
  }

  /**
   * In half the runs with more members than copies, an operator re-homes one member's copies of
   * every volume: a drain (it stays up and in its sets until the policy drops it) or a forget (it
   * crashes and stays down until the heal; its drop comes first). The operator asks one other
   * member every 20 ms, with the plan from that member's table, as the admin service does. Its
   * own random stream, so the rest of a seed's run is what it was without it.
   */
  private planOperator(): void {
    const rng = new Prng(this.history.seed * 1_000_003 + 17);
    const replicas = this.scenario.mode === "r2" ? 2 : 3;
    if (this.memberIds.length <= replicas || !rng.chance(0.5)) return;
    const leaving = rng.chance(0.5) ? "live" : "gone";
    const node = rng.pick(this.memberIds);
    const asked = rng.pick(this.memberIds.filter((id) => id !== node));
    const candidates = this.memberIds.filter((id) => id !== node);
    const operator = { leaving, node, volumesRehomed: 0 } as const;
    this.history.operator = { ...operator };
    const startMs = rng.range(100, this.scenario.activeEndMs - 300);
    if (leaving === "gone") this.at(startMs, () => this.crash(this.byId.get(node)!, 1e9));
    this.operatorAsking = true;
    const ask = (): void => {
      if (this.nowMs > this.scenario.quiesceEndMs - 1000) {
        this.operatorAsking = false;
        return;
      }
      const member = this.byId.get(asked)!;
      let done = 0;
      if (member.up && !this.paused.has(asked)) {
        for (const [volume, striped] of this.home) {
          const plan = planRehome(member.volatile.runner.current.tables.get(volume)!, striped, node, candidates, leaving, this.memberIds);
          if (plan.kind === "done") done++;
          else if (plan.kind === "change" && member.volatile.runner.proposalsInFlight === 0) {
            this.operatorStep(member, { kind: "propose", nowMs: this.nowMs, volume, change: plan.change });
          }
        }
        this.history.operator!.volumesRehomed = done;
      }
      if (done < this.home.size) this.at(this.nowMs + 20, ask);
      else this.operatorAsking = false;
    };
    this.at(startMs + 10, ask);
  }

  private next(client: Client): void {
    const registers = this.registers;
    if (this.nowMs > this.scenario.activeEndMs) return;
    const writes = client.owned.length > 0 && this.rng.chance(0.75);
    const register = writes ? this.rng.pick(client.owned) : this.rng.pick(registers);
    const op: ClientOp = { kind: writes ? "write" : "read", register, attempt: 0, version: 0, waiting: new Set(), served: [] };
    if (writes) {
      const stamp = (this.lastStamp.get(register.key) ?? 0) + 1;
      this.lastStamp.set(register.key, stamp);
      op.value = { stamp, value: `${register.key}#${stamp}` };
      op.write = { register: register.key, stamp, issuedOrder: ++this.order, ackOrder: Infinity, ackVersion: 0, applies: [] };
      this.history.writes.push(op.write);
    } else {
      op.read = { issuedOrder: ++this.order, preferred: "", answers: new Map() };
    }
    client.op = op;
    this.attempt(client, op);
  }

  /** (Re)sends the op routed by the client's newest table; a silent attempt is retried. */
  private attempt(client: Client, op: ClientOp): void {
    const table = client.tables.get(op.register.volume)!;
    op.attempt = ++this.attemptSeq;
    op.version = table.version;
    const replicas = replicasOf(table, op.register.group);
    op.waiting = new Set(replicas);
    op.served = [];
    const { volume, group, chunk } = op.register;
    if (op.read) {
      op.read.preferred = this.rng.pick(replicas);
      op.read.answers.clear();
    }
    for (const node of replicas) {
      const payload: Payload = op.kind === "write" ? { kind: "write", attempt: op.attempt, volume, group, chunk, value: op.value!, routed: table.version } : { kind: "read", attempt: op.attempt, volume, group, chunk, routed: table.version };
      this.send(client.id, node, payload);
    }
    const attempt = op.attempt;
    this.at(this.nowMs + CLIENT_RETRY_MS, () => {
      if (client.op === op && op.attempt === attempt) this.attempt(client, op);
    });
  }

  protected clientReceives(clientId: string, from: string, payload: Payload): void {
    const client = this.clients.get(clientId);
    const op = client?.op;
    if (!client || !op || payload.kind !== "answer" || payload.attempt !== op.attempt) return;
    const known = payload.table && client.tables.get(payload.table.volume);
    if (payload.table && known && payload.table.version > known.version) client.tables.set(payload.table.volume, cloneReplicaTable(payload.table));
    const counted = payload.ok || (this.sabotage.activateBeforeRecorded === true && payload.reason === "behind");
    if (!counted) {
      // Routed by an old set: go again at once by the newer table; otherwise the retry timer does.
      if (payload.reason === "stale" || payload.reason === "not-replica") this.attempt(client, op);
      return;
    }
    op.waiting.delete(from);
    op.served.push({ node: from, order: payload.order });
    if (op.read) {
      op.read.answers.set(from, payload.value);
      const alone = this.sabotage.readFromOne === true;
      if (alone || op.waiting.size === 0) return this.readDone(client, op, alone ? from : op.read.preferred);
      return;
    }
    if (op.waiting.size > 0) return;
    op.write!.ackOrder = ++this.order;
    op.write!.ackVersion = op.version;
    op.write!.applies = op.served;
    this.log(`${client.id} write ${op.write!.register}#${op.write!.stamp} acknowledged under v${op.version}`);
    this.done(client);
  }

  private readDone(client: Client, op: ClientOp, from: string): void {
    const value = op.read!.answers.get(from);
    const record: ReadRecord = { register: op.register.key, issuedOrder: op.read!.issuedOrder, returnOrder: ++this.order, stamp: value?.stamp ?? 0, version: op.version, from };
    this.history.reads.push(record);
    this.done(client);
  }

  private done(client: Client): void {
    client.op = undefined;
    this.at(this.nowMs + this.rng.range(0, 5), () => this.next(client));
  }

  protected isSettled(): boolean {
    // Settled members stop their timers: an operator still asking could then never be answered.
    if (this.operatorAsking) return false;
    if ([...this.clients.values()].some((client) => client.op !== undefined)) return false;
    const first = this.members[0]!.durable.catalog;
    for (const member of this.members) {
      if (!member.up || member.volatile.runner.proposalsInFlight > 0 || member.volatile.persisting > 0) return false;
      for (const [volume, table] of member.durable.catalog.tables) {
        if (!sameTable(table, first.tables.get(volume)!)) return false;
      }
    }
    for (const [volume, striped] of this.home) {
      const table = first.tables.get(volume)!;
      const homeAgain = homeOf(table, striped).every((nodes, group) => {
        const set = table.sets[group]!;
        return set.length === nodes.length && set.every((entry) => nodes.includes(entry.node) && this.byId.get(entry.node)!.durable.catalog.syncedSince.get(`${volume}/${group}`) === entry.since);
      });
      if (!homeAgain) return false;
    }
    return true;
  }

  protected finish(): void {
    for (const client of this.clients.values()) {
      if (client.op?.write) this.history.pendingWrites.push(`${client.op.write.register}#${client.op.write.stamp} (client ${client.id})`);
    }
    this.history.final = this.members
      .filter((member) => member.up)
      .map((member) => ({
        node: member.id,
        tables: [...member.durable.catalog.tables.values()].map(cloneReplicaTable),
        chunks: new Map([...member.durable.chunks].map(([key, value]) => [key, value.stamp])),
        syncedSince: new Map(member.durable.catalog.syncedSince),
        proposers: member.volatile.runner.proposalsInFlight,
      }));
    this.checkCatalogs();
    const down = this.members.filter((member) => !member.up).map((member) => member.id);
    if (down.length > 0) this.history.errors.push(`members ${down.join(",")} still down at the end`);
  }
}

export function runReplicaWorld(options: ReplicaWorldOptions): ReplicaHistory {
  return new ReplicaWorld(options).run();
}
