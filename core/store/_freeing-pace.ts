// How fast a removed layer file's blocks are freed. Freeing blocks is filesystem-journal work
// (ext4 frees extents inside a journal transaction): one 64 MiB truncate of a dense file held
// the journal 26-42 ms and every writer on the disk stalled behind it. So the file is shrunk
// from the end in steps sized from the time the last steps took (each aims at STEP_TARGET_MS),
// with a rest after each in proportion to its time: freeing takes at most 1 / (1 + REST_RATIO)
// of the disk's journal, and no single step holds writers longer than about the target.
// Pure: the caller times the steps and sleeps (core/ sets no timers).

const MiB = 1024 * 1024;
/** What one truncate should hold the filesystem for: below a 4 KiB write's usual p99 over NBD. */
export const STEP_TARGET_MS = 2;
/** Rest after a step, as a multiple of the step's time. */
export const REST_RATIO = 2;
const FIRST_HELD_BYTES = 4 * MiB;
const MIN_HELD_BYTES = 1 * MiB;
const MAX_HELD_BYTES = 256 * MiB;
/** A step's size changes by at most this factor at once: one fast step in a hole does not make the next one huge. */
const MAX_GROWTH = 2;
/** Steps end on this boundary (whole blocks and extents). */
const STEP_ALIGN_BYTES = 1 * MiB;

export class FreeingPace {
  /** Bytes of the file's blocks the next step should free. */
  private heldStepBytes = FIRST_HELD_BYTES;

  /**
   * `sizeBytes`: the file's length now; `heldBytes`: what it holds (st_blocks * 512). Returns
   * the length to truncate to next, spreading the held bytes evenly over the length (a sparse
   * file's steps are longer in proportion), or 0 when one more step frees the rest.
   */
  nextLength(sizeBytes: number, heldBytes: number): number {
    if (heldBytes <= this.heldStepBytes || sizeBytes <= STEP_ALIGN_BYTES) return 0;
    const density = heldBytes / sizeBytes;
    const stepBytes = Math.ceil(this.heldStepBytes / density / STEP_ALIGN_BYTES) * STEP_ALIGN_BYTES;
    const target = Math.floor((sizeBytes - stepBytes) / STEP_ALIGN_BYTES) * STEP_ALIGN_BYTES;
    return Math.max(0, target);
  }

  /** A step freed `freedBytes` in `elapsedMs`: sizes the next one. Returns how long to rest first. */
  stepTook(elapsedMs: number, freedBytes: number): number {
    if (freedBytes > 0) {
      const wanted = (freedBytes * STEP_TARGET_MS) / Math.max(elapsedMs, 0.05);
      const bounded = Math.min(this.heldStepBytes * MAX_GROWTH, Math.max(this.heldStepBytes / MAX_GROWTH, wanted));
      this.heldStepBytes = Math.min(MAX_HELD_BYTES, Math.max(MIN_HELD_BYTES, bounded));
    }
    return elapsedMs * REST_RATIO;
  }
}
