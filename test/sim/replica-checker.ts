// Judges one simulated run of the replica-set protocol from its recorded history alone:
//   one value per slot     no two members record different tables for one (volume, version), no
//                          two proposers announce different ones, and no two values were each
//                          accepted by a majority of members in some ballot
//   one live version       per page group, no write is acknowledged under version t after a newer
//                          version became active for the group (every replica of its set had
//                          recorded it), nor after a write under a newer version was acknowledged;
//                          a write counts as acknowledged when the last replica applied it (the
//                          client may hear of it later)
//   acknowledged writes    a read returns a stamp not older than the newest write to its register
//   are seen               acknowledged before the read was issued, and never one not yet written;
//                          at the end every replica of every group's set holds every acknowledged
//                          write
//   liveness after heal    at the end every member is up with the same tables, every group is back
//                          to its home replicas and up to date, no proposal is in flight and
//                          every write was acknowledged
import { homeOf, sameTable, type ReplicaTable } from "../../core/replica/replica-table.ts";
import type { HistoryEvent, ReplicaHistory, WriteRecord } from "./replica-node.ts";

export function checkReplicaHistory(h: ReplicaHistory): string[] {
  const violations: string[] = [...h.errors];
  violations.push(...checkSlots(h));
  violations.push(...checkLiveVersions(h));
  violations.push(...checkReads(h));
  violations.push(...checkFinal(h));
  return violations;
}

function checkSlots(h: ReplicaHistory): string[] {
  const violations: string[] = [];
  const recorded = new Map<string, ReplicaTable>();
  for (const event of h.events) {
    if (event.kind !== "record" && event.kind !== "claimed") continue;
    const table = event.kind === "record" ? event.table : event.value;
    const slot = `${event.volume}@${event.version}`;
    const first = recorded.get(slot);
    if (first === undefined) recorded.set(slot, table);
    else if (!sameTable(first, table)) violations.push(`two values for slot ${slot}: ${JSON.stringify(first.sets)} and ${JSON.stringify(table.sets)} (${event.kind} by ${event.node})`);
  }
  const majority = Math.floor(h.members.length / 2) + 1;
  const acceptors = new Map<string, { value: ReplicaTable; nodes: Set<string> }>();
  for (const event of h.events) {
    if (event.kind !== "accepted") continue;
    const key = `${event.volume}@${event.version}#${event.ballot.round}.${event.ballot.proposer}`;
    const entry = acceptors.get(key) ?? { value: event.value, nodes: new Set<string>() };
    entry.nodes.add(event.node);
    acceptors.set(key, entry);
  }
  const chosen = new Map<string, ReplicaTable>();
  for (const [key, { value, nodes }] of acceptors) {
    if (nodes.size < majority) continue;
    const slot = key.slice(0, key.indexOf("#"));
    const first = chosen.get(slot);
    if (first === undefined) chosen.set(slot, value);
    else if (!sameTable(first, value)) violations.push(`two values accepted by a majority for slot ${slot}`);
  }
  return violations;
}

function groupOf(register: string): string {
  return register.slice(0, register.lastIndexOf("/"));
}

/**
 * Replays the records: per group, which version was active when (every replica of its set had
 * recorded it). A write acknowledged under t is accepted by t at each of its replicas' applies; a
 * replica that is in a newer active version's set must not apply under t any more, and a newer
 * active version whose set shares no replica with t's must not see t accept anything.
 */
function checkLiveVersions(h: ReplicaHistory): string[] {
  const violations: string[] = [];
  const timeline = activeTimeline(h);
  const tables = new Map<string, ReplicaTable>();
  for (const event of h.events) if (event.kind === "record") tables.set(`${event.volume}@${event.version}`, event.table);
  for (const write of h.writes) {
    if (write.ackOrder === Infinity) continue;
    const group = groupOf(write.register);
    const changes = timeline.get(group) ?? [];
    const t = write.ackVersion;
    const [volume, groupIndex] = group.split("/") as [string, string];
    const tSet = tables.get(`${volume}@${t}`)?.sets[Number(groupIndex)]?.map((entry) => entry.node) ?? [];
    let last = 0;
    for (const apply of write.applies) {
      last = Math.max(last, apply.order);
      const active = activeAt(changes, apply.order);
      if (active.version > t && active.nodes.includes(apply.node)) {
        violations.push(`write ${write.register}#${write.stamp} applied under v${t} by ${apply.node} while it was a replica of active v${active.version}`);
      }
    }
    const active = activeAt(changes, last);
    if (active.version > t && !active.nodes.some((node) => tSet.includes(node))) {
      violations.push(`write ${write.register}#${write.stamp} acknowledged under v${t} while v${active.version}, sharing no replica with it, was active`);
    }
  }
  return violations;
}

