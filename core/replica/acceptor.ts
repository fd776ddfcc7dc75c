// The acceptor half of the single-decree Paxos that decides each replica-set change: one slot per
// (volume, version), and every member of the group is an acceptor of every slot. A reply may only
// leave once the record it answers from is durable: a promise or an acceptance forgotten in a
// crash lets a later proposer pick a different value for a slot that already chose one (the sim's
// `acceptorRepliesBeforeDurable` breaks exactly this). So each handler hands back the record to
// persist and the reply, and the host writes the first before it sends the second.
import type { ReplicaTable } from "./replica-table.ts";

/** A proposal number: rounds first, the proposer's id breaks ties so no two proposers share one. */
export interface Ballot {
  round: number;
  proposer: string;
}

export function compareBallots(a: Ballot, b: Ballot): number {
  if (a.round !== b.round) return a.round - b.round;
  return a.proposer < b.proposer ? -1 : a.proposer > b.proposer ? 1 : 0;
}

/** What an acceptor keeps, durably, for one slot. */
export interface SlotRecord {
  promised?: Ballot;
  accepted?: { ballot: Ballot; value: ReplicaTable };
}

/** Every reply names the newest table version this member has recorded (its fence): the proposer's precondition. */
export type AcceptorReply =
  | { kind: "promise"; version: number; ballot: Ballot; accepted?: { ballot: Ballot; value: ReplicaTable }; recordedVersion: number }
  | { kind: "accepted"; version: number; ballot: Ballot; recordedVersion: number }
  /** A higher ballot was promised: the proposer retries above it. */
  | { kind: "refused"; version: number; ballot: Ballot; promised: Ballot; recordedVersion: number }
  /** The slot is decided and this member has learned it (and maybe more): the proposer adopts the table. */
  | { kind: "decided"; version: number; table: ReplicaTable };

export interface AcceptorStep {
  /** Persist this before the reply leaves (absent: nothing changed). */
  record?: SlotRecord;
  reply: AcceptorReply;
}

/** Phase 1: promise to ignore lower ballots, reporting the value accepted so far, if any. */
export function onPrepare(record: SlotRecord | undefined, version: number, ballot: Ballot, recorded: ReplicaTable): AcceptorStep {
  if (recorded.version >= version) return { reply: { kind: "decided", version, table: recorded } };
  const recordedVersion = recorded.version;
  if (record?.promised && compareBallots(ballot, record.promised) < 0) {
    return { reply: { kind: "refused", version, ballot, promised: record.promised, recordedVersion } };
  }
  const next: SlotRecord = { ...record, promised: ballot };
  const changed = !record?.promised || compareBallots(ballot, record.promised) !== 0;
  return {
    ...(changed ? { record: next } : {}),
    reply: { kind: "promise", version, ballot, ...(record?.accepted ? { accepted: record.accepted } : {}), recordedVersion },
  };
}

/** Phase 2: accept unless a higher ballot was promised since. */
export function onAccept(record: SlotRecord | undefined, version: number, ballot: Ballot, value: ReplicaTable, recorded: ReplicaTable): AcceptorStep {
  if (recorded.version >= version) return { reply: { kind: "decided", version, table: recorded } };
  const recordedVersion = recorded.version;
  if (record?.promised && compareBallots(ballot, record.promised) < 0) {
    return { reply: { kind: "refused", version, ballot, promised: record.promised, recordedVersion } };
  }
  const same = record?.accepted !== undefined && compareBallots(record.accepted.ballot, ballot) === 0;
  return {
    ...(same ? {} : { record: { promised: ballot, accepted: { ballot, value } } }),
    reply: { kind: "accepted", version, ballot, recordedVersion },
  };
}
