// Which pages go where: the plans behind `route move`, `route rebalance` and `route drain`.
// Pure functions over a routing table; the move service carries a plan out step by step.
import { ShoalError } from "../errors.ts";
import type { RoutingTable } from "../cluster/routing.ts";

export interface PageMove {
  page: number;
  from: string;
  to: string;
}

/** A step moves pages from one source to one target under one routing version bump. */
export interface MoveBatch {
  from: string;
  to: string;
  pages: number[];
}

/**
 * Parses "0-15,40,42-43" (and "0-63/3", every third page, as `route show` prints runs) into
 * sorted distinct pages, each below `pageCount`.
 */
export function parsePageList(text: string, pageCount: number): number[] {
  const pages = new Set<number>();
  for (const part of text.split(",")) {
    const match = /^\s*(\d+)\s*(?:-\s*(\d+)\s*(?:\/\s*(\d+)\s*)?)?$/.exec(part);
    if (!match) throw new ShoalError("BAD_ARGUMENT", `'${part}' is not a page or a range of pages (like 0-15,40 or 0-63/3)`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    const step = match[3] === undefined ? 1 : Number(match[3]);
    if (last < first) throw new ShoalError("BAD_ARGUMENT", `page range '${part.trim()}' runs backwards`);
    if (step < 1) throw new ShoalError("BAD_ARGUMENT", `page range '${part.trim()}' has a step below 1`);
    if (last >= pageCount) throw new ShoalError("OUT_OF_RANGE", `page ${last} is past the volume's last page (${pageCount - 1})`);
    for (let page = first; page <= last; page += step) pages.add(page);
  }
  return [...pages].sort((a, b) => a - b);
}

/** Moves of `pages` to `to`, skipping pages it owns already. */
export function planMove(table: RoutingTable, pages: number[], to: string): PageMove[] {
  const moves: PageMove[] = [];
  for (const page of pages) {
    const from = table.nodes[table.owners[page]!]!;
    if (from !== to) moves.push({ page, from, to });
  }
  return moves;
}

/**
 * Evens the pages out over `nodes` with as few moves as possible: every node ends with
 * floor(P/N) or ceil(P/N) pages; pages on nodes outside `nodes` all move; a node keeps the pages
 * it has up to its share, and the extra ceil slots go to the nodes holding most already.
 */
export function planRebalance(table: RoutingTable, nodes: string[]): PageMove[] {
  if (nodes.length === 0) throw new ShoalError("BAD_ARGUMENT", "rebalance needs at least one node");
  if (new Set(nodes).size !== nodes.length) throw new ShoalError("BAD_ARGUMENT", `node list ${nodes.join(",")} repeats a node`);
  const pageCount = table.owners.length;
  const held = new Map<string, number[]>(nodes.map((node) => [node, []]));
  const homeless: { page: number; from: string }[] = [];
  for (let page = 0; page < pageCount; page++) {
    const owner = table.nodes[table.owners[page]!]!;
    const pages = held.get(owner);
    if (pages) pages.push(page);
    else homeless.push({ page, from: owner });
  }
  const base = Math.floor(pageCount / nodes.length);
  let extra = pageCount % nodes.length;
  // Nodes holding most keep the extra page: fewer moves. Ties by id, so every answerer plans alike.
  const byHeld = [...nodes].sort((a, b) => held.get(b)!.length - held.get(a)!.length || a.localeCompare(b));
  const share = new Map<string, number>();
  for (const node of byHeld) {
    share.set(node, base + (extra > 0 ? 1 : 0));
    if (extra > 0) extra--;
  }
  // Over-full nodes give up their highest pages; they and the homeless fill the under-full.
  const surplus: { page: number; from: string }[] = [...homeless];
  for (const node of nodes) {
    const pages = held.get(node)!;
    const keep = share.get(node)!;
    for (const page of pages.slice(keep)) surplus.push({ page, from: node });
  }
  surplus.sort((a, b) => a.page - b.page);
  const moves: PageMove[] = [];
  let next = 0;
  for (const node of [...nodes].sort()) {
    for (let count = held.get(node)!.length; count < share.get(node)! && next < surplus.length; count++) {
      const { page, from } = surplus[next++]!;
      moves.push({ page, from, to: node });
    }
  }
  return moves.sort((a, b) => a.page - b.page);
}

/** Moves every page `node` owns to the other `nodes`, each time to the one holding fewest. */
export function planDrain(table: RoutingTable, node: string, nodes: string[]): PageMove[] {
  const targets = nodes.filter((candidate) => candidate !== node);
  if (targets.length === 0) throw new ShoalError("BAD_ARGUMENT", `node ${node} is the only node to hold pages; add a node before draining it`);
  const counts = new Map<string, number>(targets.map((target) => [target, 0]));
  for (let page = 0; page < table.owners.length; page++) {
    const owner = table.nodes[table.owners[page]!]!;
    if (counts.has(owner)) counts.set(owner, counts.get(owner)! + 1);
  }
  const moves: PageMove[] = [];
  for (let page = 0; page < table.owners.length; page++) {
    if (table.nodes[table.owners[page]!] !== node) continue;
    let best = targets[0]!;
    for (const target of targets) if (counts.get(target)! < counts.get(best)!) best = target;
    counts.set(best, counts.get(best)! + 1);
    moves.push({ page, from: node, to: best });
  }
  return moves;
}

/** Groups moves into steps of at most `maxPages` pages sharing a source and a target. */
export function batchMoves(moves: PageMove[], maxPages: number): MoveBatch[] {
  const byPair = new Map<string, MoveBatch[]>();
  const batches: MoveBatch[] = [];
  for (const move of moves) {
    const key = `${move.from}\u0000${move.to}`;
    let open = byPair.get(key);
    if (!open) byPair.set(key, (open = []));
    let batch = open[open.length - 1];
    if (!batch || batch.pages.length >= maxPages) {
      batch = { from: move.from, to: move.to, pages: [] };
      open.push(batch);
      batches.push(batch);
    }
    batch.pages.push(move.page);
  }
  return batches;
}
