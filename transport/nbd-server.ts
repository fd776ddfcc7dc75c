// The NBD server: accepts TCP connections, runs the fixed-newstyle handshake against the export
// catalog, then serves requests with many in flight per connection, replying as each completes.
// Every queue is bounded: requests in flight (count and bytes), unsent replies, buffered input.
import type { Socket, SocketHandler, TCPSocketListener } from "bun";
import type { BlockDevice, ExportCatalog } from "../core/block-device.ts";
import { NBD_ESHUTDOWN, ShoalError, asShoalError, nbdErrnoFor } from "../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../core/geometry.ts";
import { ByteQueue } from "./_byte-queue.ts";
import { dataBuffers } from "./buffer-pool.ts";
import { nodeMetrics } from "./node-metrics.ts";
import { SocketWriter } from "./socket-writer.ts";
import { listenError } from "./listen-error.ts";
import { type ByteStream, startServerTls } from "./nbd-tls-session.ts";
import type { MeshLog } from "./mesh.ts";
import type { TlsIdentity } from "./tls-identity.ts";
import {
  BASE_ALLOCATION_CONTEXT,
  BASE_ALLOCATION_CONTEXT_ID,
  CLIENT_FLAGS_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OPTION_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  blockSizeConstraints,
  checkRequest,
  commandName,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  decodeString,
  encodeBlockStatusReply,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContextPayload,
  encodeOptionError,
  encodeOptionReply,
  encodeServerReplyPayload,
  encodeSimpleReply,
  encodeStructuredError,
  extentsToDescriptors,
  queryMatchesBaseAllocation,
  readReplyBytes,
  readReplyPayloadOffset,
  transmissionFlagsFor,
  writeReadReplyHeader,
  type ExportSession,
  type NbdRequest,
  type OptionHeader,
  type RequestFault,
} from "./nbd-codec.ts";

export type NbdServerLog = MeshLog;

export interface NbdServerOptions {
  catalog: ExportCatalog;
  log: NbdServerLog;
  /** Requests executing at once on one connection; further input waits (the socket is paused). */
  maxInFlightPerConnection?: number;
  /** NBD_OPT_STARTTLS with this identity (client certificates from its CA required); `required` refuses plain clients. */
  tls?: { identity: TlsIdentity; required: boolean };
}

const DEFAULT_MAX_IN_FLIGHT = 64;
const MAX_IN_FLIGHT_LIMIT = 4096;
/** Bytes of READ/WRITE payload held by requests in flight; bounds memory per connection. */
const MAX_IN_FLIGHT_BYTES = 4 * MAX_REQUEST_BYTES;
/** Unsent replies above this stop new requests: a client that does not read gets no more work. */
const OUTBOX_HIGH_WATER_BYTES = 2 * MAX_REQUEST_BYTES;
/** Buffered input: one whole WRITE plus what arrives before a pause takes effect. */
const MAX_INPUT_BYTES = 2 * (MAX_REQUEST_BYTES + REQUEST_HEADER_BYTES) + 1024 * 1024;
/** Replies smaller than this produced in one tick go out in one socket write (one syscall). */
const COALESCE_REPLY_BYTES = 64 * 1024;
const COALESCE_BATCH_BYTES = 256 * 1024;
const MAX_CONNECTIONS = 1024;
/**
 * Input buffered by all connections together (partial requests, WRITE payloads still arriving).
 * Past it, a connection that holds more than its share when more arrives is dropped: clients
 * that send most of a 32 MiB WRITE and stall must not add up to gigabytes.
 */
const MAX_SERVER_INPUT_BYTES = 128 * 1024 * 1024;
/**
 * READ/WRITE bytes in flight on all connections together. Beyond the memory, this bounds what
 * this node asks of a peer at once: forwarded reads whose replies outrun the mesh link's send
 * queue (256 MiB) made the peer drop the link as "not reading".
 */
const MAX_SERVER_IN_FLIGHT_BYTES = 128 * 1024 * 1024;
/** Replies not yet taken by their clients, all connections together; see canAdmit() and noteUnsent(). */
const MAX_SERVER_UNSENT_BYTES = 128 * 1024 * 1024;
const MAX_OPTIONS_PER_CONNECTION = 1024;
const MAX_LISTED_EXPORTS = 10_000;
const HANDSHAKE_TIMEOUT_SECONDS = 30;
/** How long a closing connection may wait for its peer to read the last replies. */
const DRAIN_TIMEOUT_SECONDS = 30;
/** How long close() waits for in-flight requests before cutting connections. */
const CLOSE_TIMEOUT_MS = 30_000;

