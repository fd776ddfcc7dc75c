// The transmission phase of one NBD connection: requests parsed from its input, run on the
// export's device with many in flight, answered as each completes. Bounded per connection (count,
// bytes) and, through the connection's budget account, by the server's shares.
import type { BlockDevice } from "../../core/block-device.ts";
import { NBD_ESHUTDOWN, ShoalError, asShoalError, nbdErrnoFor } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { invariant } from "../../core/invariant.ts";
import { dataBuffers } from "../wire/buffer-pool.ts";
import type { NbdConnection } from "./nbd-connection.ts";
import { COALESCE_REPLY_BYTES, OUTBOX_HIGH_WATER_BYTES } from "./nbd-server-budget.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";
import {
  BASE_ALLOCATION_CONTEXT_ID,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  REQUEST_HEADER_BYTES,
  checkRequest,
  commandName,
  decodeRequestHeader,
  encodeBlockStatusReply,
  encodeSimpleReply,
  encodeStructuredError,
  extentsToDescriptors,
  readReplyBytes,
  readReplyPayloadOffset,
  writeReadReplyHeader,
  type ExportSession,
  type NbdRequest,
  type RequestFault,
} from "./nbd-codec.ts";

/** One request in flight. Slots are reused, and their callbacks are bound once, not per request. */
class RequestSlot {
  type = 0;
  flags = 0;
  handleHigh = 0;
  handleLow = 0;
  offset = 0;
  length = 0;
  costBytes = 0;
  /** Counted in the server-wide in-flight bytes: from execution on, not while a WRITE's payload arrives. */
  executing = false;
  startedMs = 0;
  /** A WRITE's payload as views of the received chunks. */
  payload: Uint8Array[] | undefined = undefined;
  /** A WRITE's payload gathered into a pooled buffer (it spanned chunks); back to the pool once written. */
  gathered: Uint8Array | undefined = undefined;
  reply: Uint8Array | undefined = undefined;
  fault: RequestFault | undefined = undefined;
  readonly onDone: (value: unknown) => void;
  readonly onFail: (error: unknown) => void;

  constructor(transmission: NbdTransmission) {
    this.onDone = (value) => transmission.complete(this, value);
    this.onFail = (error) => transmission.fail(this, error);
  }
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function";
}

export class NbdTransmission {
  private inFlightCount = 0;
  private inFlightBytes = 0;
  private readonly freeSlots: RequestSlot[] = [];
  /** A WRITE whose header is parsed and whose payload is still arriving. */
  private awaitingPayload: RequestSlot | undefined;
  private deviceFailureLogged = false;

  constructor(
    private readonly connection: NbdConnection,
    private readonly exportName: string,
    private readonly device: BlockDevice,
    private readonly session: ExportSession,
  ) {}

  /** Requests started and not yet answered (a WRITE whose payload is arriving included). */
  get inFlight(): number {
    return this.inFlightCount;
  }

  wantsInput(): boolean {
    return this.awaitingPayload !== undefined || this.canAdmit();
  }

  /** The connection is closing: a WRITE whose payload had not all arrived is given up. */
  abandonAwaitingPayload(): void {
    if (this.awaitingPayload !== undefined) this.release(this.awaitingPayload);
    this.awaitingPayload = undefined;
  }

  private canAdmit(): boolean {
    const { connection } = this;
    return (
      this.inFlightCount < connection.context.maxInFlight &&
      connection.account.mayAdmit(this.inFlightBytes, connection.unsentBytes(), OUTBOX_HIGH_WATER_BYTES)
    );
  }

  read(): void {
    const { connection } = this;
    const input = connection.input;
    while (connection.phase === "transmission") {
      const waiting = this.awaitingPayload;
      if (waiting !== undefined) {
        if (input.lengthBytes < waiting.length) return;
        waiting.payload = input.takeViews(waiting.length);
        this.awaitingPayload = undefined;
        this.run(waiting);
        continue;
      }
      // While shutting down, requests are answered with ESHUTDOWN without touching the device,
      // so everything already buffered is parsed and answered regardless of the in-flight bound.
      if (!connection.context.shuttingDown && !this.canAdmit()) return;
      if (input.lengthBytes < REQUEST_HEADER_BYTES) return;
      this.acceptRequest(input.take(REQUEST_HEADER_BYTES));
    }
  }

