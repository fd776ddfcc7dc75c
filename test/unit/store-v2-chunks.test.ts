// A page's chunk states, packed two bits to a chunk: every state at every position reads back as
// set, the byte-per-chunk forms (journal, page moves) round-trip, and fully written pages share
// one array that a change never writes into.
import { describe, expect, test } from "bun:test";
import { ABSENT, allData, DATA, entryFrom, hasAbsent, lastChunkIn, newEntry, runsOf, setState, stateOf, statesOf, statesView, ZERO } from "../../core/store/_chunks.ts";

/** Deterministic states (an LCG), so a failure names the same case every run. */
function seededStates(count: number, seed: number): Uint8Array {
  let value = seed;
  return Uint8Array.from({ length: count }, () => {
    value = (Math.imul(value, 1103515245) + 12345) >>> 0;
    return (value >>> 16) % 3;
  });
}

describe("page chunk states", () => {
  test("states set one by one read back, as do the byte-per-chunk forms, for chunk counts not a multiple of four", () => {
    for (const chunks of [1, 2, 3, 5, 7, 1024, 2048]) {
      const expected = seededStates(chunks, chunks);
      for (const fill of [ABSENT, ZERO]) {
        const entry = newEntry(chunks, fill);
        expect([...statesOf(entry)]).toEqual(new Array(chunks).fill(fill));
        for (let chunk = 0; chunk < chunks; chunk++) setState(entry, chunk, expected[chunk]!);
        for (let chunk = 0; chunk < chunks; chunk++) expect(stateOf(entry, chunk)).toBe(expected[chunk]!);
        expect([...statesOf(entry)]).toEqual([...expected]);
        expect([...statesView(entry)]).toEqual([...expected]);
        expect(entry.dataChunks).toBe(expected.filter((state) => state === DATA).length);
        const loaded = entryFrom(expected);
        expect([...statesOf(loaded)]).toEqual([...expected]);
        expect(loaded.dataChunks).toBe(entry.dataChunks);
        expect(lastChunkIn(entry, DATA)).toBe(expected.lastIndexOf(DATA));
        const runs = [...runsOf(entry, DATA)];
        const fromRuns = new Array(chunks).fill(false);
        for (const [first, count] of runs) for (let chunk = first; chunk < first + count; chunk++) fromRuns[chunk] = true;
        expect(fromRuns).toEqual([...expected].map((state) => state === DATA));
      }
    }
  });

  test("hasAbsent finds one ABSENT chunk at any position, tail chunks included, and none in pages of DATA and ZERO", () => {
    for (const chunks of [1, 3, 5, 1024, 1027]) {
      const full = newEntry(chunks, DATA);
      expect(hasAbsent(full)).toBe(false);
      const mixed = entryFrom(seededStates(chunks, 7).map((state) => (state === ABSENT ? ZERO : state)));
      expect(hasAbsent(mixed)).toBe(false);
      for (let chunk = 0; chunk < chunks; chunk++) {
        const entry = entryFrom(statesOf(mixed));
        setState(entry, chunk, ABSENT);
        expect(hasAbsent(entry)).toBe(true);
      }
      expect(hasAbsent(newEntry(chunks, ABSENT))).toBe(true);
    }
  });

  test("a page written whole shares the all-DATA array; a change copies it and leaves the others whole", () => {
    const first = newEntry(1024, ZERO);
    for (let chunk = 0; chunk < 1024; chunk++) setState(first, chunk, DATA);
    const second = entryFrom(new Uint8Array(1024).fill(DATA));
    expect(first.packed).toBe(second.packed);
    expect(allData(first, 0, 1023)).toBe(true);
    expect(setState(second, 513, ZERO)).toBe(true);
    expect(second.packed).not.toBe(first.packed);
    expect(stateOf(second, 513)).toBe(ZERO);
    expect(allData(second, 0, 512)).toBe(true);
    expect(allData(second, 512, 514)).toBe(false);
    for (let chunk = 0; chunk < 1024; chunk++) expect(stateOf(first, chunk)).toBe(DATA);
    expect(setState(second, 513, DATA)).toBe(true);
    expect(second.packed).toBe(first.packed);
    expect(setState(second, 0, DATA)).toBe(false);
  });

  test("a 4 MiB page's map is 256 bytes", () => {
    expect(newEntry(1024, ZERO).packed.byteLength).toBe(256);
  });
});
