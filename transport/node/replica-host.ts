// Hosts the replica-set protocol (core/replica/replica-member.ts) for this node's replicated
// volumes, the way that file's header says a node must: one member per volume (its acceptors are
// the volume's nodes, fixed since replicated volumes are never moved), its records in the catalog,
// its messages on the mesh (`replica.msg`, chunk data attached), one timer, and the mesh's view of
// peers. A table the member adopts becomes the volume's next routing version (routing.ts
// withReplicaSets), installed here and passed on to every node through the group's records.
import { ShoalError, asShoalError } from "../../core/errors.ts";
import { withReplicaSets } from "../../core/cluster/routing.ts";
import type { VolumeRecord } from "../../core/cluster/volume.ts";
import type { Catalog } from "../../core/cluster/catalog.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import { ReplicaMember, type MemberConfig } from "../../core/replica/replica-member.ts";
import { parsePeerMessage, type MemberReady, type Outgoing, type PeerMessage } from "../../core/replica/member-messages.ts";
import { applyRecord, decodeMemberState, encodeMemberState, groupKey, initialMemberState, mustSurvivePowerLoss, type MemberRecord, type MemberState } from "../../core/replica/member-state.ts";
import { describeTable, homeOf, initialTable, sinceOf, type ReplicaTable } from "../../core/replica/replica-table.ts";
import { planRehome } from "../../core/replica/rehome-plan.ts";
import { familyOf } from "../move/page-mover.ts";
import { newAwayMap } from "../../core/replica/away-map.ts";
import { chunkOfPage, chunksOfWrite, chunksPerGroup, chunkWeight, groupOfPage, homeSets, pageGroupsOf, rangesOfChunks, wholePageChunk, type PageGroups } from "../../core/replica/page-groups.ts";
import { Payload, type FrameHeader } from "../mesh/frame.ts";
import type { Group } from "../mesh/group.ts";
import type { MeshLog } from "../mesh/mesh.ts";
import type { Reply } from "../mesh/mesh-connection.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";
import { snapshotKey } from "../../core/snapshot/snapshot-record.ts";
import { CATCH_UP_MESSAGE_BYTES_MAX, rangeKey, ReplicaPages, type ReceivedPages } from "./replica-pages.ts";
import type { ReplicaSetsReport } from "../admin/admin-results.ts";

export const DEFAULT_REPLICA_TIMEOUT_MS = 3000;
/** Records appended per volume before they are folded into one stored form (bounds the boot's replay). */
const RECORDS_BEFORE_COMPACTION = 20_000;

export interface ReplicaHostOptions {
  group: Group;
  catalog: Catalog;
  store: PageStore;
  log: MeshLog;
  /** A replica not heard from for this long is dropped from its sets (--replica-timeout). */
  timeoutMs: number;
  /** A snapshot of the volume is prepared or cut here and not finished: catch-up copies and joins wait for it. */
  snapshotUnderWay: (volume: string) => boolean;
}

/** One replicated volume's member and what the host keeps beside it. */
interface Hosted {
  uid: string;
  name: string;
  groups: PageGroups;
  pageSizeBytes: number;
  member: ReplicaMember;
  /** The catalog's copy of the member state, folded from the records written (compaction writes it whole). */
  stored: MemberState;
  nextRecordSeq: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  wakeAtMs: number;
  /** Write requests stepped and not answered yet: their resolvers, by request id. */
  requests: Map<number, { resolve: () => void; reject: (err: unknown) => void }>;
  /** Durability reports run in order: a copy's page data is synced before its seq (and later ones) is reported. */
  durableChain: Promise<void>;
  /** Per peer, when its last "tables" heartbeat came: a local read needs a recent majority (see canServeLocally). */
  tablesHeardMs: Map<string, number>;
  /** Bytes of writes noted for away replicas, and bytes sent in copies and joins (metrics, `route show --json`). */
  bytesWrittenAway: number;
  bytesCopied: number;
}

