// The group as this node sees it: members and their links, and every volume record. Changes are
// pushed to every member; a member that missed some (down, partitioned) catches up when its
// catalog digest differs from a peer's, which every hello and heartbeat carries. What peers send
// about the group is checked in group-records.ts before it gets here.
import { asShoalError, ShoalError } from "../../core/errors.ts";
import type { Catalog } from "../../core/cluster/catalog.ts";
import { isValidIdentity, type Member } from "../../core/cluster/member.ts";
import { isNewer, outranks, parseRank, rankOf, volumeFromWire, wireRank, type RecordRank, type VolumeRecord, type VolumeRecordWire } from "../../core/cluster/volume.ts";
import { routingWireBytes } from "../../core/cluster/routing.ts";
import { isNewerSnapshot, snapshotKey, type SnapshotRecord } from "../../core/snapshot/snapshot-record.ts";
import { packValue, type FrameHeader } from "./frame.ts";
import type { MeshConnection, Reply, RequestHandler, Response } from "./mesh-connection.ts";
import { dialMesh, PeerLink, type MeshLog } from "./mesh.ts";
import { parseMember, parseSnapshotRecord, receiveDump, sameIdentity, volumeLabel, type GroupDump } from "./group-records.ts";
import { DUMP_INLINE_ROUTING_BYTES, fetchOver, INLINE_DUMP_BYTES, parsePiecedRef, PiecedOutbox, pullPieces, type PieceFetch, type PiecedRef } from "./record-pieces.ts";

/** Bounds the memory of which records were refused (and logged) already. */
const MAX_REFUSALS_KEPT = 1024;
const CATALOG_REQUEST_TIMEOUT_MS = 10_000;

/** A member's answer to a published volume record: the version (and move lock) it kept. */
export interface VolumeAnswer {
  node: string;
  version: number;
  moveId: string | undefined;
}

/**
 * A join whose answer never came: the member may have recorded this node (and its identity), so
 * the new data directory must be kept for the retry, which it would otherwise refuse as another node.
 */
export class JoinInDoubt extends ShoalError {}

export interface GroupOptions {
  catalog: Catalog;
  self: Member;
  handler: RequestHandler;
  log: MeshLog;
  /** Told about every record that replaced another (or arrived new). */
  onVolumeChanged: (record: VolumeRecord, previous: VolumeRecord | undefined) => void;
  /** Told about every snapshot record that replaced another (or arrived new). */
  onSnapshotChanged: (record: SnapshotRecord, previous: SnapshotRecord | undefined) => void;
  onPeerDown?: (nodeId: string) => void;
  /** A peer answered a hello or a heartbeat (the replica sets' suspicion timer feeds on it). */
  onPeerHeard?: (nodeId: string) => void;
}

export class Group {
  readonly selfId: string;
  groupId: string | undefined;
  readonly members = new Map<string, Member>();
  readonly volumes = new Map<string, VolumeRecord>();
  private readonly volumesByUid = new Map<string, VolumeRecord>();
  /** Snapshot records by snapshotKey (volume uid / snapshot id), tombstones included. */
  readonly snapshots = new Map<string, SnapshotRecord>();
  readonly links = new Map<string, PeerLink>();
  private readonly syncing = new Set<string>();
  /** Per peer, its digest and ours when a sync from it last finished: no pull again until one changes. */
  private readonly synced = new Map<string, string>();
  /**
   * Records refused (undecodable, over a limit), by name and version: each is logged once, whoever
   * sends it and however often, not at every sync.
   */
  private readonly refusals = new Set<string>();
  /** Records and dumps too big for a header, held for peers to pull piece by piece. */
  readonly outbox = new PiecedOutbox();
  private cachedDigest: string | undefined;
  private started = false;

  constructor(private readonly options: GroupOptions) {
    const { catalog, self } = options;
    this.selfId = self.id;
    this.groupId = catalog.getMeta("group_id");
    for (const member of catalog.members()) this.members.set(member.id, member);
    for (const record of catalog.volumes()) this.indexVolume(record);
    for (const record of catalog.snapshots()) this.snapshots.set(snapshotKey(record), record);
    this.members.set(self.id, self);
    catalog.putMember(self);
  }

  /** Starts links to every other member. */
  start(): void {
    this.started = true;
    for (const member of this.members.values()) this.ensureLink(member);
  }

  stop(): void {
    for (const link of this.links.values()) link.stop();
  }

