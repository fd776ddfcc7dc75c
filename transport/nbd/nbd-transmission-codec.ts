// The NBD transmission phase's messages as pure functions: request headers and their checks,
// simple and structured replies, block status. No sockets here; the server and client only move bytes.
import { NBD_EINVAL, NBD_ENOSPC, NBD_EPERM, ShoalError } from "../../core/errors.ts";
import {
  MAX_BLOCK_SIZE_BYTES,
  MAX_BLOCK_STATUS_DESCRIPTORS,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_READ_PAYLOAD_OFFSET,
  STRUCTURED_REPLY_HEADER_BYTES,
  commandName,
} from "./nbd-constants.ts";
import {
  badFrame,
  decodeString,
  encodeMessage,
  readU16,
  readU32,
  readU64,
  writeU16,
  writeU32,
  writeU64,
} from "./nbd-bytes.ts";
import type { Extent } from "../../core/block-device.ts";

// ---- Transmission: flags and request validation -------------------------------------------------

/**
 * Flags for an export. CAN_MULTI_CONN is honest because BlockDevice.flush covers writes completed
 * on every connection to the same export (the volume) on the node; DF only means something once
 * structured replies are on.
 */
export function transmissionFlagsFor(readOnly: boolean, structuredReplies: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;
  flags |= readOnly ? NBD_FLAG_READ_ONLY : NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}

export interface NbdRequest {
  flags: number;
  type: number;
  /** The 64-bit handle as two halves, echoed verbatim; numbers avoid a BigInt per request. */
  handleHigh: number;
  handleLow: number;
  offset: number;
  length: number;
}

export function encodeRequestHeader(target: Uint8Array, at: number, request: NbdRequest): void {
  writeU32(target, at, NBD_REQUEST_MAGIC);
  writeU16(target, at + 4, request.flags);
  writeU16(target, at + 6, request.type);
  writeU32(target, at + 8, request.handleHigh);
  writeU32(target, at + 12, request.handleLow);
  writeU64(target, at + 16, request.offset);
  writeU32(target, at + 24, request.length);
}

export function encodeRequest(request: NbdRequest): Uint8Array {
  const target = new Uint8Array(REQUEST_HEADER_BYTES);
  encodeRequestHeader(target, 0, request);
  return target;
}

/** Parses a request header; a wrong magic or short frame is a protocol violation (BAD_FRAME). */
export function decodeRequestHeader(source: Uint8Array, at: number): NbdRequest | ShoalError {
  if (source.length - at < REQUEST_HEADER_BYTES) {
    return badFrame(`request header is ${source.length - at} bytes; expected ${REQUEST_HEADER_BYTES}`);
  }
  const magic = readU32(source, at);
  if (magic !== NBD_REQUEST_MAGIC) return badFrame(`request magic is 0x${magic.toString(16)}; expected 0x25609513`);
  return {
    flags: readU16(source, at + 4),
    type: readU16(source, at + 6),
    handleHigh: readU32(source, at + 8),
    handleLow: readU32(source, at + 12),
    offset: readU64(source, at + 16),
    length: readU32(source, at + 24),
  };
}

/** What the server negotiated for one connection; checkRequest judges requests against it. */
export interface ExportSession {
  sizeBytes: number;
  readOnly: boolean;
  structuredReplies: boolean;
  blockStatusAllowed: boolean;
}

export interface RequestFault {
  errno: number;
  message: string;
  /** True when the connection cannot continue (an oversize WRITE payload we will not read). */
  disconnect: boolean;
}

function fault(errno: number, message: string, disconnect = false): RequestFault {
  return { errno, message, disconnect };
}

// Which command flags each command accepts. FUA is accepted everywhere because the spec says a
// server advertising SEND_FUA MUST accept it on any command (clients are known to set it).
const ALLOWED_FLAGS: Record<number, number> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_DISC]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
};

/**
 * Judges a request against the session; undefined means "execute it". Error choices follow the
 * spec's "Error values": EINVAL for bad commands, flags, lengths and reads past the end, ENOSPC
 * for writes past the end, EPERM for writes to a read-only export.
 */
