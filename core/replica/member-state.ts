// What a replica member keeps across a crash (its part of the catalog), the records that change it
// one entry at a time, and its stored form. The member (replica-member.ts) changes its state in
// memory and hands each change back as a record; the host writes the records and folds them into
// its own copy with applyRecord, and a restart rebuilds the member from that copy. A copy in flight
// is not kept (away-map.ts: after a restart every chunk still in a map goes in a later batch).
import { array, bad, count, counts, decodeBallot, decodeTable, name, object } from "./_wire.ts";
import type { SlotRecord } from "./acceptor.ts";
import { newAwayMap, type AwayMapState } from "./away-map.ts";
import { cloneReplicaTable, type ReplicaTable } from "./replica-table.ts";

export interface MemberState {
  /** volume -> the newest chosen table recorded here: this member's fence for the volume. */
  tables: Map<string, ReplicaTable>;
  /** slotKey(volume, version) -> the acceptor's record; slots at or below the recorded version are pruned (they are decided). */
  slots: Map<string, SlotRecord>;
  /** groupKey(volume, group) -> the version this copy of the group was last brought up to date for. */
  syncedSince: Map<string, number>;
  /** awayKey(volume, group, node) -> the chunks that absent replica lacks. */
  awayMaps: Map<string, AwayMapState>;
  /** `${awayKey}@${since}`: that replica confirmed to this member that its copy is up to date for that membership. */
  peersUpToDate: Set<string>;
}

/** One change to a MemberState, in the order the member made them. */
export type MemberRecord =
  | { kind: "table"; table: ReplicaTable }
  | { kind: "slot"; volume: string; version: number; record: SlotRecord }
  | { kind: "synced"; volume: string; group: number; since: number }
  /** A map made (or replaced) whole. */
  | { kind: "away-map"; volume: string; group: number; node: string; sinceVersion: number; dirty: number[] }
  | { kind: "away-map-gone"; volume: string; group: number; node: string }
  /** Chunks written here since (changed) and chunks the absent replica confirmed (cleaned). */
  | { kind: "away-chunks"; volume: string; group: number; node: string; changed: number[]; cleaned: number[] }
  | { kind: "peer-up-to-date"; volume: string; group: number; node: string; since: number };

/**
 * Whether a Ready's records must be on disk against a power loss, not only a process crash, before
 * what rests on them leaves: every kind but the per-write notes of an away map. A promise or an
 * acceptance forgotten lets a slot choose two values; a table forgotten moves the fence back (a
 * dead version's writes taken again); the rest are rare. A note rests only on a write the client
 * has not flushed yet: the FLUSH syncs it with the data, and a power loss before it may lose both.
 */
export function mustSurvivePowerLoss(records: readonly MemberRecord[]): boolean {
  return records.some((record) => record.kind !== "away-chunks");
}

export function slotKey(volume: string, version: number): string {
  return `${volume}@${version}`;
}

export function groupKey(volume: string, group: number): string {
  return `${volume}/${group}`;
}

export function awayKey(volume: string, group: number, node: string): string {
  return `${volume}/${group}/${node}`;
}

/** A member's state at the group's creation: every table at version 1, its copies of its groups up to date. */
export function initialMemberState(self: string, tables: ReplicaTable[]): MemberState {
  const state = emptyState();
  for (const table of tables) {
    state.tables.set(table.volume, cloneReplicaTable(table));
    table.sets.forEach((set, group) => {
      if (set.some((entry) => entry.node === self)) state.syncedSince.set(groupKey(table.volume, group), 1);
    });
  }
  return state;
}

function emptyState(): MemberState {
  return { tables: new Map(), slots: new Map(), syncedSince: new Map(), awayMaps: new Map(), peersUpToDate: new Set() };
}

export function applyRecord(state: MemberState, record: MemberRecord): void {
  switch (record.kind) {
    case "table": {
      state.tables.set(record.table.volume, cloneReplicaTable(record.table));
      // A slot at or below the recorded version is answered "decided" from the table: its record is dead weight.
      for (const key of [...state.slots.keys()]) {
        const at = key.lastIndexOf("@");
        if (key.slice(0, at) === record.table.volume && Number(key.slice(at + 1)) <= record.table.version) state.slots.delete(key);
      }
      return;
    }
    case "slot":
      state.slots.set(slotKey(record.volume, record.version), structuredClone(record.record));
      return;
    case "synced":
      state.syncedSince.set(groupKey(record.volume, record.group), record.since);
      return;
    case "away-map":
      state.awayMaps.set(awayKey(record.volume, record.group, record.node), newAwayMap(record.group, record.node, record.sinceVersion, record.dirty));
      return;
    case "away-map-gone":
      state.awayMaps.delete(awayKey(record.volume, record.group, record.node));
      return;
    case "away-chunks": {
      const map = state.awayMaps.get(awayKey(record.volume, record.group, record.node));
      if (map === undefined) return;
      for (const chunk of record.cleaned) map.dirty.delete(chunk);
      for (const chunk of record.changed) map.dirty.set(chunk, map.nextGeneration++);
      return;
    }
    case "peer-up-to-date": {
      // Only the membership it holds now can match (a rejoin has a newer since): older marks go, so the set stays one per replica.
      const key = awayKey(record.volume, record.group, record.node);
      for (const mark of [...state.peersUpToDate]) if (mark.startsWith(`${key}@`)) state.peersUpToDate.delete(mark);
      state.peersUpToDate.add(`${key}@${record.since}`);
      return;
    }
  }
}

