// Where the copies of a node go when it is gone for good (`route forget`) or drained: each page group that had
// it at home gets another node of the volume instead, the one with the fewest home copies so far,
// so shares stay even and no group has a node twice. The change is a table like any other
// (replica-table.ts "rehome"); the members then resync the new home copy and add it.
import { homeOf, type ReplicaTable, type SetChange } from "./replica-table.ts";

export type RehomePlan =
  /** The node is home to no group (already re-homed, or never was). */
  | { kind: "done" }
  /** Some groups still count the node in their set: its drop must be chosen first. */
  | { kind: "still-in-set"; groups: number[] }
  /** These groups have every candidate at home already: no node can take the copy. */
  | { kind: "no-room"; groups: number[] }
  | { kind: "change"; change: Extract<SetChange, { kind: "rehome" }>; moved: { group: number; to: string }[] };

/**
 * @param striped the volume's striped placement (the home when the table carries none)
 * @param gone the node whose copies go elsewhere
 * @param leaving "gone": a dead node (`route forget`), whose drop must be chosen first, so the
 *   re-homing never races the failover; "live": a drain, the node stays in its sets until the
 *   policy drops it
 * @param candidates the nodes that may take copies (live members of the volume, without `gone`)
 * @param members the volume's members (the voters when the table names none): a gone node leaves
 *   the voters with its re-homing, so the majority is counted among the members left
 */
export function planRehome(table: ReplicaTable, striped: string[][], gone: string, candidates: string[], leaving: "gone" | "live", members: string[]): RehomePlan {
  const home = homeOf(table, striped);
  const affected = home.flatMap((nodes, group) => (nodes.includes(gone) ? [group] : []));
  const voters = (table.voters ?? members).filter((node) => node !== gone);
  const votes = leaving === "gone" && voters.length < (table.voters ?? members).length;
  if (affected.length === 0) {
    // Home to nothing any more, but a gone node may still count toward the majority.
    if (!votes || table.sets.some((set) => set.some((entry) => entry.node === gone))) return { kind: "done" };
    return { kind: "change", change: { kind: "rehome", node: gone, home: home.map((nodes) => [...nodes]), gone: true, voters }, moved: [] };
  }
  const stillInSet = affected.filter((group) => table.sets[group]!.some((entry) => entry.node === gone));
  if (leaving === "gone" && stillInSet.length > 0) return { kind: "still-in-set", groups: stillInSet };
  const homeCopies = new Map<string, number>(candidates.filter((node) => node !== gone).map((node) => [node, 0]));
  for (const nodes of home) for (const node of nodes) if (homeCopies.has(node)) homeCopies.set(node, homeCopies.get(node)! + 1);
  const next = home.map((nodes) => [...nodes]);
  const moved: { group: number; to: string }[] = [];
  const noRoom: number[] = [];
  for (const group of affected) {
    const to = [...homeCopies]
      .filter(([node]) => !home[group]!.includes(node))
      .sort(([a, countA], [b, countB]) => countA - countB || (a < b ? -1 : a > b ? 1 : 0))[0]?.[0];
    if (to === undefined) {
      noRoom.push(group);
      continue;
    }
    homeCopies.set(to, homeCopies.get(to)! + 1);
    // In place: the group's primary stays first, a re-homed primary's replacement takes its rank.
    next[group] = next[group]!.map((node) => (node === gone ? to : node));
    moved.push({ group, to });
  }
  if (noRoom.length > 0) return { kind: "no-room", groups: noRoom };
  return { kind: "change", change: { kind: "rehome", node: gone, home: next, ...(leaving === "gone" ? { gone: true as const, voters } : {}) }, moved };
}
