// Peer operations read their arguments through one typed table: what a buggy or hostile member
// sends is refused as BAD_ARGUMENT naming the argument, never coerced into a value.
import { describe, expect, test } from "bun:test";
import { ShoalError } from "../../core/errors.ts";
import { readPeerArgs } from "../../transport/mesh/peer-ops.ts";
import { PiecedOutbox } from "../../transport/mesh/record-pieces.ts";

function refusal(read: () => unknown): string {
  try {
    read();
  } catch (err) {
    expect(err).toBeInstanceOf(ShoalError);
    expect((err as ShoalError).code).toBe("BAD_ARGUMENT");
    return (err as ShoalError).message;
  }
  throw new Error("accepted");
}

describe("peer operation arguments", () => {
  test("well-formed arguments come back typed; unknown ones are left for newer members", () => {
    expect(readPeerArgs("move.seal", { stepId: "m.3", final: false, later: 1 })).toEqual({ stepId: "m.3", final: false });
    expect(readPeerArgs("store.flush", {})).toEqual({});
    const states = new Uint8Array([1, 2]);
    const install = readPeerArgs("move.install", { stepId: "s", v: "u", p: 4, last: true, layers: [{ id: "u", parent: null }], pieces: [{ layer: "u", pageSizeBytes: 4096, chunkShift: 12, states, bytes: 8 }] });
    expect(install).toEqual({ stepId: "s", v: "u", p: 4, last: true, layers: [{ id: "u" }], pieces: [{ layer: "u", pageSizeBytes: 4096, chunkShift: 12, states, bytes: 8 }] });
  });

  test("a missing or mistyped argument is named, nested ones by their place", () => {
    expect(refusal(() => readPeerArgs("move.seal", {}))).toBe("'move.seal': argument 'stepId' must be a non-empty string (missing)");
    expect(refusal(() => readPeerArgs("move.step", { pages: [1, "2"], to: "n2", stepId: "s" }))).toContain("argument 'pages' must be a list of whole numbers >= 0");
    expect(refusal(() => readPeerArgs("move.install", { stepId: "s", v: "u", p: -1, pieces: [] }))).toContain("argument 'p' must be a whole number >= 0 (number -1)");
    expect(refusal(() => readPeerArgs("move.install", { stepId: "s", v: "u", p: 1, pieces: [{ layer: "u", pageSizeBytes: 4096, bytes: "8" }] }))).toContain("argument 'pieces[0].bytes'");
    expect(refusal(() => readPeerArgs("snap.rollback", { uid: "u", layer: 7 }))).toContain("argument 'layer' must be a non-empty string (number 7)");
    expect(refusal(() => readPeerArgs("store.changedPages", { v: "u", since: false }))).toContain("argument 'since'");
  });

  test("a catalog piece asked with a bad reference or offset is BAD_ARGUMENT, not a lookup of 'undefined'", () => {
    const outbox = new PiecedOutbox();
    const { ref } = outbox.offerBytes(new Uint8Array(10));
    expect(refusal(() => outbox.piece({ offset: 0 }))).toContain("argument 'ref'");
    expect(refusal(() => outbox.piece({ ref, offset: "0" }))).toContain("argument 'offset'");
    expect(outbox.piece({ ref, offset: 2 }).payload!.byteLength).toBe(8);
  });
});