  private acceptRequest(header: Uint8Array): void {
    const request = decodeRequestHeader(header, 0);
    if (request instanceof ShoalError) return this.connection.violation(request.message);
    if (request.type === NBD_CMD_DISC) return this.connection.beginDrain();
    const slot = this.acquire(request);
    const fault = checkRequest(request, this.session);
    if (request.type === NBD_CMD_WRITE) {
      if (fault?.disconnect) {
        this.sendError(slot, fault.errno, fault.message);
        this.release(slot);
        return this.connection.violation(fault.message);
      }
      slot.fault = fault; // Judged after the payload is read, so the stream stays in step.
      this.awaitingPayload = slot;
      return;
    }
    if (fault !== undefined) {
      this.sendError(slot, fault.errno, fault.message);
      return this.release(slot);
    }
    this.run(slot);
  }

  private run(slot: RequestSlot): void {
    if (slot.fault !== undefined) {
      this.sendError(slot, slot.fault.errno, slot.fault.message);
      return this.release(slot);
    }
    if (this.connection.context.shuttingDown) {
      this.sendError(slot, NBD_ESHUTDOWN, "the server is shutting down");
      return this.release(slot);
    }
    this.execute(slot);
  }

  private execute(slot: RequestSlot): void {
    const device = this.device;
    const fua = (slot.flags & NBD_CMD_FLAG_FUA) !== 0;
    slot.startedMs = performance.now();
    slot.executing = true;
    this.connection.account.startExecuting(slot.costBytes);
    let result: unknown;
    try {
      switch (slot.type) {
        case NBD_CMD_READ: {
          const structured = this.session.structuredReplies;
          const sizeBytes = readReplyBytes(structured, slot.length);
          // Large replies come from the shared pool (warm pages; a fresh 1 MiB buffer costs a page
          // fault per 4 KiB) and go back once the socket has taken them. Pooled memory is stale, so
          // this relies on the BlockDevice contract that read fills all `length` bytes.
          slot.reply = sizeBytes >= COALESCE_REPLY_BYTES ? dataBuffers.acquire(sizeBytes) : new Uint8Array(sizeBytes);
          writeReadReplyHeader(slot.reply, structured, slot.handleHigh, slot.handleLow, slot.offset, slot.length);
          result = device.read(slot.offset, slot.length, slot.reply, readReplyPayloadOffset(structured));
          break;
        }
        case NBD_CMD_WRITE:
          result = device.write(slot.offset, this.payloadOf(slot), fua);
          break;
        case NBD_CMD_FLUSH:
          result = device.flush();
          break;
        case NBD_CMD_TRIM:
          result = device.trim(slot.offset, slot.length, fua);
          break;
        case NBD_CMD_WRITE_ZEROES:
          // NO_HOLE needs no special path: writeZeroes never trims a range the client must keep.
          result = device.writeZeroes(slot.offset, slot.length, fua);
          break;
        case NBD_CMD_BLOCK_STATUS:
          result = device.blockStatus(slot.offset, slot.length);
          break;
      }
    } catch (err) {
      return this.fail(slot, err);
    }
    if (isPromiseLike(result)) result.then(slot.onDone, slot.onFail);
    else this.complete(slot, result);
  }

  /** A device call finished; called directly or from a promise, so it must never throw. */
  complete(slot: RequestSlot, value: unknown): void {
    const { connection } = this;
    // try/catch, not guard(): no closure per request on the data path.
    try {
      nodeMetrics.nbdDone(slot.type, slot.length, slot.startedMs, true);
      // Only after success: a write that failed (timed out, say) may still be queued on a mesh socket.
      if (slot.gathered !== undefined) dataBuffers.release(slot.gathered);
      if (slot.type === NBD_CMD_READ) this.sendReadReply(slot.reply!);
      else if (connection.phase !== "closed") {
        if (slot.type === NBD_CMD_BLOCK_STATUS) this.sendBlockStatus(slot, value);
        else connection.send(encodeSimpleReply(0, slot.handleHigh, slot.handleLow));
      }
      this.release(slot);
      connection.pump();
    } catch (err) {
      connection.crash(err);
    }
  }