  /** Founds a new group with this node as its only member. */
  found(): void {
    this.groupId = crypto.randomUUID();
    this.options.catalog.setMeta("group_id", this.groupId);
  }

  /** Joins the group of the member at `address`, taking its catalog. */
  async join(address: string): Promise<void> {
    const connection = await dialMesh(address, this.options.handler, this.options.log);
    try {
      const fetch = fetchOver(connection);
      const response = await connection.request("group.join", { member: this.members.get(this.selfId) }).catch((err: unknown) => {
        if (!(err instanceof ShoalError) || (err.code !== "NODE_DOWN" && err.code !== "TIMEOUT")) throw err;
        throw new JoinInDoubt(err.code, `${err.message}; the member may have taken this node in: start it again with the same --data to finish joining`);
      });
      const dump = await receiveDump(response, fetch);
      this.groupId = dump.groupId;
      this.options.catalog.setMeta("group_id", dump.groupId);
      await this.mergeDump(dump, fetch, "the group");
    } finally {
      connection.close();
    }
  }

  // ---- members

  addMember(member: Member): boolean {
    const known = this.members.get(member.id);
    // A forgotten member stays forgotten, whatever a stale peer still says of it.
    if (known?.forgotten) return false;
    // Only a record from the member's own data directory may re-point it (see Member.identity).
    if (known && !sameIdentity(known, member)) {
      this.options.log.warn(`ignoring a record of node '${member.id}' at ${member.meshAddress}: it is from another data directory than the member at ${known.meshAddress}`);
      return false;
    }
    if (known && known.meshAddress === member.meshAddress && known.nbdAddress === member.nbdAddress && known.identity === member.identity && !member.forgotten) return false;
    this.members.set(member.id, member);
    this.options.catalog.putMember(member);
    this.cachedDigest = undefined;
    if (member.forgotten || (known && known.meshAddress !== member.meshAddress)) {
      this.links.get(member.id)?.stop();
      this.links.delete(member.id);
    }
    this.ensureLink(member);
    return true;
  }

  /** Members that have not been forgotten. */
  liveMembers(): Member[] {
    return [...this.members.values()].filter((member) => !member.forgotten);
  }

  /** Removes a member for good (`route forget`): every member is told, and it is refused from now on. */
  async forget(nodeId: string): Promise<void> {
    const known = this.members.get(nodeId);
    if (!known || known.forgotten) throw new ShoalError("UNKNOWN_NODE", `node '${nodeId}' is not a member of this group`);
    const member: Member = { ...known, forgotten: true };
    this.addMember(member);
    await Promise.all([...this.links.values()].map((link) => link.request("group.member", { member }, undefined, 10_000).catch(() => undefined)));
  }

  private ensureLink(member: Member): void {
    if (!this.started || member.forgotten || member.id === this.selfId || this.links.has(member.id)) return;
    const link = new PeerLink({
      peerId: member.id,
      address: member.meshAddress,
      hello: () => ({ role: "peer", groupId: this.groupId, member: this.members.get(this.selfId), digest: this.digest() }),
      onPeerInfo: (info) => this.onPeerInfo(member.id, info),
      handler: this.options.handler,
      log: this.options.log,
      onUp: () => this.options.log.info(`node ${member.id} is up (${member.meshAddress})`, { peer: member.id }),
      onDown: () => {
        this.options.log.warn(`node ${member.id} is down (${member.meshAddress})`, { peer: member.id });
        this.options.onPeerDown?.(member.id);
      },
    });
    this.links.set(member.id, link);
    link.start();
  }

  isUp(nodeId: string): boolean {
    return nodeId === this.selfId || this.links.get(nodeId)?.state === "up";
  }

  link(nodeId: string): PeerLink {
    const link = this.links.get(nodeId);
    if (!link) throw new ShoalError("UNKNOWN_NODE", `node '${nodeId}' is not a member of this group; \`shoal route nodes\` lists them`);
    return link;
  }

  // ---- volumes

  /** Stores `record` if it is newer than what this node has. Returns whether it did. */
  applyVolume(record: VolumeRecord, durability: "now" | "later" = "now"): boolean {
    const previous = this.volumes.get(record.name);
    if (!isNewer(record, previous)) return false;
    this.options.catalog.putVolume(record, durability);
    if (durability === "later") void this.options.catalog.durable().catch(() => undefined);
    this.indexVolume(record);
    this.cachedDigest = undefined;
    this.options.onVolumeChanged(record, previous);
    return true;
  }

