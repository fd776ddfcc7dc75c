// A simulated node's life: up or down, an incarnation counter (a boot id), and its state split
// in two by type: `durable`, what survives a crash (its disk), and `volatile`, what a crash drops
// (its memory), rebuilt from the durable part by the world's factory at a crash and at restart.
// Keeping each part in one object means a crash cannot forget a field: there is no field-by-field
// reset to keep up to date.
import type { Incarnated } from "./scheduler.ts";

export class SimNode<Durable, Volatile> implements Incarnated {
  up = true;
  incarnation = 0;
  volatile: Volatile;

  constructor(
    readonly id: string,
    readonly durable: Durable,
    private readonly freshVolatile: (durable: Durable) => Volatile,
  ) {
    this.volatile = freshVolatile(durable);
  }

  /** The process dies: timers of this incarnation never fire, memory is gone. */
  crash(): void {
    this.up = false;
    this.incarnation++;
    this.volatile = this.freshVolatile(this.durable);
  }

  /** The process starts again with memory rebuilt from disk; the world then runs its recovery. */
  restart(): void {
    this.up = true;
    this.volatile = this.freshVolatile(this.durable);
  }
}
