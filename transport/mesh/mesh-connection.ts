// One mesh connection, either direction: frames in and out, requests matched to responses by id,
// many in flight at once. Used for peer links, inbound peers and admin clients alike.
import type { Socket } from "bun";
import { errorFromWire, asShoalError, ShoalError } from "../../core/errors.ts";
import { encodeFrameHead, FrameDecoder, EMPTY_PAYLOAD, MAX_FRAME_BYTES, type Frame, type FrameHeader, type Payload } from "./frame.ts";
import type { PeerCertificate } from "./mesh-tls.ts";
import { SocketWriter } from "../wire/socket-writer.ts";
import { receivedBuffers } from "../wire/received-buffers.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";

export interface Reply {
  result?: FrameHeader;
  payload?: Uint8Array;
  /** Called once the payload has been handed to the socket (pooled buffers go back then). */
  release?: () => void;
}

export type RequestHandler = (
  connection: MeshConnection,
  op: string,
  args: FrameHeader,
  payload: Payload,
) => Reply | Promise<Reply>;

export interface Response {
  result: FrameHeader;
  payload: Payload;
}

interface Pending {
  resolve: (response: Response) => void;
  reject: (error: ShoalError) => void;
  op: string;
  deadlineMs: number;
}

/** Requests past their deadline are failed by a sweep four times a second, not a timer each. */
const SWEEP_INTERVAL_MS = 250;

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const MAX_QUEUED_BYTES = 256 * 1024 * 1024;
const MAX_PENDING_REQUESTS = 4096;
/** Payloads up to this size are copied next to their header to save a syscall. */
const COALESCE_BYTES = 64 * 1024;
/** A batch of small frames is written once it reaches this size, or at the end of the tick. */
const BATCH_BYTES = 256 * 1024;
/**
 * Inbound connections that are not a member's (before hello, and admin clients) send only small
 * requests; bounding their frames, their time to say hello and their number bounds the memory
 * anyone who can reach the port can make the node hold (a member may send 36 MiB frames).
 */
const UNTRUSTED_MAX_FRAME_BYTES = 64 * 1024;
const HELLO_TIMEOUT_MS = 10_000;
const MAX_INBOUND_CONNECTIONS = 1024;
/**
 * Requests a connection runs at once; past it the connection stops reading, so the sender meets
 * TCP backpressure instead of this node holding every request it was sent. A member's bound is
 * the sender's own (MAX_PENDING_REQUESTS), so our peers never meet it; anyone else (admin
 * clients, which send one request at a time) gets a small one.
 */
export const MAX_RUNNING_REQUESTS = MAX_PENDING_REQUESTS;
export const UNTRUSTED_MAX_RUNNING_REQUESTS = 64;

export interface MeshConnectionOptions {
  socket: Socket<unknown>;
  handler: RequestHandler;
  /** Who is on the other side, for log lines. */
  label: string;
  warn: (message: string) => void;
  onClose?: (connection: MeshConnection) => void;
  /** Accepted by this node's listener (not dialed): untrusted until a member's hello. */
  inbound?: boolean;
}

export class MeshConnection {
  private readonly socket: Socket<unknown>;
  private readonly writer: SocketWriter;
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  private batch: Uint8Array[] = [];
  private batchBytes = 0;
  private batchReleases: (() => void)[] = [];
  private flushScheduled = false;
  private sweep: ReturnType<typeof setInterval> | undefined;
  /** What the peer proved in the TLS handshake; undefined on plain TCP. */
  certificate: PeerCertificate | undefined;
  /** Why the other end refused us (a "refused" frame), reported instead of a bare close. */
  private refusal: ShoalError | undefined;
  private identity: string | undefined;
  private helloTimer: ReturnType<typeof setTimeout> | undefined;
  private static inboundOpen = 0;
  /** Requests handed to the handler and not yet answered. */
  private running = 0;
  /**
   * Requests decoded while `running` was at its bound, started in arrival order as others end.
   * Reading is paused while any wait, so this holds at most what the socket had delivered.
   */
  private waiting: Frame[] = [];
  private readingPaused = false;
  label: string;

  constructor(private readonly options: MeshConnectionOptions) {
    this.socket = options.socket;
    this.label = options.label;
    this.writer = new SocketWriter(options.socket, MAX_QUEUED_BYTES);
    if (options.inbound) this.limitUntilHello();
  }

