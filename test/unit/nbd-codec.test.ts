import { describe, expect, test } from "bun:test";
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EPERM, ShoalError } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { ByteQueue } from "../../transport/nbd/_byte-queue.ts";
import {
  BASE_ALLOCATION_CONTEXT,
  EXPORT_NAME_PADDING_BYTES,
  MAX_OPTION_DATA_BYTES,
  MAX_STRING_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_READ_PAYLOAD_OFFSET,
  type ExportSession,
  type NbdRequest,
  allocateReadReply,
  blockSizeConstraints,
  checkRequest,
  commandName,
  decodeBlockStatusPayload,
  decodeClientFlags,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoPayload,
  decodeInfoRequest,
  decodeMetaContextPayload,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  decodeRequestHeader,
  decodeServerReplyPayload,
  decodeString,
  decodeStructuredError,
  encodeBlockStatusReply,
  encodeClientFlags,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeInfoRequest,
  encodeMetaContextPayload,
  encodeMetaContextRequest,
  encodeOption,
  encodeOptionError,
  encodeOptionReply,
  encodeRequest,
  encodeServerReplyPayload,
  encodeSimpleReply,
  encodeStructuredError,
  errnoName,
  extentsToDescriptors,
  queryMatchesBaseAllocation,
  readU64,
  transmissionFlagsFor,
  writeU32,
} from "../../transport/nbd/nbd-codec.ts";

function expectBadFrame(value: unknown, messagePart: string | RegExp): void {
  expect(value).toBeInstanceOf(ShoalError);
  expect((value as ShoalError).code).toBe("BAD_FRAME");
  expect((value as ShoalError).message).toMatch(messagePart);
}

function ok<T>(value: T | ShoalError): T {
  if (value instanceof ShoalError) throw value;
  return value;
}

function withU32(bytes: Uint8Array, at: number, value: number): Uint8Array {
  const copy = bytes.slice();
  writeU32(copy, at, value);
  return copy;
}

const utf8 = (text: string) => new TextEncoder().encode(text);

