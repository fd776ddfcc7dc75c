// Judges one simulated run of the page-move protocol from its recorded history alone:
//   single ownership  every committed version has one content and is built on the version before
//                     it by moving only the committing source's pages; at every instant at most one
//                     live node believes it owns a page; every write and read runs on the owner of
//                     the page in the latest committed table; at the end all tables agree and only
//                     owners hold pages
//   no lost write     the owner's durable value of a page is not older than any durably
//                     acknowledged write: one sent with FUA, or acknowledged before a flush that the
//                     same client sent on the same connection (entry node, same incarnation) and
//                     that succeeded; in a run without crashes, every acknowledged write
//   fresh reads       a read returns a value not older than any durably acknowledged write
//                     acknowledged before the read began
// "Older" is real time: value F is older than write W if F was applied before W was issued. A
// write still in flight (issued, not acknowledged) may win over an acknowledged one; nothing else.
import type { FinalNode, FlushRecord, MoveHistory, ReadRecord, TimelineEvent, WriteRecord } from "./move-world.ts";

export function checkMoveHistory(h: MoveHistory): string[] {
  const violations: string[] = [...h.errors];
  violations.push(...checkTimeline(h));
  for (const write of h.writes.values()) {
    if (write.applyCount > 1) violations.push(`write ${write.stamp} was applied ${write.applyCount} times`);
  }
  violations.push(...checkQuiescent(h));
  if (violations.length > 0) return violations;
  const acked = ackedByPage(h);
  violations.push(...checkFinalValues(h, acked));
  for (const read of h.reads) violations.push(...checkRead(h, acked, read));
  return violations;
}

/** Replays commits, beliefs and every applied write or served read in their real-time order. */
function checkTimeline(h: MoveHistory): string[] {
  const violations: string[] = [];
  const committed = new Map<number, { node: string; owners: string[] }>([[h.initialTable.version, { node: "(initial)", owners: h.initialTable.owners }]]);
  let latest = h.initialTable.version;
  const beliefs = new Map<string, string[]>();
  const events = [...h.timeline].sort((a, b) => a.order - b.order);
  for (const event of events) {
    switch (event.kind) {
      case "commit": {
        violations.push(...checkCommit(committed, event));
        if (!committed.has(event.version)) committed.set(event.version, { node: event.node, owners: event.owners });
        latest = Math.max(latest, event.version);
        break;
      }
      case "belief":
        if (event.up) beliefs.set(event.node, event.owners);
        else beliefs.delete(event.node);
        violations.push(...checkSingleBelief(beliefs, event));
        break;
      case "apply":
      case "serve": {
        const owner = committed.get(latest)!.owners[event.page];
        if (owner !== event.node) {
          const what = event.kind === "apply" ? `write ${event.stamp} applied` : `read ${event.readId} served`;
          violations.push(`${what} on ${event.node} for page ${event.page} at ${event.atMs.toFixed(3)} ms, but the latest committed table v${latest} gives the page to ${owner}`);
        }
        break;
      }
    }
  }
  return violations;
}

/** A version has one content, made by its source moving only its own pages from the version before. */
function checkCommit(committed: Map<number, { node: string; owners: string[] }>, event: Extract<TimelineEvent, { kind: "commit" }>): string[] {
  const at = `at ${event.atMs.toFixed(3)} ms`;
  const earlier = committed.get(event.version);
  if (earlier) {
    if (sameOwners(earlier.owners, event.owners)) return [];
    return [`version ${event.version} committed twice with different owners: by ${earlier.node} (${earlier.owners.join(",")}) and by ${event.node} ${at} (${event.owners.join(",")})`];
  }
  const base = committed.get(event.version - 1);
  if (!base) return [`${event.node} committed version ${event.version} ${at}, but version ${event.version - 1} was never committed`];
  const violations: string[] = [];
  const targets = new Set<string>();
  event.owners.forEach((owner, page) => {
    const before = base.owners[page]!;
    if (owner === before) return;
    targets.add(owner);
    if (before !== event.node) violations.push(`${event.node} committed version ${event.version} ${at} moving page ${page} from ${before}, which it did not own in version ${event.version - 1}`);
  });
  if (targets.size > 1) violations.push(`${event.node} committed version ${event.version} ${at} moving pages to ${[...targets].join(" and ")} in one step`);
  return violations;
}

/** At no instant may two live nodes each hold a table that gives them the same page. */
function checkSingleBelief(beliefs: Map<string, string[]>, event: TimelineEvent): string[] {
  const claims = new Map<number, string[]>();
  for (const [node, owners] of beliefs) {
    owners.forEach((owner, page) => {
      if (owner !== node) return;
      const claimants = claims.get(page) ?? [];
      claimants.push(node);
      claims.set(page, claimants);
    });
  }
  const violations: string[] = [];
  for (const [page, claimants] of claims) {
    if (claimants.length > 1) violations.push(`at ${event.atMs.toFixed(3)} ms page ${page} is claimed by ${claimants.join(" and ")} (after ${event.node}'s table changed)`);
  }
  return violations;
}

