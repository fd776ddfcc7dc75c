// The simulated mesh: messages between nodes delayed at random, lost, duplicated (a duplicate
// may come much later, like a retransmission after a reconnect), slowed, and reordered, except
// on links where the mesh guarantees order (one TCP connection per pair of nodes: FIFO per link,
// reordered only across links). Faults can be healed, which zeroes the rates in force.
import type { Prng } from "./prng.ts";
import type { Scheduler } from "./scheduler.ts";

export interface NetworkOptions {
  delayMaxMs: number;
  lossRate: number;
  /** Duplication and slowness are drawn only when given (a world without them keeps its random stream). */
  dupRate?: number;
  /** Share of duplicates delayed by up to 300 ms more. */
  lateDupRate?: number;
  /** Share of messages delayed 2-8 times longer. */
  slowRate?: number;
  /** Messages on one link arrive in the order sent (the mesh's connections). */
  fifoPerLink: boolean;
  /** A node's message to itself is delivered at once, never lost; otherwise it goes as to any peer. */
  selfImmediate: boolean;
}

export class Network<Payload> {
  private readonly linkFreeAtMs = new Map<string, number>();
  private lossRate: number;
  private dupRate: number | undefined;
  private slowRate: number | undefined;

  constructor(
    private readonly sim: Scheduler,
    private readonly rng: Prng,
    private readonly options: NetworkOptions,
    private readonly deliver: (from: string, to: string, payload: Payload) => void,
    private readonly onLost: (from: string, to: string, payload: Payload) => void = () => {},
  ) {
    this.lossRate = options.lossRate;
    this.dupRate = options.dupRate;
    this.slowRate = options.slowRate;
  }

  send(from: string, to: string, payload: Payload): void {
    const sim = this.sim;
    if (from === to && this.options.selfImmediate) {
      sim.at(sim.nowMs, () => this.deliver(from, to, payload));
      return;
    }
    if (from !== to && this.rng.chance(this.lossRate)) {
      this.onLost(from, to, payload);
      return;
    }
    const copies = this.dupRate !== undefined && this.rng.chance(this.dupRate) ? 2 : 1;
    for (let copy = 0; copy < copies; copy++) {
      const arriveAtMs = this.arrival(`${from}>${to}`, copy > 0);
      sim.at(arriveAtMs, () => this.deliver(from, to, payload));
    }
  }

  /** No more loss, duplication or slowness from now on (the end of a run's faulty phase). */
  heal(): void {
    this.lossRate = 0;
    if (this.dupRate !== undefined) this.dupRate = 0;
    if (this.slowRate !== undefined) this.slowRate = 0;
  }

  private arrival(link: string, duplicate: boolean): number {
    const { delayMaxMs, lateDupRate, fifoPerLink } = this.options;
    let delayMs = this.rng.range(0.05, delayMaxMs);
    if (this.slowRate !== undefined && this.rng.chance(this.slowRate)) delayMs *= this.rng.range(2, 8);
    if (duplicate && lateDupRate !== undefined && this.rng.chance(lateDupRate)) delayMs += this.rng.range(0, 300);
    if (!fifoPerLink) return this.sim.nowMs + delayMs;
    const arriveAtMs = Math.max(this.linkFreeAtMs.get(link) ?? 0, this.sim.nowMs + delayMs);
    this.linkFreeAtMs.set(link, arriveAtMs);
    return arriveAtMs;
  }
}