describe("handshake greeting and client flags", () => {
  test("greeting round-trips and offers fixed newstyle and no-zeroes", () => {
    const greeting = encodeGreeting();
    expect(greeting.length).toBe(18);
    expect(new TextDecoder().decode(greeting.subarray(0, 16))).toBe("NBDMAGICIHAVEOPT");
    expect(ok(decodeGreeting(greeting))).toBe(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  });

  test("greeting with wrong magic, oldstyle magic or truncated is refused", () => {
    const greeting = encodeGreeting();
    expectBadFrame(decodeGreeting(withU32(greeting, 0, 0x12345678)), /NBDMAGIC/);
    expectBadFrame(decodeGreeting(withU32(greeting, 8, 0x00420281)), /oldstyle/);
    expectBadFrame(decodeGreeting(greeting.subarray(0, 17)), /17 bytes/);
  });

  test("client flags: offered bits accepted, unknown bits and short input refused", () => {
    expect(ok(decodeClientFlags(encodeClientFlags(3)))).toBe(3);
    expect(ok(decodeClientFlags(encodeClientFlags(0)))).toBe(0);
    expectBadFrame(decodeClientFlags(encodeClientFlags(4)), /did not offer/);
    expectBadFrame(decodeClientFlags(utf8("GET / HTTP/1.1").subarray(0, 4)), /did not offer/);
    expectBadFrame(decodeClientFlags(new Uint8Array(3)), /3 bytes/);
  });
});

describe("options", () => {
  test("option header round-trips with its data", () => {
    const bytes = encodeOption(NBD_OPT_GO, utf8("abc"));
    expect(ok(decodeOptionHeader(bytes))).toEqual({ option: NBD_OPT_GO, lengthBytes: 3 });
    expect(new TextDecoder().decode(bytes.subarray(16))).toBe("abc");
  });

  test("option header with wrong magic, truncated or oversize data is refused", () => {
    const bytes = encodeOption(NBD_OPT_LIST);
    expectBadFrame(decodeOptionHeader(withU32(bytes, 0, 0xdeadbeef)), /IHAVEOPT/);
    expectBadFrame(decodeOptionHeader(bytes.subarray(0, 15)), /15 bytes/);
    expectBadFrame(decodeOptionHeader(withU32(bytes, 12, MAX_OPTION_DATA_BYTES + 1)), /exceeds/);
    expect(ok(decodeOptionHeader(withU32(bytes, 12, MAX_OPTION_DATA_BYTES))).lengthBytes).toBe(MAX_OPTION_DATA_BYTES);
  });

  test("option replies round-trip; errors carry a message; wrong magic is refused", () => {
    const ack = encodeOptionReply(NBD_OPT_LIST, NBD_REP_ACK);
    expect(ok(decodeOptionReplyHeader(ack))).toEqual({ option: NBD_OPT_LIST, replyType: NBD_REP_ACK, lengthBytes: 0 });
    const error = encodeOptionError(7, NBD_REP_ERR_UNSUP, "nope");
    expect(ok(decodeOptionReplyHeader(error))).toEqual({ option: 7, replyType: NBD_REP_ERR_UNSUP, lengthBytes: 4 });
    expect(new TextDecoder().decode(error.subarray(20))).toBe("nope");
    expectBadFrame(decodeOptionReplyHeader(withU32(ack, 0, 1)), /wrong magic/);
    expectBadFrame(decodeOptionReplyHeader(ack.subarray(0, 19)), /19 bytes/);
  });

  test("an overlong error message is cut to the string limit", () => {
    const error = encodeOptionError(1, NBD_REP_ERR_UNSUP, "é".repeat(5000));
    const length = ok(decodeOptionReplyHeader(error)).lengthBytes;
    expect(length).toBeLessThanOrEqual(MAX_STRING_BYTES);
    expect(typeof ok(decodeString(error.subarray(20), "message"))).toBe("string");
  });

  test("export-name reply has 124 zero bytes unless the client asked for none", () => {
    const padded = encodeExportNameReply(2 ** 40, 0x1ed, false);
    expect(padded.length).toBe(10 + EXPORT_NAME_PADDING_BYTES);
    expect(ok(decodeExportNameReply(padded))).toEqual({ sizeBytes: 2 ** 40, transmissionFlags: 0x1ed });
    expect(encodeExportNameReply(4096, 1, true).length).toBe(10);
    expectBadFrame(decodeExportNameReply(new Uint8Array(9)), /truncated/);
  });

  test("INFO/GO request round-trips", () => {
    const data = encodeInfoRequest("vol-α", [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE]);
    expect(ok(decodeInfoRequest(data))).toEqual({ exportName: "vol-α", infoTypes: [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE] });
    expect(ok(decodeInfoRequest(encodeInfoRequest("", [])))).toEqual({ exportName: "", infoTypes: [] });
  });

  test("INFO/GO request: every malformed shape is refused", () => {
    const data = encodeInfoRequest("disk", [NBD_INFO_NAME]);
    expectBadFrame(decodeInfoRequest(data.subarray(0, 5)), /at least 6/);
    expectBadFrame(decodeInfoRequest(withU32(data, 0, 1000)), /overruns/);
    expectBadFrame(decodeInfoRequest(data.subarray(0, data.length - 1)), /lists 1 items/);
    expectBadFrame(decodeInfoRequest(new Uint8Array([...data, 0, 0])), /lists 1 items/);
    const badUtf8 = encodeInfoRequest("ab", []);
    badUtf8.set([0xff, 0xfe], 4);
    expectBadFrame(decodeInfoRequest(badUtf8), /UTF-8/);
    const withNul = encodeInfoRequest("ab", []);
    withNul[5] = 0;
    expectBadFrame(decodeInfoRequest(withNul), /NUL/);
    expectBadFrame(decodeInfoRequest(encodeInfoRequest("x".repeat(MAX_STRING_BYTES + 1), [])), /limit/);
  });

  test("meta context request round-trips, including zero queries", () => {
    const data = encodeMetaContextRequest("disk", [BASE_ALLOCATION_CONTEXT, "qemu:dirty-bitmap:x"]);
    expect(ok(decodeMetaContextRequest(data))).toEqual({ exportName: "disk", queries: [BASE_ALLOCATION_CONTEXT, "qemu:dirty-bitmap:x"] });
    expect(ok(decodeMetaContextRequest(encodeMetaContextRequest("", [])))).toEqual({ exportName: "", queries: [] });
  });

  test("meta context request: truncation, overruns, trailing bytes and too many queries are refused", () => {
    const data = encodeMetaContextRequest("disk", ["base:allocation"]);
    expectBadFrame(decodeMetaContextRequest(data.subarray(0, 7)), /at least 8/);
    expectBadFrame(decodeMetaContextRequest(withU32(data, 0, 500)), /overruns/);
    expectBadFrame(decodeMetaContextRequest(withU32(data, 8, 2)), /query 1 is truncated/);
    expectBadFrame(decodeMetaContextRequest(withU32(data, 12, 9999)), /overruns/);
    expectBadFrame(decodeMetaContextRequest(new Uint8Array([...data, 1])), /trailing/);
    expectBadFrame(decodeMetaContextRequest(withU32(data, 8, 100_000)), /exceed the limit/);
  });

  test("base:allocation matching: exact name, and 'base:' only as a LIST wildcard", () => {
    expect(queryMatchesBaseAllocation("base:allocation", false)).toBe(true);
    expect(queryMatchesBaseAllocation("base:", true)).toBe(true);
    expect(queryMatchesBaseAllocation("base:", false)).toBe(false);
    expect(queryMatchesBaseAllocation("qemu:allocation-depth", true)).toBe(false);
  });

  test("LIST and META_CONTEXT payloads round-trip", () => {
    expect(ok(decodeServerReplyPayload(encodeServerReplyPayload("db1", "a database volume")))).toEqual({ name: "db1", description: "a database volume" });
    expect(ok(decodeMetaContextPayload(encodeMetaContextPayload(7, BASE_ALLOCATION_CONTEXT)))).toEqual({ contextId: 7, name: BASE_ALLOCATION_CONTEXT });
    expectBadFrame(decodeServerReplyPayload(withU32(encodeServerReplyPayload("a", ""), 0, 9)), /overruns/);
    expectBadFrame(decodeMetaContextPayload(new Uint8Array(3)), /truncated/);
  });

  test("INFO payloads round-trip; wrong lengths are refused; unknown types pass through", () => {
    expect(ok(decodeInfoPayload(encodeInfoExport(2 ** 33, 0x1ed)))).toEqual({ type: NBD_INFO_EXPORT, sizeBytes: 2 ** 33, transmissionFlags: 0x1ed });
    expect(ok(decodeInfoPayload(encodeInfoName("disk")))).toEqual({ type: NBD_INFO_NAME, name: "disk" });
    expect(ok(decodeInfoPayload(encodeInfoDescription("d")))).toEqual({ type: NBD_INFO_DESCRIPTION, description: "d" });
    const sizes = { minimumBytes: 512, preferredBytes: 4096, maximumBytes: MAX_REQUEST_BYTES };
    expect(ok(decodeInfoPayload(encodeInfoBlockSize(sizes)))).toEqual({ type: NBD_INFO_BLOCK_SIZE, ...sizes });
    expect(ok(decodeInfoPayload(new Uint8Array([0, 42, 1])))).toEqual({ type: "unknown", infoType: 42 });
    expectBadFrame(decodeInfoPayload(encodeInfoExport(1, 1).subarray(0, 11)), /expected 12/);
    expectBadFrame(decodeInfoPayload(encodeInfoBlockSize(sizes).subarray(0, 13)), /expected 14/);
    expectBadFrame(decodeInfoPayload(new Uint8Array(1)), /truncated/);
  });

  test("block size constraints keep the preferred size a power of two within [512, 32 MiB]", () => {
    expect(blockSizeConstraints(4 * 1024 * 1024)).toEqual({ minimumBytes: 512, preferredBytes: 4 * 1024 * 1024, maximumBytes: MAX_REQUEST_BYTES });
    expect(blockSizeConstraints(256 * 1024 * 1024).preferredBytes).toBe(MAX_REQUEST_BYTES);
    expect(blockSizeConstraints(3000).preferredBytes).toBe(4096);
    expect(blockSizeConstraints(256).preferredBytes).toBe(4096);
  });

  test("transmission flags: writable exports offer writes, read-only ones do not; DF only with structured replies", () => {
    const writable = transmissionFlagsFor(false, true);
    for (const flag of [NBD_FLAG_HAS_FLAGS, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, NBD_FLAG_SEND_DF, NBD_FLAG_CAN_MULTI_CONN]) {
      expect(writable & flag).toBe(flag);
    }
    expect(writable & NBD_FLAG_READ_ONLY).toBe(0);
    const readOnly = transmissionFlagsFor(true, false);
    expect(readOnly & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    expect(readOnly & (NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF)).toBe(0);
  });
});

describe("requests", () => {
  const request = (fields: Partial<NbdRequest>): NbdRequest => ({
    flags: 0,
    type: NBD_CMD_READ,
    handleHigh: 0xdeadbeef,
    handleLow: 0xcafef00d,
    offset: 0,
    length: 4096,
    ...fields,
  });
  const session: ExportSession = { sizeBytes: 1024 * 1024, readOnly: false, structuredReplies: true, blockStatusAllowed: true };

  test("request header round-trips the full 64-bit handle and large offsets", () => {
    const original = request({ type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_FUA, offset: 2 ** 45 + 512, length: 0xffffffff });
    expect(ok(decodeRequestHeader(encodeRequest(original), 0))).toEqual(original);
    const bytes = new Uint8Array(40);
    bytes.set(encodeRequest(original), 12);
    expect(ok(decodeRequestHeader(bytes, 12))).toEqual(original);
  });

  test("request header with wrong magic or truncated is a framing error", () => {
    const bytes = encodeRequest(request({}));
    expectBadFrame(decodeRequestHeader(withU32(bytes, 0, 0x12560953), 0), /magic/);
    expectBadFrame(decodeRequestHeader(bytes.subarray(0, 27), 0), /27 bytes/);
    expectBadFrame(decodeRequestHeader(bytes, 1), /27 bytes/);
  });

  test("offsets past 2^53 decode to a number that is still past any export's end", () => {
    const bytes = encodeRequest(request({}));
    bytes.fill(0xff, 16, 24);
    const decoded = ok(decodeRequestHeader(bytes, 0));
    expect(decoded.offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
    expect(checkRequest(decoded, session)?.errno).toBe(NBD_EINVAL);
  });

  test("valid requests pass", () => {
    for (const type of [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS]) {
      expect(checkRequest(request({ type, offset: 1024 * 1024 - 4096 }), session)).toBeUndefined();
    }
    expect(checkRequest(request({ type: NBD_CMD_FLUSH, length: 0 }), session)).toBeUndefined();
    expect(checkRequest(request({ type: NBD_CMD_DISC, length: 0 }), session)).toBeUndefined();
    expect(checkRequest(request({ flags: NBD_CMD_FLAG_DF | NBD_CMD_FLAG_FUA }), session)).toBeUndefined();
    expect(checkRequest(request({ type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_NO_HOLE }), session)).toBeUndefined();
    expect(checkRequest(request({ type: NBD_CMD_BLOCK_STATUS, flags: NBD_CMD_FLAG_REQ_ONE }), session)).toBeUndefined();
    const big = { ...session, sizeBytes: 2 ** 40 };
    expect(checkRequest(request({ length: MAX_REQUEST_BYTES }), big)).toBeUndefined();
    expect(checkRequest(request({ type: NBD_CMD_TRIM, length: 0xffffffff }), big)).toBeUndefined();
  });

  const faults: [string, Partial<NbdRequest>, Partial<ExportSession>, number, boolean, RegExp][] = [
    ["unknown command", { type: 99 }, {}, NBD_EINVAL, false, /not supported/],
    ["CACHE (not advertised)", { type: 5 }, {}, NBD_EINVAL, false, /not supported/],
    ["flag not valid for the command", { type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_NO_HOLE }, {}, NBD_EINVAL, false, /flags 0x2/],
    ["FAST_ZERO (not advertised)", { type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_FAST_ZERO }, {}, NBD_EINVAL, false, /flags/],
    ["DF without structured replies", { flags: NBD_CMD_FLAG_DF }, { structuredReplies: false }, NBD_EINVAL, false, /flags/],
    ["oversize READ", { length: MAX_REQUEST_BYTES + 1 }, { sizeBytes: 2 ** 40 }, NBD_EINVAL, false, /exceeds/],
    ["oversize WRITE disconnects", { type: NBD_CMD_WRITE, length: MAX_REQUEST_BYTES + 1 }, { sizeBytes: 2 ** 40 }, NBD_EINVAL, true, /exceeds/],
    ["READ past the end", { offset: 1024 * 1024 - 512, length: 1024 }, {}, NBD_EINVAL, false, /past the end/],
    ["WRITE past the end", { type: NBD_CMD_WRITE, offset: 1024 * 1024 }, {}, NBD_ENOSPC, false, /past the end/],
    ["WRITE_ZEROES past the end", { type: NBD_CMD_WRITE_ZEROES, offset: 1024 * 1024 }, {}, NBD_ENOSPC, false, /past the end/],
    ["TRIM past the end", { type: NBD_CMD_TRIM, offset: 1024 * 1024 }, {}, NBD_EINVAL, false, /past the end/],
    ["BLOCK_STATUS past the end", { type: NBD_CMD_BLOCK_STATUS, offset: 1024 * 1024 }, {}, NBD_EINVAL, false, /past the end/],
    ["zero-length READ", { length: 0 }, {}, NBD_EINVAL, false, /0 bytes/],
    ["zero-length WRITE", { type: NBD_CMD_WRITE, length: 0 }, {}, NBD_EINVAL, false, /0 bytes/],
    ["WRITE to read-only", { type: NBD_CMD_WRITE }, { readOnly: true }, NBD_EPERM, false, /read-only/],
    ["TRIM on read-only", { type: NBD_CMD_TRIM }, { readOnly: true }, NBD_EPERM, false, /read-only/],
    ["WRITE_ZEROES on read-only", { type: NBD_CMD_WRITE_ZEROES }, { readOnly: true }, NBD_EPERM, false, /read-only/],
    ["BLOCK_STATUS without a meta context", { type: NBD_CMD_BLOCK_STATUS }, { blockStatusAllowed: false }, NBD_EINVAL, false, /base:allocation/],
  ];
  for (const [name, fields, sessionChanges, errno, disconnect, message] of faults) {
    test(`refused: ${name} (${errnoName(errno)})`, () => {
      const fault = checkRequest(request(fields), { ...session, ...sessionChanges });
      expect(fault).toBeDefined();
      expect(fault!.errno).toBe(errno);
      expect(fault!.disconnect).toBe(disconnect);
      expect(fault!.message).toMatch(message);
    });
  }
});

describe("replies", () => {
  test("simple reply round-trips through the client-side header decoder", () => {
    const reply = encodeSimpleReply(NBD_EIO, 1, 2);
    expect(ok(decodeReplyHeader(reply, 0))).toEqual({ kind: "simple", errno: NBD_EIO, handleHigh: 1, handleLow: 2 });
  });

  test("READ reply buffers have the header filled and room for the data at the right offset", () => {
    const simple = allocateReadReply(false, 3, 4, 8192, 100);
    expect(simple.length).toBe(SIMPLE_REPLY_HEADER_BYTES + 100);
    expect(ok(decodeReplyHeader(simple, 0))).toEqual({ kind: "simple", errno: 0, handleHigh: 3, handleLow: 4 });
    const structured = allocateReadReply(true, 3, 4, 2 ** 40, 100);
    expect(structured.length).toBe(STRUCTURED_READ_PAYLOAD_OFFSET + 100);
    expect(ok(decodeReplyHeader(structured, 0))).toEqual({
      kind: "structured",
      flags: NBD_REPLY_FLAG_DONE,
      type: NBD_REPLY_TYPE_OFFSET_DATA,
      handleHigh: 3,
      handleLow: 4,
      lengthBytes: 108,
    });
    expect(readU64(structured, 20)).toBe(2 ** 40);
  });

  test("structured error chunks round-trip their errno and message", () => {
    const chunk = encodeStructuredError(0, 9, NBD_EPERM, "export is read-only");
    const header = ok(decodeReplyHeader(chunk, 0));
    expect(header).toMatchObject({ kind: "structured", type: NBD_REPLY_TYPE_ERROR, flags: NBD_REPLY_FLAG_DONE, handleLow: 9 });
    expect(ok(decodeStructuredError(NBD_REPLY_TYPE_ERROR, chunk.subarray(20)))).toEqual({ errno: NBD_EPERM, message: "export is read-only" });
  });

  test("error chunks whose message overruns the chunk are refused", () => {
    const payload = encodeStructuredError(0, 1, NBD_EIO, "abc").subarray(20);
    expectBadFrame(decodeStructuredError(NBD_REPLY_TYPE_ERROR, payload.subarray(0, 5)), /at least 6/);
    expectBadFrame(decodeStructuredError(NBD_REPLY_TYPE_ERROR, payload.subarray(0, 8)), /overruns/);
    expectBadFrame(decodeStructuredError(NBD_REPLY_TYPE_ERROR_OFFSET, payload), /overruns/);
  });

  test("reply headers with an unknown magic or truncated are refused", () => {
    expectBadFrame(decodeReplyHeader(new Uint8Array(20), 0), /reply magic/);
    expectBadFrame(decodeReplyHeader(encodeSimpleReply(0, 0, 0).subarray(0, 15), 0), /truncated/);
    expectBadFrame(decodeReplyHeader(new Uint8Array(3), 0), /truncated/);
  });

  test("block status replies round-trip", () => {
    const reply = encodeBlockStatusReply(0, 5, 1, [{ length: 4096, flags: 0 }, { length: 8192, flags: NBD_STATE_HOLE | NBD_STATE_ZERO }]);
    expect(ok(decodeReplyHeader(reply, 0))).toMatchObject({ kind: "structured", type: 5, lengthBytes: 20 });
    expect(ok(decodeBlockStatusPayload(reply.subarray(20)))).toEqual({
      contextId: 1,
      descriptors: [{ length: 4096, flags: 0 }, { length: 8192, flags: 3 }],
    });
  });

  test("block status payloads of the wrong size or with empty descriptors are refused", () => {
    expectBadFrame(decodeBlockStatusPayload(new Uint8Array(4)), /positive multiple/);
    expectBadFrame(decodeBlockStatusPayload(new Uint8Array(13)), /positive multiple/);
    expectBadFrame(decodeBlockStatusPayload(new Uint8Array(12)), /length 0/);
  });
});

describe("extents to base:allocation descriptors", () => {
  const hole = (length: number) => ({ length, hole: true });
  const data = (length: number) => ({ length, hole: false });

  test("holes read as zero, neighbours with equal status merge", () => {
    expect(extentsToDescriptors([data(4096), data(4096), hole(4096), hole(4096), data(512)], 20480, false)).toEqual([
      { length: 8192, flags: 0 },
      { length: 8192, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
      { length: 512, flags: 0 },
    ]);
  });

  test("clipped to the request, so nothing describes bytes past it", () => {
    expect(extentsToDescriptors([hole(1 << 20)], 4096, false)).toEqual([{ length: 4096, flags: 3 }]);
    expect(extentsToDescriptors([data(4096), hole(1 << 20)], 6000, false)).toEqual([
      { length: 4096, flags: 0 },
      { length: 1904, flags: 3 },
    ]);
  });

  test("REQ_ONE yields one descriptor; the descriptor count is bounded", () => {
    expect(extentsToDescriptors([data(512), hole(512)], 1024, true)).toEqual([{ length: 512, flags: 0 }]);
    const alternating = Array.from({ length: 100 }, (_, i) => (i % 2 ? hole(512) : data(512)));
    expect(extentsToDescriptors(alternating, 51200, false, 10).length).toBe(10);
  });

  test("zero-length extents are skipped; a device that says nothing yields one safe 'allocated' descriptor", () => {
    expect(extentsToDescriptors([data(0), hole(512)], 512, false)).toEqual([{ length: 512, flags: 3 }]);
    expect(extentsToDescriptors([], 4096, false)).toEqual([{ length: 4096, flags: 0 }]);
  });
});

describe("names for messages", () => {
  test("errno and command names", () => {
    expect(errnoName(NBD_EINVAL)).toBe("EINVAL");
    expect(errnoName(77)).toBe("errno 77");
    expect(commandName(NBD_CMD_WRITE_ZEROES)).toBe("WRITE_ZEROES");
    expect(commandName(42)).toBe("command 42");
  });
});

describe("ByteQueue", () => {
  test("a payload spanning chunks is copied into the caller's buffer; isContiguous says which take() gives", () => {
    const queue = new ByteQueue();
    queue.push(new Uint8Array([1, 2, 3]));
    queue.push(new Uint8Array([4, 5, 6, 7]));
    expect(queue.isContiguous(3)).toBe(true);
    expect(queue.isContiguous(4)).toBe(false);
    const target = new Uint8Array(5);
    expect(queue.takeInto(target)).toBe(target);
    expect([...target]).toEqual([1, 2, 3, 4, 5]);
    expect(queue.lengthBytes).toBe(2);
    expect(queue.isContiguous(2)).toBe(true);
    expect([...queue.take(2)]).toEqual([6, 7]);
  });

  test("a frame inside one chunk is a view, a frame spanning chunks is one copy", () => {
    const queue = new ByteQueue();
    const first = new Uint8Array([1, 2, 3, 4, 5, 6]);
    queue.push(first);
    queue.push(new Uint8Array([7, 8, 9]));
    const view = queue.take(4);
    expect(view.buffer).toBe(first.buffer);
    expect([...view]).toEqual([1, 2, 3, 4]);
    expect(queue.peekU32()).toBe(0x05060708);
    const spanning = queue.take(4);
    expect(spanning.buffer).not.toBe(first.buffer);
    expect([...spanning]).toEqual([5, 6, 7, 8]);
    expect(queue.lengthBytes).toBe(1);
    expect(queue.take(0).length).toBe(0);
    expect([...queue.take(1)]).toEqual([9]);
    expect(queue.lengthBytes).toBe(0);
  });

  test("many small chunks reassemble in order", () => {
    const queue = new ByteQueue();
    for (let i = 0; i < 1000; i++) queue.push(new Uint8Array([i & 255]));
    for (let i = 0; i < 1000; i += 10) expect([...queue.take(10)]).toEqual(Array.from({ length: 10 }, (_, j) => (i + j) & 255));
    expect(queue.lengthBytes).toBe(0);
  });

  test("takeViews hands out views of the chunks it spans, never a copy, and leaves the rest queued", () => {
    const queue = new ByteQueue();
    const chunks = [new Uint8Array([1, 2, 3]), new Uint8Array([4, 5]), new Uint8Array([6, 7, 8, 9])];
    for (const chunk of chunks) queue.push(chunk);
    expect([...queue.take(1)]).toEqual([1]);
    const views = queue.takeViews(6);
    expect(views.map((view) => [...view])).toEqual([[2, 3], [4, 5], [6, 7]]);
    expect(views.map((view) => view.buffer)).toEqual(chunks.map((chunk) => chunk.buffer));
    expect(queue.lengthBytes).toBe(2);
    expect([...queue.take(2)]).toEqual([8, 9]);
    expect(queue.takeViews(0)).toEqual([]);
  });
});