// ---- stored form: plain objects and arrays (msgpack or JSON), checked field by field on the way in

/**
 * 2: a node's chunk numbers name parts of pages and whole pages (page-groups.ts). 1: they named
 * whole pages; ReplicaHost renumbers the away maps of such a state when it loads it.
 */
export const MEMBER_STATE_FORMAT = 2;

export interface MemberStateWire {
  format: 1 | 2;
  tables: ReplicaTable[];
  slots: { volume: string; version: number; record: SlotRecord }[];
  synced: { volume: string; group: number; since: number }[];
  awayMaps: { volume: string; group: number; node: string; sinceVersion: number; dirty: number[] }[];
  peersUpToDate: { volume: string; group: number; node: string; since: number }[];
}

export function encodeMemberState(state: MemberState): MemberStateWire {
  const volumeOfKey = (key: string, separator: string): string => key.slice(0, key.indexOf(separator));
  return {
    format: MEMBER_STATE_FORMAT,
    tables: [...state.tables.values()].map(cloneReplicaTable).sort((a, b) => (a.volume < b.volume ? -1 : a.volume > b.volume ? 1 : 0)),
    slots: [...state.slots].sort(byKey).map(([key, record]) => ({ volume: key.slice(0, key.lastIndexOf("@")), version: Number(key.slice(key.lastIndexOf("@") + 1)), record: structuredClone(record) })),
    synced: [...state.syncedSince].sort(byKey).map(([key, since]) => ({ volume: key.slice(0, key.lastIndexOf("/")), group: Number(key.slice(key.lastIndexOf("/") + 1)), since })),
    awayMaps: [...state.awayMaps]
      .sort(byKey)
      .map(([key, map]) => ({ volume: volumeOfKey(key, "/"), group: map.group, node: map.node, sinceVersion: map.sinceVersion, dirty: [...map.dirty.keys()].sort((a, b) => a - b) })),
    peersUpToDate: [...state.peersUpToDate].sort().map((entry) => {
      const [key, since] = entry.split("@") as [string, string];
      const [volume, group, node] = key.split("/") as [string, string, string];
      return { volume, group: Number(group), node, since: Number(since) };
    }),
  };
}

/** The state from its stored form; anything malformed is a BAD_FRAME (a damaged catalog row, not a crash). */
export function decodeMemberState(wire: unknown): MemberState {
  const w = object(wire, "replica member state");
  if (w.format !== 1 && w.format !== 2) throw bad(`replica member state has format ${String(w.format)}, this build reads 1 and 2`);
  const state = emptyState();
  for (const table of array(w.tables, "tables")) {
    const decoded = decodeTable(table);
    if (state.tables.has(decoded.volume)) throw bad(`replica member state records volume '${decoded.volume}' twice`);
    state.tables.set(decoded.volume, decoded);
  }
  for (const item of array(w.slots, "slots")) {
    const slot = object(item, "slot");
    state.slots.set(slotKey(name(slot.volume, "slot volume"), count(slot.version, "slot version")), decodeSlot(slot.record));
  }
  for (const item of array(w.synced, "synced")) {
    const entry = object(item, "synced entry");
    state.syncedSince.set(groupKey(name(entry.volume, "synced volume"), count(entry.group, "synced group")), count(entry.since, "synced since"));
  }
  for (const item of array(w.awayMaps, "away maps")) {
    const map = object(item, "away map");
    const [volume, group, node] = [name(map.volume, "away map volume"), count(map.group, "away map group"), name(map.node, "away map node")];
    const dirty = counts(map.dirty, "away map chunk");
    state.awayMaps.set(awayKey(volume, group, node), newAwayMap(group, node, count(map.sinceVersion, "away map version"), dirty));
  }
  for (const item of array(w.peersUpToDate, "peers up to date")) {
    const entry = object(item, "peer up to date");
    const key = awayKey(name(entry.volume, "peer volume"), count(entry.group, "peer group"), name(entry.node, "peer node"));
    state.peersUpToDate.add(`${key}@${count(entry.since, "peer since")}`);
  }
  return state;
}

function decodeSlot(value: unknown): SlotRecord {
  const slot = object(value, "slot record");
  const record: SlotRecord = {};
  if (slot.promised !== undefined) record.promised = decodeBallot(slot.promised);
  if (slot.accepted !== undefined) {
    const accepted = object(slot.accepted, "accepted value");
    record.accepted = { ballot: decodeBallot(accepted.ballot), value: decodeTable(accepted.value) };
  }
  return record;
}

function byKey<T>(a: [string, T], b: [string, T]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}
