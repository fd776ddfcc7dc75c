// The arguments of the peer (member-to-member) operations that carry plain values, in one table
// read like the admin table: a member that sends a missing or mistyped argument gets a
// BAD_ARGUMENT naming it (it has a bug), and the handler sees typed values. Arguments a table
// does not name are ignored, so a newer member may send more. Records (volume, member, snapshot)
// are checked by their own decoders; the page data path (page.*) checks its few integers inline.
import type { FrameHeader } from "./frame.ts";
import { type ArgsOfSchema, bytes, count, counts, flag, listOf, optional, readOpArgs, type Schema, text } from "../wire/op-args.ts";

/** One layer of a page's export: its id and the layer it stands on. */
const exportedLayer = { id: text(), parent: optional(text()) };
/** One piece of a shipped page; its bytes are the next `bytes` of the request's payload. */
const shippedPiece = { layer: text(), pageSizeBytes: count(), chunkShift: optional(count()), states: optional(bytes()), bytes: count() };

export const PEER_OPS = {
  /** Ship `pages` of a volume to `to`; the volume's next record comes as record or recordRef. */
  "move.step": { pages: counts(), to: text(), stepId: text() },
  /** Pieces of one page (`v` the volume uid, `p` the page); `last` brings its layers. */
  "move.install": { stepId: text(), v: text(), p: count(), last: optional(flag()), layers: optional(listOf(exportedLayer)), pieces: listOf(shippedPiece) },
  /** Make the step's installed pages durable; `final: false` is the precopy round's. */
  "move.seal": { stepId: text(), final: optional(flag()) },
  /** Bytes of a replica catch-up copy too large for one message, staged under `k` until the copy (volume uid `u`) comes. */
  "replica.stage": { u: text(), k: text() },
  /** The held bytes behind `ref`, one piece from `offset`. */
  "catalog.piece": { ref: text(), offset: count() },
  /** Pages of layer `l` (the head without it) of volume uid `v` that differ from layer `since`. */
  "store.changedPages": { v: text(), l: optional(text()), since: optional(text()) },
  /** Flush volume uid `v` (every volume when left out, as older nodes ask). */
  "store.flush": { v: optional(text()) },
  /** Roll this node's pages of volume `uid` back to snapshot layer `layer`. */
  "snap.rollback": { uid: text(), layer: text() },
} as const satisfies Record<string, Schema>;

export type PeerOp = keyof typeof PEER_OPS;
/**
 * What a replica's catch-up copy or join (`replica.msg`) carries beside the member's message: the
 * family's layer stack at the source, each page's (or page range's: byte offset `o`, length `n`)
 * pieces (their bytes follow in order, first those staged under `k` by `replica.stage`, then the
 * message's payload).
 */
export const CATCH_UP_ARGS = { xl: listOf(exportedLayer), x: listOf({ p: count(), o: count(), n: count(), pieces: listOf(shippedPiece) }), k: optional(text()) };
export type CatchUpArgs = ArgsOfSchema<typeof CATCH_UP_ARGS>;

export function readCatchUpArgs(args: FrameHeader): CatchUpArgs {
  return readOpArgs("replica.msg", CATCH_UP_ARGS, args, "ignore");
}

export type PeerArgs<Op extends PeerOp> = ArgsOfSchema<(typeof PEER_OPS)[Op]>;

/** The arguments of peer operation `op`, typed, or BAD_ARGUMENT naming the one missing or mistyped. */
export function readPeerArgs<Op extends PeerOp>(op: Op, args: FrameHeader): PeerArgs<Op> {
  return readOpArgs(op, PEER_OPS[op] as Schema, args, "ignore") as PeerArgs<Op>;
}
