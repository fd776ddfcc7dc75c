// A volume's replica sets: for each page group the nodes that hold a copy, versioned by the
// volume's routing version (the epoch). A table is never changed in place: a set change is a new
// table one version up, decided by single-decree Paxos for that version's slot (set-change-
// proposer.ts, acceptor.ts) and adopted by a member only once chosen. Each replica entry keeps the
// version it joined in (`since`): a member tells from it whether its copy was brought up to date
// for this membership (fence.ts) and which members were already in the set one version earlier.
import { invariant } from "../invariant.ts";

export interface ReplicaEntry {
  node: string;
  /** The table version whose change added this node to the set (1 for the initial placement). */
  since: number;
}

export interface ReplicaTable {
  volume: string;
  version: number;
  /** sets[group]: the replicas of that page group, in placement order. */
  sets: ReplicaEntry[][];
  /**
   * home[group]: the R nodes the group should have, once an operator re-homed the copies of a
   * node that is gone for good (`route forget`). Absent: the volume's striped placement. Chosen
   * with the table, so every member resyncs toward the same homes.
   */
  home?: string[][];
  /**
   * The members whose majority decides the next version (the acceptors of slot version + 1).
   * Absent: every member of the volume (its nodes). `route forget` takes the node that is gone
   * out, so it no longer counts toward the majority: a four-node group that lost one for good
   * then changes sets with two of the three left, not three of four. Every proposer for a slot
   * builds on the same chosen table, so all of them ask the same acceptors.
   */
  voters?: string[];
}

/**
 * One node leaves or joins the sets of some groups: each group's set changes by that one node
 * only, so its old and new sets share a replica (the safety argument in set-change-proposer.ts is
 * per group). A node's loss is then one version, not one per group it held. A replacement is a
 * drop and an add, two versions.
 */
export type SetChange =
  | { kind: "drop" | "add"; node: string; groups: number[] }
  /**
   * A node leaves every group's home (gone for good, or drained): `home` is the whole new
   * placement (the node replaced by another in each group it was home to). The sets do not
   * change, so old and new versions share every replica; the policy then resyncs the
   * replacement, drops the node if it is still in the set, and adds the replacement.
   */
  | {
      kind: "rehome";
      node: string;
      home: string[][];
      /** route forget: the node must be out of every set already (its drop came first). */
      gone?: true;
      /** route forget: the new table's voters (the old ones without the node). */
      voters?: string[];
    };

export function initialTable(volume: string, placement: string[][]): ReplicaTable {
  for (const nodes of placement) invariant(nodes.length > 0 && new Set(nodes).size === nodes.length, `page group placement ${nodes.join(",")} is empty or repeats a node`);
  return { volume, version: 1, sets: placement.map((nodes) => nodes.map((node) => ({ node, since: 1 }))) };
}

export function replicasOf(table: ReplicaTable, group: number): string[] {
  const set = table.sets[group];
  invariant(set !== undefined, () => `page group ${group} is not in volume ${table.volume}'s replica table`);
  return set.map((entry) => entry.node);
}

/** The version `node` joined the group's set in, or undefined when it is not a replica of it. */
export function sinceOf(table: ReplicaTable, group: number, node: string): number | undefined {
  return table.sets[group]?.find((entry) => entry.node === node)?.since;
}

/** The group's home replicas: the re-homed placement when there is one, else `striped` (the volume's). */
export function homeOf(table: ReplicaTable, striped: string[][]): string[][] {
  return table.home ?? striped;
}

/**
 * Whether `change` can be made to `table`: drops keep at least one replica in each group, adds
 * bring a new node, a re-homing names a home for every group without the node and keeps every
 * other current replica at home (the node itself may still be in sets: a drain re-homes a live
 * node first, and the policy drops it once its replacement is nearly caught up).
 */
export function changeFits(table: ReplicaTable, change: SetChange): boolean {
  if (change.kind === "rehome") {
    const { home, node } = change;
    if (change.gone && table.sets.some((set) => set.some((entry) => entry.node === node))) return false;
    const { voters } = change;
    if (voters !== undefined && (!change.gone || voters.length === 0 || voters.includes(node) || new Set(voters).size !== voters.length)) return false;
    if (voters !== undefined && table.voters !== undefined && voters.some((voter) => !table.voters!.includes(voter))) return false;
    return (
      home.length === table.sets.length &&
      home.every((nodes, group) => nodes.length > 0 && new Set(nodes).size === nodes.length && !nodes.includes(node) && table.sets[group]!.every((entry) => entry.node === node || nodes.includes(entry.node)))
    );
  }
  if (change.groups.length === 0 || new Set(change.groups).size !== change.groups.length) return false;
  return change.groups.every((group) => {
    const set = table.sets[group];
    if (set === undefined) return false;
    const present = set.some((entry) => entry.node === change.node);
    return change.kind === "drop" ? present && set.length > 1 : !present;
  });
}