export class ReplicaHost {
  private readonly hosted = new Map<string, Hosted>();
  private readonly byName = new Map<string, Hosted>();
  private requestSeq = 0;
  private stopped = false;
  private readonly writtenAway = nodeMetrics.registry.counter("shoal_replica_away_written_bytes_total", "bytes written to page groups while one of their replicas was away (noted in away maps)").with();
  private readonly copiedBytes = nodeMetrics.registry.counter("shoal_replica_resync_bytes_total", "page bytes this node sent to bring a returning replica up to date, by kind", ["kind"]);

  private readonly pages: ReplicaPages;

  constructor(private readonly options: ReplicaHostOptions) {
    this.pages = new ReplicaPages(options.store, options.log, options.group.selfId);
  }

  /**
   * How long a set change may take to be chosen: three timeouts, and at least the timeout plus
   * 5 s (a suspicion, then a ballot or two). A request held for a new set, or an operator's
   * re-homing waiting for a drop, waits this long.
   */
  get setChangeWaitMs(): number {
    return Math.max(this.options.timeoutMs * 3, this.options.timeoutMs + 5000);
  }

  get log(): MeshLog {
    return this.options.log;
  }

  /** The members' records on disk (they are committed without an fsync): a FLUSH waits for this. */
  syncRecords(): Promise<void> {
    return this.hosted.size === 0 ? Promise.resolve() : this.options.catalog.durable();
  }

  /** Members for the replicated volumes the catalog holds. */
  start(): void {
    for (const record of this.options.group.liveVolumes()) this.volumeChanged(record);
  }

  stop(): void {
    this.stopped = true;
    for (const hosted of this.hosted.values()) clearTimeout(hosted.timer);
  }

  /** A volume record arrived or changed: start a member for a new replicated volume of this node, stop one for a deleted one. */
  volumeChanged(record: VolumeRecord): void {
    const known = this.hosted.get(record.uid);
    if (record.deleted) {
      if (known) this.drop(known);
      return;
    }
    if (known || this.stopped || !record.routing.replicaOwners?.length || !record.routing.nodes.includes(this.options.group.selfId)) return;
    this.boot(record);
  }

  private drop(hosted: Hosted): void {
    clearTimeout(hosted.timer);
    this.hosted.delete(hosted.uid);
    if (this.byName.get(hosted.name) === hosted) this.byName.delete(hosted.name);
    this.options.catalog.removeReplicaState(hosted.uid);
  }

  private boot(record: VolumeRecord): void {
    const { group, catalog } = this.options;
    const groups = pageGroupsOf(record.routing, record.pageSizeBytes);
    const partBytes = record.pageSizeBytes / groups.parts;
    const stored = this.loadState(record, groups);
    const nowMs = Date.now();
    const config: MemberConfig = {
      self: group.selfId,
      members: [...record.routing.nodes],
      bootId: `${crypto.randomUUID().slice(0, 8)}`,
      home: (volume) => (volume === record.name ? homeSets(groups) : undefined),
      chunksPerGroup: () => chunksPerGroup(groups),
      chunkWeight: (_volume, chunk) => chunkWeight(groups, chunk),
      allChunks: (_volume, index) => this.heldChunks(record.uid, groups, index),
      heartbeatIntervalMs: Math.max(100, Math.min(500, this.options.timeoutMs / 4)),
      suspectAfterMs: this.options.timeoutMs,
      policyIntervalMs: Math.max(50, Math.min(250, this.options.timeoutMs / 8)),
      // In parts (a whole page weighs all of its parts): half a message's bytes, and one message.
      copyBatchChunks: Math.max(1, Math.floor(CATCH_UP_MESSAGE_BYTES_MAX / partBytes / 2)),
      copyBatchesInFlight: 4,
      copyTimeoutMs: Math.max(2000, this.options.timeoutMs * 2),
      joinChunksMax: Math.max(1, Math.floor(CATCH_UP_MESSAGE_BYTES_MAX / partBytes)),
      proposer: { attemptTimeoutMs: Math.max(200, this.options.timeoutMs / 4), backoffMs: 100, maxAttempts: 8 },
      random: Math.random,
    };
    const member = new ReplicaMember(config, decodeMemberState(encodeMemberState(stored)), nowMs);
    const hosted: Hosted = {
      uid: record.uid,
      name: record.name,
      groups,
      pageSizeBytes: record.pageSizeBytes,
      member,
      stored,
      nextRecordSeq: 1,
      timer: undefined,
      wakeAtMs: Infinity,
      requests: new Map(),
      durableChain: settled,
      tablesHeardMs: new Map(),
      bytesWrittenAway: 0,
      bytesCopied: 0,
    };
    catalog.replaceReplicaState(record.uid, encodeMemberState(stored));
    this.hosted.set(record.uid, hosted);
    this.byName.set(record.name, hosted);
    this.carryOut(hosted, member.step({ kind: "tick", nowMs }));
    // A restart may find a table newer than the routing it left (recorded, not yet installed).
    this.install(hosted, member.current.tables.get(record.name)!);
  }

