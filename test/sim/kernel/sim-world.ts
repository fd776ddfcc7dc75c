// The ground every simulated world stands on: its virtual time and its random streams, split so
// that faults and the network draw from forks of their own (adding a draw in one leaves the
// others' runs as they were), and the scheduling helpers each world's code uses.
import { Prng } from "./prng.ts";
import { Scheduler, type Incarnated } from "./scheduler.ts";

export abstract class SimWorld {
  protected readonly sim: Scheduler;
  /** The workload's and the scenario's stream. */
  protected readonly rng: Prng;
  protected readonly faultRng: Prng;
  protected readonly netRng: Prng;

  constructor(seed: number, trace?: (line: string) => void) {
    this.sim = new Scheduler(trace);
    this.rng = new Prng(seed);
    this.faultRng = this.rng.fork();
    this.netRng = this.rng.fork();
  }

  /**
   * A run's phases: the workload and the faults are planned, the faults heal at `activeEndMs`,
   * and the world runs on until `quiesceEndMs` so the protocol can settle (at most `eventBudget`
   * events: more is a livelock). What stopped it early, if anything, goes to `record.errors`.
   */
  protected runPhases(phases: { activeEndMs: number; quiesceEndMs: number; eventBudget: number }, record: { errors: string[]; eventCount: number }): void {
    this.planWorkload();
    this.planFaults();
    this.at(phases.activeEndMs, () => this.heal());
    const { events, error } = this.sim.run(phases.quiesceEndMs, phases.eventBudget);
    if (error !== undefined) record.errors.push(error);
    record.eventCount = events;
  }

  protected abstract planWorkload(): void;
  protected abstract planFaults(): void;
  /** The end of the faulty phase: the network stops losing messages, nodes that are down restart. */
  protected abstract heal(): void;

  protected get nowMs(): number {
    return this.sim.nowMs;
  }

  protected at(atMs: number, run: () => void): void {
    this.sim.at(atMs, run);
  }

  /** Runs `run` at `atMs` only if the node is still up in the same incarnation. */
  protected atOn(node: Incarnated, atMs: number, run: () => void): void {
    this.sim.atOn(node, atMs, run);
  }

  protected log(line: string): void {
    this.sim.log(line);
  }
}
