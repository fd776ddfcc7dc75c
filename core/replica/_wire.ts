// Field-by-field checks for replica state and messages read from disk or the wire: anything
// malformed is a BAD_FRAME naming the field, never a crash deeper in the protocol.
import { ShoalError } from "../errors.ts";
import type { Ballot } from "./acceptor.ts";
import type { ReplicaTable } from "./replica-table.ts";

export function bad(message: string): ShoalError {
  return new ShoalError("BAD_FRAME", message);
}

export function object(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw bad(`${what} is not an object`);
  return value as Record<string, unknown>;
}

export function array(value: unknown, what: string): unknown[] {
  if (!Array.isArray(value)) throw bad(`${what} is not a list`);
  return value;
}

export function count(value: unknown, what: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) throw bad(`${what} is not a non-negative integer: ${JSON.stringify(value)}`);
  return value;
}

/** Volume and node names: non-empty, and free of the separators the member state's keys use. */
export function name(value: unknown, what: string): string {
  if (typeof value !== "string" || value.length === 0 || /[/@]/.test(value)) throw bad(`${what} is not a name: ${JSON.stringify(value)}`);
  return value;
}

export function counts(value: unknown, what: string): number[] {
  return array(value, `${what} list`).map((item) => count(item, what));
}

export function decodeTable(value: unknown): ReplicaTable {
  const table = object(value, "replica table");
  const volume = name(table.volume, "table volume");
  const sets = array(table.sets, `table of '${volume}'`).map((set) =>
    array(set, `replica set of '${volume}'`).map((item) => {
      const entry = object(item, "replica entry");
      return { node: name(entry.node, "replica node"), since: count(entry.since, "replica since") };
    }),
  );
  const version = count(table.version, "table version");
  for (const set of sets) {
    if (new Set(set.map((entry) => entry.node)).size !== set.length) throw bad(`a replica set of '${volume}' v${version} names a node twice`);
    if (set.some((entry) => entry.since > version)) throw bad(`a replica of '${volume}' v${version} joined in a later version`);
  }
  const decoded: ReplicaTable = { volume, version, sets };
  if (table.home !== undefined) {
    const home = array(table.home, `home of '${volume}'`).map((nodes) => array(nodes, `home set of '${volume}'`).map((node) => name(node, "home node")));
    if (home.length !== sets.length) throw bad(`the home of '${volume}' v${version} has ${home.length} groups, its sets ${sets.length}`);
    decoded.home = home;
  }
  if (table.voters !== undefined) {
    const voters = array(table.voters, `voters of '${volume}'`).map((node) => name(node, "voter"));
    if (voters.length === 0 || new Set(voters).size !== voters.length) throw bad(`the voters of '${volume}' v${version} are empty or name a node twice`);
    decoded.voters = voters;
  }
  return decoded;
}

export function decodeBallot(value: unknown): Ballot {
  const ballot = object(value, "ballot");
  return { round: count(ballot.round, "ballot round"), proposer: name(ballot.proposer, "ballot proposer") };
}
