// The peer mesh's sockets: a listener for peers and admin clients, outbound dialing, and
// PeerLink, which keeps one connection to a member alive (reconnect with backoff, heartbeats).
import type { Socket, TCPSocketListener } from "bun";
import { ShoalError } from "../../core/errors.ts";
import { parseHostPort } from "../../core/cluster/member.ts";
import { encodeFrameHead, type FrameHeader } from "./frame.ts";
import { listenError } from "../wire/listen-error.ts";
import { MeshConnection, type RequestHandler, type Response } from "./mesh-connection.ts";
import { meshTlsOptions, type PeerCertificate, TLS_HANDSHAKE_TIMEOUT_SECONDS, verifyPeer } from "./mesh-tls.ts";
import { type TlsIdentity, tlsIdentity } from "../tls/tls-identity.ts";

/** What a log line is about, for JSON logs: peer, volume, snapshot, move, client. */
export type LogFields = Record<string, string | number | boolean | undefined>;

export interface MeshLog {
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
}

type SocketData = { connection?: MeshConnection };

export class MeshServer {
  private listener: TCPSocketListener<SocketData> | undefined;
  readonly connections = new Set<MeshConnection>();

  constructor(
    private readonly handler: RequestHandler,
    private readonly log: MeshLog,
    /** Mutual TLS: only peers with a certificate from the same CA get a connection. */
    private readonly tls?: TlsIdentity,
  ) {}

  listen(host: string, port: number): number {
    const tls = this.tls;
    try {
      this.listener = this.open(host, port, tls);
    } catch (err) {
      throw listenError("the mesh", host, port, err);
    }
    return this.listener.port;
  }

  private open(host: string, port: number, tls: TlsIdentity | undefined): TCPSocketListener<SocketData> {
    return Bun.listen<SocketData>({
      hostname: host,
      port,
      data: {},
      tls: tls ? meshTlsOptions(tls) : undefined,
      socket: {
        open: (socket) => {
          if (tls) socket.timeout(TLS_HANDSHAKE_TIMEOUT_SECONDS);
          else this.accept(socket, undefined);
        },
        handshake: (socket, success, error) => {
          const verdict = verifyPeer(socket as Socket<unknown>, success, error);
          if (typeof verdict !== "string") return this.accept(socket, verdict);
          this.log.warn(`refusing mesh connection from ${socket.remoteAddress}:${socket.remotePort}: ${verdict}`);
          refuse(socket as Socket<unknown>, success, verdict);
        },
        timeout: (socket) => {
          if (socket.data.connection) return;
          this.log.warn(`refusing mesh connection from ${socket.remoteAddress}:${socket.remotePort}: no TLS handshake in ${TLS_HANDSHAKE_TIMEOUT_SECONDS} s`);
          socket.terminate();
        },
        data: (socket, chunk) => socket.data.connection?.onData(chunk),
        drain: (socket) => socket.data.connection?.onDrain(),
        close: (socket) => socket.data.connection?.close(),
        error: (socket) => socket.data.connection?.close(),
      },
    });
  }

  private accept(socket: Socket<SocketData>, certificate: PeerCertificate | undefined): void {
    socket.timeout(0);
    const connection = new MeshConnection({
      socket: socket as Socket<unknown>,
      handler: this.handler,
      label: `${socket.remoteAddress}`,
      warn: this.log.warn,
      onClose: (closed) => this.connections.delete(closed),
      inbound: true,
    });
    connection.certificate = certificate;
    socket.data = { connection };
    this.connections.add(connection);
  }

  stop(): void {
    this.listener?.stop(true);
    for (const connection of this.connections) connection.close();
  }
}

/** Tells a refused peer why in a "refused" frame when the TLS session stands, then closes. */
function refuse(socket: Socket<unknown>, sessionUp: boolean, reason: string): void {
  if (!sessionUp) return void socket.terminate();
  socket.write(encodeFrameHead({ t: "x", e: new ShoalError("NOT_AUTHENTICATED", `the node refused this connection: ${reason}`).toWire() }, 0));
  socket.end();
}

/**
 * Dials a mesh address; the returned connection is ready for requests. With a TLS identity set
 * for this process it is ready only once the node proved a certificate from our CA.
 */