interface ServerContext {
  readonly catalog: ExportCatalog;
  readonly log: NbdServerLog;
  readonly maxInFlight: number;
  readonly tls: NbdServerOptions["tls"];
  shuttingDown: boolean;
  /** Sum of every connection's buffered input; see MAX_SERVER_INPUT_BYTES. */
  bufferedInputBytes: number;
  inFlightBytes: number;
  unsentBytes: number;
  /** A server-wide budget has room again: connections that stopped for it may go on. */
  wakeBlocked: () => void;
  connectionCount: number;
}

type ServerSocket = Socket<NbdConnection | undefined>;

export class NbdServer {
  private readonly context: ServerContext;
  private listener: TCPSocketListener<NbdConnection | undefined> | undefined;
  private readonly connections = new Set<NbdConnection>();
  private closing: Promise<void> | undefined;
  private allClosed: (() => void) | undefined;

  constructor(opts: NbdServerOptions) {
    const maxInFlight = opts.maxInFlightPerConnection ?? DEFAULT_MAX_IN_FLIGHT;
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > MAX_IN_FLIGHT_LIMIT) {
      throw new ShoalError("BAD_ARGUMENT", `maxInFlightPerConnection must be between 1 and ${MAX_IN_FLIGHT_LIMIT}, not ${maxInFlight}`);
    }
    let wakeScheduled = false;
    const wakeBlocked = () => {
      if (wakeScheduled) return;
      wakeScheduled = true;
      queueMicrotask(() => {
        wakeScheduled = false;
        for (const connection of this.connections) connection.wake();
      });
    };
    this.context = { catalog: opts.catalog, log: opts.log, maxInFlight, tls: opts.tls, shuttingDown: false, bufferedInputBytes: 0, inFlightBytes: 0, unsentBytes: 0, connectionCount: 0, wakeBlocked };
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Starts accepting; port 0 picks a free port, and the real one is returned. */
  async listen(host: string, port: number): Promise<{ port: number }> {
    if (this.listener !== undefined || this.context.shuttingDown) {
      throw new ShoalError("BAD_ARGUMENT", "this NBD server is already listening or has been closed");
    }
    try {
      this.listener = Bun.listen<NbdConnection | undefined>({ hostname: host, port, data: undefined, socket: this.handlers() });
    } catch (err) {
      throw listenError("NBD", host, port, err);
    }
    this.context.log.info(`nbd server listening on ${host}:${this.listener.port}`);
    return { port: this.listener.port };
  }

  /** Stops accepting, lets in-flight requests finish (bounded), then closes every connection. */
  close(): Promise<void> {
    if (this.closing === undefined) this.closing = this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.context.shuttingDown = true;
    this.listener?.stop(false);
    if (this.connections.size > 0) {
      const drained = new Promise<void>((resolve) => (this.allClosed = resolve));
      for (const connection of [...this.connections]) connection.shutdown();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), CLOSE_TIMEOUT_MS)));
      if (await Promise.race([drained.then(() => false), timedOut])) {
        this.context.log.warn(`nbd server: ${this.connections.size} connections still busy after ${CLOSE_TIMEOUT_MS} ms; cutting them`);
        for (const connection of this.connections) connection.terminate();
        this.connections.clear();
      }
      clearTimeout(timer);
    }
    this.context.log.info("nbd server closed");
  }

  private accept(socket: ServerSocket): void {
    if (this.context.shuttingDown || this.connections.size >= MAX_CONNECTIONS) {
      this.context.log.warn(`nbd server: refusing ${socket.remoteAddress}: ${this.context.shuttingDown ? "shutting down" : `${MAX_CONNECTIONS} connections open`}`);
      socket.terminate();
      return;
    }
    const connection = new NbdConnection(socket, this.context);
    socket.data = connection;
    this.connections.add(connection);
    this.context.connectionCount = this.connections.size;
    connection.start();
  }

  private forget(connection: NbdConnection): void {
    this.connections.delete(connection);
    this.context.connectionCount = this.connections.size;
    if (this.connections.size === 0) this.allClosed?.();
  }

  // Handlers catch everything: one misbehaving client or device must never take the server down.
  private handlers(): SocketHandler<NbdConnection | undefined> {
    const log = this.context.log;
    return {
      binaryType: "uint8array",
      open: (socket) => {
        try {
          this.accept(socket);
        } catch (err) {
          log.warn(`nbd server: cannot set up connection: ${asShoalError(err).message}`);
          socket.terminate();
        }
      },
      data: (socket, chunk) => {
        const connection = socket.data;
        if (connection === undefined) return;
        try {
          connection.onData(chunk);
        } catch (err) {
          connection.crash(err);
        }
      },
      drain: (socket) => {
        const connection = socket.data;
        if (connection === undefined) return;
        try {
          connection.onDrain();
        } catch (err) {
          connection.crash(err);
        }
      },
      timeout: (socket) => socket.data?.onTimeout(),
      close: (socket) => {
        const connection = socket.data;
        if (connection === undefined) return;
        connection.onClosed();
        this.forget(connection);
      },
      error: (socket, error) => log.warn(`nbd client ${socket.remoteAddress}: socket error: ${error.message}`),
    };
  }
}

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
  payload: Uint8Array | undefined = undefined;
  reply: Uint8Array | undefined = undefined;
  fault: RequestFault | undefined = undefined;
  readonly onDone: (value: unknown) => void;
  readonly onFail: (error: unknown) => void;

  constructor(connection: NbdConnection) {
    this.onDone = (value) => connection.complete(this, value);
    this.onFail = (error) => connection.fail(this, error);
  }
}

