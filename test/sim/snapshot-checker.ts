// Judges one simulated run against the snapshot guarantee, from the recorded history only: the
// checker re-derives which writes each snapshot contains from the frozen block values and each
// block's apply order, rather than trusting the protocol's own bookkeeping.
import type { History, NodeSnapshot, SnapshotMeta } from "./snapshot-world.ts";

export function checkHistory(h: History): string[] {
  const violations: string[] = [...h.errors];
  const ids = new Set<string>(h.snapshots.keys());
  for (const node of h.nodes) for (const id of node.snapshots.keys()) ids.add(id);
  for (const id of ids) violations.push(...checkSnapshot(h, id));
  for (const wait of h.holdWaits) {
    if (wait.waitedMs > h.scenario.holdTimeoutMs + 1e-6) {
      violations.push(`piece ${wait.pieceId} waited ${wait.waitedMs.toFixed(3)} ms in ${wait.node}'s hold queue, over the ${h.scenario.holdTimeoutMs.toFixed(3)} ms hold timeout`);
    }
  }
  violations.push(...checkQuiescent(h));
  if (h.scenario.faultFree) violations.push(...checkLiveness(h));
  return violations;
}

function checkSnapshot(h: History, id: string): string[] {
  const meta = h.snapshots.get(id);
  if (!meta) return [`snapshot ${id} exists on a node but was never started`];
  const copies = new Map<string, NodeSnapshot>();
  for (const node of h.nodes) {
    const copy = node.snapshots.get(id);
    if (!copy) continue;
    if (!meta.participants.includes(node.id)) return [`snapshot ${id} is on ${node.id}, which is not a participant`];
    copies.set(node.id, copy);
  }
  const outcomes = h.outcomes.get(id) ?? [];
  const committedAnywhere = [...copies.values()].some((c) => c.state === "committed");
  const reportedOk = outcomes.some((o) => o.ok);
  const reportedFailed = outcomes.find((o) => !o.ok);
  if (!committedAnywhere && !reportedOk) {
    if (copies.size === 0) return [];
    return [`snapshot ${id} did not commit but left ${[...copies].map(([n, c]) => `${c.state} on ${n}`).join(", ")}`];
  }
  const violations: string[] = [];
  if (reportedFailed) violations.push(`snapshot ${id} is committed but its coordinator reported ${reportedFailed.code}: ${reportedFailed.message}`);
  for (const participant of meta.participants) {
    const copy = copies.get(participant);
    if (copy?.state !== "committed") violations.push(`snapshot ${id} committed, but participant ${participant} has it ${copy?.state ?? "missing"}`);
  }
  if (violations.length > 0) return violations;
  return checkContents(h, meta, copies);
}

/**
 * Which writes the snapshot holds, from its frozen values: on every block, the frozen write and
 * everything the owner applied before it are in, everything after is out. A page-sized piece must
 * be wholly in or out, and no write may be out while one issued after its ack is in.
 */
function checkContents(h: History, meta: SnapshotMeta, copies: Map<string, NodeSnapshot>): string[] {
  const violations: string[] = [];
  const inByPiece = new Map<number, boolean>();
  for (const layout of h.volumes) {
    if (!meta.volumes.includes(layout.name)) continue;
    for (let block = 0; block < layout.blocks; block++) {
      const key = `${layout.name}:${block}`;
      const value = copies.get(layout.ownerOfBlock[block]!)!.values.get(key);
      if (value === undefined) {
        violations.push(`snapshot ${meta.snapshotId} has no value for block ${key}`);
        continue;
      }
      const log = h.applyLog.get(key) ?? [];
      const position = value === 0 ? -1 : log.indexOf(value);
      if (value !== 0 && (position < 0 || !h.pieces.get(value)?.blocks.includes(block))) {
        violations.push(`snapshot ${meta.snapshotId} block ${key} holds ${value}, which no write applied to that block`);
        continue;
      }
      log.forEach((pieceId, i) => {
        const isIn = i <= position;
        const seen = inByPiece.get(pieceId);
        if (seen !== undefined && seen !== isIn) violations.push(`snapshot ${meta.snapshotId} holds piece ${pieceId} torn: in on some blocks, out on ${key}`);
        inByPiece.set(pieceId, isIn);
      });
    }
  }
  return violations.length > 0 ? violations : checkSingleCut(h, meta, inByPiece);
}

function checkSingleCut(h: History, meta: SnapshotMeta, inByPiece: Map<number, boolean>): string[] {
  let latestIn: { order: number; pieceId: number } | undefined;
  let earliestOut: { order: number; pieceId: number } | undefined;
  for (const [pieceId, isIn] of inByPiece) {
    const write = h.writes.get(h.pieces.get(pieceId)!.writeId)!;
    if (isIn && (!latestIn || write.issueOrder > latestIn.order)) latestIn = { order: write.issueOrder, pieceId };
    if (!isIn && write.ackOrder !== Infinity && (!earliestOut || write.ackOrder < earliestOut.order)) earliestOut = { order: write.ackOrder, pieceId };
  }
  if (!latestIn || !earliestOut || earliestOut.order > latestIn.order) return [];
  const x = h.writes.get(h.pieces.get(earliestOut.pieceId)!.writeId)!;
  const y = h.writes.get(h.pieces.get(latestIn.pieceId)!.writeId)!;
  return [
    `snapshot ${meta.snapshotId} is not one cut: write ${x.writeId} (piece ${earliestOut.pieceId} on ${h.pieces.get(earliestOut.pieceId)!.owner}) ` +
      `was acked at ${x.ackAtMs.toFixed(3)} ms and is out, but write ${y.writeId} (piece ${latestIn.pieceId} on ${h.pieces.get(latestIn.pieceId)!.owner}) ` +
      `issued later at ${y.issueAtMs.toFixed(3)} ms is in`,
  ];
}

/** After healing and a long quiet spell every snapshot is decided, released and forgotten. */
function checkQuiescent(h: History): string[] {
  const violations: string[] = [];
  for (const node of h.nodes) {
    if (node.participantEntries.length > 0) violations.push(`${node.id} still has participant state at the end: ${node.participantEntries.join(", ")}`);
    if (node.coordinatorAttempts.length > 0) violations.push(`${node.id} still coordinates at the end: ${node.coordinatorAttempts.join(", ")}`);
    if (node.holds > 0 || node.queued > 0) violations.push(`${node.id} still holds ${node.holds} snapshot(s) with ${node.queued} queued request(s) at the end`);
  }
  return violations;
}

/** Without faults every snapshot finishes, and fails only by losing a hold conflict to another. */
function checkLiveness(h: History): string[] {
  const violations: string[] = [];
  let succeeded = 0;
  for (const id of h.snapshots.keys()) {
    const outcomes = h.outcomes.get(id) ?? [];
    if (outcomes.length === 0) violations.push(`fault-free run: snapshot ${id} never finished`);
    if (outcomes.some((o) => o.ok)) succeeded++;
    const failure = outcomes.find((o) => !o.ok && o.code !== "CONFLICT");
    if (failure) violations.push(`fault-free run: snapshot ${id} failed with ${failure.code}: ${failure.message}`);
  }
  if (h.snapshots.size > 0 && succeeded === 0) violations.push("fault-free run: no snapshot succeeded");
  return violations;
}
