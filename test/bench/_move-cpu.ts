// CPU use during a page-move benchmark phase (test/bench/move.ts): was it short of CPU, and who
// used it? From /proc: the nodes' own time and the whole machine's busy time.
import * as fs from "node:fs";
import * as os from "node:os";
import type { TestNode } from "../integration/_cluster.ts";

// ---- CPU use: was a phase short of CPU, and who used it?

const CLOCK_TICKS_PER_SECOND = 100;

/** utime + stime of a process in seconds (0 once it is gone). */
function processCpuSeconds(pid: number | undefined): number {
  try {
    // The command may contain spaces: fields are counted after its closing parenthesis.
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return 0;
  }
}

/** Busy CPU seconds of the whole machine (every core; iowait and idle excluded). */
function machineBusySeconds(): number {
  const [, user, nice, system, , , irq, softirq, steal] = fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).map(Number);
  return (user! + nice! + system! + irq! + softirq! + steal!) / CLOCK_TICKS_PER_SECOND;
}

export interface CpuUse {
  wallSeconds: number;
  /** CPU seconds per node over the wall time. */
  nodes: Record<string, number>;
  machineBusySeconds: number;
  machineSeconds: number;
}

/** CPU seconds the nodes and the whole machine used while `work` ran. */
export async function cpuDuring<T>(nodes: TestNode[], work: () => Promise<T>): Promise<{ result: T; cpu: CpuUse }> {
  const nodesBefore = nodes.map((node) => processCpuSeconds(node.proc?.pid));
  const busyBefore = machineBusySeconds();
  const started = performance.now();
  const result = await work();
  const wallSeconds = (performance.now() - started) / 1000;
  const cpu: CpuUse = {
    wallSeconds,
    nodes: Object.fromEntries(nodes.map((node, index) => [node.id, processCpuSeconds(node.proc?.pid) - nodesBefore[index]!])),
    machineBusySeconds: machineBusySeconds() - busyBefore,
    machineSeconds: wallSeconds * os.cpus().length,
  };
  return { result, cpu };
}

export function describeCpu(cpu: CpuUse): string {
  const nodes = Object.entries(cpu.nodes).map(([node, seconds]) => `${node} ${seconds.toFixed(1)} s`).join(", ");
  return `CPU over ${cpu.wallSeconds.toFixed(1)} s: ${nodes}; whole machine busy ${cpu.machineBusySeconds.toFixed(1)} of ${cpu.machineSeconds.toFixed(1)} CPU-s`;
}