  /** The stored member state (row 0 plus the records after it), or a new volume's initial one. */
  private loadState(record: VolumeRecord, groups: PageGroups): MemberState {
    const rows = this.options.catalog.replicaMemberRows(record.uid);
    if (rows.length === 0 || rows[0]!.seq !== 0) {
      // A member for a volume this node learned of at its creation; one learned later (at a newer
      // routing version) starts from the placement too and adopts the newer table from its peers.
      return initialMemberState(this.options.group.selfId, [initialTable(record.name, homeSets(groups))]);
    }
    const stored = JSON.parse(rows[0]!.record) as { format?: unknown };
    const state = decodeMemberState(stored);
    for (const row of rows.slice(1)) applyRecord(state, JSON.parse(row.record) as MemberRecord);
    // A state from before parts of pages (format 1) numbered each page of a group as its chunk:
    // what an away copy lacks becomes those whole pages (boot stores the state anew).
    if (stored.format === 1) {
      for (const [key, map] of state.awayMaps) {
        const pages = [...map.dirty.keys()];
        state.awayMaps.set(key, newAwayMap(map.group, map.node, map.sinceVersion, pages.map((index) => wholePageChunk(groups, index))));
      }
    }
    return state;
  }

  // ---- the mesh

  /**
   * `replica.msg` from a peer: { u: volume uid, m: the message }, with page data for a copy or a
   * join (every layer of each page, replica-pages.ts); `replica.stage`: a piece of a large one.
   */
  handle(op: string, from: string, args: FrameHeader, payload: Payload): Reply | undefined {
    if (op === "replica.stage") {
      this.pages.stage(args, payload);
      return {};
    }
    if (op !== "replica.msg") return undefined;
    const hosted = typeof args.u === "string" ? this.hosted.get(args.u) : undefined;
    if (hosted === undefined) return {};
    let message: PeerMessage;
    try {
      message = parsePeerMessage(args.m);
    } catch (err) {
      throw new ShoalError("BAD_FRAME", `replica message from ${from} for '${hosted.name}' is malformed: ${asShoalError(err).message}`);
    }
    if (message.kind === "tables") hosted.tablesHeardMs.set(from, Date.now());
    // A copy the member would refuse (replica-member.ts applyCopy says which it takes) is neither
    // staged nor confirmed: unconfirmed, its source sends the chunks again under its newer table.
    if (message.kind === "copy" && !hosted.member.takesCopy(from, message)) return {};
    let received: ReceivedPages | undefined;
    if (message.kind === "copy" || message.kind === "join") {
      received = this.catchUpPages(hosted, `a ${message.kind} of '${hosted.name}' group ${message.group} from ${from}`, args, payload);
      // Not applied (a snapshot is being cut here, or the copy is not whole or predates one):
      // unconfirmed, a copy is sent again after its timeout, and a joiner asks for its join again.
      if (received === undefined) return {};
    }
    this.carryOut(hosted, hosted.member.step({ kind: "message", nowMs: Date.now(), from, message }), received);
    return {};
  }

  /**
   * A copy's pages, once its layers can go where the source has them: never while a snapshot of
   * the volume is being cut here (a page installed between this node's cut and the source's
   * would land on the wrong side of it), and only over a stack of snapshot layers levelled with
   * the source's (snapshots cut while this copy was away are taken from its head first).
   */
  private catchUpPages(hosted: Hosted, what: string, args: FrameHeader, payload: Payload): ReceivedPages | undefined {
    if (this.options.snapshotUnderWay(hosted.name)) return undefined;
    const received = this.pages.received(what, args, payload);
    if (received === undefined || !this.pages.levelLayers(what, hosted.uid, received, (layerId) => this.deletedSnapshotLayer(layerId))) return undefined;
    return received;
  }

