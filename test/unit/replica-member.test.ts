// The replica member's runner (core/replica/replica-member.ts) through its step() surface, and its
// stored state (member-state.ts): replies wait for the records they rest on, the fence answers with
// the table, writes are noted for an absent replica, copies are confirmed only once durable, and the
// state survives its stored form (msgpack included) while malformed input is a BAD_FRAME. The
// simulation (test/sim/replica.sim.test.ts) runs the same runner under faults.
import { describe, expect, test } from "bun:test";
import { Packr } from "msgpackr";
import { ShoalError } from "../../core/errors.ts";
import { parsePeerMessage, type MemberEvent, type MemberReady, type PeerMessage } from "../../core/replica/member-messages.ts";
import { applyRecord, decodeMemberState, encodeMemberState, initialMemberState, mustSurvivePowerLoss, type MemberState } from "../../core/replica/member-state.ts";
import { ReplicaMember, type MemberConfig } from "../../core/replica/replica-member.ts";
import { initialTable, withChange, type ReplicaTable } from "../../core/replica/replica-table.ts";
import { testMemberConfig } from "./_member-config.ts";

const MEMBERS = ["a", "b", "c"];
const base = initialTable("vol", [["a", "b"], ["b", "c"]]);
const withoutB = withChange(base, { kind: "drop", node: "b", groups: [0] });

function config(self: string, extra: Partial<MemberConfig> = {}): MemberConfig {
  return testMemberConfig(self, MEMBERS, [["a", "b"], ["b", "c"]], extra);
}

/** A member and a host copy of its catalog, folded from the records it hands out. */
function host(self: string, tables: ReplicaTable[] = [base]): { member: ReplicaMember; catalog: MemberState; step: (event: MemberEvent) => MemberReady } {
  const catalog = initialMemberState(self, tables);
  const member = new ReplicaMember(config(self), decodeMemberState(encodeMemberState(catalog)), 0);
  const step = (event: MemberEvent): MemberReady => {
    const ready = member.step(event);
    for (const record of ready.records) applyRecord(catalog, record);
    return ready;
  };
  return { member, catalog, step };
}

const message = (nowMs: number, from: string, m: PeerMessage): MemberEvent => ({ kind: "message", nowMs, from, message: m });
const write = (nowMs: number, routed: number, group = 0, chunk = 1): MemberEvent => ({ kind: "request", nowMs, request: { id: nowMs, kind: "write", volume: "vol", group, chunk, routed } });

