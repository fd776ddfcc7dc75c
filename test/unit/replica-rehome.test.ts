// Re-homing the copies of a node gone for good (`route forget`, core/replica/rehome-plan.ts and the
// "rehome" set change): where the copies go, when the change fits, that it survives the wire, and
// that a member adopting it stops keeping a map for the node and resyncs the new home copy.
import { describe, expect, test } from "bun:test";
import { ShoalError } from "../../core/errors.ts";
import { decodeTable } from "../../core/replica/_wire.ts";
import { applyRecord, decodeMemberState, encodeMemberState, initialMemberState } from "../../core/replica/member-state.ts";
import type { MemberEvent, Outgoing, PeerMessage } from "../../core/replica/member-messages.ts";
import { planRehome } from "../../core/replica/rehome-plan.ts";
import { ReplicaMember } from "../../core/replica/replica-member.ts";
import { changeFits, initialTable, withChange } from "../../core/replica/replica-table.ts";
import { proposalFor, type PolicyView } from "../../core/replica/set-change-policy.ts";
import { testMemberConfig } from "./_member-config.ts";

/** Four nodes, two copies: the striped homes of four page groups. */
const striped = [
  ["a", "b"],
  ["b", "c"],
  ["c", "d"],
  ["d", "a"],
];
const base = initialTable("vol", striped);
const MEMBERS = ["a", "b", "c", "d"];
const withoutC = withChange(base, { kind: "drop", node: "c", groups: [1, 2] });

describe("rehome plan", () => {
  test("each group c was home to gets the node with the fewest home copies that it lacks", () => {
    const plan = planRehome(withoutC, striped, "c", ["a", "b", "d"], "gone", MEMBERS);
    expect(plan).toEqual({
      kind: "change",
      change: { kind: "rehome", node: "c", home: [["a", "b"], ["b", "a"], ["b", "d"], ["d", "a"]], gone: true, voters: ["a", "b", "d"] },
      moved: [
        { group: 1, to: "a" },
        { group: 2, to: "b" },
      ],
    });
    if (plan.kind !== "change") return;
    const next = withChange(withoutC, plan.change);
    expect(next.version).toBe(withoutC.version + 1);
    expect(next.sets).toEqual(withoutC.sets);
    // c no longer counts toward the majority: the next change needs two of a, b, d.
    expect(next.voters).toEqual(["a", "b", "d"]);
    expect(planRehome(next, striped, "c", ["a", "b", "d"], "gone", MEMBERS)).toEqual({ kind: "done" });
  });

  test("a dead node still in a set is dropped first, a drained one is not; a volume with a copy on every other node has no room", () => {
    expect(planRehome(base, striped, "c", ["a", "b", "d"], "gone", MEMBERS)).toEqual({ kind: "still-in-set", groups: [1, 2] });
    const drain = planRehome(base, striped, "c", ["a", "b", "d"], "live", MEMBERS);
    expect(drain).toMatchObject({ kind: "change", moved: [{ group: 1, to: "a" }, { group: 2, to: "b" }] });
    // A drained node keeps its vote (it is up); its forget later takes it out with no copy to move.
    if (drain.kind !== "change") return;
    const drained = withChange(withChange(base, drain.change), { kind: "drop", node: "c", groups: [1, 2] });
    expect(drained.voters).toBeUndefined();
    expect(planRehome(drained, striped, "c", ["a", "b", "d"], "gone", MEMBERS)).toEqual({
      kind: "change",
      change: { kind: "rehome", node: "c", home: drained.home!, gone: true, voters: ["a", "b", "d"] },
      moved: [],
    });
    const three = initialTable("vol", [["a", "b", "c"]]);
    const dropped = withChange(three, { kind: "drop", node: "c", groups: [0] });
    expect(planRehome(dropped, [["a", "b", "c"]], "c", ["a", "b"], "gone", ["a", "b", "c"])).toEqual({ kind: "no-room", groups: [0] });
    expect(planRehome(withoutC, striped, "x", ["a", "b", "d"], "gone", MEMBERS)).toEqual({ kind: "done" });
  });

  test("a rehome fits only a home for every group, without the node, keeping every current copy", () => {
    const home = [["a", "b"], ["b", "a"], ["b", "d"], ["d", "a"]];
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home })).toBe(true);
    expect(changeFits(base, { kind: "rehome", node: "c", home })).toBe(true); // a drain: c stays in sets 1 and 2 until dropped
    // A forget's re-homing is decided on some member's table: one where c is still in a set refuses it (the drop comes first).
    expect(changeFits(base, { kind: "rehome", node: "c", home, gone: true })).toBe(false);
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home, gone: true })).toBe(true);
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home: home.slice(1) })).toBe(false);
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home: [["a", "b"], ["a", "d"], ["b", "d"], ["d", "a"]] })).toBe(false); // drops b, a current copy
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home: [["a", "a"], ["b", "a"], ["b", "d"], ["d", "a"]] })).toBe(false);
    // Voters change only with a forget, never keep the node, never empty, never a node that did not vote.
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home, voters: ["a", "b", "d"] })).toBe(false);
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home, gone: true, voters: ["a", "b", "c"] })).toBe(false);
    expect(changeFits(withoutC, { kind: "rehome", node: "c", home, gone: true, voters: [] })).toBe(false);
    const fewer = { ...withoutC, voters: ["a", "b", "c"] };
    expect(changeFits(fewer, { kind: "rehome", node: "c", home, gone: true, voters: ["a", "d"] })).toBe(false);
    expect(changeFits(fewer, { kind: "rehome", node: "c", home, gone: true, voters: ["a", "b"] })).toBe(true);
  });

  test("the home travels with the table and is checked on the way in", () => {
    const next = withChange(withoutC, { kind: "rehome", node: "c", home: [["a", "b"], ["b", "a"], ["b", "d"], ["d", "a"]] });
    expect(decodeTable(JSON.parse(JSON.stringify(next)))).toEqual(next);
    expect(() => decodeTable({ ...next, home: next.home!.slice(1) })).toThrow(ShoalError);
    const voting = { ...next, voters: ["a", "b", "d"] };
    expect(decodeTable(JSON.parse(JSON.stringify(voting)))).toEqual(voting);
    expect(() => decodeTable({ ...next, voters: [] })).toThrow("voters");
    expect(() => decodeTable({ ...next, voters: ["a", "a"] })).toThrow("voters");
    expect(() => decodeTable({ ...next, home: [["a/b"], [], [], []] })).toThrow("home node is not a name");
  });
});

