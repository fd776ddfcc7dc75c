// A small NBD client for our CLI and tests: the handshake (_nbd-client-handshake.ts), then many
// requests in flight, matched to replies by handle. Server errors become ShoalErrors whose message
// names the NBD errno.
import { type ErrorCode, NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW, NBD_EPERM, NBD_ESHUTDOWN, ShoalError } from "../../core/errors.ts";
import { type TlsIdentity, tlsIdentity } from "../tls/tls-identity.ts";
import { handshake, type HandshakeOptions, listOn, type NbdExportEntry, type Negotiated } from "./_nbd-client-handshake.ts";
import { protocolError, Wire, withTimeout } from "./_nbd-client-wire.ts";
import {
  type BlockSizeConstraints,
  MAX_BLOCK_SIZE_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  REQUEST_HEADER_BYTES,
  type ReplyHeader,
  commandName,
  decodeBlockStatusPayload,
  decodeReplyHeader,
  decodeStructuredError,
  encodeRequestHeader,
  errnoName,
  isReplyTypeError,
  readU32,
  readU64,
  replyHeaderBytes,
} from "./nbd-codec.ts";

export type { NbdExportEntry } from "./_nbd-client-handshake.ts";

export interface NbdClientOptions extends HandshakeOptions {
  host: string;
  port: number;
  /** Requests in flight at once; further calls wait for a free slot. Default 64. */
  maxInFlight?: number;
}

/** One run of base:allocation status. */
export interface NbdExtent {
  length: number;
  hole: boolean;
  zero: boolean;
}

const DEFAULT_MAX_IN_FLIGHT = 64;
const CLOSE_TIMEOUT_MS = 30_000;
/** Largest reply chunk we accept: a full read plus its offset and some slack for headers. */
const MAX_REPLY_PAYLOAD_BYTES = MAX_BLOCK_SIZE_BYTES + 64;
/** Writes up to this size are copied behind their header to go out in one socket write. */
const COALESCE_WRITE_BYTES = 64 * 1024;
/** Read results smaller than this are copied out of the receive chunk rather than pinning all of it. */
const COPY_READ_BELOW_BYTES = 64 * 1024;
const MAX_U32 = 0xffff_ffff;

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (value: unknown) => void;
  reject: (error: ShoalError) => void;
  data: Uint8Array | undefined;
  /** Set by readViews: the data as views of the received bytes, when it came in one piece. */
  views: Uint8Array[] | undefined;
  wantViews: boolean;
  receivedBytes: number;
  extents: NbdExtent[] | undefined;
  error: { errno: number; message: string } | undefined;
}

/** A reply whose header is parsed and whose payload is still arriving. */
interface PartialReply {
  pending: Pending;
  handle: number;
  header: ReplyHeader;
  lengthBytes: number;
}

const ERRNO_CODES: Record<number, ErrorCode> = {
  [NBD_EPERM]: "READ_ONLY",
  [NBD_EINVAL]: "BAD_REQUEST",
  [NBD_ENOSPC]: "NO_SPACE",
  [NBD_EOVERFLOW]: "TOO_LARGE",
  [NBD_ESHUTDOWN]: "SHUTTING_DOWN",
};

