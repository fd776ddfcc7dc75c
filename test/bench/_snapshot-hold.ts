// The snapshot benchmark's hold mode (test/bench/snapshot.ts, measures 1 and 4): the stall of a
// series of hold-mode snapshots, and write latency in the seconds after one.
import { PacedWriteLoad } from "./_write-load.ts";
import { progress, stats, type LatencyStats } from "./_bench.ts";
import { phaseMeans, phaseTotals } from "./_snapshot-phases.ts";
import { createSnapshot, failures, preparedVolume, sleep, succeeded, type Context, type CreateTiming } from "./_snapshot-group.ts";
import { cpuSample, health, snapshotCpu, steadyWindow } from "./_snapshot-load-stats.ts";

export const POST_SNAPSHOTS = 5;
export const POST_WINDOW_MS = 1000;
export const POST_SPACING_MS = 3000;

/** Measures 4 then 1 on one volume: the post-snapshot windows first, while the layer chain is short. */
export async function measureHold(context: Context) {
  const { nodes, options } = context;
  const volume = "hold";
  await preparedVolume(context, volume, options.loadSizeBytes);
  const load = await PacedWriteLoad.start(nodes, volume, options.loadSizeBytes, options);
  const startedMs = performance.now();
  try {
    const steady = await steadyWindow(load, options.durationMs, nodes);
    progress(`hold: steady p50 ${steady.stats.p50Ms.toFixed(2)} ms, p99 ${steady.stats.p99Ms.toFixed(2)} ms over ${steady.stats.count} writes`);
    const post: CreateTiming[] = [];
    for (let index = 0; index < POST_SNAPSHOTS; index++) {
      post.push(await createSnapshot(nodes[index % nodes.length]!, volume, `post${index}`, "hold"));
      await sleep(POST_SPACING_MS);
    }
    const stalls: CreateTiming[] = [];
    const phasesFrom = await phaseTotals(nodes);
    const seriesCpuFrom = cpuSample(nodes);
    for (let index = 0; index < options.snapshots; index++) {
      const timing = await createSnapshot(nodes[index % nodes.length]!, volume, `s${index}`, "hold");
      stalls.push(timing);
      await sleep(options.intervalMs - timing.wallMs);
    }
    const cpu = snapshotCpu(steady.cpu, [seriesCpuFrom, cpuSample(nodes)], stalls.length);
    const phases = phaseMeans(phasesFrom, await phaseTotals(nodes));
    await load.stop(); // waits for the writes in flight: the last create's overlaps complete
    return { steady, post: postSnapshot(load, steady.stats, post), stall: holdStall(load, steady.stats, stalls), cpu, phases, load: health(load, performance.now() - startedMs) };
  } finally {
    await load.stop().catch(() => undefined);
  }
}

function postSnapshot(load: PacedWriteLoad, steady: LatencyStats, timings: CreateTiming[]) {
  const ok = succeeded(timings);
  const firstSecond = ok.flatMap((timing) => load.log.issuedIn(timing.endMs, timing.endMs + POST_WINDOW_MS));
  const later = ok.flatMap((timing) => load.log.issuedIn(timing.endMs + POST_WINDOW_MS, timing.endMs + POST_SPACING_MS));
  const first = stats(firstSecond);
  return {
    snapshots: ok.length,
    failures: failures(timings),
    firstSecond: first,
    oneToThreeSeconds: stats(later),
    steadyP50Ms: steady.p50Ms,
    ratio: first.p50Ms / steady.p50Ms,
  };
}

function holdStall(load: PacedWriteLoad, steady: LatencyStats, timings: CreateTiming[]) {
  const ok = succeeded(timings);
  const perSnapshot = ok.map((timing) => {
    const overlapping = load.log.overlapping(timing.startMs, timing.endMs);
    const maxMs = overlapping.length === 0 ? 0 : Math.max(...overlapping);
    return { name: timing.name, wallMs: timing.wallMs, tookMs: timing.tookMs, overlappingWrites: overlapping.length, stallMs: Math.max(0, maxMs - steady.p50Ms) };
  });
  const stallStats = stats(perSnapshot.map((entry) => entry.stallMs));
  // As the nodes measured it: per snapshot, the longest any request sat in a hold queue, and the
  // longest hold (a bound on any wait, met or not).
  const longestWait = stats(ok.map((timing) => Math.max(0, ...timing.holds.map((hold) => hold.longestWaitMs))));
  const longestHold = stats(ok.map((timing) => Math.max(0, ...timing.holds.map((hold) => hold.heldMs))));
  const queuedPerSnapshot = stats(ok.map((timing) => timing.holds.reduce((sum, hold) => sum + hold.queued, 0)));
  // Writes issued between one create's return and the next create's start: the series' data path.
  const between = ok.slice(0, -1).flatMap((timing, index) => load.log.issuedIn(timing.endMs, ok[index + 1]!.startMs));
  const worst = [...perSnapshot].sort((a, b) => b.stallMs - a.stallMs).slice(0, 5);
  return {
    snapshots: ok.length,
    failures: failures(timings),
    steadyP50Ms: steady.p50Ms,
    stall: stallStats,
    longestWait,
    longestHold,
    queuedPerSnapshot,
    between: stats(between),
    createWall: stats(ok.map((timing) => timing.wallMs)),
    createTook: stats(ok.map((timing) => timing.tookMs)),
    worst,
  };
}
