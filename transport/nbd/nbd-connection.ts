// One NBD client's connection: the socket (plain, or TLS after NBD_OPT_STARTTLS), buffered input,
// batched replies, flow control and the way it closes. What the bytes mean is for NbdHandshake
// (options) and then NbdTransmission (requests); what the server shares is in NbdBudgetAccount.
import type { Socket } from "bun";
import type { BlockDevice, ExportCatalog } from "../../core/block-device.ts";
import { asShoalError } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { ByteQueue } from "./_byte-queue.ts";
import type { MeshLog } from "../mesh/mesh.ts";
import { encodeGreeting, REQUEST_HEADER_BYTES, type ExportSession } from "./nbd-codec.ts";
import { NbdHandshake } from "./nbd-handshake.ts";
import {
  COALESCE_REPLY_BYTES,
  MAX_SERVER_INPUT_BYTES,
  MAX_SERVER_UNSENT_BYTES,
  OUTBOX_HIGH_WATER_BYTES,
  type NbdBudgetAccount,
  type NbdServerBudget,
} from "./nbd-server-budget.ts";
import { type ByteStream, startServerTls } from "./nbd-tls-session.ts";
import { NbdTransmission } from "./nbd-transmission.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";
import { SocketWriter } from "../wire/socket-writer.ts";
import { receivedBuffers } from "../wire/received-buffers.ts";
import type { TlsIdentity } from "../tls/tls-identity.ts";

/** What every connection of one server shares. */
export interface NbdServerContext {
  readonly catalog: ExportCatalog;
  readonly log: MeshLog;
  /** Requests executing at once on one connection. */
  readonly maxInFlight: number;
  readonly tls: { identity: TlsIdentity; required: boolean } | undefined;
  readonly budget: NbdServerBudget;
  /** Set by the server's close(): requests are answered ESHUTDOWN, options NBD_REP_ERR_SHUTDOWN. */
  shuttingDown: boolean;
}

export type NbdServerSocket = Socket<NbdConnection | undefined>;

const COALESCE_BATCH_BYTES = 256 * 1024;
/** Buffered input: one whole WRITE plus what arrives before a pause takes effect. */
const MAX_INPUT_BYTES = 2 * (MAX_REQUEST_BYTES + REQUEST_HEADER_BYTES) + 1024 * 1024;
export const HANDSHAKE_TIMEOUT_SECONDS = 30;
/** How long a closing connection may wait for its peer to read the last replies. */
const DRAIN_TIMEOUT_SECONDS = 30;

type Phase = "handshake" | "transmission" | "draining" | "closed";

export class NbdConnection {
  private state: Phase = "handshake";
  readonly input = new ByteQueue();
  private outbox: SocketWriter;
  readonly peer: string;
  /** The client's socket; after NBD_OPT_STARTTLS `socket` is the TLS socket over it. */
  private readonly rawSocket: NbdServerSocket;
  private socket: ByteStream;
  /** Set by NBD_OPT_STARTTLS: from then on what the raw socket reports is ciphertext, not ours. */
  private tlsUpgraded = false;
  private paused = false;
  private ended = false;
  /** Small replies waiting for the end of the tick; see send(). */
  private batch: Uint8Array[] = [];
  private batchBytes = 0;
  private flushScheduled = false;
  private readonly flushBound = (): void => this.guard(() => this.flushBatch());
  private pumping = false;
  private pumpAgain = false;
  private readonly handshake = new NbdHandshake(this);
  private transmission: NbdTransmission | undefined;
  readonly account: NbdBudgetAccount;

  constructor(
    socket: NbdServerSocket,
    readonly context: NbdServerContext,
  ) {
    this.rawSocket = socket;
    this.socket = socket;
    this.outbox = new SocketWriter(socket, OUTBOX_HIGH_WATER_BYTES);
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    this.account = context.budget.open();
  }

  get phase(): Phase {
    return this.state;
  }

  get isTls(): boolean {
    return this.tlsUpgraded;
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
    receivedBuffers.received(chunk.byteLength);
    if (this.state === "draining" || this.state === "closed") return;
    this.input.push(chunk);
    if (this.input.lengthBytes > MAX_INPUT_BYTES) {
      this.violation(`buffered ${this.input.lengthBytes} bytes of input without a complete request`);
    } else if (this.account.inputOverShare(chunk.length, this.input.lengthBytes)) {
      this.violation(`holds ${this.input.lengthBytes} bytes of unfinished input while the server's ${MAX_SERVER_INPUT_BYTES}-byte input budget is spent`);
    }
    this.pump();
  }

  /** Keeps this connection's part of the server's budgets in step with its buffers. */
  private accountBuffers(): void {
    this.account.setInput(this.input.lengthBytes);
    this.account.setUnsent(this.state === "closed" ? 0 : this.unsentBytes());
  }

  /** Called when a server-wide budget frees up: a connection paused for it reads again. */
  wake(): void {
    if (this.state !== "transmission" || !this.paused || this.pumping) return;
    this.guard(() => this.pump());
  }