  private indexVolume(record: VolumeRecord): void {
    const previous = this.volumes.get(record.name);
    if (previous) this.volumesByUid.delete(previous.uid);
    this.volumes.set(record.name, record);
    if (!record.deleted) this.volumesByUid.set(record.uid, record);
  }

  /** A live volume by name, or UNKNOWN_VOLUME with a hint. */
  volume(name: string): VolumeRecord {
    const record = this.volumes.get(name);
    if (!record || record.deleted) {
      throw new ShoalError("UNKNOWN_VOLUME", `there is no volume '${name}'; \`shoal volume list\` shows what exists`);
    }
    return record;
  }

  volumeByUid(uid: string): VolumeRecord | undefined {
    return this.volumesByUid.get(uid);
  }

  liveVolumes(): VolumeRecord[] {
    return [...this.volumes.values()].filter((record) => !record.deleted);
  }

  /**
   * Sends a changed record to every other member. Members in `required` must confirm, or this
   * throws; the others catch up later through the digest if they are down now.
   */
  async publishVolume(record: VolumeRecord, required: string[]): Promise<VolumeAnswer[]> {
    const message = this.outbox.offerVolume(record);
    const failures: string[] = [];
    const answers: VolumeAnswer[] = [];
    await Promise.all(
      [...this.links.values()].map(async (link) => {
        // A member that is down now catches up through the digest; don't make the admin wait.
        if (link.state !== "up" && !required.includes(link.peerId)) return;
        try {
          const response = await link.request("catalog.volume", message, undefined, CATALOG_REQUEST_TIMEOUT_MS);
          answers.push({ node: link.peerId, version: Number(response.result.version), moveId: response.result.moveId as string | undefined });
        } catch (err) {
          if (required.includes(link.peerId)) failures.push(`${link.peerId}: ${(err as Error).message}`);
        }
      }),
    );
    if (failures.length > 0) {
      throw new ShoalError("NODE_DOWN", `volume '${record.name}' was not confirmed by ${failures.join("; ")}`);
    }
    return answers;
  }

  /** Sends a changed record to one member (inline, or by reference if its table is large). */
  sendVolume(peerId: string, record: VolumeRecord): Promise<Response> {
    return this.link(peerId).request("catalog.volume", this.outbox.offerVolume(record), undefined, CATALOG_REQUEST_TIMEOUT_MS);
  }

  // ---- snapshots

  applySnapshot(record: SnapshotRecord): boolean {
    const key = snapshotKey(record);
    const previous = this.snapshots.get(key);
    if (!isNewerSnapshot(record, previous)) return false;
    this.options.catalog.putSnapshot(record);
    this.snapshots.set(key, record);
    this.cachedDigest = undefined;
    this.options.onSnapshotChanged(record, previous);
    return true;
  }

  /** Live snapshots, optionally of one volume (by name), oldest first. */
  liveSnapshots(volume?: string): SnapshotRecord[] {
    return [...this.snapshots.values()]
      .filter((record) => !record.deleted && (volume === undefined || record.volume === volume))
      .filter((record) => this.volumes.get(record.volume)?.uid === record.volumeUid)
      .sort((a, b) => a.createdAtMs - b.createdAtMs || a.snapshotId.localeCompare(b.snapshotId));
  }

  /** A live snapshot by volume and name, or UNKNOWN_SNAPSHOT with a hint. */
  snapshot(volume: string, name: string): SnapshotRecord {
    const record = this.liveSnapshots(volume).find((candidate) => candidate.name === name);
    if (!record) {
      throw new ShoalError("UNKNOWN_SNAPSHOT", `volume '${volume}' has no snapshot '${name}'; \`shoal snap list ${volume}\` shows what exists`);
    }
    return record;
  }

  /** Sends a changed snapshot record to every member that is up; the rest catch up by digest. */
  async publishSnapshot(record: SnapshotRecord): Promise<void> {
    await Promise.all(
      [...this.links.values()]
        .filter((link) => link.state === "up")
        .map((link) => link.request("catalog.snapshot", { record }, undefined, 10_000).catch(() => {})),
    );
  }

  // ---- convergence

  /** Resolves once every catalog change so far is on disk (see Catalog.durable). */
  durable(): Promise<void> {
    return this.options.catalog.durable();
  }

