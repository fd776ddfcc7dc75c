// A volume's routing table: which nodes hold each page (the primary, then the other replicas),
// with a version. A page move is a new table with a higher version; every member keeps the
// newest table it has seen. The version is the epoch replicated writes are fenced by.
import { ShoalError } from "../errors.ts";

/** Never changed once made: a change is a new table (withOwner), which callers may cache on. */
export interface RoutingTable {
  version: number;
  /** Node ids the owner indexes refer to; order has no meaning beyond that. */
  nodes: string[];
  /**
   * owners[page] indexes `nodes`: one array read per request on the data path. 2 bytes a page: a
   * 1 TiB volume's table takes 512 KiB in memory, the largest volume's (MAX_VOLUME_PAGES) 32 MiB.
   * It is never sent or stored like this when the placement is regular (see RoutingTableWire).
   */
  owners: Uint16Array;
  /**
   * The other copies of a replicated volume: replicaOwners[k - 1][page] indexes the node of the
   * page's replica k (k = 1..R-1), never the primary's or another replica's node. Absent (or
   * empty) for one copy. Kept beside `owners`, not folded into it, so that every caller of
   * ownerOf still means the primary (the node that orders a page's writes), and an R=1 table
   * costs nothing more. A rank holds NO_COPY for a page whose replica set lost a member
   * (failover, transport/node/replica-host.ts): the ranks keep their number, the page has fewer copies.
   */
  replicaOwners?: Uint16Array[];
}

/** In a replica rank: this page has no copy of that rank now (its node left the page's set). */
export const NO_COPY = 0xffff;

const MAX_NODES_PER_TABLE = 65535;
/** Copies of a page at most: a primary and two replicas (what Ceph and Longhorn keep by default). */
export const MAX_REPLICAS = 3;

/**
 * Stripes pages over nodes so that consecutive pages land on different nodes; with R copies,
 * replica k of page p is on nodes[(p + k) % n], so each node holds 1/n of every rank (its shares
 * stay even) and the R copies of a page are on R distinct nodes.
 */
export function stripedTable(pageCount: number, nodes: string[], replicas = 1): RoutingTable {
  if (nodes.length === 0) throw new ShoalError("BAD_ARGUMENT", "a volume needs at least one node");
  if (nodes.length > MAX_NODES_PER_TABLE) throw new ShoalError("BAD_ARGUMENT", "too many nodes for one volume");
  if (new Set(nodes).size !== nodes.length) throw new ShoalError("BAD_ARGUMENT", `node list ${nodes.join(",")} repeats a node`);
  checkReplicaCount(replicas, nodes.length);
  const table: RoutingTable = { version: 1, nodes: [...nodes], owners: stripedOwners(pageCount, nodes.length, 0) };
  if (replicas > 1) table.replicaOwners = Array.from({ length: replicas - 1 }, (_, rank) => stripedOwners(pageCount, nodes.length, rank + 1));
  return table;
}

/** R from 1 to MAX_REPLICAS and at most the nodes placed on (two copies on one node protect nothing). */
export function checkReplicaCount(replicas: number, nodeCount: number): void {
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
    throw new ShoalError("BAD_ARGUMENT", `--replicas ${replicas}: a volume keeps 1 to ${MAX_REPLICAS} copies of each page`);
  }
  if (replicas > nodeCount) {
    throw new ShoalError("BAD_ARGUMENT", `--replicas ${replicas}: the volume is placed on ${nodeCount} node(s), and no two copies of a page may share a node`);
  }
}

/** owners[page] = (page + shift) % nodeCount: one period by hand, then doubling copies (a 64 TiB volume's 16 Mi pages in a few ms). */
function stripedOwners(pageCount: number, nodeCount: number, shift: number): Uint16Array {
  const owners = new Uint16Array(pageCount);
  for (let page = 0; page < Math.min(pageCount, nodeCount); page++) owners[page] = (page + shift) % nodeCount;
  for (let filled = nodeCount; filled < pageCount; filled *= 2) owners.copyWithin(filled, 0, Math.min(filled, pageCount - filled));
  return owners;
}

/** Copies of each page: 1 + the replica ranks. */
export function replicaCount(table: RoutingTable): number {
  return 1 + (table.replicaOwners?.length ?? 0);
}

/** The nodes holding a copy of `page`, the primary first. */
export function replicasOf(table: RoutingTable, page: number): string[] {
  const nodes = [ownerOf(table, page)];
  for (const rank of table.replicaOwners ?? []) if (rank[page] !== NO_COPY) nodes.push(table.nodes[rank[page]!]!);
  return nodes;
}

