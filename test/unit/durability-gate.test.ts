// The durability gate's order, which the snapshot effect runner rests on: an action waits for
// all work tracked before it, work runs one piece after another, and a failure drops the actions
// waiting on it (once told) while later work still runs.
import { describe, expect, test } from "bun:test";
import { DurabilityGate, settleWith, type Completion } from "../../core/snapshot/durability-gate.ts";

function manualWork(): { work: (done: Completion) => void; started: () => boolean; finish: (error?: unknown) => void } {
  let done: Completion | undefined;
  return {
    work: (d) => (done = d),
    started: () => done !== undefined,
    finish: (error) => done!(error === undefined ? undefined : { failure: error }),
  };
}

describe("DurabilityGate", () => {
  test("with nothing tracked an action runs at once", () => {
    const ran: string[] = [];
    new DurabilityGate(() => {}).after(() => ran.push("now"));
    expect(ran).toEqual(["now"]);
  });

  test("actions wait for the work tracked before them, in order; work runs one after another", () => {
    const gate = new DurabilityGate(() => {});
    const ran: string[] = [];
    const first = manualWork();
    const second = manualWork();
    gate.track(first.work);
    gate.after(() => ran.push("after first"));
    gate.track(second.work);
    gate.after(() => ran.push("after second"));
    expect(second.started()).toBe(false);
    first.finish();
    expect(ran).toEqual(["after first"]);
    expect(second.started()).toBe(true);
    second.finish();
    expect(ran).toEqual(["after first", "after second"]);
    gate.after(() => ran.push("idle again"));
    expect(ran.at(-1)).toBe("idle again");
  });

  test("a failure drops the actions waiting on it and reports it; the next work still runs", () => {
    const failures: unknown[] = [];
    const gate = new DurabilityGate((err) => failures.push(err));
    const ran: string[] = [];
    const failing = manualWork();
    const next = manualWork();
    gate.track(failing.work);
    gate.after(
      () => ran.push("ran"),
      () => ran.push("dropped"),
    );
    gate.track(next.work);
    gate.after(() => ran.push("after next"));
    failing.finish("disk full");
    expect(ran).toEqual(["dropped"]);
    expect(failures).toEqual(["disk full"]);
    next.finish();
    expect(ran).toEqual(["dropped", "after next"]);
  });

  test("promise work settles through settleWith, a throw counting as a failure", async () => {
    const failures: unknown[] = [];
    const gate = new DurabilityGate((err) => failures.push(err));
    const ran: string[] = [];
    gate.track(settleWith(() => Promise.resolve()));
    gate.after(() => ran.push("synced"));
    gate.track(
      settleWith(() => {
        throw new Error("sync refused");
      }),
    );
    gate.after(() => ran.push("never"));
    await Bun.sleep(0);
    expect(ran).toEqual(["synced"]);
    expect(failures.map((err) => (err as Error).message)).toEqual(["sync refused"]);
  });
});
