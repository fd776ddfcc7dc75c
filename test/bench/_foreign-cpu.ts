// CPU used on this machine by processes a benchmark did not start (test/bench/snapshot.ts).
import * as fs from "node:fs";

// ---- other work on the machine

/**
 * CPU time used by processes this run did not start (user processes only: kernel threads also
 * do our own writeback), sampled every second from /proc. The bench shares two CPUs with
 * whatever else runs; a phase that had company is flagged instead of silently skewed.
 */
export class ForeignCpuMonitor {
  private readonly lastTicks = new Map<number, number>();
  private readonly samples: { atMs: number; seconds: number; byCommand: Map<string, number> }[] = [];
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly ownPids: () => number[]) {}

  start(): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), FOREIGN_CPU_SAMPLE_MS);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** CPU seconds used by others in [fromMs, toMs], and the command that used most. */
  usedIn(fromMs: number, toMs: number): { seconds: number; top: string | undefined } {
    const byCommand = new Map<string, number>();
    let seconds = 0;
    for (const sample of this.samples) {
      if (sample.atMs < fromMs || sample.atMs > toMs + FOREIGN_CPU_SAMPLE_MS) continue;
      seconds += sample.seconds;
      for (const [command, used] of sample.byCommand) byCommand.set(command, (byCommand.get(command) ?? 0) + used);
    }
    const top = [...byCommand].sort((a, b) => b[1] - a[1])[0];
    return { seconds, top: top === undefined ? undefined : `${top[0]} ${top[1].toFixed(1)} s` };
  }

  private sample(): void {
    const own = new Set(this.ownPids());
    const byCommand = new Map<string, number>();
    let seconds = 0;
    for (const entry of fs.readdirSync("/proc")) {
      const pid = Number(entry);
      if (!Number.isInteger(pid)) continue;
      const stat = readProcStat(pid);
      if (stat === undefined || stat.kernelThread) continue;
      // Children of our processes (sync, git, du) are ours too.
      if (own.has(pid) || own.has(stat.ppid)) continue;
      const previous = this.lastTicks.get(pid);
      this.lastTicks.set(pid, stat.ticks);
      if (previous === undefined || stat.ticks <= previous) continue;
      const used = (stat.ticks - previous) / CLOCK_TICKS_PER_SECOND;
      seconds += used;
      byCommand.set(stat.command, (byCommand.get(stat.command) ?? 0) + used);
    }
    this.samples.push({ atMs: performance.now(), seconds, byCommand });
  }
}

const CLOCK_TICKS_PER_SECOND = 100;
/** Other processes using this much CPU during a phase make its numbers suspect. */
export const FOREIGN_CPU_NOISY_SECONDS = 5;
const FOREIGN_CPU_SAMPLE_MS = 1000;

function readProcStat(pid: number): { ppid: number; ticks: number; command: string; kernelThread: boolean } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined; // exited meanwhile
  }
  const close = text.lastIndexOf(")");
  const command = text.slice(text.indexOf("(") + 1, close);
  const fields = text.slice(close + 2).split(" "); // fields[0] is field 3 (state)
  const flags = Number(fields[6]);
  const PF_KTHREAD = 0x00200000;
  return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]), command, kernelThread: (flags & PF_KTHREAD) !== 0 };
}
