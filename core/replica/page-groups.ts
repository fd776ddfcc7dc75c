// How a replicated volume's pages map onto the replica-set protocol's page groups and chunks. A
// group is one distinct home replica tuple of the striped placement (routing.ts stripedTable puts
// page p's copies on nodes p, p+1, ... mod n), so a volume has min(n, pages) groups whatever its
// size; a chunk is one page of its group (chunk c of group g is page c*n + g). Pages as chunks keep
// away maps small: a 64 TiB volume of 4 MiB pages has 16 Mi pages, and a map holds only the pages
// written while a copy was away, never a list of all of them (ReplicaMember's allChunks).
import { invariant } from "../invariant.ts";
import { replicaCount, type RoutingTable } from "../cluster/routing.ts";

export interface PageGroups {
  /** Nodes the volume is striped over (its table's nodes, in order). */
  nodes: string[];
  pageCount: number;
  /** Copies of each page when every replica is in. */
  replicas: number;
}

export function pageGroupsOf(routing: RoutingTable): PageGroups {
  return { nodes: routing.nodes, pageCount: routing.owners.length, replicas: replicaCount(routing) };
}

export function groupCount(groups: PageGroups): number {
  return Math.min(groups.nodes.length, groups.pageCount);
}

export function groupOfPage(groups: PageGroups, page: number): number {
  return page % groups.nodes.length;
}

export function chunkOfPage(groups: PageGroups, page: number): number {
  return Math.floor(page / groups.nodes.length);
}

export function pageOfChunk(groups: PageGroups, group: number, chunk: number): number {
  const page = chunk * groups.nodes.length + group;
  invariant(page < groups.pageCount, () => `chunk ${chunk} of page group ${group} is past the volume's ${groups.pageCount} pages`);
  return page;
}

/** Chunks the largest group has (the member's bound on chunk numbers). */
export function chunksPerGroup(groups: PageGroups): number {
  return Math.ceil(groups.pageCount / groups.nodes.length);
}

/** Each group's home replicas, the primary first: the sets of the volume's version-1 table. */
export function homeSets(groups: PageGroups): string[][] {
  const n = groups.nodes.length;
  return Array.from({ length: groupCount(groups) }, (_, group) => Array.from({ length: groups.replicas }, (_, rank) => groups.nodes[(group + rank) % n]!));
}
