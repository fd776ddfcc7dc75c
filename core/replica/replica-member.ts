// One member of the replica-set protocol as a deterministic state machine, in the style of
// etcd-io/raft's Ready: `step(event)` takes a peer's message, a tick, a client's request, a
// durability report or the mesh's view of a peer, and returns what to persist, apply, send and
// answer. It owns the roles the pure pieces beside it define (acceptor.ts, set-change-proposer.ts
// driven by set-change-policy.ts, fence.ts, away-map.ts): adopting chosen tables, fencing requests,
// noting writes for absent replicas, resync and join copies. No sockets, timers, clock or
// randomness of its own: time comes in events, randomness through `config.random`.
//
// How a node hosts it (test/sim/replica-members.ts is the simulated host and follows the same rules):
//  * Boot: decode the member state from the catalog (member-state.ts decodeMemberState; a fresh
//    group starts from initialMemberState) and build the member with a new bootId; add volumes
//    created later with a "volume-added" event.
//  * After every step, in this order:
//    1. `records` go to the catalog (bun:sqlite, one transaction per Ready, or rows keyed as
//       member-state.ts's keys; applyRecord folds them into a stored MemberState).
//    2. `applies` go to the page store: a "write" applies the client request's data; a "copy" or
//       "join" applies the data that came with the message being stepped (overwriting: the member
//       takes a copy only when none older or newer can reach the chunk after it, see applyCopy),
//       and must be durable (synced) with the records.
//    3. When the records and durable applies of `durableSeq` are on disk (a catalog commit and a
//       page-store sync; batch them across Readys freely), step {kind: "durable", seq}. Messages and
//       replies that rest on them come out of that step: a promise, an acceptance, a "copied" or
//       "joined", a write's ack that an away map noted, all leave only after what they vouch for.
//    4. `messages` go on the mesh (a "copy" or "join" with the named chunks' data read from the
//       page store as it is sent; a message to self is stepped back in).
//    5. `replies` answer the client or forwarding node (a read's data is read from the page store now).
//    6. Arm one timer for `wakeAtMs` and step {kind: "tick"} then.
//  * A message off the mesh goes through member-messages.ts parsePeerMessage (BAD_FRAME) first.
//    The mesh's own heartbeats feed "peer-heard"; a closed link may feed "peer-suspected". Every
//    message from a member counts as hearing it too.
//  * A crash loses everything not yet durable, and the member with it: a restart decodes the
//    stored state and builds a new member (copies in flight are sent again).
//  * Not here, for the data path: the page's primary sends a write to every replica of the set it
//    routes by and acks the client when all applied it; a read is valid when every replica
//    confirms the version (the simulation's clients, test/sim/replica-world.ts, do exactly that).
//  * The mesh must keep each link's messages in order and never duplicate one (a TCP connection
//    per pair of nodes): the node's store keeps no per-chunk version, so a late duplicate of a
//    write would undo a newer one. The simulation runs both that ("tcp" links) and a reordering,
//    duplicating mesh over a store that stamps each chunk.
//  * Open for the node: a replica that lost unflushed writes in a power loss must not go on
//    counting as up to date for its groups (a kill -9 loses nothing the kernel was given).
import { invariant } from "../invariant.ts";
import { onAccept, onPrepare } from "./acceptor.ts";
import { changedCount, copied, copyLost, mapOnDrop, newAwayMap, noteWrite, remainder, takeBatch, type AwayMapState } from "./away-map.ts";
import { admit } from "./fence.ts";
import type { ChunkRequest, MemberEvent, MemberReady, PeerMessage } from "./member-messages.ts";
import { MemberOutbox } from "./member-outbox.ts";
import { applyRecord, awayKey, groupKey, slotKey, type MemberRecord, type MemberState } from "./member-state.ts";
import { changeFits, cloneReplicaTable, consequencesFor, describeChange, homeOf, sinceOf, withChange, type ReplicaTable, type SetChange } from "./replica-table.ts";
import { proposalFor, resyncSource } from "./set-change-policy.ts";
import { SetChangeProposer, type ProposerEffect } from "./set-change-proposer.ts";

