// What every admin subcommand shares: the --node and --json flags, strict flag checking, talking
// to a node, and printing either a table for people or one JSON document for scripts.
import type { ArgDef, ArgsDef } from "citty";
import { ShoalError } from "../core/errors.ts";
import { MAX_REPLICAS } from "../core/cluster/routing.ts";
import type { AdminArgs, AdminOp, AdminResult } from "../transport/admin/admin-ops.ts";
import { dialMesh } from "../transport/mesh/mesh.ts";
import { loadTlsIdentity, tlsIdentity, useTlsIdentity } from "../transport/tls/tls-identity.ts";

export const DEFAULT_NODE = "127.0.0.1:7400";

/** For the long jobs (import, export, archive create and restore): no progress line on stderr. */
export const quietArgs = {
  quiet: { type: "boolean", alias: "q", description: "no progress line on stderr (shown only when stderr is a terminal)" },
} as const;

export const nodeArgs = {
  node: {
    type: "string",
    description: "any member's mesh address HOST:PORT (default $SHOAL_NODE, else 127.0.0.1:7400)",
    valueHint: "HOST:PORT",
  },
  json: { type: "boolean", description: "print one JSON document on stdout instead of a table" },
  tls: {
    type: "string",
    description: "TLS credentials with an admin certificate from the group's CA (default $SHOAL_TLS); needed when the group runs with --tls",
    valueHint: "DIR",
  },
} as const satisfies ArgsDef;

/**
 * The node to talk to. Every admin command passes its arguments here first, so this is also
 * where the process takes its TLS identity (--tls or $SHOAL_TLS) for the mesh and NBD connections
 * it is about to open: one command, one identity.
 */
export function nodeAddress(args: { node?: string; tls?: string }): string {
  const tlsDir = args.tls || process.env.SHOAL_TLS;
  if (tlsDir && tlsIdentity()?.dir !== tlsDir) useTlsIdentity(loadTlsIdentity(tlsDir));
  return args.node || process.env.SHOAL_NODE || DEFAULT_NODE;
}

/**
 * citty accepts any flag and any number of arguments; a typo or a stray word must fail loudly
 * instead of being ignored. Only a command that reads `args._` itself (VOL...) is `variadic`.
 */
export function rejectUnknownFlags(context: { rawArgs: string[]; cmd: { args?: unknown }; args?: Record<string, unknown> & { _?: unknown[] } }, options: { variadic?: boolean } = {}): void {
  // A flag without its value first: citty then counts the next word as a stray argument.
  rejectMissingValues(context);
  if (!options.variadic) rejectExtraArguments(Object.values((context.cmd.args ?? {}) as Record<string, ArgDef>), context.args?._ ?? []);
  const known = new Set<string>(["help", "h"]);
  for (const [name, def] of Object.entries((context.cmd.args ?? {}) as Record<string, ArgDef>)) {
    known.add(name);
    known.add(kebab(name));
    if (def.type === "boolean") known.add(`no-${kebab(name)}`);
    for (const alias of [(def as { alias?: string | string[] }).alias ?? []].flat()) known.add(alias);
  }
  for (const raw of context.rawArgs) {
    if (raw === "--") break;
    const match = /^--?([^=]+)/.exec(raw);
    if (!match || /^-\d/.test(raw) || raw === "-") continue;
    if (!known.has(match[1]!)) throw new ShoalError("BAD_ARGUMENT", `unknown flag '${raw}'; see --help`);
  }
}

function rejectExtraArguments(defs: ArgDef[], given: unknown[]): void {
  const expected = defs.filter((def) => def.type === "positional").length;
  if (given.length > expected) throw new ShoalError("BAD_ARGUMENT", `unexpected argument '${String(given[expected])}'; see --help`);
}

/**
 * A flag that takes a value, given without one: citty reads a trailing `--join` (or `--join=`)
 * as "" and `--join --nbd X` as the value "--nbd". Either would fall back to the default or eat
 * the next flag, so both are refused.
 */