describe("replica member runner", () => {
  test("an acceptor's promise leaves only after its record is durable", () => {
    const { step } = host("a");
    const prepared = step(message(1, "b", { kind: "prepare", volume: "vol", version: 2, ballot: { round: 1, proposer: "b" } }));
    expect(prepared.records).toEqual([{ kind: "slot", volume: "vol", version: 2, record: { promised: { round: 1, proposer: "b" } } }]);
    expect(prepared.durableSeq).toBe(1);
    expect(prepared.messages).toEqual([]);
    // A message that rests on nothing new still waits behind the record in flight.
    expect(step(message(2, "c", { kind: "prepare", volume: "vol", version: 2, ballot: { round: 0, proposer: "c" } })).messages).toEqual([]);
    const released = step({ kind: "durable", nowMs: 3, seq: 1 });
    expect(released.messages.map((m) => [m.to, m.message.kind === "acceptor-reply" && m.message.reply.kind])).toEqual([
      ["b", "promise"],
      ["c", "refused"],
    ]);
  });

  test("the fence refuses a stale write with the newer table, and a survivor notes writes its absent peer lacks", () => {
    const { step, catalog } = host("a");
    const adopted = step(message(1, "c", { kind: "tables", tables: [withoutB] }));
    expect(adopted.records.map((r) => r.kind)).toEqual(["table", "away-map"]);
    step({ kind: "durable", nowMs: 2, seq: adopted.durableSeq! });
    const stale = step(write(3, 1));
    expect(stale.replies).toEqual([{ request: expect.objectContaining({ routed: 1 }), ok: false, reason: "stale", table: withoutB }]);
    expect(stale.applies).toEqual([]);
    const served = step(write(4, 2));
    expect(served.applies).toEqual([{ kind: "write", request: expect.objectContaining({ chunk: 1 }) }]);
    expect(served.records).toEqual([{ kind: "away-chunks", volume: "vol", group: 0, node: "b", changed: [1], cleaned: [] }]);
    expect(served.replies).toEqual([]); // the ack waits for the note: a crash must not forget what b lacks
    expect(step({ kind: "durable", nowMs: 5, seq: served.durableSeq! }).replies).toEqual([{ request: expect.objectContaining({ chunk: 1 }), ok: true, table: withoutB }]);
    expect([...catalog.awayMaps.get("vol/0/b")!.dirty.keys()]).toEqual([1]);
  });

  test("a member that stops hearing a peer proposes to drop it from the groups it serves", () => {
    const { step } = host("a");
    let ready = step({ kind: "tick", nowMs: 0 });
    for (let nowMs = 10; nowMs <= 100; nowMs += 10) {
      step({ kind: "peer-heard", nowMs, node: "c" });
      ready = step({ kind: "tick", nowMs });
      if (ready.messages.some((m) => m.message.kind === "prepare")) break;
    }
    expect(ready.notes).toContainEqual({ kind: "proposed", volume: "vol", version: 2, change: "drop b from groups 0" });
    expect(ready.messages.filter((m) => m.message.kind === "prepare").map((m) => m.to)).toEqual(MEMBERS);
    // Its ballots are this proposal's own (id, incarnation, proposal count), not the bare member id.
    expect(ready.messages.map((m) => (m.message.kind === "prepare" ? m.message.ballot.proposer : undefined)).filter(Boolean)[0]).toBe("a.boot1.1");
  });

  test("a copy is confirmed only once its chunks are durable, and a confirmed chunk leaves the source's map", () => {
    const receiver = host("b", [withoutB]);
    const copy = receiver.step(message(1, "a", { kind: "copy", batch: "boot1.1", table: withoutB, group: 0, chunks: [0, 1] }));
    expect(copy.applies).toEqual([{ kind: "copy", volume: "vol", group: 0, chunks: [0, 1] }]);
    expect(copy.messages).toEqual([]);
    expect(receiver.step({ kind: "durable", nowMs: 2, seq: copy.durableSeq! }).messages).toEqual([{ to: "a", message: { kind: "copied", batch: "boot1.1" } }]);

    // The source: b away since v2 with chunks 0 and 1 changed; the policy tick sends them; b confirms.
    const source = host("a");
    source.step({ kind: "durable", nowMs: 1, seq: source.step(message(1, "c", { kind: "tables", tables: [withoutB] })).durableSeq! });
    for (const chunk of [0, 1]) source.step({ kind: "durable", nowMs: 2, seq: source.step(write(2, 2, 0, chunk)).durableSeq! });
    let sent: PeerMessage | undefined;
    for (let nowMs = 3; nowMs < 60 && sent === undefined; nowMs += 5) {
      for (const peer of ["b", "c"]) source.step({ kind: "peer-heard", nowMs, node: peer });
      sent = source.step({ kind: "tick", nowMs }).messages.find((m) => m.message.kind === "copy")?.message;
    }
    expect(sent).toEqual({ kind: "copy", batch: "boot1.1", table: withoutB, group: 0, chunks: [0, 1] });
    const confirmed = source.step(message(60, "b", { kind: "copied", batch: "boot1.1" }));
    expect(confirmed.records).toEqual([{ kind: "away-chunks", volume: "vol", group: 0, node: "b", changed: [], cleaned: [0, 1] }]);
    expect(source.catalog.awayMaps.get("vol/0/b")!.dirty.size).toBe(0);
  });

  test("a restart from the stored state keeps the fence and the acceptor's promises", () => {
    const first = host("a");
    first.step(message(1, "c", { kind: "tables", tables: [withoutB] }));
    first.step(message(2, "b", { kind: "prepare", volume: "vol", version: 3, ballot: { round: 4, proposer: "b" } }));
    const restarted = new ReplicaMember(config("a", { bootId: "boot2" }), decodeMemberState(encodeMemberState(first.catalog)), 100);
    expect(restarted.step(write(101, 1)).replies[0]).toMatchObject({ ok: false, reason: "stale" });
    const lower = restarted.step(message(102, "c", { kind: "prepare", volume: "vol", version: 3, ballot: { round: 2, proposer: "c" } }));
    expect(lower.messages[0]?.message).toMatchObject({ kind: "acceptor-reply", reply: { kind: "refused", promised: { round: 4, proposer: "b" } } });
  });
});