export interface MemberConfig {
  self: string;
  /** Every member of the group: the acceptors of every slot. */
  members: string[];
  /** This incarnation's id, unique across the member's restarts (copy batches carry it). */
  bootId: string;
  /** Each group's home replicas for a volume (the R nodes it should have); undefined for an unknown volume. */
  home: (volume: string) => string[][] | undefined;
  /** How many chunks a page group of the volume has (a copy of "every chunk" lists them). */
  chunksPerGroup: (volume: string) => number;
  /**
   * How much of a copy chunk `chunk` of the volume is, in the units of copyBatchChunks and
   * joinChunksMax (a node numbers both whole pages and parts of pages as chunks). Absent: 1 each.
   */
  chunkWeight?: (volume: string, chunk: number) => number;
  /**
   * The chunks a copy of "every chunk" of the group names. Absent: 0..chunksPerGroup-1 (the
   * simulation). A node answers with the chunks its store holds, so a 64 TiB volume's group is
   * never listed whole (a chunk held nowhere reads as zeros on every copy).
   */
  allChunks?: (volume: string, group: number) => number[];
  heartbeatIntervalMs: number;
  /** A member not heard from for this long is suspected (and dropped from the sets this member serves). */
  suspectAfterMs: number;
  policyIntervalMs: number;
  copyBatchChunks: number;
  /**
   * Resync batches a source keeps in flight to one absent replica of one group; the next leaves
   * when one is confirmed, not at the next policy tick, so the copy runs at the link's pace (a
   * copy slower than clients dirty pages would never catch up). Absent: 1.
   */
  copyBatchesInFlight?: number;
  copyTimeoutMs: number;
  /** At most this many chunks go in a join copy; more are resynced first while writes go on. */
  joinChunksMax: number;
  proposer: { attemptTimeoutMs: number; backoffMs: number; maxAttempts: number };
  /** Uniform in [0, 1): the host's random source (seeded in the simulation). */
  random: () => number;
  /** Break rules on purpose, for the simulation's checker (never set outside tests). */
  sabotage?: MemberSabotage;
}

export interface MemberSabotage {
  minorityQuorum?: boolean;
  ignoreAccepted?: boolean;
  ignoreFence?: boolean;
  /** Join copies carry no chunks (the resync is taken as enough). */
  joinWithoutCopy?: boolean;
  /** A resync source forgets a chunk as it sends the copy, not when the copy is confirmed. */
  resyncForgetsOnSend?: boolean;
  /** A member applies every resync copy it gets (any sender, any version, in the set or not). */
  takeAnyCopy?: boolean;
}

type Of<K extends PeerMessage["kind"]> = Extract<PeerMessage, { kind: K }>;

interface CopyInFlight {
  volume: string;
  map: AwayMapState;
  key: string;
  chunks: number[];
  deadlineMs: number;
}

export class ReplicaMember {
  private nowMs: number;
  private readonly lastHeardMs = new Map<string, number>();
  /** Per volume, per member, the newest table version it sent in a tables heartbeat (so recorded durably). */
  private readonly peersRecorded = new Map<string, Map<string, number>>();
  private readonly proposers = new Map<string, SetChangeProposer>();
  private readonly copiesInFlight = new Map<string, CopyInFlight>();
  private batchSeq = 0;
  /** Proposals made by this incarnation: each gets ballots of its own (ProposerConfig.ballotId). */
  private proposalSeq = 0;
  private heartbeatAtMs: number;
  private policyAtMs: number;
  private readonly out = new MemberOutbox();

  constructor(
    private readonly config: MemberConfig,
    /** The decoded stored state; the member owns it from here (the host keeps its own copy from the records). */
    private readonly state: MemberState,
    nowMs: number,
  ) {
    invariant(config.members.includes(config.self), `replica member ${config.self} is not in its group`);
    this.nowMs = nowMs;
    // A fresh process gives every peer the benefit of the doubt for one suspicion window.
    for (const id of config.members) this.lastHeardMs.set(id, nowMs);
    this.heartbeatAtMs = nowMs + config.random() * config.heartbeatIntervalMs;
    this.policyAtMs = nowMs + config.random() * config.policyIntervalMs;
  }

  get self(): string {
    return this.config.self;
  }

  /** The state as it is in memory (ahead of the disk while records are in flight). Read it, never change it. */
  get current(): MemberState {
    return this.state;
  }

