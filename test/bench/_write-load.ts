// The benchmarks' client load: one NBD client per node, each writing 4 KiB at random aligned
// offsets at a steady rate (open loop: a stall delays writes that were due rather than hiding
// them), with a bounded number in flight; a write due while its client is at the bound is skipped
// and counted. A 1 ms pacer issues what is due; the gaps between its ticks measure this process's
// own event-loop lag, which inflates every latency it records.
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { waitFor, type TestNode } from "../integration/_cluster.ts";

const BLOCK_BYTES = 4 * 1024;
const DRAIN_TIMEOUT_MS = 15_000;

export function connect(node: TestNode, volume: string, maxInFlight: number): Promise<NbdClient> {
  return NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: volume, maxInFlight });
}

/** Fills `data` with random bytes (getRandomValues takes at most 64 KiB a call). */
export function fillRandom(data: Uint8Array): Uint8Array {
  for (let offset = 0; offset < data.byteLength; offset += 65536) crypto.getRandomValues(data.subarray(offset, Math.min(offset + 65536, data.byteLength)));
  return data;
}

/** Growable columns: one row per event, its time and a value (a write's latency, a tick's gap). */
export class TimedLog {
  atMs = new Float64Array(1 << 16);
  values = new Float64Array(1 << 16);
  count = 0;

  push(atMs: number, value: number): void {
    if (this.count === this.atMs.length) {
      const at = new Float64Array(this.count * 2);
      const values = new Float64Array(this.count * 2);
      at.set(this.atMs);
      values.set(this.values);
      this.atMs = at;
      this.values = values;
    }
    this.atMs[this.count] = atMs;
    this.values[this.count] = value;
    this.count++;
  }

  /** Values of the rows timed in [fromMs, toMs). */
  issuedIn(fromMs: number, toMs: number): number[] {
    const result: number[] = [];
    for (let index = 0; index < this.count; index++) {
      const at = this.atMs[index]!;
      if (at >= fromMs && at < toMs) result.push(this.values[index]!);
    }
    return result;
  }

  /** Latencies of writes in flight at some point of [fromMs, toMs] (rows: issue time, latency). */
  overlapping(fromMs: number, toMs: number): number[] {
    const result: number[] = [];
    for (let index = 0; index < this.count; index++) {
      const issued = this.atMs[index]!;
      if (issued <= toMs && issued + this.values[index]! >= fromMs) result.push(this.values[index]!);
    }
    return result;
  }
}

export interface LoadCounters {
  issued: number;
  completed: number;
  skipped: number;
  errors: number;
  firstError: string | undefined;
}

export interface LoadOptions {
  ratePerClient: number;
  inflightPerClient: number;
}

export class PacedWriteLoad {
  /** Per completed write: when it was issued, and its latency. */
  readonly log = new TimedLog();
  /** Per pacer tick: when it ran, and the gap since the one before. */
  readonly ticks = new TimedLog();
  /** When each skipped write fell due. */
  readonly skippedAtMs: number[] = [];
  readonly counters: LoadCounters = { issued: 0, completed: 0, skipped: 0, errors: 0, firstError: undefined };
  private readonly inflight: number[];
  private readonly due: number[];
  private readonly block = fillRandom(new Uint8Array(BLOCK_BYTES));
  private readonly blocks: number;
  private seed = 0x9e3779b9;
  private readonly timer: ReturnType<typeof setInterval>;
  private readonly startedAtMs = performance.now();
  private lastTickMs = this.startedAtMs;
  private stopping: Promise<void> | undefined;

  private constructor(
    private readonly clients: NbdClient[],
    rangeBytes: number,
    private readonly options: LoadOptions,
  ) {
    this.blocks = Math.floor(rangeBytes / BLOCK_BYTES);
    this.inflight = clients.map(() => 0);
    this.due = clients.map(() => 0);
    this.timer = setInterval(() => this.tick(), 1);
  }

  /** Connects a client to `volume` on each node and starts writing within [0, rangeBytes). */
  static async start(nodes: TestNode[], volume: string, rangeBytes: number, options: LoadOptions): Promise<PacedWriteLoad> {
    const clients = await Promise.all(nodes.map((node) => connect(node, volume, options.inflightPerClient)));
    return new PacedWriteLoad(clients, rangeBytes, options);
  }

  /** Stops issuing, waits (bounded) for writes in flight, closes the clients; fails if any write failed. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.stopNow();
    return this.stopping;
  }

  private async stopNow(): Promise<void> {
    clearInterval(this.timer);
    try {
      await waitFor("the load's writes in flight to finish", () => this.inflight.every((count) => count === 0), DRAIN_TIMEOUT_MS);
    } finally {
      await Promise.all(this.clients.map((client) => client.close()));
    }
    const { errors, issued, firstError } = this.counters;
    if (errors > 0) throw new Error(`${errors} of ${issued} load writes failed; the first: ${firstError}`);
  }

  private tick(): void {
    const now = performance.now();
    this.ticks.push(now, now - this.lastTickMs);
    this.lastTickMs = now;
    const dueTotal = Math.floor(((now - this.startedAtMs) * this.options.ratePerClient) / 1000);
    for (let index = 0; index < this.clients.length; index++) {
      for (; this.due[index]! < dueTotal; this.due[index]!++) {
        if (this.inflight[index]! >= this.options.inflightPerClient) {
          this.counters.skipped++;
          this.skippedAtMs.push(now);
        } else {
          this.issue(index);
        }
      }
    }
  }

  private issue(index: number): void {
    // xorshift32: cheap, and the same offsets every run.
    this.seed ^= this.seed << 13;
    this.seed ^= this.seed >>> 17;
    this.seed ^= this.seed << 5;
    const offset = ((this.seed >>> 0) % this.blocks) * BLOCK_BYTES;
    const issuedAtMs = performance.now();
    this.inflight[index]!++;
    this.counters.issued++;
    this.clients[index]!.write(offset, this.block).then(
      () => {
        this.log.push(issuedAtMs, performance.now() - issuedAtMs);
        this.counters.completed++;
        this.inflight[index]!--;
      },
      (err: unknown) => {
        this.counters.errors++;
        this.counters.firstError ??= (err as Error).message;
        this.inflight[index]!--;
      },
    );
  }
}
