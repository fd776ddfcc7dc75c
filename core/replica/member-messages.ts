// What goes into a replica member (events) and what comes out (a MemberReady), and the messages
// members send each other. Chunk data never passes through the member: a copy or a join names its
// chunks, and the host reads them from its page store when it sends the message and writes them
// when it applies one (replica-member.ts says how a node hosts it).
import { array, bad, count, counts, decodeBallot, decodeTable, name, object } from "./_wire.ts";
import type { AcceptorReply, Ballot } from "./acceptor.ts";
import type { Admission } from "./fence.ts";
import type { MemberRecord } from "./member-state.ts";
import type { ReplicaTable, SetChange } from "./replica-table.ts";

export type PeerMessage =
  /** Every member's recorded tables, now and then: a member that missed a chosen table learns it. */
  | { kind: "tables"; tables: ReplicaTable[] }
  | { kind: "prepare"; volume: string; version: number; ballot: Ballot }
  | { kind: "accept"; volume: string; version: number; ballot: Ballot; value: ReplicaTable }
  | { kind: "acceptor-reply"; volume: string; reply: AcceptorReply }
  /**
   * A resync batch: the host attaches the chunks' data as it sends. `batch` is unique across the
   * sender's restarts; `table` is the one the source copies under (the receiver takes a copy only
   * under that very version, from that version's one source).
   */
  | { kind: "copy"; batch: string; table: ReplicaTable; group: number; chunks: number[] }
  | { kind: "copied"; batch: string }
  | { kind: "join-request"; volume: string; group: number; since: number }
  /** The join copy: the table that added the receiver, and the chunks it may lack (data attached by the host). */
  | { kind: "join"; table: ReplicaTable; group: number; since: number; chunks: number[] }
  | { kind: "joined"; volume: string; group: number; since: number };

/** A client's write or read of one chunk (or `span` chunks from it), routed by a table version; `id` is the host's, echoed in the reply. */
export interface ChunkRequest {
  id: number;
  kind: "write" | "read";
  volume: string;
  group: number;
  chunk: number;
  /** A write over this many consecutive chunks from `chunk` (absent: 1). */
  span?: number;
  routed: number;
}

export type RefusalReason = Extract<Admission, { ok: false }>["reason"] | "unknown-volume";

export type RequestReply =
  /** Served: for a write the data was applied (an apply effect); for a read the host reads the chunk now. */
  | { request: ChunkRequest; ok: true; table: ReplicaTable }
  /** Refused: the sender re-routes by `table` when it is newer than its own. */
  | { request: ChunkRequest; ok: false; reason: RefusalReason; table?: ReplicaTable };

export type MemberEvent =
  | { kind: "tick"; nowMs: number }
  | { kind: "message"; nowMs: number; from: string; message: PeerMessage }
  | { kind: "request"; nowMs: number; request: ChunkRequest }
  /** The host wrote every record and durable apply of the Readys up to `seq`. */
  | { kind: "durable"; nowMs: number; seq: number }
  /** The mesh heard the peer (a heartbeat of its own) or lost it (a closed link): suspicion follows. */
  | { kind: "peer-heard"; nowMs: number; node: string }
  | { kind: "peer-suspected"; nowMs: number; node: string }
  /** A volume created after the member started: its version-1 table. */
  | { kind: "volume-added"; nowMs: number; table: ReplicaTable }
  /** An operator's set change (route forget's re-homing); proposed if none runs and it fits. */
  | { kind: "propose"; nowMs: number; volume: string; change: SetChange };

export type ChunkApply =
  /** The client's data for this request. Its durability is the client's (a FLUSH or FUA), not the member's. */
  | { kind: "write"; request: ChunkRequest }
  /** The data that came with the copy or join message being stepped, each chunk only over an older one; durable before `durableSeq` is reported. */
  | { kind: "copy" | "join"; volume: string; group: number; chunks: number[] };

/** What the member learned or did, for logs and counters (nothing to carry out). */
export type MemberNote =
  | { kind: "proposed"; volume: string; version: number; change: string }
  | { kind: "chosen"; table: ReplicaTable }
  | { kind: "gave-up"; volume: string; version: number; attempts: number }
  | { kind: "adopted"; table: ReplicaTable }
  | { kind: "accepted"; volume: string; version: number; ballot: Ballot; value: ReplicaTable }
  | { kind: "copy-applied"; volume: string; group: number; chunks: number }
  | { kind: "join-applied"; volume: string; group: number; since: number };