  /** Set-change proposals running here. */
  get proposalsInFlight(): number {
    return this.proposers.size;
  }

  step(event: MemberEvent): MemberReady {
    this.nowMs = Math.max(this.nowMs, event.nowMs);
    this.out.open();
    switch (event.kind) {
      case "tick":
        this.tick();
        break;
      case "message":
        if (this.config.members.includes(event.from)) this.lastHeardMs.set(event.from, this.nowMs);
        this.receive(event.from, event.message);
        break;
      case "request":
        this.serve(event.request);
        break;
      case "durable":
        this.out.durable(event.seq);
        break;
      case "peer-heard":
        this.lastHeardMs.set(event.node, this.nowMs);
        break;
      case "peer-suspected":
        this.lastHeardMs.set(event.node, -Infinity);
        break;
      case "volume-added":
        this.addVolume(event.table);
        break;
      case "propose":
        this.proposeForOperator(event.volume, event.change);
        break;
    }
    return this.out.close(this.nextWakeAtMs());
  }

  // ---- the step's output (member-outbox.ts holds what rests on records not yet durable)

  private record(record: MemberRecord): void {
    applyRecord(this.state, record);
    this.out.record(record);
  }

  private send(to: string, message: PeerMessage): void {
    this.out.send(to, message);
  }

  private nextWakeAtMs(): number {
    let wakeAtMs = Math.min(this.heartbeatAtMs, this.policyAtMs);
    for (const proposer of this.proposers.values()) wakeAtMs = Math.min(wakeAtMs, proposer.nextWakeAtMs() ?? Infinity);
    for (const copy of this.copiesInFlight.values()) wakeAtMs = Math.min(wakeAtMs, copy.deadlineMs);
    return wakeAtMs;
  }

  // ---- ticks

  private tick(): void {
    const now = this.nowMs;
    if (now >= this.heartbeatAtMs) {
      const tables = [...this.state.tables.values()].map(cloneReplicaTable);
      for (const id of this.config.members) if (id !== this.self) this.send(id, { kind: "tables", tables });
      this.heartbeatAtMs = now + this.config.heartbeatIntervalMs * (0.8 + 0.4 * this.config.random());
    }
    for (const proposer of [...this.proposers.values()]) {
      if ((proposer.nextWakeAtMs() ?? Infinity) <= now) this.runProposer(proposer, proposer.onTick(now));
    }
    for (const [batch, copy] of [...this.copiesInFlight]) {
      if (copy.deadlineMs > now) continue;
      // Lost on the way or unconfirmed: its chunks go in a later batch (if the map is still the one it came from).
      this.copiesInFlight.delete(batch);
      if (this.state.awayMaps.get(copy.key) === copy.map) copyLost(copy.map, copy.chunks);
    }
    if (now >= this.policyAtMs) {
      this.policyTick();
      this.policyAtMs = now + this.config.policyIntervalMs * (0.8 + 0.4 * this.config.random());
    }
  }

  private suspected(): Set<string> {
    const limitMs = this.nowMs - this.config.suspectAfterMs;
    return new Set(this.config.members.filter((id) => id !== this.self && (this.lastHeardMs.get(id) ?? -Infinity) < limitMs));
  }

  private policyTick(): void {
    const suspected = this.suspected();
    for (const table of this.state.tables.values()) {
      const striped = this.config.home(table.volume);
      if (striped === undefined) continue;
      const home = homeOf(table, striped);
      this.resync(table, home, suspected);
      if (this.proposers.has(table.volume)) continue;
      const change = proposalFor({
        self: this.self,
        table,
        suspected,
        home,
        synced: (group) => this.synced(table, group),
        lacking: (group, node) => {
          const map = this.state.awayMaps.get(awayKey(table.volume, group, node));
          return map === undefined ? undefined : changedCount(map, this.weightOf(table.volume));
        },
        joinChunksMax: this.config.joinChunksMax,
      });
      if (change) this.propose(table, change);
    }
    this.requestJoins();
  }

  // ---- messages