describe("a member adopting a rehome", () => {
  test("stops noting writes for the node that left, and resyncs the new home copy before it is added", () => {
    const catalog = initialMemberState("b", [base]);
    const member = new ReplicaMember(
      testMemberConfig("b", ["a", "b", "c", "d"], striped, { allChunks: () => [0, 2], copyBatchChunks: 8, joinChunksMax: 1 }),
      decodeMemberState(encodeMemberState(catalog)),
      0,
    );
    /** A step with its records kept and reported durable at once: what it sends, either way. */
    const step = (event: MemberEvent): Outgoing[] => {
      const ready = member.step(event);
      for (const record of ready.records) applyRecord(catalog, record);
      if (ready.durableSeq === undefined) return ready.messages;
      return [...ready.messages, ...member.step({ kind: "durable", nowMs: event.nowMs, seq: ready.durableSeq }).messages];
    };
    // c's drop: b serves group 1 alone and keeps a map of what c lacks there.
    step({ kind: "message", nowMs: 1, from: "a", message: { kind: "tables", tables: [withoutC] } });
    expect([...catalog.awayMaps.keys()]).toEqual(["vol/1/c"]);
    const rehomed = withChange(withoutC, { kind: "rehome", node: "c", home: [["a", "b"], ["b", "a"], ["b", "d"], ["d", "a"]] });
    step({ kind: "message", nowMs: 2, from: "a", message: { kind: "tables", tables: [rehomed] } });
    expect(catalog.tables.get("vol")).toEqual(rehomed);
    expect([...catalog.awayMaps.keys()]).toEqual([]);
    // b is group 1's source: it copies what it holds to a, the new home, which is not in the set yet.
    let copy: unknown;
    for (let nowMs = 5; nowMs < 100 && copy === undefined; nowMs += 5) {
      for (const peer of ["a", "d"]) step({ kind: "peer-heard", nowMs, node: peer });
      copy = step({ kind: "tick", nowMs }).find((m) => m.to === "a" && m.message.kind === "copy")?.message;
    }
    expect(copy).toEqual({ kind: "copy", batch: "boot1.1", table: rehomed, group: 1, chunks: [0, 2] });
  });
});

