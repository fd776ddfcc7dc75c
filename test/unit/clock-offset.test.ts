// The commit wait from measured clock offsets (core/snapshot/clock-offset.ts): checked against clocks with
// known offsets, rate errors, delays and coarse readings, and the clock nodes read it from.
import { describe, expect, test } from "bun:test";
import { MAX_CLOCK_RATE_ERROR, commitWaits, offsetBounds, type OffsetSample } from "../../core/snapshot/clock-offset.ts";
import { NodeClock } from "../../transport/snapshot/node-clock.ts";
import { Prng } from "../sim/kernel/prng.ts";

/** A clock as a function of real time: offset, rate error, and readings truncated or rounded to a resolution. */
interface ModelClock {
  offsetMs: number;
  rateError: number;
  resolutionMs: number;
  rounds: boolean;
}

function exact(clock: ModelClock, realMs: number): number {
  return realMs * (1 + clock.rateError) + clock.offsetMs;
}

function read(clock: ModelClock, realMs: number): number {
  const value = exact(clock, realMs);
  if (clock.resolutionMs === 0) return value;
  const steps = value / clock.resolutionMs;
  return (clock.rounds ? Math.round(steps) : Math.floor(steps)) * clock.resolutionMs;
}

/** Real time at which the clock reads `value` exactly. */
function realAt(clock: ModelClock, value: number): number {
  return (value - clock.offsetMs) / (1 + clock.rateError);
}

describe("offset bounds", () => {
  test("a zero round trip on whole-millisecond clocks bounds the offset within 2 ms either side", () => {
    const sample: OffsetSample = { sentAtMs: 1000, clockMs: 1004, receivedAtMs: 1000, clockResolutionMs: 1 };
    expect(offsetBounds(sample, 1)).toEqual({ lowMs: 2, highMs: 6 });
  });

  test("a slow round trip widens the bounds by its length", () => {
    const sample: OffsetSample = { sentAtMs: 1000, clockMs: 1003, receivedAtMs: 1010, clockResolutionMs: 0 };
    expect(offsetBounds(sample, 0)).toEqual({ lowMs: -7, highMs: 3 });
  });
});

