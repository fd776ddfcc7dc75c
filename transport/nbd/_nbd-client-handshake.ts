// The NBD client's side of fixed-newstyle negotiation: greeting, STARTTLS, structured replies,
// base:allocation, NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME for old servers), and
// NBD_OPT_LIST. What it agreed on is handed to the transmission phase (nbd-client.ts).
import { type ErrorCode, ShoalError } from "../../core/errors.ts";
import { type TlsIdentity, tlsIdentity } from "../tls/tls-identity.ts";
import { protocolError, type Wire } from "./_nbd-client-wire.ts";
import {
  BASE_ALLOCATION_CONTEXT,
  type BlockSizeConstraints,
  EXPORT_NAME_PADDING_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  GREETING_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_REPLY_HEADER_BYTES,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoPayload,
  decodeMetaContextPayload,
  decodeOptionReplyHeader,
  decodeServerReplyPayload,
  decodeString,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  isOptionReplyError,
  optionReplyName,
} from "./nbd-codec.ts";

const MAX_OPTION_REPLIES = 100_000;

/** What negotiation needs of NbdClientOptions. */
export interface HandshakeOptions {
  exportName: string;
  /** Negotiate structured replies (and base:allocation for blockStatus); default true. */
  structuredReplies?: boolean;
  /** STARTTLS with this identity (verifying the server against its CA); default: the process's (tls-identity.ts). */
  tls?: TlsIdentity;
}

export interface NbdExportEntry {
  name: string;
  description: string;
}

/** Greeting and client flags; returns whether the server will omit the 124 zero bytes. */
async function greet(wire: Wire): Promise<boolean> {
  const handshakeFlags = decodeGreeting(await wire.read(GREETING_BYTES));
  if (handshakeFlags instanceof ShoalError) throw protocolError(wire, handshakeFlags.message);
  if ((handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) {
    throw protocolError(wire, "the server does not support fixed newstyle negotiation");
  }
  const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
  wire.send(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));
  return noZeroes;
}

interface OptionReply {
  replyType: number;
  payload: Uint8Array;
}

async function readOptionReply(wire: Wire, option: number): Promise<OptionReply> {
  const header = decodeOptionReplyHeader(await wire.read(OPTION_REPLY_HEADER_BYTES));
  if (header instanceof ShoalError) throw protocolError(wire, header.message);
  if (header.option !== option) throw protocolError(wire, `reply for option ${header.option} while waiting for ${option}`);
  return { replyType: header.replyType, payload: await wire.read(header.lengthBytes) };
}

/** Sends an option and gathers its replies up to the final one (ACK or an error). */
async function negotiate(wire: Wire, option: number, data?: Uint8Array): Promise<{ replies: OptionReply[]; final: OptionReply }> {
  wire.send(encodeOption(option, data));
  const replies: OptionReply[] = [];
  for (;;) {
    const reply = await readOptionReply(wire, option);
    if (reply.replyType === NBD_REP_ACK || isOptionReplyError(reply.replyType)) return { replies, final: reply };
    if (replies.length >= MAX_OPTION_REPLIES) throw protocolError(wire, `more than ${MAX_OPTION_REPLIES} replies to option ${option}`);
    replies.push(reply);
  }
}

function optionFailure(wire: Wire, what: string, reply: OptionReply, code: ErrorCode = "BAD_REQUEST"): ShoalError {
  const message = decodeString(reply.payload, "error message");
  const detail = message instanceof ShoalError || message === "" ? "" : `: ${message}`;
  return new ShoalError(code, `NBD server ${wire.address} refused ${what} with ${optionReplyName(reply.replyType)}${detail}`);
}

export interface Negotiated {
  sizeBytes: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  metaContextId: number | undefined;
  blockSize: BlockSizeConstraints | undefined;
}

