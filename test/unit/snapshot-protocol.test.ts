// Focused tests of the snapshot coordinator and participant state machines through their public
// surface: happy paths in both modes, hold timeout, late take, conflicts, crash recovery, and the
// rules the simulation reaches only rarely (prepare nonces, skew allowance, recovered commit wait).
import { describe, expect, test } from "bun:test";
import { ShoalError } from "../../core/errors.ts";
import { SnapshotCoordinator, type CoordinatorEffect } from "../../core/snapshot/snapshot-coordinator.ts";
import type { CoordinatorRecord, NodeId, ParticipantRecord, SnapshotMessage, SnapshotMode } from "../../core/snapshot/snapshot-messages.ts";
import { isToCoordinator } from "../../core/snapshot/snapshot-messages.ts";
import { SnapshotParticipant, type ParticipantEffect } from "../../core/snapshot/snapshot-participant.ts";

type Effect = CoordinatorEffect | ParticipantEffect;

/** Nodes wired by a FIFO mailbox; every node's clock reads `nowMs + offsetMs`. */
class Harness {
  nowMs = 1000;
  readonly coordinators = new Map<NodeId, SnapshotCoordinator>();
  readonly participants = new Map<NodeId, SnapshotParticipant>();
  readonly offsets = new Map<NodeId, number>();
  readonly log: { node: NodeId; effect: Effect }[] = [];
  readonly mailbox: { from: NodeId; to: NodeId; msg: SnapshotMessage }[] = [];
  /** Messages to drop instead of delivering. */
  drop: (m: { from: NodeId; to: NodeId; msg: SnapshotMessage }) => boolean = () => false;

  constructor(nodes: NodeId[], readonly skewMs = 0) {
    for (const id of nodes) this.boot(id);
  }

  boot(id: NodeId): void {
    this.coordinators.set(id, new SnapshotCoordinator({ nodeId: id }));
    this.participants.set(id, new SnapshotParticipant({ nodeId: id, incarnation: `${id}#${this.log.length}`, maxClockSkewMs: this.skewMs }));
  }

  clock(id: NodeId): number {
    return this.nowMs + (this.offsets.get(id) ?? 0);
  }

  apply(node: NodeId, effects: Effect[]): Effect[] {
    for (const effect of effects) {
      this.log.push({ node, effect });
      if (effect.kind === "send") this.mailbox.push({ from: node, to: effect.to, msg: effect.msg });
    }
    return effects;
  }

  start(coordinator: NodeId, snapshotId: string, mode: SnapshotMode, participants: NodeId[], holdTimeoutMs = 2000): void {
    const effects = this.coordinators.get(coordinator)!.startSnapshot({
      snapshotId,
      name: `nightly-${snapshotId}`,
      volumes: ["db"],
      mode,
      participants,
      holdTimeoutMs,
      maxClockSkewMs: this.skewMs,
      nowMs: this.clock(coordinator),
    });
    this.apply(coordinator, effects);
  }

  /** Delivers queued messages until none is left; drain notices are immediate (nothing in flight). */
  pump(): void {
    for (let steps = 0; this.mailbox.length > 0; steps++) {
      if (steps > 1000) throw new Error("message storm");
      const m = this.mailbox.shift()!;
      if (this.drop(m)) continue;
      const now = this.clock(m.to);
      const effects = isToCoordinator(m.msg)
        ? this.coordinators.get(m.to)!.onMessage(m.from, m.msg, now)
        : this.participants.get(m.to)!.onMessage(m.from, m.msg, now);
      this.apply(m.to, effects);
      for (const effect of effects) {
        if (effect.kind === "hold") this.apply(m.to, this.participants.get(m.to)!.onInflightDrained(effect.snapshotId, now));
      }
    }
  }

  tick(id: NodeId): void {
    this.apply(id, this.coordinators.get(id)!.onTick(this.clock(id)));
    this.apply(id, this.participants.get(id)!.onTick(this.clock(id)));
  }

  kinds(node: NodeId): string[] {
    return this.log.filter((l) => l.node === node && l.effect.kind !== "send").map((l) => l.effect.kind);
  }

  done(snapshotId: string): Extract<Effect, { kind: "done" }> | undefined {
    return this.log.map((l) => l.effect).find((e): e is Extract<Effect, { kind: "done" }> => e.kind === "done" && e.snapshotId === snapshotId);
  }