export function checkRequest(request: NbdRequest, session: ExportSession): RequestFault | undefined {
  const { type, flags, offset, length } = request;
  const allowed = ALLOWED_FLAGS[type];
  const name = commandName(type);
  if (allowed === undefined) return fault(NBD_EINVAL, `${name} is not supported by this server`);
  if ((flags & ~allowed) !== 0 || ((flags & NBD_CMD_FLAG_DF) !== 0 && !session.structuredReplies)) {
    return fault(NBD_EINVAL, `flags 0x${flags.toString(16)} are not valid for ${name}`);
  }
  if (type === NBD_CMD_DISC || type === NBD_CMD_FLUSH) return undefined;
  // Only READ and WRITE carry the length as payload, so only they are held to the maximum block
  // size; TRIM and WRITE_ZEROES of any 32-bit length are cheap to describe and clients send them.
  const carriesPayload = type === NBD_CMD_READ || type === NBD_CMD_WRITE;
  if (carriesPayload && length > MAX_BLOCK_SIZE_BYTES) {
    return fault(NBD_EINVAL, `${name} of ${length} bytes exceeds the ${MAX_BLOCK_SIZE_BYTES}-byte maximum`, type === NBD_CMD_WRITE);
  }
  const writes = type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
  if (writes && session.readOnly) return fault(NBD_EPERM, `${name} refused: the export is read-only`);
  if (type === NBD_CMD_BLOCK_STATUS && !session.blockStatusAllowed) {
    return fault(NBD_EINVAL, "BLOCK_STATUS needs structured replies and the base:allocation meta context");
  }
  if (length === 0) return fault(NBD_EINVAL, `${name} of 0 bytes is not allowed`);
  if (offset + length > session.sizeBytes) {
    const errno = type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    return fault(errno, `${name} of ${length} bytes at offset ${offset} is past the end of the export (${session.sizeBytes} bytes)`);
  }
  return undefined;
}

// ---- Transmission: replies ----------------------------------------------------------------------

export function writeSimpleReplyHeader(target: Uint8Array, at: number, errno: number, handleHigh: number, handleLow: number): void {
  writeU32(target, at, NBD_SIMPLE_REPLY_MAGIC);
  writeU32(target, at + 4, errno);
  writeU32(target, at + 8, handleHigh);
  writeU32(target, at + 12, handleLow);
}

export function writeStructuredReplyHeader(
  target: Uint8Array,
  at: number,
  flags: number,
  type: number,
  handleHigh: number,
  handleLow: number,
  payloadBytes: number,
): void {
  writeU32(target, at, NBD_STRUCTURED_REPLY_MAGIC);
  writeU16(target, at + 4, flags);
  writeU16(target, at + 6, type);
  writeU32(target, at + 8, handleHigh);
  writeU32(target, at + 12, handleLow);
  writeU32(target, at + 16, payloadBytes);
}

export function encodeSimpleReply(errno: number, handleHigh: number, handleLow: number): Uint8Array {
  const target = new Uint8Array(SIMPLE_REPLY_HEADER_BYTES);
  writeSimpleReplyHeader(target, 0, errno, handleHigh, handleLow);
  return target;
}

/** Bytes of a successful READ reply: header (plus the chunk's offset when structured) and data. */
export function readReplyBytes(structured: boolean, length: number): number {
  return (structured ? STRUCTURED_READ_PAYLOAD_OFFSET : SIMPLE_REPLY_HEADER_BYTES) + length;
}

/**
 * Fills in the header of a successful READ reply in `target` (readReplyBytes long); the device
 * then reads straight into it at `readReplyPayloadOffset`. Structured replies use one OFFSET_DATA
 * chunk flagged DONE, allowed because the whole payload is known good before its first byte goes.
 */
export function writeReadReplyHeader(target: Uint8Array, structured: boolean, handleHigh: number, handleLow: number, offset: number, length: number): void {
  if (!structured) {
    writeSimpleReplyHeader(target, 0, 0, handleHigh, handleLow);
    return;
  }
  writeStructuredReplyHeader(target, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, handleHigh, handleLow, 8 + length);
  writeU64(target, STRUCTURED_REPLY_HEADER_BYTES, offset);
}

/** A fresh READ reply buffer with its header written. */
export function allocateReadReply(structured: boolean, handleHigh: number, handleLow: number, offset: number, length: number): Uint8Array {
  const target = new Uint8Array(readReplyBytes(structured, length));
  writeReadReplyHeader(target, structured, handleHigh, handleLow, offset, length);
  return target;
}

export function readReplyPayloadOffset(structured: boolean): number {
  return structured ? STRUCTURED_READ_PAYLOAD_OFFSET : SIMPLE_REPLY_HEADER_BYTES;
}

/** A final NBD_REPLY_TYPE_ERROR chunk: errno plus a message a person can act on. */
export function encodeStructuredError(handleHigh: number, handleLow: number, errno: number, message: string): Uint8Array {
  const text = encodeMessage(message);
  const target = new Uint8Array(STRUCTURED_REPLY_HEADER_BYTES + 6 + text.length);
  writeStructuredReplyHeader(target, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, handleHigh, handleLow, 6 + text.length);
  writeU32(target, STRUCTURED_REPLY_HEADER_BYTES, errno);
  writeU16(target, STRUCTURED_REPLY_HEADER_BYTES + 4, text.length);
  target.set(text, STRUCTURED_REPLY_HEADER_BYTES + 6);
  return target;
}