/** The table one version up with `change` made; the change must fit (changeFits). */
export function withChange(table: ReplicaTable, change: SetChange): ReplicaTable {
  invariant(changeFits(table, change), () => `set change ${describeChange(change)} does not fit volume ${table.volume} v${table.version}`);
  const version = table.version + 1;
  if (change.kind === "rehome") {
    const voters = change.voters ?? table.voters;
    return { ...cloneReplicaTable(table), version, home: change.home.map((nodes) => [...nodes]), ...(voters ? { voters: [...voters] } : {}) };
  }
  const sets = table.sets.map((set, group) => {
    if (!change.groups.includes(group)) return set.map((entry) => ({ ...entry }));
    return change.kind === "drop" ? set.filter((entry) => entry.node !== change.node).map((entry) => ({ ...entry })) : [...set.map((entry) => ({ ...entry })), { node: change.node, since: version }];
  });
  return { volume: table.volume, version, sets, ...placementCopy(table) };
}

/** The home and voters a table carries over unchanged, copied. */
function placementCopy(table: ReplicaTable): Pick<ReplicaTable, "home" | "voters"> {
  return { ...(table.home ? { home: table.home.map((nodes) => [...nodes]) } : {}), ...(table.voters ? { voters: [...table.voters] } : {}) };
}

/**
 * Per page group, the replicas that were in the set one version before this table too (joined
 * earlier than it). One of them recording this version kills the version before it for that
 * group: writes under it needed every one of its replicas (the precondition of the next change).
 */
export function carriedOver(table: ReplicaTable): string[][] {
  return table.sets.map((set) => set.filter((entry) => entry.since < table.version).map((entry) => entry.node));
}

export function sameTable(a: ReplicaTable, b: ReplicaTable): boolean {
  const same = (x: unknown, y: unknown): boolean => JSON.stringify(x) === JSON.stringify(y);
  return a.volume === b.volume && a.version === b.version && same(a.sets, b.sets) && same(a.home, b.home) && same(a.voters, b.voters);
}

export function cloneReplicaTable(table: ReplicaTable): ReplicaTable {
  return { volume: table.volume, version: table.version, sets: table.sets.map((set) => set.map((entry) => ({ ...entry }))), ...placementCopy(table) };
}

export function describeChange(change: SetChange): string {
  if (change.kind === "rehome") return `rehome away from ${change.node}: ${change.home.map((nodes) => nodes.join("+")).join(" ")}${change.voters ? ` (voters ${change.voters.join(",")})` : ""}`;
  return `${change.kind} ${change.node} ${change.kind === "drop" ? "from" : "to"} groups ${change.groups.join(",")}`;
}

export function describeTable(table: ReplicaTable): string {
  const home = table.home ? ` (home ${table.home.map((nodes) => nodes.join("+")).join(" ")})` : "";
  const voters = table.voters ? ` (voters ${table.voters.join(",")})` : "";
  return `v${table.version} ${table.sets.map((set) => set.map((entry) => `${entry.node}@${entry.since}`).join("+")).join(" ")}${home}${voters}`;
}

/**
 * What a member must do on adopting `next` over `previous` (a newer chosen table): the groups
 * where it stays a replica and another node left, with the membership it left (a changed-while-
 * away map for it may start, away-map.ts mapOnDrop), the
 * groups where it was already an up-to-date replica and another node joined after `previous`
 * (send that node its join copy), and the groups whose maps here are void because this member
 * left or rejoined them (it missed writes meanwhile, so its maps miss chunks: a join copy from
 * such a map would leave the joiner without them).
 */
export function consequencesFor(
  self: string,
  previous: ReplicaTable,
  next: ReplicaTable,
): { dropped: { group: number; node: string; since: number }[]; joined: { group: number; node: string }[]; voidMaps: number[] } {
  const dropped: { group: number; node: string; since: number }[] = [];
  const joined: { group: number; node: string }[] = [];
  const voidMaps: number[] = [];
  next.sets.forEach((set, group) => {
    const mine = set.find((entry) => entry.node === self);
    const rejoined = mine?.since !== sinceOf(previous, group, self);
    if (rejoined) voidMaps.push(group);
    if (mine === undefined) return;
    // Only a replica that stayed through the change saw which writes the dropped one missed. One
    // that joined (or rejoined) since `previous` may have skipped versions in which another left
    // and writes went on without it: a map from here would claim that node up to date.
    if (!rejoined) {
      for (const entry of previous.sets[group] ?? []) {
        if (entry.node !== self && !set.some((kept) => kept.node === entry.node)) dropped.push({ group, node: entry.node, since: entry.since });
      }
    }
    for (const entry of set) {
      if (entry.node !== self && entry.since > previous.version && mine.since < entry.since) joined.push({ group, node: entry.node });
    }
  });
  return { dropped, joined, voidMaps };
}
