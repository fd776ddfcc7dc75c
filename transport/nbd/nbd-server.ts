// The NBD server: accepts TCP connections and hands each to an NbdConnection (handshake, then
// transmission, in nbd-handshake.ts and nbd-transmission.ts), shares the server-wide budgets
// among them (nbd-server-budget.ts), and closes them all without losing a request on shutdown.
// Every queue is bounded: requests in flight (count and bytes), unsent replies, buffered input.
import type { SocketHandler, TCPSocketListener } from "bun";
import type { ExportCatalog } from "../../core/block-device.ts";
import { ShoalError, asShoalError } from "../../core/errors.ts";
import { listenError } from "../wire/listen-error.ts";
import type { MeshLog } from "../mesh/mesh.ts";
import { NbdConnection, type NbdServerContext, type NbdServerSocket } from "./nbd-connection.ts";
import { NbdServerBudget } from "./nbd-server-budget.ts";
import type { TlsIdentity } from "../tls/tls-identity.ts";

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
const MAX_CONNECTIONS = 1024;
/** How long close() waits for in-flight requests before cutting connections. */
const CLOSE_TIMEOUT_MS = 30_000;

export class NbdServer {
  private readonly context: NbdServerContext;
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
    this.context = { catalog: opts.catalog, log: opts.log, maxInFlight, tls: opts.tls, shuttingDown: false, budget: new NbdServerBudget(wakeBlocked) };
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

  private accept(socket: NbdServerSocket): void {
    if (this.context.shuttingDown || this.connections.size >= MAX_CONNECTIONS) {
      this.context.log.warn(`nbd server: refusing ${socket.remoteAddress}: ${this.context.shuttingDown ? "shutting down" : `${MAX_CONNECTIONS} connections open`}`);
      socket.terminate();
      return;
    }
    const connection = new NbdConnection(socket, this.context);
    socket.data = connection;
    this.connections.add(connection);
    connection.start();
  }

  private forget(connection: NbdConnection): void {
    this.connections.delete(connection);
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
