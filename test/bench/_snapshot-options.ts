// The snapshot benchmark's command line (test/bench/snapshot.ts): flags, their bounds, defaults.
import * as path from "node:path";
import { parseSize } from "../../core/geometry.ts";
import { benchCommandLine } from "./_bench.ts";
import { MiB, PAGE_BYTES, SMALL_WRITTEN_BYTES } from "./_snapshot-group.ts";

export interface Options {
  snapshots: number;
  intervalMs: number;
  ratePerClient: number;
  inflightPerClient: number;
  durationMs: number;
  loadSizeBytes: number;
  bigBytes: number;
  deleteSizeBytes: number;
  json: boolean;
  bin?: string;
  /** Nodes run with Bun's CPU profiler and write <node>.md here when the run ends normally. */
  profileDir?: string;
  timeoutMs: number;
  /** Which measures run (--only hold,ts,del,create). */
  only: Set<MeasureKey>;
}

const USAGE = `usage: bun test/bench/snapshot.ts [--snapshots 100] [--interval-ms 200] [--rate 400] [--inflight 32]
  [--duration 10] [--load-size 1G] [--big 8G] [--delete-size 1G] [--only hold,ts,del,create]
  [--timeout-minutes 30] [--profile DIR] [--json] [--bin PATH]
Snapshot create time, hold-mode queued waits, timestamp-mode write latency and the write latency
while a snapshot is deleted, on a three-node group under steady writers.`;

export function parseOptions(): Options {
  const flags = {
    snapshots: { type: "string", default: "100" },
    "interval-ms": { type: "string", default: "200" },
    rate: { type: "string", default: "400" },
    inflight: { type: "string", default: "32" },
    duration: { type: "string", default: "10" },
    "load-size": { type: "string", default: "1G" },
    big: { type: "string", default: "8G" },
    "delete-size": { type: "string", default: "1G" },
    json: { type: "boolean", default: false },
    bin: { type: "string" },
    profile: { type: "string" },
    "timeout-minutes": { type: "string", default: "30" },
    only: { type: "string", default: "hold,ts,del,create" },
  } as const;
  return benchCommandLine(USAGE, flags, (values) => optionsOf(values as Record<string, string | undefined> & { json?: boolean }));
}

function optionsOf(values: Record<string, string | undefined> & { json?: boolean }): Options {
  const integer = (name: string, text: string, min: number, max: number): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} ${text}: give ${min}..${max}`);
    return value;
  };
  const size = (name: string, text: string, min: number): number => {
    const bytes = parseSize(text);
    if (bytes < min || bytes % PAGE_BYTES !== 0) throw new Error(`--${name} ${text}: give a multiple of 4 MiB, at least ${min / MiB} MiB`);
    return bytes;
  };
  return {
    snapshots: integer("snapshots", values.snapshots!, 1, 10_000),
    intervalMs: integer("interval-ms", values["interval-ms"]!, 10, 60_000),
    ratePerClient: integer("rate", values.rate!, 10, 100_000),
    inflightPerClient: integer("inflight", values.inflight!, 1, 64),
    durationMs: integer("duration", values.duration!, 1, 600) * 1000,
    loadSizeBytes: size("load-size", values["load-size"]!, 64 * MiB),
    bigBytes: size("big", values.big!, 2 * SMALL_WRITTEN_BYTES),
    deleteSizeBytes: size("delete-size", values["delete-size"]!, 64 * MiB),
    json: values.json!,
    bin: values.bin,
    profileDir: values.profile === undefined ? undefined : path.resolve(values.profile),
    timeoutMs: integer("timeout-minutes", values["timeout-minutes"]!, 1, 600) * 60_000,
    only: parseOnly(values.only!),
  };
}

export const MEASURES = ["hold", "ts", "del", "create"] as const;
export type MeasureKey = (typeof MEASURES)[number];

function parseOnly(text: string): Set<MeasureKey> {
  const keys = text.split(",").map((key) => key.trim());
  for (const key of keys) if (!(MEASURES as readonly string[]).includes(key)) throw new Error(`--only ${text}: give some of ${MEASURES.join(",")}`);
  return new Set(keys as MeasureKey[]);
}