export function decodeStructuredError(type: number, payload: Uint8Array): { errno: number; message: string } | ShoalError {
  if (payload.length < 6) return badFrame(`error chunk payload is ${payload.length} bytes; it needs at least 6`);
  const messageBytes = readU16(payload, 4);
  const trailerBytes = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
  if (6 + messageBytes + trailerBytes > payload.length) return badFrame("error chunk message overruns the chunk");
  const message = decodeString(payload.subarray(6, 6 + messageBytes), "error message");
  return { errno: readU32(payload, 0), message: message instanceof ShoalError ? "(undecodable message)" : message };
}

export interface StatusDescriptor {
  length: number;
  flags: number;
}

/**
 * Turns device extents into base:allocation descriptors: holes read as zeros, zero-length
 * extents dropped, equal neighbours merged, clipped to the request (so no descriptor crosses the
 * export's end), at most one with REQ_ONE and at most `maxDescriptors` otherwise. A device that
 * describes nothing yields one "allocated" descriptor, which the spec says is always safe.
 */
export function extentsToDescriptors(
  extents: readonly Extent[],
  requestLength: number,
  requestOne: boolean,
  maxDescriptors: number = MAX_BLOCK_STATUS_DESCRIPTORS,
): StatusDescriptor[] {
  const limit = requestOne ? 1 : maxDescriptors;
  const descriptors: StatusDescriptor[] = [];
  let covered = 0;
  for (const extent of extents) {
    if (covered >= requestLength) break;
    const length = Math.min(Math.max(0, Math.floor(extent.length)), requestLength - covered);
    if (length === 0) continue;
    const flags = extent.hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0;
    const last = descriptors[descriptors.length - 1];
    if (last !== undefined && last.flags === flags) {
      last.length += length;
    } else {
      if (descriptors.length === limit) break;
      descriptors.push({ length, flags });
    }
    covered += length;
  }
  if (descriptors.length === 0) descriptors.push({ length: requestLength, flags: 0 });
  return descriptors;
}

export function encodeBlockStatusReply(handleHigh: number, handleLow: number, contextId: number, descriptors: readonly StatusDescriptor[]): Uint8Array {
  const payloadBytes = 4 + 8 * descriptors.length;
  const target = new Uint8Array(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  writeStructuredReplyHeader(target, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, handleHigh, handleLow, payloadBytes);
  writeU32(target, STRUCTURED_REPLY_HEADER_BYTES, contextId);
  let at = STRUCTURED_REPLY_HEADER_BYTES + 4;
  for (const descriptor of descriptors) {
    writeU32(target, at, descriptor.length);
    writeU32(target, at + 4, descriptor.flags);
    at += 8;
  }
  return target;
}

export function decodeBlockStatusPayload(payload: Uint8Array): { contextId: number; descriptors: StatusDescriptor[] } | ShoalError {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0) {
    return badFrame(`block status payload of ${payload.length} bytes is not 4 + a positive multiple of 8`);
  }
  const descriptors: StatusDescriptor[] = [];
  for (let at = 4; at < payload.length; at += 8) {
    const length = readU32(payload, at);
    if (length === 0) return badFrame("block status descriptor has length 0");
    descriptors.push({ length, flags: readU32(payload, at + 4) });
  }
  return { contextId: readU32(payload, 0), descriptors };
}

/** A reply header as a client sees it; `kind` comes from the magic. */
export type ReplyHeader =
  | { kind: "simple"; errno: number; handleHigh: number; handleLow: number }
  | { kind: "structured"; flags: number; type: number; handleHigh: number; handleLow: number; lengthBytes: number };

/** How many header bytes a reply starting with this magic has, or a BAD_FRAME error. */
export function replyHeaderBytes(magic: number): number | ShoalError {
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_HEADER_BYTES;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_HEADER_BYTES;
  return badFrame(`reply magic is 0x${magic.toString(16)}; expected a simple or structured reply`);
}

export function decodeReplyHeader(source: Uint8Array, at: number): ReplyHeader | ShoalError {
  if (source.length - at < 4) return badFrame("reply header is truncated");
  const headerBytes = replyHeaderBytes(readU32(source, at));
  if (headerBytes instanceof ShoalError) return headerBytes;
  if (source.length - at < headerBytes) return badFrame("reply header is truncated");
  if (headerBytes === SIMPLE_REPLY_HEADER_BYTES) {
    return { kind: "simple", errno: readU32(source, at + 4), handleHigh: readU32(source, at + 8), handleLow: readU32(source, at + 12) };
  }
  return {
    kind: "structured",
    flags: readU16(source, at + 4),
    type: readU16(source, at + 6),
    handleHigh: readU32(source, at + 8),
    handleLow: readU32(source, at + 12),
    lengthBytes: readU32(source, at + 16),
  };
}
