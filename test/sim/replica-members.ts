// The members' side of the replica-set world: each member hosts the runner the node will run
// (core/replica/replica-member.ts) the way its header says a node does, so what the simulation
// proves is proven of that code. The host here delivers messages (attaching a copy's or a join's
// chunk data from the member's store), writes records to the member's catalog after the scenario's
// persist delay, in order (a crash before loses them), applies chunk data to the store, answers
// clients and fires the one timer the runner asks for. A restart rebuilds the runner from the
// catalog through its stored form (encode, then decode), as a node's boot does.
import type { Ballot } from "../../core/replica/acceptor.ts";
import type { ChunkValue } from "../../core/replica/fence.ts";
import { newerThan } from "../../core/replica/fence.ts";
import { parsePeerMessage, type ChunkApply, type MemberEvent, type MemberReady, type Outgoing, type PeerMessage, type RequestReply } from "../../core/replica/member-messages.ts";
import { applyRecord, decodeMemberState, encodeMemberState, type MemberRecord } from "../../core/replica/member-state.ts";
import { ReplicaMember } from "../../core/replica/replica-member.ts";
import { describeTable } from "../../core/replica/replica-table.ts";
import { ReplicaWorldBase } from "./replica-world-base.ts";
import {
  CHUNKS_PER_GROUP,
  COPY_BATCH_CHUNKS,
  COPY_TIMEOUT_MS,
  HEARTBEAT_INTERVAL_MS,
  JOIN_CHUNKS_MAX,
  POLICY_INTERVAL_MS,
  PROPOSER,
  RECORD_DELAY_MS,
  registerKey,
  SUSPECT_AFTER_MS,
  type Member,
  type MemberDisk,
  type Payload,
} from "./replica-node.ts";

/** Crashes in the middle of a catalog write, per run: enough to lose records, few enough to leave the run its progress. */
const MID_WRITE_CRASHES_MAX = 2;

export abstract class ReplicaMembersWorld extends ReplicaWorldBase {
  private requestSeq = 0;
  private midWriteCrashesLeft = MID_WRITE_CRASHES_MAX;

  protected boot(id: string, disk: MemberDisk): ReplicaMember {
    const { minorityQuorum, ignoreAccepted, ignoreFence, joinWithoutCopy, resyncForgetsOnSend, takeAnyCopy } = this.sabotage;
    const config = {
      self: id,
      members: this.memberIds,
      bootId: `${this.byId.get(id)?.incarnation ?? 0}`,
      home: (volume: string) => this.home.get(volume),
      chunksPerGroup: () => CHUNKS_PER_GROUP,
      heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS,
      suspectAfterMs: SUSPECT_AFTER_MS,
      policyIntervalMs: POLICY_INTERVAL_MS,
      copyBatchChunks: COPY_BATCH_CHUNKS,
      copyBatchesInFlight: 2,
      copyTimeoutMs: COPY_TIMEOUT_MS,
      joinChunksMax: JOIN_CHUNKS_MAX,
      proposer: PROPOSER,
      random: () => this.rng.float(),
      sabotage: { minorityQuorum, ignoreAccepted, ignoreFence, joinWithoutCopy, resyncForgetsOnSend, takeAnyCopy },
    };
    // Through the stored form, as a node reads its catalog: a record the encoding drops is a record lost.
    return new ReplicaMember(config, decodeMemberState(encodeMemberState(disk.catalog)), this.nowMs);
  }

  /** An operator's request to a member (route forget / drain's re-homing), carried out like any step. */
  protected operatorStep(member: Member, event: MemberEvent): void {
    this.carryOut(member, member.volatile.runner.step(event));
  }

  protected startTimers(member: Member): void {
    this.carryOut(member, member.volatile.runner.step({ kind: "tick", nowMs: this.nowMs }));
  }

  protected receive(member: Member, from: string, payload: Payload): void {
    const runner = member.volatile.runner;
    switch (payload.kind) {
      case "peer":
        // Through the decoder a node's mesh uses: every message a runner sends must pass it.
        return this.carryOut(member, runner.step({ kind: "message", nowMs: this.nowMs, from, message: parsePeerMessage(payload.message) }), payload.data);
      case "write":
      case "read": {
        const id = ++this.requestSeq;
        member.volatile.requests.set(id, { from, attempt: payload.attempt, ...(payload.kind === "write" ? { value: payload.value } : {}) });
        const { volume, group, chunk, routed } = payload;
        return this.carryOut(member, runner.step({ kind: "request", nowMs: this.nowMs, request: { id, kind: payload.kind, volume, group, chunk, routed } }));
      }
      case "answer":
        return;
    }
  }