  /** The mesh heard a peer (a heartbeat answer) or lost its link: suspicion follows in every member. */
  peerHeard(node: string): void {
    for (const hosted of this.hosted.values()) {
      if (this.isMember(hosted, node)) this.carryOut(hosted, hosted.member.step({ kind: "peer-heard", nowMs: Date.now(), node }));
    }
  }

  peerDown(node: string): void {
    for (const hosted of this.hosted.values()) {
      if (this.isMember(hosted, node)) this.carryOut(hosted, hosted.member.step({ kind: "peer-suspected", nowMs: Date.now(), node }));
    }
  }

  private isMember(hosted: Hosted, node: string): boolean {
    return hosted.groups.nodes.includes(node) && node !== this.options.group.selfId;
  }

  // ---- the data path

  /**
   * A replicated write this node is about to apply (as primary or replica), routed by the
   * record's routing version: the member's fence admits it (or this throws STALE_ROUTE, and the
   * entry node tries again by a newer table) and notes it for away replicas. Resolves once what the
   * member recorded for it is on disk: the write's ack must not leave before its away-map entry.
   */
  admitWrite(record: VolumeRecord, page: number, pageOffset: number, lengthBytes: number): Promise<void> | undefined {
    const hosted = this.hosted.get(record.uid);
    if (hosted === undefined || this.admitsAtOnce(hosted, record, page)) return undefined;
    const id = ++this.requestSeq;
    const { groups } = hosted;
    // The parts of the page it touches: a copy away since lacks those, not the whole page.
    const { first, span } = chunksOfWrite(groups, page, record.pageSizeBytes, pageOffset, lengthBytes);
    const request = { id, kind: "write" as const, volume: hosted.name, group: groupOfPage(groups, page), chunk: first, span, routed: record.routing.version };
    const answered = new Promise<void>((resolve, reject) => hosted.requests.set(id, { resolve, reject }));
    const ready = hosted.member.step({ kind: "request", nowMs: Date.now(), request });
    const admitted = ready.applies.some((apply) => apply.kind === "write" && apply.request.id === id);
    const noted = ready.records.filter((item) => item.kind === "away-chunks" && item.changed.length > 0).length;
    if (noted > 0) {
      hosted.bytesWrittenAway += lengthBytes;
      this.writtenAway.inc(lengthBytes);
    }
    this.carryOut(hosted, ready);
    if (!admitted) {
      hosted.requests.delete(id);
      // Its refusal may still be in the member's outbox behind an earlier Ready; the caller's answer is this.
      answered.catch(() => {});
      throw new ShoalError("STALE_ROUTE", `node ${this.options.group.selfId} does not take writes of page ${page} of '${record.name}' routed by version ${record.routing.version} now (its replica table is ${describeTable(hosted.member.current.tables.get(hosted.name)!)})`);
    }
    return answered;
  }

  /**
   * The member's own answer, without a step, in the common case: no away map to note the write
   * in, no sync pending that an answer would have to wait for (records are committed before a
   * step returns), and the fence admits it (the routing's version is the recorded table's, and
   * this copy of the group is up to date for its membership). A step per write cost ~17 µs of
   * node CPU per replicated 4 KiB write (bench/replicas.ts, 124 vs 107 µs).
   */
  private admitsAtOnce(hosted: Hosted, record: VolumeRecord, page: number): boolean {
    const state = hosted.member.current;
    if (hosted.durableChain !== settled || state.awayMaps.size > 0) return false;
    if (state.tables.get(hosted.name)?.version !== record.routing.version) return false;
    return this.syncedMember(hosted, groupOfPage(hosted.groups, page));
  }

