// This process's TLS identity: the group CA, its own certificate and key, read from a directory
// made by `shoal tls init/issue`. A process has one identity (a node, or one admin command), so it
// is set once at start-up and every mesh dial and NBD client connection presents it.
import { X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { ShoalError } from "../../core/errors.ts";

/** What a certificate says it is, in its OU: a group member, or an operator's admin client. */
export type TlsRole = "node" | "admin" | "client";

export interface TlsIdentity {
  dir: string;
  caPem: string;
  certPem: string;
  keyPem: string;
  /** The certificate's CN: a node's id, or an admin's or client's name. */
  name: string;
  role: TlsRole;
}

/** Names inside a credentials directory; the client-* pair is qemu's and libnbd's layout. */
export const CA_CERT_FILE = "ca-cert.pem";
const CERT_FILES = [
  ["cert.pem", "key.pem"],
  ["client-cert.pem", "client-key.pem"],
] as const;

export function loadTlsIdentity(dir: string): TlsIdentity {
  const caPath = path.join(dir, CA_CERT_FILE);
  const pair = CERT_FILES.find(([cert]) => fs.existsSync(path.join(dir, cert)));
  if (!fs.existsSync(caPath) || pair === undefined) {
    throw new ShoalError(
      "BAD_ARGUMENT",
      `'${dir}' is not a TLS credentials directory: it needs ${CA_CERT_FILE} and cert.pem + key.pem (or client-cert.pem + client-key.pem); ` +
        "`shoal tls issue CADIR NAME` makes one",
    );
  }
  const keyPath = path.join(dir, pair[1]);
  checkPrivate(keyPath);
  const caPem = fs.readFileSync(caPath, "utf8");
  const certPem = fs.readFileSync(path.join(dir, pair[0]), "utf8");
  const keyPem = fs.readFileSync(keyPath, "utf8");
  const { name, role } = describeCertificate(certPem);
  if (!new X509Certificate(certPem).checkIssued(new X509Certificate(caPem))) {
    throw new ShoalError("BAD_ARGUMENT", `${path.join(dir, pair[0])} was not issued by the CA in ${caPath}`);
  }
  return { dir, caPem, certPem, keyPem, name, role };
}

/** A private key readable by others is refused, as ssh does: the key is the node's identity. */
function checkPrivate(keyPath: string): void {
  let mode: number;
  try {
    mode = fs.statSync(keyPath).mode;
  } catch (err) {
    throw new ShoalError("BAD_ARGUMENT", `cannot read ${keyPath}: ${(err as Error).message}`);
  }
  if ((mode & 0o077) !== 0) {
    throw new ShoalError("BAD_ARGUMENT", `${keyPath} is readable by others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  }
}

/** CN and OU of a PEM certificate (our certificates put the role in OU). */
export function describeCertificate(certPem: string): { name: string; role: TlsRole } {
  let subject: string;
  try {
    subject = new X509Certificate(certPem).subject;
  } catch (err) {
    throw new ShoalError("BAD_ARGUMENT", `not a PEM certificate: ${(err as Error).message}`);
  }
  return subjectIdentity(subject);
}

/** "O=shoal\nOU=node\nCN=n1" (node:crypto's form) -> { name: "n1", role: "node" }. */
export function subjectIdentity(subject: string): { name: string; role: TlsRole } {
  const fields = new Map<string, string>();
  for (const line of subject.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) fields.set(line.slice(0, at).trim(), line.slice(at + 1).trim());
  }
  const ou = fields.get("OU");
  const role: TlsRole = ou === "node" || ou === "admin" ? ou : "client";
  return { name: fields.get("CN") ?? "", role };
}

let processIdentity: TlsIdentity | undefined;

/** Turns TLS on for every mesh dial and NBD client connection this process makes. */
export function useTlsIdentity(identity: TlsIdentity | undefined): void {
  processIdentity = identity;
}

export function tlsIdentity(): TlsIdentity | undefined {
  return processIdentity;
}
