// The hold queue: requests on held volumes wait in order, run at the last release, and each
// release reports what its hold cost (held time, requests queued, the longest wait).
import { describe, expect, test } from "bun:test";
import { HoldQueue } from "../../core/snapshot/hold-queue.ts";

function queueWithClock() {
  let nowMs = 0;
  const full: string[][] = [];
  const queue = new HoldQueue(3, (ids) => full.push(ids), () => nowMs);
  return { queue, full, advance: (ms: number) => (nowMs += ms) };
}

describe("HoldQueue", () => {
  test("runs queued requests in order at release and reports the hold's cost", async () => {
    const { queue, advance } = queueWithClock();
    queue.hold("s1", ["db"]);
    advance(2);
    const ran: string[] = [];
    const first = queue.enqueue("db", () => ran.push("first"));
    advance(3);
    const second = queue.enqueue("db", () => ran.push("second"));
    advance(1);
    expect(ran).toEqual([]);
    expect(queue.release("s1", ["db"])).toEqual({ heldMs: 6, queued: 2, longestWaitMs: 4 });
    await Promise.all([first, second]);
    expect(ran).toEqual(["first", "second"]);
    expect(queue.isHeld("db")).toBe(false);
  });

  test("a request under two overlapping holds runs at the second release; a hold nobody met reports no wait", async () => {
    const { queue, advance } = queueWithClock();
    queue.hold("s1", ["db", "logs"]);
    queue.hold("s2", ["db"]);
    let ran = false;
    const request = queue.enqueue("db", () => (ran = true));
    advance(5);
    expect(queue.release("s1", ["db", "logs"])).toEqual({ heldMs: 5, queued: 0, longestWaitMs: 0 });
    expect(ran).toBe(false);
    advance(1);
    expect(queue.release("s2", ["db"])).toEqual({ heldMs: 6, queued: 1, longestWaitMs: 6 });
    await request;
    expect(ran).toBe(true);
  });

  test("a full queue asks for the holds to be given up and refuses while still held", async () => {
    const { queue, full } = queueWithClock();
    queue.hold("s1", ["db"]);
    for (let i = 0; i < 3; i++) void queue.enqueue("db", () => i);
    await expect(queue.enqueue("db", () => 0)).rejects.toMatchObject({ code: "HOLD_TIMEOUT" });
    expect(full).toEqual([["s1"]]);
  });

  test("a replicated write that must follow one snapshot's cut waits for that hold only, not for another one", async () => {
    const { queue } = queueWithClock();
    queue.hold("x", ["db"]);
    queue.hold("y", ["db"]);
    expect(queue.isHeldByAny("db", ["x"])).toBe(true);
    expect(queue.isHeldByAny("db", ["z"])).toBe(false);
    const ran: string[] = [];
    const afterX = queue.enqueue("db", () => ran.push("after x"), ["x"]);
    const afterAll = queue.enqueue("db", () => ran.push("after all"));
    queue.release("x", ["db"]);
    await afterX;
    expect(ran).toEqual(["after x"]);
    queue.release("y", ["db"]);
    await afterAll;
    expect(ran).toEqual(["after x", "after all"]);
  });
});