  /**
   * Whether this node's copy of `page` may answer a read: its member is a replica of the page's
   * group in a table of the routing's version and its copy was brought up to date for that
   * membership, and a majority of the volume's nodes sent it their tables within the timeout (a
   * node that was paused or cut off may have been dropped without knowing: it forwards instead).
   */
  canServeLocally(record: VolumeRecord, page: number): boolean {
    const hosted = this.hosted.get(record.uid);
    if (hosted === undefined) return true;
    const table = hosted.member.current.tables.get(hosted.name);
    if (table === undefined || table.version !== record.routing.version) return false;
    const group = groupOfPage(hosted.groups, page);
    const since = sinceOf(table, group, this.options.group.selfId);
    if (since === undefined || hosted.member.current.syncedSince.get(groupKey(hosted.name, group)) !== since) return false;
    const recentMs = Date.now() - this.options.timeoutMs;
    const heard = 1 + [...hosted.tablesHeardMs.values()].filter((atMs) => atMs >= recentMs).length;
    return heard * 2 > hosted.groups.nodes.length;
  }

  /** The replica sets as this node holds them, with bytes written while a replica was away and bytes copied to bring one back (`route show --json`). */
  report(uid: string): { replicaSets: ReplicaSetsReport } | undefined {
    const hosted = this.hosted.get(uid);
    if (hosted === undefined) return undefined;
    const table = hosted.member.current.tables.get(hosted.name)!;
    const home = homeOf(table, homeSets(hosted.groups));
    const self = this.options.group.selfId;
    const whole = table.sets.every(
      (set, group) => set.length === home[group]!.length && set.every((entry) => home[group]!.includes(entry.node)) && (!set.some((entry) => entry.node === self) || this.syncedMember(hosted, group)),
    );
    const voters = [...(table.voters ?? hosted.groups.nodes)];
    return { replicaSets: { table: describeTable(table), whole, voters, writtenWhileAwayBytes: hosted.bytesWrittenAway, copiedBytes: hosted.bytesCopied } };
  }

  /**
   * `route forget` of a node that is gone for good, or `route drain` of a live one: its groups of
   * this volume get a new home copy each (rehome-plan.ts), chosen by a majority like any set
   * change; the members then fill and add the new copies in the background, as for a returning
   * node (a drained node leaves each set once its replacement is nearly caught up). For a dead
   * node, waits (until `deadlineMs`) for its drop to be chosen first. Resolves once the
   * re-homing is recorded here.
   */
  async rehome(volume: string, gone: string, candidates: string[], deadlineMs: number, leaving: "gone" | "live", dryRun = false): Promise<{ group: number; to: string }[]> {
    const hosted = this.byName.get(volume);
    if (hosted === undefined) {
      const nodes = this.options.group.volume(volume).routing.nodes.filter((node) => node !== gone);
      throw new ShoalError("BAD_ARGUMENT", `node ${this.options.group.selfId} is not one of the nodes of replicated volume '${volume}'; ask one of ${nodes.join(", ")}`);
    }
    const striped = homeSets(hosted.groups);
    const before = homeOf(hosted.member.current.tables.get(volume)!, striped);
    for (;;) {
      const table = hosted.member.current.tables.get(volume)!;
      const plan = planRehome(table, striped, gone, candidates, leaving, hosted.groups.nodes);
      if (plan.kind === "done") {
        const after = homeOf(table, striped);
        return after.flatMap((nodes, group) => nodes.filter((node) => !before[group]!.includes(node)).map((to) => ({ group, to })));
      }
      if (dryRun && plan.kind !== "no-room") return plan.kind === "change" ? plan.moved : [];
      if (plan.kind === "no-room") {
        throw new ShoalError("BAD_ARGUMENT", `volume '${volume}' keeps ${before[0]!.length} copies and every other node of it already holds one for page group(s) ${plan.groups.join(",")}: no node can take ${gone}'s copies`);
      }
      if (Date.now() >= deadlineMs) {
        if (plan.kind === "still-in-set") {
          throw new ShoalError("NODE_DOWN", `'${volume}' page group(s) ${plan.groups.join(",")} still count ${gone} as a copy: no other up-to-date copy of them could take over (is another node down?)`);
        }
        throw new ShoalError("TIMEOUT", `re-homing ${gone}'s copies of '${volume}' was not chosen in time (is a majority of its nodes up?)`);
      }
      if (plan.kind === "change" && hosted.member.proposalsInFlight === 0) {
        this.carryOut(hosted, hosted.member.step({ kind: "propose", nowMs: Date.now(), volume, change: plan.change }));
      }
      await Bun.sleep(50);
    }
  }

