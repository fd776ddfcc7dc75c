// What every benchmark in test/bench/ needs besides its own measures: the binary under test,
// progress lines, disk syncs, bounded waits, percentiles, tables, and the run's provenance
// (source revision, machine load) for the report.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { run } from "../integration/_cluster.ts";

export const ROOT = path.resolve(import.meta.dir, "../..");
const BUILD_TIMEOUT_MS = 180_000;
const SYNC_TIMEOUT_MS = 300_000;

/**
 * A benchmark's command line as the CLI treats one: --help prints the usage and exits 0; an
 * unknown or malformed flag, or a value `check` refuses (it throws), prints the reason and the
 * usage and exits 2. Never starts a run on a flag it did not understand.
 */
export function benchCommandLine<O extends NonNullable<ParseArgsConfig["options"]>, T>(usage: string, options: O, check: (values: Record<string, string | boolean | undefined>) => T): T {
  try {
    const parsed = parseArgs({ args: Bun.argv.slice(2), options: { ...options, help: { type: "boolean", default: false } }, strict: true, allowPositionals: false });
    const values = parsed.values as Record<string, string | boolean | undefined>;
    if (values.help === true) {
      console.log(usage);
      process.exit(0);
    }
    return check(values);
  } catch (err) {
    console.error(`${(err as Error).message}\n${usage}`);
    process.exit(2);
  }
}

export function progress(message: string): void {
  console.error(`[bench] ${message}`);
}

/**
 * `--bin` as given, or the current source built into `dir`, so a run measures what is checked
 * out without touching dist/ (shoalCommand() would quietly fall back to bun + source).
 */
export async function buildShoal(dir: string, bin: string | undefined): Promise<string> {
  if (bin) {
    if (!fs.existsSync(bin)) throw new Error(`--bin ${bin}: no such file`);
    return path.resolve(bin);
  }
  const outfile = path.join(dir, "shoal");
  const built = await run([process.execPath, "build", "--compile", "--bytecode", "--format=esm", path.join(ROOT, "cmd/shoal.ts"), "--outfile", outfile], { timeoutMs: BUILD_TIMEOUT_MS });
  if (built.exitCode !== 0) throw new Error(`building shoal failed:\n${built.stderr}`);
  return outfile;
}

/** `sync`, so no measure pays for the writeback of the one before. */
export async function syncDisks(): Promise<void> {
  const synced = await run(["sync"], { timeoutMs: SYNC_TIMEOUT_MS });
  if (synced.exitCode !== 0) throw new Error(`sync failed: ${synced.stderr}`);
}

export async function bounded<T>(work: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** The q-quantile (nearest rank) of sorted values; NaN when there are none. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** Columns aligned: the first `textColumns` to the left, the numbers after them to the right. */
export function table(header: string[], rows: string[][], textColumns = 1): string {
  const widths = header.map((cell, column) => Math.max(cell.length, ...rows.map((row) => row[column]!.length)));
  const line = (cells: string[]) => cells.map((cell, column) => (column < textColumns ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join("  ");
  return [line(header), ...rows.map(line)].join("\n");
}

/** Which source was measured: commits land while benchmarks run. */
export async function sourceRevision(): Promise<string> {
  const head = await run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], { timeoutMs: 10_000 });
  const dirty = await run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], { timeoutMs: 10_000 });
  if (head.exitCode !== 0) return "unknown";
  return `${head.stdout.trim()}${dirty.stdout.trim() ? " + uncommitted changes" : ""}`;
}

/** The 1-minute load average: other work on the machine skews every row, so reports show it. */
export function loadAverage(): number {
  return Number(fs.readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
}

/** Linux reports process CPU time in USER_HZ ticks, 100 a second on every architecture's ABI. */
const USER_HZ = 100;

/** CPU time (user + system, every thread) a process has used so far, in ms; 0 once it is gone. */
export function processCpuMs(pid: number): number {
  try {
    // Fields after "(comm) ": state is the 1st, utime the 12th, stime the 13th.
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / USER_HZ;
  } catch {
    return 0;
  }
}

/**
 * How long a process's main thread (its event loop) has been runnable but waiting for a CPU, in
 * ms (Linux schedstat; 0 where unavailable). Time an event loop spends here delays every request
 * it serves, whatever the code does.
 */
export function mainThreadRunQueueMs(pid: number): number {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").split(" ")[1]) / 1e6;
  } catch {
    return 0;
  }
}

/** What runBench needs of a benchmark's processes. */
export interface BenchResources {
  nodes: { id: string; stderrLog: string }[];
  /** Kills what the run started and removes its files; `finished`: the run ended normally. */
  cleanup(finished: boolean): Promise<void>;
}

/**
 * Runs `measure` under a watchdog: SIGINT, SIGTERM or the time limit stop every process the run
 * started; a failure prints the log tails of nodes that warned. Cleans up either way.
 */
export async function runBench(resources: BenchResources, timeoutMs: number, measure: () => Promise<void>): Promise<void> {
  const abort = (why: string, code: number) => {
    progress(`${why}: stopping every process this run started`);
    void resources.cleanup(false).finally(() => process.exit(code));
  };
  process.on("SIGINT", () => abort("SIGINT", 130));
  process.on("SIGTERM", () => abort("SIGTERM", 143));
  const watchdog = setTimeout(() => abort(`the run exceeded --timeout-minutes ${timeoutMs / 60_000}`, 1), timeoutMs);
  let finished = false;
  try {
    await measure();
    finished = true;
  } catch (err) {
    for (const node of resources.nodes) {
      if (node.stderrLog.includes("WARN") || node.stderrLog.includes("ERROR")) progress(`${node.id} log tail:\n${node.stderrLog.slice(-2000)}`);
    }
    throw err;
  } finally {
    clearTimeout(watchdog);
    await resources.cleanup(finished);
  }
}

/** The human report on stdout; with --json it goes to stderr and stdout carries `document`. */
export function printReport(report: string, json: boolean, document: () => unknown): void {
  if (!json) {
    console.log(report);
    return;
  }
  console.error(report);
  console.log(JSON.stringify(document(), null, 2));
}

export interface LatencyStats {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

/** Percentiles of latency samples in ms (NaN when there are none). */
export function stats(samples: ArrayLike<number>): LatencyStats {
  const sorted = Float64Array.from(samples).sort();
  return {
    count: sorted.length,
    p50Ms: percentile(sorted, 0.5),
    p90Ms: percentile(sorted, 0.9),
    p99Ms: percentile(sorted, 0.99),
    p999Ms: percentile(sorted, 0.999),
    maxMs: sorted.length === 0 ? Number.NaN : sorted[sorted.length - 1]!,
  };
}
