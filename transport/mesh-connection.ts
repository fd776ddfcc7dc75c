// One mesh connection, either direction: frames in and out, requests matched to responses by id,
// many in flight at once. Used for peer links, inbound peers and admin clients alike.
import type { Socket } from "bun";
import { errorFromWire, asShoalError, ShoalError } from "../core/errors.ts";
import { encodeFrameHead, FrameDecoder, EMPTY_PAYLOAD, type Frame, type FrameHeader, type Payload } from "./frame.ts";
import { SocketWriter } from "./socket-writer.ts";

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
  timer: ReturnType<typeof setTimeout>;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const MAX_QUEUED_BYTES = 256 * 1024 * 1024;
const MAX_PENDING_REQUESTS = 4096;
/** Payloads up to this size are copied next to their header to save a syscall. */
const COALESCE_BYTES = 64 * 1024;

export interface MeshConnectionOptions {
  socket: Socket<unknown>;
  handler: RequestHandler;
  /** Who is on the other side, for log lines. */
  label: string;
  warn: (message: string) => void;
  onClose?: (connection: MeshConnection) => void;
}

export class MeshConnection {
  private readonly socket: Socket<unknown>;
  private readonly writer: SocketWriter;
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  /** Filled by the hello exchange: the peer's node id, or "admin". */
  peerId: string | undefined;
  label: string;

  constructor(private readonly options: MeshConnectionOptions) {
    this.socket = options.socket;
    this.label = options.label;
    this.writer = new SocketWriter(options.socket, MAX_QUEUED_BYTES);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  request(op: string, args: FrameHeader, payload: Uint8Array = EMPTY_PAYLOAD, timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS): Promise<Response> {
    if (this.closed) return Promise.reject(new ShoalError("NODE_DOWN", `connection to ${this.label} is closed`));
    if (this.pending.size >= MAX_PENDING_REQUESTS) {
      return Promise.reject(new ShoalError("NODE_DOWN", `too many requests in flight to ${this.label}`));
    }
    const id = this.nextId++;
    return new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ShoalError("TIMEOUT", `${op} to ${this.label} got no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.send({ t: "q", i: id, op, a: args }, payload);
    });
  }

  /** Feed from the socket's data handler. */
  onData(chunk: Uint8Array): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.options.warn(`dropping mesh connection from ${this.label}: ${asShoalError(err).message}`);
      this.close();
      return;
    }
    for (const frame of frames) this.onFrame(frame);
  }

  onDrain(): void {
    this.writer.drain();
  }

  /** Feed from the socket's close handler (or call to drop the connection). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(new ShoalError("NODE_DOWN", `connection to ${this.label} closed`));
    }
    this.pending.clear();
    this.socket.end();
    this.options.onClose?.(this);
  }

  private onFrame(frame: Frame): void {
    const { header } = frame;
    if (header.t === "r") this.onResponse(header, frame.payload);
    else if (header.t === "q") this.onRequest(header, frame.payload);
    else {
      this.options.warn(`dropping mesh connection from ${this.label}: frame of unknown type ${String(header.t)}`);
      this.close();
    }
  }

  private onResponse(header: FrameHeader, payload: Payload): void {
    const id = header.i as number;
    const pending = this.pending.get(id);
    if (!pending) return; // timed out already
    this.pending.delete(id);
    clearTimeout(pending.timer);
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
    if (reply instanceof Promise) reply.then((value) => this.sendReply(id, value), (err) => this.sendError(id, err));
    else this.sendReply(id, reply);
  }

  private sendReply(id: number, reply: Reply): void {
    this.send({ t: "r", i: id, ok: true, a: reply.result }, reply.payload ?? EMPTY_PAYLOAD, reply.release);
  }

  private sendError(id: number, err: unknown): void {
    this.send({ t: "r", i: id, ok: false, e: asShoalError(err).toWire() }, EMPTY_PAYLOAD);
  }

  private send(header: FrameHeader, payload: Uint8Array, release?: () => void): void {
    if (this.closed) {
      release?.();
      return;
    }
    const head = encodeFrameHead(header, payload.byteLength);
    let ok: boolean;
    if (payload.byteLength === 0) {
      ok = this.writer.write(head);
      release?.();
    } else if (payload.byteLength <= COALESCE_BYTES) {
      const frame = new Uint8Array(head.byteLength + payload.byteLength);
      frame.set(head, 0);
      frame.set(payload, head.byteLength);
      release?.();
      ok = this.writer.write(frame);
    } else {
      ok = this.writer.write(head) && this.writer.write(payload, release);
    }
    if (!ok) {
      this.options.warn(`dropping mesh connection to ${this.label}: it is not reading (${this.writer.pendingBytes} bytes queued)`);
      this.close();
    }
  }
}