export class NbdClient {
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** The server's block size constraints, when it sent them. */
  readonly blockSize: BlockSizeConstraints | undefined;
  private readonly metaContextId: number | undefined;
  private readonly maxInFlight: number;
  private readonly pending = new Map<number, Pending>();
  private readonly slotWaiters: (() => void)[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private partial: PartialReply | undefined;
  private nextHandle = 1;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly wire: Wire,
    negotiated: Negotiated,
    maxInFlight: number,
  ) {
    this.sizeBytes = negotiated.sizeBytes;
    this.transmissionFlags = negotiated.transmissionFlags;
    this.structuredReplies = negotiated.structuredReplies;
    this.metaContextId = negotiated.metaContextId;
    this.blockSize = negotiated.blockSize;
    this.maxInFlight = maxInFlight;
    wire.onInput = () => this.readReplies();
    wire.onClose = (error) => this.failAll(error);
  }

  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    const maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) {
      throw new ShoalError("BAD_ARGUMENT", `maxInFlight must be a positive integer, not ${maxInFlight}`);
    }
    const wire = await Wire.open(options.host, options.port);
    try {
      const negotiated = await withTimeout(wire, handshake(wire, options), "the handshake");
      const client = new NbdClient(wire, negotiated, maxInFlight);
      if (wire.input.lengthBytes > 0) client.readReplies();
      return client;
    } catch (err) {
      wire.socket.terminate();
      throw err;
    }
  }

  /** The server's exports (NBD_OPT_LIST), then a polite NBD_OPT_ABORT. */
  static async listExports(options: { host: string; port: number; tls?: TlsIdentity }): Promise<NbdExportEntry[]> {
    const wire = await Wire.open(options.host, options.port);
    try {
      return await withTimeout(wire, listOn(wire, options.tls ?? tlsIdentity()), "NBD_OPT_LIST");
    } finally {
      wire.socket.end();
    }
  }

  /** Whether the server agreed to base:allocation, which blockStatus needs. */
  get canBlockStatus(): boolean {
    return this.metaContextId !== undefined;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.submit(NBD_CMD_READ, 0, offset, length, undefined) as Promise<Uint8Array>;
  }

  /**
   * The same read, its bytes as views of the chunks the socket delivered (no 4 MiB copy and no
   * fresh buffer to fault in): for bulk readers that only pass the bytes on (export to a pipe).
   */
  readViews(offset: number, length: number): Promise<Uint8Array[]> {
    return this.submit(NBD_CMD_READ, 0, offset, length, undefined, true) as Promise<Uint8Array[]>;
  }

  /** Writes `data` at `offset`; `data` must not change until the promise settles (it is not copied). */
  write(offset: number, data: Uint8Array, options: { fua?: boolean } = {}): Promise<void> {
    return this.submit(NBD_CMD_WRITE, options.fua ? NBD_CMD_FLAG_FUA : 0, offset, data.length, data) as Promise<void>;
  }

  flush(): Promise<void> {
    return this.submit(NBD_CMD_FLUSH, 0, 0, 0, undefined) as Promise<void>;
  }

  trim(offset: number, length: number, options: { fua?: boolean } = {}): Promise<void> {
    return this.submit(NBD_CMD_TRIM, options.fua ? NBD_CMD_FLAG_FUA : 0, offset, length, undefined) as Promise<void>;
  }

  writeZeroes(offset: number, length: number, options: { fua?: boolean; noHole?: boolean } = {}): Promise<void> {
    const flags = (options.fua ? NBD_CMD_FLAG_FUA : 0) | (options.noHole ? NBD_CMD_FLAG_NO_HOLE : 0);
    return this.submit(NBD_CMD_WRITE_ZEROES, flags, offset, length, undefined) as Promise<void>;
  }

  /** base:allocation from `offset`: consecutive extents covering at least one byte, at most `length`. */
  blockStatus(offset: number, length: number, options: { requestOne?: boolean } = {}): Promise<NbdExtent[]> {
    if (this.metaContextId === undefined) {
      return Promise.reject(new ShoalError("BAD_REQUEST", `NBD server ${this.wire.address} did not agree to base:allocation; blockStatus is unavailable`));
    }
    const flags = options.requestOne ? NBD_CMD_FLAG_REQ_ONE : 0;
    return this.submit(NBD_CMD_BLOCK_STATUS, flags, offset, length, undefined) as Promise<NbdExtent[]>;
  }

  /** Waits for requests in flight (bounded), sends NBD_CMD_DISC and closes the socket. */
  close(): Promise<void> {
    this.closing ??= this.disconnect();
    return this.closing;
  }

  private async disconnect(): Promise<void> {
    const wire = this.wire;
    if (wire.closedError !== undefined) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)));
    const idle = this.pending.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    await Promise.race([idle, expired]);
    if (wire.closedError === undefined) {
      this.sendRequest(NBD_CMD_DISC, 0, 0, 0, 0, undefined);
      wire.socket.end();
    }
    await Promise.race([wire.closed(), expired]);
    clearTimeout(timer);
    if (wire.closedError === undefined) wire.socket.terminate();
  }

  private async submit(type: number, flags: number, offset: number, length: number, payload: Uint8Array | undefined, wantViews = false): Promise<unknown> {
    const invalid = this.checkArguments(type, offset, length);
    if (invalid !== undefined) throw invalid;
    while (this.pending.size >= this.maxInFlight && this.wire.closedError === undefined) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
    if (this.closing !== undefined) throw new ShoalError("BAD_ARGUMENT", `NBD client for ${this.wire.address} is closed`);
    if (this.wire.closedError !== undefined) throw this.wire.closedError;
    const handle = this.allocateHandle();
    return new Promise((resolve, reject) => {
      const entry: Pending = { type, offset, length, resolve, reject, data: undefined, views: undefined, wantViews, receivedBytes: 0, extents: undefined, error: undefined };
      this.pending.set(handle, entry);
      this.sendRequest(type, flags, handle, offset, length, payload);
    });
  }

  private checkArguments(type: number, offset: number, length: number): ShoalError | undefined {
    const name = commandName(type);
    if (this.closing !== undefined) return new ShoalError("BAD_ARGUMENT", `NBD client for ${this.wire.address} is closed`);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || length > MAX_U32) {
      return new ShoalError("BAD_ARGUMENT", `${name} needs a non-negative offset and a length below 4 GiB (got ${offset}, ${length})`);
    }
    const maximumBytes = this.blockSize?.maximumBytes ?? MAX_BLOCK_SIZE_BYTES;
    if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && length > maximumBytes) {
      return new ShoalError("TOO_LARGE", `${name} of ${length} bytes exceeds the server's ${maximumBytes}-byte maximum; split it`);
    }
    return undefined;
  }

  private allocateHandle(): number {
    // Handles only need to be unique among requests in flight; skip any still in use.
    while (this.pending.has(this.nextHandle)) this.nextHandle = (this.nextHandle % MAX_U32) + 1;
    const handle = this.nextHandle;
    this.nextHandle = (this.nextHandle % MAX_U32) + 1;
    return handle;
  }

  private sendRequest(type: number, flags: number, handle: number, offset: number, length: number, payload: Uint8Array | undefined): void {
    const request = { flags, type, handleHigh: 0, handleLow: handle, offset, length };
    if (payload !== undefined && payload.length <= COALESCE_WRITE_BYTES) {
      const frame = new Uint8Array(REQUEST_HEADER_BYTES + payload.length);
      encodeRequestHeader(frame, 0, request);
      frame.set(payload, REQUEST_HEADER_BYTES);
      this.wire.send(frame);
      return;
    }
    const header = new Uint8Array(REQUEST_HEADER_BYTES);
    encodeRequestHeader(header, 0, request);
    this.wire.send(header);
    if (payload !== undefined) this.wire.send(payload);
  }

  private readReplies(): void {
    const input = this.wire.input;
    while (this.wire.closedError === undefined) {
      if (this.partial === undefined) {
        if (input.lengthBytes < 4) return;
        const headerBytes = replyHeaderBytes(input.peekU32());
        if (headerBytes instanceof ShoalError) return this.breakConnection(headerBytes.message);
        if (input.lengthBytes < headerBytes) return;
        const header = decodeReplyHeader(input.take(headerBytes), 0);
        if (header instanceof ShoalError) return this.breakConnection(header.message);
        const problem = this.beginReply(header);
        if (problem !== undefined) return this.breakConnection(problem);
        continue;
      }
      const partial = this.partial;
      if (input.lengthBytes < partial.lengthBytes) return;
      const asViews = partial.pending.wantViews && this.acceptWholeReadAsViews(partial);
      if (typeof asViews === "string") return this.breakConnection(asViews);
      if (asViews) continue;
      const payload = input.take(partial.lengthBytes);
      this.partial = undefined;
      const problem = partial.header.kind === "simple" ? this.acceptSimpleRead(partial, payload) : this.acceptChunk(partial, payload);
      if (problem !== undefined) return this.breakConnection(problem);
    }
  }

  /** Matches a reply header to its request; returns a protocol problem, if any. */
  private beginReply(header: ReplyHeader): string | undefined {
    const handle = header.handleLow;
    const pending = header.handleHigh === 0 ? this.pending.get(handle) : undefined;
    if (pending === undefined) return `reply for unknown handle ${header.handleHigh}:${header.handleLow}`;
    if (header.kind === "simple") {
      if (header.errno === 0 && pending.type === NBD_CMD_READ) {
        this.partial = { pending, handle, header, lengthBytes: pending.length };
        return undefined;
      }
      if (header.errno !== 0) pending.error = { errno: header.errno, message: "" };
      this.settle(handle, pending);
      return undefined;
    }
    if (!this.structuredReplies) return "structured reply without negotiation";
    if (header.lengthBytes > MAX_REPLY_PAYLOAD_BYTES) return `reply chunk of ${header.lengthBytes} bytes`;
    this.partial = { pending, handle, header, lengthBytes: header.lengthBytes };
    return undefined;
  }

  /**
   * A readViews reply that carries the whole request in one piece (a simple reply, or one
   * OFFSET_DATA chunk at the request's offset) is taken as views; anything else (holes, split
   * chunks, errors) goes the general way and is resolved as one buffer.
   */
  private acceptWholeReadAsViews(partial: PartialReply): boolean | string {
    const { pending, header } = partial;
    if (pending.receivedBytes !== 0) return false;
    if (header.kind === "structured") {
      if (header.type !== NBD_REPLY_TYPE_OFFSET_DATA || partial.lengthBytes !== pending.length + 8) return false;
      const offset = readU64(this.wire.input.take(8), 0);
      if (offset !== pending.offset) return `read chunk at ${offset} (+${pending.length}) outside the request`;
    }
    pending.views = this.wire.input.takeViews(pending.length);
    pending.receivedBytes = pending.length;
    this.partial = undefined;
    if (header.kind === "simple" || (header.flags & NBD_REPLY_FLAG_DONE) !== 0) this.settle(partial.handle, pending);
    return true;
  }

  private acceptSimpleRead(partial: PartialReply, payload: Uint8Array): string | undefined {
    partial.pending.data = ownedResult(payload);
    partial.pending.receivedBytes = payload.length;
    this.settle(partial.handle, partial.pending);
    return undefined;
  }

  private acceptChunk(partial: PartialReply, payload: Uint8Array): string | undefined {
    const header = partial.header as Extract<ReplyHeader, { kind: "structured" }>;
    const pending = partial.pending;
    const problem = this.applyChunk(pending, header.type, payload);
    if (problem !== undefined) return problem;
    if ((header.flags & NBD_REPLY_FLAG_DONE) !== 0) this.settle(partial.handle, pending);
    return undefined;
  }

  private applyChunk(pending: Pending, type: number, payload: Uint8Array): string | undefined {
    switch (type) {
      case NBD_REPLY_TYPE_NONE:
        return payload.length === 0 ? undefined : "NONE chunk with a payload";
      case NBD_REPLY_TYPE_OFFSET_DATA:
        if (pending.type !== NBD_CMD_READ || payload.length < 9) return "unexpected OFFSET_DATA chunk";
        return this.place(pending, readU64(payload, 0), payload.subarray(8), payload.length - 8);
      case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (pending.type !== NBD_CMD_READ || payload.length !== 12) return "unexpected OFFSET_HOLE chunk";
        return this.place(pending, readU64(payload, 0), undefined, readU32(payload, 8));
      case NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (pending.type !== NBD_CMD_BLOCK_STATUS) return "unexpected BLOCK_STATUS chunk";
        const status = decodeBlockStatusPayload(payload);
        if (status instanceof ShoalError) return status.message;
        if (status.contextId !== this.metaContextId) return undefined; // A context we did not ask for.
        pending.extents = status.descriptors.map((d) => ({
          length: d.length,
          hole: (d.flags & NBD_STATE_HOLE) !== 0,
          zero: (d.flags & NBD_STATE_ZERO) !== 0,
        }));
        return undefined;
      }
      default: {
        if (!isReplyTypeError(type)) return `unknown reply chunk type ${type}`;
        const error = decodeStructuredError(type, payload);
        if (error instanceof ShoalError) return error.message;
        pending.error ??= error;
        return undefined;
      }
    }
  }

  /** Puts a data or hole chunk into the read's result; a lone full-size chunk is used as is. */
  private place(pending: Pending, offset: number, data: Uint8Array | undefined, length: number): string | undefined {
    const at = offset - pending.offset;
    if (at < 0 || length === 0 || at + length > pending.length) return `read chunk at ${offset} (+${length}) outside the request`;
    if (pending.receivedBytes + length > pending.length) return "read chunks overlap";
    if (pending.receivedBytes === 0 && data !== undefined && length === pending.length) {
      pending.data = ownedResult(data);
    } else {
      pending.data ??= new Uint8Array(pending.length); // Zero-filled, so holes need no writing.
      if (data !== undefined) pending.data.set(data, at);
    }
    pending.receivedBytes += length;
    return undefined;
  }

  private settle(handle: number, pending: Pending): void {
    this.pending.delete(handle);
    this.slotWaiters.shift()?.();
    if (this.pending.size === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    if (pending.error !== undefined) return pending.reject(this.errorFor(pending, pending.error.errno, pending.error.message));
    switch (pending.type) {
      case NBD_CMD_READ:
        if (pending.receivedBytes !== pending.length) {
          return pending.reject(protocolError(this.wire, `read of ${pending.length} bytes answered with ${pending.receivedBytes}`));
        }
        if (pending.wantViews) return pending.resolve(pending.views ?? [pending.data ?? new Uint8Array(0)]);
        return pending.resolve(pending.data ?? new Uint8Array(0));
      case NBD_CMD_BLOCK_STATUS:
        if (pending.extents === undefined) return pending.reject(protocolError(this.wire, "block status reply without base:allocation"));
        return pending.resolve(pending.extents);
      default:
        return pending.resolve(undefined);
    }
  }

  private errorFor(pending: Pending, errno: number, message: string): ShoalError {
    const what = `NBD ${commandName(pending.type)} of ${pending.length} bytes at offset ${pending.offset}`;
    const detail = message ? `: ${message}` : "";
    return new ShoalError(ERRNO_CODES[errno] ?? "IO_ERROR", `${what} failed with ${errnoName(errno)} (${errno})${detail}`);
  }

  private breakConnection(reason: string): void {
    this.failAll(protocolError(this.wire, reason));
    this.wire.socket.terminate();
  }

  private failAll(error: ShoalError): void {
    const entries = [...this.pending.values()];
    this.pending.clear();
    this.partial = undefined;
    for (const entry of entries) entry.reject(error);
    for (const wake of this.slotWaiters.splice(0)) wake();
    for (const wake of this.idleWaiters.splice(0)) wake();
  }
}

/** Large results stay views of the received bytes (no copy); small ones get their own memory. */
function ownedResult(view: Uint8Array): Uint8Array {
  return view.length < COPY_READ_BELOW_BYTES && view.byteLength !== view.buffer.byteLength ? view.slice() : view;
}
