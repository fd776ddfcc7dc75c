// The page-move benchmark's command line (test/bench/move.ts): flags, their bounds, --help.
import { parseArgs } from "node:util";
import { parseSize } from "../../core/geometry.ts";
import { PAGE_BYTES } from "./_move-group.ts";

const USAGE = `usage: bun test/bench/move.ts [--size 1G] [--duration 5] [--rate 300] [--inflight 32] [--json] [--bin PATH] [--timeout-minutes 10] [--rounds 2] [--throughput-only]
  --rounds     moves (back and forth between the two nodes), each followed by the TCP-into-a-file anchor
  --throughput-only  skip measure 2 (latency during a rebalance)
  --size       volume size for both measures (a multiple of 4 MiB); the move carries all of it
  --duration   seconds of steady write load measured before the rebalance
  --rate       4 KiB writes per second per client (three clients)
  --inflight   writes in flight per client at most (a write due beyond that is skipped and counted)
  --json       tables on stderr, one JSON document on stdout
  --bin        a built shoal binary (default: build the current source into the temp dir)`;

export interface Options {
  sizeBytes: number;
  durationMs: number;
  ratePerClient: number;
  inflightPerClient: number;
  json: boolean;
  bin?: string;
  timeoutMs: number;
  rounds: number;
  throughputOnly: boolean;
}

export function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      size: { type: "string", default: "1G" },
      duration: { type: "string", default: "5" },
      rate: { type: "string", default: "300" },
      inflight: { type: "string", default: "32" },
      json: { type: "boolean", default: false },
      bin: { type: "string" },
      "timeout-minutes": { type: "string", default: "10" },
      rounds: { type: "string", default: "2" },
      "throughput-only": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const integer = (name: string, text: string, min: number, max: number): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} ${text}: give ${min}..${max}`);
    return value;
  };
  const sizeBytes = parseSize(values.size!);
  // Four pages at least, so the rebalance onto a fourth node has one to move.
  if (sizeBytes < 4 * PAGE_BYTES || sizeBytes % PAGE_BYTES !== 0) throw new Error(`--size ${values.size}: give a multiple of 4 MiB, at least 16 MiB`);
  return {
    sizeBytes,
    durationMs: integer("duration", values.duration!, 1, 600) * 1000,
    ratePerClient: integer("rate", values.rate!, 1, 100_000),
    inflightPerClient: integer("inflight", values.inflight!, 1, 64),
    json: values.json!,
    bin: values.bin,
    timeoutMs: integer("timeout-minutes", values["timeout-minutes"]!, 1, 600) * 60_000,
    rounds: integer("rounds", values.rounds!, 1, 9),
    throughputOnly: values["throughput-only"]!,
  };
}
