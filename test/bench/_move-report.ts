// The page-move benchmark's report (test/bench/move.ts): verdicts against the targets, the
// throughput table with each round, the latency windows.
import * as os from "node:os";
import { table } from "./_bench.ts";
import { describeCpu } from "./_move-cpu.ts";
import { MiB, type Rate } from "./_move-group.ts";
import { AFTER_MS, type measureLatency, type Window } from "./_move-latency.ts";
import type { Options } from "./_move-options.ts";
import type { measureThroughput } from "./_move-throughput.ts";

export const TARGETS = { moveVsTcp: 0.7, moveVsTcpFile: 0.8, p99DuringVsBefore: 10 };

// ---- report

export type Results = {
  throughput: Awaited<ReturnType<typeof measureThroughput>>;
  /** Absent with --throughput-only. */
  latency: Awaited<ReturnType<typeof measureLatency>> | undefined;
};

const fixed = (value: number, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : "-");
const times = (value: number) => (Number.isFinite(value) ? `${value.toFixed(2)}x` : "-");

export function verdicts(results: Results) {
  const { throughput, latency } = results;
  const moveVsTcp = throughput.moveJob.mbPerSecond / throughput.tcpMemory.mbPerSecond;
  const fileRatios = throughput.rounds.map((round) => round.move.mbPerSecond / round.tcpFile.mbPerSecond).sort((a, b) => a - b);
  const fileRatio = fileRatios[Math.floor((fileRatios.length - 1) / 2)]!; // lower median: never flatters
  const rows = [
    { measure: "move MB/s vs raw loopback TCP", value: moveVsTcp, target: `>= ${TARGETS.moveVsTcp}x`, met: moveVsTcp >= TARGETS.moveVsTcp },
    { measure: `move MB/s vs TCP into a file + fsync (median of ${fileRatios.length} interleaved rounds)`, value: fileRatio, target: `>= ${TARGETS.moveVsTcpFile}x`, met: fileRatio >= TARGETS.moveVsTcpFile },
  ];
  if (!latency) return rows;
  const p99Ratio = latency.during.latency.p99Ms / latency.before.latency.p99Ms;
  return [...rows, { measure: "write p99 during rebalance vs before", value: p99Ratio, target: `<= ${TARGETS.p99DuringVsBefore}x`, met: p99Ratio <= TARGETS.p99DuringVsBefore }];
}

export function renderReport(results: Results, options: Options, info: RunInfo): string {
  const { throughput, latency } = results;
  const rateRow = (label: string, rate: Rate): string[] => [
    label,
    fixed(rate.bytes / MiB, 0),
    fixed(rate.ms, 0),
    fixed(rate.mbPerSecond, 0),
    times(throughput.moveJob.mbPerSecond / rate.mbPerSecond),
  ];
  return [
    `shoal ${info.revision}; nodes on loopback; 4 MiB pages; volume size ${options.sizeBytes / MiB} MiB`,
    `${os.cpus().length} CPUs; load average ${fixed(info.loadAtStart)} at start, ${fixed(info.loadAtEnd)} at end`,
    "",
    table(
      ["VERDICT", "VALUE", "TARGET", ""],
      verdicts(results).map((v) => [v.measure, times(v.value), v.target, v.met === undefined ? "" : v.met ? "met" : "NOT MET"]),
    ),
    "",
    `1: ${throughput.pages} pages moved node1 -> node2 by one \`route move\`; read back through node2 and verified (${throughput.verifiedBytes / MiB} MiB)`,
    table(
      ["THROUGHPUT", "MiB", "MS", "MB/S", "MOVE (JOB) / THIS"],
      [
        rateRow("route move (job: startedAtMs..finishedAtMs)", throughput.moveJob),
        rateRow("route move (CLI wall time)", throughput.moveWall),
        rateRow("TCP loopback, Bun -> Bun, into memory", throughput.tcpMemory),
        rateRow(`TCP loopback, into a file + fsync (${fixed(throughput.tcpFile.fsyncMs, 0)} ms)`, throughput.tcpFile),
      ],
    ),
    `   during the move: ${describeCpu(throughput.moveCpu)}`,
    ...throughput.rounds.map(
      (round, index) =>
        `   round ${index + 1}: move ${fixed(round.move.mbPerSecond, 0)} MB/s, TCP into a file + fsync ${fixed(round.tcpFile.mbPerSecond, 0)} MB/s (receiver CPU ${fixed(round.tcpFile.receiverCpuSeconds, 1)} s): ` +
        `${times(round.move.mbPerSecond / round.tcpFile.mbPerSecond)} (load ${fixed(round.load, 1)}); ${describeCpu(round.cpu)}`,
    ),
    ...(latency ? ["", ...renderLatency(latency, options)] : []),
  ].join("\n");
}

function renderLatency(latency: NonNullable<Results["latency"]>, options: Options): string[] {
  const windowRow = (label: string, w: Window): string[] => [
    label,
    fixed(w.ms / 1000, 1),
    String(w.latency.count),
    String(w.skipped),
    fixed(w.writesPerSecond, 0),
    fixed(w.latency.p50Ms),
    fixed(w.latency.p99Ms),
    fixed(w.latency.maxMs),
    fixed(w.clientLagP99Ms),
    fixed(w.clientLagMaxMs),
  ];
  return [
    `2: 3 NBD clients (one per original node) x ${options.ratePerClient} 4 KiB random writes/s (open loop, <= ${options.inflightPerClient} in flight each; ${latency.load.skipped} skipped of ${latency.load.issued + latency.load.skipped} due)`,
    `   rebalance onto node4 (asked of node4): ${latency.summary.pagesMoved} pages, ${fixed(latency.rebalance.bytes / MiB, 0)} MiB in ${fixed(latency.rebalance.ms, 0)} ms (${fixed(latency.rebalance.mbPerSecond, 0)} MB/s under load); pages now ${Object.entries(latency.pagesPerNode).map(([node, pages]) => `${node} ${pages}`).join(", ")}`,
    `   during the rebalance: ${describeCpu(latency.rebalanceCpu)}`,
    table(
      ["WRITE LATENCY (ms)", "S", "N", "SKIPPED", "WRITES/S", "P50", "P99", "MAX", "CLIENT LAG P99", "CLIENT LAG MAX"],
      [windowRow("before (steady)", latency.before), windowRow("during the rebalance", latency.during), windowRow(`after (${AFTER_MS / 1000} s)`, latency.after)],
    ),
    "client lag: gaps between this process's 1 ms pacer ticks; large gaps inflate every latency above",
  ];
}

export interface RunInfo {
  revision: string;
  loadAtStart: number;
  loadAtEnd: number;
}
