// The members' side of the replica-set world: acceptors (durable before the reply), proposers
// driven by what a member suspects (core/replica/set-change-policy.ts), the fence on every write
// and read, resync copies from a group's source to a returning replica, and join copies from
// every up-to-date survivor once the add is recorded. Clients are in replica-world.ts.
import { onAccept, onPrepare, type SlotRecord } from "../../core/replica/acceptor.ts";
import { changedCount, copied, copyLost, newAwayMap, noteWrite, remainder, takeBatch } from "../../core/replica/away-map.ts";
import { admit, newerThan, type ChunkValue } from "../../core/replica/fence.ts";
import { describeChange, sinceOf, withChange, type ReplicaTable, type SetChange } from "../../core/replica/replica-table.ts";
import { proposalFor, resyncSource } from "../../core/replica/set-change-policy.ts";
import { SetChangeProposer, type ProposerEffect } from "../../core/replica/set-change-proposer.ts";
import { ReplicaWorldBase } from "./replica-world-base.ts";
import {
  CHUNKS_PER_GROUP,
  COPY_BATCH_CHUNKS,
  COPY_TIMEOUT_MS,
  JOIN_CHUNKS_MAX,
  POLICY_INTERVAL_MS,
  PROPOSER,
  RECORD_DELAY_MS,
  registerKey,
  SUSPECT_AFTER_MS,
  type Member,
  type Payload,
} from "./replica-node.ts";

type Of<K extends Payload["kind"]> = Extract<Payload, { kind: K }>;

export abstract class ReplicaMembersWorld extends ReplicaWorldBase {
  private batchSeq = 0;
  private timerSeq = 0;

  protected override startTimers(member: Member): void {
    super.startTimers(member);
    this.timer(member, this.nowMs + this.rng.range(0, POLICY_INTERVAL_MS), () => this.policyTick(member));
  }

  protected override restart(member: Member): void {
    // Copies in flight died with the process: their chunks go in a later batch.
    for (const map of member.durable.awayMaps.values()) map.inFlight.clear();
    super.restart(member);
  }

  protected receive(member: Member, from: string, payload: Payload): void {
    if (this.byId.has(from)) member.volatile.lastHeardMs.set(from, this.nowMs);
    switch (payload.kind) {
      case "heartbeat":
        for (const table of payload.tables) this.adopt(member, table);
        return;
      case "prepare":
      case "accept":
        return this.acceptor(member, from, payload);
      case "acceptor-reply": {
        const proposer = member.volatile.proposers.get(payload.volume);
        if (proposer) this.runProposer(member, proposer, proposer.onReply(from, payload.reply, this.nowMs));
        return;
      }
      case "write":
        return this.write(member, from, payload);
      case "read":
        return this.read(member, from, payload);
      case "copy":
        this.history.copiesApplied++;
        for (const [chunk, value] of payload.chunks) this.store(member, registerKey(payload.volume, payload.group, chunk), value);
        return this.send(member.id, from, { kind: "copied", batch: payload.batch });
      case "copied":
        return this.copyConfirmed(member, payload.batch);
      case "join":
        return this.join(member, from, payload);
      case "join-request":
        return this.sendJoin(member, payload.volume, payload.group, from);
      case "joined": {
        // The joiner is up to date for this membership: no map for it is needed (unless it left again since).
        const table = member.durable.tables.get(payload.volume)!;
        if (sinceOf(table, payload.group, from) !== payload.since) return;
        const key = `${payload.volume}/${payload.group}/${from}`;
        member.durable.peersUpToDate.add(`${key}@${payload.since}`);
        member.durable.awayMaps.delete(key);
        return;
      }
      case "answer":
        return;
    }
  }

  // ---- acceptor