  /** Changes whenever members or any volume record change; equal digests mean equal catalogs. */
  digest(): string {
    if (this.cachedDigest === undefined) {
      const parts: string[] = [];
      for (const member of [...this.members.values()].sort((a, b) => a.id.localeCompare(b.id))) {
        parts.push(`m:${member.id}@${member.meshAddress}@${member.nbdAddress}${member.forgotten ? "!" : ""}`);
      }
      for (const record of [...this.volumes.values()].sort((a, b) => a.name.localeCompare(b.name))) {
        parts.push(`v:${record.name}:${record.uid}:${record.version}`);
      }
      for (const key of [...this.snapshots.keys()].sort()) parts.push(`s:${key}:${this.snapshots.get(key)!.version}`);
      this.cachedDigest = Bun.hash(parts.join("\n")).toString(16);
    }
    return this.cachedDigest;
  }

  /**
   * The catalog for a joiner or a member catching up. Records with large tables go by reference
   * (pulled only by a member that lacks them), and inline records are bounded in all.
   */
  dump(): GroupDump {
    const volumes: VolumeRecordWire[] = [];
    const volumeRefs: PiecedRef[] = [];
    let inlineBytes = 0;
    for (const record of this.volumes.values()) {
      const offer = this.outbox.offerVolume(record, inlineBytes > DUMP_INLINE_ROUTING_BYTES);
      if ("recordRef" in offer) {
        volumeRefs.push(offer.recordRef);
        continue;
      }
      volumes.push(offer.record);
      inlineBytes += routingWireBytes(offer.record.routing);
    }
    return { groupId: this.groupId ?? "", members: [...this.members.values()], volumes, volumeRefs, snapshots: [...this.snapshots.values()] };
  }

  /** The dump as a reply: its bytes as the payload, or, if larger than a piece, a reference to pull. */
  private dumpReply(): Reply {
    const bytes = packValue(this.dump());
    if (bytes.byteLength <= INLINE_DUMP_BYTES) return { result: { packed: true }, payload: bytes };
    return { result: { dumpRef: this.outbox.offerBytes(bytes) } };
  }

  /**
   * Takes what a dump brings, record by record: a record this node cannot take (undecodable,
   * over a limit) is refused and logged once, and the rest still apply.
   */
  async mergeDump(dump: GroupDump, fetch: PieceFetch, from: string): Promise<void> {
    for (const member of dump.members ?? []) {
      if (member.id !== this.selfId) this.tryTake(from, `member ${String(member?.id)}`, () => this.addMember(parseMember(member)));
    }
    // Copies of records their members hold durably: no fsync on the loop per record.
    for (const wire of dump.volumes ?? []) {
      if (this.holdsAsNew(wire)) continue;
      this.tryTake(from, volumeLabel(wire), () => this.applyVolume(volumeFromWire(wire), "later"));
    }
    for (const value of dump.volumeRefs ?? []) {
      const ref = value as PiecedRef;
      let rank: RecordRank;
      try {
        rank = parseRank(ref?.rank);
      } catch (err) {
        this.refuse(from, `a volume record reference`, err);
        continue;
      }
      const label = `volume record '${String(ref.name)}' (version ${rank.version})`;
      const current = this.volumes.get(String(ref.name));
      if ((current && !outranks(rank, rankOf(current))) || this.refusals.has(label)) continue;
      try {
        const record = volumeFromWire((await pullPieces(parsePiecedRef(ref), fetch)) as VolumeRecordWire);
        this.applyVolume(record, "later");
      } catch (err) {
        if (asShoalError(err).code === "NODE_DOWN" || asShoalError(err).code === "TIMEOUT") throw err;
        this.refuse(from, label, err);
      }
    }
    for (const record of dump.snapshots ?? []) this.tryTake(from, "a snapshot record", () => this.applySnapshot(parseSnapshotRecord(record)));
  }

  /** True when this node's copy of the record is as new as `wire`: no need to decode its table. */
  private holdsAsNew(wire: unknown): boolean {
    const rank = wireRank(wire);
    const current = this.volumes.get(String((wire as VolumeRecordWire).name));
    return rank !== undefined && current !== undefined && !outranks(rank, rankOf(current));
  }

  private tryTake(from: string, label: string, take: () => unknown): void {
    try {
      take();
    } catch (err) {
      this.refuse(from, label, err);
    }
  }

