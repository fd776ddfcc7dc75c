// Server-side TLS for NBD_OPT_STARTTLS: the client's Bun socket is upgraded in place (Bun's
// upgradeTLS with isServer) and the NBD connection carries on over the TLS socket, with the
// same write/pause/timeout surface. Bun keeps reporting the ciphertext to the original socket's
// handlers (a "raw tap"), so the connection ignores those once it has upgraded.
import type { Socket, SocketHandler, TLSOptions } from "bun";
import { meshTlsOptions, type PeerCertificate, verifyPeer } from "../mesh/mesh-tls.ts";
import type { TlsIdentity } from "../tls/tls-identity.ts";

/** What the NBD connection needs from a socket: a plain Bun socket or the TLS one. */
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
  /** Handshake or verification failed: log it and drop the client. */
  onFailed(reason: string): void;
  onPlaintext(chunk: Uint8Array): void;
  onDrain(): void;
  onTimeout(): void;
}

/** Upgrades `raw` (whose STARTTLS ACK has been written) and returns the TLS socket. */
export function startServerTls(raw: Socket<unknown>, identity: TlsIdentity, events: TlsSessionEvents): Socket<unknown> {
  let verified = false;
  const handlers: SocketHandler<unknown> = {
    binaryType: "uint8array",
    handshake: (socket, success, error) => {
      const verdict = verifyPeer(socket, success, error);
      if (typeof verdict === "string") return events.onFailed(verdict === "it presented no certificate" ? "it presented no client certificate" : verdict);
      verified = true;
      events.onSecure(verdict);
    },
    data: (_socket, chunk) => {
      if (verified) events.onPlaintext(chunk);
    },
    drain: () => events.onDrain(),
    timeout: () => events.onTimeout(),
  };
  // isServer is honoured by Bun 1.4 but missing from its type declarations.
  const options = { isServer: true, data: undefined, tls: meshTlsOptions(identity) as TLSOptions, socket: handlers };
  const [, secure] = raw.upgradeTLS(options as Parameters<typeof raw.upgradeTLS<unknown>>[0]);
  return secure;
}