  /** Whether `node` still counts toward the majority that changes the volume's sets (its voters). */
  votesIn(volume: string, node: string): boolean {
    const hosted = this.byName.get(volume);
    if (hosted === undefined) return this.options.group.volume(volume).routing.nodes.includes(node);
    return (hosted.member.current.tables.get(volume)!.voters ?? hosted.groups.nodes).includes(node);
  }

  /** Whether `node` is home to, or still in the set of, some page group of the volume (as this node's member sees it). */
  holdsOrHomes(volume: string, node: string): boolean {
    const hosted = this.byName.get(volume);
    if (hosted === undefined) return this.options.group.volume(volume).routing.nodes.includes(node);
    const table = hosted.member.current.tables.get(volume)!;
    return homeOf(table, homeSets(hosted.groups)).some((nodes) => nodes.includes(node)) || table.sets.some((set) => set.some((entry) => entry.node === node));
  }

  // ---- one Ready, in the order replica-member.ts asks of a host

  private carryOut(hosted: Hosted, ready: MemberReady, data?: ReceivedPages): void {
    if (this.hosted.get(hosted.uid) !== hosted) return;
    this.writeRecords(hosted, ready.records);
    const applied = this.applyChunks(hosted, ready, data);
    // Promises, acceptances, tables (the fence), joins and maps made whole must survive a power
    // loss before anything resting on them leaves: an acceptor that forgot a promise, or a fence
    // that moved back, could let two sets take writes. The per-write map notes need not (a FLUSH
    // syncs them with the data they describe), so the write path waits for no fsync.
    const recordsSynced = mustSurvivePowerLoss(ready.records) ? this.options.catalog.durable() : undefined;
    const synced = applied && recordsSynced ? Promise.all([applied, recordsSynced]).then(() => {}) : (applied ?? recordsSynced);
    for (const outgoing of ready.messages) this.sendPeer(hosted, outgoing);
    for (const reply of ready.replies) {
      const waiter = hosted.requests.get(reply.request.id);
      hosted.requests.delete(reply.request.id);
      if (reply.ok) waiter?.resolve();
      else waiter?.reject(new ShoalError("STALE_ROUTE", `replica table of '${hosted.name}' refused the write (${reply.reason})`));
    }
    for (const note of ready.notes) this.note(hosted, note);
    this.arm(hosted, ready.wakeAtMs);
    if (ready.durableSeq !== undefined) this.reportDurable(hosted, ready.durableSeq, synced);
  }

  /**
   * One sqlite transaction per Ready, on the catalog connection that does not fsync: the commit is
   * in the page cache when it returns, which a kill -9 keeps, so the records are durable against a
   * process crash before any ack that rests on them leaves. Those that must also survive a power
   * loss are synced before their durability is reported (carryOut); the rest are synced by a FLUSH
   * (flush-debts.ts) with the pages, so power loss loses neither past a FLUSH.
   */
  private writeRecords(hosted: Hosted, records: MemberRecord[]): void {
    if (records.length === 0) return;
    const { catalog } = this.options;
    for (const record of records) applyRecord(hosted.stored, record);
    if (hosted.nextRecordSeq + records.length > RECORDS_BEFORE_COMPACTION) {
      catalog.replaceReplicaState(hosted.uid, encodeMemberState(hosted.stored));
      hosted.nextRecordSeq = 1;
      return;
    }
    catalog.appendReplicaRecords(hosted.uid, hosted.nextRecordSeq, records);
    hosted.nextRecordSeq += records.length;
  }

