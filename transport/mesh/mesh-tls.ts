// Mutual TLS on the peer mesh: the options both ends use, the check of what the other end
// presented, and which mesh operations each kind of certificate may send. Verification is ours
// (rejectUnauthorized off, the verdict read in the handshake callback) so that a refused peer
// gets one clear log line on the node and a clear error at the client, instead of a silent close.
import type { Socket, TLSOptions } from "bun";
import type { FrameHeader } from "./frame.ts";
import { subjectIdentity, type TlsIdentity, type TlsRole } from "../tls/tls-identity.ts";

/** Who the other end of a mesh connection proved to be. */
export interface PeerCertificate {
  name: string;
  role: TlsRole;
}

/** A connection that has not finished its TLS handshake in this long is dropped. */
export const TLS_HANDSHAKE_TIMEOUT_SECONDS = 10;

export function meshTlsOptions(identity: TlsIdentity): TLSOptions {
  return { ca: identity.caPem, cert: identity.certPem, key: identity.keyPem, requestCert: true, rejectUnauthorized: false };
}

/**
 * The verdict on a finished handshake: the peer's certificate, or why it is refused. `error` is
 * Bun's verification error (set when the chain does not lead to our CA or no certificate came).
 */
export function verifyPeer(socket: Socket<unknown>, success: boolean, error: Error | null | undefined): PeerCertificate | string {
  const certificate = socket.getPeerCertificate() as { subject?: Record<string, string> } | undefined;
  if (!success) return `TLS handshake failed (${error?.message ?? "no reason given"}); is it speaking plain TCP or another TLS setup?`;
  if (!certificate?.subject) return "it presented no certificate";
  const subject = Object.entries(certificate.subject).map(([key, value]) => `${key}=${value}`).join("\n");
  const identity = subjectIdentity(subject);
  if (error) {
    const code = (error as Error & { code?: string }).code ?? "";
    return `its certificate '${identity.name}' is not from this group's CA (${code || error.message})`;
  }
  return identity;
}

/**
 * Why `certificate` may not send `op`, or undefined when it may. Nodes may do anything a member
 * does but only under their own name; admin certificates only reach the admin API; client
 * certificates (for NBD) nothing on the mesh.
 */
export function meshOpRefusal(certificate: PeerCertificate | undefined, op: string, args: FrameHeader): string | undefined {
  if (certificate === undefined) return "this connection has no verified certificate";
  if (certificate.role === "node") {
    const claimed = op === "group.join" || (op === "hello" && args.role === "peer") ? memberId(args) : certificate.name;
    if (claimed !== certificate.name) return `certificate '${certificate.name}' cannot speak for node '${String(claimed)}'`;
    return undefined;
  }
  if (certificate.role === "admin" && ((op === "hello" && args.role !== "peer") || op === "ping" || op.startsWith("admin."))) return undefined;
  return `a ${certificate.role} certificate ('${certificate.name}') may not send '${op}' on the mesh`;
}

function memberId(args: FrameHeader): unknown {
  const member = args.member as { id?: unknown } | undefined;
  return member?.id;
}
