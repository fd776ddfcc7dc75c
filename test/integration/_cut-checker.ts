// Checks that a snapshot is a crash-consistent cut of what clients wrote: there must be an
// instant T with every write acknowledged before T in the snapshot and no write issued after T
// in it. Each block has one writer issuing one write at a time, so a block's writes are ordered;
// every write stamps its block with a unique id, repeated so a torn block is caught.

export const BLOCK_BYTES = 4096;

export interface WriteRecord {
  id: number;
  block: number;
  issuedAtMs: number;
  /** Undefined while not yet acknowledged. */
  ackedAtMs?: number;
}

/** The content of a block written by write `id`: the id repeated as u32 little-endian. */
export function stampBlock(id: number, into: Uint8Array = new Uint8Array(BLOCK_BYTES)): Uint8Array {
  const words = new Uint32Array(into.buffer, into.byteOffset, BLOCK_BYTES / 4);
  words.fill(id);
  return into;
}

/** The write id a block holds: 0 for never written; throws on a torn or foreign block. */
export function readStamp(block: Uint8Array): number {
  const words = new Uint32Array(block.buffer.slice(block.byteOffset, block.byteOffset + BLOCK_BYTES));
  const id = words[0]!;
  for (let index = 1; index < words.length; index++) {
    if (words[index] !== id) throw new Error(`torn block: word 0 is ${id} but word ${index} is ${words[index]}`);
  }
  return id;
}

export class WriteHistory {
  readonly writes = new Map<number, WriteRecord>();
  /** Per block, write ids in issue order. */
  readonly byBlock = new Map<number, number[]>();
  private nextId = 1;

  issue(block: number, nowMs: number): WriteRecord {
    const record: WriteRecord = { id: this.nextId++, block, issuedAtMs: nowMs };
    this.writes.set(record.id, record);
    let ids = this.byBlock.get(block);
    if (!ids) this.byBlock.set(block, (ids = []));
    ids.push(record.id);
    return record;
  }
}

export interface CutVerdict {
  ok: boolean;
  reason?: string;
  /** max issue time over writes in the snapshot, min ack time over writes left out. */
  latestInIssueMs: number;
  earliestOutAckMs: number;
}

/**
 * `stamps` maps block -> write id found in the snapshot (0 = none). For each block the writes up
 * to the found one are in, the rest out; the cut exists iff every in-write was issued no later
 * than every out-write was acknowledged.
 */
export function checkCut(history: WriteHistory, stamps: Map<number, number>): CutVerdict {
  let latestInIssueMs = -Infinity;
  let earliestOutAckMs = Infinity;
  let culpritIn = 0;
  let culpritOut = 0;
  for (const [block, ids] of history.byBlock) {
    const found = stamps.get(block) ?? 0;
    const position = found === 0 ? -1 : ids.indexOf(found);
    if (found !== 0 && position < 0) return { ok: false, reason: `block ${block} holds write ${found}, which never went to it`, latestInIssueMs, earliestOutAckMs };
    for (let index = 0; index < ids.length; index++) {
      const write = history.writes.get(ids[index]!)!;
      if (index <= position) {
        if (write.issuedAtMs > latestInIssueMs) {
          latestInIssueMs = write.issuedAtMs;
          culpritIn = write.id;
        }
      } else if (write.ackedAtMs !== undefined && write.ackedAtMs < earliestOutAckMs) {
        earliestOutAckMs = write.ackedAtMs;
        culpritOut = write.id;
      }
    }
  }
  if (latestInIssueMs > earliestOutAckMs) {
    return {
      ok: false,
      reason: `write ${culpritIn} is in the snapshot but was issued at ${latestInIssueMs.toFixed(2)} ms, after write ${culpritOut} (left out) was acknowledged at ${earliestOutAckMs.toFixed(2)} ms`,
      latestInIssueMs,
      earliestOutAckMs,
    };
  }
  return { ok: true, latestInIssueMs, earliestOutAckMs };
}
