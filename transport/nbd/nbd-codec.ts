// The NBD wire format (NetworkBlockDevice/nbd doc/proto.md): constants, and pure functions that
// build and parse handshake messages, requests and replies. No sockets here, so every bad input
// can be tested byte by byte; the server and client only move bytes and call into this file.
import type { Extent } from "../../core/block-device.ts";
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  ShoalError,
} from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";

// ---- Magics -------------------------------------------------------------------------------------

export const NBD_INIT_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const NBD_OPTS_MAGIC = 0x49484156454f5054n; // "IHAVEOPT"
export const NBD_OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Handshake ----------------------------------------------------------------------------------

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
/** What this server offers; a client setting any other bit MUST be dropped (spec, "Client flags"). */
export const SERVER_HANDSHAKE_FLAGS = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- Transmission -------------------------------------------------------------------------------

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
const NBD_REPLY_TYPE_FLAG_ERROR = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR + 2;

export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

export const BASE_ALLOCATION_CONTEXT = "base:allocation";
/** Our id for base:allocation in SET_META_CONTEXT replies; LIST replies use 0 as the spec asks. */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

// ---- Sizes and limits ---------------------------------------------------------------------------

export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_PADDING_BYTES = 124;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
/** Where the data starts in a structured read reply: chunk header plus the chunk's 64-bit offset. */
export const STRUCTURED_READ_PAYLOAD_OFFSET = STRUCTURED_REPLY_HEADER_BYTES + 8;

/** The spec's hard limit for names, queries and messages. */
export const MAX_STRING_BYTES = 4096;
/** Option payloads are names and queries; anything bigger is treated as a denial of service. */
export const MAX_OPTION_DATA_BYTES = 64 * 1024;
export const MAX_META_CONTEXT_QUERIES = 128;
/** Bounds a BLOCK_STATUS reply (8 bytes each); the spec lets a server describe less than asked. */
export const MAX_BLOCK_STATUS_DESCRIPTORS = 1024;
export const MIN_BLOCK_SIZE_BYTES = 512;
export const MAX_BLOCK_SIZE_BYTES = MAX_REQUEST_BYTES;
const DEFAULT_PREFERRED_BLOCK_SIZE_BYTES = 4096;

const TWO_POW_32 = 0x1_0000_0000;
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

// ---- Names for logs and error messages ----------------------------------------------------------

const ERRNO_NAMES: Record<number, string> = {
  [NBD_EPERM]: "EPERM",
  [NBD_EIO]: "EIO",
  [NBD_ENOMEM]: "ENOMEM",
  [NBD_EINVAL]: "EINVAL",
  [NBD_ENOSPC]: "ENOSPC",
  [NBD_EOVERFLOW]: "EOVERFLOW",
  [NBD_ENOTSUP]: "ENOTSUP",
  [NBD_ESHUTDOWN]: "ESHUTDOWN",
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

const COMMAND_NAMES = ["READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"];

export function commandName(type: number): string {
  return COMMAND_NAMES[type] ?? `command ${type}`;
}

const OPTION_REPLY_NAMES: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: "NBD_REP_ERR_UNSUP",
  [NBD_REP_ERR_POLICY]: "NBD_REP_ERR_POLICY",
  [NBD_REP_ERR_INVALID]: "NBD_REP_ERR_INVALID",
  [NBD_REP_ERR_PLATFORM]: "NBD_REP_ERR_PLATFORM",
  [NBD_REP_ERR_TLS_REQD]: "NBD_REP_ERR_TLS_REQD",
  [NBD_REP_ERR_UNKNOWN]: "NBD_REP_ERR_UNKNOWN",
  [NBD_REP_ERR_SHUTDOWN]: "NBD_REP_ERR_SHUTDOWN",
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: "NBD_REP_ERR_BLOCK_SIZE_REQD",
  [NBD_REP_ERR_TOO_BIG]: "NBD_REP_ERR_TOO_BIG",
};