/** Whether `node` holds a copy of `page` (primary or replica): one index compare per rank, on the data path. */
export function holdsCopy(table: RoutingTable, page: number, node: string): boolean {
  const index = table.nodes.indexOf(node);
  if (index < 0) return false;
  if (table.owners[page] === index) return true;
  for (const rank of table.replicaOwners ?? []) if (rank[page] === index) return true;
  return false;
}

export function ownerOf(table: RoutingTable, page: number): string {
  const index = table.owners[page];
  if (index === undefined) throw new ShoalError("OUT_OF_RANGE", `page ${page} is not in the routing table`);
  return table.nodes[index]!;
}

/** Pages per node, in the table's node order (nodes holding nothing included with 0). */
export function pagesPerNode(table: RoutingTable): Map<string, number> {
  return new Map(countsOf(table));
}

/** Pages per node held as a replica (not the primary), in the table's node order; all 0 for R=1. */
export function replicaPagesPerNode(table: RoutingTable): Map<string, number> {
  let counts = replicaCounts.get(table);
  if (counts === undefined) {
    const perIndex = new Array<number>(table.nodes.length).fill(0);
    for (const rank of table.replicaOwners ?? []) for (let page = 0; page < rank.length; page++) if (rank[page] !== NO_COPY) perIndex[rank[page]!]!++;
    counts = new Map(table.nodes.map((node, index) => [node, perIndex[index]!]));
    replicaCounts.set(table, counts);
  }
  return new Map(counts);
}

/** Counted once per table, as pageCounts (below) is. */
const replicaCounts = new WeakMap<RoutingTable, ReadonlyMap<string, number>>();

/** Every node that holds a copy of at least one page (primary or replica): snapshots, rollbacks and clones reach them all. */
export function holders(table: RoutingTable): string[] {
  const replicas = table.replicaOwners?.length ? replicaPagesPerNode(table) : undefined;
  return [...countsOf(table)].filter(([node, count]) => count > 0 || (replicas?.get(node) ?? 0) > 0).map(([node]) => node);
}

/**
 * Pages per node, counted once per table: a snapshot asks on its prepare and again at its cut,
 * while clients are held, and a 1 TiB volume's count walks 262,144 pages (0.3 ms warm, 8 ms
 * cold). Tables are never changed once made (withOwner makes a new one), so the count stays true.
 */
const pageCounts = new WeakMap<RoutingTable, ReadonlyMap<string, number>>();

function countsOf(table: RoutingTable): ReadonlyMap<string, number> {
  let counts = pageCounts.get(table);
  if (counts === undefined) {
    const perIndex = new Array<number>(table.nodes.length).fill(0);
    for (let page = 0; page < table.owners.length; page++) perIndex[table.owners[page]!]!++;
    counts = new Map(table.nodes.map((node, index) => [node, perIndex[index]!]));
    pageCounts.set(table, counts);
  }
  return counts;
}

/** A run of pages first, first+step, ..., last owned by one node. */
export interface PageRun {
  first: number;
  last: number;
  step: number;
}

/**
 * The pages of each node as arithmetic runs: a striped table over three nodes reads
 * "0-765 step 3" instead of 256 single pages, and a moved range reads as a plain range.
 */
export function describeRuns(table: RoutingTable, keepPerNode = Infinity, owners = table.owners): Map<string, NodeRuns> {
  const perIndex: NodeRuns[] = table.nodes.map(() => ({ runs: [], count: 0 }));
  // Each node's runs come in ascending order: the ones kept are its lowest.
  collectRuns(owners, table.nodes.length, Infinity, (first, last, step, index) => {
    if (index === NO_COPY) return;
    const node = perIndex[index]!;
    if (node.count++ < keepPerNode) node.runs.push({ first, last, step });
  });
  return new Map(table.nodes.map((node, index) => [node, perIndex[index]!]));
}

/** Per node, the runs of the pages it holds as a replica, rank after rank (empty for R=1). */
export function describeReplicaRuns(table: RoutingTable, keepPerNode = Infinity): Map<string, NodeRuns> {
  const combined = new Map<string, NodeRuns>(table.nodes.map((node) => [node, { runs: [], count: 0 }]));
  for (const rank of table.replicaOwners ?? []) {
    for (const [node, runs] of describeRuns(table, keepPerNode, rank)) {
      const into = combined.get(node)!;
      into.runs.push(...runs.runs.slice(0, Math.max(0, keepPerNode - into.runs.length)));
      into.count += runs.count;
    }
  }
  return combined;
}

