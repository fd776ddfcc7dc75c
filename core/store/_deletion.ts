// Deleting a layer that has layers stacked on it: each child first receives, in its own file,
// the chunks it reads through the layer (a merge, page by page, yielding to clients between
// pages), then the children are restacked on the layer's parent in one commit, then the layer's
// file is removed with one unlink. A crash at any point leaves every other layer reading as
// before (a copied chunk holds what the child read through anyway) and the layer marked
// deleting, so a second call finishes the job.
import { ShoalError } from "../errors.ts";
import { ABSENT, DATA, hasAbsent, isAllZero, type PageEntry, runsOf, setState, stateOf, ZERO } from "./_chunks.ts";
import type { DataPath } from "./_data-path.ts";
import type { StoreLayer } from "./_layers.ts";

/** Bytes a merge copies between two commits: bounds the sync work any commit inherits from it. */
const MERGE_COMMIT_BYTES = 64 * 1024 * 1024;
/**
 * Pages looked at between two yields even when nothing is copied: a merge into a head that
 * holds every chunk copies nothing, and one synchronous pass over a 1 GiB layer's pages held
 * the event loop 8-20 ms (writers stalled 40-50 ms behind it).
 */
const PAGES_PER_YIELD = 8;

export class LayerDeletion {
  constructor(
    private readonly path: DataPath,
    private readonly commit: (layers: Set<StoreLayer>) => Promise<void>,
    private readonly removeLayerFiles: (layer: StoreLayer) => void,
    private readonly isClosed: () => boolean,
    private readonly yieldToClients: () => Promise<void>,
  ) {}

  async run(layer: StoreLayer): Promise<void> {
    const table = this.path.table;
    // Durably marked before anything moves: after a crash the half-merged layer refuses reads.
    await this.commit(new Set([layer]));
    let copiedBytes = 0;
    // Children whose maps the merge changed: only they need their files synced with the commit.
    // A child that already held every chunk (an old snapshot's head, mostly) gets nothing, and
    // its clients' writes are not made to wait for a sync they did not ask for.
    const merged = new Set<StoreLayer>();
    const pages = [...layer.pages.keys()].sort((a, b) => a - b);
    let pagesSinceYield = 0;
    for (const page of pages) {
      if (++pagesSinceYield >= PAGES_PER_YIELD) {
        pagesSinceYield = 0;
        await this.pause();
      }
      // Children are looked up at every step: clients write to them, and one may be frozen
      // (its object becomes the snapshot, still our child) or rolled back meanwhile.
      for (const child of table.childrenOf(layer)) {
        const copied = this.mergePage(layer, child, page);
        if (copied === undefined) continue;
        merged.add(child);
        copiedBytes += copied;
        pagesSinceYield = 0;
        await this.pause();
      }
      if (copiedBytes >= MERGE_COMMIT_BYTES) {
        copiedBytes = 0;
        await this.commit(new Set(merged));
      }
    }
    // A child whose map changed since its last commit on a page the layer holds goes in too: a
    // crash must not find its older map (an ABSENT chunk the layer filled) over the grandparent.
    for (const child of table.childrenOf(layer)) {
      for (const page of child.dirtyPages) {
        if (!layer.pages.has(page)) continue;
        merged.add(child);
        break;
      }
      table.setParent(child, layer.parent);
    }
    this.removeLayerFiles(layer);
    table.remove(layer);
    await this.commit(merged);
  }

  /**
   * Gives `child` the chunks of `page` it reads through `source`; returns the bytes copied, or
   * undefined when the child's map did not change. Synchronous: one consistent moment.
   */
  private mergePage(source: StoreLayer, child: StoreLayer, page: number): number | undefined {
    const from = source.pages.get(page);
    if (from === undefined) return undefined;
    if (child.pageSizeBytes === 0) this.path.adoptPageSize(child, source.pageSizeBytes);
    const existing = child.pages.get(page);
    if (existing !== undefined && !hasAbsent(existing)) return undefined; // reads nothing through the layer
    const target = existing ?? this.path.createEntry(child, page, true);
    const shift = this.path.chunkShiftOf(child);
    let copiedBytes = 0;
    let changed = false;
    for (let chunk = 0; chunk < target.chunks; chunk++) {
      if (stateOf(target, chunk) === ABSENT && stateOf(from, chunk) === ZERO) changed = setState(target, chunk, ZERO) || changed;
    }
    for (const [first, count] of runsOf(from, DATA)) {
      for (const [start, length] of absentRuns(target, first, count)) {
        copiedBytes += this.copyRun(source, child, page, target, start, length, shift);
        changed = true;
      }
    }
    if (existing === undefined && !changed) {
      child.pages.delete(page); // nothing came through: no entry, as before
      return undefined;
    }
    if (!changed) return undefined;
    child.dirtyPages.add(page);
    return copiedBytes;
  }

  private copyRun(source: StoreLayer, child: StoreLayer, page: number, target: PageEntry, first: number, count: number, shift: number): number {
    const bytes = count << shift;
    const scratch = this.path.scratchOf(bytes);
    this.path.readOwn(source, page, first << shift, bytes, scratch, 0);
    let copied = 0;
    // An all-zero chunk (a hole, mostly) is recorded, not written; the others go in runs.
    let runFrom = -1;
    const writeRun = (to: number) => {
      if (runFrom < 0) return;
      this.path.writeOwn(child, page, (first + runFrom) << shift, scratch.subarray(runFrom << shift, to << shift));
      copied += (to - runFrom) << shift;
      runFrom = -1;
    };
    for (let index = 0; index < count; index++) {
      if (isAllZero(scratch.subarray(index << shift, (index + 1) << shift))) {
        writeRun(index);
        setState(target, first + index, ZERO);
      } else {
        if (runFrom < 0) runFrom = index;
        setState(target, first + index, DATA);
      }
    }
    writeRun(count);
    child.dirtyPages.add(page);
    return copied;
  }

  /** Lets client I/O run between merge steps; a closed store stops the deletion there. */
  private async pause(): Promise<void> {
    await this.yieldToClients();
    if (this.isClosed()) throw new ShoalError("SHUTTING_DOWN", "the page store closed during a layer deletion; it resumes when deleteLayer is called again");
  }
}

/** Runs of ABSENT chunks of `target` within [first, first + count). */
function* absentRuns(target: PageEntry, first: number, count: number): Generator<[number, number]> {
  for (let chunk = first; chunk < first + count; chunk++) {
    if (stateOf(target, chunk) !== ABSENT) continue;
    const start = chunk;
    while (chunk + 1 < first + count && stateOf(target, chunk + 1) === ABSENT) chunk++;
    yield [start, chunk - start + 1];
  }
}