  /** One Ready, in the order replica-member.ts asks of a host. `data`: the chunks that came with the message stepped. */
  private carryOut(member: Member, ready: MemberReady, data?: [number, ChunkValue][]): void {
    const process = member.volatile;
    this.note(member, ready);
    for (const apply of ready.applies) this.apply(member, apply, data);
    let promised = false;
    for (const outgoing of ready.messages) {
      this.sendPeer(member, outgoing);
      const message = outgoing.message;
      promised ||= message.kind === "acceptor-reply" && (message.reply.kind === "promise" || message.reply.kind === "accepted");
    }
    for (const reply of ready.replies) this.answer(member, reply);
    this.arm(member, ready.wakeAtMs);
    // Last: with no persist delay the records are durable at once and what waited on them comes out (a nested Ready).
    if (ready.durableSeq !== undefined) this.persist(member, ready.records, ready.durableSeq);
    // A crash just after a promise or an acceptance left: what it vouched for must already be on disk.
    if (promised && member.up && member.volatile === process && this.faultRng.chance(this.scenario.pointCrashRate)) this.crash(member, this.faultRng.range(5, 80));
  }

  private note(member: Member, ready: MemberReady): void {
    for (const note of ready.notes) {
      switch (note.kind) {
        case "proposed":
          this.log(`${member.id} proposes ${note.volume} v${note.version}: ${note.change}`);
          break;
        case "chosen":
          this.history.setChanges++;
          this.event({ kind: "claimed", node: member.id, volume: note.table.volume, version: note.table.version, value: note.table });
          break;
        case "gave-up":
          this.log(`${member.id} gives up on ${note.volume} v${note.version} after ${note.attempts} ballots`);
          break;
        case "accepted":
          // It counts once the acceptance leaves (sendPeer): before, a crash may still forget it.
          member.volatile.acceptances.set(acceptanceKey(note.volume, note.version, note.ballot), note.value);
          break;
        case "copy-applied":
          this.history.copiesApplied++;
          break;
        case "join-applied":
          this.history.joinsApplied++;
          break;
        case "adopted":
          break;
      }
    }
  }

  /** Chunk data: in the simulation the store is durable at once, so only records wait. */
  private apply(member: Member, apply: ChunkApply, data: [number, ChunkValue][] = []): void {
    if (apply.kind === "write") {
      const value = member.volatile.requests.get(apply.request.id)?.value;
      if (value) this.store(member, registerKey(apply.request.volume, apply.request.group, apply.request.chunk), value);
      return;
    }
    const named = new Set(apply.chunks);
    for (const [chunk, value] of data) if (named.has(chunk)) this.store(member, registerKey(apply.volume, apply.group, chunk), value);
  }

  private store(member: Member, key: string, value: ChunkValue): void {
    if (this.storeOverwrites || newerThan(value, member.durable.chunks.get(key))) member.durable.chunks.set(key, { ...value });
  }

  /** Records become durable in order, the scenario's persistDelayMs after their write; then the runner hears so. */
  private persist(member: Member, written: MemberRecord[], seq: number): void {
    const records = this.sabotage.acceptorRepliesBeforeDurable ? this.writeSlotsLate(member, written) : written;
    const durable = (): void => {
      for (const record of records) {
        applyRecord(member.durable.catalog, record);
        if (record.kind === "table") {
          const { table } = record;
          this.event({ kind: "record", node: member.id, volume: table.volume, version: table.version, table });
          this.log(`${member.id} records ${table.volume} ${describeTable(table)}`);
        }
      }
      member.volatile.persisting--;
      this.carryOut(member, member.volatile.runner.step({ kind: "durable", nowMs: this.nowMs, seq }));
    };
    member.volatile.persisting++;
    if (this.scenario.persistDelayMs === 0) return durable();
    const atMs = Math.max(this.nowMs + this.scenario.persistDelayMs, member.volatile.persistDoneAtMs);
    member.volatile.persistDoneAtMs = atMs;
    this.timer(member, atMs, durable, true);
    // Power lost while the catalog writes: these records, and everything resting on them, are gone.
    if (this.midWriteCrashesLeft > 0 && this.faultRng.chance(this.scenario.pointCrashRate / 4)) {
      this.midWriteCrashesLeft--;
      this.atOn(member, (this.nowMs + atMs) / 2, () => this.crash(member, this.faultRng.range(5, 80)));
    }
  }

