import { describe, expect, test } from "bun:test";
import { encodeFrameHead, FrameDecoder, MAX_FRAME_BYTES } from "../../transport/mesh/frame.ts";

function frame(header: Record<string, unknown>, payload: Uint8Array): Uint8Array {
  const head = encodeFrameHead(header, payload.byteLength);
  const bytes = new Uint8Array(head.byteLength + payload.byteLength);
  bytes.set(head);
  bytes.set(payload, head.byteLength);
  return bytes;
}

describe("mesh frame codec", () => {
  test("header and payload round-trip, several frames in one chunk", () => {
    const payload = new Uint8Array(1000).map((_, i) => i & 255);
    const bytes = new Uint8Array([...frame({ t: "q", i: 1, op: "x" }, payload), ...frame({ t: "r", i: 1, ok: true }, new Uint8Array())]);
    const frames = new FrameDecoder().push(bytes);
    expect(frames.length).toBe(2);
    expect(frames[0]!.header).toEqual({ t: "q", i: 1, op: "x" });
    expect([...frames[0]!.payload.bytes()]).toEqual([...payload]);
    expect(frames[1]!.payload.byteLength).toBe(0);
  });
  test("a frame split at every byte boundary decodes the same", () => {
    const bytes = frame({ t: "q", i: 7, a: { v: "uid" } }, new Uint8Array(300).fill(9));
    for (let cut = 1; cut < bytes.byteLength; cut += 7) {
      const decoder = new FrameDecoder();
      expect(decoder.push(bytes.subarray(0, cut))).toEqual([]);
      const frames = decoder.push(bytes.subarray(cut));
      expect(frames.length).toBe(1);
      expect(frames[0]!.header.i).toBe(7);
      expect(frames[0]!.payload.bytes().every((b) => b === 9)).toBe(true);
    }
  });
  test("a large frame arriving in many chunks is gathered once", () => {
    const bytes = frame({ t: "q", i: 1 }, new Uint8Array(4 * 1024 * 1024).fill(3));
    const decoder = new FrameDecoder();
    let frames: unknown[] = [];
    for (let offset = 0; offset < bytes.byteLength; offset += 65536) frames = frames.concat(decoder.push(bytes.subarray(offset, offset + 65536)));
    expect(frames.length).toBe(1);
    expect(decoder.bufferedBytes).toBe(0);
  });
  test("a length over the limit is BAD_FRAME before any allocation", () => {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setUint32(0, MAX_FRAME_BYTES + 1);
    expect(() => new FrameDecoder().push(bytes)).toThrow(/malformed/);
  });
  test("a header length past the frame is BAD_FRAME", () => {
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setUint32(0, 12);
    new DataView(bytes.buffer).setUint32(4, 100);
    expect(() => new FrameDecoder().push(bytes)).toThrow(/malformed/);
  });
  test("a header that is not msgpack, or not a map, is BAD_FRAME", () => {
    const notMap = new Uint8Array([0, 0, 0, 5, 0, 0, 0, 1, 0x01]); // msgpack fixint 1, not a map
    expect(() => new FrameDecoder().push(notMap)).toThrow(/not a map/);
    const garbage = new Uint8Array([0, 0, 0, 6, 0, 0, 0, 2, 0xc1, 0xc1]);
    expect(() => new FrameDecoder().push(garbage)).toThrow(/BAD_FRAME|msgpack|not a map/);
  });
});
