// NBD writes kept in flight up to a bound while the input is read (restore, import). A write
// that fails is remembered and thrown at the next add or drain: it is never an unhandled
// rejection, which would end the process with the wrong error while the input stalls.

export class RequestsInFlight {
  private readonly inFlight = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;

  constructor(private readonly maxInFlight: number) {}

  /** Sends on; waits while `maxInFlight` are outstanding; throws an earlier request's failure. */
  async add(request: Promise<void>): Promise<void> {
    this.throwIfFailed();
    const tracked: Promise<void> = request.then(
      () => void this.inFlight.delete(tracked),
      (error: unknown) => {
        this.inFlight.delete(tracked);
        this.failure ??= { error };
      },
    );
    this.inFlight.add(tracked);
    if (this.inFlight.size >= this.maxInFlight) await Promise.race(this.inFlight);
    this.throwIfFailed();
  }

  /** Every request answered; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.inFlight);
    this.throwIfFailed();
  }

  /** On a failure path: wait until nothing is outstanding, whatever the answers. */
  async settle(): Promise<void> {
    await Promise.all(this.inFlight);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }
}
