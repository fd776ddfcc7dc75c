// A volume's catalog record as every member keeps it, and the rule that decides which of two
// copies of a record is newer, so that members converge whatever order updates arrive in.
import { ShoalError } from "../errors.ts";
import { pageCount, validateGeometry, type Geometry } from "../geometry.ts";
import { routingFromWire, routingToWire, stripedTable, type RoutingTable, type RoutingTableWire } from "./routing.ts";

export interface VolumeRecord extends Geometry {
  name: string;
  /** Unique for this incarnation of the name: page files and peers key on it, never on the name. */
  uid: string;
  createdAtMs: number;
  /** Bumped on every change (routing, deletion); the highest version wins. */
  version: number;
  deleted: boolean;
  routing: RoutingTable;
  /** A clone's starting point: the snapshot layer its pages read through to until written. */
  origin?: string;
  /** An archive restore into it has not finished: clients may not open it. */
  restoring?: boolean;
  /** A page move holds the routing: only its coordinator changes the table until it clears this. */
  moving?: MoveLock;
}

export interface MoveLock {
  moveId: string;
  /** The node coordinating the move. */
  by: string;
  startedAtMs: number;
}

const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function validateVolumeName(name: string): void {
  if (!VOLUME_NAME.test(name)) {
    throw new ShoalError(
      "BAD_ARGUMENT",
      `'${name}' is not a valid volume name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

export interface NewVolume {
  name: string;
  sizeBytes: number;
  pageSizeBytes: number;
  nodes: string[];
  uid: string;
  nowMs: number;
  /** Version of a tombstone of the same name, so the new record outranks it. */
  previousVersion: number;
  origin?: string;
  /** Copies of each page (1 when absent), on distinct nodes. */
  replicas?: number;
}

export function newVolumeRecord(spec: NewVolume): VolumeRecord {
  validateVolumeName(spec.name);
  const geometry = { sizeBytes: spec.sizeBytes, pageSizeBytes: spec.pageSizeBytes };
  validateGeometry(geometry);
  return {
    name: spec.name,
    uid: spec.uid,
    sizeBytes: spec.sizeBytes,
    pageSizeBytes: spec.pageSizeBytes,
    createdAtMs: spec.nowMs,
    version: spec.previousVersion + 1,
    deleted: false,
    routing: stripedTable(pageCount(geometry), spec.nodes, spec.replicas ?? 1),
    ...(spec.origin ? { origin: spec.origin } : {}),
  };
}

/** What decides which of two copies of a record wins: a peer can send it ahead of the record. */
export interface RecordRank {
  version: number;
  uid: string;
  routingVersion: number;
  /** "" when the volume is not being moved. */
  moveId: string;
  /** A tombstone: final, it outranks a record of the same version (a failover's routing, say). */
  deleted?: boolean;
}

/** True when `candidate` should replace `current`. Ties (concurrent creates) go to the larger uid. */
export function isNewer(candidate: VolumeRecord, current: VolumeRecord | undefined): boolean {
  return outranks(rankOf(candidate), current && rankOf(current));
}

export function rankOf(record: VolumeRecord): RecordRank {
  return { version: record.version, uid: record.uid, routingVersion: record.routing.version, moveId: record.moving?.moveId ?? "", ...(record.deleted ? { deleted: true } : {}) };
}

export function outranks(candidate: RecordRank, current: RecordRank | undefined): boolean {
  if (!current) return true;
  if (candidate.version !== current.version) return candidate.version > current.version;
  if (candidate.uid !== current.uid) return candidate.uid > current.uid;
  // A delete and a replica-set change made from the same record: the delete wins everywhere.
  if (Boolean(candidate.deleted) !== Boolean(current.deleted)) return Boolean(candidate.deleted);
  // A lock taken on a stale copy may tie with a newer record: the newer table always wins.
  if (candidate.routingVersion !== current.routingVersion) return candidate.routingVersion > current.routingVersion;
  // Two coordinators locked the volume for a move at once: the larger move id wins everywhere.
  return candidate.moveId > current.moveId;
}

/**
 * The rank of a record still in wire form, read without decoding its table (a 64 TiB volume's
 * takes a pass over 16 Mi pages); undefined if the fields are not there to read.
 */
export function wireRank(wire: unknown): RecordRank | undefined {
  const record = wire as VolumeRecordWire | undefined;
  if (typeof record !== "object" || record === null || typeof record.uid !== "string" || typeof record.routing !== "object" || record.routing === null) return undefined;
  const moveId = typeof record.moving === "object" && record.moving !== null && typeof record.moving.moveId === "string" ? record.moving.moveId : "";
  return { version: Number(record.version), uid: record.uid, routingVersion: Number(record.routing.version), moveId, ...(record.deleted === true ? { deleted: true } : {}) };
}

/** A rank from a peer, checked field by field. */
export function parseRank(value: unknown): RecordRank {
  const rank = value as RecordRank | undefined;
  if (typeof rank !== "object" || rank === null || typeof rank.uid !== "string" || typeof rank.moveId !== "string") {
    throw new ShoalError("BAD_FRAME", "volume record rank is malformed");
  }
  return { version: Number(rank.version), uid: rank.uid, routingVersion: Number(rank.routingVersion), moveId: rank.moveId, ...(rank.deleted === true ? { deleted: true } : {}) };
}

/** The record as stored in catalogs and sent between members. */
export interface VolumeRecordWire extends Omit<VolumeRecord, "routing"> {
  routing: RoutingTableWire;
}

export function volumeToWire(record: VolumeRecord): VolumeRecordWire {
  return { ...record, routing: routingToWire(record.routing) };
}

export function volumeFromWire(wire: VolumeRecordWire): VolumeRecord {
  if (typeof wire !== "object" || wire === null || typeof wire.name !== "string" || typeof wire.uid !== "string") {
    throw new ShoalError("BAD_FRAME", "volume record is malformed");
  }
  validateVolumeName(wire.name);
  const geometry = { sizeBytes: Number(wire.sizeBytes), pageSizeBytes: Number(wire.pageSizeBytes) };
  validateGeometry(geometry);
  return {
    name: wire.name,
    uid: wire.uid,
    ...geometry,
    createdAtMs: Number(wire.createdAtMs),
    version: Number(wire.version),
    deleted: Boolean(wire.deleted),
    routing: routingFromWire(wire.routing, pageCount(geometry)),
    ...(typeof wire.origin === "string" ? { origin: wire.origin } : {}),
    ...(wire.restoring === true ? { restoring: true } : {}),
    ...(isMoveLock(wire.moving) ? { moving: { moveId: wire.moving.moveId, by: wire.moving.by, startedAtMs: Number(wire.moving.startedAtMs) } } : {}),
  };
}

function isMoveLock(value: unknown): value is MoveLock {
  const lock = value as MoveLock | undefined;
  return typeof lock === "object" && lock !== null && typeof lock.moveId === "string" && typeof lock.by === "string";
}