  /**
   * A copy's or join's pages, each with all its layers as the message carried them. Applied in step order
   * with this node's writes (one thread: the step and the apply happen together). A copy never
   * reaches a group where this node is a replica (the member refuses it): a source copies only to
   * nodes out of the set and adds one back only through a join taken after it recorded the new
   * version, so such a copy may be older than a write applied since. A join lands
   * while its group refuses writes here ("joining", fence.ts), so no write it could undo has been
   * applied. Returns the page sync the durability report must wait for.
   */
  private applyChunks(hosted: Hosted, ready: MemberReady, data: ReceivedPages | undefined): Promise<void> | undefined {
    let synced: Promise<void> | undefined;
    for (const apply of ready.applies) {
      if (apply.kind === "write") continue;
      const ranges = rangesOfChunks(hosted.groups, apply.group, apply.chunks, hosted.pageSizeBytes);
      const missing = ranges.filter((range) => !data?.ranges.has(rangeKey(range)));
      if (data === undefined || missing.length > 0) {
        this.options.log.warn(`a ${apply.kind} of '${hosted.name}' group ${apply.group} came without pages ${missing.map((range) => `${range.page}+${range.offset}`).join(", ")}; ignored`);
        continue;
      }
      synced = this.pages.install(hosted.uid, data, ranges);
    }
    return synced;
  }

  /** A snapshot layer whose snapshot the group records as deleted (one it does not know of yet is not). */
  private deletedSnapshotLayer(layerId: string): boolean {
    const at = layerId.indexOf("@");
    return at >= 0 && this.options.group.snapshots.get(snapshotKey({ volumeUid: layerId.slice(0, at), snapshotId: layerId.slice(at + 1) }))?.deleted === true;
  }

  private syncedMember(hosted: Hosted, group: number): boolean {
    const state = hosted.member.current;
    const table = state.tables.get(hosted.name);
    const since = table && sinceOf(table, group, this.options.group.selfId);
    return since !== undefined && state.syncedSince.get(groupKey(hosted.name, group)) === since;
  }

  private reportDurable(hosted: Hosted, seq: number, synced: Promise<void> | undefined): void {
    const step = () => {
      if (this.hosted.get(hosted.uid) === hosted) this.carryOut(hosted, hosted.member.step({ kind: "durable", nowMs: Date.now(), seq }));
    };
    // Nothing to wait for and nothing before it waiting: now (the write path's common case).
    if (synced === undefined && hosted.durableChain === settled) return step();
    const before = hosted.durableChain;
    const chain = Promise.all([before, synced]).then(step, (err) => this.options.log.warn(`syncing a resync copy of '${hosted.name}' failed: ${asShoalError(err).message}`));
    hosted.durableChain = chain;
    void chain.then(() => {
      if (hosted.durableChain === chain) hosted.durableChain = settled;
    });
  }

  private sendPeer(hosted: Hosted, { to, message }: Outgoing): void {
    if (to === this.options.group.selfId) {
      queueMicrotask(() => this.carryOut(hosted, hosted.member.step({ kind: "message", nowMs: Date.now(), from: to, message })));
      return;
    }
    const link = this.options.group.links.get(to);
    const args: FrameHeader = { u: hosted.uid, m: message as unknown as FrameHeader };
    // Fire and forget: the protocol resends what matters (copies time out, tables repeat).
    const send = (op: string, sent: FrameHeader, payload?: Uint8Array) => link?.request(op, sent, payload, this.options.timeoutMs * 4).catch(() => {});
    if (message.kind !== "copy" && message.kind !== "join") return void send("replica.msg", args);
    // A joiner is not let in while a snapshot of the volume is under way here (every up-to-date
    // copy takes part in it): it would take writes without having cut. It asks again.
    if (message.kind === "join" && this.options.snapshotUnderWay(hosted.name)) return;
    const outgoing = this.pages.export(hosted.uid, rangesOfChunks(hosted.groups, message.group, message.chunks, hosted.pageSizeBytes));
    hosted.bytesCopied += outgoing.bytes;
    this.copiedBytes.with(message.kind).inc(outgoing.bytes);
    // In order on the one link: the staged pieces reach the receiver before the message.
    for (const staged of outgoing.messages.slice(0, -1)) send("replica.stage", { u: hosted.uid, k: outgoing.args.k }, Payload.concat(staged));
    send("replica.msg", { ...args, ...outgoing.args }, Payload.concat(outgoing.messages[outgoing.messages.length - 1]!));
  }

