// Each node's durable catalog in bun:sqlite (WAL): its identity, the group's members and every
// volume record with its routing table. Page data lives in files (see page-store.ts), not here.
import { Database } from "bun:sqlite";
import * as fs from "node:fs";
import { RealFileIO } from "../store/file-io.ts";
import { fatal } from "../invariant.ts";
import { ShoalError } from "../errors.ts";
import type { Member } from "./member.ts";
import { packReplicaRanks, routingFromWire, routingToWire, unpackReplicaRanks } from "./routing.ts";
import { pageCount } from "../geometry.ts";
import type { VolumeRecord } from "./volume.ts";
import { snapshotKey, type SnapshotRecord } from "../snapshot/snapshot-record.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
  id TEXT PRIMARY KEY, mesh_address TEXT NOT NULL, nbd_address TEXT NOT NULL, joined_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS volumes (
  name TEXT PRIMARY KEY, uid TEXT NOT NULL, size_bytes INTEGER NOT NULL, page_size_bytes INTEGER NOT NULL,
  created_at_ms INTEGER NOT NULL, version INTEGER NOT NULL, deleted INTEGER NOT NULL,
  route_version INTEGER NOT NULL, route_nodes TEXT NOT NULL, route_owners BLOB NOT NULL, origin TEXT,
  restoring INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS snapshots (key TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replica_member (
  uid TEXT NOT NULL, seq INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (uid, seq)
);
CREATE TABLE IF NOT EXISTS snapshot_protocol (
  role TEXT NOT NULL, snapshot_id TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (role, snapshot_id)
);
`;

interface VolumeRow {
  name: string;
  uid: string;
  size_bytes: number;
  page_size_bytes: number;
  created_at_ms: number;
  version: number;
  deleted: number;
  route_version: number;
  route_nodes: string;
  route_owners: Uint8Array;
  route_runs: Uint8Array | null;
  route_replicas: Uint8Array | null;
  origin: string | null;
  restoring: number;
  moving: string | null;
}

export class Catalog implements SnapshotCatalog {
  private readonly db: Database;
  /**
   * The snapshot protocol's records and the snapshot records go through a second connection
   * that does not fsync on commit: they are written several times per snapshot, and an fsync on
   * the event loop stalls every client of the node. Who needs one durable awaits durable(),
   * which syncs the shared write-ahead log off the loop.
   */
  private readonly lazyDb: Database;
  private readonly walPath: string;
  private walFd = -1;
  private syncing = false;
  private closed = false;
  private readonly waiting: { resolve: () => void; reject: (err: unknown) => void }[] = [];

  constructor(path: string) {
    this.db = new Database(path, { create: true, strict: true });
    // FULL: catalog changes are rare (create, delete, join) and must survive power loss.
    this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;");
    this.db.exec(SCHEMA);
    this.lazyDb = new Database(path, { strict: true });
    this.lazyDb.exec("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;");
    this.walPath = `${path}-wal`;
    // Columns added after the first release: a catalog from before gets them empty.
    this.addColumnIfMissing("volumes", "moving", "TEXT");
    // Tables stored as runs (see RoutingTableWire); route_owners is then empty. Rows written
    // before keep their owner map in route_owners.
    this.addColumnIfMissing("volumes", "route_runs", "BLOB");
    // Replica ranks of a replicated volume (packReplicaRanks); NULL for one copy, and in rows
    // from before replicas, which thus read as R=1.
    this.addColumnIfMissing("volumes", "route_replicas", "BLOB");
    this.addColumnIfMissing("members", "forgotten", "INTEGER NOT NULL DEFAULT 0");
    this.addColumnIfMissing("members", "identity", "TEXT");
  }

  private addColumnIfMissing(table: string, column: string, declaration: string): void {
    const columns = this.db.query(`PRAGMA table_info(${table})`).all() as { name: string }[];
    if (!columns.some((existing) => existing.name === column)) this.db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${declaration}`);
  }

  close(): void {
    this.closed = true;
    if (this.walFd >= 0) fs.closeSync(this.walFd);
    this.walFd = -1;
    this.lazyDb.close();
    this.db.close();
  }

  /**
   * Resolves once every change made so far is on disk: protocol and snapshot records are written
   * without an fsync (see lazyDb); this syncs the write-ahead log in the background. Callers that
   * arrive while a sync runs share the next one.
   */
  durable(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      if (!this.syncing) this.syncWal();
    });
  }

  private syncWal(): void {
    const batch = this.waiting.splice(0);
    this.syncing = true;
    (async () => {
      if (this.walFd < 0) this.walFd = fs.openSync(this.walPath, "r");
      await new RealFileIO().fdatasync(this.walFd);
    })().then(
      () => {
        for (const waiter of batch) waiter.resolve();
      },
      (err) => {
        // After a failed fsync the kernel may have dropped the dirty pages and marked them clean:
        // a retry would succeed over lost records. Nothing written since can be trusted; crash.
        // Unless close() took the descriptor away mid-sync: closing checkpoints the log itself.
        if (!this.closed) fatal(err, "syncing the catalog's write-ahead log failed");
        for (const waiter of batch) waiter.reject(err);
      },
    ).finally(() => {
      this.syncing = false;
      if (this.waiting.length > 0) this.syncWal();
    });
  }

  getMeta(key: string): string | undefined {
    const row = this.db.query("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | null;
    return row?.value;
  }

  setMeta(key: string, value: string): void {
    this.db.query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(key, value);
  }

  members(): Member[] {
    const rows = this.db.query("SELECT * FROM members ORDER BY id").all() as {
      id: string;
      mesh_address: string;
      nbd_address: string;
      joined_at_ms: number;
      forgotten: number;
      identity: string | null;
    }[];
    return rows.map((row) => ({
      id: row.id,
      meshAddress: row.mesh_address,
      nbdAddress: row.nbd_address,
      joinedAtMs: row.joined_at_ms,
      ...(row.identity ? { identity: row.identity } : {}),
      ...(row.forgotten ? { forgotten: true } : {}),
    }));
  }

  putMember(member: Member): void {
    this.db
      .query(
        `INSERT INTO members (id, mesh_address, nbd_address, joined_at_ms, forgotten, identity) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET mesh_address = excluded.mesh_address, nbd_address = excluded.nbd_address,
           forgotten = excluded.forgotten, identity = COALESCE(members.identity, excluded.identity)`,
      )
      .run(member.id, member.meshAddress, member.nbdAddress, member.joinedAtMs, member.forgotten ? 1 : 0, member.identity ?? null);
  }

  /** Every snapshot record, tombstones included. */
  snapshots(): SnapshotRecord[] {
    const rows = this.db.query("SELECT record FROM snapshots").all() as { record: string }[];
    return rows.map((row) => JSON.parse(row.record) as SnapshotRecord);
  }

  putSnapshot(record: SnapshotRecord): void {
    this.lazyDb
      .query("INSERT INTO snapshots (key, record) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET record = excluded.record")
      .run(snapshotKey(record), JSON.stringify(record));
  }

  /** The snapshot protocol's durable records (coordinator decisions, participant cuts). */
  protocolRecords<T>(role: ProtocolRole): T[] {
    const rows = this.db.query("SELECT record FROM snapshot_protocol WHERE role = ?").all(role) as { record: string }[];
    return rows.map((row) => JSON.parse(row.record) as T);
  }

  putProtocolRecord(role: ProtocolRole, snapshotId: string, record: unknown): void {
    this.lazyDb
      .query(
        `INSERT INTO snapshot_protocol (role, snapshot_id, record) VALUES (?, ?, ?)
         ON CONFLICT(role, snapshot_id) DO UPDATE SET record = excluded.record`,
      )
      .run(role, snapshotId, JSON.stringify(record));
  }

  removeProtocolRecord(role: ProtocolRole, snapshotId: string): void {
    this.lazyDb.query("DELETE FROM snapshot_protocol WHERE role = ? AND snapshot_id = ?").run(role, snapshotId);
  }

  /**
   * A replicated volume's replica-member state (core/replica/member-state.ts): row 0 its stored
   * form, then the records made since, in order (JSON). Written through the connection that does
   * not fsync (a commit survives a kill -9, the page cache keeps it); durable() for power loss.
   */
  replicaMemberRows(uid: string): { seq: number; record: string }[] {
    return this.lazyDb.query("SELECT seq, record FROM replica_member WHERE uid = ? ORDER BY seq").all(uid) as { seq: number; record: string }[];
  }

  appendReplicaRecords(uid: string, firstSeq: number, records: unknown[]): void {
    const insert = this.lazyDb.query("INSERT INTO replica_member (uid, seq, record) VALUES (?, ?, ?)");
    this.lazyDb.transaction(() => records.forEach((record, index) => insert.run(uid, firstSeq + index, JSON.stringify(record))))();
  }

  /** The stored form replaces row 0 and every record folded into it. */
  replaceReplicaState(uid: string, state: unknown): void {
    this.lazyDb.transaction(() => {
      this.lazyDb.query("DELETE FROM replica_member WHERE uid = ?").run(uid);
      this.lazyDb.query("INSERT INTO replica_member (uid, seq, record) VALUES (?, 0, ?)").run(uid, JSON.stringify(state));
    })();
  }

  removeReplicaState(uid: string): void {
    this.lazyDb.query("DELETE FROM replica_member WHERE uid = ?").run(uid);
  }

  /** Every record, tombstones included (they keep a deleted name from coming back through a stale peer). */
  volumes(): VolumeRecord[] {
    const rows = this.db.query("SELECT * FROM volumes ORDER BY name").all() as VolumeRow[];
    return rows.map(rowToRecord);
  }

  /**
   * Stores a volume record. "now": committed with an fsync before this returns. "later": a copy
   * another member already holds durably (or one the caller will await durable() for), written
   * without an fsync on the event loop.
   */
  putVolume(record: VolumeRecord, durability: "now" | "later" = "now"): void {
    const wire = routingToWire(record.routing);
    (durability === "now" ? this.db : this.lazyDb)
      .query(
        `INSERT INTO volumes (name, uid, size_bytes, page_size_bytes, created_at_ms, version, deleted,
           route_version, route_nodes, route_owners, route_runs, route_replicas, origin, restoring, moving)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET uid = excluded.uid, size_bytes = excluded.size_bytes,
           page_size_bytes = excluded.page_size_bytes, created_at_ms = excluded.created_at_ms,
           version = excluded.version, deleted = excluded.deleted, route_version = excluded.route_version,
           route_nodes = excluded.route_nodes, route_owners = excluded.route_owners, route_runs = excluded.route_runs,
           route_replicas = excluded.route_replicas, origin = excluded.origin,
           restoring = excluded.restoring, moving = excluded.moving`,
      )
      .run(
        record.name,
        record.uid,
        record.sizeBytes,
        record.pageSizeBytes,
        record.createdAtMs,
        record.version,
        record.deleted ? 1 : 0,
        wire.version,
        JSON.stringify(wire.nodes),
        wire.owners ?? new Uint8Array(0),
        wire.runs ?? null,
        packReplicaRanks(wire.replicas),
        record.origin ?? null,
        record.restoring ? 1 : 0,
        record.moving ? JSON.stringify(record.moving) : null,
      );
  }
}

