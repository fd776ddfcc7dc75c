// Where a snapshot create's time goes, as the nodes time it (transport/metrics/node-metrics.ts):
// the coordinator's phases and each participant's steps, scraped from every node's --metrics
// before and after a series of creates; the difference gives each phase's mean.
import type { TestNode } from "../integration/_cluster.ts";
import { scrape, sumOf } from "../integration/_prometheus.ts";

/** The snapshot phases the nodes time (coordinator phases on the coordinator, steps on each participant), summed over nodes. */
export const PHASES = [
  ["shoal_snapshot_phase_seconds", "phase", "prepare", "coord: start -> every participant ready"],
  ["shoal_snapshot_phase_seconds", "phase", "taken", "coord: take sent -> every participant taken"],
  ["shoal_snapshot_phase_seconds", "phase", "decide", "coord: decision record durable"],
  ["shoal_snapshot_phase_seconds", "phase", "ack", "coord: commit sent -> every ack"],
  ["shoal_snapshot_phase_seconds", "phase", "total", "coord: total"],
  ["shoal_snapshot_participant_seconds", "step", "cut_store", "part.: cut -> layers durable"],
  ["shoal_snapshot_participant_seconds", "step", "cut", "part.: cut -> layers + record durable"],
  ["shoal_snapshot_participant_seconds", "step", "commit", "part.: commit -> record durable"],
] as const;

/** Per phase: seconds and count summed over nodes, and the cumulative bucket counts by upper bound. */
export type PhaseTotals = { seconds: number; count: number; buckets: Map<number, number> }[];

export function noPhaseTotals(): PhaseTotals {
  return PHASES.map(() => ({ seconds: 0, count: 0, buckets: new Map<number, number>() }));
}

export async function phaseTotals(nodes: TestNode[]): Promise<PhaseTotals> {
  const totals = noPhaseTotals();
  for (const node of nodes) {
    const samples = await scrape(metricsAddress(node));
    PHASES.forEach(([name, label, value], index) => {
      const total = totals[index]!;
      total.seconds += sumOf(samples, `${name}_sum`, { [label]: value });
      total.count += sumOf(samples, `${name}_count`, { [label]: value });
      for (const sample of samples) {
        if (sample.name !== `${name}_bucket` || sample.labels[label] !== value) continue;
        const le = Number(sample.labels.le);
        total.buckets.set(le, (total.buckets.get(le) ?? 0) + sample.value);
      }
    });
  }
  return totals;
}

/** `to` minus `from`, phase by phase. */
export function phaseDelta(from: PhaseTotals, to: PhaseTotals): PhaseTotals {
  return to.map((total, index) => {
    const before = from[index]!;
    const buckets = new Map<number, number>();
    for (const [le, count] of total.buckets) buckets.set(le, count - (before.buckets.get(le) ?? 0));
    return { seconds: total.seconds - before.seconds, count: total.count - before.count, buckets };
  });
}

/** `a` plus `b`, phase by phase (a bench's rounds added up). */
export function phaseSum(a: PhaseTotals, b: PhaseTotals): PhaseTotals {
  return a.map((total, index) => {
    const other = b[index]!;
    const buckets = new Map(total.buckets);
    for (const [le, count] of other.buckets) buckets.set(le, count + (buckets.get(le) ?? 0));
    return { seconds: total.seconds + other.seconds, count: total.count + other.count, buckets };
  });
}

/**
 * Mean and median ms of each phase between two scrapes. The median is read from the histogram's
 * doubling buckets, interpolated within its bucket (as Prometheus' histogram_quantile does).
 */
export function phaseMeans(from: PhaseTotals, to: PhaseTotals): { phase: string; meanMs: number; p50Ms: number; count: number }[] {
  return phaseDelta(from, to).map((total, index) => ({
    phase: PHASES[index]![3],
    meanMs: total.count > 0 ? (total.seconds * 1000) / total.count : Number.NaN,
    p50Ms: medianFromBuckets(total.buckets, total.count) * 1000,
    count: total.count,
  }));
}

function medianFromBuckets(buckets: Map<number, number>, count: number): number {
  if (count <= 0) return Number.NaN;
  const rank = count / 2;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, cumulative] of [...buckets].sort((a, b) => a[0] - b[0])) {
    if (cumulative >= rank) {
      if (!Number.isFinite(le)) return lowerBound;
      return lowerBound + ((le - lowerBound) * (rank - lowerCount)) / Math.max(1, cumulative - lowerCount);
    }
    lowerBound = le;
    lowerCount = cumulative;
  }
  return Number.NaN;
}

/** The address a bench passed as `--metrics ADDRESS` in the node's extraArgs. */
function metricsAddress(node: TestNode): string {
  const index = node.extraArgs.indexOf("--metrics");
  if (index < 0) throw new Error(`${node.id} runs without --metrics`);
  return node.extraArgs[index + 1]!;
}
