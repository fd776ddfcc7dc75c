// Which set change a member asks for, from what it sees: drop a replica it suspects (no heartbeat
// within the suspicion window) from the groups it serves too; as the resync source of groups,
// drop a replica that is no longer at home (a drain re-homed it) once the home copy that replaces
// it is nearly caught up, and add back (or add) a home replica that is up to those groups where
// the chunks it still lacks are few enough to send in the join copy. A set never grows past its
// home's size. One node per change, in as many groups as apply, so a node's loss or return is one
// version; the proposer (set-change-proposer.ts) decides it.
import { changeFits, type ReplicaTable, type SetChange } from "./replica-table.ts";

export interface PolicyView {
  self: string;
  table: ReplicaTable;
  /** Nodes this member suspects now. */
  suspected: ReadonlySet<string>;
  /** Each group's home placement: the replicas it should have (R of them). */
  home: string[][];
  /** Whether this member's copy of the group is up to date for its membership (it may act as source). */
  synced: (group: number) => boolean;
  /** Chunks the away replica still lacks per this member's map (undefined: no map, so all of them). */
  lacking: (group: number, node: string) => number | undefined;
  /** At most this many chunks go in a join copy; more are resynced first while writes go on. */
  joinChunksMax: number;
}

export function proposalFor(view: PolicyView): SetChange | undefined {
  return dropFor(view) ?? leaveFor(view) ?? addFor(view);
}

/**
 * Only an up-to-date replica asks to drop another: the set that remains then holds at least one
 * copy that can serve and send join copies (a set of joiners alone could never be brought up to date).
 */
function dropFor(view: PolicyView): SetChange | undefined {
  const { table, self, suspected } = view;
  const servedBySelf = (group: number): boolean => table.sets[group]!.some((entry) => entry.node === self) && view.synced(group);
  const victim = [...suspected].sort().find((node) => table.sets.some((set, group) => servedBySelf(group) && set.some((entry) => entry.node === node)));
  if (victim === undefined) return undefined;
  const groups = table.sets.flatMap((set, group) => (servedBySelf(group) && set.some((entry) => entry.node === victim) ? [group] : []));
  const change: SetChange = { kind: "drop", node: victim, groups };
  return changeFits(table, change) ? change : undefined;
}

/**
 * The group's resync source: its first replica at home (else its first one), whatever any member
 * suspects, so each table version has exactly one and a receiver can refuse every other sender's
 * copy (two sources racing could land an older copy of a chunk after a newer one another source
 * had confirmed). A replica a drain is taking away never is one, so the map of what the new copy
 * lacks stays with a copy that stays. A source that dies stops the resync until a drop removes it
 * from the set: the next version has a live source.
 */
export function resyncSource(table: ReplicaTable, group: number, home: readonly string[] = []): string | undefined {
  const set = table.sets[group]!;
  return (set.find((entry) => home.includes(entry.node)) ?? set[0])?.node;
}

/**
 * As the source of groups that still hold a replica no longer at home: drop it once every home
 * replica missing from the set is up and lacks few enough chunks for its join copy (it was
 * resynced while the set kept its full count), so the group is one copy short only between this
 * drop and that add.
 */
function leaveFor(view: PolicyView): SetChange | undefined {
  const { table, self, suspected } = view;
  const leaverOf = (group: number): string | undefined => {
    const home = view.home[group] ?? [];
    const set = table.sets[group]!;
    if (resyncSource(table, group, home) !== self || !view.synced(group)) return undefined;
    const leaver = set.find((entry) => !home.includes(entry.node) && entry.node !== self)?.node;
    if (leaver === undefined) return undefined;
    const missing = home.filter((node) => !set.some((entry) => entry.node === node));
    const caughtUp = missing.every((node) => {
      const lacking = view.lacking(group, node);
      return !suspected.has(node) && lacking !== undefined && lacking <= view.joinChunksMax;
    });
    return caughtUp ? leaver : undefined;
  };
  const leavers = table.sets.map((_, group) => leaverOf(group));
  const node = leavers.filter((leaver) => leaver !== undefined).sort()[0];
  if (node === undefined) return undefined;
  const change: SetChange = { kind: "drop", node, groups: leavers.flatMap((leaver, group) => (leaver === node ? [group] : [])) };
  return changeFits(table, change) ? change : undefined;
}

function addFor(view: PolicyView): SetChange | undefined {
  const { table, self, suspected } = view;
  const ready = (group: number, node: string): boolean => {
    const home = view.home[group] ?? [];
    if (resyncSource(table, group, home) !== self || !view.synced(group) || suspected.has(node)) return false;
    if (!home.includes(node) || table.sets[group]!.some((entry) => entry.node === node) || table.sets[group]!.length >= home.length) return false;
    const lacking = view.lacking(group, node);
    return lacking !== undefined && lacking <= view.joinChunksMax;
  };
  const candidates = [...new Set(view.home.flat())].sort();
  for (const node of candidates) {
    const groups = table.sets.flatMap((_, group) => (ready(group, node) ? [group] : []));
    if (groups.length > 0) return { kind: "add", node, groups };
  }
  return undefined;
}