describe("replica member state, stored", () => {
  test("only the per-write away-map notes may wait for a FLUSH to survive a power loss", () => {
    const note = { kind: "away-chunks" as const, volume: "vol", group: 0, node: "b", changed: [1], cleaned: [] };
    expect(mustSurvivePowerLoss([note, note])).toBe(false);
    expect(mustSurvivePowerLoss([])).toBe(false);
    expect(mustSurvivePowerLoss([note, { kind: "slot", volume: "vol", version: 2, record: { promised: { round: 1, proposer: "b" } } }])).toBe(true);
    expect(mustSurvivePowerLoss([{ kind: "table", table: withoutB }])).toBe(true);
    expect(mustSurvivePowerLoss([{ kind: "synced", volume: "vol", group: 0, since: 3 }])).toBe(true);
  });


  function populated(): MemberState {
    const { step, catalog } = host("a");
    step(message(1, "b", { kind: "accept", volume: "vol", version: 2, ballot: { round: 1, proposer: "b" }, value: withoutB }));
    step(message(1, "c", { kind: "tables", tables: [withoutB] }));
    step(message(2, "b", { kind: "prepare", volume: "vol", version: 3, ballot: { round: 2, proposer: "b" } }));
    step(write(3, 2, 0, 2));
    step(message(4, "c", { kind: "joined", volume: "vol", group: 1, since: 1 }));
    return catalog;
  }

  test("round-trips through plain objects and msgpack", () => {
    const state = populated();
    const wire = encodeMemberState(state);
    expect(wire.tables).toEqual([withoutB]);
    expect(wire.slots).toEqual([{ volume: "vol", version: 3, record: { promised: { round: 2, proposer: "b" } } }]); // v2's slot is pruned: decided
    expect(wire.awayMaps).toEqual([{ volume: "vol", group: 0, node: "b", sinceVersion: 2, dirty: [2] }]);
    const packr = new Packr({ useRecords: false });
    const back = decodeMemberState(packr.unpack(packr.pack(wire)));
    expect(encodeMemberState(back)).toEqual(wire);
    expect(encodeMemberState(decodeMemberState(JSON.parse(JSON.stringify(wire))))).toEqual(wire);
  });

  test("malformed stored state is a BAD_FRAME naming what is wrong", () => {
    const wire = encodeMemberState(populated());
    const cases: [unknown, RegExp][] = [
      [null, /not an object/],
      [[], /not an object/],
      [{ ...wire, format: 3 }, /format 3/],
      [{ ...wire, tables: "x" }, /tables is not a list/],
      [{ ...wire, tables: [{ ...withoutB, version: -1 }] }, /table version/],
      [{ ...wire, tables: [withoutB, withoutB] }, /twice/],
      [{ ...wire, tables: [{ ...withoutB, sets: [[{ node: "a/b", since: 1 }]] }] }, /replica node is not a name/],
      [{ ...wire, slots: [{ volume: "vol", version: 3, record: { promised: { round: 1.5, proposer: "b" } } }] }, /ballot round/],
      [{ ...wire, awayMaps: [{ volume: "vol", group: 0, node: "b", sinceVersion: 2, dirty: ["1"] }] }, /away map chunk/],
      [{ ...wire, synced: [{ volume: "", group: 0, since: 1 }] }, /synced volume/],
      [{ ...wire, peersUpToDate: [{ volume: "vol", group: 0, node: "c" }] }, /peer since/],
    ];
    for (const [input, message] of cases) {
      let caught: unknown;
      try {
        decodeMemberState(input);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(ShoalError);
      expect((caught as ShoalError).code).toBe("BAD_FRAME");
      expect((caught as ShoalError).message).toMatch(message);
    }
  });
});

describe("replica messages, from the mesh", () => {
  const ballot = { round: 3, proposer: "b" };
  const every: PeerMessage[] = [
    { kind: "tables", tables: [base, withoutB] },
    { kind: "prepare", volume: "vol", version: 2, ballot },
    { kind: "accept", volume: "vol", version: 2, ballot, value: withoutB },
    { kind: "acceptor-reply", volume: "vol", reply: { kind: "promise", version: 2, ballot, accepted: { ballot, value: withoutB }, recordedVersion: 1 } },
    { kind: "acceptor-reply", volume: "vol", reply: { kind: "refused", version: 2, ballot, promised: { round: 4, proposer: "c" }, recordedVersion: 1 } },
    { kind: "acceptor-reply", volume: "vol", reply: { kind: "decided", version: 2, table: withoutB } },
    { kind: "copy", batch: "boot1.7", table: withoutB, group: 0, chunks: [0, 3] },
    { kind: "copied", batch: "boot1.7" },
    { kind: "join-request", volume: "vol", group: 1, since: 2 },
    { kind: "join", table: withoutB, group: 0, since: 1, chunks: [] },
    { kind: "joined", volume: "vol", group: 0, since: 1 },
  ];

  test("every message kind survives msgpack and the decoder", () => {
    const packr = new Packr({ useRecords: false });
    for (const message of every) expect(parsePeerMessage(packr.unpack(packr.pack(message)))).toEqual(message);
  });

  test("a malformed message is a BAD_FRAME naming what is wrong", () => {
    const cases: [unknown, RegExp][] = [
      ["prepare", /not an object/],
      [{ kind: "gossip" }, /unknown replica message kind/],
      [{ kind: "prepare", volume: "vol", version: "2", ballot }, /prepare version/],
      [{ kind: "copy", batch: "", table: withoutB, group: 0, chunks: [] }, /batch id/],
      [{ kind: "copy", batch: "b.1", table: withoutB, group: 0, chunks: [-1] }, /copy chunk/],
      [{ kind: "copy", batch: "b.1", volume: "vol", group: 0, chunks: [0] }, /not an object|table/],
      [{ kind: "join", table: { ...withoutB, sets: [[{ node: "a", since: 1 }, { node: "a", since: 1 }]] }, group: 0, since: 1, chunks: [] }, /names a node twice/],
      [{ kind: "tables", tables: [{ ...base, sets: [[{ node: "a", since: 9 }]] }] }, /joined in a later version/],
      [{ kind: "acceptor-reply", volume: "vol", reply: { kind: "accepted", version: 2, ballot } }, /recorded version/],
      [{ kind: "acceptor-reply", volume: "vol", reply: { kind: "maybe", version: 2 } }, /unknown acceptor reply kind/],
    ];
    for (const [input, message] of cases) {
      expect(() => parsePeerMessage(input)).toThrow(message);
      try {
        parsePeerMessage(input);
      } catch (error) {
        expect(error).toBeInstanceOf(ShoalError);
        expect((error as ShoalError).code).toBe("BAD_FRAME");
      }
    }
  });

  test("a copy naming chunks outside the group, or a group the volume lacks, is not applied", () => {
    const { step } = host("b", [withoutB]);
    expect(step(message(1, "a", { kind: "copy", batch: "x.1", table: withoutB, group: 0, chunks: [4] })).applies).toEqual([]);
    expect(step(message(2, "a", { kind: "copy", batch: "x.2", table: withoutB, group: 5, chunks: [0] })).applies).toEqual([]);
    expect(step(message(3, "a", { kind: "copy", batch: "x.3", table: initialTable("other", [["a"]]), group: 0, chunks: [0] })).applies).toEqual([]);
  });

  test("a copy is taken only under the receiver's table version, from that version's resync source, while out of the set", () => {
    const copy = (nowMs: number, from: string, table: ReplicaTable, batch: string) => message(nowMs, from, { kind: "copy", batch, table, group: 0, chunks: [1] });
    // b still records v1 (in the set): a copy under v2 teaches it v2, where b is out and a is the source.
    const { step, catalog } = host("b");
    const taught = step(copy(1, "a", withoutB, "a.1"));
    expect(taught.applies).toEqual([{ kind: "copy", volume: "vol", group: 0, chunks: [1] }]);
    expect(catalog.tables.get("vol")!.version).toBe(2);
    // Another sender under the same version is not its source (c races a; its copy could land late).
    expect(step(copy(2, "c", withoutB, "c.1")).applies).toEqual([]);
    // A copy under an older version (a source that has not learned it was replaced) is refused.
    expect(step(copy(3, "a", base, "a.2")).applies).toEqual([]);
    // Back in the set (v3, joining): no copy any more, the join copy and writes bring it up to date.
    const rejoined = withChange(withoutB, { kind: "add", node: "b", groups: [0] });
    const late = step(copy(4, "a", rejoined, "a.3"));
    expect(late.applies).toEqual([]);
    expect(catalog.tables.get("vol")!.version).toBe(3);
    expect(step(copy(5, "a", withoutB, "a.4")).applies).toEqual([]);
  });

  test("a second join copy for the same membership is not applied: it would undo writes taken since the first", () => {
    const rejoined = withChange(withoutB, { kind: "add", node: "b", groups: [0] });
    const { step } = host("b", [rejoined]);
    const join = (nowMs: number) => message(nowMs, "a", { kind: "join", table: rejoined, group: 0, since: rejoined.version, chunks: [1] });
    const first = step(join(1));
    expect(first.applies).toEqual([{ kind: "join", volume: "vol", group: 0, chunks: [1] }]);
    step({ kind: "durable", nowMs: 2, seq: first.durableSeq! });
    expect(step(write(3, rejoined.version, 0, 1)).applies).toHaveLength(1);
    const again = step(join(4));
    expect(again.applies).toEqual([]);
    expect(again.messages.map((m) => m.message.kind)).toEqual(["joined"]);
  });
});
