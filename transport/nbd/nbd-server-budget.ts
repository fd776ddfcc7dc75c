// The NBD server's shared budgets: input buffered, READ/WRITE bytes executing and replies not yet
// taken, summed over every connection. Each connection holds an account and reports its own
// amounts; the budget keeps the sums, so no counter is kept by hand in two places, and a sum or
// an account that goes negative is a bug that stops the node (core/invariant.ts).
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { invariant } from "../../core/invariant.ts";

/**
 * Input buffered by all connections together (partial requests, WRITE payloads still arriving).
 * Past it, a connection that holds more than its share when more arrives is dropped: clients
 * that send most of a 32 MiB WRITE and stall must not add up to gigabytes.
 */
export const MAX_SERVER_INPUT_BYTES = 128 * 1024 * 1024;
/**
 * READ/WRITE bytes in flight on all connections together. Beyond the memory, this bounds what
 * this node asks of a peer at once: forwarded reads whose replies outrun the mesh link's send
 * queue (256 MiB) made the peer drop the link as "not reading".
 */
export const MAX_SERVER_IN_FLIGHT_BYTES = 128 * 1024 * 1024;
/** Replies not yet taken by their clients, all connections together; see canAdmit() and unsentOverShare(). */
export const MAX_SERVER_UNSENT_BYTES = 128 * 1024 * 1024;
/** Unsent replies above this stop new requests: a client that does not read gets no more work. */
export const OUTBOX_HIGH_WATER_BYTES = 2 * MAX_REQUEST_BYTES;
/** Replies smaller than this produced in one tick go out in one socket write (one syscall). */
export const COALESCE_REPLY_BYTES = 64 * 1024;
/** Bytes of READ/WRITE payload held by requests in flight; bounds memory per connection. */
export const MAX_IN_FLIGHT_BYTES = 4 * MAX_REQUEST_BYTES;

/** Collections after cuts are at least this far apart (a flood is cut client by client, a few ms apart). */
const SHED_COLLECT_DELAY_MS = 200;

export class NbdServerBudget {
  private inputBytes = 0;
  private executingBytes = 0;
  private unsentBytes = 0;
  private connections = 0;
  private collectTimer: ReturnType<typeof setTimeout> | undefined;
  private collectAgain = false;

  /** `wakeBlocked`: the in-flight budget has room again; connections paused for it may read. */
  constructor(private readonly wakeBlocked: () => void) {}

  /** An account for a new connection (counted for fair shares until it is closed). */
  open(): NbdBudgetAccount {
    this.connections++;
    return new NbdBudgetAccount(this);
  }

  get connectionCount(): number {
    return this.connections;
  }

  /**
   * A client was cut for holding too much (input, or replies it does not read): what it held is
   * garbage now, up to the budgets' 128 MiB each. A full collection at once, and one more after a
   * burst of cuts (at most one per 200 ms), gives it back; left to the collector's own pace, a node cut under a
   * flood kept 160-330 MiB more resident (fuzz test: 596-775 MiB after its stalled readers).
   */
  collectShed(): void {
    if (this.collectTimer !== undefined) {
      this.collectAgain = true;
      return;
    }
    const collect = (): void => {
      this.collectAgain = false;
      Bun.gc(true);
      // Cuts in the meantime (a flood is cut client by client) get one more, trailing collection.
      this.collectTimer = setTimeout(() => {
        this.collectTimer = undefined;
        if (this.collectAgain) this.collectShed();
      }, SHED_COLLECT_DELAY_MS);
      this.collectTimer.unref?.();
    };
    this.collectTimer = setTimeout(collect, 0);
  }

  /** What one connection may hold of a server-wide budget (at least one request's worth). */
  fairShare(budgetBytes: number): number {
    return budgetBytes / Math.max(1, this.connections);
  }

  /** Whether more input of `chunkBytes` would take the server past its input budget. */
  inputWouldOverflow(chunkBytes: number): boolean {
    return this.inputBytes + chunkBytes > MAX_SERVER_INPUT_BYTES;
  }