  private receive(from: string, message: PeerMessage): void {
    switch (message.kind) {
      case "tables":
        for (const table of message.tables) {
          this.noteRecorded(from, table);
          this.adopt(table);
        }
        return;
      case "prepare":
      case "accept":
        return this.acceptor(from, message);
      case "acceptor-reply": {
        const proposer = this.proposers.get(message.volume);
        if (proposer) this.runProposer(proposer, proposer.onReply(from, message.reply, this.nowMs));
        return;
      }
      case "copy":
        return this.applyCopy(from, message);
      case "copied":
        return this.copyConfirmed(message.batch);
      case "join-request":
        return this.sendJoin(message.volume, message.group, from);
      case "join":
        return this.join(from, message);
      case "joined":
        return this.peerJoined(from, message);
    }
  }

  private noteRecorded(from: string, table: ReplicaTable): void {
    if (!this.config.members.includes(from)) return;
    let byMember = this.peersRecorded.get(table.volume);
    if (!byMember) this.peersRecorded.set(table.volume, (byMember = new Map()));
    byMember.set(from, Math.max(byMember.get(from) ?? 0, table.version));
  }

  private addVolume(table: ReplicaTable): void {
    invariant(table.version === 1, () => `volume ${table.volume} is added at v${table.version}, not at its initial version`);
    if (this.state.tables.has(table.volume)) return;
    this.record({ kind: "table", table: cloneReplicaTable(table) });
    table.sets.forEach((set, group) => {
      if (set.some((entry) => entry.node === this.self)) this.record({ kind: "synced", volume: table.volume, group, since: 1 });
    });
  }

  // ---- acceptor: the reply rests on the record (the barrier holds it)

  private acceptor(from: string, p: Of<"prepare"> | Of<"accept">): void {
    const recorded = this.state.tables.get(p.volume);
    if (recorded === undefined) return;
    const current = this.state.slots.get(slotKey(p.volume, p.version));
    const step = p.kind === "prepare" ? onPrepare(current, p.version, p.ballot, recorded) : onAccept(current, p.version, p.ballot, p.value, recorded);
    if (step.record) this.record({ kind: "slot", volume: p.volume, version: p.version, record: step.record });
    if (step.reply.kind === "accepted" && p.kind === "accept") {
      this.out.note({ kind: "accepted", volume: p.volume, version: p.version, ballot: p.ballot, value: p.value });
    }
    this.send(from, { kind: "acceptor-reply", volume: p.volume, reply: step.reply });
  }

  // ---- proposer

  private propose(base: ReplicaTable, change: SetChange): void {
    const { minorityQuorum, ignoreAccepted } = this.config.sabotage ?? {};
    const ballotId = `${this.self}.${this.config.bootId}.${++this.proposalSeq}`;
    // The slot's acceptors are the base table's voters (route forget takes a gone node out).
    const config = { self: this.self, ballotId, members: base.voters ?? this.config.members, ...this.config.proposer, jitter: this.config.random, sabotage: { minorityQuorum, ignoreAccepted } };
    const proposer = new SetChangeProposer(config, base, withChange(base, change), this.peersRecorded.get(base.volume));
    this.out.note({ kind: "proposed", volume: base.volume, version: proposer.version, change: describeChange(change) });
    this.proposers.set(base.volume, proposer);
    this.runProposer(proposer, proposer.start(this.nowMs));
  }

  /**
   * An operator's change (a re-homing for `route forget`): proposed like the policy's, when no
   * proposal runs for the volume and it fits the table recorded here; the host sees the outcome
   * in the adopted table and asks again otherwise.
   */
  private proposeForOperator(volume: string, change: SetChange): void {
    const table = this.state.tables.get(volume);
    if (table === undefined || this.proposers.has(volume) || !changeFits(table, change)) return;
    this.propose(table, change);
  }

  private runProposer(proposer: SetChangeProposer, effects: ProposerEffect[]): void {
    const volume = proposer.base.volume;
    for (const effect of effects) {
      switch (effect.kind) {
        case "prepare":
          for (const to of effect.to) this.send(to, { kind: "prepare", volume, version: effect.version, ballot: effect.ballot });
          break;
        case "accept":
          for (const to of effect.to) this.send(to, { kind: "accept", volume, version: effect.version, ballot: effect.ballot, value: effect.value });
          break;
        case "chosen":
          this.out.note({ kind: "chosen", table: cloneReplicaTable(effect.table) });
          this.adopt(effect.table);
          for (const to of this.config.members) if (to !== this.self) this.send(to, { kind: "tables", tables: [cloneReplicaTable(effect.table)] });
          break;
        case "superseded":
          this.adopt(effect.table);
          break;
        case "gave-up":
          this.out.note({ kind: "gave-up", volume, version: proposer.version, attempts: effect.attempts });
          break;
      }
    }
    if (proposer.phase === "done" && this.proposers.get(volume) === proposer) this.proposers.delete(volume);
  }

