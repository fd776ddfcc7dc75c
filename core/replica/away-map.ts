// What a remaining replica keeps for one replica that left a page group's set: which chunks
// changed since (a map per page group, not a log of writes), so that resync copies only those.
// A chunk leaves the map only when the absent replica confirmed the copy AND nothing wrote the
// chunk after that copy was taken (a generation per entry tells the two apart); a copy lost on the
// way, or overtaken by a write, stays in the map. When the absent replica rejoins, the join copy
// is every chunk still in the map, taken after this replica recorded the join version (so no
// write of the old version can be acknowledged after it). Kept durably: a survivor's restart must
// not forget what its peer is missing.
export interface AwayMapState {
  /** The group and the replica that is away. */
  group: number;
  node: string;
  /** The table version that dropped it: the map holds every chunk written here since. */
  sinceVersion: number;
  /** chunk -> the generation of its latest write here. */
  dirty: Map<number, number>;
  /** chunk -> the generation a copy in flight carried. */
  inFlight: Map<number, number>;
  nextGeneration: number;
}

/**
 * The map a remaining replica keeps when `node` leaves a group: an empty one starting now only if
 * it knows the node's copy was up to date (initial placement, or the node confirmed its join copy
 * to it); a replica still joining lacks more than what is written from now on. Otherwise an older
 * map it kept (a superset: it started when the node was last known up to date) or none, which
 * means "every chunk".
 */
export function mapOnDrop(existing: AwayMapState | undefined, knownUpToDate: boolean, group: number, node: string, version: number): AwayMapState | undefined {
  if (existing !== undefined) return existing;
  return knownUpToDate ? newAwayMap(group, node, version) : undefined;
}

export function newAwayMap(group: number, node: string, sinceVersion: number, alreadyChanged: Iterable<number> = []): AwayMapState {
  const map: AwayMapState = { group, node, sinceVersion, dirty: new Map(), inFlight: new Map(), nextGeneration: 1 };
  for (const chunk of alreadyChanged) noteWrite(map, chunk);
  return map;
}

/** A write was applied here to the group: the absent replica lacks it. */
export function noteWrite(map: AwayMapState, chunk: number): void {
  map.dirty.set(chunk, map.nextGeneration++);
}

/** How much of a copy a chunk is (a host may number a whole page and a part of one as chunks): 1 each unless told. */
export type ChunkWeight = (chunk: number) => number;
const ONE: ChunkWeight = () => 1;

/** Changed chunks without a copy in flight, weighing up to `max` (at least one), marked in flight: the next resync batch. */
export function takeBatch(map: AwayMapState, max: number, weight: ChunkWeight = ONE): number[] {
  const batch: number[] = [];
  let taken = 0;
  for (const [chunk, generation] of map.dirty) {
    if (map.inFlight.has(chunk)) continue;
    const size = weight(chunk);
    if (batch.length > 0 && taken + size > max) break;
    map.inFlight.set(chunk, generation);
    batch.push(chunk);
    taken += size;
    if (taken >= max) break;
  }
  return batch;
}

/** The absent replica stored these chunks as they were when the batch was taken. */
export function copied(map: AwayMapState, chunks: number[]): void {
  for (const chunk of chunks) {
    const generation = map.inFlight.get(chunk);
    if (generation === undefined) continue;
    map.inFlight.delete(chunk);
    if (map.dirty.get(chunk) === generation) map.dirty.delete(chunk);
  }
}

/** The copy of these chunks was lost (timeout, peer restart): they go in a later batch again. */
export function copyLost(map: AwayMapState, chunks: number[]): void {
  for (const chunk of chunks) map.inFlight.delete(chunk);
}

/** Every chunk the absent replica may still lack: the join copy. */
export function remainder(map: AwayMapState): number[] {
  return [...map.dirty.keys()].sort((a, b) => a - b);
}

/** What the absent replica lacks, weighed (the policy's "few enough for a join copy"). */
export function changedCount(map: AwayMapState, weight: ChunkWeight = ONE): number {
  if (weight === ONE) return map.dirty.size;
  let total = 0;
  for (const chunk of map.dirty.keys()) total += weight(chunk);
  return total;
}

export function cloneAwayMap(map: AwayMapState): AwayMapState {
  return { ...map, dirty: new Map(map.dirty), inFlight: new Map(map.inFlight) };
}