  private acceptor(member: Member, from: string, p: Of<"prepare"> | Of<"accept">): void {
    const key = `${p.volume}@${p.version}`;
    const recorded = member.durable.tables.get(p.volume)!;
    const current = member.volatile.unsynced.get(key) ?? member.durable.slots.get(key);
    const step = p.kind === "prepare" ? onPrepare(current, p.version, p.ballot, recorded) : onAccept(current, p.version, p.ballot, p.value, recorded);
    if (step.record) this.persistSlot(member, key, step.record);
    if (step.reply.kind === "accepted" && p.kind === "accept") {
      this.event({ kind: "accepted", node: member.id, volume: p.volume, version: p.version, ballot: p.ballot, value: p.value });
    }
    this.send(member.id, from, { kind: "acceptor-reply", volume: p.volume, reply: step.reply });
    // A crash just after a reply left: what the reply promised must already be on disk.
    if (step.record && this.faultRng.chance(this.scenario.pointCrashRate)) this.crash(member, this.faultRng.range(5, 80));
  }

  private persistSlot(member: Member, key: string, record: SlotRecord): void {
    if (!this.sabotage.acceptorRepliesBeforeDurable) {
      member.durable.slots.set(key, record);
      return;
    }
    member.volatile.unsynced.set(key, record);
    this.timer(member, this.nowMs + RECORD_DELAY_MS, () => {
      const latest = member.volatile.unsynced.get(key);
      if (latest === undefined) return;
      member.durable.slots.set(key, latest);
      member.volatile.unsynced.delete(key);
    });
  }

  // ---- proposer

  private suspected(member: Member): Set<string> {
    const limitMs = this.nowMs - SUSPECT_AFTER_MS;
    return new Set(this.memberIds.filter((id) => id !== member.id && (member.volatile.lastHeardMs.get(id) ?? 0) < limitMs));
  }

  private policyTick(member: Member): void {
    const suspected = this.suspected(member);
    for (const table of member.durable.tables.values()) {
      this.resync(member, table, suspected);
      if (member.volatile.proposers.has(table.volume)) continue;
      const change = proposalFor({
        self: member.id,
        table,
        suspected,
        home: this.home.get(table.volume)!,
        synced: (group) => this.synced(member, table, group),
        lacking: (group, node) => {
          const map = member.durable.awayMaps.get(`${table.volume}/${group}/${node}`);
          return map === undefined ? undefined : changedCount(map);
        },
        joinChunksMax: JOIN_CHUNKS_MAX,
      });
      if (change) this.propose(member, table, change);
    }
    this.requestJoins(member);
    this.timer(member, this.nowMs + POLICY_INTERVAL_MS * this.rng.range(0.8, 1.2), () => this.policyTick(member));
  }

  private propose(member: Member, base: ReplicaTable, change: SetChange): void {
    const { minorityQuorum, ignoreAccepted } = this.sabotage;
    const config = { self: member.id, members: this.memberIds, ...PROPOSER, jitter: () => this.rng.float(), sabotage: { minorityQuorum, ignoreAccepted } };
    const proposer = new SetChangeProposer(config, base, withChange(base, change));
    this.log(`${member.id} proposes ${base.volume} v${proposer.version}: ${describeChange(change)}`);
    member.volatile.proposers.set(base.volume, proposer);
    this.runProposer(member, proposer, proposer.start(this.nowMs));
  }

  private runProposer(member: Member, proposer: SetChangeProposer, effects: ProposerEffect[]): void {
    const volume = proposer.base.volume;
    for (const effect of effects) {
      switch (effect.kind) {
        case "prepare":
          for (const to of effect.to) this.send(member.id, to, { kind: "prepare", volume, version: effect.version, ballot: effect.ballot });
          break;
        case "accept":
          for (const to of effect.to) this.send(member.id, to, { kind: "accept", volume, version: effect.version, ballot: effect.ballot, value: effect.value });
          break;
        case "chosen":
          this.history.setChanges++;
          this.event({ kind: "claimed", node: member.id, volume, version: effect.table.version, value: effect.table });
          this.adopt(member, effect.table);
          for (const to of this.memberIds) if (to !== member.id) this.send(member.id, to, { kind: "heartbeat", tables: [effect.table] });
          break;
        case "superseded":
          this.adopt(member, effect.table);
          break;
        case "gave-up":
          this.log(`${member.id} gives up on ${volume} v${proposer.version} after ${effect.attempts} ballots`);
          break;
      }
    }
    if (proposer.phase === "done") {
      if (member.volatile.proposers.get(volume) === proposer) member.volatile.proposers.delete(volume);
      return;
    }
    const wakeAtMs = proposer.nextWakeAtMs()!;
    const generation = ++this.timerSeq;
    member.volatile.proposerTimer.set(volume, generation);
    this.timer(member, wakeAtMs, () => {
      if (member.volatile.proposers.get(volume) !== proposer || member.volatile.proposerTimer.get(volume) !== generation) return;
      this.runProposer(member, proposer, proposer.onTick(this.nowMs));
    });
  }

