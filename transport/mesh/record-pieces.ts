// Catalog data too big for one frame header (a join dump of many records, a volume whose table
// moved page by page) travels in pieces: the holder keeps the encoded bytes for a while under a
// reference and sends that; the receiver pulls the bytes piece by piece over the same connection.
// No frame is ever over the limit, however large the catalog grows.
import { ShoalError } from "../../core/errors.ts";
import { rankOf, volumeToWire, type RecordRank, type VolumeRecord, type VolumeRecordWire } from "../../core/cluster/volume.ts";
import { routingWireBytes } from "../../core/cluster/routing.ts";
import { packValue, unpackValue, type FrameHeader, type Payload } from "./frame.ts";
import type { MeshConnection, Reply } from "./mesh-connection.ts";
import { readPeerArgs } from "./peer-ops.ts";

/** A volume whose table takes up to this goes inline in a header (every striped table does). */
export const INLINE_ROUTING_BYTES = 256 * 1024;
/** Inline records in one dump take up to this in all; the others go by reference. */
export const DUMP_INLINE_ROUTING_BYTES = 1024 * 1024;
/** A dump encoded larger than this goes by reference too. */
export const INLINE_DUMP_BYTES = 1024 * 1024;
/** One pull: a payload well under the frame limit. */
export const PIECE_BYTES = 1024 * 1024;
/** The most a receiver pulls for one reference: the largest owner map is 32 MiB. */
export const MAX_PIECED_BYTES = 64 * 1024 * 1024;
/** A reference stays good this long after its last use; a receiver that is slower starts over. */
const HOLD_MS = 60_000;
/** Bounds what the references keep in memory; the oldest go first. */
const MAX_HELD_BYTES = 256 * 1024 * 1024;

/** Bytes to pull by `ref`; `rank` (volume records only) tells a receiver whether it needs them. */
export interface PiecedRef {
  ref: string;
  bytes: number;
  name?: string;
  rank?: RecordRank;
}

export type PieceFetch = (op: string, args: FrameHeader) => Promise<{ result: FrameHeader; payload: Payload }>;

interface Held {
  bytes: Uint8Array;
  usedAtMs: number;
}

export class PiecedOutbox {
  private readonly held = new Map<string, Held>();
  /** Records never change once made: one encoding (and one reference) per record object. */
  private readonly refOfRecord = new WeakMap<VolumeRecord, string>();
  private heldBytes = 0;

  /** What a message carries for `record`: the record itself, or a reference to pull it by. */
  offerVolume(record: VolumeRecord, forceRef = false): { record: VolumeRecordWire } | { recordRef: PiecedRef } {
    const wire = volumeToWire(record);
    if (!forceRef && routingBytes(wire) <= INLINE_ROUTING_BYTES) return { record: wire };
    let ref = this.refOfRecord.get(record);
    const entry = ref === undefined ? undefined : this.held.get(ref);
    if (ref === undefined || entry === undefined) {
      ref = this.hold(packValue(wire));
      this.refOfRecord.set(record, ref);
    } else {
      entry.usedAtMs = performance.now();
    }
    return { recordRef: { ref, bytes: this.held.get(ref)!.bytes.byteLength, name: record.name, rank: rankOf(record) } };
  }

  /** Holds `bytes` for pulling; returns the reference. */
  offerBytes(bytes: Uint8Array): PiecedRef {
    return { ref: this.hold(bytes), bytes: bytes.byteLength };
  }

  /** Answers "catalog.piece": the bytes from `offset`, one piece at most. */
  piece(args: FrameHeader): Reply {
    const { ref, offset } = readPeerArgs("catalog.piece", args);
    const entry = this.held.get(ref);
    if (!entry) throw new ShoalError("TIMEOUT", `catalog piece '${ref.slice(0, 40)}' is no longer held here (kept ${HOLD_MS / 1000} s); ask again`);
    if (offset >= entry.bytes.byteLength) {
      throw new ShoalError("BAD_REQUEST", `catalog piece offset ${offset} is outside ${entry.bytes.byteLength} bytes`);
    }
    entry.usedAtMs = performance.now();
    return { result: {}, payload: entry.bytes.subarray(offset, Math.min(offset + PIECE_BYTES, entry.bytes.byteLength)) };
  }

  private hold(bytes: Uint8Array): string {
    this.expire(bytes.byteLength);
    const ref = crypto.randomUUID();
    this.held.set(ref, { bytes, usedAtMs: performance.now() });
    this.heldBytes += bytes.byteLength;
    return ref;
  }

  /** Drops references unused for HOLD_MS, then the oldest until `incoming` more bytes fit. */
  private expire(incoming: number): void {
    const nowMs = performance.now();
    const oldestFirst = [...this.held].sort(([, a], [, b]) => a.usedAtMs - b.usedAtMs);
    for (const [ref, entry] of oldestFirst) {
      if (nowMs - entry.usedAtMs < HOLD_MS && this.heldBytes + incoming <= MAX_HELD_BYTES) break;
      this.held.delete(ref);
      this.heldBytes -= entry.bytes.byteLength;
    }
  }
}

function routingBytes(wire: VolumeRecordWire): number {
  return routingWireBytes(wire.routing);
}

/** Checks a reference from a peer; throws BAD_FRAME or TOO_LARGE. */
export function parsePiecedRef(value: unknown): PiecedRef {
  const ref = value as PiecedRef | undefined;
  if (typeof ref !== "object" || ref === null || typeof ref.ref !== "string" || !Number.isSafeInteger(ref.bytes) || ref.bytes <= 0) {
    throw new ShoalError("BAD_FRAME", "catalog piece reference is malformed");
  }
  if (ref.bytes > MAX_PIECED_BYTES) {
    throw new ShoalError("TOO_LARGE", `catalog data of ${ref.bytes} bytes is over the ${MAX_PIECED_BYTES}-byte limit for one record or dump`);
  }
  return ref;
}

export function fetchOver(connection: MeshConnection, timeoutMs = 10_000): PieceFetch {
  return (op, args) => connection.request(op, args, undefined, timeoutMs);
}

/** A volume record from a message: inline, or pulled by its reference through `fetch`. */
export async function receiveVolumeWire(args: FrameHeader, fetch: PieceFetch): Promise<unknown> {
  return args.recordRef === undefined ? args.record : pullPieces(parsePiecedRef(args.recordRef), fetch);
}

/** Pulls the bytes behind `ref` piece by piece and decodes them. */
export async function pullPieces(ref: PiecedRef, fetch: PieceFetch): Promise<unknown> {
  const bytes = new Uint8Array(ref.bytes);
  let offset = 0;
  while (offset < ref.bytes) {
    const { payload } = await fetch("catalog.piece", { ref: ref.ref, offset });
    if (payload.byteLength === 0 || offset + payload.byteLength > ref.bytes) {
      throw new ShoalError("BAD_FRAME", `catalog piece at ${offset} of ${ref.bytes} bytes came with ${payload.byteLength} bytes`);
    }
    payload.copyTo(bytes, offset);
    offset += payload.byteLength;
  }
  return unpackValue(bytes);
}