type Phase = "flags" | "options" | "transmission" | "draining" | "closed";

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function";
}

class NbdConnection {
  private phase: Phase = "flags";
  private readonly input = new ByteQueue();
  private outbox: SocketWriter;
  private readonly peer: string;
  /** The client's socket; after NBD_OPT_STARTTLS `socket` is the TLS socket over it. */
  private readonly rawSocket: ServerSocket;
  private socket: ByteStream;
  /** Set by NBD_OPT_STARTTLS: from then on what the raw socket reports is ciphertext, not ours. */
  private tlsUpgraded = false;
  private plainRefusalLogged = false;
  private paused = false;
  private ended = false;
  /** Small replies waiting for the end of the tick; see send(). */
  private batch: Uint8Array[] = [];
  private batchBytes = 0;
  private flushScheduled = false;
  private readonly flushBound = (): void => {
    try {
      this.flushBatch();
    } catch (err) {
      this.crash(err);
    }
  };
  private pumping = false;
  private pumpAgain = false;
  // Handshake state.
  /** Clients without C_FIXED_NEWSTYLE are served the same way (the spec allows it), but TLS,
   *  when added, must only be offered to clients that set it. */
  private fixedNewstyle = false;
  private noZeroes = false;
  private optionHeader: OptionHeader | undefined;
  private optionCount = 0;
  private structuredReplies = false;
  /** Export named by the last SET_META_CONTEXT that selected base:allocation. */
  private metaContextExport: string | undefined;
  // Transmission state.
  private device: BlockDevice | undefined;
  private exportName = "";
  private session: ExportSession = { sizeBytes: 0, readOnly: true, structuredReplies: false, blockStatusAllowed: false };
  private inFlight = 0;
  private inFlightBytes = 0;
  private readonly freeSlots: RequestSlot[] = [];
  /** A WRITE whose header is parsed and whose payload is still arriving. */
  private awaitingPayload: RequestSlot | undefined;
  private deviceFailureLogged = false;
  /** This connection's part of context.bufferedInputBytes and context.unsentBytes. */
  private accountedInputBytes = 0;
  private accountedUnsentBytes = 0;

  constructor(
    socket: ServerSocket,
    private readonly context: ServerContext,
  ) {
    this.rawSocket = socket;
    this.socket = socket;
    this.outbox = new SocketWriter(socket, OUTBOX_HIGH_WATER_BYTES);
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
  }

  start(): void {
    this.socket.setNoDelay(true);
    this.socket.timeout(HANDSHAKE_TIMEOUT_SECONDS);
    this.send(encodeGreeting());
  }

  /** From the raw socket. */
  onData(chunk: Uint8Array): void {
    if (!this.tlsUpgraded) this.onPlaintext(chunk);
  }

  private onPlaintext(chunk: Uint8Array): void {
    if (this.phase === "draining" || this.phase === "closed") return;
    this.input.push(chunk);
    if (this.input.lengthBytes > MAX_INPUT_BYTES) {
      this.violation(`buffered ${this.input.lengthBytes} bytes of input without a complete request`);
    } else if (this.context.bufferedInputBytes + chunk.length > MAX_SERVER_INPUT_BYTES && this.input.lengthBytes > this.fairShare(MAX_SERVER_INPUT_BYTES)) {
      this.violation(`holds ${this.input.lengthBytes} bytes of unfinished input while the server's ${MAX_SERVER_INPUT_BYTES}-byte input budget is spent`);
    }
    this.pump();
  }

  private fairShare(budgetBytes: number): number {
    return budgetBytes / Math.max(1, this.context.connectionCount);
  }

