// Big-endian fields and protocol strings, as the NBD codecs read and write them.
import { ShoalError } from "../../core/errors.ts";
import { MAX_STRING_BYTES } from "./nbd-constants.ts";

const TWO_POW_32 = 0x1_0000_0000;
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

// ---- Byte helpers (big-endian; manual reads avoid a DataView per message on the hot path) -------

export function readU16(source: Uint8Array, at: number): number {
  return (source[at]! << 8) | source[at + 1]!;
}

export function readU32(source: Uint8Array, at: number): number {
  return ((source[at]! << 24) | (source[at + 1]! << 16) | (source[at + 2]! << 8) | source[at + 3]!) >>> 0;
}

/** A 64-bit field as a number; values past 2^53 lose precision but stay past any export's end. */
export function readU64(source: Uint8Array, at: number): number {
  return readU32(source, at) * TWO_POW_32 + readU32(source, at + 4);
}

export function writeU16(target: Uint8Array, at: number, value: number): void {
  target[at] = value >>> 8;
  target[at + 1] = value;
}

export function writeU32(target: Uint8Array, at: number, value: number): void {
  target[at] = value >>> 24;
  target[at + 1] = value >>> 16;
  target[at + 2] = value >>> 8;
  target[at + 3] = value;
}

export function writeU64(target: Uint8Array, at: number, value: number): void {
  writeU32(target, at, Math.floor(value / TWO_POW_32));
  writeU32(target, at + 4, value >>> 0);
}

export function readBigU64(source: Uint8Array, at: number): bigint {
  return (BigInt(readU32(source, at)) << 32n) | BigInt(readU32(source, at + 4));
}

export function writeBigU64(target: Uint8Array, at: number, value: bigint): void {
  writeU32(target, at, Number(value >> 32n));
  writeU32(target, at + 4, Number(value & 0xffffffffn));
}

export function badFrame(message: string): ShoalError {
  return new ShoalError("BAD_FRAME", message);
}

/** Decodes a protocol string: valid UTF-8, no NUL, at most 4096 bytes (spec, "Conventions"). */
export function decodeString(bytes: Uint8Array, what: string): string | ShoalError {
  if (bytes.length > MAX_STRING_BYTES) return badFrame(`${what} is ${bytes.length} bytes; the limit is ${MAX_STRING_BYTES}`);
  if (bytes.includes(0)) return badFrame(`${what} contains a NUL byte`);
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    return badFrame(`${what} is not valid UTF-8`);
  }
}

export function encodeString(text: string): Uint8Array {
  return utf8Encoder.encode(text);
}

/** Cuts a human-readable message to the spec's string limit without splitting a character. */
export function encodeMessage(message: string): Uint8Array {
  let bytes = utf8Encoder.encode(message);
  let text = message;
  while (bytes.length > MAX_STRING_BYTES) {
    text = text.slice(0, Math.floor(text.length * 0.9));
    bytes = utf8Encoder.encode(text);
  }
  return bytes;
}