  /**
   * While the server's unsent replies are over budget, a client holding more than its share of
   * them is cut: clients that ask and never read cannot hold the memory.
   */
  private noteUnsent(): void {
    if (this.state === "closed" || !this.account.unsentOverShare()) return;
    this.context.log.warn(`nbd client ${this.peer}: holds ${this.account.unsent} bytes of replies it does not read while the server's ${MAX_SERVER_UNSENT_BYTES}-byte budget is spent; disconnecting`);
    nodeMetrics.nbdViolations.inc();
    this.terminate();
    this.accountBuffers();
    this.context.budget.collectShed();
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
    const during = this.state === "draining" ? "while closing" : "during the handshake";
    this.context.log.warn(`nbd client ${this.peer}: timed out ${during}; disconnecting`);
    this.terminate();
  }

  onClosed(): void {
    this.state = "closed";
    this.input.clear();
    this.accountBuffers();
    this.account.close();
    this.transmission?.abandonAwaitingPayload();
  }

  /** Server shutdown: answer what is already buffered with ESHUTDOWN, finish in-flight work, close. */
  shutdown(): void {
    this.guard(() => {
      this.pump();
      this.beginDrain();
      this.pump();
    });
  }

  terminate(): void {
    this.state = "closed";
    this.socket.terminate();
    if (this.socket !== this.rawSocket) this.rawSocket.terminate();
  }

  crash(err: unknown): void {
    this.context.log.warn(`nbd client ${this.peer}: internal error: ${asShoalError(err).message}; disconnecting`);
    this.terminate();
  }

  /** Runs `work`; an exception in it drops this client only. */
  guard(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.crash(err);
    }
  }

  /** Runs the parser until it needs more input or may not take more work; never re-entered. */
  pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        if (this.state === "handshake") this.handshake.read();
        if (this.state === "transmission") this.transmission!.read();
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
    if (this.state === "closed") return;
    const wanted = this.wantsInput();
    if (wanted === !this.paused) return;
    this.paused = !wanted;
    if (wanted) this.socket.resume();
    else this.socket.pause();
  }

  private wantsInput(): boolean {
    switch (this.state) {
      case "handshake":
        return this.unsentBytes() < OUTBOX_HIGH_WATER_BYTES;
      case "transmission":
        return this.transmission!.wantsInput();
      default:
        // Draining reads and discards, so the peer's FIN is seen and the socket can close.
        return true;
    }
  }

  /** A protocol violation: one warning, then the same clean close as a disconnect. */
  violation(reason: string): void {
    this.context.log.warn(`nbd client ${this.peer}: ${reason}; disconnecting`);
    nodeMetrics.nbdViolations.inc();
    this.beginDrain();
    this.context.budget.collectShed();
  }

  beginDrain(): void {
    if (this.state === "draining" || this.state === "closed") return;
    this.state = "draining";
    this.input.clear();
    this.transmission?.abandonAwaitingPayload();
    this.socket.timeout(DRAIN_TIMEOUT_SECONDS);
  }

  private finishIfDrained(): void {
    if (this.state !== "draining" || this.ended || (this.transmission?.inFlight ?? 0) > 0) return;
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
  send(bytes: Uint8Array): void {
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

  /** A large reply from the buffer pool, after what is batched; `release` once the socket took it. */
  sendOwned(bytes: Uint8Array, release: () => void): void {
    this.flushBatch();
    this.outbox.write(bytes, release);
  }

  flushBatch(): void {
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
    if (this.state !== "closed") this.outbox.write(joined);
  }

  unsentBytes(): number {
    return this.outbox.pendingBytes + this.batchBytes;
  }

  /** Replies the kernel has not taken yet (batched ones excluded). */
  get outboxPendingBytes(): number {
    return this.outbox.pendingBytes;
  }

  /**
   * NBD_OPT_STARTTLS, its ACK written: the same connection continues inside TLS. Bun keeps
   * reporting ciphertext on the raw socket, which onData/onDrain then ignore.
   */
  upgradeToTls(identity: TlsIdentity): void {
    this.rawSocket.timeout(0);
    const secure = startServerTls(this.rawSocket as Socket<unknown>, identity, {
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

  /** The handshake chose an export: requests follow. */
  enterTransmission(exportName: string, device: BlockDevice, session: ExportSession): void {
    this.state = "transmission";
    this.transmission = new NbdTransmission(this, exportName, device, session);
    this.socket.timeout(0);
    const mode = session.structuredReplies ? "structured replies" : "simple replies";
    const extras = `${device.readOnly ? ", read-only" : ""}${session.blockStatusAllowed ? ", base:allocation" : ""}`;
    const [volume, snapshot] = exportName.split("@");
    this.context.log.info(`nbd client ${this.peer} opened export '${exportName}' (${device.sizeBytes} bytes, ${mode}${extras})`, { client: this.peer, volume, snapshot });
  }
}
