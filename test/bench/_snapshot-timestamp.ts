// The snapshot benchmark's timestamp mode (test/bench/snapshot.ts, measure 2): write p99 with
// timestamp-mode snapshots back to back and one a second, and where a create's latency goes.
import type { TestNode } from "../integration/_cluster.ts";
import { scrape, sumOf } from "../integration/_prometheus.ts";
import { PacedWriteLoad } from "./_write-load.ts";
import { stats, type LatencyStats } from "./_bench.ts";
import { phaseMeans, phaseTotals } from "./_snapshot-phases.ts";
import { createSnapshot, failures, preparedVolume, sleep, succeeded, type Context, type CreateTiming } from "./_snapshot-group.ts";
import { cpuSample, health, snapshotCpu, steadyWindow } from "./_snapshot-load-stats.ts";

/** Measure 2, second half: one timestamp-mode snapshot started this often. */
export const TS_SPACED_INTERVAL_MS = 1000;

/** The nodes' commit-wait histograms summed (timestamp mode: from each cut until every participant's clock has read T). */
async function commitWaitTotals(nodes: TestNode[]): Promise<{ seconds: number; cuts: number }> {
  let seconds = 0;
  let cuts = 0;
  for (const node of nodes) {
    const samples = await scrape(node.extraArgs[1]!);
    seconds += sumOf(samples, "shoal_snapshot_commit_wait_seconds_sum");
    cuts += sumOf(samples, "shoal_snapshot_commit_wait_seconds_count");
  }
  return { seconds, cuts };
}

function commitWaitSince(from: { seconds: number; cuts: number }, to: { seconds: number; cuts: number }): { meanMs: number; cuts: number } {
  const cuts = to.cuts - from.cuts;
  return { meanMs: cuts > 0 ? ((to.seconds - from.seconds) * 1000) / cuts : Number.NaN, cuts };
}

/**
 * The writes of the spaced snapshots by when they were issued relative to the cut time T: where
 * in a create the latency goes (prepare, the commit wait and first writes after T, the cut's flush).
 */
function sinceCutWindows(load: PacedWriteLoad, timings: CreateTiming[]): { label: string; stats: LatencyStats }[] {
  const withCut = timings.filter((timing) => Number.isFinite(timing.cutAtMs));
  const window = (label: string, from: (t: CreateTiming) => number, to: (t: CreateTiming) => number) => ({
    label,
    stats: stats(withCut.flatMap((timing) => load.log.issuedIn(from(timing), Math.min(to(timing), timing.endMs)))),
  });
  return [
    window("ts: 1/s, issued before T", (t) => t.startMs, (t) => t.cutAtMs),
    window("ts: 1/s, issued T..T+10 ms", (t) => t.cutAtMs, (t) => t.cutAtMs + 10),
    window("ts: 1/s, issued T+10..40 ms", (t) => t.cutAtMs + 10, (t) => t.cutAtMs + 40),
    window("ts: 1/s, issued T+40 ms..end", (t) => t.cutAtMs + 40, (t) => t.endMs),
  ];
}

/** 2: p99 without snapshots, then with timestamp-mode snapshots back to back, same load and duration. */
export async function measureTimestamp(context: Context) {
  const { nodes, options } = context;
  const volume = "ts";
  await preparedVolume(context, volume, options.loadSizeBytes);
  const load = await PacedWriteLoad.start(nodes, volume, options.loadSizeBytes, options);
  const startedMs = performance.now();
  try {
    const without = await steadyWindow(load, options.durationMs, nodes);
    const phasesFrom = await phaseTotals(nodes);
    const cpuFrom = cpuSample(nodes);
    const fromMs = performance.now();
    const timings: CreateTiming[] = [];
    while (performance.now() - fromMs < options.durationMs) {
      timings.push(await createSnapshot(nodes[timings.length % nodes.length]!, volume, `t${timings.length}`, "timestamp"));
    }
    const toMs = performance.now();
    const cpu = snapshotCpu(without.cpu, [cpuFrom, cpuSample(nodes)], timings.length);
    const phases = phaseMeans(phasesFrom, await phaseTotals(nodes));
    // Then one snapshot every TS_SPACED_INTERVAL_MS: writes issued while a create call runs.
    const spaced: CreateTiming[] = [];
    const commitWaitFrom = await commitWaitTotals(nodes);
    const spacedFromMs = performance.now();
    while (performance.now() - spacedFromMs < options.durationMs) {
      const timing = await createSnapshot(nodes[spaced.length % nodes.length]!, volume, `u${spaced.length}`, "timestamp");
      spaced.push(timing);
      await sleep(TS_SPACED_INTERVAL_MS - timing.wallMs);
    }
    const commitWait = commitWaitSince(commitWaitFrom, await commitWaitTotals(nodes));
    await load.stop();
    const withStats = stats(load.log.issuedIn(fromMs, toMs));
    const spacedOk = succeeded(spaced);
    const during = stats(spacedOk.flatMap((timing) => load.log.issuedIn(timing.startMs, timing.endMs)));
    const sinceCut = sinceCutWindows(load, spacedOk);
    const ok = succeeded(timings);
    return {
      without: without.stats,
      with: withStats,
      during,
      sinceCut,
      commitWait,
      snapshots: ok.length,
      spacedSnapshots: spacedOk.length,
      failures: failures([...timings, ...spaced]),
      createWall: stats(ok.map((timing) => timing.wallMs)),
      ratio: withStats.p99Ms / without.stats.p99Ms,
      duringRatio: during.p99Ms / without.stats.p99Ms,
      cpu,
      phases,
      load: health(load, performance.now() - startedMs),
    };
  } finally {
    await load.stop().catch(() => undefined);
  }
}