export interface Outgoing {
  to: string;
  message: PeerMessage;
}

/** One step's output, in the order the host carries it out (see replica-member.ts). */
export interface MemberReady {
  /** Catalog records, in order. */
  records: MemberRecord[];
  /** Chunk data for the page store. */
  applies: ChunkApply[];
  /** Present when records or copy/join applies are: report it in a "durable" event once they (and every earlier Ready's) are durable. */
  durableSeq?: number;
  /** Messages that may leave now (to self too: the host steps them back in). Messages resting on records not yet durable wait inside the member. */
  messages: Outgoing[];
  /** Answers to requests that may leave now. */
  replies: RequestReply[];
  /** The member wants a tick at this time. */
  wakeAtMs: number;
  notes: MemberNote[];
}

/** Every message a member sends is small except tables and copies: bounds on what one may carry. */
const TABLES_PER_MESSAGE_MAX = 4096;
const CHUNKS_PER_MESSAGE_MAX = 1 << 20;

/** A peer's message as it came off the mesh (msgpack-decoded), checked field by field; BAD_FRAME otherwise. */
export function parsePeerMessage(wire: unknown): PeerMessage {
  const m = object(wire, "replica message");
  const volume = (): string => name(m.volume, `${String(m.kind)} volume`);
  const version = (): number => count(m.version, `${String(m.kind)} version`);
  const group = (): number => count(m.group, `${String(m.kind)} group`);
  const chunks = (): number[] => {
    const list = counts(m.chunks, `${String(m.kind)} chunk`);
    if (list.length > CHUNKS_PER_MESSAGE_MAX) throw bad(`${String(m.kind)} names ${list.length} chunks`);
    return list;
  };
  const batch = (): string => {
    if (typeof m.batch !== "string" || m.batch.length === 0 || m.batch.length > 64) throw bad(`copy batch id is malformed: ${JSON.stringify(m.batch)}`);
    return m.batch;
  };
  switch (m.kind) {
    case "tables": {
      const tables = array(m.tables, "tables");
      if (tables.length > TABLES_PER_MESSAGE_MAX) throw bad(`a tables message carries ${tables.length} tables`);
      return { kind: "tables", tables: tables.map(decodeTable) };
    }
    case "prepare":
      return { kind: "prepare", volume: volume(), version: version(), ballot: decodeBallot(m.ballot) };
    case "accept":
      return { kind: "accept", volume: volume(), version: version(), ballot: decodeBallot(m.ballot), value: decodeTable(m.value) };
    case "acceptor-reply":
      return { kind: "acceptor-reply", volume: volume(), reply: parseAcceptorReply(m.reply) };
    case "copy":
      return { kind: "copy", batch: batch(), table: decodeTable(m.table), group: group(), chunks: chunks() };
    case "copied":
      return { kind: "copied", batch: batch() };
    case "join-request":
      return { kind: "join-request", volume: volume(), group: group(), since: count(m.since, "join-request since") };
    case "join":
      return { kind: "join", table: decodeTable(m.table), group: group(), since: count(m.since, "join since"), chunks: chunks() };
    case "joined":
      return { kind: "joined", volume: volume(), group: group(), since: count(m.since, "joined since") };
    default:
      throw bad(`unknown replica message kind ${JSON.stringify(m.kind)}`);
  }
}

function parseAcceptorReply(wire: unknown): AcceptorReply {
  const r = object(wire, "acceptor reply");
  const version = count(r.version, "acceptor reply version");
  switch (r.kind) {
    case "decided":
      return { kind: "decided", version, table: decodeTable(r.table) };
    case "promise": {
      const accepted = r.accepted === undefined ? undefined : object(r.accepted, "promise's accepted value");
      return {
        kind: "promise",
        version,
        ballot: decodeBallot(r.ballot),
        ...(accepted ? { accepted: { ballot: decodeBallot(accepted.ballot), value: decodeTable(accepted.value) } } : {}),
        recordedVersion: count(r.recordedVersion, "recorded version"),
      };
    }
    case "accepted":
      return { kind: "accepted", version, ballot: decodeBallot(r.ballot), recordedVersion: count(r.recordedVersion, "recorded version") };
    case "refused":
      return { kind: "refused", version, ballot: decodeBallot(r.ballot), promised: decodeBallot(r.promised), recordedVersion: count(r.recordedVersion, "recorded version") };
    default:
      throw bad(`unknown acceptor reply kind ${JSON.stringify(r.kind)}`);
  }
}