  // ---- replicas: fence, registers

  private synced(member: Member, table: ReplicaTable, group: number): boolean {
    const since = sinceOf(table, group, member.id);
    return since !== undefined && member.durable.syncedSince.get(`${table.volume}/${group}`) === since;
  }

  private admission(member: Member, volume: string, group: number, routed: number): ReturnType<typeof admit> {
    const table = member.durable.tables.get(volume)!;
    const view = { self: member.id, table, syncedSince: (g: number) => member.durable.syncedSince.get(`${volume}/${g}`) };
    return admit(view, group, routed, { ignoreFence: this.sabotage.ignoreFence });
  }

  private write(member: Member, from: string, p: Of<"write">): void {
    const admission = this.admission(member, p.volume, p.group, p.routed);
    const table = member.durable.tables.get(p.volume)!;
    if (!admission.ok) return this.refuse(member, from, p.attempt, admission.reason, table);
    this.store(member, registerKey(p.volume, p.group, p.chunk), p.value);
    // Every write applied here is one an away replica of the group lacks, even a retry of one already here.
    const prefix = `${p.volume}/${p.group}/`;
    for (const [key, map] of member.durable.awayMaps) if (key.startsWith(prefix)) noteWrite(map, p.chunk);
    this.send(member.id, from, { kind: "answer", attempt: p.attempt, ok: true, table, order: ++this.order });
  }

  private read(member: Member, from: string, p: Of<"read">): void {
    const admission = this.admission(member, p.volume, p.group, p.routed);
    const table = member.durable.tables.get(p.volume)!;
    if (!admission.ok) return this.refuse(member, from, p.attempt, admission.reason, table);
    const value = member.durable.chunks.get(registerKey(p.volume, p.group, p.chunk));
    this.send(member.id, from, { kind: "answer", attempt: p.attempt, ok: true, ...(value ? { value } : {}), table, order: ++this.order });
  }

  private refuse(member: Member, to: string, attempt: number, reason: string, table: ReplicaTable): void {
    this.history.refusals.set(reason, (this.history.refusals.get(reason) ?? 0) + 1);
    this.send(member.id, to, { kind: "answer", attempt, ok: false, reason, table, order: ++this.order });
  }

  private store(member: Member, key: string, value: ChunkValue): void {
    if (newerThan(value, member.durable.chunks.get(key))) member.durable.chunks.set(key, { ...value });
  }

  // ---- resync and join

  /** As a group's source, copy what a returning home replica lacks, a batch at a time, while writes go on. */
  private resync(member: Member, table: ReplicaTable, suspected: Set<string>): void {
    const home = this.home.get(table.volume)!;
    table.sets.forEach((set, group) => {
      if (resyncSource(table, group, suspected) !== member.id || !this.synced(member, table, group)) return;
      for (const node of home[group]!) {
        if (set.some((entry) => entry.node === node) || suspected.has(node)) continue;
        const key = `${table.volume}/${group}/${node}`;
        let map = member.durable.awayMaps.get(key);
        // No map (this member was not a replica when the node left): it may lack anything.
        if (map === undefined) member.durable.awayMaps.set(key, (map = newAwayMap(group, node, table.version, range(CHUNKS_PER_GROUP))));
        const batch = takeBatch(map, COPY_BATCH_CHUNKS);
        if (batch.length === 0) continue;
        const id = ++this.batchSeq;
        member.volatile.copiesInFlight.set(id, { key, chunks: batch });
        if (this.sabotage.resyncForgetsOnSend) copied(map, batch);
        this.send(member.id, node, { kind: "copy", batch: id, volume: table.volume, group, chunks: this.values(member, table.volume, group, batch) });
        const inFlight = map;
        this.timer(member, this.nowMs + COPY_TIMEOUT_MS, () => {
          const copy = member.volatile.copiesInFlight.get(id);
          if (copy === undefined) return;
          member.volatile.copiesInFlight.delete(id);
          if (member.durable.awayMaps.get(key) === inFlight) copyLost(inFlight, copy.chunks);
        });
      }
    });
  }