/** A node's runs, the first `keepPerNode` of them, and how many there are in all. */
export interface NodeRuns {
  runs: PageRun[];
  count: number;
}

/**
 * Calls `emit` for every run of every node, in one pass over the pages (no per-node page lists:
 * a 64 TiB volume has 16 Mi pages). Each node's pages are cut greedily: a run takes the step from
 * its first two pages and goes on while the step holds. Stops and returns false once more than
 * `maxRuns` runs were found.
 */
function collectRuns(owners: Uint16Array, nodeCount: number, maxRuns: number, emit: (first: number, last: number, step: number, index: number) => void): boolean {
  // One slot more than the nodes: a replica rank's NO_COPY pages make runs of their own.
  const first = new Int32Array(nodeCount + 1).fill(-1);
  const last = new Int32Array(nodeCount + 1);
  const step = new Int32Array(nodeCount + 1); // 0: the open run has one page so far
  const indexOf = (slot: number) => (slot === nodeCount ? NO_COPY : slot);
  let found = 0;
  for (let page = 0; page < owners.length; page++) {
    const index = owners[page] === NO_COPY ? nodeCount : owners[page]!;
    if (first[index] === -1) {
      first[index] = page;
      last[index] = page;
      step[index] = 0;
    } else if (step[index] === 0) {
      step[index] = page - last[index]!;
      last[index] = page;
    } else if (page - last[index]! === step[index]) {
      last[index] = page;
    } else {
      if (++found > maxRuns) return false;
      emit(first[index]!, last[index]!, step[index]!, indexOf(index));
      first[index] = page;
      last[index] = page;
      step[index] = 0;
    }
  }
  for (let index = 0; index <= nodeCount; index++) {
    if (first[index] === -1) continue;
    if (++found > maxRuns) return false;
    emit(first[index]!, last[index]!, step[index] || 1, indexOf(index));
  }
  return true;
}

/**
 * Sorted distinct pages as arithmetic runs, cut greedily as describeRuns cuts a node's pages;
 * the first `keep` runs, and how many there are in all.
 */
export function runsOfPages(pages: number[], keep = Infinity): NodeRuns {
  const runs: PageRun[] = [];
  let count = 0;
  for (let index = 0; index < pages.length; ) {
    const first = pages[index]!;
    const step = index + 1 < pages.length ? pages[index + 1]! - first : 1;
    let end = index;
    while (end + 1 < pages.length && pages[end + 1]! - pages[end]! === step) end++;
    if (count++ < keep) runs.push({ first, last: pages[end]!, step: end === index ? 1 : step });
    index = end + 1;
  }
  return { runs, count };
}

export function formatRun(run: PageRun): string {
  if (run.first === run.last) return `${run.first}`;
  return run.step === 1 ? `${run.first}-${run.last}` : `${run.first}-${run.last}/${run.step}`;
}

/**
 * The table as stored and sent. Runs where the placement is regular: a striped table is one run
 * per node whatever the volume's size, and a moved range adds a few. A table so irregular that
 * its runs would outweigh a plain owner map (after moves of scattered pages) is sent as the map.
 */
export interface RoutingTableWire extends OwnersWire {
  version: number;
  nodes: string[];
  /** Replica ranks 1..R-1, each encoded as the primaries are; absent for R=1 (and in records from before replicas). */
  replicas?: OwnersWire[];
}

/** One rank's placement: runs, or the plain map when runs would be larger. */
export interface OwnersWire {
  /** Runs as little-endian u32 quads (first page, last page, step, node index). */
  runs?: Uint8Array;
  /** One little-endian u16 node index per page. */
  owners?: Uint8Array;
}

/** Bytes a wire table's placement takes (the record-size limits count these). */
export function routingWireBytes(wire: RoutingTableWire): number {
  const rankBytes = (rank: OwnersWire) => (rank.runs ?? rank.owners)?.byteLength ?? 0;
  return rankBytes(wire) + (wire.replicas ?? []).reduce((sum, rank) => sum + rankBytes(rank), 0);
}

/** Typed arrays on the hosts Bun runs on are little-endian, which the wire form assumes. */
const RUN_BYTES = 16;
/** No node index: marks a page no run has covered yet while a wire table is decoded. */
const UNOWNED = 0xffff;

