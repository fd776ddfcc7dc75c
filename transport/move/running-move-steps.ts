// The move steps running on this node, one per volume at most. Its own object so that the page
// mover (which starts steps) and the snapshot service (which waits for them before a prepare)
// can both be handed it at construction: neither has to know the other, nor be set up later.

export class RunningMoveSteps {
  /** The step running per volume name, settling when it ends. */
  private readonly steps = new Map<string, Promise<unknown>>();

  has(volume: string): boolean {
    return this.steps.has(volume);
  }

  /** True while a step of one of these volumes runs here. */
  anyOf(volumes: string[]): boolean {
    return this.steps.size > 0 && volumes.some((volume) => this.steps.has(volume));
  }

  /** Settles when no step of these volumes runs here (a snapshot prepare waits for that). */
  async idle(volumes: string[]): Promise<void> {
    for (;;) {
      const steps = volumes.map((volume) => this.steps.get(volume)).filter((step) => step !== undefined);
      if (steps.length === 0) return;
      await Promise.allSettled(steps);
    }
  }

  /** Counts `done` as the volume's running step until it settles. */
  track(volume: string, done: Promise<unknown>): void {
    this.steps.set(volume, done);
    const remove = () => {
      if (this.steps.get(volume) === done) this.steps.delete(volume);
    };
    done.then(remove, remove);
  }
}
