// A member of the group as every node records it: how to reach it on the mesh and over NBD.
import { ShoalError } from "../errors.ts";

export interface Member {
  id: string;
  /** host:port of the peer mesh (also where admin commands go). */
  meshAddress: string;
  /** host:port of the NBD server. */
  nbdAddress: string;
  joinedAtMs: number;
  /**
   * A random id its data directory was given when created (catalog meta `node_identity`). Two
   * processes claiming one node id with different identities are two nodes: the group keeps the
   * one it knew and refuses the other. Undefined in records from before identities existed; the
   * first hello from the member fills it in.
   */
  identity?: string;
  /** Removed from the group by `route forget`; kept so a stale peer cannot bring it back. */
  forgotten?: boolean;
}

const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** The mesh names an admin client's connection "admin": a member of that name would be served as one. */
const RESERVED_NODE_ID = "admin";

export function isValidNodeId(id: string): boolean {
  return NODE_ID.test(id) && id !== RESERVED_NODE_ID;
}

/** What an operator reads when an id is refused. */
export const NODE_ID_RULE = `letters, digits, '.', '_', '-', at most 64, not '${RESERVED_NODE_ID}'`;

const IDENTITY = /^[0-9a-f-]{8,64}$/;

export function isValidIdentity(identity: string): boolean {
  return IDENTITY.test(identity);
}

/** Splits "host:port" (or "[v6]:port"); the default host is loopback. */
export function parseHostPort(text: string, defaultPort?: number): { host: string; port: number } {
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  if (bracketed) return { host: bracketed[1]!, port: Number(bracketed[2]) };
  const lastColon = text.lastIndexOf(":");
  if (lastColon < 0) {
    if (defaultPort !== undefined && text.length > 0) return { host: text, port: defaultPort };
    throw new ShoalError("BAD_ARGUMENT", `'${text}' is not HOST:PORT`);
  }
  const host = text.slice(0, lastColon) || "127.0.0.1";
  const port = Number(text.slice(lastColon + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ShoalError("BAD_ARGUMENT", `'${text}' has no valid port`);
  return { host, port };
}

const HOST_NAME = /^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/;
const HOST_V6 = /^\[[0-9A-Fa-f:.%a-z]{2,63}\]$/;

/** A member record from the wire names a real-looking host and port, so garbage never reaches the catalog. */
export function isValidMemberAddress(text: string): boolean {
  const lastColon = text.lastIndexOf(":");
  if (lastColon <= 0) return false;
  const host = text.slice(0, lastColon);
  const port = text.slice(lastColon + 1);
  return (HOST_NAME.test(host) || HOST_V6.test(host)) && /^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65535;
}