/** Tables never change once made: each is encoded once, however often it is stored or sent. */
const wireForms = new WeakMap<RoutingTable, RoutingTableWire>();

export function routingToWire(table: RoutingTable): RoutingTableWire {
  let wire = wireForms.get(table);
  if (wire === undefined) {
    wire = encodeWire(table);
    wireForms.set(table, wire);
  }
  return wire;
}

function encodeWire(table: RoutingTable): RoutingTableWire {
  const wire: RoutingTableWire = { version: table.version, nodes: table.nodes, ...encodeOwners(table.owners, table.nodes.length) };
  if (table.replicaOwners?.length) wire.replicas = table.replicaOwners.map((rank) => encodeOwners(rank, table.nodes.length));
  return wire;
}

function encodeOwners(owners: Uint16Array, nodeCount: number): OwnersWire {
  const pages = owners.length;
  // Runs only while they take less room than the owner map (2 bytes a page).
  const maxRuns = Math.max(nodeCount, Math.floor((pages * 2) / RUN_BYTES));
  let quads = new Uint32Array(Math.min(maxRuns, 1024) * 4);
  let used = 0;
  const regular = collectRuns(owners, nodeCount, maxRuns, (first, last, step, index) => {
    if (used === quads.length) {
      const grown = new Uint32Array(quads.length * 2);
      grown.set(quads);
      quads = grown;
    }
    quads[used++] = first;
    quads[used++] = last;
    quads[used++] = step;
    quads[used++] = index;
  });
  if (regular) return { runs: new Uint8Array(quads.buffer, 0, used * 4) };
  return { owners: new Uint8Array(owners.buffer, owners.byteOffset, owners.byteLength) };
}

export function routingFromWire(wire: RoutingTableWire, expectedPages: number): RoutingTable {
  if (typeof wire !== "object" || wire === null || !Array.isArray(wire.nodes) || !wire.nodes.every((node) => typeof node === "string")) {
    throw new ShoalError("BAD_FRAME", "routing table is malformed");
  }
  if (wire.nodes.length === 0 || wire.nodes.length > MAX_NODES_PER_TABLE) throw new ShoalError("BAD_FRAME", `routing table names ${wire.nodes.length} nodes`);
  const nodeCount = wire.nodes.length;
  const owners = ownersFromWire(wire, nodeCount, expectedPages);
  const table: RoutingTable = { version: Number(wire.version), nodes: [...wire.nodes], owners };
  if (wire.replicas !== undefined) {
    if (!Array.isArray(wire.replicas) || wire.replicas.length > MAX_REPLICAS - 1) throw new ShoalError("BAD_FRAME", "routing table's replica ranks are malformed");
    if (wire.replicas.length > 0) {
      table.replicaOwners = wire.replicas.map((rank) => ownersFromWire(rank, nodeCount, expectedPages, true));
      checkDistinctCopies(table);
    }
  }
  // Stored and passed on as it came, with no second pass over the pages. Runs are copied out of
  // the frame that carried them (small); an owner map is left to be encoded again if needed.
  const runsOnly = wire.runs !== undefined && (wire.replicas ?? []).every((rank) => rank.runs !== undefined);
  if (runsOnly) {
    const copy: RoutingTableWire = { version: table.version, nodes: table.nodes, runs: wire.runs!.slice() };
    if (table.replicaOwners) copy.replicas = wire.replicas!.map((rank) => ({ runs: rank.runs!.slice() }));
    wireForms.set(table, copy);
  }
  return table;
}

/** `replicaRank`: NO_COPY is allowed (a primary rank names a node for every page). */
function ownersFromWire(rank: OwnersWire, nodeCount: number, expectedPages: number, replicaRank = false): Uint16Array {
  if (typeof rank !== "object" || rank === null) throw new ShoalError("BAD_FRAME", "routing table rank is malformed");
  return rank.runs !== undefined ? ownersFromRuns(rank.runs, nodeCount, expectedPages, replicaRank) : ownersFromMap(rank.owners, nodeCount, expectedPages, replicaRank);
}