  fail(slot: RequestSlot, error: unknown): void {
    const { connection } = this;
    try {
      nodeMetrics.nbdDone(slot.type, slot.length, slot.startedMs, false);
      const message = asShoalError(error).message;
      if (!this.deviceFailureLogged) {
        this.deviceFailureLogged = true;
        connection.context.log.warn(
          `nbd client ${connection.peer}: ${commandName(slot.type)} of ${slot.length} bytes at ${slot.offset} on '${this.exportName}' failed: ` +
            `${message} (further failures on this connection are not logged)`,
        );
      }
      // A failed read's buffer is not returned to the pool: the device may still write into it.
      if (connection.phase !== "closed") this.sendError(slot, nbdErrnoFor(error), message);
      this.release(slot);
      connection.pump();
    } catch (err) {
      connection.crash(err);
    }
  }

  private sendReadReply(reply: Uint8Array): void {
    const pooled = reply.length >= COALESCE_REPLY_BYTES;
    if (this.connection.phase === "closed") {
      if (pooled) dataBuffers.release(reply);
      return;
    }
    if (!pooled) return this.connection.send(reply);
    this.connection.sendOwned(reply, () => dataBuffers.release(reply));
  }

  private sendBlockStatus(slot: RequestSlot, value: unknown): void {
    const extents = Array.isArray(value) ? value : [];
    const descriptors = extentsToDescriptors(extents, slot.length, (slot.flags & NBD_CMD_FLAG_REQ_ONE) !== 0);
    this.connection.send(encodeBlockStatusReply(slot.handleHigh, slot.handleLow, BASE_ALLOCATION_CONTEXT_ID, descriptors));
  }

  /** Structured error chunks carry a message; without structured replies only the errno goes. */
  private sendError(slot: RequestSlot, errno: number, message: string): void {
    if (this.session.structuredReplies) this.connection.send(encodeStructuredError(slot.handleHigh, slot.handleLow, errno, message));
    else this.connection.send(encodeSimpleReply(errno, slot.handleHigh, slot.handleLow));
  }

  /**
   * A WRITE's payload in one piece. One that spans received chunks is gathered into a pooled
   * buffer: a fresh 1 MiB buffer costs a page fault per 4 KiB, and writing the views one by one
   * costs a syscall each, both dearer on this VM than one copy into warm memory (measured).
   */
  private payloadOf(slot: RequestSlot): Uint8Array {
    const parts = slot.payload!;
    // The slot lets go of the received chunks now, not when the write is answered: whatever still
    // needs the bytes (a mesh send queue, a replica fan-out) holds its own reference, and Bun backs
    // each received chunk with fresh memory that is reused only once the chunk dies, so chunks kept
    // for a forwarded write's round trip cost page faults (see transport/wire/received-buffers.ts).
    slot.payload = undefined;
    if (parts.length <= 1) return parts[0] ?? new Uint8Array(0);
    const gathered = dataBuffers.acquire(slot.length);
    let at = 0;
    for (const part of parts) {
      gathered.set(part, at);
      at += part.byteLength;
    }
    slot.gathered = gathered;
    return gathered;
  }

  private acquire(request: NbdRequest): RequestSlot {
    const slot = this.freeSlots.pop() ?? new RequestSlot(this);
    slot.type = request.type;
    slot.flags = request.flags;
    slot.handleHigh = request.handleHigh;
    slot.handleLow = request.handleLow;
    slot.offset = request.offset;
    slot.length = request.length;
    const carriesPayload = request.type === NBD_CMD_READ || request.type === NBD_CMD_WRITE;
    slot.costBytes = carriesPayload && request.length <= MAX_REQUEST_BYTES ? request.length : 0;
    this.inFlightCount++;
    this.inFlightBytes += slot.costBytes;
    nodeMetrics.nbdInFlight.inc();
    return slot;
  }

  private release(slot: RequestSlot): void {
    this.inFlightCount--;
    this.inFlightBytes -= slot.costBytes;
    if (this.inFlightCount < 0 || this.inFlightBytes < 0) {
      invariant(false, `nbd connection released more than it acquired (${this.inFlightCount} requests, ${this.inFlightBytes} B)`);
    }
    if (slot.executing) {
      slot.executing = false;
      this.connection.account.finishExecuting(slot.costBytes);
    }
    nodeMetrics.nbdInFlight.dec();
    slot.payload = undefined;
    slot.reply = undefined;
    slot.gathered = undefined;
    slot.fault = undefined;
    this.freeSlots.push(slot);
  }
}
