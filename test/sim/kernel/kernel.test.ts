// The simulation kernel's promises, which both worlds rely on: time order with insertion order
// for ties, timers that die with the incarnation that set them, a crash that drops exactly the
// volatile half, per-link order when asked for (and reordering when not), loss and healing.
import { describe, expect, test } from "bun:test";
import { Network, type NetworkOptions } from "./network.ts";
import { Prng } from "./prng.ts";
import { Scheduler } from "./scheduler.ts";
import { SimNode } from "./sim-node.ts";

function deliveries(options: Partial<NetworkOptions>, sends: number, seed = 7): { order: number[]; sim: Scheduler; network: Network<number> } {
  const sim = new Scheduler();
  const order: number[] = [];
  const network = new Network<number>(sim, new Prng(seed), { delayMaxMs: 10, lossRate: 0, fifoPerLink: false, selfImmediate: false, ...options }, (_from, _to, n) => order.push(n));
  for (let n = 0; n < sends; n++) network.send("a", "b", n);
  sim.run(10_000, 100_000);
  return { order, sim, network };
}

describe("simulation kernel", () => {
  test("events run in time order, ties in the order they were scheduled", () => {
    const sim = new Scheduler();
    const seen: string[] = [];
    sim.at(5, () => seen.push("b"));
    sim.at(1, () => seen.push("a"));
    sim.at(5, () => seen.push("c"));
    sim.at(1, () => sim.at(0, () => seen.push("a2 (never in the past)")));
    expect(sim.run(100, 100)).toEqual({ events: 5 });
    expect(seen).toEqual(["a", "a2 (never in the past)", "b", "c"]);
  });

  test("a livelock ends the run with an error, not a hang", () => {
    const sim = new Scheduler();
    const again = (): void => sim.at(sim.nowMs, again);
    again();
    expect(sim.run(100, 50).error).toContain("event budget of 50 exceeded");
  });

  test("a crash cancels the node's timers and drops its volatile half only", () => {
    const sim = new Scheduler();
    const node = new SimNode("n0", { disk: [] as number[] }, (durable) => ({ cache: [...durable.disk] }));
    const fired: string[] = [];
    node.durable.disk.push(1);
    node.volatile.cache.push(1, 2);
    sim.atOn(node, 10, () => fired.push("before crash"));
    sim.at(5, () => node.crash());
    sim.at(6, () => node.restart());
    sim.at(7, () => sim.atOn(node, 8, () => fired.push("after restart")));
    sim.run(100, 100);
    expect(fired).toEqual(["after restart"]);
    expect(node.incarnation).toBe(1);
    expect(node.durable.disk).toEqual([1]);
    expect(node.volatile.cache).toEqual([1]);
  });

  test("a FIFO link keeps the send order; without it messages are reordered", () => {
    expect(deliveries({ fifoPerLink: true }, 200).order).toEqual(Array.from({ length: 200 }, (_, n) => n));
    const reordered = deliveries({ fifoPerLink: false }, 200).order;
    expect(reordered.length).toBe(200);
    expect(reordered).not.toEqual(Array.from({ length: 200 }, (_, n) => n));
  });

  test("loss drops about its share, duplication adds about its share, healing stops both", () => {
    expect(deliveries({ lossRate: 0.3 }, 2000).order.length).toBeWithin(1200, 1600);
    expect(deliveries({ dupRate: 0.3, lateDupRate: 0.5 }, 2000).order.length).toBeWithin(2400, 2800);
    const sim = new Scheduler();
    let delivered = 0;
    const network = new Network<number>(sim, new Prng(3), { delayMaxMs: 1, lossRate: 0.5, dupRate: 0.5, fifoPerLink: false, selfImmediate: false }, () => delivered++);
    network.heal();
    for (let n = 0; n < 500; n++) network.send("a", "b", n);
    sim.run(1000, 10_000);
    expect(delivered).toBe(500);
  });

  test("a node's message to itself arrives at once when the mesh does that, and is never lost", () => {
    const sim = new Scheduler();
    const at: number[] = [];
    const network = new Network<number>(sim, new Prng(1), { delayMaxMs: 10, lossRate: 1, fifoPerLink: false, selfImmediate: true }, () => at.push(sim.nowMs));
    sim.at(3, () => network.send("a", "a", 1));
    sim.run(100, 100);
    expect(at).toEqual([3]);
  });
});
