// Which set change a member asks for, from what it sees: drop a replica it suspects (no heartbeat
// within the suspicion window) from the groups it serves too, or, as the resync source of groups,
// add back a home replica that is up again to those where the chunks it still lacks are few
// enough to send in the join copy. One node per change, in as many groups as apply, so a node's
// loss or return is one version; the proposer (set-change-proposer.ts) decides it.
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
  return dropFor(view) ?? addFor(view);
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

/** The group's resync source is its first replica this member does not suspect: one member copies, not all. */
export function resyncSource(table: ReplicaTable, group: number, suspected: ReadonlySet<string>): string | undefined {
  return table.sets[group]!.find((entry) => !suspected.has(entry.node))?.node;
}

function addFor(view: PolicyView): SetChange | undefined {
  const { table, self, suspected } = view;
  const ready = (group: number, node: string): boolean => {
    if (resyncSource(table, group, suspected) !== self || !view.synced(group) || suspected.has(node)) return false;
    if (!(view.home[group] ?? []).includes(node) || table.sets[group]!.some((entry) => entry.node === node)) return false;
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