  /** Filled by the hello exchange: the peer's node id, or "admin". A member's id lifts the limits. */
  get peerId(): string | undefined {
    return this.identity;
  }

  set peerId(id: string | undefined) {
    this.identity = id;
    if (id === undefined || id === "admin") return;
    this.decoder.maxFrameBytes = MAX_FRAME_BYTES;
    clearTimeout(this.helloTimer);
  }

  private limitUntilHello(): void {
    this.decoder.maxFrameBytes = UNTRUSTED_MAX_FRAME_BYTES;
    if (++MeshConnection.inboundOpen > MAX_INBOUND_CONNECTIONS) {
      this.options.warn(`refusing mesh connection from ${this.label}: ${MAX_INBOUND_CONNECTIONS} inbound connections open`);
      queueMicrotask(() => this.close());
      return;
    }
    this.helloTimer = setTimeout(() => {
      if (this.identity !== undefined) return;
      this.options.warn(`dropping mesh connection from ${this.label}: no hello in ${HELLO_TIMEOUT_MS} ms`);
      this.close();
    }, HELLO_TIMEOUT_MS);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  request(op: string, args: FrameHeader, payload: Uint8Array = EMPTY_PAYLOAD, timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS): Promise<Response> {
    if (this.closed) return Promise.reject(this.refusal ?? new ShoalError("NODE_DOWN", `connection to ${this.label} is closed`));
    if (this.pending.size >= MAX_PENDING_REQUESTS) {
      return Promise.reject(new ShoalError("NODE_DOWN", `too many requests in flight to ${this.label}`));
    }
    const id = this.nextId++;
    this.sweep ??= setInterval(() => this.failExpired(), SWEEP_INTERVAL_MS);
    return new Promise<Response>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, op, deadlineMs: performance.now() + timeoutMs });
      try {
        this.send({ t: "q", i: id, op, a: args }, payload);
      } catch (err) {
        // Over a frame limit: this request fails, the connection and its other requests go on.
        this.pending.delete(id);
        reject(asShoalError(err));
      }
    });
  }

  private failExpired(): void {
    const nowMs = performance.now();
    for (const [id, pending] of this.pending) {
      if (pending.deadlineMs > nowMs) continue;
      this.pending.delete(id);
      pending.reject(new ShoalError("TIMEOUT", `${pending.op} to ${this.label} got no answer in time`));
    }
  }

  /** Feed from the socket's data handler. */
  onData(chunk: Uint8Array): void {
    receivedBuffers.received(chunk.byteLength);
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.options.warn(`dropping mesh connection from ${this.label}: ${asShoalError(err).message}`);
      nodeMetrics.meshBadFrames.inc();
      this.close();
      return;
    }
    for (const frame of frames) {
      if (frame.header.t === "q" && (this.waiting.length > 0 || this.running >= this.runningBound())) this.waiting.push(frame);
      else this.onFrame(frame);
    }
    if (this.waiting.length > 0 && !this.readingPaused && !this.closed) {
      this.readingPaused = true;
      this.socket.pause();
    }
  }

  private runningBound(): number {
    return this.identity === undefined || this.identity === "admin" ? UNTRUSTED_MAX_RUNNING_REQUESTS : MAX_RUNNING_REQUESTS;
  }

  /** A request ended: start those that waited for room, and read again once none wait. */
  private onRequestDone(): void {
    this.running--;
    // Handlers answer later (a promise), never from inside this loop: no re-entry.
    let started = 0;
    while (started < this.waiting.length && this.running < this.runningBound()) this.onFrame(this.waiting[started++]!);
    if (this.closed) return;
    this.waiting.splice(0, started);
    if (this.waiting.length === 0 && this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
  }

  onDrain(): void {
    this.writer.drain();
  }

  /** Feed from the socket's close handler (or call to drop the connection). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweep);
    clearTimeout(this.helloTimer);
    if (this.options.inbound) MeshConnection.inboundOpen--;
    for (const [, pending] of this.pending) {
      pending.reject(this.refusal ?? new ShoalError("NODE_DOWN", `connection to ${this.label} closed`));
    }
    this.pending.clear();
    this.waiting = [];
    this.socket.end();
    this.options.onClose?.(this);
  }

  private onFrame(frame: Frame): void {
    const { header } = frame;
    if (header.t === "r") this.onResponse(header, frame.payload);
    else if (header.t === "q") this.onRequest(header, frame.payload);
    else if (header.t === "x") {
      this.refusal = errorFromWire((header.e as object) ?? {});
      this.close();
    } else {
      this.options.warn(`dropping mesh connection from ${this.label}: frame of unknown type ${String(header.t)}`);
      this.close();
    }
  }

  private onResponse(header: FrameHeader, payload: Payload): void {
    const id = header.i as number;
    const pending = this.pending.get(id);
    if (!pending) return; // timed out already
    this.pending.delete(id);
    if (header.ok) pending.resolve({ result: (header.a as FrameHeader) ?? {}, payload });
    else pending.reject(errorFromWire((header.e as object) ?? {}));
  }

  private onRequest(header: FrameHeader, payload: Payload): void {
    const id = header.i;
    const op = header.op;
    const args = header.a;
    if (typeof id !== "number" || typeof op !== "string" || (args !== undefined && (typeof args !== "object" || args === null))) {
      this.options.warn(`dropping mesh connection from ${this.label}: malformed request header`);
      this.close();
      return;
    }
    let reply: Reply | Promise<Reply>;
    try {
      reply = this.options.handler(this, op, (args as FrameHeader) ?? {}, payload);
    } catch (err) {
      this.sendError(id, err);
      return;
    }
    if (!(reply instanceof Promise)) return this.sendReply(id, reply);
    this.running++;
    reply
      .then(
        (value) => this.sendReply(id, value),
        (err) => this.sendError(id, err),
      )
      .finally(() => this.onRequestDone());
  }

  private sendReply(id: number, reply: Reply): void {
    try {
      this.send({ t: "r", i: id, ok: true, a: reply.result }, reply.payload ?? EMPTY_PAYLOAD, reply.release);
    } catch (err) {
      // An answer over a frame limit is a bug of its sender: the asker gets an error, and the
      // link stays up (dropping it would make the asker reconnect and ask again, for ever).
      reply.release?.();
      this.options.warn(`answer to ${this.label} could not be sent: ${asShoalError(err).message}`);
      this.sendError(id, err);
    }
  }

  private sendError(id: number, err: unknown): void {
    this.send({ t: "r", i: id, ok: false, e: asShoalError(err).toWire() }, EMPTY_PAYLOAD);
  }

  /**
   * Frames with small payloads issued in one tick go out in one socket write (a forwarding node
   * sends many small requests and replies per tick); a large payload is written on its own,
   * after what was batched, straight from its buffer.
   */
  private send(header: FrameHeader, payload: Uint8Array, release?: () => void): void {
    if (this.closed) {
      release?.();
      return;
    }
    const head = encodeFrameHead(header, payload.byteLength);
    this.batch.push(head);
    this.batchBytes += head.byteLength;
    if (payload.byteLength > COALESCE_BYTES) {
      this.flushBatch();
      this.checkQueue(this.writer.write(payload, release));
      return;
    }
    if (payload.byteLength > 0) {
      this.batch.push(payload);
      this.batchBytes += payload.byteLength;
      if (release) this.batchReleases.push(release);
    }
    if (this.batchBytes >= BATCH_BYTES) this.flushBatch();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(this.flushBound);
    }
  }

  private readonly flushBound = () => this.flushBatch();

  private flushBatch(): void {
    this.flushScheduled = false;
    if (this.batchBytes === 0 || this.closed) return;
    let joined = this.batch[0]!;
    if (this.batch.length > 1) {
      joined = Buffer.allocUnsafe(this.batchBytes);
      let at = 0;
      for (const piece of this.batch) {
        joined.set(piece, at);
        at += piece.byteLength;
      }
    }
    const releases = this.batchReleases;
    this.batch = [];
    this.batchBytes = 0;
    this.batchReleases = [];
    const ok = this.writer.write(joined, releases.length === 0 ? undefined : () => releases.forEach((release) => release()));
    this.checkQueue(ok);
  }

  private checkQueue(ok: boolean): void {
    if (!ok) {
      this.options.warn(`dropping mesh connection to ${this.label}: it is not reading (${this.writer.pendingBytes} bytes queued)`);
      this.close();
    }
  }
}
