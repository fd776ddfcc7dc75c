// Orders actions after durability work: each `after` runs once everything tracked before it is
// done. Work reports completion through a callback rather than a promise, so the same gate runs
// on the node (completion from an fsync's promise) and in the simulation (completion from an
// event on its virtual clock), where a crash before completion means the action never runs.

/** Called once when the work is durable (no argument) or failed (the error). */
export type Completion = (error?: { failure: unknown }) => void;

interface Link {
  failure: { failure: unknown } | undefined;
  /** Run in order once this work settles: later work to start, actions waiting on it. */
  waiters: (() => void)[];
}

export class DurabilityGate {
  private tail: Link | undefined;

  constructor(private readonly onFailure: (err: unknown) => void) {}

  /** Starts `work` once the work tracked before it settled (failed or not); actions from now on wait for it. */
  track(work: (done: Completion) => void): void {
    const previous = this.tail;
    const link: Link = { failure: undefined, waiters: [] };
    this.tail = link;
    let settled = false;
    const start = () =>
      work((failure) => {
        if (settled) return;
        settled = true;
        link.failure = failure;
        if (this.tail === link) this.tail = undefined;
        for (const waiter of link.waiters) waiter();
      });
    if (previous) previous.waiters.push(start);
    else start();
  }

  /** Runs `run` once the work tracked so far is durable; if the last of it failed, `dropped` instead. */
  after(run: () => void, dropped: () => void = () => {}): void {
    const link = this.tail;
    if (!link) return run();
    link.waiters.push(() => {
      if (!link.failure) return run();
      dropped();
      this.onFailure(link.failure.failure);
    });
  }
}

/** Adapts promise-returning durability work (the node's fsyncs) to the gate. */
export function settleWith(work: () => Promise<void>): (done: Completion) => void {
  return (done) => {
    let promise: Promise<void>;
    try {
      promise = work();
    } catch (err) {
      promise = Promise.reject(err);
    }
    promise.then(
      () => done(),
      (err: unknown) => done({ failure: err }),
    );
  };
}
