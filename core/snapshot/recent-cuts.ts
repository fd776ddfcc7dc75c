// Which snapshots a node cut of each volume lately. A replicated write names those its primary
// had cut when it applied the write, so a replica still holding for one of them applies the write
// after its own cut of it: every copy's cut then holds the same writes. A timestamp-mode cut
// keeps its time T too: a replica that has not armed that snapshot yet cuts it at T first.

/**
 * A replica holds for a snapshot only until its own cut, which comes within the hold timeout of
 * the primary's, and a late replicated write in timestamp mode arrives within the mesh's request
 * timeout of its primary's cut: the last few cuts per volume suffice.
 */
export const RECENT_CUTS_PER_VOLUME = 16;

export interface RecentCut {
  snapshotId: string;
  /** Timestamp mode: the cut time T of the snapshot; undefined for a hold-mode cut. */
  cutAtMs?: number;
}

const NONE: readonly RecentCut[] = [];

export class RecentCuts {
  /** Per volume name, newest last. */
  private readonly byVolume = new Map<string, readonly RecentCut[]>();

  note(snapshotId: string, volumes: readonly string[], cutAtMs?: number): void {
    const cut: RecentCut = cutAtMs === undefined ? { snapshotId } : { snapshotId, cutAtMs };
    for (const volume of volumes) this.byVolume.set(volume, [...(this.byVolume.get(volume) ?? NONE), cut].slice(-RECENT_CUTS_PER_VOLUME));
  }

  of(volume: string): readonly RecentCut[] {
    return this.byVolume.get(volume) ?? NONE;
  }
}