export async function handshake(wire: Wire, options: HandshakeOptions): Promise<Negotiated> {
  const noZeroes = await greet(wire);
  const identity = options.tls ?? tlsIdentity();
  if (identity) await startTls(wire, identity);
  let structuredReplies = false;
  let metaContextId: number | undefined;
  if (options.structuredReplies !== false) {
    structuredReplies = (await negotiate(wire, NBD_OPT_STRUCTURED_REPLY)).final.replyType === NBD_REP_ACK;
  }
  if (structuredReplies) {
    const request = encodeMetaContextRequest(options.exportName, [BASE_ALLOCATION_CONTEXT]);
    const { replies, final } = await negotiate(wire, NBD_OPT_SET_META_CONTEXT, request);
    for (const reply of final.replyType === NBD_REP_ACK ? replies : []) {
      const context = reply.replyType === NBD_REP_META_CONTEXT ? decodeMetaContextPayload(reply.payload) : undefined;
      if (context !== undefined && !(context instanceof ShoalError) && context.name === BASE_ALLOCATION_CONTEXT) {
        metaContextId = context.contextId;
      }
    }
  }
  // No NBD_INFO_BLOCK_SIZE request: asking would oblige us to keep every request aligned, and
  // callers (volume import) end streams on odd sizes. The server's constraints are still recorded.
  const { replies, final } = await negotiate(wire, NBD_OPT_GO, encodeInfoRequest(options.exportName, []));
  if (final.replyType === NBD_REP_ERR_UNSUP) {
    wire.send(encodeOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode(options.exportName)));
    const info = decodeExportNameReply(await wire.read(EXPORT_NAME_REPLY_BYTES));
    if (info instanceof ShoalError) throw protocolError(wire, info.message);
    if (!noZeroes) await wire.read(EXPORT_NAME_PADDING_BYTES);
    return { ...info, structuredReplies, metaContextId, blockSize: undefined };
  }
  if (final.replyType === NBD_REP_ERR_UNKNOWN) {
    throw optionFailure(wire, `export '${options.exportName}'`, final, "UNKNOWN_VOLUME");
  }
  if (final.replyType !== NBD_REP_ACK) throw optionFailure(wire, `export '${options.exportName}'`, final);
  return { ...exportInfoFrom(wire, replies), structuredReplies, metaContextId };
}

/** NBD_OPT_STARTTLS; everything after it, replies included, travels inside TLS. */
async function startTls(wire: Wire, identity: TlsIdentity): Promise<void> {
  const { final } = await negotiate(wire, NBD_OPT_STARTTLS);
  if (final.replyType !== NBD_REP_ACK) throw optionFailure(wire, "NBD_OPT_STARTTLS (TLS)", final, "NOT_AUTHENTICATED");
  if (wire.input.lengthBytes > 0) throw protocolError(wire, "data after the NBD_OPT_STARTTLS reply, before the TLS handshake");
  await wire.startTls(identity);
}

function exportInfoFrom(wire: Wire, replies: OptionReply[]): { sizeBytes: number; transmissionFlags: number; blockSize: BlockSizeConstraints | undefined } {
  let exportInfo: { sizeBytes: number; transmissionFlags: number } | undefined;
  let blockSize: BlockSizeConstraints | undefined;
  for (const reply of replies) {
    if (reply.replyType !== NBD_REP_INFO) continue;
    const info = decodeInfoPayload(reply.payload);
    if (info instanceof ShoalError) throw protocolError(wire, info.message);
    if (info.type === NBD_INFO_EXPORT) exportInfo = { sizeBytes: info.sizeBytes, transmissionFlags: info.transmissionFlags };
    if (info.type === NBD_INFO_BLOCK_SIZE) {
      blockSize = { minimumBytes: info.minimumBytes, preferredBytes: info.preferredBytes, maximumBytes: info.maximumBytes };
    }
  }
  if (exportInfo === undefined) throw protocolError(wire, "NBD_OPT_GO succeeded without NBD_INFO_EXPORT");
  return { ...exportInfo, blockSize };
}

export async function listOn(wire: Wire, identity: TlsIdentity | undefined): Promise<NbdExportEntry[]> {
  await greet(wire);
  if (identity) await startTls(wire, identity);
  const { replies, final } = await negotiate(wire, NBD_OPT_LIST);
  if (final.replyType !== NBD_REP_ACK) throw optionFailure(wire, "NBD_OPT_LIST", final);
  const entries: NbdExportEntry[] = [];
  for (const reply of replies) {
    if (reply.replyType !== NBD_REP_SERVER) continue;
    const entry = decodeServerReplyPayload(reply.payload);
    if (entry instanceof ShoalError) throw protocolError(wire, entry.message);
    entries.push(entry);
  }
  wire.send(encodeOption(NBD_OPT_ABORT));
  // The spec lets a server close instead of acknowledging NBD_OPT_ABORT; either is fine.
  await readOptionReply(wire, NBD_OPT_ABORT).catch(() => undefined);
  return entries;
}
