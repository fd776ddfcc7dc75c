// The NBD handshake's messages as pure functions: greeting, client flags, options and their
// replies, export info. No sockets here, so every bad input can be tested byte by byte.
import { ShoalError } from "../../core/errors.ts";
import {
  BASE_ALLOCATION_CONTEXT,
  CLIENT_FLAGS_BYTES,
  DEFAULT_PREFERRED_BLOCK_SIZE_BYTES,
  EXPORT_NAME_PADDING_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  GREETING_BYTES,
  MAX_BLOCK_SIZE_BYTES,
  MAX_META_CONTEXT_QUERIES,
  MAX_OPTION_DATA_BYTES,
  MIN_BLOCK_SIZE_BYTES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  SERVER_HANDSHAKE_FLAGS,
} from "./nbd-constants.ts";
import {
  badFrame,
  decodeString,
  encodeMessage,
  encodeString,
  readBigU64,
  readU16,
  readU32,
  readU64,
  writeBigU64,
  writeU16,
  writeU32,
  writeU64,
} from "./nbd-bytes.ts";

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
