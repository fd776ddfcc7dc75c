// Which set change a member asks for, from what it sees: drop a replica it suspects (no heartbeat
// within the suspicion window) from a group it serves too, or, as a group's resync source, add
// back a home replica that is up again once the chunks it still lacks are few enough to send in
// the join copy. One change at a time; the proposer (set-change-proposer.ts) decides it.
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
  for (let group = 0; group < table.sets.length; group++) {
    const nodes = table.sets[group]!.map((entry) => entry.node);
    if (!nodes.includes(self) || !view.synced(group)) continue;
    const victim = nodes.find((node) => node !== self && suspected.has(node));
    if (victim !== undefined && changeFits(table, { kind: "drop", group, node: victim })) return { kind: "drop", group, node: victim };
  }
  return undefined;
}

/** The group's resync source is its first replica this member does not suspect: one member copies, not all. */
export function resyncSource(table: ReplicaTable, group: number, suspected: ReadonlySet<string>): string | undefined {
  return table.sets[group]!.find((entry) => !suspected.has(entry.node))?.node;
}

function addFor(view: PolicyView): SetChange | undefined {
  const { table, self, suspected } = view;
  for (let group = 0; group < table.sets.length; group++) {
    if (resyncSource(table, group, suspected) !== self || !view.synced(group)) continue;
    const nodes = table.sets[group]!.map((entry) => entry.node);
    for (const node of view.home[group] ?? []) {
      if (nodes.includes(node) || suspected.has(node)) continue;
      const lacking = view.lacking(group, node);
      if (lacking !== undefined && lacking <= view.joinChunksMax) return { kind: "add", group, node };
    }
  }
  return undefined;
}