  sent(type: SnapshotMessage["type"]): SnapshotMessage[] {
    return this.log.flatMap((l) => (l.effect.kind === "send" && l.effect.msg.type === type ? [l.effect.msg] : []));
  }

  /** What the coordinator on `node` would find on disk after a crash now. */
  coordinatorRecords(node: NodeId): CoordinatorRecord[] {
    const records = new Map<string, CoordinatorRecord>();
    for (const { node: n, effect } of this.log) {
      if (n !== node) continue;
      if (effect.kind === "persist") records.set(effect.record.snapshotId, effect.record);
      if (effect.kind === "unpersist") records.delete(effect.snapshotId);
    }
    return [...records.values()];
  }
}

describe("hold mode", () => {
  test("holds, cuts and releases, then commits once every participant has taken", () => {
    const h = new Harness(["a", "b", "c"]);
    h.start("a", "a.1", "hold", ["a", "b", "c"]);
    h.pump();
    expect(h.done("a.1")).toMatchObject({ ok: true, result: { pendingOn: [] } });
    for (const node of ["a", "b", "c"]) expect(h.kinds(node).filter((k) => k !== "persist" && k !== "unpersist" && k !== "done")).toEqual(["hold", "cut", "release", "commit"]);
    // The decision is durable before any commit message leaves.
    const aLog = h.log.filter((l) => l.node === "a").map((l) => (l.effect.kind === "send" ? l.effect.msg.type : l.effect.kind));
    expect(aLog.indexOf("persist", 1)).toBeLessThan(aLog.indexOf("snap.commit"));
    expect(h.coordinatorRecords("a")).toEqual([]); // forgotten after every ack
  });

  test("the result names T (when take went out) and each participant's hold report; malformed reports are dropped", () => {
    const h = new Harness(["a", "b", "c"]);
    h.start("a", "a.1", "hold", ["a", "b", "c"]);
    h.drop = (m) => m.msg.type === "snap.taken";
    h.nowMs += 7;
    h.pump();
    const coordinator = h.coordinators.get("a")!;
    const report = { heldMs: 1.5, queued: 3, longestWaitMs: 1.25 };
    h.apply("a", coordinator.onMessage("a", { type: "snap.taken", snapshotId: "a.1", hold: report }, h.nowMs));
    h.apply("a", coordinator.onMessage("b", { type: "snap.taken", snapshotId: "a.1", hold: { heldMs: -1, queued: 0, longestWaitMs: 0 } }, h.nowMs));
    h.apply("a", coordinator.onMessage("c", { type: "snap.taken", snapshotId: "a.1" }, h.nowMs));
    h.drop = () => false;
    h.pump();
    expect(h.done("a.1")).toMatchObject({ ok: true, result: { cutAtMs: 1007, holds: { a: report } } });
    const done = h.done("a.1") as { result: { holds: Record<string, unknown> } };
    expect(Object.keys(done.result.holds)).toEqual(["a"]);
    expect(h.sent("snap.take").every((m) => !("cutAtMs" in m))).toBe(true); // hold-mode takes carry no T
  });

  test("a silent coordinator makes participants release at the hold timeout, shortened by the skew allowance", () => {
    const h = new Harness(["a", "b"], 10);
    h.start("a", "a.1", "hold", ["a", "b"], 500);
    h.drop = (m) => m.msg.type === "snap.take";
    h.pump();
    const b = h.participants.get("b")!;
    expect(b.nextWakeAtMs()).toBe(h.clock("b") + 500 - 20);
    h.nowMs += 479;
    h.tick("b");
    expect(h.kinds("b")).toEqual(["hold"]);
    h.nowMs += 1;
    h.tick("b");
    expect(h.kinds("b")).toEqual(["hold", "release"]);
    expect(h.sent("snap.refuse")).toMatchObject([{ error: { code: "HOLD_TIMEOUT" } }]);
    // A take arriving after the release is refused: release before take is abort.
    h.drop = () => false;
    h.apply("b", b.onMessage("a", { type: "snap.take", snapshotId: "a.1", prepareNonce: "x" }, h.clock("b")));
    expect(h.kinds("b")).toEqual(["hold", "release"]);
    h.pump();
    h.tick("a");
    expect(h.done("a.1")).toMatchObject({ ok: false, error: { code: "HOLD_TIMEOUT" } });
  });

  test("of two overlapping snapshots the older wins: the younger is refused or preempted with CONFLICT", () => {
    const h = new Harness(["a", "b", "c"]);
    h.drop = (m) => m.msg.type === "snap.take"; // keep both in the hold phase
    h.start("a", "a.1", "hold", ["c"]);
    h.pump();
    h.nowMs += 5;
    h.start("b", "b.1", "hold", ["c"]);
    h.pump();
    expect(h.done("b.1")).toMatchObject({ ok: false, error: { code: "CONFLICT" } });
    // Now an even older snapshot (earlier start stamp) preempts a.1's hold on c.
    const c = h.participants.get("c")!;
    const prepare = { type: "snap.prepare" as const, snapshotId: "z.1", name: "older", volumes: ["db"], mode: "hold" as const, startedAtMs: 0, sentAtMs: h.nowMs, holdTimeoutMs: 2000, maxClockSkewMs: 0 };
    const effects = h.apply("c", c.onMessage("z", prepare, h.nowMs));
    expect(effects.map((e) => e.kind)).toEqual(["release", "send", "hold"]);
    expect(effects[1]).toMatchObject({ to: "a", msg: { type: "snap.refuse", error: { code: "CONFLICT" } } });
  });

  test("a take for an earlier prepare is refused after a re-prepare, even with no memory of the first", () => {
    const p = new SnapshotParticipant({ nodeId: "b", incarnation: "b#1", maxClockSkewMs: 0, maxTombstones: 1 });
    const prepare = { type: "snap.prepare" as const, snapshotId: "a.1", name: "n", volumes: ["db"], mode: "hold" as const, startedAtMs: 0, sentAtMs: 0, holdTimeoutMs: 100, maxClockSkewMs: 0 };
    p.onMessage("a", prepare, 0);
    const ready = p.onInflightDrained("a.1", 0)[0] as Extract<ParticipantEffect, { kind: "send" }>;
    const nonce = (ready.msg as { prepareNonce: string }).prepareNonce;
    p.onTick(100); // hold lapses
    p.onMessage("a", { ...prepare, snapshotId: "other", sentAtMs: -5000 }, 100); // refused as stale: its tombstone evicts a.1's
    p.onMessage("a", { ...prepare, sentAtMs: 150 }, 150); // a late duplicate re-prepares
    p.onInflightDrained("a.1", 150);
    const effects = p.onMessage("a", { type: "snap.take", snapshotId: "a.1", prepareNonce: nonce }, 160);
    expect(effects.map((e) => e.kind)).toEqual(["release", "send"]);
    expect(effects[1]).toMatchObject({ msg: { type: "snap.refuse" } });
  });
});