/** No two copies of a page on one node: a table that says otherwise would lose the page with that node. */
function checkDistinctCopies(table: RoutingTable): void {
  const ranks = [table.owners, ...table.replicaOwners!];
  // Pair by pair over whole arrays: a 64 TiB table of three copies is 3 x 16 Mi compares.
  for (let a = 0; a < ranks.length; a++) {
    for (let b = a + 1; b < ranks.length; b++) {
      const [left, right] = [ranks[a]!, ranks[b]!];
      for (let page = 0; page < left.length; page++) {
        if (left[page] === right[page] && left[page] !== NO_COPY) throw new ShoalError("BAD_FRAME", `routing table puts two copies of page ${page} on node ${table.nodes[left[page]!]}`);
      }
    }
  }
}

/**
 * The replica ranks as one catalog column: per rank a kind byte (0 runs, 1 owner map), a u32
 * little-endian length and the bytes. Empty for R=1; a row from before replicas has none (NULL).
 */
export function packReplicaRanks(ranks: OwnersWire[] | undefined): Uint8Array | null {
  if (!ranks?.length) return null;
  const parts = ranks.map((rank) => (rank.runs !== undefined ? { kind: 0, bytes: rank.runs } : { kind: 1, bytes: rank.owners! }));
  const packed = new Uint8Array(parts.reduce((sum, part) => sum + 5 + part.bytes.byteLength, 0));
  const view = new DataView(packed.buffer);
  let at = 0;
  for (const part of parts) {
    view.setUint8(at, part.kind);
    view.setUint32(at + 1, part.bytes.byteLength, true);
    packed.set(part.bytes, at + 5);
    at += 5 + part.bytes.byteLength;
  }
  return packed;
}

export function unpackReplicaRanks(packed: Uint8Array | null): OwnersWire[] | undefined {
  if (!packed || packed.byteLength === 0) return undefined;
  const view = new DataView(packed.buffer, packed.byteOffset, packed.byteLength);
  const ranks: OwnersWire[] = [];
  for (let at = 0; at < packed.byteLength; ) {
    if (at + 5 > packed.byteLength) throw new ShoalError("BAD_FRAME", "catalog replica ranks are truncated");
    const kind = view.getUint8(at);
    const length = view.getUint32(at + 1, true);
    if (kind > 1 || at + 5 + length > packed.byteLength) throw new ShoalError("BAD_FRAME", "catalog replica ranks are malformed");
    const bytes = packed.slice(at + 5, at + 5 + length);
    ranks.push(kind === 0 ? { runs: bytes } : { owners: bytes });
    at += 5 + length;
  }
  return ranks;
}

function ownersFromMap(bytes: Uint8Array | undefined, nodeCount: number, expectedPages: number, replicaRank: boolean): Uint16Array {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength !== expectedPages * 2) {
    throw new ShoalError("BAD_FRAME", `routing table has ${bytes?.byteLength} owner bytes, expected ${expectedPages * 2}`);
  }
  // Copy into an aligned buffer: the received bytes may sit at an odd offset inside a frame.
  const owners = new Uint16Array(expectedPages);
  new Uint8Array(owners.buffer).set(bytes);
  for (let page = 0; page < owners.length; page++) {
    if (owners[page]! >= nodeCount && !(replicaRank && owners[page] === NO_COPY)) throw new ShoalError("BAD_FRAME", `routing table names node index ${owners[page]} of ${nodeCount}`);
  }
  return owners;
}

/**
 * Every page must be covered by exactly one run: the runs must cover as many pages as the volume
 * has, and leave none unowned (an overlap would leave a gap, since the counts agree).
 */
function ownersFromRuns(bytes: Uint8Array, nodeCount: number, expectedPages: number, replicaRank: boolean): Uint16Array {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength % RUN_BYTES !== 0) {
    throw new ShoalError("BAD_FRAME", `routing table runs take ${bytes?.byteLength} bytes, not a multiple of ${RUN_BYTES}`);
  }
  const runs = new Uint32Array(bytes.byteLength / 4);
  new Uint8Array(runs.buffer).set(bytes);
  let covered = 0;
  for (let at = 0; at < runs.length; at += 4) {
    const [first, last, step, index] = [runs[at]!, runs[at + 1]!, runs[at + 2]!, runs[at + 3]!];
    if (last < first || last >= expectedPages || step < 1 || (last - first) % step !== 0 || (index >= nodeCount && !(replicaRank && index === NO_COPY))) {
      throw new ShoalError("BAD_FRAME", `routing table run ${first}-${last}/${step} of node index ${index} does not fit ${expectedPages} pages and ${nodeCount} nodes`);
    }
    covered += (last - first) / step + 1;
  }
  if (covered !== expectedPages) throw new ShoalError("BAD_FRAME", `routing table runs cover ${covered} pages, the volume has ${expectedPages}`);
  const owners = new Uint16Array(expectedPages).fill(UNOWNED);
  // A replica rank may name NO_COPY, the same bits as UNOWNED: its coverage is kept apart.
  const reached = replicaRank ? new Uint8Array(expectedPages) : undefined;
  for (let at = 0; at < runs.length; at += 4) {
    const [first, last, step, index] = [runs[at]!, runs[at + 1]!, runs[at + 2]!, runs[at + 3]!];
    if (step === 1) {
      owners.fill(index, first, last + 1);
      reached?.fill(1, first, last + 1);
    } else {
      for (let page = first; page <= last; page += step) owners[page] = index;
      if (reached) for (let page = first; page <= last; page += step) reached[page] = 1;
    }
  }
  const unowned = reached ? reached.indexOf(0) : owners.indexOf(UNOWNED);
  if (unowned >= 0) throw new ShoalError("BAD_FRAME", `routing table gives page ${unowned} no owner (and another page two)`);
  return owners;
}