describe("commit waits", () => {
  test("a lone participant needs no wait: no other clock can lag its cut", () => {
    const samples = new Map([["a", { sentAtMs: 0, clockMs: 3, receivedAtMs: 1, clockResolutionMs: 1 }]]);
    expect(commitWaits(samples, 50, 5, 1)).toEqual(new Map([["a", 0]]));
  });

  test("never more than the skew bound's 2 * skew", () => {
    const samples = new Map<string, OffsetSample>([
      ["a", { sentAtMs: 0, clockMs: 40, receivedAtMs: 100, clockResolutionMs: 1 }],
      ["b", { sentAtMs: 0, clockMs: 60, receivedAtMs: 100, clockResolutionMs: 1 }],
    ]);
    expect(commitWaits(samples, 200, 5, 1)).toEqual(new Map([["a", 10], ["b", 10]]));
  });

  test("synchronized fine clocks and fast round trips wait well under a millisecond", () => {
    const samples = new Map<string, OffsetSample>([
      ["a", { sentAtMs: 0, clockMs: 0.05, receivedAtMs: 0.1, clockResolutionMs: 0.001 }],
      ["b", { sentAtMs: 0, clockMs: 0.06, receivedAtMs: 0.12, clockResolutionMs: 0.001 }],
      ["c", { sentAtMs: 0, clockMs: 0.07, receivedAtMs: 0.15, clockResolutionMs: 0.001 }],
    ]);
    const waits = commitWaits(samples, 30, 5, 0.001);
    for (const [, waitMs] of waits) expect(waitMs).toBeLessThan(0.4);
  });

  test("a clock ahead of the others waits for them to reach T: by the offset, however it was measured", () => {
    const samples = new Map<string, OffsetSample>([
      ["ahead", { sentAtMs: 0, clockMs: 3.05, receivedAtMs: 0.1, clockResolutionMs: 0.001 }],
      ["behind", { sentAtMs: 0, clockMs: 0.05, receivedAtMs: 0.1, clockResolutionMs: 0.001 }],
    ]);
    const waits = commitWaits(samples, 30, 5, 0.001);
    expect(waits.get("ahead")!).toBeGreaterThan(3);
    expect(waits.get("ahead")!).toBeLessThan(3.3);
    expect(waits.get("behind")!).toBe(0);
  });

  // The property the protocol relies on: when P's clock reads T + wait(P), every other
  // participant's clock has read T, for any offsets within the skew bound, rate errors within
  // MAX_CLOCK_RATE_ERROR, message delays, and clocks that truncate or round their readings.
  test("every other participant's clock has read T when a participant's wait ends (20,000 random worlds)", () => {
    const rng = new Prng(7);
    let belowCeiling = 0;
    for (let world = 0; world < 20_000; world++) {
      const skewMs = rng.pick([0, 0.5, 5, 50]);
      const makeClock = (): ModelClock => ({
        offsetMs: rng.range(-skewMs, skewMs),
        rateError: rng.range(-MAX_CLOCK_RATE_ERROR, MAX_CLOCK_RATE_ERROR),
        resolutionMs: rng.pick([0, 0.001, 1]),
        rounds: rng.chance(0.5),
      });
      const coordinator = makeClock();
      const startMs = rng.range(0, 1e6);
      const nodes = ["a", "b", "c", "d"].slice(0, rng.int(1, 4));
      const clocks = new Map<string, ModelClock>(nodes.map((n, i) => [n, i === 0 && rng.chance(0.5) ? coordinator : makeClock()]));
      const samples = new Map<string, OffsetSample>();
      let lastReceivedMs = startMs;
      for (const [node, clock] of clocks) {
        const sentMs = startMs + rng.range(0, 2);
        const answeredMs = sentMs + rng.pick([rng.range(0, 0.05), rng.range(0, 3)]);
        const receivedMs = answeredMs + rng.pick([rng.range(0, 0.05), rng.range(0, 3)]);
        lastReceivedMs = Math.max(lastReceivedMs, receivedMs);
        samples.set(node, {
          sentAtMs: read(coordinator, sentMs),
          clockMs: read(clock, answeredMs),
          receivedAtMs: read(coordinator, receivedMs),
          clockResolutionMs: clock.resolutionMs,
        });
      }
      // Up to the participants' 2 s cut lead, where rate errors add up to milliseconds.
      const cutAtMs = read(coordinator, lastReceivedMs) + rng.pick([rng.range(0, 40), rng.range(0, 2000)]);
      const waits = commitWaits(samples, cutAtMs, skewMs, coordinator.resolutionMs);
      for (const [node, clock] of clocks) {
        const waitMs = waits.get(node)!;
        expect(waitMs).toBeGreaterThanOrEqual(0);
        expect(waitMs).toBeLessThanOrEqual(2 * skewMs);
        if (waitMs < 2 * skewMs) belowCeiling++;
        // The measured wait alone must be enough; the 2 * skew ceiling is the skew bound's own guarantee.
        if (waitMs === 2 * skewMs) continue;
        const endsAtMs = realAt(clock, cutAtMs + waitMs);
        for (const [other, theirs] of clocks) {
          if (other === node) continue;
          expect(exact(theirs, endsAtMs)).toBeGreaterThanOrEqual(cutAtMs - 1e-9);
        }
      }
    }
    expect(belowCeiling).toBeGreaterThan(10_000); // the measured bound is what usually decides
  });
});

describe("node clock", () => {
  test("reads the wall time with sub-millisecond steps, shifted for tests", () => {
    const clock = new NodeClock(0);
    // Each reading is bracketed by wall-clock reads taken just before and after it, so a loaded
    // machine descheduling the test between them cannot fail it (a fixed 2 ms tolerance did).
    const bracketed = (read: () => number, shiftMs = 0) => {
      const beforeMs = Date.now() + shiftMs;
      const reading = read();
      const afterMs = Date.now() + shiftMs;
      expect(reading).toBeGreaterThanOrEqual(beforeMs - 1);
      expect(reading).toBeLessThanOrEqual(afterMs + 1);
    };
    bracketed(() => clock.nowMs());
    const readings = Array.from({ length: 1000 }, () => clock.nowMs());
    expect(readings.some((r) => !Number.isInteger(r))).toBe(true);
    for (let i = 1; i < readings.length; i++) expect(readings[i]!).toBeGreaterThanOrEqual(readings[i - 1]!);
    expect(clock.resolutionMs).toBeLessThan(1);
    bracketed(() => new NodeClock(-4000).nowMs(), -4000);
  });

  test("follows a step of the wall clock only when asked, and tells whom it concerns", () => {
    const steps: number[] = [];
    const clock = new NodeClock(0, (stepMs) => steps.push(stepMs));
    expect(clock.followWallClock()).toBe(0);
    const wallNow = Date.now;
    try {
      Date.now = () => wallNow() + 3_600_000; // the time daemon sets the clock an hour ahead
      expect(Math.abs(clock.nowMs() - wallNow())).toBeLessThan(2); // not followed yet
      expect(clock.followWallClock()).toBeCloseTo(3_600_000, -1);
      expect(Math.abs(clock.nowMs() - Date.now())).toBeLessThan(2);
      expect(steps.length).toBe(1);
      expect(clock.followWallClock()).toBe(0);
    } finally {
      Date.now = wallNow;
    }
  });
});
