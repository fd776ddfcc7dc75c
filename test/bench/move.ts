// The page-move benchmark: how fast `shoal route move` carries page data between two real nodes,
// against raw loopback TCP between two Bun processes measured in the same run, and what a
// rebalance onto a new node costs the clients' 4 KiB writes. Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/move.ts [--size 1G] [--duration 5] [--rate 300] [--inflight 32] [--json]
//                          [--bin PATH] [--timeout-minutes 10] [--rounds 2] [--throughput-only]
//
// 1. Throughput: a two-node group; a volume of --size with 4 MiB pages, all on node1 (`volume
//    create --nodes node1`), written in full with random (incompressible) 1 MiB writes through
//    our NBD client, flushed, then `sync`. `route move VOL --pages 0-N --to node2 --json` (asked
//    of node1, the source) moves every page; MB/s = bytesMoved / (finishedAtMs - startedAtMs) as
//    the move job reports it, and again over the CLI's wall time (process start and its 200 ms
//    polling included). The volume is then read back through node2 and compared with what was
//    written (a fast move of wrong data means nothing). Anchors, the same byte count, same run:
//    test/bench/_tcp-baseline.ts sends it from one Bun process to another over loopback TCP in
//    1 MiB writes with backpressure, once into memory and once into a file fsynced at the end.
//    Target: move >= 0.7x the raw TCP anchor, and >= 0.8x TCP into a file + fsync. With --rounds N
//    the pages go back and forth N times, each move followed by the file anchor (interleaved).
// 2. Latency: a three-node group and a volume of --size striped over it, written in full and
//    synced; a fourth node joins. 4 KiB random writes at --rate per second from each of three NBD
//    clients (one per original node; open loop, so a stall delays the writes that fell due
//    rather than hiding them; at most --inflight in flight each, a write due beyond that is
//    skipped and counted) run for a 1 s warm-up, --duration s of steady state ("before"), then
//    during `route rebalance VOL` (asked of node4), then 2 s after it. Latency is
//    performance.now() from issue to reply in this process, whose own event-loop lag is reported.
//    Target: write p99 during the rebalance within 10x of p99 before it.
//
// With --json the tables go to stderr and stdout carries one JSON document.
//
// This file is the entry point: measure 1 is _move-throughput.ts, measure 2 _move-latency.ts, on the
// groups and volumes of _move-group.ts; flags in _move-options.ts, the report in _move-report.ts.
import { buildShoal, loadAverage, printReport, progress, runBench, sourceRevision } from "./_bench.ts";
import { Resources } from "./_move-group.ts";
import { measureLatency } from "./_move-latency.ts";
import { parseOptions, type Options } from "./_move-options.ts";
import { renderReport, TARGETS, verdicts, type Results, type RunInfo } from "./_move-report.ts";
import { measureThroughput } from "./_move-throughput.ts";

// ---- main

async function measure(resources: Resources, options: Options): Promise<void> {
  const loadAtStart = loadAverage();
  progress(`temp dir ${resources.root}; load average ${loadAtStart}`);
  const revision = await sourceRevision();
  process.env.SHOAL_BIN = await buildShoal(resources.root, options.bin);
  const throughput = await measureThroughput(resources, options);
  const latency = options.throughputOnly ? undefined : await measureLatency(resources, options);
  const results: Results = { throughput, latency };
  const info: RunInfo = { revision, loadAtStart, loadAtEnd: loadAverage() };
  printReport(renderReport(results, options, info), options.json, () => ({ ...info, options, targets: TARGETS, verdicts: verdicts(results), results }));
}

async function main(): Promise<void> {
  const options = parseOptions();
  const resources = new Resources();
  await runBench(resources, options.timeoutMs, () => measure(resources, options));
}

await main();