interface Activation {
  order: number;
  version: number;
  nodes: string[];
}

function activeTimeline(h: ReplicaHistory): Map<string, Activation[]> {
  const fence = new Map<string, number>();
  const tables = new Map<string, ReplicaTable>();
  const timeline = new Map<string, Activation[]>();
  for (const event of [...h.events].sort((a, b) => a.order - b.order)) {
    if (event.kind !== "record") continue;
    const { node, volume, version, table } = event;
    fence.set(`${node}@${volume}`, Math.max(fence.get(`${node}@${volume}`) ?? 0, version));
    tables.set(`${volume}@${version}`, table);
    for (const candidate of tables.values()) {
      if (candidate.volume !== volume) continue;
      candidate.sets.forEach((set, group) => {
        const key = `${volume}/${group}`;
        const changes = timeline.get(key) ?? [];
        timeline.set(key, changes);
        if ((changes.at(-1)?.version ?? 0) >= candidate.version) return;
        if (set.every((entry) => (fence.get(`${entry.node}@${volume}`) ?? 0) >= candidate.version)) {
          changes.push({ order: event.order, version: candidate.version, nodes: set.map((entry) => entry.node) });
        }
      });
    }
  }
  return timeline;
}

function activeAt(changes: Activation[], order: number): Activation {
  let active = changes[0]!;
  for (const change of changes) if (change.order <= order) active = change;
  return active;
}

function checkReads(h: ReplicaHistory): string[] {
  const violations: string[] = [];
  const byRegister = new Map<string, WriteRecord[]>();
  for (const write of h.writes) byRegister.set(write.register, [...(byRegister.get(write.register) ?? []), write]);
  for (const read of h.reads) {
    const writes = byRegister.get(read.register) ?? [];
    const floor = Math.max(0, ...writes.filter((w) => w.ackOrder < read.issuedOrder).map((w) => w.stamp));
    const ceiling = Math.max(0, ...writes.filter((w) => w.issuedOrder < read.returnOrder).map((w) => w.stamp));
    if (read.stamp < floor) violations.push(`read of ${read.register} from ${read.from} under v${read.version} returned #${read.stamp}, but #${floor} was acknowledged before it began`);
    if (read.stamp > ceiling) violations.push(`read of ${read.register} returned #${read.stamp}, never written by then`);
  }
  return violations;
}

function checkFinal(h: ReplicaHistory): string[] {
  const violations: string[] = [];
  const newestAcked = new Map<string, number>();
  for (const write of h.writes) if (write.ackOrder !== Infinity) newestAcked.set(write.register, Math.max(newestAcked.get(write.register) ?? 0, write.stamp));
  for (const pending of h.pendingWrites) violations.push(`write ${pending} never acknowledged after the heal`);
  for (const member of h.final) {
    if (member.proposers > 0) violations.push(`${member.node} still has a proposal in flight at the end`);
  }
  for (const [volume, home] of h.home) {
    const tables = h.final.map((member) => member.tables.find((t) => t.volume === volume)!);
    if (tables.some((t) => !sameTable(t, tables[0]!))) violations.push(`members end with different tables for ${volume}: ${tables.map((t) => `v${t.version}`).join(",")}`);
    const table = tables[0];
    if (!table) continue;
    homeOf(table, home).forEach((nodes, group) => {
      const set = table.sets[group]!;
      if ([...nodes].sort().join(",") !== set.map((e) => e.node).sort().join(",")) violations.push(`${volume} group ${group} ends with replicas ${set.map((e) => e.node)} instead of its home ${nodes}`);
      for (const entry of set) {
        const member = h.final.find((m) => m.node === entry.node);
        if (!member) continue;
        if (member.syncedSince.get(`${volume}/${group}`) !== entry.since) violations.push(`${entry.node} never got its join copy of ${volume} group ${group} (v${entry.since})`);
        for (const [register, stamp] of newestAcked) {
          if (groupOf(register) !== `${volume}/${group}`) continue;
          const held = member.chunks.get(register) ?? 0;
          if (held < stamp) violations.push(`${entry.node} ends with ${register}#${held} but #${stamp} was acknowledged: an acknowledged write is lost`);
        }
      }
    });
  }
  return violations;
}