/** After healing and a quiet spell: every node up and agreeing, no step or frozen page left, all moves done. */
function checkQuiescent(h: MoveHistory): string[] {
  const violations: string[] = [];
  const reference = h.final.find((node) => node.id === h.coordinator)!;
  for (const node of h.final) {
    if (!node.up) violations.push(`${node.id} is down at the end`);
    if (!sameTable(node.table, node.durableTable)) violations.push(`${node.id}'s table v${node.table.version} differs from its durable table v${node.durableTable.version}`);
    if (!sameTable(node.table, reference.table)) {
      violations.push(`tables never converged: ${node.id} has v${node.table.version} (${node.table.owners.join(",")}), ${reference.id} has v${reference.table.version} (${reference.table.owners.join(",")})`);
    }
    if (node.frozen > 0 || node.queued > 0) violations.push(`${node.id} still has ${node.frozen} frozen page(s) and ${node.queued} queued request(s) at the end`);
    if (node.stepRunning) violations.push(`${node.id} still runs a move step at the end`);
    for (const [page, stamp] of node.memoryPages) {
      if (node.durablePages.get(page) !== stamp || !node.durablePages.has(page)) violations.push(`${node.id} holds page ${page} in memory (${stamp}) that is not durable at the end`);
    }
  }
  if (h.stepsCommitted < h.scenario.stepsPlanned) violations.push(`the coordinator committed ${h.stepsCommitted} of ${h.scenario.stepsPlanned} steps by the end`);
  return violations;
}

/**
 * Copies held by nodes that do not own the page at the end. Harmless (nobody routes to them), so
 * not a violation: a source whose publish went unconfirmed keeps its copies until its table
 * changes again or it restarts.
 */
export function leftoverCopies(h: MoveHistory): number {
  const owners = h.final.find((node) => node.id === h.coordinator)!.table.owners;
  let count = 0;
  for (const node of h.final) for (const page of node.durablePages.keys()) if (owners[page] !== node.id) count++;
  return count;
}

/** Durably acknowledged writes per page. */
function ackedByPage(h: MoveHistory): Map<number, WriteRecord[]> {
  const flushesByClient = new Map<number, FlushRecord[]>();
  for (const flush of h.flushes) {
    if (flush.ackOrder === Infinity) continue;
    const list = flushesByClient.get(flush.client) ?? [];
    list.push(flush);
    flushesByClient.set(flush.client, list);
  }
  const flushed = (write: WriteRecord): boolean =>
    (flushesByClient.get(write.client) ?? []).some(
      (flush) => flush.entry === write.entry && flush.entryIncarnation === write.entryIncarnation && flush.issueOrder > write.ackOrder,
    );
  const byPage = new Map<number, WriteRecord[]>();
  for (const write of h.writes.values()) {
    if (write.ackOrder === Infinity) continue;
    if (h.crashes > 0 && !write.fua && !flushed(write)) continue;
    const list = byPage.get(write.page) ?? [];
    list.push(write);
    byPage.set(write.page, list);
  }
  return byPage;
}

/** The durable value at each page's owner must not be older than any acknowledged write. */
function checkFinalValues(h: MoveHistory, acked: Map<number, WriteRecord[]>): string[] {
  const violations: string[] = [];
  const finalByNode = new Map<string, FinalNode>(h.final.map((node) => [node.id, node]));
  const owners = finalByNode.get(h.coordinator)!.table.owners;
  for (const [page, writes] of acked) {
    const owner = finalByNode.get(owners[page]!)!;
    const value = owner.durablePages.get(page);
    const newer = newerAcked(h, writes, value, Infinity);
    if (newer) {
      violations.push(
        `acknowledged write ${newer.stamp}${newer.fua ? " (FUA)" : " (flushed)"} to page ${page} (issued ${newer.issueAtMs.toFixed(3)} ms, acked ${newer.ackAtMs.toFixed(3)} ms) is lost: ` +
          `owner ${owner.id} holds ${describeValue(h, value)}`,
      );
    }
  }
  return violations;
}

function checkRead(h: MoveHistory, acked: Map<number, WriteRecord[]>, read: ReadRecord): string[] {
  if (read.returnOrder === Infinity) return [];
  const newer = newerAcked(h, acked.get(read.page) ?? [], read.value, read.issueOrder);
  if (!newer) return [];
  return [
    `read ${read.readId} of page ${read.page} (issued ${read.issueAtMs.toFixed(3)} ms, served by ${read.servedBy}) returned ${describeValue(h, read.value)}, ` +
      `but write ${newer.stamp} was acknowledged at ${newer.ackAtMs.toFixed(3)} ms, before the read began`,
  ];
}

/** An acknowledged write (acked before `ackedBeforeOrder`) that was issued after `value` was applied. */
function newerAcked(h: MoveHistory, writes: WriteRecord[], value: string | undefined, ackedBeforeOrder: number): WriteRecord | undefined {
  // A value no owner ever applied counts as older than everything.
  const appliedOrder = value === undefined ? -Infinity : (h.writes.get(value)?.applyOrder ?? -Infinity);
  if (appliedOrder === Infinity) return writes.find((write) => write.ackOrder < ackedBeforeOrder);
  return writes.find((write) => write.ackOrder < ackedBeforeOrder && write.stamp !== value && write.issueOrder > appliedOrder);
}

function describeValue(h: MoveHistory, value: string | undefined): string {
  if (value === undefined) return "nothing";
  const write = h.writes.get(value);
  return write ? `${value} (applied ${write.applyOrder === Infinity ? "never" : `on ${write.appliedAt}`})` : `${value} (never written)`;
}

function sameOwners(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((owner, page) => owner === b[page]);
}

function sameTable(a: { version: number; owners: string[] }, b: { version: number; owners: string[] }): boolean {
  return a.version === b.version && sameOwners(a.owners, b.owners);
}
