// Clock offsets measured on the snapshot's prepare/ready exchange, and the commit wait they allow.
//
// A timestamp-mode participant P cuts when its clock reads T. A write P applies after its cut is
// out of the snapshot, so its acknowledgement must wait until every other participant's clock
// has read T too: a client that saw the ack and then writes through another participant must land
// after that one's cut. With only the skew bound that wait is 2 * skew. The prepare/ready round
// trip bounds each participant's offset from the coordinator's clock (Cristian's method), which
// bounds the wait by the round trips instead, usually far below 2 * skew.
//
// Sound while every clock involved runs at a rate within MAX_CLOCK_RATE_ERROR of real time and
// does not step between the exchange and the end of the wait: nodes read a monotonic clock and
// re-anchor it to the wall clock only while no snapshot depends on it.
import type { NodeId } from "./snapshot-messages.ts";

/** Frequency error any one clock may have (the kernel's NTP discipline caps it at 500 ppm). */
export const MAX_CLOCK_RATE_ERROR = 500e-6;

/** One participant's answer to prepare, with the coordinator's readings around it. */
export interface OffsetSample {
  /** Coordinator clock when the answered prepare was sent. */
  sentAtMs: number;
  /** Participant clock when it answered (it read it after the prepare arrived, before ready left). */
  clockMs: number;
  /** Coordinator clock when the ready arrived. */
  receivedAtMs: number;
  /** How coarse the participant's clock readings are (1 for whole milliseconds). */
  clockResolutionMs: number;
}

/** The participant's clock minus the coordinator's lies within [lowMs, highMs]. */
export interface OffsetBounds {
  lowMs: number;
  highMs: number;
}

/**
 * The participant read clockMs at some instant between the coordinator's two readings, so its
 * offset lies between clockMs - receivedAtMs and clockMs - sentAtMs; each reading may be off by
 * its clock's resolution, whether it truncates or rounds.
 */
export function offsetBounds(sample: OffsetSample, coordinatorResolutionMs: number): OffsetBounds {
  const slackMs = sample.clockResolutionMs + coordinatorResolutionMs;
  return { lowMs: sample.clockMs - sample.receivedAtMs - slackMs, highMs: sample.clockMs - sample.sentAtMs + slackMs };
}

/**
 * How long after its clock reads T each participant must hold back acknowledgements of writes it
 * applied after its cut, so that every other participant's clock reads T by then, never more than
 * the skew bound's 2 * skew. When P's clock reads x, the coordinator's reads at least x - high(P)
 * and Q's at least x - high(P) + low(Q); that is T once x >= T + high(P) - low(Q). Rate errors add
 * up over the time from the first sample to the end of the wait.
 */
export function commitWaits(
  samples: ReadonlyMap<NodeId, OffsetSample>,
  cutAtMs: number,
  maxClockSkewMs: number,
  coordinatorResolutionMs: number,
): Map<NodeId, number> {
  const ceilingMs = 2 * maxClockSkewMs;
  const bounds = new Map<NodeId, OffsetBounds>();
  let firstSentAtMs = Infinity;
  for (const [node, sample] of samples) {
    bounds.set(node, offsetBounds(sample, coordinatorResolutionMs));
    firstSentAtMs = Math.min(firstSentAtMs, sample.sentAtMs);
  }
  const driftMs = 2 * MAX_CLOCK_RATE_ERROR * Math.max(0, cutAtMs + ceilingMs - firstSentAtMs);
  const waits = new Map<NodeId, number>();
  for (const [node, own] of bounds) {
    let waitMs = 0;
    for (const [other, theirs] of bounds) if (other !== node) waitMs = Math.max(waitMs, own.highMs - theirs.lowMs + driftMs);
    waits.set(node, Math.min(ceilingMs, waitMs));
  }
  return waits;
}
