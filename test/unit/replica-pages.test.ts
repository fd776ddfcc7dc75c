// A replica's catch-up copies with every layer, between two real page stores: a copy that was
// away takes the snapshots cut meanwhile from its head and installs the pages written since with
// all their layers, so every layer then reads as at the source; a copy read before a cut it has
// seen waits, and a copy whose bytes do not add up (a staged piece lost) is not applied.
import { afterEach, describe, expect, test } from "bun:test";
import { PageStore } from "../../core/store/page-store.ts";
import { Payload, type FrameHeader } from "../../transport/mesh/frame.ts";
import { ReplicaPages, splitBytes } from "../../transport/node/replica-pages.ts";
import type { ChunkRange } from "../../core/replica/page-groups.ts";
import { removeTempDirs, tempDir } from "./_store-v2-fixture.ts";

afterEach(removeTempDirs);

const PAGE = 64 * 1024;
const warnings: string[] = [];
const log = { info: () => {}, warn: (message: string) => void warnings.push(message) };
/** No snapshot deleted (see the deletion test). */
const none = () => false;

function filled(value: number): Uint8Array {
  return new Uint8Array(PAGE).fill(value);
}

function readPage(store: PageStore, layer: string, page: number): number[] {
  const out = new Uint8Array(PAGE);
  store.read(layer, page, 0, PAGE, out, 0);
  return [out[0]!, out[PAGE - 1]!];
}

/** Both stores hold pages 0-2 as written before the copy left; the source then cuts s1, s2 and writes pages 0 and 1 around them. */
function awayAndBack() {
  const source = new PageStore({ dir: tempDir() });
  const target = new PageStore({ dir: tempDir() });
  for (const store of [source, target]) for (const page of [0, 1, 2]) store.write("v", page, 0, filled(10 + page), PAGE);
  source.write("v", 1, 0, filled(21), PAGE); // while away, before s1
  source.freezeLayer("v", "v@s1");
  source.write("v", 0, 0, filled(30), PAGE); // between s1 and s2
  source.freezeLayer("v", "v@s2");
  source.write("v", 1, 0, filled(41), PAGE); // after s2
  return { source, target, sent: new ReplicaPages(source, log, "a"), received: new ReplicaPages(target, log, "b") };
}

/** Whole pages as the ranges a copy names. */
function wholePages(...pages: number[]): ChunkRange[] {
  return pages.map((page) => ({ page, offset: 0, length: PAGE }));
}

function payloadOf(parts: Uint8Array[]): Payload {
  return new Payload(parts, parts.reduce((sum, part) => sum + part.byteLength, 0));
}

describe("catch-up copies with every layer", () => {
  test("the returning copy freezes its head into the snapshots cut while it was away, then installs the pages written since with all their layers", async () => {
    const { source, target, sent, received } = awayAndBack();
    const outgoing = sent.export("v", wholePages(0, 1));
    expect(outgoing.messages).toHaveLength(1);
    const pages = received.received("a copy", outgoing.args, payloadOf(outgoing.messages[0]!))!;
    expect(received.levelLayers("a copy", "v", pages, none)).toBe(true);
    await received.install("v", pages, wholePages(0, 1));
    for (const layer of ["v@s1", "v@s2", "v"]) {
      for (const page of [0, 1, 2]) expect(`${layer} page ${page}: ${readPage(target, layer, page)}`).toBe(`${layer} page ${page}: ${readPage(source, layer, page)}`);
    }
    expect(target.parentOf("v")).toBe("v@s2");
    // Once level, a later copy freezes nothing more.
    expect(received.levelLayers("a copy", "v", received.received("a copy", sent.export("v", wholePages()).args, payloadOf([]))!, none)).toBe(true);
    expect(target.layers().map((layer) => layer.id)).toEqual(["v", "v@s1", "v@s2"]);
    source.close();
    target.close();
  });

  test("a copy read before a cut this node has made waits (it is sent again), and one whose bytes do not add up is not applied", () => {
    const { source, target, sent, received } = awayAndBack();
    const before = sent.export("v", wholePages(2));
    source.freezeLayer("v", "v@s3");
    const after = sent.export("v", wholePages(2));
    expect(received.levelLayers("a copy", "v", received.received("a copy", after.args, payloadOf(after.messages[0]!))!, none)).toBe(true);
    expect(received.levelLayers("an old copy", "v", received.received("an old copy", before.args, payloadOf(before.messages[0]!))!, none)).toBe(false);
    warnings.length = 0;
    expect(received.received("a short copy", after.args, payloadOf([after.messages[0]![0]!.subarray(1)]))).toBeUndefined();
    expect(warnings[0]).toContain("a short copy came with");
    source.close();
    target.close();
  });

  test("a copy in several messages: the pieces staged ahead complete it, and are gone once it came", () => {
    const { source, target, sent, received } = awayAndBack();
    const outgoing = sent.export("v", wholePages(0, 1));
    const whole = outgoing.messages[0]!;
    const [first, ...rest] = splitBytes(whole, 40_000);
    const args: FrameHeader = { ...outgoing.args, k: "a.1" };
    received.stage({ u: "uid", k: "a.1" }, payloadOf(first!));
    for (const staged of rest.slice(0, -1)) received.stage({ u: "uid", k: "a.1" }, payloadOf(staged));
    const pages = received.received("a large copy", args, payloadOf(rest[rest.length - 1]!));
    expect(pages?.ranges.size).toBe(2);
    // The staged pieces were taken: the same message again lacks them.
    expect(received.received("the copy again", args, payloadOf(rest[rest.length - 1]!))).toBeUndefined();
    source.close();
    target.close();
  });
});

describe("a snapshot deleted while the copy was away", () => {
  test("its layer still on the returning copy is removed, and the copy applies once it is gone", async () => {
    const { source, target, sent, received } = awayAndBack();
    target.freezeLayer("v", "v@gone"); // cut on every copy before this one left, deleted by the others since
    const outgoing = sent.export("v", wholePages(2));
    const pages = () => received.received("a copy", outgoing.args, payloadOf(outgoing.messages[0]!))!;
    expect(received.levelLayers("a copy", "v", pages(), none)).toBe(false); // not known to be deleted: waits
    expect(target.hasLayer("v@gone")).toBe(true);
    expect(received.levelLayers("a copy", "v", pages(), (layer) => layer === "v@gone")).toBe(false); // removed; the copy comes again
    await target.deleteLayer("v@gone"); // the removal already under way
    expect(target.hasLayer("v@gone")).toBe(false);
    expect(received.levelLayers("a copy", "v", pages(), none)).toBe(true);
    await received.install("v", pages(), wholePages(2));
    for (const layer of ["v@s1", "v@s2", "v"]) expect(readPage(target, layer, 2)).toEqual(readPage(source, layer, 2));
    source.close();
    target.close();
  });
});

describe("splitting a copy's bytes into messages", () => {
  test("groups of at most the limit, arrays cut into views where they straddle one", () => {
    const parts = [new Uint8Array(5), new Uint8Array(7), new Uint8Array(3)];
    expect(splitBytes(parts, 6).map((group) => group.map((part) => part.byteLength))).toEqual([[5, 1], [6], [3]]);
    expect(splitBytes([], 6)).toEqual([[]]);
    expect(splitBytes([new Uint8Array(4)], 4).map((group) => group.length)).toEqual([1]);
  });
});
