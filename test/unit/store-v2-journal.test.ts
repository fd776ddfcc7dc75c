// The journal's page-map encoding (runs of equal chunk states, found a word at a time where the
// states are word-aligned) against what it must give back: every state of every page, for state
// arrays of every shape a layer holds (1 to 2,048 chunks, runs of any length, unaligned views).
import { expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { encodeCommit, encodeFrame, encodeSection, Journal } from "../../core/store/_journal.ts";
import { RealFileIO } from "../../core/store/file-io.ts";

function randomStates(random: () => number): Uint8Array {
  const count = [1, 2, 3, 4, 5, 7, 64, 1024, 2048][Math.floor(random() * 9)]!;
  const backing = new Uint8Array(count + 3);
  const offset = random() < 0.3 ? 1 + Math.floor(random() * 3) : 0; // a view off the word grid
  const target = backing.subarray(offset, offset + count);
  for (let at = 0; at < count; ) {
    const runLength = 1 + Math.floor(random() < 0.5 ? random() * 3 : random() * count);
    target.fill(Math.floor(random() * 3), at, Math.min(count, at + runLength));
    at += runLength;
  }
  return target;
}

test("page maps written as runs come back state for state, aligned or not, 1 to 2,048 chunks", () => {
  let seed = 42;
  const random = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-journal-"));
  try {
    const layers = [1, 2, 3].map((key) => {
      const pages = Array.from({ length: 200 }, (_, index) => index * 7);
      const states = pages.map((_, index) => (index % 17 === 0 ? undefined : randomStates(random)));
      return { key, pages, states };
    });
    const frame = encodeFrame(undefined, layers.map(({ key, pages, states }) => encodeSection(key, pages, (index) => states[index])));
    // The same bytes as the record form (used for new stores and checkpoints at open).
    const record = encodeCommit({ table: undefined, layers: layers.map(({ key, pages, states }) => ({ key, pages: pages.map((page, index) => ({ page, states: states[index] })) })) });
    expect(Buffer.compare(frame, record)).toBe(0);
    const writer = new Journal(new RealFileIO(), dir);
    writer.replaceNow(frame);
    writer.close();
    const [loaded] = new Journal(new RealFileIO(), dir).load()!;
    expect(loaded!.layers.map(({ key }) => key)).toEqual([1, 2, 3]);
    loaded!.layers.forEach((layer, index) => {
      expect(layer.pages.map(({ page }) => page)).toEqual(layers[index]!.pages);
      layer.pages.forEach(({ states }, pageIndex) => {
        const expected = layers[index]!.states[pageIndex];
        expect(states === undefined ? undefined : [...states]).toEqual(expected === undefined ? undefined : [...expected]);
      });
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