  /** Keeps the server-wide counts of buffered input and unsent replies in step with this connection's. */
  private accountBuffers(): void {
    const delta = this.input.lengthBytes - this.accountedInputBytes;
    this.accountedInputBytes += delta;
    this.context.bufferedInputBytes += delta;
    const unsent = this.phase === "closed" ? 0 : this.unsentBytes();
    this.context.unsentBytes += unsent - this.accountedUnsentBytes;
    this.accountedUnsentBytes = unsent;
  }

  /** Called when a server-wide budget frees up: a connection paused for it reads again. */
  wake(): void {
    if (this.phase !== "transmission" || !this.paused || this.pumping) return;
    try {
      this.pump();
    } catch (err) {
      this.crash(err);
    }
  }

  /**
   * While the server's unsent replies are over budget, a client holding more than its share of
   * them is cut: clients that ask and never read cannot hold the memory.
   */
  private noteUnsent(): void {
    if (this.context.unsentBytes <= MAX_SERVER_UNSENT_BYTES || this.phase === "closed") return;
    if (this.accountedUnsentBytes <= this.fairShare(MAX_SERVER_UNSENT_BYTES)) return;
    this.context.log.warn(`nbd client ${this.peer}: holds ${this.accountedUnsentBytes} bytes of replies it does not read while the server's ${MAX_SERVER_UNSENT_BYTES}-byte budget is spent; disconnecting`);
    nodeMetrics.nbdViolations.inc();
    this.terminate();
    this.accountBuffers();
  }

  /** From the raw socket. */
  onDrain(): void {
    if (!this.tlsUpgraded) this.onPlaintextDrain();
  }

  private onPlaintextDrain(): void {
    this.outbox.drain();
    this.pump();
  }

  onTimeout(): void {
    const during = this.phase === "draining" ? "while closing" : "during the handshake";
    this.context.log.warn(`nbd client ${this.peer}: timed out ${during}; disconnecting`);
    this.terminate();
  }

  onClosed(): void {
    this.phase = "closed";
    this.input.clear();
    this.accountBuffers();
    if (this.awaitingPayload !== undefined) this.release(this.awaitingPayload);
    this.awaitingPayload = undefined;
  }

  /** Server shutdown: answer what is already buffered with ESHUTDOWN, finish in-flight work, close. */
  shutdown(): void {
    try {
      this.pump();
      this.beginDrain();
      this.pump();
    } catch (err) {
      this.crash(err);
    }
  }

  terminate(): void {
    this.phase = "closed";
    this.socket.terminate();
    if (this.socket !== this.rawSocket) this.rawSocket.terminate();
  }

  crash(err: unknown): void {
    this.context.log.warn(`nbd client ${this.peer}: internal error: ${asShoalError(err).message}; disconnecting`);
    this.terminate();
  }

