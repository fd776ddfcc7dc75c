// How a replicated volume's pages map onto the replica-set protocol's page groups and chunks. A
// group is one distinct home replica tuple of the striped placement (routing.ts stripedTable puts
// page p's copies on nodes p, p+1, ... mod n), so a volume has min(n, pages) groups whatever its
// size. Within a group, each page (the i-th of the group: page i*n + g) has S + 1 chunk numbers:
// i*(S+1) + k for its S parts of PART_BYTES (k < S), and i*(S+1) + S for the whole page. A write
// notes the parts it touched, so a copy that was away gets 64 KiB per scattered 4 KiB write, not
// the 4 MiB page (with page-sized chunks a copy came back only if it copied pages faster than
// clients dirtied them: ~50 random writes a second); "every chunk" (a copy with no map of what
// it lacks) names whole pages, one number each, so a 64 TiB volume's group is never listed part
// by part. Away maps hold only what was written while a copy was away.
import { invariant } from "../invariant.ts";
import { replicaCount, type RoutingTable } from "../cluster/routing.ts";

export interface PageGroups {
  /** Nodes the volume is striped over (its table's nodes, in order). */
  nodes: string[];
  pageCount: number;
  /** Copies of each page when every replica is in. */
  replicas: number;
  /** Parts per page (S): the page size over PART_BYTES, at least 1 and at most MAX_PARTS. */
  parts: number;
}

/** A part of a page as an away map notes it and a catch-up copies it. */
export const PART_BYTES = 64 * 1024;
/** At most this many parts per page (a page of over 16 MiB gets bigger parts). */
const MAX_PARTS = 256;

export function pageGroupsOf(routing: RoutingTable, pageSizeBytes: number): PageGroups {
  const parts = Math.max(1, Math.min(MAX_PARTS, Math.floor(pageSizeBytes / PART_BYTES)));
  invariant(pageSizeBytes % parts === 0, () => `page size ${pageSizeBytes} does not split into ${parts} parts`);
  return { nodes: routing.nodes, pageCount: routing.owners.length, replicas: replicaCount(routing), parts };
}

/** A chunk as pages and bytes: `page`, and the part's byte range in it (the whole page for a whole-page chunk). */
export interface ChunkRange {
  page: number;
  offset: number;
  length: number;
}

export function groupCount(groups: PageGroups): number {
  return Math.min(groups.nodes.length, groups.pageCount);
}

export function groupOfPage(groups: PageGroups, page: number): number {
  return page % groups.nodes.length;
}

/** The chunk number of the whole page. */
export function chunkOfPage(groups: PageGroups, page: number): number {
  return wholePageChunk(groups, Math.floor(page / groups.nodes.length));
}

/** The whole-page chunk number of the `index`-th page of a group (what a chunk number named before pages had parts). */
export function wholePageChunk(groups: PageGroups, index: number): number {
  return index * (groups.parts + 1) + groups.parts;
}

/** The chunks a write of `length` bytes at `pageOffset` of the page touches: the first and how many (consecutive). */
export function chunksOfWrite(groups: PageGroups, page: number, pageSizeBytes: number, pageOffset: number, length: number): { first: number; span: number } {
  const partBytes = pageSizeBytes / groups.parts;
  const base = Math.floor(page / groups.nodes.length) * (groups.parts + 1);
  const firstPart = Math.floor(pageOffset / partBytes);
  const lastPart = Math.floor((pageOffset + Math.max(1, length) - 1) / partBytes);
  return { first: base + firstPart, span: lastPart - firstPart + 1 };
}

/** Where chunk `chunk` of group `group` lies. */
export function rangeOfChunk(groups: PageGroups, group: number, chunk: number, pageSizeBytes: number): ChunkRange {
  const index = Math.floor(chunk / (groups.parts + 1));
  const part = chunk % (groups.parts + 1);
  const page = index * groups.nodes.length + group;
  invariant(page < groups.pageCount, () => `chunk ${chunk} of page group ${group} is past the volume's ${groups.pageCount} pages`);
  if (part === groups.parts) return { page, offset: 0, length: pageSizeBytes };
  const partBytes = pageSizeBytes / groups.parts;
  return { page, offset: part * partBytes, length: partBytes };
}

/**
 * The byte ranges of pages the chunks name, merged: a whole page covers its parts, adjacent parts
 * of one page go as one range. In page order: the source exports and the receiver installs the
 * same list from the same chunks.
 */
export function rangesOfChunks(groups: PageGroups, group: number, chunks: number[], pageSizeBytes: number): ChunkRange[] {
  const byPage = new Map<number, ChunkRange[]>();
  for (const chunk of chunks) {
    const range = rangeOfChunk(groups, group, chunk, pageSizeBytes);
    const list = byPage.get(range.page);
    if (list === undefined) byPage.set(range.page, [range]);
    else list.push(range);
  }
  const merged: ChunkRange[] = [];
  for (const page of [...byPage.keys()].sort((a, b) => a - b)) {
    const ranges = byPage.get(page)!;
    if (ranges.some((range) => range.length === pageSizeBytes)) {
      merged.push({ page, offset: 0, length: pageSizeBytes });
      continue;
    }
    ranges.sort((a, b) => a.offset - b.offset);
    let current: ChunkRange | undefined;
    for (const range of ranges) {
      if (current !== undefined && current.offset + current.length >= range.offset) {
        current.length = Math.max(current.length, range.offset + range.length - current.offset);
        continue;
      }
      current = { ...range };
      merged.push(current);
    }
  }
  return merged;
}

/** The page chunk `chunk` of group `group` lies in. */
export function pageOfChunk(groups: PageGroups, group: number, chunk: number): number {
  const page = Math.floor(chunk / (groups.parts + 1)) * groups.nodes.length + group;
  invariant(page < groups.pageCount, () => `chunk ${chunk} of page group ${group} is past the volume's ${groups.pageCount} pages`);
  return page;
}

/** How much of a copy a chunk is, in parts: a whole page weighs all of them. */
export function chunkWeight(groups: PageGroups, chunk: number): number {
  return chunk % (groups.parts + 1) === groups.parts ? groups.parts : 1;
}

/** Chunk numbers the largest group has (the member's bound on them). */
export function chunksPerGroup(groups: PageGroups): number {
  return Math.ceil(groups.pageCount / groups.nodes.length) * (groups.parts + 1);
}

/** Each group's home replicas, the primary first: the sets of the volume's version-1 table. */
export function homeSets(groups: PageGroups): string[][] {
  const n = groups.nodes.length;
  return Array.from({ length: groupCount(groups) }, (_, group) => Array.from({ length: groups.replicas }, (_, rank) => groups.nodes[(group + rank) % n]!));
}
