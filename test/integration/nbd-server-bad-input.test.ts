// The NBD server in-process over in-memory devices, fed bad input by raw sockets (handshake,
// options, requests) while a good client keeps working on the same server.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { NBD_EINVAL, NBD_ENOSPC } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLAG_DF,
  NBD_CMD_WRITE,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_TYPE_ERROR,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  type NbdRequest,
  decodeReplyHeader,
  decodeStructuredError,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
} from "../../transport/nbd/nbd-codec.ts";
import { waitFor } from "./_cluster.ts";
import { MiB, SharedServer } from "./_nbd-fixture.ts";
import { keepWorking, RawSocket } from "./_nbd-raw-socket.ts";

const shared = new SharedServer();
const { log, server, disk } = shared;
let port = 0;

beforeAll(async () => {
  // What the real-clients test's qemu-io wrote first, when these tests shared its server: a
  // request after the refused ones reads it back.
  disk.fill(0, 1 * MiB, 0xab);
  ({ port } = await shared.start());
});

afterAll(() => shared.stop());

describe("bad input disconnects only the bad client", () => {
  let worker: ReturnType<typeof keepWorking>;
  beforeAll(() => {
    worker = keepWorking(port);
  });
  afterAll(async () => {
    const { operations, errors } = await worker.stop();
    expect(errors).toEqual([]);
    expect(operations).toBeGreaterThan(0);
  });

  async function expectOneWarning(raw: RawSocket, pattern: RegExp): Promise<void> {
    await raw.waitClosed();
    const lines = log.warningsFor(raw.localPort);
    expect(lines.length).toBe(1);
    expect(lines[0]).toMatch(pattern);
  }

  test("garbage instead of client flags", async () => {
    const raw = await RawSocket.open(port);
    await raw.read(18);
    raw.send(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
    await expectOneWarning(raw, /client flags 0x47455420 include bits the server did not offer .*; disconnecting/);
  });

  test("an option with the wrong magic", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    raw.send(new Uint8Array(16).fill(0x41));
    await expectOneWarning(raw, /IHAVEOPT/);
  });

  test("an option announcing more data than the limit", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    const header = encodeOption(NBD_OPT_GO);
    header.set([0, 0x10, 0, 0], 12); // 1 MiB of option data
    raw.send(header);
    await expectOneWarning(raw, /exceeds the 65536-byte limit/);
  });

  test("unknown options, unknown exports, STARTTLS and early meta contexts get error replies; negotiation goes on", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    expect((await raw.option(99)).replyType).toBe(NBD_REP_ERR_UNSUP);
    const unknown = await raw.option(NBD_OPT_GO, encodeInfoRequest("nope", []));
    expect(unknown.replyType).toBe(NBD_REP_ERR_UNKNOWN);
    expect(new TextDecoder().decode(unknown.payload)).toMatch(/'nope' does not exist/);
    expect((await raw.option(NBD_OPT_STARTTLS)).replyType).toBe(NBD_REP_ERR_POLICY);
    expect((await raw.option(NBD_OPT_GO, new Uint8Array(3))).replyType).toBe(NBD_REP_ERR_INVALID);
    const early = await raw.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest("disk", ["base:allocation"]));
    expect(early.replyType).toBe(NBD_REP_ERR_INVALID);
    raw.send(encodeOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode("disk")));
    await raw.read(10);
    raw.request({ handleLow: 5, offset: 0, length: 512 });
    expect(await raw.simpleReply()).toEqual({ kind: "simple", errno: 0, handleHigh: 0, handleLow: 5 } as never);
    expect((await raw.read(512)).length).toBe(512);
    raw.end();
    await raw.waitClosed();
    expect(log.warningsFor(raw.localPort)).toEqual([]);
  });

  test("NBD_OPT_EXPORT_NAME for an unknown export (which cannot return an error)", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    raw.send(encodeOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode("nope")));
    await expectOneWarning(raw, /NBD_OPT_EXPORT_NAME: export 'nope' does not exist/);
  });

  test("a request with the wrong magic after the handshake", async () => {
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    raw.send(new Uint8Array(28).fill(0x77));
    await expectOneWarning(raw, /request magic is 0x77777777/);
  });

  test("a truncated request and a hang-up leave nothing behind", async () => {
    const baseline = server.connectionCount;
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    expect(server.connectionCount).toBe(baseline + 1);
    raw.send(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, handleHigh: 0, handleLow: 1, offset: 0, length: 4096 }).subarray(0, 20));
    raw.end();
    await waitFor("the server to drop the connection", () => server.connectionCount === baseline);
  });

  test("requests past the end, of length 0, with bad flags or an unknown type get EINVAL/ENOSPC; the connection goes on", async () => {
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    const refused: [Partial<NbdRequest>, number, Uint8Array?][] = [
      [{ offset: 64 * MiB - 512, length: 1024 }, NBD_EINVAL],
      [{ offset: 2 ** 52, length: 512 }, NBD_EINVAL],
      [{ length: 0 }, NBD_EINVAL],
      [{ type: 99 }, NBD_EINVAL],
      [{ flags: NBD_CMD_FLAG_DF }, NBD_EINVAL],
      [{ type: NBD_CMD_BLOCK_STATUS }, NBD_EINVAL],
      [{ type: NBD_CMD_WRITE, offset: 64 * MiB, length: 4096 }, NBD_ENOSPC, new Uint8Array(4096)],
    ];
    for (const [index, [fields, errno, payload]] of refused.entries()) {
      raw.request({ ...fields, handleLow: 100 + index }, payload);
      expect(await raw.simpleReply()).toMatchObject({ errno, handleLow: 100 + index });
    }
    raw.request({ handleLow: 7, offset: 0, length: 4096 });
    expect(await raw.simpleReply()).toMatchObject({ errno: 0, handleLow: 7 });
    expect((await raw.read(4096)).every((byte) => byte === 0xab)).toBe(true);
    raw.end();
    await raw.waitClosed();
    expect(log.warningsFor(raw.localPort)).toEqual([]);
  });

  test("an oversize WRITE gets EINVAL, then a clean disconnect", async () => {
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    raw.request({ type: NBD_CMD_WRITE, handleLow: 3, length: MAX_REQUEST_BYTES + 1 });
    expect(await raw.simpleReply()).toMatchObject({ errno: NBD_EINVAL, handleLow: 3 });
    await expectOneWarning(raw, /WRITE of 33554433 bytes exceeds/);
  });

  test("with structured replies, errors arrive as error chunks with a message", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    expect((await raw.option(NBD_OPT_STRUCTURED_REPLY)).replyType).toBe(NBD_REP_ACK);
    raw.send(encodeOption(NBD_OPT_GO, encodeInfoRequest("disk", [])));
    let reply = await raw.optionReply();
    while (reply.replyType === NBD_REP_INFO) reply = await raw.optionReply();
    expect(reply.replyType).toBe(NBD_REP_ACK);
    raw.request({ handleLow: 11, offset: 64 * MiB, length: 4096 });
    const header = decodeReplyHeader(await raw.read(20), 0);
    expect(header).toMatchObject({ kind: "structured", type: NBD_REPLY_TYPE_ERROR, handleLow: 11 });
    const payload = await raw.read((header as { lengthBytes: number }).lengthBytes);
    const error = decodeStructuredError(NBD_REPLY_TYPE_ERROR, payload) as { errno: number; message: string };
    expect(error.errno).toBe(NBD_EINVAL);
    expect(error.message).toMatch(/past the end of the export/);
    raw.end();
  });
});
