// Server-side TLS for NBD_OPT_STARTTLS on a Bun socket. Bun cannot upgrade a server socket to
// TLS (oven-sh/bun#25044), so the Bun socket keeps carrying the ciphertext and node:tls does
// the TLS in between: raw socket <-> Duplex <-> TLSSocket. The session looks like a socket to the
// NBD connection (write/end/pause/...), so the protocol code is the same with or without TLS.
import { Duplex } from "node:stream";
import { TLSSocket } from "node:tls";
import { dataBuffers } from "./buffer-pool.ts";
import { subjectIdentity, type TlsIdentity } from "./tls-identity.ts";
import type { PeerCertificate } from "./mesh-tls.ts";
import type { SocketWriter } from "./socket-writer.ts";

/** What the NBD connection needs from a socket; a Bun socket and a TlsServerSession both are one. */
export interface ByteStream {
  write(bytes: Uint8Array): number;
  end(): void;
  terminate(): void;
  pause(): void;
  resume(): void;
  timeout(seconds: number): void;
  setNoDelay(noDelay?: boolean): void;
}

export interface TlsSessionEvents {
  /** The client proved a certificate from our CA; plaintext follows. */
  onSecure(peer: PeerCertificate): void;
  /** Decrypted bytes from the client. */
  onPlaintext(chunk: Uint8Array): void;
  /** The session can take plaintext again after write() took less than offered. */
  onDrain(): void;
  /** Handshake or verification failed, or the TLS stream broke: log it and drop the client. */
  onFailed(reason: string): void;
}

export class TlsServerSession implements ByteStream {
  private readonly tls: TLSSocket;
  private readonly duplex: Duplex;
  private secure = false;
  private failed = false;

  constructor(
    private readonly raw: ByteStream,
    /** The raw socket's writer, so ciphertext stays behind any bytes still queued before TLS. */
    private readonly rawWriter: SocketWriter,
    identity: TlsIdentity,
    private readonly events: TlsSessionEvents,
  ) {
    this.duplex = new Duplex({
      read: () => {},
      write: (chunk: Uint8Array, _encoding, done) => void rawWriter.write(chunk, () => done()),
      final: (done) => {
        raw.end();
        done();
      },
    });
    this.tls = new TLSSocket(this.duplex as never, {
      isServer: true,
      ca: identity.caPem,
      cert: identity.certPem,
      key: identity.keyPem,
      requestCert: true,
      rejectUnauthorized: false,
    });
    this.tls.on("secure", () => this.verify());
    this.tls.on("data", (chunk: Uint8Array) => {
      if (this.secure) events.onPlaintext(chunk);
    });
    this.tls.on("drain", () => events.onDrain());
    this.tls.on("error", (err: Error) => this.fail(this.secure ? `TLS error: ${err.message}` : `TLS handshake failed: ${err.message}`));
  }

  /** Ciphertext from the raw socket's data handler. */
  receive(chunk: Uint8Array): void {
    if (!this.failed) this.duplex.push(chunk);
  }

  /** From the raw socket's drain handler. */
  onRawDrain(): void {
    this.rawWriter.drain();
  }

  /**
   * Takes all of `bytes` or none (0) while the TLS stream is over its buffer bound; then
   * onDrain follows. The bytes are copied: TLS encrypts later, and callers reuse their buffers.
   */
  write(bytes: Uint8Array): number {
    if (this.failed) return bytes.byteLength;
    if (this.tls.writableNeedDrain) return 0;
    const copy = dataBuffers.acquire(bytes.byteLength);
    copy.set(bytes);
    this.tls.write(copy, () => dataBuffers.release(copy));
    return bytes.byteLength;
  }

  end(): void {
    this.tls.end();
  }

  terminate(): void {
    this.failed = true;
    this.tls.destroy();
    this.raw.terminate();
  }

  pause(): void {
    this.tls.pause();
    this.raw.pause();
  }

  resume(): void {
    this.tls.resume();
    this.raw.resume();
  }

  timeout(seconds: number): void {
    this.raw.timeout(seconds);
  }

  setNoDelay(noDelay?: boolean): void {
    this.raw.setNoDelay(noDelay);
  }

  private verify(): void {
    const certificate = this.tls.getPeerCertificate();
    const error = this.tls.authorizationError;
    if (!certificate || !certificate.subject) return this.fail("it presented no client certificate");
    const subject = Object.entries(certificate.subject).map(([key, value]) => `${key}=${String(value)}`).join("\n");
    const peer = subjectIdentity(subject);
    if (error) return this.fail(`its certificate '${peer.name}' is not from this group's CA (${String((error as { code?: string }).code ?? error)})`);
    this.secure = true;
    this.events.onSecure(peer);
  }

  private fail(reason: string): void {
    if (this.failed) return;
    this.failed = true;
    this.events.onFailed(reason);
  }
}