export function optionReplyName(replyType: number): string {
  return OPTION_REPLY_NAMES[replyType] ?? `reply type ${replyType}`;
}

export function isOptionReplyError(replyType: number): boolean {
  return replyType >= NBD_REP_FLAG_ERROR;
}

export function isReplyTypeError(type: number): boolean {
  return (type & NBD_REPLY_TYPE_FLAG_ERROR) !== 0;
}

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

function readBigU64(source: Uint8Array, at: number): bigint {
  return (BigInt(readU32(source, at)) << 32n) | BigInt(readU32(source, at + 4));
}

function writeBigU64(target: Uint8Array, at: number, value: bigint): void {
  writeU32(target, at, Number(value >> 32n));
  writeU32(target, at + 4, Number(value & 0xffffffffn));
}

function badFrame(message: string): ShoalError {
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
function encodeMessage(message: string): Uint8Array {
  let bytes = utf8Encoder.encode(message);
  let text = message;
  while (bytes.length > MAX_STRING_BYTES) {
    text = text.slice(0, Math.floor(text.length * 0.9));
    bytes = utf8Encoder.encode(text);
  }
  return bytes;
}

// ---- Handshake: greeting and client flags -------------------------------------------------------

export function encodeGreeting(handshakeFlags: number = SERVER_HANDSHAKE_FLAGS): Uint8Array {
  const target = new Uint8Array(GREETING_BYTES);
  writeBigU64(target, 0, NBD_INIT_MAGIC);
  writeBigU64(target, 8, NBD_OPTS_MAGIC);
  writeU16(target, 16, handshakeFlags);
  return target;
}

/** Returns the server's handshake flags; oldstyle servers (no IHAVEOPT) are refused. */
export function decodeGreeting(source: Uint8Array): number | ShoalError {
  if (source.length < GREETING_BYTES) return badFrame(`greeting is ${source.length} bytes; expected ${GREETING_BYTES}`);
  if (readBigU64(source, 0) !== NBD_INIT_MAGIC) return badFrame("server did not greet with NBDMAGIC; is this an NBD server?");
  if (readBigU64(source, 8) !== NBD_OPTS_MAGIC) {
    return badFrame("server speaks oldstyle NBD negotiation, which is not supported");
  }
  return readU16(source, 16);
}

export function encodeClientFlags(clientFlags: number): Uint8Array {
  const target = new Uint8Array(CLIENT_FLAGS_BYTES);
  writeU32(target, 0, clientFlags);
  return target;
}

/** The client's flags; unknown bits or bits we did not offer MUST end the session. */
export function decodeClientFlags(source: Uint8Array, offeredFlags: number = SERVER_HANDSHAKE_FLAGS): number | ShoalError {
  if (source.length < CLIENT_FLAGS_BYTES) return badFrame(`client flags are ${source.length} bytes; expected 4`);
  const flags = readU32(source, 0);
  if ((flags & ~offeredFlags) !== 0) {
    return badFrame(`client flags 0x${flags.toString(16)} include bits the server did not offer (0x${offeredFlags.toString(16)})`);
  }
  return flags;
}

// ---- Handshake: options -------------------------------------------------------------------------

export interface OptionHeader {
  option: number;
  lengthBytes: number;
}

export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const target = new Uint8Array(OPTION_HEADER_BYTES + data.length);
  writeBigU64(target, 0, NBD_OPTS_MAGIC);
  writeU32(target, 8, option);
  writeU32(target, 12, data.length);
  target.set(data, OPTION_HEADER_BYTES);
  return target;
}

export function decodeOptionHeader(source: Uint8Array): OptionHeader | ShoalError {
  if (source.length < OPTION_HEADER_BYTES) return badFrame(`option header is ${source.length} bytes; expected 16`);
  if (readBigU64(source, 0) !== NBD_OPTS_MAGIC) return badFrame("option does not start with IHAVEOPT magic");
  const lengthBytes = readU32(source, 12);
  if (lengthBytes > MAX_OPTION_DATA_BYTES) {
    return badFrame(`option data of ${lengthBytes} bytes exceeds the ${MAX_OPTION_DATA_BYTES}-byte limit`);
  }
  return { option: readU32(source, 8), lengthBytes };
}

