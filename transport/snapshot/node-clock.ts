// The clock the snapshot protocol reads: wall-clock time with sub-millisecond resolution that does
// not step while a snapshot relies on it. Date.now() has whole-millisecond steps, each of which
// would widen the measured clock offsets (core/snapshot/clock-offset.ts) by a millisecond, and it jumps
// whenever the time daemon sets the time; performance.now() is monotonic and fine-grained, so the
// clock is the wall time at start plus the monotonic time since, and follows a wall-clock step
// only when the node says nothing depends on earlier readings.

/** A wall clock this far from the monotonic one (beyond Date.now()'s own truncation) was set. */
const STEP_TOLERANCE_MS = 2;

export class NodeClock {
  /** performance.now() advances in steps of microseconds or less. */
  readonly resolutionMs = 0.001;
  private anchorMs = performance.timeOrigin;

  /** shiftMs moves this node's clock (tests skew real processes with SHOAL_CLOCK_SKEW_MS). */
  constructor(
    private readonly shiftMs = 0,
    private readonly onStep: (stepMs: number) => void = () => {},
  ) {
    // The process may have run a while: its monotonic clock drifts from the wall clock (by
    // 40 ppm on a CI machine), so a clock made late starts from the wall time, not the origin.
    this.anchorMs += this.stepFromWallMs();
  }

  nowMs(): number {
    return this.anchorMs + performance.now() + this.shiftMs;
  }

  /**
   * Re-anchors to the wall clock if it was set since; call only while no snapshot relies on
   * readings taken before. Returns the step followed (0 when none).
   */
  followWallClock(): number {
    const stepMs = this.stepFromWallMs();
    if (stepMs === 0) return 0;
    this.anchorMs += stepMs;
    this.onStep(stepMs);
    return stepMs;
  }

  /** How far the wall clock is from this one, 0 within the tolerance. */
  private stepFromWallMs(): number {
    // Date.now() truncates: it reads up to 1 ms below the true wall time, never above.
    const stepMs = Date.now() + 0.5 - (this.anchorMs + performance.now());
    return Math.abs(stepMs) < STEP_TOLERANCE_MS ? 0 : stepMs;
  }
}
