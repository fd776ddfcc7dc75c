import { describe, expect, test } from "bun:test";
import { MAX_VOLUME_PAGES } from "../../core/geometry.ts";
import { volumeFromWire, newVolumeRecord, type VolumeRecord, type VolumeRecordWire } from "../../core/cluster/volume.ts";
import { MAX_HEADER_BYTES, Payload } from "../../transport/mesh/frame.ts";
import { MAX_PIECED_BYTES, parsePiecedRef, PIECE_BYTES, PiecedOutbox, pullPieces, type PieceFetch } from "../../transport/mesh/record-pieces.ts";

const MiB = 1024 * 1024;

function volume(pages: number): VolumeRecord {
  return newVolumeRecord({ name: "v", sizeBytes: pages * 4 * MiB, pageSizeBytes: 4 * MiB, nodes: ["a", "b", "c"], uid: "u", nowMs: 1, previousVersion: 0 });
}

/** A 16 TiB volume after pages moved one by one all over: its table takes more than a frame header. */
function scattered(): VolumeRecord {
  const record = volume(MAX_VOLUME_PAGES / 4);
  const owners = record.routing.owners.slice();
  for (let page = 0; page < owners.length; page++) owners[page] = (page * 7 + (page >> 5)) % 3;
  return { ...record, version: 9, routing: { version: 9, nodes: record.routing.nodes, owners } };
}

function fetchFrom(outbox: PiecedOutbox, log: number[] = []): PieceFetch {
  return async (op, args) => {
    expect(op).toBe("catalog.piece");
    const reply = outbox.piece(args);
    log.push(reply.payload!.byteLength);
    return { result: reply.result ?? {}, payload: Payload.of(reply.payload!) };
  };
}

describe("catalog records in pieces", () => {
  test("a striped table of the largest volume goes inline", () => {
    const offer = new PiecedOutbox().offerVolume(volume(MAX_VOLUME_PAGES));
    expect("record" in offer).toBe(true);
  });

  test("a scattered table goes by reference and arrives whole in pieces under the frame limit", async () => {
    const outbox = new PiecedOutbox();
    const record = scattered();
    const offer = outbox.offerVolume(record);
    if (!("recordRef" in offer)) throw new Error("expected a reference");
    expect(offer.recordRef.rank).toEqual({ version: 9, uid: "u", routingVersion: 9, moveId: "" });
    // The same record object is encoded once: a second offer names the same bytes.
    expect((outbox.offerVolume(record) as typeof offer).recordRef.ref).toBe(offer.recordRef.ref);
    const sizes: number[] = [];
    const back = volumeFromWire((await pullPieces(parsePiecedRef(offer.recordRef), fetchFrom(outbox, sizes))) as VolumeRecordWire);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(PIECE_BYTES);
    expect(offer.recordRef.bytes).toBeGreaterThan(MAX_HEADER_BYTES);
    expect(sizes.length).toBe(Math.ceil(offer.recordRef.bytes / PIECE_BYTES));
    expect(Buffer.from(back.routing.owners.buffer).equals(Buffer.from(record.routing.owners.buffer))).toBe(true);
  }, 60_000);

  test("references that are malformed, over the limit, unknown or asked past their end are refused", async () => {
    expect(() => parsePiecedRef({ ref: 5, bytes: 10 })).toThrow(/malformed/);
    expect(() => parsePiecedRef({ ref: "x", bytes: MAX_PIECED_BYTES + 1 })).toThrow(/over the/);
    const outbox = new PiecedOutbox();
    expect(() => outbox.piece({ ref: "nope", offset: 0 })).toThrow(/no longer held/);
    const ref = outbox.offerBytes(new Uint8Array(10));
    expect(() => outbox.piece({ ref: ref.ref, offset: 10 })).toThrow(/outside/);
    // A holder that answers short or long is caught, not trusted.
    const liar: PieceFetch = async () => ({ result: {}, payload: Payload.of(new Uint8Array(11)) });
    await expect(pullPieces(ref, liar)).rejects.toThrow(/came with 11 bytes/);
  });
});
