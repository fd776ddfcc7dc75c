// The snapshot benchmark's report (test/bench/snapshot.ts): each measure judged against its
// target, the latency and create-phase tables, the load's health.
import * as os from "node:os";
import { table, type LatencyStats } from "./_bench.ts";
import { FOREIGN_CPU_NOISY_SECONDS } from "./_foreign-cpu.ts";
import type { measureCreateVsData } from "./_snapshot-create.ts";
import { CREATE_ROUNDS } from "./_snapshot-create.ts";
import type { measureDelete } from "./_snapshot-delete.ts";
import { GiB, MiB, NODE_COUNT, WARMUP_MS } from "./_snapshot-group.ts";
import type { measureHold } from "./_snapshot-hold.ts";
import { POST_SPACING_MS, POST_WINDOW_MS } from "./_snapshot-hold.ts";
import { describeCpu, type LoadHealth } from "./_snapshot-load-stats.ts";
import type { Options } from "./_snapshot-options.ts";
import { PHASES } from "./_snapshot-phases.ts";
import type { measureTimestamp } from "./_snapshot-timestamp.ts";
import { TS_SPACED_INTERVAL_MS } from "./_snapshot-timestamp.ts";

export const TARGETS = {
  holdStallP99Ms: 5,
  timestampP99Ratio: 1.2,
  createTimeRatio: 1.5,
  postSnapshotP50Ratio: 2,
  deleteP99Ratio: 1.5,
};

// ---- report

const ms = (value: number) => (Number.isFinite(value) ? value.toFixed(2) : "-");
const x = (value: number) => (Number.isFinite(value) ? `${value.toFixed(2)}x` : "-");

/** Measures not chosen with --only are absent. */
export type Results = {
  hold?: Awaited<ReturnType<typeof measureHold>>;
  timestamp?: Awaited<ReturnType<typeof measureTimestamp>>;
  createVsData?: Awaited<ReturnType<typeof measureCreateVsData>>;
  deletion?: Awaited<ReturnType<typeof measureDelete>>;
};

/** Each measure judged: `value` is the judged number (ms for 1, a ratio for the rest). */
export function verdicts(results: Results) {
  const { hold, timestamp, createVsData, deletion } = results;
  const below = (value: number, limit: number) => Number.isFinite(value) && value < limit;
  const atMost = (value: number, limit: number) => Number.isFinite(value) && value <= limit;
  return [
    hold && {
      measure: "1 hold: longest queued wait p99 (p50)",
      value: hold.stall.longestWait.p99Ms,
      display: `${ms(hold.stall.longestWait.p99Ms)} ms (${ms(hold.stall.longestWait.p50Ms)})`,
      anchor: `hold p99 ${ms(hold.stall.longestHold.p99Ms)} ms`,
      target: `< ${TARGETS.holdStallP99Ms} ms`,
      met: below(hold.stall.longestWait.p99Ms, TARGETS.holdStallP99Ms),
    },
    hold && {
      measure: "1 client-seen stall p99 (p50), approx.",
      value: hold.stall.stall.p99Ms,
      display: `${ms(hold.stall.stall.p99Ms)} ms (${ms(hold.stall.stall.p50Ms)})`,
      anchor: `steady p50 ${ms(hold.stall.steadyP50Ms)} ms`,
      target: `< ${TARGETS.holdStallP99Ms} ms`,
      met: below(hold.stall.stall.p99Ms, TARGETS.holdStallP99Ms),
    },
    timestamp && {
      measure: "2 ts p99 back to back / none",
      value: timestamp.ratio,
      display: `${ms(timestamp.with.p99Ms)} ms`,
      anchor: `${ms(timestamp.without.p99Ms)} ms`,
      target: `<= ${TARGETS.timestampP99Ratio}x`,
      met: atMost(timestamp.ratio, TARGETS.timestampP99Ratio),
    },
    timestamp && {
      measure: "2 ts p99 during creates (1/s) / none",
      value: timestamp.duringRatio,
      display: `${ms(timestamp.during.p99Ms)} ms`,
      anchor: `${ms(timestamp.without.p99Ms)} ms`,
      target: `<= ${TARGETS.timestampP99Ratio}x`,
      met: atMost(timestamp.duringRatio, TARGETS.timestampP99Ratio),
    },
    createVsData && {
      measure: `3 create ${createVsData.bigWrittenBytes / GiB} GiB / 64 MiB written`,
      value: createVsData.ratio,
      display: `${ms(createVsData.big.wall.p50Ms)} ms`,
      anchor: `${ms(createVsData.small.wall.p50Ms)} ms`,
      target: `< ${TARGETS.createTimeRatio}x`,
      met: below(createVsData.ratio, TARGETS.createTimeRatio),
    },
    hold && {
      measure: "4 post-snapshot p50 (1st s) / steady",
      value: hold.post.ratio,
      display: `${ms(hold.post.firstSecond.p50Ms)} ms`,
      anchor: `${ms(hold.post.steadyP50Ms)} ms`,
      target: `<= ${TARGETS.postSnapshotP50Ratio}x`,
      met: atMost(hold.post.ratio, TARGETS.postSnapshotP50Ratio),
    },
    deletion && {
      measure: "5 delete p99 / steady",
      value: deletion.ratio,
      display: `${ms(deletion.during.p99Ms)} ms`,
      anchor: `${ms(deletion.steady.p99Ms)} ms`,
      target: `<= ${TARGETS.deleteP99Ratio}x`,
      met: atMost(deletion.ratio, TARGETS.deleteP99Ratio),
    },
  ].filter((verdict) => verdict !== undefined);
}