  /** A chosen table newer than the one recorded: record it (the fence moves), then act on what changed. */
  private adopt(table: ReplicaTable): void {
    const previous = this.state.tables.get(table.volume);
    if (previous === undefined || table.version <= previous.version) return;
    this.record({ kind: "table", table: cloneReplicaTable(table) });
    this.out.note({ kind: "adopted", table: cloneReplicaTable(table) });
    const { dropped, joined, voidMaps } = consequencesFor(this.self, previous, table);
    for (const group of voidMaps) {
      for (const map of this.mapsOf(table.volume, group)) this.record({ kind: "away-map-gone", volume: table.volume, group, node: map.node });
    }
    // A node re-homed away never comes back to these groups: what it lacks no longer matters.
    const home = table.home;
    if (home !== undefined) {
      home.forEach((nodes, group) => {
        for (const map of this.mapsOf(table.volume, group)) if (!nodes.includes(map.node)) this.record({ kind: "away-map-gone", volume: table.volume, group, node: map.node });
      });
    }
    for (const { group, node, since } of dropped) {
      if (home !== undefined && !home[group]!.includes(node)) continue;
      const key = awayKey(table.volume, group, node);
      const upToDate = since === 1 || this.state.peersUpToDate.has(`${key}@${since}`);
      const existing = this.state.awayMaps.get(key);
      const map = mapOnDrop(existing, upToDate, group, node, table.version);
      if (map !== undefined && map !== existing) this.record({ kind: "away-map", volume: table.volume, group, node, sinceVersion: map.sinceVersion, dirty: [] });
    }
    const proposer = this.proposers.get(table.volume);
    if (proposer && proposer.version <= table.version) this.proposers.delete(table.volume);
    // Joiners pull their join copies (requestJoins); an up-to-date survivor pushes one at once too,
    // so a returning replica usually need not wait for its next request.
    for (const { group, node } of joined) this.sendJoin(table.volume, group, node);
  }

  // ---- requests: the fence, and what an absent replica lacks

  private synced(table: ReplicaTable, group: number): boolean {
    const since = sinceOf(table, group, this.self);
    return since !== undefined && this.state.syncedSince.get(groupKey(table.volume, group)) === since;
  }

  private serve(request: ChunkRequest): void {
    const table = this.state.tables.get(request.volume);
    if (table === undefined) {
      this.out.reply({ request, ok: false, reason: "unknown-volume" });
      return;
    }
    const view = { self: this.self, table, syncedSince: (group: number) => this.state.syncedSince.get(groupKey(request.volume, group)) };
    const admission = admit(view, request.group, request.routed, { ignoreFence: this.config.sabotage?.ignoreFence });
    const answered = cloneReplicaTable(table);
    if (!admission.ok) {
      this.out.reply({ request, ok: false, reason: admission.reason, table: answered });
      return;
    }
    if (request.kind === "write") {
      this.out.apply({ kind: "write", request });
      // Every write applied here is one an away replica of the group lacks, even a retry of one already here.
      const maps = this.mapsOf(request.volume, request.group);
      const changed = maps.length === 0 ? [] : Array.from({ length: request.span ?? 1 }, (_, index) => request.chunk + index);
      for (const map of maps) {
        // The map changes in memory through away-map.ts (generations, copies in flight); its record goes out as is.
        for (const chunk of changed) noteWrite(map, chunk);
        this.out.record({ kind: "away-chunks", volume: request.volume, group: request.group, node: map.node, changed, cleaned: [] });
      }
    }
    this.out.reply({ request, ok: true, table: answered });
  }

  private mapsOf(volume: string, group: number): AwayMapState[] {
    const prefix = `${groupKey(volume, group)}/`;
    return [...this.state.awayMaps].filter(([key]) => key.startsWith(prefix)).map(([, map]) => map);
  }

  // ---- resync: a group's source copies what a returning home replica lacks, a batch at a time

