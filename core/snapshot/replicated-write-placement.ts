// Where a replica applies a replicated write while timestamp-mode snapshots are being cut. Each
// copy's participant cuts by its own clock, so a write may reach a replica on the other side of
// the replica's cut from where its primary applied it. The primary's side wins: the write names
// the cuts its primary had made when it applied it (the write is above them); a cut this replica
// has made that the write does not name was not made at the primary yet (the write is below it),
// and every copy's snapshot then holds the same writes.
import type { RecentCut } from "./recent-cuts.ts";

export interface Placement {
  /** Snapshots this replica must cut before it applies the write (the primary cut them first). */
  cutFirst: RecentCut[];
  /**
   * The snapshot whose layer the write belongs in: the oldest one this replica has cut and not
   * finished that the primary had not cut. Undefined: the write goes to the head as usual.
   */
  under: string | undefined;
}

/**
 * `cutBefore`: the cuts the write's primary had made of the volume when it applied the write.
 * `localCuts`: the snapshots this replica cut of the volume lately, oldest first. `unfinished`:
 * those of them in timestamp mode still waiting for their outcome here. Only an unfinished cut
 * can be missing a write of its primary's: the primary says "taken" only once the writes it
 * applied before its cut are on every replica, and nothing commits before that. Which also keeps
 * an old cut that fell out of the primary's list of recent ones from looking "not made yet".
 *
 * A write below several cuts goes into the oldest one's layer: the newer ones read through to
 * it, and no write the primary made after that write is on this copy yet (a page's writes all
 * come from its one primary, in order over one link), so no layer above holds the page to hide it.
 */
export function placeReplicatedWrite(cutBefore: readonly RecentCut[], localCuts: readonly string[], unfinished: ReadonlySet<string>): Placement {
  const cutHere = new Set(localCuts);
  const cutFirst = cutBefore.filter((cut) => !cutHere.has(cut.snapshotId));
  const cutAtPrimary = new Set(cutBefore.map((cut) => cut.snapshotId));
  const under = localCuts.find((snapshotId) => unfinished.has(snapshotId) && !cutAtPrimary.has(snapshotId));
  return { cutFirst, under };
}