export function encodeOptionReply(option: number, replyType: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const target = new Uint8Array(OPTION_REPLY_HEADER_BYTES + payload.length);
  writeBigU64(target, 0, NBD_OPTION_REPLY_MAGIC);
  writeU32(target, 8, option);
  writeU32(target, 12, replyType);
  writeU32(target, 16, payload.length);
  target.set(payload, OPTION_REPLY_HEADER_BYTES);
  return target;
}

/** An error reply carries a message for a person (spec: "All error replies MAY have some data"). */
export function encodeOptionError(option: number, replyType: number, message: string): Uint8Array {
  return encodeOptionReply(option, replyType, encodeMessage(message));
}

export interface OptionReplyHeader {
  option: number;
  replyType: number;
  lengthBytes: number;
}

export function decodeOptionReplyHeader(source: Uint8Array): OptionReplyHeader | ShoalError {
  if (source.length < OPTION_REPLY_HEADER_BYTES) return badFrame(`option reply header is ${source.length} bytes; expected 20`);
  if (readBigU64(source, 0) !== NBD_OPTION_REPLY_MAGIC) return badFrame("option reply has the wrong magic");
  const lengthBytes = readU32(source, 16);
  if (lengthBytes > MAX_OPTION_DATA_BYTES) return badFrame(`option reply of ${lengthBytes} bytes exceeds the limit`);
  return { option: readU32(source, 8), replyType: readU32(source, 12), lengthBytes };
}

/** NBD_OPT_EXPORT_NAME's reply; the 124 zero bytes are left out when the client said NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Uint8Array {
  const target = new Uint8Array(EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : EXPORT_NAME_PADDING_BYTES));
  writeU64(target, 0, sizeBytes);
  writeU16(target, 8, transmissionFlags);
  return target;
}

export interface ExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
}

export function decodeExportNameReply(source: Uint8Array): ExportInfo | ShoalError {
  if (source.length < EXPORT_NAME_REPLY_BYTES) return badFrame("export reply is truncated");
  return { sizeBytes: readU64(source, 0), transmissionFlags: readU16(source, 8) };
}

export interface InfoRequest {
  exportName: string;
  infoTypes: number[];
}

/** Data of NBD_OPT_INFO / NBD_OPT_GO: name length, name, count of info requests, the requests. */
export function encodeInfoRequest(exportName: string, infoTypes: number[]): Uint8Array {
  const name = encodeString(exportName);
  const target = new Uint8Array(4 + name.length + 2 + 2 * infoTypes.length);
  writeU32(target, 0, name.length);
  target.set(name, 4);
  writeU16(target, 4 + name.length, infoTypes.length);
  infoTypes.forEach((type, index) => writeU16(target, 6 + name.length + 2 * index, type));
  return target;
}