  /** Logs a refused record once: the digest keeps differing, and every sync would log it again. */
  private refuse(from: string, label: string, err: unknown): void {
    if (this.refusals.has(label)) return;
    if (this.refusals.size >= MAX_REFUSALS_KEPT) this.refusals.clear();
    this.refusals.add(label);
    this.options.log.warn(`refusing ${label} from ${from}: ${asShoalError(err).message}; the links stay up, the record is skipped`);
  }

  private onPeerInfo(peerId: string, info: FrameHeader): void {
    if (info.groupId !== undefined && this.groupId !== undefined && info.groupId !== this.groupId) {
      throw new ShoalError("CONFLICT", `node ${peerId} belongs to another group (${String(info.groupId)}); not linking to it`);
    }
    // Only a hello answer names the node; heartbeats carry the group and digest alone.
    if (info.nodeId !== undefined) this.checkAnswerer(peerId, info);
    this.options.onPeerHeard?.(peerId);
    this.maybePullFrom(peerId, info.digest);
  }

  /** The node that answered at a member's address must be that member, from its own data directory. */
  private checkAnswerer(peerId: string, info: FrameHeader): void {
    const known = this.members.get(peerId);
    if (!known) return;
    const identity = typeof info.identity === "string" && isValidIdentity(info.identity) ? info.identity : undefined;
    if (info.nodeId !== peerId || !sameIdentity(known, { ...known, identity })) {
      throw new ShoalError("CONFLICT", `the node at ${known.meshAddress} is '${String(info.nodeId)}' from another data directory, not member '${peerId}'; not linking to it`);
    }
    // A member recorded before identities existed: its first answer fills it in.
    if (known.identity === undefined && identity !== undefined) this.addMember({ ...known, identity });
  }

  /** Pulls the peer's catalog when its digest differs, unless a pull at these same digests already ran. */
  private maybePullFrom(peerId: string, digest: unknown): void {
    if (typeof digest !== "string" || digest === this.digest()) return;
    if (this.synced.get(peerId) === `${digest}|${this.digest()}`) return;
    void this.pullFrom(peerId, digest);
  }

  private async pullFrom(peerId: string, peerDigest: string): Promise<void> {
    if (this.syncing.has(peerId)) return;
    this.syncing.add(peerId);
    try {
      const link = this.link(peerId);
      const fetch: PieceFetch = (op, args) => link.request(op, args, undefined, CATALOG_REQUEST_TIMEOUT_MS);
      const dump = await receiveDump(await fetch("catalog.dump", {}), fetch);
      await this.mergeDump(dump, fetch, `node ${peerId}`);
      this.synced.set(peerId, `${peerDigest}|${this.digest()}`);
    } catch (err) {
      this.options.log.warn(`catalog sync from ${peerId} failed: ${(err as Error).message}`, { peer: peerId });
    } finally {
      this.syncing.delete(peerId);
    }
  }

  // ---- requests from peers

  /** Handles group-level mesh requests; returns undefined for ops that are not its own. */
  handle(connection: MeshConnection, op: string, args: FrameHeader): Reply | Promise<Reply> | undefined {
    switch (op) {
      case "hello":
        return { result: this.onHello(connection, args) };
      case "ping":
        return { result: { groupId: this.groupId, digest: this.digest() } };
      case "group.join":
        this.onJoin(args);
        return this.dumpReply();
      case "group.member":
        requireMember(connection, op);
        this.addMember(parseMember(args.member));
        return { result: {} };
      case "catalog.dump":
        return this.dumpReply();
      case "catalog.piece":
        return this.outbox.piece(args);
      case "catalog.volume":
        requireMember(connection, op);
        return this.onVolume(connection, args);
      case "catalog.snapshot":
        requireMember(connection, op);
        this.applySnapshot(parseSnapshotRecord(args.record));
        return { result: {} };
      default:
        return undefined;
    }
  }

