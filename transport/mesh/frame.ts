// Mesh frames: [u32 BE length of the rest][u32 BE header length][msgpack header][raw payload].
// Bulk data rides as the raw payload after the header, so it is never msgpack-encoded or copied
// into an encode buffer; the sender writes header and payload as two pieces.
import { Packr, Unpackr } from "msgpackr";
import { ShoalError } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";

/** Catalog records larger than a small part of this travel in pieces (record-pieces.ts). */
export const MAX_HEADER_BYTES = 4 * 1024 * 1024;
export const MAX_FRAME_BYTES = MAX_REQUEST_BYTES + MAX_HEADER_BYTES + 8;
const PREFIX_BYTES = 8;

const packr = new Packr({ useRecords: false, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, moreTypes: false });

export type FrameHeader = Record<string, unknown>;

/**
 * A frame's payload as the views of the received chunks it spans: a forwarded 1 MiB read arrives
 * in many chunks, and the reader copies them once, straight to where the bytes must go.
 */
export class Payload {
  constructor(
    readonly parts: Uint8Array[],
    readonly byteLength: number,
  ) {}

  /** Several byte arrays as one contiguous copy (one alone is returned as it is). */
  static concat(parts: Uint8Array[]): Uint8Array {
    return new Payload(parts, parts.reduce((sum, part) => sum + part.byteLength, 0)).bytes();
  }

  static of(bytes: Uint8Array): Payload {
    return new Payload(bytes.byteLength === 0 ? [] : [bytes], bytes.byteLength);
  }

  copyTo(target: Uint8Array, offset: number): void {
    for (const part of this.parts) {
      target.set(part, offset);
      offset += part.byteLength;
    }
  }

  /** One contiguous view; copies only when the payload spans chunks. */
  bytes(): Uint8Array {
    if (this.parts.length === 1) return this.parts[0]!;
    const whole = new Uint8Array(this.byteLength);
    this.copyTo(whole, 0);
    return whole;
  }
}

export interface Frame {
  header: FrameHeader;
  payload: Payload;
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
 * Incremental decoder: feed chunks as they arrive, get whole frames out. Payloads are views of
 * the chunks (Bun hands each data callback a buffer of its own, so views stay valid); only the
 * 8-byte prefix and the small header are ever copied, and only when they straddle chunks.
 */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  /** Offset of the first unread byte in chunks[0]. */
  private headOffset = 0;
  private buffered = 0;
  /** Largest frame accepted (prefix excluded); lowered for connections not yet trusted. */
  maxFrameBytes = MAX_FRAME_BYTES;

  /** Returns the frames completed by `chunk`. Throws BAD_FRAME on garbage. */
  push(chunk: Uint8Array): Frame[] {
    if (chunk.byteLength > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.byteLength;
    }
    const frames: Frame[] = [];
    while (this.buffered >= PREFIX_BYTES) {
      const prefix = this.peek(PREFIX_BYTES);
      const view = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_BYTES);
      const rest = view.getUint32(0);
      const headerBytes = view.getUint32(4);
      if (rest < 4 || rest > this.maxFrameBytes || headerBytes > MAX_HEADER_BYTES || headerBytes > rest - 4) {
        throw new ShoalError("BAD_FRAME", `mesh frame with length ${rest} and header ${headerBytes} is malformed`);
      }
      if (this.buffered < 4 + rest) break;
      this.skip(PREFIX_BYTES);
      const header = decodeHeader(this.peek(headerBytes));
      this.skip(headerBytes);
      const payloadBytes = rest - 4 - headerBytes;
      frames.push({ header, payload: new Payload(this.takeParts(payloadBytes), payloadBytes) });
    }
    return frames;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  /** The next `count` bytes, without consuming them: a view, or a copy if they straddle chunks. */
  private peek(count: number): Uint8Array {
    const first = this.chunks[0]!;
    if (first.byteLength - this.headOffset >= count) return first.subarray(this.headOffset, this.headOffset + count);
    const copy = new Uint8Array(count);
    let filled = 0;
    let offset = this.headOffset;
    for (const chunk of this.chunks) {
      const piece = Math.min(chunk.byteLength - offset, count - filled);
      copy.set(chunk.subarray(offset, offset + piece), filled);
      filled += piece;
      offset = 0;
      if (filled === count) break;
    }
    return copy;
  }

  private skip(count: number): void {
    this.takeParts(count);
  }

  private takeParts(count: number): Uint8Array[] {
    const parts: Uint8Array[] = [];
    this.buffered -= count;
    while (count > 0) {
      const first = this.chunks[0]!;
      const available = first.byteLength - this.headOffset;
      if (count < available) {
        parts.push(first.subarray(this.headOffset, this.headOffset + count));
        this.headOffset += count;
        return parts;
      }
      parts.push(this.headOffset === 0 ? first : first.subarray(this.headOffset));
      count -= available;
      this.chunks.shift();
      this.headOffset = 0;
    }
    return parts;
  }
}

/** A value as msgpack bytes, encoded as headers are (for bytes that travel as payload pieces). */
export function packValue(value: unknown): Uint8Array {
  return packr.pack(value);
}

export function unpackValue(bytes: Uint8Array): unknown {
  try {
    return unpackr.unpack(bytes);
  } catch (err) {
    throw new ShoalError("BAD_FRAME", `pieced value is not valid msgpack: ${(err as Error).message}`);
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
