// The NBD server's budgets: accounts report their own amounts, the budget keeps the sums, and a
// count that would go negative is a broken invariant, not a quietly wrong budget.
import { describe, expect, test } from "bun:test";
import { InvariantError } from "../../core/invariant.ts";
import { MAX_SERVER_IN_FLIGHT_BYTES, MAX_SERVER_INPUT_BYTES, MAX_SERVER_UNSENT_BYTES, NbdServerBudget, OUTBOX_HIGH_WATER_BYTES } from "../../transport/nbd/nbd-server-budget.ts";

describe("NbdServerBudget", () => {
  test("sums follow the accounts; a closed account gives its share back", () => {
    const budget = new NbdServerBudget(() => {});
    const a = budget.open();
    const b = budget.open();
    expect(budget.fairShare(MAX_SERVER_INPUT_BYTES)).toBe(MAX_SERVER_INPUT_BYTES / 2);
    a.setInput(MAX_SERVER_INPUT_BYTES / 4 * 3);
    b.setInput(MAX_SERVER_INPUT_BYTES / 8);
    // a holds more than its half while more would overflow the sum; b does not.
    expect(a.inputOverShare(MAX_SERVER_INPUT_BYTES / 4, MAX_SERVER_INPUT_BYTES / 4 * 3)).toBe(true);
    expect(b.inputOverShare(MAX_SERVER_INPUT_BYTES / 4, MAX_SERVER_INPUT_BYTES / 8)).toBe(false);
    a.close();
    expect(budget.connectionCount).toBe(1);
    expect(b.inputOverShare(MAX_SERVER_INPUT_BYTES / 4, MAX_SERVER_INPUT_BYTES / 8)).toBe(false);
    expect(budget.describe()).toBe(`input ${MAX_SERVER_INPUT_BYTES / 8} B, executing 0 B, unsent 0 B, 1 connections`);
  });

  test("unsent replies over the server's budget cut only a client over its share", () => {
    const budget = new NbdServerBudget(() => {});
    const reader = budget.open();
    const hoarder = budget.open();
    reader.setUnsent(1024);
    hoarder.setUnsent(MAX_SERVER_UNSENT_BYTES);
    expect(hoarder.unsentOverShare()).toBe(true);
    expect(reader.unsentOverShare()).toBe(false);
    hoarder.setUnsent(0);
    expect(hoarder.unsentOverShare()).toBe(false);
  });

  test("the in-flight budget stops admission when full and wakes waiters once it has room", () => {
    let wakes = 0;
    const budget = new NbdServerBudget(() => wakes++);
    const account = budget.open();
    expect(account.mayAdmit(0, 0, OUTBOX_HIGH_WATER_BYTES)).toBe(true);
    account.startExecuting(MAX_SERVER_IN_FLIGHT_BYTES);
    expect(account.mayAdmit(0, 0, OUTBOX_HIGH_WATER_BYTES)).toBe(false);
    account.finishExecuting(1);
    expect(wakes).toBe(1);
    account.finishExecuting(MAX_SERVER_IN_FLIGHT_BYTES - 1);
    expect(wakes).toBe(1);
  });

  test("finishing more than was started is a broken invariant", () => {
    const account = new NbdServerBudget(() => {}).open();
    account.startExecuting(10);
    expect(() => account.finishExecuting(11)).toThrow(InvariantError);
  });
});