function latencyRow(label: string, s: LatencyStats): string[] {
  return [label, String(s.count), ms(s.p50Ms), ms(s.p90Ms), ms(s.p99Ms), ms(s.p999Ms), ms(s.maxMs)];
}

export function renderReport(results: Results, options: Options, info: RunInfo): string {
  const { hold, timestamp, createVsData, deletion } = results;
  const summary = verdicts(results).map((v) => [v.measure, v.display, v.anchor, v.measure.startsWith("1 ") ? "" : x(v.value), v.target, v.met ? "met" : "NOT MET"]);
  const latencyRows = [
    ...(hold
      ? [
          latencyRow("hold: steady (no snapshots)", hold.steady.stats),
          latencyRow("hold: 1st s after a snapshot", hold.post.firstSecond),
          latencyRow("hold: 1-3 s after a snapshot", hold.post.oneToThreeSeconds),
          latencyRow("hold: between series snapshots", hold.stall.between),
          latencyRow("hold: per-snapshot stall", hold.stall.stall),
          latencyRow("hold: longest queued wait", hold.stall.longestWait),
          latencyRow("hold: longest hold (any node)", hold.stall.longestHold),
          latencyRow("hold: create wall", hold.stall.createWall),
          latencyRow("hold: create tookMs (coord.)", hold.stall.createTook),
        ]
      : []),
    ...(timestamp
      ? [
          latencyRow("ts: without snapshots", timestamp.without),
          latencyRow("ts: with snapshots back to back", timestamp.with),
          latencyRow("ts: during creates, 1/s", timestamp.during),
          ...timestamp.sinceCut.map((window) => latencyRow(window.label, window.stats)),
          latencyRow("ts: create wall", timestamp.createWall),
        ]
      : []),
    ...(createVsData
      ? [
          latencyRow(`create wall, 64 MiB written`, createVsData.small.wall),
          latencyRow(`create wall, ${createVsData.bigWrittenBytes / GiB} GiB written`, createVsData.big.wall),
          latencyRow(`create tookMs, 64 MiB written`, createVsData.small.took),
          latencyRow(`create tookMs, ${createVsData.bigWrittenBytes / GiB} GiB written`, createVsData.big.took),
        ]
      : []),
    ...(deletion ? [latencyRow("del: steady", deletion.steady), latencyRow("del: during the delete", deletion.during)] : []),
  ];
  const loads = ([["hold", hold?.load], ["ts", timestamp?.load], ["del", deletion?.load]] as [string, LoadHealth | undefined][]).filter(
    (entry): entry is [string, LoadHealth] => entry[1] !== undefined,
  );
  const failed = [
    hold && hold.post.failures.count + hold.stall.failures.count > 0 ? `hold-mode creates failed: ${hold.post.failures.count + hold.stall.failures.count} (${hold.stall.failures.first ?? hold.post.failures.first})` : "",
    timestamp && timestamp.failures.count > 0 ? `timestamp-mode creates failed: ${timestamp.failures.count} (${timestamp.failures.first})` : "",
    createVsData && createVsData.failures.small.count + createVsData.failures.big.count > 0 ? `create-vs-data creates failed: ${createVsData.failures.small.count + createVsData.failures.big.count}` : "",
  ].filter(Boolean);
  return [
    `shoal ${info.revision}; ${NODE_COUNT} nodes on loopback, volumes striped over all, 4 MiB pages, 4 KiB copy-on-write chunks`,
    `load: ${NODE_COUNT} NBD clients (one per node), 4 KiB random writes, ${options.ratePerClient}/s each (open loop), <= ${options.inflightPerClient} in flight each; steady windows ${options.durationMs / 1000} s after ${WARMUP_MS / 1000} s warm-up`,
    `${os.cpus().length} CPUs; load average ${info.loadAtStart.toFixed(2)} at start, ${info.loadAtEnd.toFixed(2)} at end (this run alone keeps ~4 processes busy)`,
    `other processes' CPU during each phase (incl. its fills): ${Object.entries(info.foreignCpu).map(([key, used]) => `${key} ${used.seconds.toFixed(1)} s${used.seconds >= FOREIGN_CPU_NOISY_SECONDS ? ` (NOISY: ${used.top})` : ""}`).join(", ")}`,
    ...info.notes,
    "",
    table(["MEASURE", "VALUE", "ANCHOR", "RATIO", "TARGET", "VERDICT"], summary, 2),
    "",
    ...(hold
      ? [
          `1: ${hold.stall.snapshots} hold-mode snapshots every ${options.intervalMs} ms; judged: per snapshot, the longest any request waited in a node's hold queue`,
          `   (the nodes' own reports; median ${hold.stall.queuedPerSnapshot.p50Ms.toFixed(0)} requests queued per snapshot). Client-seen stall: max latency of writes in flight`,
          `   during the create call - steady p50; an upper bound that also counts what else the snapshot costs (its flush, copy-on-write)`,
          `   worst: ${hold.stall.worst.map((w) => `${w.name} ${ms(w.stallMs)} ms (create ${ms(w.wallMs)} ms)`).join(", ")}`,
          describeCpu(`one snapshot every ${options.intervalMs} ms`, hold.cpu),
        ]
      : []),
    ...(timestamp
      ? [
          `2: ${timestamp.snapshots} timestamp-mode snapshots in ${options.durationMs / 1000} s, back to back (every write is one of the first after a cut); then ${timestamp.spacedSnapshots},`,
          `   one every ${TS_SPACED_INTERVAL_MS / 1000} s, counting the writes issued while a create call ran`,
          describeCpu("back to back", timestamp.cpu),
          `   commit wait (from a cut until every participant's clock has read T; acks of writes applied meanwhile wait): mean ${ms(timestamp.commitWait.meanMs)} ms over ${timestamp.commitWait.cuts} cuts of the one-a-second snapshots (nodes' histograms)`,
        ]
      : []),
    ...(createVsData ? [`3: ${CREATE_ROUNDS} hold-mode creates per volume, alternating, load on a third volume; ratio of median wall times (tookMs: as the coordinator measured)`] : []),
    ...(hold ? [`4: ${hold.post.snapshots} hold-mode snapshots ${POST_SPACING_MS / 1000} s apart; writes issued in the first ${POST_WINDOW_MS / 1000} s after each create returned`] : []),
    ...(deletion
      ? [
          `5: snapshot held ${deletion.snapshotHeldBytes === null ? "?" : `${(deletion.snapshotHeldBytes / MiB).toFixed(0)} MiB`} alone; delete call ${ms(deletion.deleteCallMs)} ms, layer gone from every node after ${ms(deletion.layerGoneAfterMs)} ms, window ${ms(deletion.windowMs)} ms, ${(deletion.freedBytes / MiB).toFixed(0)} MiB freed`,
        ]
      : []),
    ...failed,
    "",
    table(["WRITE LATENCY (ms)", "N", "P50", "P90", "P99", "P99.9", "MAX"], latencyRows),
    ...(hold || timestamp
      ? [
          "",
          table(
            ["CREATE PHASES (ms)", "N", "HOLD MEAN", "P50~", "N", "TS MEAN", "P50~"],
            PHASES.map(([, , , phase], index) => {
              const cell = (means: { meanMs: number; p50Ms: number; count: number }[] | undefined) => {
                const entry = means?.[index];
                return [String(entry?.count ?? "-"), ms(entry?.meanMs ?? Number.NaN), ms(entry?.p50Ms ?? Number.NaN)];
              };
              return [phase, ...cell(hold?.phases), ...cell(timestamp?.phases)];
            }),
          ),
          "hold series and timestamp back to back; coord. phases on the coordinator (taken + decide + ack = take), part. steps per participant",
          "(the slowest participant sets the coordinator's phase); P50~: from the nodes' histograms (doubling buckets), interpolated",
        ]
      : []),
    "",
    table(
      ["LOAD", "ISSUED", "SKIPPED", "WRITES/S", "CLIENT LAG P99", "CLIENT LAG MAX"],
      loads.map(([label, h]) => [label, String(h.issued), String(h.skipped), h.achievedWritesPerSecond.toFixed(0), ms(h.clientTickGapP99Ms), ms(h.clientTickGapMaxMs)]),
    ),
    "client lag: gaps between this process's 1 ms pacer ticks; large gaps inflate every latency above",
  ].join("\n");
}

export interface RunInfo {
  revision: string;
  loadAtStart: number;
  loadAtEnd: number;
  notes: string[];
  /** CPU seconds other processes used during each measure's phase. */
  foreignCpu: Record<string, { seconds: number; top: string | undefined }>;
}
