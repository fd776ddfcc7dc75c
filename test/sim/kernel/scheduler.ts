// The simulation's virtual time: one agenda of events, a clock that jumps from one to the next,
// and timers that die with the node incarnation that set them (a crash cancels them all, as a
// process exit does). Every world schedules through it, so a run is a pure function of its seed.
import { EventQueue } from "./event-queue.ts";

/** What a timer needs to know of a node: whether the incarnation that set it still runs. */
export interface Incarnated {
  readonly up: boolean;
  readonly incarnation: number;
}

export class Scheduler {
  nowMs = 0;
  private readonly agenda = new EventQueue();

  constructor(private readonly trace?: (line: string) => void) {}

  /** Runs `run` at `atMs` (never in the past). */
  at(atMs: number, run: () => void): void {
    this.agenda.push(Math.max(atMs, this.nowMs), run);
  }

  /** Runs `run` at `atMs` only if the node is still up in the same incarnation. */
  atOn(node: Incarnated, atMs: number, run: () => void): void {
    const incarnation = node.incarnation;
    this.at(atMs, () => {
      if (node.up && node.incarnation === incarnation) run();
    });
  }

  log(line: string): void {
    this.trace?.(`${this.nowMs.toFixed(3).padStart(9)} ${line}`);
  }

  /** Runs the agenda up to `untilMs`, at most `budget` events (more is a livelock). */
  run(untilMs: number, budget: number): { events: number; error?: string } {
    return this.agenda.runUntil(untilMs, budget, (atMs) => (this.nowMs = atMs));
  }
}