function rejectMissingValues(context: { cmd: { args?: unknown }; args?: Record<string, unknown> }): void {
  for (const [name, def] of Object.entries((context.cmd.args ?? {}) as Record<string, ArgDef>)) {
    if (def.type !== "string") continue;
    const value = context.args?.[name];
    const isFlag = typeof value === "string" && /^--[A-Za-z]/.test(value);
    if (value !== "" && value !== true && !isFlag) continue;
    const hint = def.valueHint ? ` (${def.valueHint})` : "";
    throw new ShoalError("BAD_ARGUMENT", `--${kebab(name)} needs a value${hint}${isFlag ? `, not the flag '${String(value)}'` : ""}`);
  }
}

/** citty hands flags over camelCase; people and config files write them kebab-case. */
export function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);
}

/**
 * One request to a node's admin API: `op` and its arguments as transport/admin/admin-ops.ts types
 * them (an operation without arguments may leave them out).
 */
export async function adminRequest<Op extends AdminOp>(
  address: string,
  op: Op,
  ...[args, timeoutMs = 60_000]: {} extends AdminArgs<Op> ? [args?: AdminArgs<Op>, timeoutMs?: number] : [args: AdminArgs<Op>, timeoutMs?: number]
): Promise<AdminResult<Op>> {
  const connection = await dialMesh(address, () => {
    throw new ShoalError("BAD_REQUEST", "the admin client serves no requests");
  }, { info: () => {}, warn: () => {} });
  try {
    await connection.request("hello", { role: "admin" }, undefined, 5000).catch((err: unknown) => {
      throw tlsHint(err);
    });
    const response = await connection.request(op, args ?? {}, undefined, timeoutMs);
    // The node answered with what the table types for `op` (same version: the group is one release).
    return response.result as AdminResult<Op>;
  } finally {
    connection.close();
  }
}

/** A node on TLS drops a plain client right after its first bytes; say what probably happened. */
function tlsHint(err: unknown): unknown {
  if (tlsIdentity() || !(err instanceof ShoalError) || err.code !== "NODE_DOWN") return err;
  return new ShoalError("NODE_DOWN", `${err.message}; if the group runs with --tls, pass --tls DIR (or set SHOAL_TLS) with an admin certificate`);
}

export function printResult(json: boolean | undefined, result: unknown, human: () => string): void {
  if (json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else {
    const text = human();
    if (text) process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
  }
}

/** A fixed-width table with a header row. */
export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((row) => row.map(String))];
  const widths = headers.map((_, column) => Math.max(...cells.map((row) => row[column]!.length)));
  return cells.map((row) => row.map((cell, column) => cell.padEnd(widths[column]!)).join("  ").trimEnd()).join("\n");
}

/** "2s", "500ms", "1.5s", "250" (ms) -> milliseconds. */
/** `flag` names the option in the error, so an operator knows which value to fix. */
export function parseDurationMs(text: string, flag?: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(text);
  if (!match) throw new ShoalError("BAD_ARGUMENT", `${flag ? `${flag} ` : ""}'${text}' is not a duration; use e.g. 500ms, 2s or 1m`);
  const value = Number(match[1]);
  const unit = match[2] ?? "ms";
  return Math.round(unit === "ms" ? value : unit === "s" ? value * 1000 : value * 60_000);
}

/** Bounds of --replica-timeout: below a few heartbeats (100 ms apart at least) healthy peers would be suspected between two of them. */
export const REPLICA_TIMEOUT_MIN_MS = 500;
export const REPLICA_TIMEOUT_MAX_MS = 10 * 60_000;

export function parseReplicaTimeoutMs(text: string, flag: string): number {
  const ms = parseDurationMs(text, flag);
  if (ms < REPLICA_TIMEOUT_MIN_MS || ms > REPLICA_TIMEOUT_MAX_MS) {
    throw new ShoalError("BAD_ARGUMENT", `${flag} '${text}': give ${REPLICA_TIMEOUT_MIN_MS}ms to ${REPLICA_TIMEOUT_MAX_MS / 60_000}m (peers heartbeat every 100-500 ms; a shorter timeout would drop healthy copies)`);
  }
  return ms;
}

/** A copy count given to `flag`: a whole number 1 to MAX_REPLICAS (the node also checks it against the members). */
export function parseReplicas(text: string, flag: string): number {
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!(value >= 1 && value <= MAX_REPLICAS)) {
    throw new ShoalError("BAD_ARGUMENT", `${flag} '${text}': give the number of copies of each page, 1 to ${MAX_REPLICAS}`);
  }
  return value;
}