describe("voters after a forget", () => {
  test("a member asks only the table's voters, and two of three are a majority once the gone node is out", () => {
    // c forgotten: v3 re-homed its groups and took it out of the voters. Now d goes silent.
    const rehomed = withChange(withoutC, { kind: "rehome", node: "c", home: [["a", "b"], ["b", "a"], ["b", "d"], ["d", "a"]], gone: true, voters: ["a", "b", "d"] });
    const catalog = initialMemberState("a", [rehomed]);
    const member = new ReplicaMember(testMemberConfig("a", MEMBERS, striped), decodeMemberState(encodeMemberState(catalog)), 0);
    // d recorded v3 before it went silent (its tables heartbeat): the precondition is met without it.
    member.step({ kind: "message", nowMs: 1, from: "d", message: { kind: "tables", tables: [rehomed] } });
    let prepare: Outgoing[] = [];
    let nowMs = 10;
    for (; nowMs <= 400 && prepare.length === 0; nowMs += 10) {
      member.step({ kind: "peer-heard", nowMs, node: "b" });
      prepare = member.step({ kind: "tick", nowMs }).messages.filter((m) => m.message.kind === "prepare");
    }
    // The drop of d from groups 0, 2 and 3 goes to a, b and d: never to c, which no longer votes.
    expect(prepare.map((m) => m.to).sort()).toEqual(["a", "b", "d"]);
    const { ballot, version } = prepare[0]!.message as Extract<PeerMessage, { kind: "prepare" }>;
    // a promises itself (once its record is durable), then b does: two of three.
    const own = member.step({ kind: "message", nowMs, from: "a", message: prepare[0]!.message });
    for (const out of member.step({ kind: "durable", nowMs, seq: own.durableSeq! }).messages) member.step({ kind: "message", nowMs, from: "a", message: out.message });
    const reply = { kind: "acceptor-reply" as const, volume: "vol", reply: { kind: "promise" as const, version, ballot, recordedVersion: rehomed.version } };
    const accept = member.step({ kind: "message", nowMs, from: "b", message: reply }).messages.filter((m) => m.message.kind === "accept");
    // Two of a, b, d promised: phase 2 starts (with c counted it would need three of four).
    expect(accept.map((m) => m.to).sort()).toEqual(["a", "b", "d"]);
  });
});

describe("the policy during a drain", () => {
  // c is drained: group 1's home becomes b+a while c is still in its set.
  const drained = withChange(base, { kind: "rehome", node: "c", home: [["a", "b"], ["b", "a"], ["b", "d"], ["d", "a"]] });
  const view = (self: string, lacking: number | undefined): PolicyView => ({
    self,
    table: drained,
    suspected: new Set(),
    home: drained.home!,
    synced: () => true,
    lacking: (_group, node) => (node === "a" ? lacking : undefined),
    joinChunksMax: 2,
  });

  test("the source keeps the leaver while the new home copy is far behind, and never adds past the home's size", () => {
    // b is group 1's source (at home, first); a lacks 5 chunks: no drop, and no add (the set is full).
    expect(proposalFor(view("b", 5))).toBeUndefined();
    expect(proposalFor(view("b", undefined))).toBeUndefined();
  });

  test("once the new copy is nearly caught up the source drops the leaver, then adds the new copy", () => {
    expect(proposalFor(view("b", 1))).toEqual({ kind: "drop", node: "c", groups: [1] });
    const dropped = withChange(drained, { kind: "drop", node: "c", groups: [1] });
    expect(proposalFor({ ...view("b", 1), table: dropped })).toEqual({ kind: "add", node: "a", groups: [1] });
  });

  test("a leaver that is first in the set is neither the source nor drops itself", () => {
    // Group 2 (c+d) re-homed to b+d: d is its source; c never acts for it.
    const group2 = withChange(base, { kind: "rehome", node: "c", home: [["a", "b"], ["b", "a"], ["b", "d"], ["d", "a"]] });
    const asC: PolicyView = { ...view("c", 1), table: group2, lacking: () => 1 };
    expect(proposalFor(asC)).toBeUndefined();
    const asD: PolicyView = { ...view("d", 1), table: group2, lacking: (group, node) => (group === 2 && node === "b" ? 1 : undefined) };
    expect(proposalFor(asD)).toEqual({ kind: "drop", node: "c", groups: [2] });
  });
});