export type ProtocolRole = "coordinator" | "participant";

export interface SnapshotCatalog {
  /** Resolves once every change made so far is on disk. */
  durable(): Promise<void>;
  snapshots(): SnapshotRecord[];
  putSnapshot(record: SnapshotRecord): void;
  protocolRecords<T>(role: ProtocolRole): T[];
  putProtocolRecord(role: ProtocolRole, snapshotId: string, record: unknown): void;
  removeProtocolRecord(role: ProtocolRole, snapshotId: string): void;
}

function rowToRecord(row: VolumeRow): VolumeRecord {
  const geometry = { sizeBytes: row.size_bytes, pageSizeBytes: row.page_size_bytes };
  let nodes: string[];
  try {
    nodes = JSON.parse(row.route_nodes);
  } catch {
    throw new ShoalError("INTERNAL", `catalog row for volume '${row.name}' has a corrupt node list`);
  }
  return {
    name: row.name,
    uid: row.uid,
    ...geometry,
    createdAtMs: row.created_at_ms,
    version: row.version,
    deleted: row.deleted !== 0,
    routing: routingFromWire(
      {
        version: row.route_version,
        nodes,
        ...(row.route_runs ? { runs: row.route_runs } : { owners: row.route_owners }),
        replicas: unpackReplicaRanks(row.route_replicas),
      },
      pageCount(geometry),
    ),
    ...(row.origin ? { origin: row.origin } : {}),
    ...(row.restoring ? { restoring: true } : {}),
    ...(row.moving ? { moving: JSON.parse(row.moving) as VolumeRecord["moving"] } : {}),
  };
}
