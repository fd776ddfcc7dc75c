// The NBD client's socket: an input queue that serves exact-size reads during the handshake and
// hands every chunk to the reply parser after it, the writer with Bun's partial writes handled,
// STARTTLS, and close and timeout handling shared by the handshake and the transmission phase.
import type { Socket } from "bun";
import { ShoalError } from "../../core/errors.ts";
import { meshTlsOptions, verifyPeer } from "../mesh/mesh-tls.ts";
import type { TlsIdentity } from "../tls/tls-identity.ts";
import { SocketWriter } from "../wire/socket-writer.ts";
import { ByteQueue } from "./_byte-queue.ts";

const HANDSHAKE_TIMEOUT_MS = 30_000;

type ClientSocket = Socket<Wire>;

/** The socket plus an input queue; during the handshake it serves exact-size reads. */
export class Wire {
  readonly input = new ByteQueue();
  writer!: SocketWriter;
  socket!: ClientSocket;
  closedError: ShoalError | undefined;
  /** After STARTTLS the raw socket still reports the ciphertext; only the TLS socket's data counts. */
  tlsUpgraded = false;
  /** Set once the handshake is over; then every chunk goes to the reply parser. */
  onInput: (() => void) | undefined;
  onClose: ((error: ShoalError) => void) | undefined;
  private waiter: { count: number; resolve: (bytes: Uint8Array) => void; reject: (error: ShoalError) => void } | undefined;
  private readonly closeWaiters: (() => void)[] = [];

  constructor(readonly address: string) {}

  static async open(host: string, port: number): Promise<Wire> {
    const wire = new Wire(`${host}:${port}`);
    try {
      wire.socket = await Bun.connect<Wire>({ hostname: host, port, data: wire, socket: WIRE_HANDLERS });
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw new ShoalError("NODE_DOWN", `cannot connect to NBD server ${wire.address}: ${reason}; is the node running?`);
    }
    wire.socket.setNoDelay(true);
    // Bounded by the caller-facing limit instead: at most maxInFlight requests of at most 32 MiB.
    wire.writer = new SocketWriter(wire.socket, Number.MAX_SAFE_INTEGER);
    return wire;
  }

  send(bytes: Uint8Array): void {
    if (this.closedError === undefined) this.writer.write(bytes);
  }

  /** Continues this connection inside TLS (after an acknowledged NBD_OPT_STARTTLS). */
  startTls(identity: TlsIdentity): Promise<void> {
    this.tlsUpgraded = true;
    return new Promise<void>((resolve, reject) => {
      const handlers = {
        ...WIRE_HANDLERS,
        data: (socket: ClientSocket, chunk: Uint8Array) => socket.data.handleData(chunk),
        handshake: (socket: ClientSocket, success: boolean, error: Error | null) => {
          const verdict = verifyPeer(socket as Socket<unknown>, success, error);
          if (typeof verdict !== "string") return resolve();
          socket.terminate();
          reject(new ShoalError("NOT_AUTHENTICATED", `refusing NBD server ${this.address}: ${verdict}`));
        },
      };
      const [, secure] = this.socket.upgradeTLS<Wire>({ data: this, tls: meshTlsOptions(identity), socket: handlers });
      this.socket = secure;
      this.writer = new SocketWriter(secure, Number.MAX_SAFE_INTEGER);
      this.closeWaiters.push(() => reject(this.closedError));
    });
  }

  /** Exactly `count` bytes, for the handshake; one read at a time. */
  read(count: number): Promise<Uint8Array> {
    if (this.input.lengthBytes >= count) return Promise.resolve(this.input.take(count));
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => (this.waiter = { count, resolve, reject }));
  }

  handleData(chunk: Uint8Array): void {
    this.input.push(chunk);
    const waiter = this.waiter;
    if (waiter !== undefined) {
      if (this.input.lengthBytes < waiter.count) return;
      this.waiter = undefined;
      waiter.resolve(this.input.take(waiter.count));
      return;
    }
    this.onInput?.();
  }

  handleClose(reason?: Error): void {
    if (this.closedError !== undefined) return;
    const detail = reason ? `: ${reason.message}` : "";
    this.closedError = new ShoalError("NODE_DOWN", `the connection to NBD server ${this.address} closed${detail}`);
    this.waiter?.reject(this.closedError);
    this.waiter = undefined;
    this.onClose?.(this.closedError);
    for (const wake of this.closeWaiters.splice(0)) wake();
  }

  closed(): Promise<void> {
    if (this.closedError !== undefined) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }
}

const WIRE_HANDLERS = {
  binaryType: "uint8array" as const,
  data(socket: ClientSocket, chunk: Uint8Array) {
    if (!socket.data.tlsUpgraded) socket.data.handleData(chunk);
  },
  drain(socket: ClientSocket) {
    socket.data.writer.drain();
  },
  close(socket: ClientSocket, error?: Error) {
    socket.data.handleClose(error);
  },
  error(socket: ClientSocket, error: Error) {
    socket.data.handleClose(error);
  },
};

export function protocolError(wire: Wire, reason: string): ShoalError {
  return new ShoalError("BAD_FRAME", `NBD server ${wire.address} broke the protocol: ${reason}`);
}

export async function withTimeout<T>(wire: Wire, work: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      wire.socket.terminate();
      reject(new ShoalError("TIMEOUT", `NBD server ${wire.address} did not finish ${what} within ${HANDSHAKE_TIMEOUT_MS} ms`));
    }, HANDSHAKE_TIMEOUT_MS);
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}
