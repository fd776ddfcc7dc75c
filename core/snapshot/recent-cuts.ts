// Which snapshots a node cut of each volume lately. A replicated write names those its primary
// had cut when it applied the write, so a replica still holding for one of them applies the write
// after its own cut of it: every copy's cut then holds the same writes.

/**
 * A replica holds for a snapshot only until its own cut, which comes within the hold timeout of
 * the primary's: the last few cuts per volume suffice.
 */
const RECENT_CUTS_PER_VOLUME = 16;
const NONE: readonly string[] = [];

export class RecentCuts {
  /** Per volume name, newest last. */
  private readonly byVolume = new Map<string, readonly string[]>();

  note(snapshotId: string, volumes: readonly string[]): void {
    for (const volume of volumes) this.byVolume.set(volume, [...(this.byVolume.get(volume) ?? NONE), snapshotId].slice(-RECENT_CUTS_PER_VOLUME));
  }

  of(volume: string): readonly string[] {
    return this.byVolume.get(volume) ?? NONE;
  }
}