  private resync(table: ReplicaTable, home: string[][], suspected: Set<string>): void {
    table.sets.forEach((set, group) => {
      if (resyncSource(table, group, home[group]) !== this.self || !this.synced(table, group)) return;
      for (const node of home[group] ?? []) {
        if (set.some((entry) => entry.node === node) || suspected.has(node)) continue;
        const key = awayKey(table.volume, group, node);
        // No map (this member was not a replica when the node left): it may lack anything.
        if (!this.state.awayMaps.has(key)) {
          this.record({ kind: "away-map", volume: table.volume, group, node, sinceVersion: table.version, dirty: this.allChunks(table.volume, group) });
        }
        const map = this.state.awayMaps.get(key)!;
        const inFlight = [...this.copiesInFlight.values()].filter((copy) => copy.key === key).length;
        if (inFlight >= (this.config.copyBatchesInFlight ?? 1)) continue;
        const batch = takeBatch(map, this.config.copyBatchChunks, this.weightOf(table.volume));
        if (batch.length === 0) continue;
        const id = `${this.config.bootId}.${++this.batchSeq}`;
        this.copiesInFlight.set(id, { volume: table.volume, map, key, chunks: batch, deadlineMs: this.nowMs + this.config.copyTimeoutMs });
        if (this.config.sabotage?.resyncForgetsOnSend) this.forgetCopied(table.volume, map, batch);
        this.send(node, { kind: "copy", batch: id, table: cloneReplicaTable(table), group, chunks: batch });
      }
    });
  }

  /**
   * A resync batch, applied only when it was taken under the table this member records (after
   * adopting the one it came with) by that table's one resync source, and this member is not a
   * replica of the group in it. Then no other copy of the group can overtake it: copies under
   * older versions are refused, one source's copies come in order on its link, and once this
   * member is back in the set (a join copy brought it up to date, writes follow) none is taken.
   * A refused copy is not confirmed: its source sends the chunks again under its newer table.
   */
  private applyCopy(from: string, p: Of<"copy">): void {
    this.adopt(p.table);
    if (!this.takesCopy(from, p)) return;
    const { volume } = p.table;
    this.out.apply({ kind: "copy", volume, group: p.group, chunks: [...p.chunks] });
    this.out.note({ kind: "copy-applied", volume, group: p.group, chunks: p.chunks.length });
    this.send(from, { kind: "copied", batch: p.batch });
  }

  /** Whether a copy from `from` would be applied (the host asks before it stages the copy's pages). */
  takesCopy(from: string, p: Of<"copy">): boolean {
    const recorded = this.state.tables.get(p.table.volume);
    const striped = this.config.home(p.table.volume);
    if (recorded === undefined || striped === undefined) return false;
    if (this.config.sabotage?.takeAnyCopy) return this.chunksFit(p.table.volume, p.chunks);
    if (recorded.version > p.table.version) return false;
    const table = p.table;
    const set = table.sets[p.group];
    if (set === undefined || set.some((entry) => entry.node === this.self) || !this.chunksFit(table.volume, p.chunks)) return false;
    return resyncSource(table, p.group, homeOf(table, striped)[p.group]) === from;
  }

  private copyConfirmed(batch: string): void {
    const copy = this.copiesInFlight.get(batch);
    if (copy === undefined) return;
    this.copiesInFlight.delete(batch);
    const map = this.state.awayMaps.get(copy.key);
    if (map === copy.map) this.forgetCopied(copy.volume, map, copy.chunks);
    // The next batch now (resync sends only where fewer than the allowed batches are in flight).
    const table = this.state.tables.get(copy.volume);
    const striped = this.config.home(copy.volume);
    if (table !== undefined && striped !== undefined) this.resync(table, homeOf(table, striped), this.suspected());
  }

  private weightOf(volume: string): ((chunk: number) => number) | undefined {
    const weight = this.config.chunkWeight;
    return weight === undefined ? undefined : (chunk) => weight(volume, chunk);
  }

  private allChunks(volume: string, group: number): number[] {
    return this.config.allChunks?.(volume, group) ?? range(this.config.chunksPerGroup(volume));
  }

