// The real-process snapshot test is only as good as its checker: prove it accepts cuts and
// rejects what is not one.
import { describe, expect, test } from "bun:test";
import { checkCut, readStamp, stampBlock, WriteHistory } from "../integration/_cut-checker.ts";

function history(): WriteHistory {
  const h = new WriteHistory();
  const a1 = h.issue(0, 0); // block 0: issued 0, acked 10
  a1.ackedAtMs = 10;
  const b1 = h.issue(1, 20); // block 1: issued 20, acked 30
  b1.ackedAtMs = 30;
  const a2 = h.issue(0, 40); // block 0 again: issued 40, acked 50
  a2.ackedAtMs = 50;
  return h;
}

describe("cut checker", () => {
  test("accepts snapshots that are cuts", () => {
    const h = history();
    expect(checkCut(h, new Map([[0, 1], [1, 2]])).ok).toBe(true); // T in [20, 50]
    expect(checkCut(h, new Map([[0, 3], [1, 2]])).ok).toBe(true); // everything
    expect(checkCut(h, new Map([[0, 0], [1, 0]])).ok).toBe(true); // nothing (T before 10)
  });
  test("rejects a later write in while an earlier acknowledged one is out", () => {
    const h = history();
    // block 1's write (issued at 20) is in, but block 0's first write (acked at 10) is out.
    const verdict = checkCut(h, new Map([[0, 0], [1, 2]]));
    expect(verdict.ok).toBe(false);
    expect(verdict.reason).toContain("after write 1");
  });
  test("rejects a value never written to that block, and torn blocks", () => {
    expect(checkCut(history(), new Map([[1, 3]])).ok).toBe(false);
    const block = stampBlock(7);
    expect(readStamp(block)).toBe(7);
    block[100] ^= 1;
    expect(() => readStamp(block)).toThrow(/torn/);
  });
});