export function decodeInfoRequest(data: Uint8Array): InfoRequest | ShoalError {
  if (data.length < 6) return badFrame(`info request is ${data.length} bytes; it needs at least 6`);
  const nameBytes = readU32(data, 0);
  if (nameBytes > data.length - 6) return badFrame(`export name length ${nameBytes} overruns the option data`);
  const exportName = decodeString(data.subarray(4, 4 + nameBytes), "export name");
  if (exportName instanceof ShoalError) return exportName;
  const count = readU16(data, 4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) {
    return badFrame(`info request lists ${count} items but carries ${data.length - 6 - nameBytes} bytes for them`);
  }
  const infoTypes: number[] = [];
  for (let index = 0; index < count; index++) infoTypes.push(readU16(data, 6 + nameBytes + 2 * index));
  return { exportName, infoTypes };
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export function encodeMetaContextRequest(exportName: string, queries: string[]): Uint8Array {
  const name = encodeString(exportName);
  const encoded = queries.map(encodeString);
  const target = new Uint8Array(8 + name.length + encoded.reduce((sum, query) => sum + 4 + query.length, 0));
  writeU32(target, 0, name.length);
  target.set(name, 4);
  writeU32(target, 4 + name.length, encoded.length);
  let at = 8 + name.length;
  for (const query of encoded) {
    writeU32(target, at, query.length);
    target.set(query, at + 4);
    at += 4 + query.length;
  }
  return target;
}

export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest | ShoalError {
  if (data.length < 8) return badFrame(`meta context request is ${data.length} bytes; it needs at least 8`);
  const nameBytes = readU32(data, 0);
  if (nameBytes > data.length - 8) return badFrame(`export name length ${nameBytes} overruns the option data`);
  const exportName = decodeString(data.subarray(4, 4 + nameBytes), "export name");
  if (exportName instanceof ShoalError) return exportName;
  const count = readU32(data, 4 + nameBytes);
  if (count > MAX_META_CONTEXT_QUERIES) return badFrame(`${count} meta context queries exceed the limit of ${MAX_META_CONTEXT_QUERIES}`);
  const queries: string[] = [];
  let at = 8 + nameBytes;
  for (let index = 0; index < count; index++) {
    if (at + 4 > data.length) return badFrame(`meta context query ${index} is truncated`);
    const queryBytes = readU32(data, at);
    if (queryBytes > data.length - at - 4) return badFrame(`meta context query ${index} overruns the option data`);
    const query = decodeString(data.subarray(at + 4, at + 4 + queryBytes), "meta context query");
    if (query instanceof ShoalError) return query;
    queries.push(query);
    at += 4 + queryBytes;
  }
  if (at !== data.length) return badFrame(`meta context request has ${data.length - at} trailing bytes`);
  return { exportName, queries };
}

/** Whether a query names base:allocation; in a LIST the bare namespace "base:" is a wildcard. */
export function queryMatchesBaseAllocation(query: string, listing: boolean): boolean {
  return query === BASE_ALLOCATION_CONTEXT || (listing && query === "base:");
}

export function encodeServerReplyPayload(name: string, description: string): Uint8Array {
  const nameBytes = encodeString(name);
  const descriptionBytes = encodeMessage(description);
  const target = new Uint8Array(4 + nameBytes.length + descriptionBytes.length);
  writeU32(target, 0, nameBytes.length);
  target.set(nameBytes, 4);
  target.set(descriptionBytes, 4 + nameBytes.length);
  return target;
}

export function decodeServerReplyPayload(payload: Uint8Array): { name: string; description: string } | ShoalError {
  if (payload.length < 4) return badFrame("NBD_REP_SERVER payload is truncated");
  const nameBytes = readU32(payload, 0);
  if (nameBytes > payload.length - 4) return badFrame("NBD_REP_SERVER name overruns the reply");
  const name = decodeString(payload.subarray(4, 4 + nameBytes), "export name");
  if (name instanceof ShoalError) return name;
  const description = decodeString(payload.subarray(4 + nameBytes), "export description");
  if (description instanceof ShoalError) return description;
  return { name, description };
}

export function encodeMetaContextPayload(contextId: number, name: string): Uint8Array {
  const nameBytes = encodeString(name);
  const target = new Uint8Array(4 + nameBytes.length);
  writeU32(target, 0, contextId);
  target.set(nameBytes, 4);
  return target;
}

export function decodeMetaContextPayload(payload: Uint8Array): { contextId: number; name: string } | ShoalError {
  if (payload.length < 4) return badFrame("NBD_REP_META_CONTEXT payload is truncated");
  const name = decodeString(payload.subarray(4), "meta context name");
  if (name instanceof ShoalError) return name;
  return { contextId: readU32(payload, 0), name };
}

export interface BlockSizeConstraints {
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

/**
 * Our advertised constraints. The spec wants the preferred size a power of two at least 512 and
 * no larger than the maximum, so an odd or huge device hint is replaced rather than passed on.
 */
export function blockSizeConstraints(preferredBlockSizeBytes: number): BlockSizeConstraints {
  const hint = preferredBlockSizeBytes;
  const usable = Number.isSafeInteger(hint) && hint >= MIN_BLOCK_SIZE_BYTES && (hint & (hint - 1)) === 0;
  const preferredBytes = usable ? Math.min(hint, MAX_BLOCK_SIZE_BYTES) : DEFAULT_PREFERRED_BLOCK_SIZE_BYTES;
  return { minimumBytes: MIN_BLOCK_SIZE_BYTES, preferredBytes, maximumBytes: MAX_BLOCK_SIZE_BYTES };
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Uint8Array {
  const target = new Uint8Array(12);
  writeU16(target, 0, NBD_INFO_EXPORT);
  writeU64(target, 2, sizeBytes);
  writeU16(target, 10, transmissionFlags);
  return target;
}

function encodeInfoText(infoType: number, text: string): Uint8Array {
  const bytes = encodeMessage(text);
  const target = new Uint8Array(2 + bytes.length);
  writeU16(target, 0, infoType);
  target.set(bytes, 2);
  return target;
}

export function encodeInfoName(name: string): Uint8Array {
  return encodeInfoText(NBD_INFO_NAME, name);
}

export function encodeInfoDescription(description: string): Uint8Array {
  return encodeInfoText(NBD_INFO_DESCRIPTION, description);
}

export function encodeInfoBlockSize(constraints: BlockSizeConstraints): Uint8Array {
  const target = new Uint8Array(14);
  writeU16(target, 0, NBD_INFO_BLOCK_SIZE);
  writeU32(target, 2, constraints.minimumBytes);
  writeU32(target, 6, constraints.preferredBytes);
  writeU32(target, 10, constraints.maximumBytes);
  return target;
}

export type InfoReply =
  | { type: typeof NBD_INFO_EXPORT; sizeBytes: number; transmissionFlags: number }
  | { type: typeof NBD_INFO_NAME; name: string }
  | { type: typeof NBD_INFO_DESCRIPTION; description: string }
  | ({ type: typeof NBD_INFO_BLOCK_SIZE } & BlockSizeConstraints)
  | { type: "unknown"; infoType: number };

export function decodeInfoPayload(payload: Uint8Array): InfoReply | ShoalError {
  if (payload.length < 2) return badFrame("NBD_REP_INFO payload is truncated");
  const infoType = readU16(payload, 0);
  switch (infoType) {
    case NBD_INFO_EXPORT:
      if (payload.length !== 12) return badFrame(`NBD_INFO_EXPORT is ${payload.length} bytes; expected 12`);
      return { type: NBD_INFO_EXPORT, sizeBytes: readU64(payload, 2), transmissionFlags: readU16(payload, 10) };
    case NBD_INFO_NAME: {
      const name = decodeString(payload.subarray(2), "export name");
      return name instanceof ShoalError ? name : { type: NBD_INFO_NAME, name };
    }
    case NBD_INFO_DESCRIPTION: {
      const description = decodeString(payload.subarray(2), "export description");
      return description instanceof ShoalError ? description : { type: NBD_INFO_DESCRIPTION, description };
    }
    case NBD_INFO_BLOCK_SIZE:
      if (payload.length !== 14) return badFrame(`NBD_INFO_BLOCK_SIZE is ${payload.length} bytes; expected 14`);
      return {
        type: NBD_INFO_BLOCK_SIZE,
        minimumBytes: readU32(payload, 2),
        preferredBytes: readU32(payload, 6),
        maximumBytes: readU32(payload, 10),
      };
    default:
      return { type: "unknown", infoType };
  }
}

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