/** The table after `pages` move to `node`: one version later, the node added to `nodes` if new. */
export function withOwner(table: RoutingTable, pages: number[], node: string): RoutingTable {
  // Moving one copy at a time, with the others taking writes, is the failover slice's work.
  if (replicaCount(table) > 1) throw new ShoalError("BAD_ARGUMENT", "moves of replicated volumes are not supported yet");
  let index = table.nodes.indexOf(node);
  const nodes = index < 0 ? [...table.nodes, node] : table.nodes;
  if (index < 0) index = nodes.length - 1;
  if (nodes.length > MAX_NODES_PER_TABLE) throw new ShoalError("BAD_ARGUMENT", "too many nodes for one volume");
  const owners = table.owners.slice();
  for (const page of pages) {
    if (!Number.isInteger(page) || page < 0 || page >= owners.length) throw new ShoalError("OUT_OF_RANGE", `page ${page} is not in the routing table`);
    owners[page] = index;
  }
  return { version: table.version + 1, nodes, owners };
}

/** Pages owned by `node`, ascending. */
export function pagesOf(table: RoutingTable, node: string): number[] {
  const index = table.nodes.indexOf(node);
  const pages: number[] = [];
  if (index < 0) return pages;
  for (let page = 0; page < table.owners.length; page++) if (table.owners[page] === index) pages.push(page);
  return pages;
}

/**
 * The table a replica-set change makes (failover): `sets[group]` are the nodes holding a copy of
 * each page group now, the first its primary; `groupOf` maps a page to its group. Ranks keep their
 * number (a page with fewer copies has NO_COPY in the ranks it lacks); nodes keep their indexes.
 */
export function withReplicaSets(table: RoutingTable, version: number, sets: string[][], groupOf: (page: number) => number): RoutingTable {
  const ranks = replicaCount(table) - 1;
  const indexOf = (node: string): number => {
    const index = table.nodes.indexOf(node);
    if (index < 0) throw new ShoalError("BAD_ARGUMENT", `replica set names node ${node}, which holds none of the volume`);
    return index;
  };
  const indexed = sets.map((set) => set.map(indexOf));
  const owners = new Uint16Array(table.owners.length);
  const replicaOwners = Array.from({ length: ranks }, () => new Uint16Array(table.owners.length).fill(NO_COPY));
  for (let page = 0; page < owners.length; page++) {
    const set = indexed[groupOf(page)]!;
    owners[page] = set[0]!;
    for (let rank = 1; rank < set.length && rank <= ranks; rank++) replicaOwners[rank - 1]![page] = set[rank]!;
  }
  return { version, nodes: table.nodes, owners, ...(ranks > 0 ? { replicaOwners } : {}) };
}

/**
 * Whether every page has all its copies (no rank holds NO_COPY). Snapshots, rollbacks and clones
 * of a replicated volume wait for it: a copy that was away would come back without their layers.
 */
export function copiesWhole(table: RoutingTable): boolean {
  return (table.replicaOwners ?? []).every((rank) => rank.indexOf(NO_COPY) < 0);
}

/** The refusal of an operation that needs every copy while some page has fewer. */
export function copiesMissing(volume: string, what: string): ShoalError {
  return new ShoalError("NODE_DOWN", `volume '${volume}' has pages with a copy missing (a node is away or catching up); ${what} when \`shoal route show ${volume} --json\` says its replica sets are whole again`);
}