  private copyConfirmed(member: Member, batch: number): void {
    const copy = member.volatile.copiesInFlight.get(batch);
    if (copy === undefined) return;
    member.volatile.copiesInFlight.delete(batch);
    const map = member.durable.awayMaps.get(copy.key);
    if (map) copied(map, copy.chunks);
  }

  private values(member: Member, volume: string, group: number, chunks: number[]): [number, ChunkValue][] {
    const out: [number, ChunkValue][] = [];
    for (const chunk of chunks) {
      const value = member.durable.chunks.get(registerKey(volume, group, chunk));
      if (value) out.push([chunk, { ...value }]);
    }
    return out;
  }

  /**
   * A replica whose copy of a group is not up to date for its membership asks every other replica
   * of the set for its join copy, until one arrives. Any up-to-date replica can answer: its copy
   * holds every write acknowledged so far (it got one join copy itself, or was there from the
   * start, and every later write needed it), and writes under versions that include the joiner
   * cannot be acknowledged until the joiner is up to date. Pulling, not owing: the replicas that
   * were up to date when the node joined may all be gone by the time it asks.
   */
  private requestJoins(member: Member): void {
    for (const table of member.durable.tables.values()) {
      table.sets.forEach((set, group) => {
        const since = sinceOf(table, group, member.id);
        if (since === undefined || this.synced(member, table, group)) return;
        for (const entry of set) if (entry.node !== member.id) this.send(member.id, entry.node, { kind: "join-request", volume: table.volume, group, since });
      });
    }
  }

  protected sendJoin(member: Member, volume: string, group: number, node: string): void {
    const table = member.durable.tables.get(volume)!;
    const since = sinceOf(table, group, node);
    if (since === undefined || node === member.id || !this.synced(member, table, group)) return;
    // A map is valid only while this member stayed a replica since the node left (voidMaps); without one, every chunk.
    const map = member.durable.awayMaps.get(`${volume}/${group}/${node}`);
    const chunks = this.sabotage.joinWithoutCopy ? [] : map === undefined ? range(CHUNKS_PER_GROUP) : remainder(map);
    this.send(member.id, node, { kind: "join", table, group, since, chunks: this.values(member, volume, group, chunks) });
  }

  private join(member: Member, from: string, p: Of<"join">): void {
    this.adopt(member, p.table);
    const table = member.durable.tables.get(p.table.volume)!;
    if (sinceOf(table, p.group, member.id) !== p.since) return;
    for (const [chunk, value] of p.chunks) this.store(member, registerKey(table.volume, p.group, chunk), value);
    if (member.durable.syncedSince.get(`${table.volume}/${p.group}`) !== p.since) this.history.joinsApplied++;
    member.durable.syncedSince.set(`${table.volume}/${p.group}`, p.since);
    // Every replica of the set learns it: a later drop of this node may then start an empty map.
    const joined: Payload = { kind: "joined", volume: table.volume, group: p.group, since: p.since };
    for (const entry of table.sets[p.group]!) if (entry.node !== member.id) this.send(member.id, entry.node, joined);
    if (!table.sets[p.group]!.some((entry) => entry.node === from)) this.send(member.id, from, joined);
  }
}

function range(count: number): number[] {
  return Array.from({ length: count }, (_, i) => i);
}
