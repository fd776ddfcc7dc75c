// What the snapshot benchmark (test/bench/snapshot.ts) reads off a running load: the nodes' and
// its own CPU, a steady-state latency window, whether the load kept its pace.
import type { TestNode } from "../integration/_cluster.ts";
import type { PacedWriteLoad } from "./_write-load.ts";
import { mainThreadRunQueueMs, percentile, processCpuMs, stats, type LatencyStats } from "./_bench.ts";
import { NODE_COUNT, sleep, WARMUP_MS } from "./_snapshot-group.ts";

// ---- statistics

export function median(samples: number[]): number {
  return percentile(Float64Array.from(samples).sort(), 0.5);
}

/** CPU the nodes and this process (the load's clients, the admin requests) had used at an instant. */
export interface CpuSample {
  atMs: number;
  nodesMs: number;
  benchMs: number;
  /** The nodes' event-loop threads' time waiting for a CPU, summed. */
  nodesRunQueueMs: number;
}

export function cpuSample(nodes: TestNode[]): CpuSample {
  let nodesMs = 0;
  let nodesRunQueueMs = 0;
  for (const node of nodes) {
    if (!node.proc) continue;
    nodesMs += processCpuMs(node.proc.pid);
    nodesRunQueueMs += mainThreadRunQueueMs(node.proc.pid);
  }
  return { atMs: performance.now(), nodesMs, benchMs: processCpuMs(process.pid), nodesRunQueueMs };
}

/** What snapshots cost in CPU: the busy cores without and with them, and the extra per snapshot. */
export interface SnapshotCpu {
  nodesCoresWithout: number;
  nodesCoresWith: number;
  benchCoresWithout: number;
  benchCoresWith: number;
  /** Node CPU beyond the load's own, per snapshot taken in the window. */
  nodesMsPerSnapshot: number;
  benchMsPerSnapshot: number;
  /** Per node, ms per second its event loop was runnable but had no CPU. */
  runQueueMsPerSecondWithout: number;
  runQueueMsPerSecondWith: number;
}

export function snapshotCpu(without: [CpuSample, CpuSample], during: [CpuSample, CpuSample], snapshots: number): SnapshotCpu {
  const cores = ([from, to]: [CpuSample, CpuSample], key: "nodesMs" | "benchMs" | "nodesRunQueueMs") => (to[key] - from[key]) / (to.atMs - from.atMs);
  const extraPerSnapshot = (key: "nodesMs" | "benchMs") => ((cores(during, key) - cores(without, key)) * (during[1].atMs - during[0].atMs)) / Math.max(1, snapshots);
  return {
    nodesCoresWithout: cores(without, "nodesMs"),
    nodesCoresWith: cores(during, "nodesMs"),
    benchCoresWithout: cores(without, "benchMs"),
    benchCoresWith: cores(during, "benchMs"),
    nodesMsPerSnapshot: extraPerSnapshot("nodesMs"),
    benchMsPerSnapshot: extraPerSnapshot("benchMs"),
    runQueueMsPerSecondWithout: (cores(without, "nodesRunQueueMs") * 1000) / NODE_COUNT,
    runQueueMsPerSecondWith: (cores(during, "nodesRunQueueMs") * 1000) / NODE_COUNT,
  };
}

export function describeCpu(label: string, cpu: SnapshotCpu): string {
  return (
    `   CPU: nodes ${cpu.nodesCoresWithout.toFixed(2)} cores busy without snapshots, ${cpu.nodesCoresWith.toFixed(2)} with (${label}); ` +
    `${cpu.nodesMsPerSnapshot.toFixed(1)} ms of node CPU per snapshot, plus ${cpu.benchMsPerSnapshot.toFixed(1)} ms in this process (admin client)\n` +
    `   each node's event loop waited for a CPU ${cpu.runQueueMsPerSecondWithout.toFixed(0)} ms per second without snapshots, ${cpu.runQueueMsPerSecondWith.toFixed(0)} with (runnable, no CPU free: on two CPUs every process's work, ours included, delays the others)`
  );
}

/** Steady state on a running load: warm-up (discarded), then `durationMs` measured. */
export async function steadyWindow(load: PacedWriteLoad, durationMs: number, nodes: TestNode[]): Promise<{ fromMs: number; toMs: number; stats: LatencyStats; cpu: [CpuSample, CpuSample] }> {
  await sleep(WARMUP_MS);
  const cpuFrom = cpuSample(nodes);
  const fromMs = performance.now();
  await sleep(durationMs);
  const toMs = performance.now();
  return { fromMs, toMs, stats: stats(load.log.issuedIn(fromMs, toMs)), cpu: [cpuFrom, cpuSample(nodes)] };
}

export interface LoadHealth {
  issued: number;
  skipped: number;
  achievedWritesPerSecond: number;
  clientTickGapP99Ms: number;
  clientTickGapMaxMs: number;
}

export function health(load: PacedWriteLoad, elapsedMs: number): LoadHealth {
  const gaps = load.ticks.values.slice(0, load.ticks.count).sort();
  return {
    issued: load.counters.issued,
    skipped: load.counters.skipped,
    achievedWritesPerSecond: load.counters.completed / (elapsedMs / 1000),
    clientTickGapP99Ms: percentile(gaps, 0.99),
    clientTickGapMaxMs: gaps.length === 0 ? Number.NaN : gaps[gaps.length - 1]!,
  };
}
