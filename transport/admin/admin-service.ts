// The node's side of the admin table: one handler per operation, every one of them present (the
// compiler checks it), each called with its arguments already checked against the table.
import type { FrameHeader } from "../mesh/frame.ts";
import { isAdminOp, readAdminArgs, type AdminArgs, type AdminOp, type AdminResult } from "./admin-ops.ts";

export type AdminHandlers = { [Op in AdminOp]: (args: AdminArgs<Op>) => Promise<AdminResult<Op>> };

/** Answers a mesh operation if it is an admin operation (undefined if it is not one). */
export function adminDispatcher(handlers: AdminHandlers): (op: string, args: FrameHeader) => Promise<FrameHeader> | undefined {
  return (op, args) => {
    if (!isAdminOp(op)) return undefined;
    return answer(handlers, op, args);
  };
}

/** Checked before the handler runs: a bad argument is refused whole, nothing half done. */
function answer<Op extends AdminOp>(handlers: AdminHandlers, op: Op, args: FrameHeader): Promise<FrameHeader> {
  const handler = handlers[op] as (args: AdminArgs<Op>) => Promise<AdminResult<Op>>;
  return handler(readAdminArgs(op, args));
}