  /** A peer's list of chunks names chunks of the group only (the host applies them by index). */
  private chunksFit(volume: string, chunks: number[]): boolean {
    const chunksPerGroup = this.config.chunksPerGroup(volume);
    return chunks.every((chunk) => chunk < chunksPerGroup);
  }

  /** The absent replica holds these chunks now: the ones not written since leave the map. */
  private forgetCopied(volume: string, map: AwayMapState, chunks: number[]): void {
    const before = new Set(map.dirty.keys());
    copied(map, chunks);
    const cleaned = chunks.filter((chunk) => before.has(chunk) && !map.dirty.has(chunk));
    if (cleaned.length > 0) this.out.record({ kind: "away-chunks", volume, group: map.group, node: map.node, changed: [], cleaned });
  }

  // ---- joins

  /**
   * A replica whose copy of a group is not up to date for its membership asks every other replica
   * of the set for its join copy, until one arrives. Any up-to-date replica can answer: its copy
   * holds every write acknowledged so far (it got one join copy itself, or was there from the
   * start, and every later write needed it), and writes under versions that include the joiner
   * cannot be acknowledged until the joiner is up to date. Pulling, not owing: the replicas that
   * were up to date when the node joined may all be gone by the time it asks.
   */
  private requestJoins(): void {
    for (const table of this.state.tables.values()) {
      table.sets.forEach((set, group) => {
        const since = sinceOf(table, group, this.self);
        if (since === undefined || this.synced(table, group)) return;
        for (const entry of set) if (entry.node !== this.self) this.send(entry.node, { kind: "join-request", volume: table.volume, group, since });
      });
    }
  }

  /** Sends `node` its join copy of the group if this member can (it is an up-to-date replica and `node` is in its set). */
  private sendJoin(volume: string, group: number, node: string): void {
    const table = this.state.tables.get(volume);
    if (table === undefined) return;
    const since = sinceOf(table, group, node);
    if (since === undefined || node === this.self || !this.synced(table, group)) return;
    // A map is valid only while this member stayed a replica since the node left (voidMaps); without one, every chunk.
    const map = this.state.awayMaps.get(awayKey(volume, group, node));
    const chunks = this.config.sabotage?.joinWithoutCopy ? [] : map === undefined ? this.allChunks(volume, group) : remainder(map);
    this.send(node, { kind: "join", table: cloneReplicaTable(table), group, since, chunks });
  }

  private join(from: string, p: Of<"join">): void {
    this.adopt(p.table);
    const table = this.state.tables.get(p.table.volume);
    if (table === undefined || sinceOf(table, p.group, this.self) !== p.since || !this.chunksFit(table.volume, p.chunks)) return;
    // A second join for the same membership (another replica answered the request too, or the
    // mesh delivered one twice) is read from before writes this copy has applied since the first:
    // applying it would undo them. It only gets its "joined".
    if (this.state.syncedSince.get(groupKey(table.volume, p.group)) !== p.since) {
      this.out.apply({ kind: "join", volume: table.volume, group: p.group, chunks: [...p.chunks] });
      this.out.note({ kind: "join-applied", volume: table.volume, group: p.group, since: p.since });
      this.record({ kind: "synced", volume: table.volume, group: p.group, since: p.since });
    }
    // Every replica of the set learns it: a later drop of this node may then start an empty map.
    const joined: PeerMessage = { kind: "joined", volume: table.volume, group: p.group, since: p.since };
    for (const entry of table.sets[p.group]!) if (entry.node !== this.self) this.send(entry.node, joined);
    if (!table.sets[p.group]!.some((entry) => entry.node === from)) this.send(from, joined);
  }

  /** The joiner is up to date for this membership: no map for it is needed (unless it left again since). */
  private peerJoined(from: string, p: Of<"joined">): void {
    const table = this.state.tables.get(p.volume);
    if (table === undefined || sinceOf(table, p.group, from) !== p.since) return;
    const key = awayKey(p.volume, p.group, from);
    if (!this.state.peersUpToDate.has(`${key}@${p.since}`)) this.record({ kind: "peer-up-to-date", volume: p.volume, group: p.group, node: from, since: p.since });
    if (this.state.awayMaps.has(key)) this.record({ kind: "away-map-gone", volume: p.volume, group: p.group, node: from });
  }
}

function range(count: number): number[] {
  return Array.from({ length: count }, (_, i) => i);
}