  /** Runs the parser until it needs more input or may not take more work; never re-entered. */
  private pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        if (this.phase === "flags" || this.phase === "options") this.readHandshake();
        if (this.phase === "transmission") this.readRequests();
      } while (this.pumpAgain);
    } finally {
      this.pumping = false;
      this.accountBuffers();
    }
    this.noteUnsent();
    this.updateFlowControl();
    this.finishIfDrained();
  }

  private updateFlowControl(): void {
    if (this.phase === "closed") return;
    const wanted = this.wantsInput();
    if (wanted === !this.paused) return;
    this.paused = !wanted;
    if (wanted) this.socket.resume();
    else this.socket.pause();
  }

  private wantsInput(): boolean {
    switch (this.phase) {
      case "flags":
      case "options":
        return this.unsentBytes() < OUTBOX_HIGH_WATER_BYTES;
      case "transmission":
        return this.awaitingPayload !== undefined || this.canAdmit();
      default:
        // Draining reads and discards, so the peer's FIN is seen and the socket can close.
        return true;
    }
  }

  private canAdmit(): boolean {
    // Each connection may use its share of the server-wide budgets (at least one request), so
    // no client, reading or not, can take them all and stall the others.
    return (
      this.inFlight < this.context.maxInFlight &&
      this.inFlightBytes < Math.min(MAX_IN_FLIGHT_BYTES, this.fairShare(MAX_SERVER_IN_FLIGHT_BYTES)) &&
      this.unsentBytes() < Math.min(OUTBOX_HIGH_WATER_BYTES, this.fairShare(MAX_SERVER_UNSENT_BYTES)) &&
      this.context.inFlightBytes < MAX_SERVER_IN_FLIGHT_BYTES
    );
  }

  /** A protocol violation: one warning, then the same clean close as a disconnect. */
  private violation(reason: string): void {
    this.context.log.warn(`nbd client ${this.peer}: ${reason}; disconnecting`);
    nodeMetrics.nbdViolations.inc();
    this.beginDrain();
  }

  private beginDrain(): void {
    if (this.phase === "draining" || this.phase === "closed") return;
    this.phase = "draining";
    this.input.clear();
    this.optionHeader = undefined;
    if (this.awaitingPayload !== undefined) this.release(this.awaitingPayload);
    this.awaitingPayload = undefined;
    this.socket.timeout(DRAIN_TIMEOUT_SECONDS);
  }

  private finishIfDrained(): void {
    if (this.phase !== "draining" || this.ended || this.inFlight > 0) return;
    this.flushBatch();
    if (this.outbox.pendingBytes > 0) return;
    // end() rather than terminate(): the last replies are in the kernel's buffer and must arrive.
    this.ended = true;
    this.socket.end();
  }

  /**
   * Small replies produced in the same tick (a chunk of pipelined requests, or completions that
   * resolve together) are joined into one socket write: one syscall instead of one per reply,
   * which is most of the cost of 4 KiB I/O. Big replies go straight out, after the batch.
   */
  private send(bytes: Uint8Array): void {
    if (bytes.length >= COALESCE_REPLY_BYTES) {
      this.flushBatch();
      this.outbox.write(bytes);
      return;
    }
    this.batch.push(bytes);
    this.batchBytes += bytes.length;
    if (this.batchBytes >= COALESCE_BATCH_BYTES) this.flushBatch();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(this.flushBound);
    }
  }

  private flushBatch(): void {
    this.flushScheduled = false;
    if (this.batchBytes === 0) return;
    const parts = this.batch;
    let joined = parts[0]!;
    if (parts.length > 1) {
      joined = Buffer.allocUnsafe(this.batchBytes);
      let at = 0;
      for (const part of parts) {
        joined.set(part, at);
        at += part.length;
      }
    }
    this.batch = [];
    this.batchBytes = 0;
    if (this.phase !== "closed") this.outbox.write(joined);
  }

  private unsentBytes(): number {
    return this.outbox.pendingBytes + this.batchBytes;
  }

  // ---- Handshake --------------------------------------------------------------------------------

  private readHandshake(): void {
    while (this.phase === "flags" || this.phase === "options") {
      if (this.unsentBytes() >= OUTBOX_HIGH_WATER_BYTES) return;
      if (this.phase === "flags") {
        if (this.input.lengthBytes < CLIENT_FLAGS_BYTES) return;
        const flags = decodeClientFlags(this.input.take(CLIENT_FLAGS_BYTES));
        if (flags instanceof ShoalError) return this.violation(flags.message);
        this.fixedNewstyle = (flags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
        this.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
        this.phase = "options";
        continue;
      }
      if (this.optionHeader === undefined) {
        if (this.input.lengthBytes < OPTION_HEADER_BYTES) return;
        const header = decodeOptionHeader(this.input.take(OPTION_HEADER_BYTES));
        if (header instanceof ShoalError) return this.violation(header.message);
        if (++this.optionCount > MAX_OPTIONS_PER_CONNECTION) {
          return this.violation(`sent more than ${MAX_OPTIONS_PER_CONNECTION} options`);
        }
        this.optionHeader = header;
      }
      const { option, lengthBytes } = this.optionHeader;
      if (this.input.lengthBytes < lengthBytes) return;
      const data = this.input.take(lengthBytes);
      this.optionHeader = undefined;
      this.handleOption(option, data);
    }
  }

  private handleOption(option: number, data: Uint8Array): void {
    if (this.context.shuttingDown && option !== NBD_OPT_ABORT && option !== NBD_OPT_EXPORT_NAME) {
      return this.refuse(option, NBD_REP_ERR_SHUTDOWN, "the server is shutting down");
    }
    if (this.context.tls?.required && !this.tlsUpgraded && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      return this.refuseWithoutTls(option);
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.handleExportName(data);
      case NBD_OPT_ABORT:
        this.reply(option, NBD_REP_ACK);
        return this.beginDrain();
      case NBD_OPT_LIST:
        return this.handleList(data);
      case NBD_OPT_STARTTLS:
        return this.handleStartTls(data);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.handleInfo(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        return this.handleStructuredReply(data);
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.handleMetaContext(option, data);
      default:
        return this.refuse(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported by this server`);
    }
  }

  private reply(option: number, replyType: number, payload?: Uint8Array): void {
    this.send(encodeOptionReply(option, replyType, payload));
  }

  private refuse(option: number, replyType: number, message: string): void {
    this.send(encodeOptionError(option, replyType, message));
  }

  /** The catalog's answer, with a throwing catalog treated as "not available" rather than a crash. */
  private openExport(name: string): BlockDevice | ShoalError {
    try {
      const device = this.context.catalog.open(name);
      if (device !== undefined) return device;
      return new ShoalError("UNKNOWN_VOLUME", `export '${name}' does not exist; NBD_OPT_LIST (nbdinfo --list) shows the exports`);
    } catch (err) {
      return asShoalError(err);
    }
  }

  private handleExportName(data: Uint8Array): void {
    const name = decodeString(data, "export name");
    if (name instanceof ShoalError) return this.violation(name.message);
    const device = this.openExport(name);
    // NBD_OPT_EXPORT_NAME cannot return an error, so the spec mandates a hard disconnect.
    if (device instanceof ShoalError) return this.violation(`NBD_OPT_EXPORT_NAME: ${device.message}`);
    if (this.context.shuttingDown) return this.beginDrain();
    const flags = transmissionFlagsFor(device.readOnly, this.structuredReplies);
    this.send(encodeExportNameReply(device.sizeBytes, flags, this.noZeroes));
    this.enterTransmission(name, device);
  }

  private handleList(data: Uint8Array): void {
    if (data.length !== 0) return this.refuse(NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    let exports: { name: string; description: string }[];
    try {
      exports = this.context.catalog.list();
    } catch (err) {
      return this.refuse(NBD_OPT_LIST, NBD_REP_ERR_POLICY, `cannot list exports: ${asShoalError(err).message}`);
    }
    if (exports.length > MAX_LISTED_EXPORTS) {
      this.context.log.warn(`nbd client ${this.peer}: NBD_OPT_LIST shows the first ${MAX_LISTED_EXPORTS} of ${exports.length} exports`);
    }
    for (const entry of exports.slice(0, MAX_LISTED_EXPORTS)) {
      this.reply(NBD_OPT_LIST, NBD_REP_SERVER, encodeServerReplyPayload(entry.name, entry.description));
    }
    this.reply(NBD_OPT_LIST, NBD_REP_ACK);
  }

  /** ACK, then the same connection continues inside TLS; the client must present a certificate. */
  private handleStartTls(data: Uint8Array): void {
    const option = NBD_OPT_STARTTLS;
    if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
    const tls = this.context.tls;
    if (tls === undefined) return this.refuse(option, NBD_REP_ERR_POLICY, "TLS is not configured on this server (start the node with --tls)");
    if (this.tlsUpgraded) return this.refuse(option, NBD_REP_ERR_INVALID, "TLS is already on");
    if (!this.fixedNewstyle) return this.refuse(option, NBD_REP_ERR_POLICY, "TLS needs fixed newstyle negotiation");
    this.reply(option, NBD_REP_ACK);
    this.flushBatch();
    if (this.input.lengthBytes > 0) return this.violation("sent data after NBD_OPT_STARTTLS before the TLS handshake");
    // The spec: options negotiated before STARTTLS are forgotten.
    this.structuredReplies = false;
    this.metaContextExport = undefined;
    // The ACK is tiny and goes out at once; if the kernel did not take it, TLS would jump the queue.
    if (this.outbox.pendingBytes > 0) return this.violation("is not reading the NBD_OPT_STARTTLS reply");
    this.rawSocket.timeout(0);
    const secure = startServerTls(this.rawSocket as Socket<unknown>, tls.identity, {
      onSecure: () => {},
      onFailed: (reason) => {
        this.context.log.warn(`nbd client ${this.peer}: refused: ${reason}; disconnecting`);
        this.terminate();
      },
      onPlaintext: (chunk) => this.guard(() => this.onPlaintext(chunk)),
      onDrain: () => this.guard(() => this.onPlaintextDrain()),
      onTimeout: () => this.onTimeout(),
    });
    this.tlsUpgraded = true;
    this.socket = secure;
    this.outbox = new SocketWriter(secure, OUTBOX_HIGH_WATER_BYTES);
    secure.timeout(HANDSHAKE_TIMEOUT_SECONDS);
  }

  /** --tls-required: the spec's answer to anything but STARTTLS and ABORT before TLS is on. */
  private refuseWithoutTls(option: number): void {
    if (!this.plainRefusalLogged) {
      this.plainRefusalLogged = true;
      this.context.log.warn(`nbd client ${this.peer}: refused: this server requires TLS and the client did not NBD_OPT_STARTTLS`);
    }
    // NBD_OPT_EXPORT_NAME has no error reply: the spec says to close.
    if (option === NBD_OPT_EXPORT_NAME) return this.beginDrain();
    this.refuse(option, NBD_REP_ERR_TLS_REQD, "this server requires TLS: send NBD_OPT_STARTTLS first");
  }

  private guard(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.crash(err);
    }
  }

  private handleStructuredReply(data: Uint8Array): void {
    const option = NBD_OPT_STRUCTURED_REPLY;
    if (data.length !== 0) return this.refuse(option, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
    if (this.structuredReplies) return this.refuse(option, NBD_REP_ERR_INVALID, "structured replies are already negotiated");
    this.structuredReplies = true;
    this.reply(option, NBD_REP_ACK);
  }

  private handleInfo(option: number, data: Uint8Array): void {
    const request = decodeInfoRequest(data);
    if (request instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_INVALID, request.message);
    const device = this.openExport(request.exportName);
    if (device instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_UNKNOWN, device.message);
    const flags = transmissionFlagsFor(device.readOnly, this.structuredReplies);
    this.reply(option, NBD_REP_INFO, encodeInfoExport(device.sizeBytes, flags));
    if (request.infoTypes.includes(NBD_INFO_NAME)) {
      this.reply(option, NBD_REP_INFO, encodeInfoName(device.name || request.exportName));
    }
    if (request.infoTypes.includes(NBD_INFO_DESCRIPTION)) {
      const description = this.describe(request.exportName);
      if (description) this.reply(option, NBD_REP_INFO, encodeInfoDescription(description));
    }
    // Sent even when not requested: harmless to clients that ignore it, and tells the rest to
    // keep requests at or under 32 MiB.
    this.reply(option, NBD_REP_INFO, encodeInfoBlockSize(blockSizeConstraints(device.preferredBlockSizeBytes)));
    this.reply(option, NBD_REP_ACK);
    if (option === NBD_OPT_GO) this.enterTransmission(request.exportName, device);
  }

  private describe(exportName: string): string {
    try {
      return this.context.catalog.list().find((entry) => entry.name === exportName)?.description ?? "";
    } catch {
      return ""; // The description is optional; NBD_OPT_LIST reports a failing catalog.
    }
  }

  private handleMetaContext(option: number, data: Uint8Array): void {
    const listing = option === NBD_OPT_LIST_META_CONTEXT;
    // SET replaces the selection even when it fails (spec), so forget the old one first.
    if (!listing) this.metaContextExport = undefined;
    if (!this.structuredReplies) {
      return this.refuse(option, NBD_REP_ERR_INVALID, "negotiate NBD_OPT_STRUCTURED_REPLY before meta contexts");
    }
    const request = decodeMetaContextRequest(data);
    if (request instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_INVALID, request.message);
    const device = this.openExport(request.exportName);
    if (device instanceof ShoalError) return this.refuse(option, NBD_REP_ERR_UNKNOWN, device.message);
    const matched = listing
      ? request.queries.length === 0 || request.queries.some((query) => queryMatchesBaseAllocation(query, true))
      : request.queries.some((query) => queryMatchesBaseAllocation(query, false));
    if (matched) {
      const contextId = listing ? 0 : BASE_ALLOCATION_CONTEXT_ID;
      this.reply(option, NBD_REP_META_CONTEXT, encodeMetaContextPayload(contextId, BASE_ALLOCATION_CONTEXT));
      if (!listing) this.metaContextExport = request.exportName;
    }
    this.reply(option, NBD_REP_ACK);
  }

  private enterTransmission(exportName: string, device: BlockDevice): void {
    this.phase = "transmission";
    this.device = device;
    this.exportName = exportName;
    this.session = {
      sizeBytes: device.sizeBytes,
      readOnly: device.readOnly,
      structuredReplies: this.structuredReplies,
      blockStatusAllowed: this.structuredReplies && this.metaContextExport === exportName,
    };
    this.socket.timeout(0);
    const mode = this.structuredReplies ? "structured replies" : "simple replies";
    const extras = `${device.readOnly ? ", read-only" : ""}${this.session.blockStatusAllowed ? ", base:allocation" : ""}`;
    const [volume, snapshot] = exportName.split("@");
    this.context.log.info(`nbd client ${this.peer} opened export '${exportName}' (${device.sizeBytes} bytes, ${mode}${extras})`, { client: this.peer, volume, snapshot });
  }

  // ---- Transmission -----------------------------------------------------------------------------

  private readRequests(): void {
    while (this.phase === "transmission") {
      const waiting = this.awaitingPayload;
      if (waiting !== undefined) {
        if (this.input.lengthBytes < waiting.length) return;
        waiting.payload = this.input.take(waiting.length);
        this.awaitingPayload = undefined;
        this.run(waiting);
        continue;
      }
      // While shutting down, requests are answered with ESHUTDOWN without touching the device,
      // so everything already buffered is parsed and answered regardless of the in-flight bound.
      if (!this.context.shuttingDown && !this.canAdmit()) return;
      if (this.input.lengthBytes < REQUEST_HEADER_BYTES) return;
      this.acceptRequest(this.input.take(REQUEST_HEADER_BYTES));
    }
  }

  private acceptRequest(header: Uint8Array): void {
    const request = decodeRequestHeader(header, 0);
    if (request instanceof ShoalError) return this.violation(request.message);
    if (request.type === NBD_CMD_DISC) return this.beginDrain();
    const slot = this.acquire(request);
    const fault = checkRequest(request, this.session);
    if (request.type === NBD_CMD_WRITE) {
      if (fault?.disconnect) {
        this.sendError(slot, fault.errno, fault.message);
        this.release(slot);
        return this.violation(fault.message);
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
    if (this.context.shuttingDown) {
      this.sendError(slot, NBD_ESHUTDOWN, "the server is shutting down");
      return this.release(slot);
    }
    this.execute(slot);
  }

  private execute(slot: RequestSlot): void {
    const device = this.device!;
    const fua = (slot.flags & NBD_CMD_FLAG_FUA) !== 0;
    slot.startedMs = performance.now();
    slot.executing = true;
    this.context.inFlightBytes += slot.costBytes;
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
          result = device.write(slot.offset, slot.payload!, fua);
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
    try {
      nodeMetrics.nbdDone(slot.type, slot.length, slot.startedMs, true);
      if (slot.type === NBD_CMD_READ) this.sendReadReply(slot.reply!);
      else if (this.phase !== "closed") {
        if (slot.type === NBD_CMD_BLOCK_STATUS) this.sendBlockStatus(slot, value);
        else this.send(encodeSimpleReply(0, slot.handleHigh, slot.handleLow));
      }
      this.release(slot);
      this.pump();
    } catch (err) {
      this.crash(err);
    }
  }

  fail(slot: RequestSlot, error: unknown): void {
    try {
      nodeMetrics.nbdDone(slot.type, slot.length, slot.startedMs, false);
      const message = asShoalError(error).message;
      if (!this.deviceFailureLogged) {
        this.deviceFailureLogged = true;
        this.context.log.warn(
          `nbd client ${this.peer}: ${commandName(slot.type)} of ${slot.length} bytes at ${slot.offset} on '${this.exportName}' failed: ` +
            `${message} (further failures on this connection are not logged)`,
        );
      }
      // A failed read's buffer is not returned to the pool: the device may still write into it.
      if (this.phase !== "closed") this.sendError(slot, nbdErrnoFor(error), message);
      this.release(slot);
      this.pump();
    } catch (err) {
      this.crash(err);
    }
  }

  private sendReadReply(reply: Uint8Array): void {
    const pooled = reply.length >= COALESCE_REPLY_BYTES;
    if (this.phase === "closed") {
      if (pooled) dataBuffers.release(reply);
      return;
    }
    if (!pooled) return this.send(reply);
    this.flushBatch();
    this.outbox.write(reply, () => dataBuffers.release(reply));
  }

  private sendBlockStatus(slot: RequestSlot, value: unknown): void {
    const extents = Array.isArray(value) ? value : [];
    const descriptors = extentsToDescriptors(extents, slot.length, (slot.flags & NBD_CMD_FLAG_REQ_ONE) !== 0);
    this.send(encodeBlockStatusReply(slot.handleHigh, slot.handleLow, BASE_ALLOCATION_CONTEXT_ID, descriptors));
  }

  /** Structured error chunks carry a message; without structured replies only the errno goes. */
  private sendError(slot: RequestSlot, errno: number, message: string): void {
    if (this.session.structuredReplies) this.send(encodeStructuredError(slot.handleHigh, slot.handleLow, errno, message));
    else this.send(encodeSimpleReply(errno, slot.handleHigh, slot.handleLow));
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
    this.inFlight++;
    this.inFlightBytes += slot.costBytes;
    nodeMetrics.nbdInFlight.inc();
    return slot;
  }

  private release(slot: RequestSlot): void {
    this.inFlight--;
    this.inFlightBytes -= slot.costBytes;
    if (slot.executing) {
      slot.executing = false;
      const wasFull = this.context.inFlightBytes >= MAX_SERVER_IN_FLIGHT_BYTES;
      this.context.inFlightBytes -= slot.costBytes;
      if (wasFull && this.context.inFlightBytes < MAX_SERVER_IN_FLIGHT_BYTES) this.context.wakeBlocked();
    }
    nodeMetrics.nbdInFlight.dec();
    slot.payload = undefined;
    slot.reply = undefined;
    slot.fault = undefined;
    this.freeSlots.push(slot);
  }
}