  get unsentOverBudget(): boolean {
    return this.unsentBytes > MAX_SERVER_UNSENT_BYTES;
  }

  get inFlightFull(): boolean {
    return this.executingBytes >= MAX_SERVER_IN_FLIGHT_BYTES;
  }

  /** @internal for NbdBudgetAccount */
  adjust(kind: "input" | "unsent" | "executing", deltaBytes: number): void {
    if (kind === "input") this.inputBytes += deltaBytes;
    else if (kind === "unsent") this.unsentBytes += deltaBytes;
    else {
      const wasFull = this.inFlightFull;
      this.executingBytes += deltaBytes;
      if (wasFull && !this.inFlightFull) this.wakeBlocked();
    }
    // Checked per request: the message is built only when it is broken (no closure on the data path).
    if (this.inputBytes < 0 || this.unsentBytes < 0 || this.executingBytes < 0) invariant(false, `nbd server budget went negative: ${this.describe()}`);
  }

  /** @internal for NbdBudgetAccount */
  closeAccount(): void {
    this.connections--;
    invariant(this.connections >= 0, "nbd server budget: more accounts closed than opened");
  }

  describe(): string {
    return `input ${this.inputBytes} B, executing ${this.executingBytes} B, unsent ${this.unsentBytes} B, ${this.connections} connections`;
  }
}

/** One connection's part of the server's budgets. */
export class NbdBudgetAccount {
  private inputBytes = 0;
  private unsentBytes = 0;
  private executingBytes = 0;
  private closed = false;

  constructor(private readonly budget: NbdServerBudget) {}

  /** This connection now buffers `bytes` of input. */
  setInput(bytes: number): void {
    this.budget.adjust("input", bytes - this.inputBytes);
    this.inputBytes = bytes;
  }

  /** This connection now has `bytes` of replies its client has not taken. */
  setUnsent(bytes: number): void {
    this.budget.adjust("unsent", bytes - this.unsentBytes);
    this.unsentBytes = bytes;
  }

  get unsent(): number {
    return this.unsentBytes;
  }

  startExecuting(bytes: number): void {
    this.executingBytes += bytes;
    this.budget.adjust("executing", bytes);
  }

  finishExecuting(bytes: number): void {
    this.executingBytes -= bytes;
    if (this.executingBytes < 0) invariant(false, `nbd connection finished ${bytes} B more than it started executing`);
    this.budget.adjust("executing", -bytes);
  }

  /** While the server's input budget is spent, a connection holding more than its share is dropped. */
  inputOverShare(chunkBytes: number, bufferedBytes: number): boolean {
    return this.budget.inputWouldOverflow(chunkBytes) && bufferedBytes > this.budget.fairShare(MAX_SERVER_INPUT_BYTES);
  }

  /** While the server's unsent replies are over budget, a client holding more than its share is cut. */
  unsentOverShare(): boolean {
    return this.budget.unsentOverBudget && this.unsentBytes > this.budget.fairShare(MAX_SERVER_UNSENT_BYTES);
  }

  /**
   * Whether this connection may start another request, by the byte budgets: each connection may
   * use its share of the server-wide budgets (at least one request), so no client, reading or
   * not, can take them all and stall the others.
   */
  mayAdmit(ownInFlightBytes: number, ownUnsentBytes: number, outboxHighWaterBytes: number): boolean {
    return (
      ownInFlightBytes < Math.min(MAX_IN_FLIGHT_BYTES, this.budget.fairShare(MAX_SERVER_IN_FLIGHT_BYTES)) &&
      ownUnsentBytes < Math.min(outboxHighWaterBytes, this.budget.fairShare(MAX_SERVER_UNSENT_BYTES)) &&
      !this.budget.inFlightFull
    );
  }

  /** The connection is gone: its input and unsent replies no longer count (executing requests finish on their own). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.setInput(0);
    this.setUnsent(0);
    this.budget.closeAccount();
  }
}
