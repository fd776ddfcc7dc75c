// Sorted page lists as [first, count] ranges: the manifest's candidates and the trailer's zero
// pages. Written pages cluster, so a list of a million pages is usually a few ranges of JSON.

/** Pages first .. first + count - 1. */
export type PageRange = [firstPage: number, pageCount: number];

/** Merges a strictly increasing page list into ranges; undefined if it is not strictly increasing. */
export function rangesOf(pages: readonly number[]): PageRange[] | undefined {
  const ranges: PageRange[] = [];
  let last = -1;
  for (const page of pages) {
    if (!Number.isSafeInteger(page) || page <= last) return undefined;
    const open = ranges[ranges.length - 1];
    if (open !== undefined && open[0] + open[1] === page) open[1]++;
    else ranges.push([page, 1]);
    last = page;
  }
  return ranges;
}

/**
 * Why `value` is not a canonical range list (pairs of integers, counts >= 1, in order, merged,
 * all below `pageLimit`), or undefined if it is one.
 */
export function rangeListProblem(value: unknown, pageLimit: number): string | undefined {
  if (!Array.isArray(value)) return "is not a list";
  let nextFree = 0;
  for (const range of value) {
    if (!Array.isArray(range) || range.length !== 2 || !range.every((n) => Number.isSafeInteger(n))) return "holds an item that is not [first, count]";
    const [first, count] = range as PageRange;
    if (count < 1 || first < nextFree) return `has range [${first}, ${count}] out of order, overlapping, adjacent or empty`;
    if (first + count > pageLimit) return `has range [${first}, ${count}] past the volume's last page ${pageLimit - 1}`;
    nextFree = first + count + 1; // +1: adjacent ranges would have been merged
  }
  return undefined;
}

export function pagesIn(ranges: readonly PageRange[]): number {
  let total = 0;
  for (const [, count] of ranges) total += count;
  return total;
}

/**
 * Walks a range list in page order: the reader checks each page entry against the manifest's
 * candidates and learns which candidates it passed over (the zero pages).
 */
export class PageRangeCursor {
  private rangeIndex = 0;
  /** Next candidate not yet passed, or undefined when all are. */
  private nextPage: number | undefined;

  constructor(private readonly ranges: readonly PageRange[]) {
    this.nextPage = ranges[0]?.[0];
  }

  /**
   * Passes every candidate below `page` (returned as ranges) and then `page` itself if it is a
   * candidate. `found` says whether it was; the cursor has passed `page` either way.
   */
  advanceTo(page: number): { skipped: PageRange[]; found: boolean } {
    const skipped: PageRange[] = [];
    while (this.nextPage !== undefined && this.nextPage < page) {
      const [first, count] = this.ranges[this.rangeIndex]!;
      const end = first + count;
      const stop = Math.min(end, page);
      skipped.push([this.nextPage, stop - this.nextPage]);
      this.moveTo(stop, end);
    }
    const found = this.nextPage === page;
    if (found) {
      const [first, count] = this.ranges[this.rangeIndex]!;
      this.moveTo(page + 1, first + count);
    }
    return { skipped, found };
  }

  /** Passes all remaining candidates. */
  rest(): PageRange[] {
    return this.advanceTo(Number.MAX_SAFE_INTEGER).skipped;
  }

  private moveTo(page: number, rangeEnd: number): void {
    if (page < rangeEnd) {
      this.nextPage = page;
      return;
    }
    this.rangeIndex++;
    this.nextPage = this.ranges[this.rangeIndex]?.[0];
  }
}

/** Appends a range to a list, merging it into the last range when they touch. */
export function appendRange(ranges: PageRange[], [first, count]: PageRange): void {
  const last = ranges[ranges.length - 1];
  if (last !== undefined && last[0] + last[1] === first) last[1] += count;
  else ranges.push([first, count]);
}
