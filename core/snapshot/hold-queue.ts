// Requests that arrive for a volume while a hold-mode snapshot holds it wait here, in arrival
// order, and run when the last hold on their volume is released (or, for a replicated write,
// when the holds it must follow are). Bounded: a full queue makes the node give the hold up
// rather than queue without limit.
import { ShoalError } from "../errors.ts";
import type { HoldReport } from "./snapshot-messages.ts";

interface Waiting {
  volume: string;
  enqueuedAtMs: number;
  run: () => void;
  /** Waits only for these snapshots' holds (undefined: for every hold on the volume). */
  onlyFor?: readonly string[];
}

export class HoldQueue {
  /** volume name -> ids of the snapshots holding it */
  private readonly holds = new Map<string, Set<string>>();
  private waiting: Waiting[] = [];
  /** snapshot id -> when its hold started */
  private readonly startedAtMs = new Map<string, number>();

  constructor(
    readonly maxWaiting: number,
    /** Told when the queue is full, so the holds can be abandoned. */
    private readonly onFull: (snapshotIds: string[]) => void,
    /** A monotonic clock in ms, for what each hold cost. */
    private readonly now: () => number,
  ) {}

  isHeld(volume: string): boolean {
    return this.holds.size > 0 && this.holds.has(volume);
  }

  /** Whether any of `snapshotIds` holds `volume`. */
  isHeldByAny(volume: string, snapshotIds: readonly string[]): boolean {
    const ids = this.holds.get(volume);
    return ids !== undefined && snapshotIds.some((id) => ids.has(id));
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  hold(snapshotId: string, volumes: string[]): void {
    if (!this.startedAtMs.has(snapshotId)) this.startedAtMs.set(snapshotId, this.now());
    for (const volume of volumes) {
      let ids = this.holds.get(volume);
      if (!ids) this.holds.set(volume, (ids = new Set()));
      ids.add(snapshotId);
    }
  }

  /**
   * Drops one snapshot's hold and starts, in order, every waiting request no hold covers any more.
   * Reports how long the hold lasted and what the requests it released waited.
   */
  release(snapshotId: string, volumes: string[]): HoldReport {
    const nowMs = this.now();
    const heldMs = nowMs - (this.startedAtMs.get(snapshotId) ?? nowMs);
    this.startedAtMs.delete(snapshotId);
    for (const volume of volumes) {
      const ids = this.holds.get(volume);
      if (!ids) continue;
      ids.delete(snapshotId);
      if (ids.size === 0) this.holds.delete(volume);
    }
    const stillHeld: Waiting[] = [];
    const runnable: Waiting[] = [];
    for (const entry of this.waiting) {
      const held = entry.onlyFor ? this.isHeldByAny(entry.volume, entry.onlyFor) : this.holds.has(entry.volume);
      (held ? stillHeld : runnable).push(entry);
    }
    this.waiting = stillHeld;
    let longestWaitMs = 0;
    for (const entry of runnable) {
      longestWaitMs = Math.max(longestWaitMs, nowMs - entry.enqueuedAtMs);
      entry.run();
    }
    return { heldMs, queued: runnable.length, longestWaitMs };
  }

  /**
   * Runs `start` once `volume` is no longer held (by any of `onlyFor`, when given); resolves with
   * what it returns.
   */
  enqueue<T>(volume: string, start: () => T | Promise<T>, onlyFor?: readonly string[]): Promise<T> {
    if (this.waiting.length >= this.maxWaiting) {
      const ids = [...(this.holds.get(volume) ?? [])];
      this.onFull(ids);
      if (onlyFor ? this.isHeldByAny(volume, onlyFor) : this.isHeld(volume)) {
        return Promise.reject(new ShoalError("HOLD_TIMEOUT", `too many requests (${this.maxWaiting}) wait on a snapshot hold of '${volume}'`));
      }
      return Promise.resolve().then(start);
    }
    return new Promise<T>((resolve, reject) => {
      this.waiting.push({
        volume,
        ...(onlyFor ? { onlyFor } : {}),
        enqueuedAtMs: this.now(),
        run: () => {
          try {
            Promise.resolve(start()).then(resolve, reject);
          } catch (err) {
            reject(err);
          }
        },
      });
    });
  }
}