  /**
   * A member's changed record: inline, or a reference to pull over the same connection. One this
   * node cannot take is refused to the sender, and logged here once; the link stays up.
   */
  private onVolume(connection: MeshConnection, args: FrameHeader): Reply | Promise<Reply> {
    const from = connection.label;
    const take = (wire: unknown): Reply => {
      if (!this.holdsAsNew(wire)) {
        let record: VolumeRecord;
        try {
          record = volumeFromWire(wire as VolumeRecordWire);
        } catch (err) {
          this.refuse(from, volumeLabel(wire as VolumeRecordWire), err);
          throw err;
        }
        // The sender holds it durably; a copy lost in a crash here comes back by digest.
        this.applyVolume(record, "later");
      }
      // What this member keeps after the update: a move's coordinator learns from it whether its lock won.
      const kept = this.volumes.get(String((wire as VolumeRecordWire).name))!;
      return { result: { version: kept.version, ...(kept.moving ? { moveId: kept.moving.moveId } : {}) } };
    };
    if (args.recordRef === undefined) return take(args.record);
    let ref: PiecedRef;
    try {
      ref = parsePiecedRef(args.recordRef);
    } catch (err) {
      this.refuse(from, `volume record '${String((args.recordRef as PiecedRef | undefined)?.name)}'`, err);
      throw err;
    }
    return pullPieces(ref, fetchOver(connection)).then(take);
  }

  private onHello(connection: MeshConnection, args: FrameHeader): FrameHeader {
    if (args.role === "peer") {
      // Members learn of a joiner (and dial it) before its join's answer has reached it.
      if (this.groupId === undefined) throw new ShoalError("NOT_READY", "this node is still joining its group");
      if (args.groupId !== this.groupId) {
        throw new ShoalError("CONFLICT", `refusing a peer of group ${String(args.groupId)}: this node is in group ${this.groupId}`);
      }
      const member = parseMember(args.member);
      if (!this.members.has(member.id)) {
        throw new ShoalError("UNKNOWN_NODE", `node '${member.id}' is not a member of this group; start it with --join`);
      }
      if (this.members.get(member.id)!.forgotten) {
        throw new ShoalError("UNKNOWN_NODE", `node '${member.id}' was removed from this group (route forget); refusing it`);
      }
      this.refuseImpostor(member);
      this.addMember(member);
      this.links.get(member.id)?.redialNow();
      connection.peerId = member.id;
      connection.label = `node ${member.id}`;
      this.maybePullFrom(member.id, args.digest);
    } else {
      connection.peerId = "admin";
    }
    return { groupId: this.groupId, nodeId: this.selfId, identity: this.members.get(this.selfId)!.identity, digest: this.digest() };
  }

  private onJoin(args: FrameHeader): void {
    const member = parseMember(args.member);
    if (this.members.get(member.id)?.forgotten) {
      throw new ShoalError("CONFLICT", `node id '${member.id}' was removed from this group; join with a new id and an empty data directory`);
    }
    this.refuseImpostor(member);
    const isNew = this.addMember(member);
    if (isNew) {
      this.options.log.info(`node ${member.id} joined the group (${member.meshAddress})`, { peer: member.id });
      for (const link of this.links.values()) {
        if (link.peerId !== member.id) link.request("group.member", { member }).catch(() => {});
      }
    }
  }

  /**
   * A hello or join that claims a member's id (or this node's own) from another data directory:
   * a second node started with a running member's --id, or a copy of this node's data directory.
   * Taking it would re-point the member for the whole group, so it is refused, and said why.
   */
  private refuseImpostor(claimed: Member): void {
    const known = this.members.get(claimed.id);
    if (!known) return;
    if (claimed.id === this.selfId && claimed.identity === known.identity) {
      throw new ShoalError("CONFLICT", `a node at ${claimed.meshAddress} claims to be this node '${claimed.id}' with its identity: is it running on a copy of this data directory?`);
    }
    if (claimed.id === this.selfId || !sameIdentity(known, claimed)) {
      throw new ShoalError(
        "CONFLICT",
        `node id '${claimed.id}' is already a member of this group (mesh ${known.meshAddress}) with another data directory; refusing ${claimed.meshAddress}: give a new node a new --id`,
      );
    }
    // Its identity, from elsewhere, while it answers where it is: a copy of its data directory.
    // A member that really moved is let in once its old link is down (a closed socket, or missed heartbeats).
    if (claimed.meshAddress !== known.meshAddress && this.isUp(claimed.id)) {
      throw new ShoalError(
        "CONFLICT",
        `node '${claimed.id}' is up at ${known.meshAddress}; refusing a second process that claims to be it at ${claimed.meshAddress} (a copy of its data directory?)`,
      );
    }
  }
}

/** Changes to the catalog come from members only: never from an admin client or a connection before its hello. */
function requireMember(connection: MeshConnection, op: string): void {
  if (connection.peerId === undefined || connection.peerId === "admin") {
    throw new ShoalError("BAD_REQUEST", `'${op}' is for members of the group that said hello`);
  }
}
