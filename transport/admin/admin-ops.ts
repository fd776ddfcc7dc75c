// The admin operations a node answers, in one table: each name with the shape of its arguments.
// The CLI sends only what the table types allow; the node checks what arrives against the same
// table, so a missing or mistyped argument is a BAD_ARGUMENT naming it, never the string "undefined".
import type { FrameHeader } from "../mesh/frame.ts";
import type { AdminResults } from "./admin-results.ts";
import { type ArgsOfSchema, count, flag, oneOf, optional, readOpArgs, type Schema, text, texts } from "../wire/op-args.ts";

const snapshotRequest = { volumes: texts(), name: text(), mode: optional(oneOf("hold", "timestamp")), holdTimeoutMs: optional(count()) };

/** Every admin operation, by name, with its arguments. */
export const ADMIN_OPS = {
  "admin.node.info": {},
  "admin.volume.create": {
    name: text(),
    sizeBytes: count(),
    pageSizeBytes: optional(count()),
    nodes: optional(texts()),
    restoring: optional(flag()),
    /** Copies of each page; the node's --default-replicas when absent. */
    replicas: optional(count()),
  },
  "admin.volume.list": {},
  "admin.volume.info": { name: text() },
  "admin.volume.restoring": { name: text(), restoring: flag() },
  "admin.volume.delete": { name: text() },
  "admin.volume.changedSince": { volume: text(), snapshot: text() },
  "admin.route.nodes": {},
  /** `usage: false` skips asking every owner for its bytes: bulk jobs want only the runs. */
  "admin.route.show": { volume: text(), usage: optional(flag()) },
  "admin.route.move": { volume: text(), pages: text(), to: text(), dryRun: optional(flag()) },
  "admin.route.rebalance": { volume: text(), nodes: optional(texts()), dryRun: optional(flag()) },
  "admin.route.drain": { node: text(), dryRun: optional(flag()) },
  "admin.route.status": { moveId: text() },
  "admin.route.forget": { node: text() },
  "admin.snap.create": snapshotRequest,
  "admin.snap.prepare": snapshotRequest,
  "admin.snap.take": { name: text() },
  "admin.snap.release": { name: text() },
  "admin.snap.list": { volume: optional(text()) },
  "admin.snap.delete": { volume: text(), name: text() },
  "admin.snap.rollback": { volume: text(), name: text() },
  "admin.snap.clone": { volume: text(), name: text(), target: text() },
  "admin.archive.plan": { volume: text(), snapshot: text(), since: optional(text()) },
} as const satisfies Record<string, Schema>;

export type AdminOp = keyof typeof ADMIN_OPS;
export type AdminArgs<Op extends AdminOp> = ArgsOfSchema<(typeof ADMIN_OPS)[Op]>;
/** What `op` answers (admin-results.ts). */
export type AdminResult<Op extends AdminOp> = AdminResults[Op];

export function isAdminOp(op: string): op is AdminOp {
  return Object.hasOwn(ADMIN_OPS, op);
}

/**
 * The arguments of `op` as the table types them, or BAD_ARGUMENT: a field missing, of the wrong
 * type, or not in the table (a typo in a client must not be ignored silently).
 */
export function readAdminArgs<Op extends AdminOp>(op: Op, args: FrameHeader): AdminArgs<Op> {
  return readOpArgs(op, ADMIN_OPS[op] as Schema, args, "refuse") as AdminArgs<Op>;
}
