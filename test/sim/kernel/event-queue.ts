// The simulation's agenda: events ordered by virtual time, ties broken by insertion order, so a
// run is a pure function of its seed. A binary heap keeps each step O(log n).

interface Scheduled {
  atMs: number;
  seq: number;
  run: () => void;
}

export class EventQueue {
  private readonly heap: Scheduled[] = [];
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  push(atMs: number, run: () => void): void {
    const item = { atMs, seq: this.seq++, run };
    const heap = this.heap;
    heap.push(item);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(item, heap[parent]!)) break;
      heap[i] = heap[parent]!;
      i = parent;
    }
    heap[i] = item;
  }

  /**
   * Runs events in time order until none is left or the next comes after `untilMs`, telling
   * `onTime` each event's time first. Stops with an error text after `budget` events (a
   * livelock) or at an exception (its stack); returns how many events ran.
   */
  runUntil(untilMs: number, budget: number, onTime: (atMs: number) => void): { events: number; error?: string } {
    let events = 0;
    let nowMs = 0;
    try {
      for (;;) {
        const event = this.pop();
        if (!event || event.atMs > untilMs) return { events };
        if (++events > budget) return { events, error: `event budget of ${budget} exceeded at ${nowMs.toFixed(3)} ms (livelock?)` };
        nowMs = event.atMs;
        onTime(nowMs);
        event.run();
      }
    } catch (err) {
      return { events, error: `exception at ${nowMs.toFixed(3)} ms: ${(err as Error).stack ?? String(err)}` };
    }
  }

  pop(): Scheduled | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (heap.length === 0 || !last) return top;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child = right < heap.length && before(heap[right]!, heap[left]!) ? right : left;
      if (!before(heap[child]!, last)) break;
      heap[i] = heap[child]!;
      i = child;
    }
    heap[i] = last;
    return top;
  }
}

function before(x: Scheduled, y: Scheduled): boolean {
  return x.atMs < y.atMs || (x.atMs === y.atMs && x.seq < y.seq);
}
