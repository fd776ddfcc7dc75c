// The page-move benchmark's measure 2 (test/bench/move.ts): 4 KiB write latency before, during
// and after `route rebalance` onto a fourth node joining a three-node group.
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import { waitGroupUp } from "../integration/_cluster.ts";
import { progress, stats, type LatencyStats } from "./_bench.ts";
import { cpuDuring, type CpuUse } from "./_move-cpu.ts";
import { ADMIN_TIMEOUT_MS, createVolume, fillVolume, mbps, MiB, MOVE_TIMEOUT_MS, NODE_START_TIMEOUT_MS, shoalJson, startGroup, startNode, type MoveSummary, type Rate, type Resources } from "./_move-group.ts";
import type { Options } from "./_move-options.ts";
import { PacedWriteLoad } from "./_write-load.ts";

const WARMUP_MS = 1000;
export const AFTER_MS = 2000;

// ---- 2. latency: the load

/** Latencies of the load's writes issued in [fromMs, toMs), and this process's lag meanwhile. */
function windowOf(load: PacedWriteLoad, fromMs: number, toMs: number): Window {
  const latencies = load.log.issuedIn(fromMs, toMs);
  const lag = stats(load.ticks.issuedIn(fromMs, toMs));
  const skipped = load.skippedAtMs.filter((at) => at >= fromMs && at < toMs).length;
  return { ms: toMs - fromMs, latency: stats(latencies), skipped, writesPerSecond: latencies.length / ((toMs - fromMs) / 1000), clientLagP99Ms: lag.p99Ms, clientLagMaxMs: lag.maxMs };
}

export interface Window {
  ms: number;
  latency: LatencyStats;
  /** Writes that fell due while their client had --inflight writes waiting: not issued. */
  skipped: number;
  writesPerSecond: number;
  clientLagP99Ms: number;
  clientLagMaxMs: number;
}

// ---- 2. latency: the measure

export async function measureLatency(resources: Resources, options: Options) {
  progress("2: latency: three nodes, a striped volume written in full, then a fourth node joins");
  const nodes = await startGroup(resources, "latency", 3);
  const owners = await createVolume(nodes, "lat", options.sizeBytes);
  await fillVolume(nodes, "lat", options.sizeBytes, owners);
  const node4 = await startNode(resources, path.join(resources.root, "latency"), 4, nodes[0]);
  const all = [...nodes, node4];
  await waitGroupUp(all, NODE_START_TIMEOUT_MS);

  progress(`load: ${nodes.length} clients x ${options.ratePerClient} writes/s of 4 KiB; ${WARMUP_MS / 1000} s warm-up, ${options.durationMs / 1000} s before the rebalance`);
  const load = await PacedWriteLoad.start(nodes, "lat", options.sizeBytes, options);
  let summary: MoveSummary;
  let cpu: CpuUse;
  let before: Window, during: Window, after: Window;
  try {
    await Bun.sleep(WARMUP_MS);
    const beforeFromMs = performance.now();
    await Bun.sleep(options.durationMs);
    const duringFromMs = performance.now();
    progress("route rebalance lat (asked of node4) under the load");
    ({ result: summary, cpu } = await cpuDuring(all, async () => (await shoalJson(node4, ["route", "rebalance", "lat"], MOVE_TIMEOUT_MS)) as unknown as MoveSummary));
    const duringToMs = performance.now();
    await Bun.sleep(AFTER_MS);
    const afterToMs = performance.now();
    before = windowOf(load, beforeFromMs, duringFromMs);
    during = windowOf(load, duringFromMs, duringToMs);
    after = windowOf(load, duringToMs, afterToMs);
  } finally {
    await load.stop();
  }
  if (summary.state !== "done") throw new Error(`the rebalance ended ${summary.state}`);
  const route = await adminRequest(node4.meshAddress, "admin.route.show", { volume: "lat" }, ADMIN_TIMEOUT_MS);
  const perNode = Object.fromEntries((route.nodes as { node: string; pages: number }[]).map((entry) => [entry.node, entry.pages]));
  if (!perNode[node4.id]) throw new Error(`after the rebalance node4 owns no page of lat: ${JSON.stringify(perNode)}`);
  const rebalanceMs = summary.finishedAtMs - summary.startedAtMs;
  progress(`rebalance moved ${summary.pagesMoved} pages (${(summary.bytesMoved / MiB).toFixed(0)} MiB) in ${rebalanceMs} ms; pages now ${JSON.stringify(perNode)}`);
  await resources.stopNodes(all);
  return {
    summary,
    rebalance: { bytes: summary.bytesMoved, ms: rebalanceMs, mbPerSecond: mbps(summary.bytesMoved, rebalanceMs) } satisfies Rate,
    pagesPerNode: perNode,
    rebalanceCpu: cpu,
    before,
    during,
    after,
    load: { issued: load.counters.issued, skipped: load.counters.skipped, errors: load.counters.errors },
  };
}