describe("timestamp mode", () => {
  test("once every participant has cut, the coordinator says so and acknowledgements stop waiting, before any commit", () => {
    const h = new Harness(["a", "b"], 5);
    h.start("a", "a.1", "timestamp", ["a", "b"]);
    h.drop = (m) => m.msg.type === "snap.taken"; // no commit: only allcut can lift the fence
    h.pump();
    const cutAtMs = (h.sent("snap.take")[0] as { cutAtMs: number }).cutAtMs;
    const b = h.participants.get("b")!;
    const admission = b.beforeWrite("db", cutAtMs + 1);
    h.apply("b", admission.effects);
    expect(admission.fences).toEqual(["a.1"]);
    h.pump();
    expect(h.sent("snap.allcut")).toEqual([]); // a has not cut yet
    h.nowMs = cutAtMs;
    h.tick("a");
    h.pump();
    expect(h.sent("snap.allcut").length).toBe(2);
    expect(h.kinds("b")).toContain("unfence");
    expect(h.done("a.1")).toBeUndefined(); // still not committed
    expect(b.beforeWrite("db", cutAtMs + 2)).toEqual({ effects: [], ackNotBeforeMs: cutAtMs + 2, fences: [] });
    // An allcut from anyone but the coordinator is ignored.
    const c = new SnapshotParticipant({ nodeId: "c", incarnation: "c#1", maxClockSkewMs: 5 });
    expect(c.onMessage("x", { type: "snap.allcut", snapshotId: "a.1" }, cutAtMs)).toEqual([]);
  });

  test("a replica cuts when its primary's write says the primary cut first: armed, or before its own take came (at the primary's T); unfinished cuts are listed until the commit", () => {
    const h = new Harness(["a", "b", "c"], 5);
    h.start("a", "a.1", "timestamp", ["a", "b", "c"]);
    h.drop = (m) => m.to === "c" && m.msg.type === "snap.take"; // c's take is late
    h.pump();
    const cutAtMs = (h.sent("snap.take")[0] as { cutAtMs: number }).cutAtMs;
    const b = h.participants.get("b")!;
    const c = h.participants.get("c")!;
    expect(b.unfinishedTimestampCuts()).toEqual(new Set());
    // b is armed for T, its clock before T: a write whose primary cut a.1 makes it cut now, fenced.
    const cutB = b.cutForPrimary("a.1", cutAtMs, cutAtMs - 3);
    expect(cutB.map((e) => (e.kind === "send" ? e.msg.type : e.kind))).toEqual(["cut", "snap.cut", "snap.taken"]);
    expect(b.beforeWrite("db", cutAtMs - 2).fences).toEqual(["a.1"]);
    expect(b.unfinishedTimestampCuts()).toEqual(new Set(["a.1"]));
    expect(b.cutForPrimary("a.1", cutAtMs, cutAtMs - 1)).toEqual([]); // cut already
    // c is only prepared (no take yet): it cuts at the primary's T.
    const cutC = c.cutForPrimary("a.1", cutAtMs, cutAtMs - 3);
    expect(cutC[0]).toMatchObject({ kind: "cut", record: { cutAtMs } });
    expect(c.cutForPrimary("x.9", cutAtMs, cutAtMs)).toEqual([]); // a snapshot it does not know
    h.apply("b", cutB);
    h.apply("c", cutC);
    h.drop = () => false;
    h.nowMs = cutAtMs;
    h.tick("a");
    h.pump();
    expect(h.done("a.1")).toMatchObject({ ok: true });
    expect(b.unfinishedTimestampCuts()).toEqual(new Set());
    expect(c.unfinishedTimestampCuts()).toEqual(new Set());
  });

  test("a hold-mode snapshot is never cut for a primary's write (the replica's hold queue orders those)", () => {
    const h = new Harness(["a", "b"]);
    h.start("a", "a.1", "hold", ["a", "b"]);
    h.drop = (m) => m.msg.type === "snap.take";
    h.pump();
    expect(h.participants.get("b")!.cutForPrimary("a.1", 1000, 1000)).toEqual([]);
  });

  test("cuts at the first write stamped at or after T, and commit-waits writes after the cut", () => {
    const h = new Harness(["a", "b"], 5);
    h.offsets.set("b", 4);
    h.start("a", "a.1", "timestamp", ["a", "b"]);
    h.pump();
    const take = h.sent("snap.take")[0] as { cutAtMs: number };
    const cutAtMs = take.cutAtMs;
    // Round trip 0 in this harness; b's clock reads at most 4 + 2 (resolution) ms ahead of a's as
    // measured on prepare/ready, under the skew bound's 2 x 5; margin 20 on the first snapshot.
    expect(cutAtMs).toBe(h.clock("a") + 0 + 6 + 20);
    const b = h.participants.get("b")!;
    expect(b.beforeWrite("db", cutAtMs - 1)).toEqual({ effects: [], ackNotBeforeMs: cutAtMs - 1, fences: [] });
    expect(b.beforeWrite("other", cutAtMs)).toEqual({ effects: [], ackNotBeforeMs: cutAtMs, fences: [] });
    const admission = b.beforeWrite("db", cutAtMs + 1);
    expect(admission.effects.map((e) => (e.kind === "send" ? e.msg.type : e.kind))).toEqual(["cut", "snap.cut", "snap.taken"]);
    // Measured on prepare/ready (zero round trip, 1 ms resolution on both ends): b's offset from a
    // lies in [2, 6] and a's own in [-2, 2], so b waits 6 - (-2) = 8 ms, plus 2 x 500 ppm of the
    // 36 ms from prepare to T + 2 skew; under the skew bound's 10 ms.
    expect(admission.ackNotBeforeMs).toBeCloseTo(cutAtMs + 8.036, 9);
    expect(admission.fences).toEqual(["a.1"]);
    expect(b.beforeWrite("db", cutAtMs + 20).ackNotBeforeMs).toBe(cutAtMs + 20);
    h.apply("b", admission.effects);
    h.nowMs = cutAtMs; // a cuts on its timer
    h.tick("a");
    h.pump();
    expect(h.done("a.1")).toMatchObject({ ok: true, result: { cutAtMs } });
    // After commit every participant has cut, so later writes need no wait.
    expect(b.beforeWrite("db", cutAtMs + 2).ackNotBeforeMs).toBe(cutAtMs + 2);
  });

  test("the cut margin halves with each committed snapshot, and is back at its maximum after a take arrives late", () => {
    const h = new Harness(["a", "b"], 5);
    const leadOf = (snapshotId: string) => (h.sent("snap.take").find((m) => m.snapshotId === snapshotId) as { cutAtMs: number }).cutAtMs - h.clock("a");
    const leads: number[] = [];
    for (let index = 1; index <= 5; index++) {
      h.start("a", `a.${index}`, "timestamp", ["a", "b"]);
      h.pump();
      leads.push(leadOf(`a.${index}`));
      h.nowMs += leads[leads.length - 1]!;
      h.tick("a");
      h.tick("b");
      h.pump();
      expect(h.done(`a.${index}`)).toMatchObject({ ok: true });
    }
    // Measured lead 2 ms (no round trip, 1 ms resolution at each end), then margins 20, 10, 5, 2.5, 2.
    expect(leads).toEqual([22, 12, 7, 5, 4]);
    // b hears of the next take only after its clock passed T: it refuses, the snapshot fails, and
    // the next one gets the whole margin again.
    h.drop = (m) => m.to === "b" && m.msg.type === "snap.take";
    h.start("a", "a.6", "timestamp", ["a", "b"]);
    h.pump();
    h.drop = () => false;
    h.nowMs += 250; // past the take's first resend
    h.tick("a");
    h.tick("b");
    h.pump();
    const late = h.done("a.6") as { ok: false; error: ShoalError };
    expect(late.ok).toBe(false);
    expect(late.error.message).toContain("after its cut time");
    h.start("a", "a.7", "timestamp", ["a", "b"]);
    h.pump();
    expect(leadOf("a.7")).toBe(22);
  });

  test("the clock is in use from prepare until the commit wait ends, and free again after", () => {
    const h = new Harness(["a", "b"], 5);
    const inUse = () => ["a", "b"].map((n) => h.coordinators.get(n)!.clockInUse() || h.participants.get(n)!.clockInUse());
    expect(inUse()).toEqual([false, false]);
    h.start("a", "a.1", "timestamp", ["a", "b"]);
    expect(inUse()).toEqual([true, false]); // the coordinator's readings bracket the ready round trips
    h.drop = (m) => m.msg.type === "snap.taken"; // keep the snapshot undecided: only time ends the waits
    h.pump();
    expect(inUse()).toEqual([true, true]);
    const cutAtMs = (h.sent("snap.take")[0] as { cutAtMs: number }).cutAtMs;
    h.nowMs = cutAtMs + 1;
    h.tick("b"); // b cuts; its commit wait runs
    expect(h.participants.get("b")!.clockInUse()).toBe(true);
    h.nowMs = cutAtMs + 10;
    h.tick("a");
    h.tick("b");
    // Both cut, both waits over; the pending cut and the coordinator's undecided take remain.
    expect(h.participants.get("b")!.clockInUse()).toBe(false);
    expect(h.coordinators.get("a")!.clockInUse()).toBe(true);
    h.drop = () => false;
    h.apply("b", [{ kind: "send", to: "a", msg: { type: "snap.taken", snapshotId: "a.1" } }]);
    h.apply("a", [{ kind: "send", to: "a", msg: { type: "snap.taken", snapshotId: "a.1" } }]);
    h.pump();
    expect(h.done("a.1")).toMatchObject({ ok: true });
    expect(inUse()).toEqual([false, false]);
  });

  test("T and the start time are whole milliseconds though clocks read finer, in both modes", () => {
    for (const mode of ["hold", "timestamp"] as const) {
      const h = new Harness(["a", "b"], 5);
      h.nowMs = 1000.37;
      h.offsets.set("b", 0.21);
      h.start("a", "a.1", mode, ["a", "b"]);
      h.pump();
      h.nowMs = 1100.5; // past T in timestamp mode: a and b cut on their timers
      h.tick("a");
      h.tick("b");
      h.pump();
      const done = h.done("a.1") as { ok: true; result: { cutAtMs: number; startedAtMs: number } };
      expect(done).toMatchObject({ ok: true });
      expect([mode, Number.isInteger(done.result.cutAtMs), done.result.startedAtMs]).toEqual([mode, true, 1000]);
    }
  });

  test("a take that arrives after its cut time is refused and the snapshot fails cleanly", () => {
    const h = new Harness(["a", "b"], 5);
    h.drop = (m) => m.msg.type === "snap.take";
    h.start("a", "a.1", "timestamp", ["a", "b"]);
    h.pump();
    const take = h.sent("snap.take")[1] as { snapshotId: string; prepareNonce: string; cutAtMs: number };
    h.nowMs = take.cutAtMs + 1; // b's take was delayed past T
    h.apply("b", h.participants.get("b")!.onMessage("a", { type: "snap.take", ...take }, h.clock("b")));
    h.pump();
    expect(h.done("a.1")).toMatchObject({ ok: false, error: { code: "TIMEOUT" } });
    expect(h.kinds("b")).not.toContain("cut");
  });

  test("a ready whose clock reading is outside the skew bound fails the snapshot with CLOCK_SKEW", () => {
    const h = new Harness(["a", "b"], 5);
    h.offsets.set("b", 50);
    h.start("a", "a.1", "timestamp", ["a", "b"]);
    h.pump();
    expect(h.done("a.1")).toMatchObject({ ok: false, error: { code: "CLOCK_SKEW" } });
  });

  test("a pending cut recovered after a restart keeps its commit wait", () => {
    const p = new SnapshotParticipant({ nodeId: "b", incarnation: "b#2", maxClockSkewMs: 5 });
    const record: ParticipantRecord = { snapshotId: "a.1", name: "n", coordinator: "a", volumes: ["db"], mode: "timestamp", state: "pending", cutAtMs: 100, commitWaitUntilMs: 110 };
    expect(p.recover([record], 95)).toEqual([{ kind: "send", to: "a", msg: { type: "snap.taken", snapshotId: "a.1" } }]);
    expect(p.beforeWrite("db", 96).ackNotBeforeMs).toBe(110);
  });
});