  /** Whole-page chunks of the group this node's store holds a page for: "every chunk" without listing a 64 TiB volume. */
  private heldChunks(uid: string, groups: PageGroups, group: number): number[] {
    return this.options.store
      .changedPages(uid, undefined)
      .filter((page) => page < groups.pageCount && groupOfPage(groups, page) === group)
      .map((page) => chunkOfPage(groups, page));
  }

  private note(hosted: Hosted, note: MemberReady["notes"][number]): void {
    const { log } = this.options;
    switch (note.kind) {
      case "proposed":
        log.info(`replica sets of '${hosted.name}': proposing v${note.version}: ${note.change}`);
        return;
      case "gave-up":
        log.warn(`replica sets of '${hosted.name}': gave up on v${note.version} after ${note.attempts} ballots`);
        return;
      case "adopted":
        log.info(`replica sets of '${hosted.name}' now ${describeTable(note.table)}`);
        this.install(hosted, note.table);
        this.releaseRehomed(hosted, note.table);
        return;
      case "join-applied":
        log.info(`'${hosted.name}' group ${note.group}: this copy is up to date again (joined at v${note.since})`);
        return;
      default:
        return;
    }
  }

  /** The adopted table as the volume's routing: recorded in the catalog, in the router, and sent to every node. */
  private install(hosted: Hosted, table: ReplicaTable): void {
    const { group } = this.options;
    const record = group.volumeByUid(hosted.uid);
    if (record === undefined || record.routing.version >= table.version) return;
    const sets = table.sets.map((set) => set.map((entry) => entry.node));
    const routing = withReplicaSets(record.routing, table.version, sets, (page) => groupOfPage(hosted.groups, page));
    // The record's version moves with the routing's, so every node that installs the same table makes the same record.
    const next: VolumeRecord = { ...record, version: record.version + (table.version - record.routing.version), routing };
    if (group.applyVolume(next)) void group.publishVolume(next, []).catch(() => {});
  }

  /**
   * A drained (or re-homed) node's pages of groups it is neither home to nor a copy of any more:
   * nothing reads them again (a later re-homing back would copy every chunk anew), so they go,
   * every layer of the volume, once the table that says so is on disk for power loss too: a node
   * that came back from a crash with an older table and without the pages would serve holes.
   */
  private releaseRehomed(hosted: Hosted, table: ReplicaTable): void {
    const self = this.options.group.selfId;
    const orphaned = (current: ReplicaTable): Set<number> =>
      new Set(current.home === undefined ? [] : current.home.flatMap((nodes, group) => (nodes.includes(self) || current.sets[group]!.some((entry) => entry.node === self) ? [] : [group])));
    if (orphaned(table).size === 0) return;
    void this.options.catalog.durable().then(() => {
      if (this.hosted.get(hosted.uid) !== hosted) return;
      const current = hosted.member.current.tables.get(hosted.name);
      if (current === undefined) return;
      const groups = orphaned(current);
      const pages = this.options.store.changedPages(hosted.uid, undefined).filter((page) => page < hosted.groups.pageCount && groups.has(groupOfPage(hosted.groups, page)));
      if (pages.length === 0) return;
      this.options.store.removePages(pages, familyOf(hosted.uid));
      this.options.log.info(`'${hosted.name}': removed ${pages.length} page(s) of group(s) ${[...groups].join(",")}, re-homed away from this node`);
    }, (err) => this.options.log.warn(`'${hosted.name}': pages re-homed away kept (the catalog did not sync: ${asShoalError(err).message})`));
  }

  // ---- the one timer

  private arm(hosted: Hosted, wakeAtMs: number): void {
    if (wakeAtMs >= hosted.wakeAtMs || this.stopped) return;
    clearTimeout(hosted.timer);
    hosted.wakeAtMs = wakeAtMs;
    hosted.timer = setTimeout(() => {
      hosted.wakeAtMs = Infinity;
      this.carryOut(hosted, hosted.member.step({ kind: "tick", nowMs: Date.now() }));
    }, Math.max(0, wakeAtMs - Date.now()));
  }
}

/** The durability chain when nothing waits on a sync. */
const settled = Promise.resolve();