  /**
   * The broken host of acceptorRepliesBeforeDurable: it reports the acceptor's slot records durable
   * while they are still RECORD_DELAY_MS from the disk, so the promise or acceptance leaves before
   * them (a crash between forgets them). Returns the records it writes in order.
   */
  private writeSlotsLate(member: Member, records: MemberRecord[]): MemberRecord[] {
    const slots = records.filter((record) => record.kind === "slot");
    if (slots.length > 0) {
      this.timer(member, this.nowMs + RECORD_DELAY_MS, () => {
        for (const slot of slots) if ((member.durable.catalog.tables.get(slot.volume)?.version ?? 0) < slot.version) applyRecord(member.durable.catalog, slot);
      }, true);
    }
    return records.filter((record) => record.kind !== "slot");
  }

  private sendPeer(member: Member, { to, message }: Outgoing): void {
    const payload: Payload = { kind: "peer", message };
    if (message.kind === "acceptor-reply" && message.reply.kind === "accepted") {
      const { volume, reply } = message;
      const value = member.volatile.acceptances.get(acceptanceKey(volume, reply.version, reply.ballot));
      if (value) this.event({ kind: "accepted", node: member.id, volume, version: reply.version, ballot: reply.ballot, value });
    }
    if (message.kind === "copy" || message.kind === "join") payload.data = this.values(member, message.table.volume, message.group, message.chunks);
    this.send(member.id, to, payload);
  }

  private values(member: Member, volume: string, group: number, chunks: number[]): [number, ChunkValue][] {
    const out: [number, ChunkValue][] = [];
    for (const chunk of chunks) {
      const value = member.durable.chunks.get(registerKey(volume, group, chunk));
      if (value) out.push([chunk, { ...value }]);
    }
    return out;
  }

  private answer(member: Member, reply: RequestReply): void {
    const { request } = reply;
    const asked = member.volatile.requests.get(request.id);
    member.volatile.requests.delete(request.id);
    if (asked === undefined) return;
    if (!reply.ok) {
      this.history.refusals.set(reply.reason, (this.history.refusals.get(reply.reason) ?? 0) + 1);
      this.send(member.id, asked.from, { kind: "answer", attempt: asked.attempt, ok: false, reason: reply.reason, ...(reply.table ? { table: reply.table } : {}), order: ++this.order });
      return;
    }
    const value = request.kind === "read" ? member.durable.chunks.get(registerKey(request.volume, request.group, request.chunk)) : undefined;
    this.send(member.id, asked.from, { kind: "answer", attempt: asked.attempt, ok: true, ...(value ? { value: { ...value } } : {}), table: reply.table, order: ++this.order });
  }

  /** One timer per process: a tick wished for earlier than the one armed arms another; a stale one does nothing. */
  private arm(member: Member, wakeAtMs: number): void {
    const process = member.volatile;
    if (wakeAtMs >= process.wakeAtMs) return;
    process.wakeAtMs = wakeAtMs;
    this.timer(member, Math.max(wakeAtMs, this.nowMs), () => {
      if (member.volatile !== process || process.wakeAtMs !== wakeAtMs) return;
      process.wakeAtMs = Infinity;
      this.carryOut(member, process.runner.step({ kind: "tick", nowMs: this.nowMs }));
    });
  }

  /** The runner's durable state must be what its records made of the catalog: a change without a record would be lost in a crash. */
  protected checkCatalogs(): void {
    for (const member of this.members) {
      if (!member.up || member.volatile.persisting > 0) continue;
      const inMemory = JSON.stringify(encodeMemberState(member.volatile.runner.current));
      const onDisk = JSON.stringify(encodeMemberState(member.durable.catalog));
      if (inMemory !== onDisk) this.history.errors.push(`${member.id}'s runner state differs from its catalog: ${inMemory} vs ${onDisk}`);
    }
  }
}

function acceptanceKey(volume: string, version: number, ballot: Ballot): string {
  return `${volume}@${version}#${ballot.round}.${ballot.proposer}`;
}