describe("failures and recovery", () => {
  test("a coordinator restarted between take and commit aborts, and participants discard their pending cut", () => {
    const h = new Harness(["a", "b"]);
    h.drop = (m) => m.msg.type === "snap.taken";
    h.start("a", "a.1", "hold", ["a", "b"]);
    h.pump();
    expect(h.kinds("b")).toEqual(["hold", "cut", "release"]);
    const records = h.coordinatorRecords("a");
    expect(records).toMatchObject([{ state: "started" }]);
    h.boot("a"); // crash: only records survive
    h.drop = () => false;
    h.apply("a", h.coordinators.get("a")!.recover(records, h.clock("a")));
    h.pump();
    expect(h.kinds("b")).toEqual(["hold", "cut", "release", "discard"]);
    expect(h.coordinators.get("a")!.inspect()).toEqual([]);
  });

  test("a cut the store refuses is given up: discarded, never said taken, and the snapshot fails with the reason", () => {
    const h = new Harness(["a", "b"], 5);
    // b's cut fails the moment it is made: the service drops what followed it and reports the failure.
    h.drop = (m) => m.from === "b" && (m.msg.type === "snap.taken" || m.msg.type === "snap.cut");
    h.start("a", "a.1", "timestamp", ["a", "b"]);
    h.pump();
    h.nowMs += 24; // past T (now + 22: no round trip, clocks at most 2 ms apart as measured, 20 ms margin), inside the 4 ms commit wait
    h.tick("a");
    h.tick("b");
    h.pump();
    const b = h.participants.get("b")!;
    expect(b.inspect().entries).toEqual([{ snapshotId: "a.1", phase: "pending" }]);
    const failure = new ShoalError("TOO_LARGE", "volume 'db' on node b: 1023 snapshots are stacked under it");
    const effects = h.apply("b", b.cutFailed("a.1", failure, h.clock("b")));
    expect(effects.map((e) => (e.kind === "send" ? e.msg.type : e.kind))).toEqual(["unfence", "discard", "snap.refuse"]);
    expect(b.cutFailed("a.1", failure, h.clock("b"))).toEqual([]); // once
    h.drop = () => false;
    h.pump();
    const done = h.done("a.1");
    expect(done).toMatchObject({ ok: false });
    expect((done as { error: ShoalError }).error.code).toBe("TOO_LARGE");
    expect(h.kinds("a")).toContain("discard");
    expect(h.kinds("a")).not.toContain("commit");
    expect(b.inspect().entries).toEqual([]);
  });

  test("a coordinator restarted after persisting commit delivers the commit", () => {
    const h = new Harness(["a", "b"]);
    h.drop = (m) => m.msg.type === "snap.commit";
    h.start("a", "a.1", "hold", ["a", "b"]);
    h.pump();
    const records = h.coordinatorRecords("a");
    expect(records).toMatchObject([{ state: "committed" }]);
    h.boot("a");
    h.drop = () => false;
    h.apply("a", h.coordinators.get("a")!.recover(records, h.clock("a")));
    h.pump();
    expect(h.kinds("b")).toEqual(["hold", "cut", "release", "commit"]);
    expect(h.done("a.1")).toMatchObject({ ok: true });
  });

  test("presumed abort: an unknown snapshot is answered with abort, which never discards a committed one", () => {
    const coordinator = new SnapshotCoordinator({ nodeId: "a" });
    expect(coordinator.onMessage("b", { type: "snap.taken", snapshotId: "a.9" }, 0)).toMatchObject([{ kind: "send", to: "b", msg: { type: "snap.abort" } }]);
    const h = new Harness(["a", "b"]);
    h.start("a", "a.1", "hold", ["a", "b"]);
    h.pump();
    const b = h.participants.get("b")!;
    expect(b.onMessage("a", { type: "snap.abort", snapshotId: "a.1", reason: { code: "UNKNOWN_SNAPSHOT", message: "" } }, h.clock("b"))).toEqual([]);
  });

  test("a late commit after the record was forgotten and a stale prepare refused is simply acknowledged", () => {
    // Found by the simulation (hold seed 17543): acks lost, the coordinator kept resending commit.
    const p = new SnapshotParticipant({ nodeId: "b", incarnation: "b#1", maxClockSkewMs: 0, maxPrepareAgeMs: 100 });
    const prepare = { type: "snap.prepare" as const, snapshotId: "a.1", name: "n", volumes: ["db"], mode: "hold" as const, startedAtMs: 0, sentAtMs: 0, holdTimeoutMs: 100, maxClockSkewMs: 0 };
    p.onMessage("a", prepare, 0);
    const ready = p.onInflightDrained("a.1", 0)[0] as { msg: { prepareNonce: string } };
    p.onMessage("a", { type: "snap.take", snapshotId: "a.1", prepareNonce: ready.msg.prepareNonce }, 1);
    p.onMessage("a", { type: "snap.commit", snapshotId: "a.1" }, 2);
    expect(p.onTick(500)).toEqual([{ kind: "forget", snapshotId: "a.1" }]);
    expect(p.onMessage("a", prepare, 501)).toMatchObject([{ msg: { type: "snap.refuse", error: { code: "TIMEOUT" } } }]);
    expect(p.onMessage("a", { type: "snap.commit", snapshotId: "a.1" }, 502)).toEqual([{ kind: "send", to: "a", msg: { type: "snap.ack", snapshotId: "a.1", outcome: "committed" } }]);
  });

  test("a participant going down fails an undecided snapshot at once with NODE_DOWN", () => {
    const h = new Harness(["a", "b"]);
    h.drop = (m) => m.to === "b";
    h.start("a", "a.1", "hold", ["a", "b"]);
    h.pump();
    h.apply("a", h.coordinators.get("a")!.onPeerDown("b", h.clock("a")));
    expect(h.done("a.1")).toMatchObject({ ok: false, error: { code: "NODE_DOWN" } });
    h.drop = () => false;
    h.pump();
    expect(h.kinds("a")).toContain("release");
  });
});
