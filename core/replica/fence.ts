// A replica's admission rule for writes and reads: its fence is the newest table version it has
// durably recorded, and it serves a request only when the request was routed by exactly that
// version, it is a replica of the page group in it, and its copy was brought up to date for that
// membership. A request from an older version is refused (the sender re-routes with the table
// in the answer); one from a newer version is refused until this member records that version
// (so it cannot help a version become live before it is active). See set-change-proposer.ts for
// why this, with "a write is acknowledged only when every replica of its set applied it", keeps
// two versions of one group from accepting writes at once.
import { sinceOf, type ReplicaTable } from "./replica-table.ts";

export type Admission =
  | { ok: true }
  /** stale: routed by an older version; behind: by a newer one than recorded here; not-replica: not in the set; joining: the join copy has not arrived. */
  | { ok: false; reason: "stale" | "behind" | "not-replica" | "joining" };

export interface FenceView {
  self: string;
  /** The newest table this member recorded durably. */
  table: ReplicaTable;
  /** The version this member's copy of the group was last brought up to date for (a join's, or 1). */
  syncedSince: (group: number) => number | undefined;
}

export interface FenceSabotage {
  /** Serve writes routed by any version, old or new (no fence at all). */
  ignoreFence?: boolean;
}

export function admit(view: FenceView, group: number, routedVersion: number, sabotage: FenceSabotage = {}): Admission {
  const { table, self } = view;
  if (!sabotage.ignoreFence) {
    if (routedVersion < table.version) return { ok: false, reason: "stale" };
    if (routedVersion > table.version) return { ok: false, reason: "behind" };
  }
  const since = sinceOf(table, group, self);
  if (since === undefined) return { ok: false, reason: "not-replica" };
  if (view.syncedSince(group) !== since) return { ok: false, reason: "joining" };
  return { ok: true };
}

/**
 * One chunk's register on a replica: writes carry a stamp that grows per chunk (the page's
 * primary orders them); a copy or a write only replaces an older stamp, so a duplicate, a late
 * retransmission or a resync copy racing a newer write never moves a chunk back in time.
 */
export interface ChunkValue {
  stamp: number;
  value: string;
}

export function newerThan(incoming: ChunkValue, current: ChunkValue | undefined): boolean {
  return current === undefined || incoming.stamp > current.stamp;
}