export async function dialMesh(
  address: string,
  handler: RequestHandler,
  log: MeshLog,
  onClose?: (connection: MeshConnection) => void,
  connectTimeoutMs = 5000,
): Promise<MeshConnection> {
  const { host, port } = parseHostPort(address);
  const identity = tlsIdentity();
  let settle!: { resolve: (connection: MeshConnection) => void; reject: (error: ShoalError) => void };
  const ready = new Promise<MeshConnection>((resolve, reject) => (settle = { resolve, reject }));
  const start = (socket: Socket<SocketData>, certificate: PeerCertificate | undefined) => {
    const connection = new MeshConnection({ socket: socket as Socket<unknown>, handler, label: address, warn: log.warn, onClose });
    connection.certificate = certificate;
    socket.data = { connection };
    settle.resolve(connection);
  };
  let socket: Socket<SocketData> | undefined;
  Bun.connect<SocketData>({
    hostname: host,
    port,
    data: {},
    tls: identity ? meshTlsOptions(identity) : undefined,
    socket: {
      open: (opened) => {
        if (!identity) start(opened, undefined);
      },
      handshake: (shaken, success, error) => {
        const verdict = verifyPeer(shaken as Socket<unknown>, success, error);
        if (typeof verdict !== "string") return start(shaken, verdict);
        settle.reject(new ShoalError("NOT_AUTHENTICATED", `refusing the node at ${address}: ${verdict}`));
        shaken.end();
      },
      data: (s, chunk) => s.data.connection?.onData(chunk),
      drain: (s) => s.data.connection?.onDrain(),
      close: (s) => closedWhileDialing(s, address, identity !== undefined, settle.reject),
      error: (s) => closedWhileDialing(s, address, identity !== undefined, settle.reject),
      connectError: () => {},
    },
  }).then(
    (connected) => (socket = connected),
    (err: unknown) => settle.reject(new ShoalError("NODE_DOWN", `cannot reach ${address}: ${(err as Error).message}`)),
  );
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ShoalError("NODE_DOWN", `no answer from ${address} in ${connectTimeoutMs} ms`)), connectTimeoutMs);
  });
  try {
    return await Promise.race([ready, timeout]);
  } catch (err) {
    socket?.terminate();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function closedWhileDialing(socket: Socket<SocketData>, address: string, tls: boolean, reject: (error: ShoalError) => void): void {
  if (socket.data.connection) return socket.data.connection.close();
  reject(
    tls
      ? new ShoalError("NOT_AUTHENTICATED", `the node at ${address} closed the connection during the TLS handshake; does it run with --tls and the same CA?`)
      : new ShoalError("NODE_DOWN", `the node at ${address} closed the connection`),
  );
}

export interface PeerLinkOptions {
  peerId: string;
  address: string;
  /** The hello sent first on every new connection; its answer is checked by `onPeerInfo`. */
  hello: () => FrameHeader;
  /** Called with the hello answer and every heartbeat answer; throwing refuses the peer. */
  onPeerInfo: (result: FrameHeader) => void;
  handler: RequestHandler;
  log: MeshLog;
  onUp: (link: PeerLink) => void;
  onDown: (link: PeerLink) => void;
  heartbeatIntervalMs?: number;
  heartbeatTimeoutMs?: number;
}

const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 3000;
/**
 * A request to a peer whose link is not up yet, and not known to be unreachable (first dial, or
 * redialing after a dropped connection), waits this long for it before failing.
 */
const WAIT_FOR_UP_MS = 3000;

/** Keeps a connection to one member alive and carries this node's requests to it. */
export class PeerLink {
  private connection: MeshConnection | undefined;
  private stopped = false;
  /** The last refusal logged, so a peer refused on every retry is logged once, not every backoff. */
  private lastRefusal = "";
  private backoffMs = BACKOFF_MIN_MS;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private waiters: (() => void)[] = [];
  private cutBackoff: (() => void) | undefined;
  /**
   * Why the peer is known to be unreachable (a dial or hello failed, or heartbeats stopped), until
   * it is up again. While set, requests fail at once with NODE_DOWN: waiting for a reconnect the
   * backoff may not try for seconds made every request for a dead node's pages take 3 s to fail.
   */
  private unreachable: string | undefined;
  state: "up" | "down" = "down";
  lastHeartbeatMs = 0;
  address: string;

  constructor(private readonly options: PeerLinkOptions) {
    this.address = options.address;
  }

  get peerId(): string {
    return this.options.peerId;
  }

  start(): void {
    void this.connectLoop();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.heartbeat);
    this.connection?.close();
    this.cutBackoff?.();
    for (const wake of this.waiters.splice(0)) wake();
  }

  request(op: string, args: FrameHeader, payload?: Uint8Array, timeoutMs?: number): Promise<Response> {
    // The link is up for nearly every request: the connection's own promise, no async wrapper.
    if (this.state === "up" && this.connection) return this.connection.request(op, args, payload, timeoutMs);
    return this.requestWhenUp(op, args, payload, timeoutMs);
  }

  private async requestWhenUp(op: string, args: FrameHeader, payload?: Uint8Array, timeoutMs?: number): Promise<Response> {
    if (this.state !== "up" && this.unreachable === undefined) await this.waitForUp();
    const connection = this.connection;
    if (this.state !== "up" || !connection) {
      throw new ShoalError("NODE_DOWN", `node ${this.peerId} (${this.address}) is down${this.unreachable === undefined ? "" : `: ${this.unreachable}`}`);
    }
    return connection.request(op, args, payload, timeoutMs);
  }

  private waitForUp(): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, WAIT_FOR_UP_MS);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private async connectLoop(): Promise<void> {
    while (!this.stopped && this.state === "down") {
      let connection: MeshConnection | undefined;
      try {
        connection = await dialMesh(this.address, this.options.handler, this.options.log, (closed) => this.onClosed(closed));
        if (connection.certificate && connection.certificate.name !== this.peerId) {
          throw new ShoalError("NOT_AUTHENTICATED", `the node at ${this.address} has a certificate for '${connection.certificate.name}', not '${this.peerId}'`);
        }
        const hello = await connection.request("hello", this.options.hello(), undefined, 5000);
        this.options.onPeerInfo(hello.result);
        connection.peerId = this.peerId;
        connection.label = `node ${this.peerId} (${this.address})`;
        if (this.stopped) {
          connection.close();
          return;
        }
        this.connection = connection;
        this.markUp();
        return;
      } catch (err) {
        connection?.close();
        // A peer still joining is alive: requests wait for the next dial as for a first one.
        const joining = err instanceof ShoalError && err.code === "NOT_READY";
        if (!joining) this.markUnreachable((err as Error).message);
        const refusal = err instanceof ShoalError && (err.code === "CONFLICT" || err.code === "NOT_AUTHENTICATED") ? err.message : "";
        if (refusal && refusal !== this.lastRefusal) this.options.log.warn(refusal);
        this.lastRefusal = refusal;
        await this.backoff(this.backoffMs * (0.5 + Math.random()));
        this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
      }
    }
  }

  /** The wait between dials, cut short by redialNow. */
  private backoff(delayMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.cutBackoff?.(), delayMs);
      this.cutBackoff = () => {
        clearTimeout(timer);
        this.cutBackoff = undefined;
        resolve();
      };
    });
  }

  /**
   * The peer has shown it is back (it dialed this node): dial it now rather than when the backoff
   * ends, up to 4.5 s later, so requests for its pages go through again as soon as it is.
   */
  redialNow(): void {
    if (this.state === "up") return;
    this.backoffMs = BACKOFF_MIN_MS;
    this.cutBackoff?.();
  }

  /** Requests waiting for the link fail now, and new ones at once, until it is up again. */
  private markUnreachable(reason: string): void {
    this.unreachable = reason;
    for (const wake of this.waiters.splice(0)) wake();
  }

  private markUp(): void {
    this.state = "up";
    this.unreachable = undefined;
    this.backoffMs = BACKOFF_MIN_MS;
    this.lastHeartbeatMs = Date.now();
    for (const wake of this.waiters.splice(0)) wake();
    const intervalMs = this.options.heartbeatIntervalMs ?? 1000;
    const timeoutMs = this.options.heartbeatTimeoutMs ?? 3000;
    let lastTickMs = Date.now();
    this.heartbeat = setInterval(() => {
      const connection = this.connection;
      if (!connection) return;
      const nowMs = Date.now();
      // A tick that comes late means this node's own event loop was busy (decoding a large record,
      // say): the peer's answers could not be read meanwhile, so the stall is not held against it.
      const stallMs = nowMs - lastTickMs - intervalMs;
      lastTickMs = nowMs;
      if (stallMs > 0) this.lastHeartbeatMs = Math.min(nowMs, this.lastHeartbeatMs + stallMs);
      if (nowMs - this.lastHeartbeatMs > timeoutMs) {
        this.options.log.warn(`node ${this.peerId} missed heartbeats for ${timeoutMs} ms; reconnecting`, { peer: this.peerId });
        this.markUnreachable(`no heartbeat answer in ${timeoutMs} ms`);
        connection.close();
        return;
      }
      connection.request("ping", {}, undefined, timeoutMs).then(
        (response) => {
          this.lastHeartbeatMs = Date.now();
          try {
            this.options.onPeerInfo(response.result);
          } catch (err) {
            this.options.log.warn((err as Error).message);
            connection.close();
          }
        },
        () => {},
      );
    }, intervalMs);
    this.options.onUp(this);
  }

  private onClosed(connection: MeshConnection): void {
    if (connection !== this.connection) return;
    clearInterval(this.heartbeat);
    this.connection = undefined;
    const wasUp = this.state === "up";
    this.state = "down";
    if (wasUp) this.options.onDown(this);
    if (!this.stopped) void this.connectLoop();
  }
}
