// Mesh frames: [u32 BE length of the rest][u32 BE header length][msgpack header][raw payload].
// Bulk data rides as the raw payload after the header, so it is never msgpack-encoded or copied
// into an encode buffer; the sender writes header and payload as two pieces.
import { Packr, Unpackr } from "msgpackr";
import { ShoalError } from "../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../core/geometry.ts";

export const MAX_HEADER_BYTES = 4 * 1024 * 1024; // routing tables of big volumes ride in headers
export const MAX_FRAME_BYTES = MAX_REQUEST_BYTES + MAX_HEADER_BYTES + 8;
const PREFIX_BYTES = 8;

const packr = new Packr({ useRecords: false, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, moreTypes: false });

export type FrameHeader = Record<string, unknown>;

export interface Frame {
  header: FrameHeader;
  /** A view into the received bytes; empty when the frame carries no payload. */
  payload: Uint8Array;
}

export const EMPTY_PAYLOAD = new Uint8Array(0);

/** The bytes that precede the payload. Write `payload` right after them. */
export function encodeFrameHead(header: FrameHeader, payloadBytes: number): Uint8Array {
  const body = packr.pack(header);
  if (body.byteLength > MAX_HEADER_BYTES) throw new ShoalError("TOO_LARGE", `mesh header of ${body.byteLength} bytes is over the limit`);
  if (payloadBytes > MAX_REQUEST_BYTES) throw new ShoalError("TOO_LARGE", `mesh payload of ${payloadBytes} bytes is over the limit`);
  const head = new Uint8Array(PREFIX_BYTES + body.byteLength);
  const view = new DataView(head.buffer);
  view.setUint32(0, 4 + body.byteLength + payloadBytes);
  view.setUint32(4, body.byteLength);
  head.set(body, PREFIX_BYTES);
  return head;
}

/**
 * Incremental decoder: feed chunks as they arrive, get whole frames out. A frame that spans
 * chunks is gathered once, when its last byte arrives (never re-copied per chunk). Frames in
 * a single chunk are views into it: Bun hands each data callback a buffer of its own.
 */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Bytes needed before the buffered frame is complete; 0 while its length is unknown. */
  private needed = 0;

  /** Returns the complete frames in `chunk` (plus what was buffered). Throws BAD_FRAME on garbage. */
  push(chunk: Uint8Array): Frame[] {
    if (this.buffered === 0) return this.parse(chunk);
    this.chunks.push(chunk);
    this.buffered += chunk.byteLength;
    if (this.buffered < Math.max(this.needed, PREFIX_BYTES)) return [];
    const whole = new Uint8Array(this.buffered);
    let offset = 0;
    for (const piece of this.chunks) {
      whole.set(piece, offset);
      offset += piece.byteLength;
    }
    this.chunks = [];
    this.buffered = 0;
    return this.parse(whole);
  }

  private parse(buffer: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    let cursor = 0;
    this.needed = 0;
    while (buffer.byteLength - cursor >= PREFIX_BYTES) {
      const rest = view.getUint32(cursor);
      const headerBytes = view.getUint32(cursor + 4);
      if (rest < 4 || rest > MAX_FRAME_BYTES || headerBytes > MAX_HEADER_BYTES || headerBytes > rest - 4) {
        throw new ShoalError("BAD_FRAME", `mesh frame with length ${rest} and header ${headerBytes} is malformed`);
      }
      const frameEnd = cursor + 4 + rest;
      if (frameEnd > buffer.byteLength) {
        this.needed = 4 + rest;
        break;
      }
      const headerStart = cursor + PREFIX_BYTES;
      const payloadStart = headerStart + headerBytes;
      frames.push({ header: decodeHeader(buffer.subarray(headerStart, payloadStart)), payload: buffer.subarray(payloadStart, frameEnd) });
      cursor = frameEnd;
    }
    if (cursor < buffer.byteLength) {
      this.chunks = [buffer.subarray(cursor)];
      this.buffered = buffer.byteLength - cursor;
    }
    return frames;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }
}

function decodeHeader(bytes: Uint8Array): FrameHeader {
  let header: unknown;
  try {
    header = unpackr.unpack(bytes);
  } catch (err) {
    throw new ShoalError("BAD_FRAME", `mesh header is not valid msgpack: ${(err as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new ShoalError("BAD_FRAME", "mesh header is not a map");
  }
  return header as FrameHeader;
}
