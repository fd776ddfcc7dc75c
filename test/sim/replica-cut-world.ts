// A seeded world for timestamp-mode snapshots of one replicated page group: a primary and two
// replicas whose clocks are skewed, a coordinator that prepares, picks T and takes, replicated
// writes delayed at random (in order per link) and cuts made by each node's own clock. Each copy
// places a replicated write by its primary's decision (core/snapshot/replicated-write-placement.ts),
// and the primary says "taken" only once its writes from before its cut are on every replica.
// The history it returns lets a checker compare every copy's snapshots block by block.
import { placeReplicatedWrite } from "../../core/snapshot/replicated-write-placement.ts";
import type { RecentCut } from "../../core/snapshot/recent-cuts.ts";
import { EventQueue } from "./kernel/event-queue.ts";
import { Prng } from "./kernel/prng.ts";

export const CUT_SABOTAGES = ["replica-ignores-primary", "taken-before-replicated", "no-cut-first"] as const;
export type CutSabotage = (typeof CUT_SABOTAGES)[number];

const BLOCKS = 8;
const SNAPSHOTS = 6;
const SKEW_MS = 3;
const NODES = ["p", "r1", "r2"] as const;
type NodeName = (typeof NODES)[number];

/** A node's stack of layers, oldest first; the last is the head. Each maps block -> write id. */
class LayerStack {
  readonly layers: { id: string; blocks: Map<number, number> }[] = [{ id: "head", blocks: new Map() }];

  freeze(snapshotId: string): void {
    this.layers[this.layers.length - 1]!.id = snapshotId;
    this.layers.push({ id: "head", blocks: new Map() });
  }

  has(snapshotId: string): boolean {
    return this.layers.some((layer) => layer.id === snapshotId);
  }

  write(layerId: string, block: number, id: number): void {
    this.layers.find((layer) => layer.id === layerId)!.blocks.set(block, id);
  }

  read(layerId: string, block: number): number {
    for (let index = this.layers.findIndex((layer) => layer.id === layerId); index >= 0; index--) {
      const value = this.layers[index]!.blocks.get(block);
      if (value !== undefined) return value;
    }
    return 0;
  }
}

interface Snapshot {
  id: string;
  cutAtMs?: number;
  prepared: Set<NodeName>;
  armed: Set<NodeName>;
  cut: Set<NodeName>;
  taken: Set<NodeName>;
  finished: Set<NodeName>;
}

export interface CutHistory {
  seed: number;
  stacks: Record<NodeName, LayerStack>;
  snapshots: string[];
  writes: number;
  underCut: number;
  forcedCuts: number;
  error?: string;
}

export function runCutWorld(seed: number, sabotage: CutSabotage | undefined): CutHistory {
  const random = new Prng(seed);
  const queue = new EventQueue();
  let nowMs = 0;
  const offsets = Object.fromEntries(NODES.map((node) => [node, random.range(-SKEW_MS, SKEW_MS)])) as Record<NodeName, number>;
  const clock = (node: NodeName) => nowMs + offsets[node];
  const stacks = Object.fromEntries(NODES.map((node) => [node, new LayerStack()])) as Record<NodeName, LayerStack>;
  const cutsOf = Object.fromEntries(NODES.map((node) => [node, [] as RecentCut[]])) as Record<NodeName, RecentCut[]>;
  const snapshots: Snapshot[] = [];
  /** Per replica, when its link's last message arrives: links keep order. */
  const linkFreeAtMs: Record<string, number> = { r1: 0, r2: 0 };
  /** Per replica, the last write id it has applied (links keep order); "taken" waiters by the write id they need. */
  const appliedUpTo: Record<string, number> = { r1: 0, r2: 0 };
  let waitingForReplicated: { upTo: number; taken: () => void }[] = [];
  let nextWrite = 1;
  const history: CutHistory = { seed, stacks, snapshots: [], writes: 0, underCut: 0, forcedCuts: 0 };

  const later = (delayMs: number, run: () => void) => queue.push(nowMs + delayMs, run);

  function cut(node: NodeName, snapshot: Snapshot): void {
    if (snapshot.cut.has(node)) return;
    snapshot.cut.add(node);
    stacks[node].freeze(snapshot.id);
    cutsOf[node].push({ snapshotId: snapshot.id, cutAtMs: snapshot.cutAtMs! });
    // The primary's "taken" waits for its writes from before the cut to be on every replica.
    const taken = () => later(random.range(0, 2), () => onTaken(node, snapshot));
    const upTo = nextWrite - 1;
    if (node === "p" && Math.min(appliedUpTo.r1!, appliedUpTo.r2!) < upTo && sabotage !== "taken-before-replicated") waitingForReplicated.push({ upTo, taken });
    else taken();
  }

  function onTaken(node: NodeName, snapshot: Snapshot): void {
    snapshot.taken.add(node);
    if (snapshot.taken.size < NODES.length) return;
    for (const each of NODES) later(random.range(0, 4), () => snapshot.finished.add(each));
    later(random.range(1, 20), startSnapshot);
  }

  function cutDue(node: NodeName): void {
    for (const snapshot of snapshots) if (snapshot.armed.has(node) && !snapshot.cut.has(node) && clock(node) >= snapshot.cutAtMs!) cut(node, snapshot);
  }

  function startSnapshot(): void {
    if (snapshots.length >= SNAPSHOTS) return;
    const snapshot: Snapshot = { id: `s${snapshots.length + 1}`, prepared: new Set(), armed: new Set(), cut: new Set(), taken: new Set(), finished: new Set() };
    snapshots.push(snapshot);
    for (const node of NODES) {
      later(random.range(0, 5), () => {
        snapshot.prepared.add(node);
        if (snapshot.prepared.size === NODES.length) later(random.range(0, 3), () => take(snapshot));
      });
    }
  }

  function take(snapshot: Snapshot): void {
    // T far enough ahead that every take arrives first (a late take aborts the snapshot, which this world leaves out).
    const leadMs = SKEW_MS + random.range(2, 12);
    snapshot.cutAtMs = nowMs + leadMs;
    for (const node of NODES) later(random.range(0, leadMs - SKEW_MS), () => snapshot.armed.add(node));
  }

  function primaryWrite(): void {
    cutDue("p");
    const id = nextWrite++;
    const block = random.int(0, BLOCKS - 1);
    stacks.p.write("head", block, id);
    history.writes++;
    const cutBefore = [...cutsOf.p];
    for (const replica of ["r1", "r2"] as const) {
      // Mostly quick, now and then a stall that the writes behind it on the link wait out.
      const arriveAtMs = Math.max(linkFreeAtMs[replica]!, nowMs + (random.chance(0.05) ? random.range(5, 30) : random.range(0, 1)));
      linkFreeAtMs[replica] = arriveAtMs;
      queue.push(arriveAtMs, () => {
        replicaWrite(replica, cutBefore, block, id);
        appliedUpTo[replica] = id;
        const applied = Math.min(appliedUpTo.r1!, appliedUpTo.r2!);
        const ready = waitingForReplicated.filter((waiter) => waiter.upTo <= applied);
        waitingForReplicated = waitingForReplicated.filter((waiter) => waiter.upTo > applied);
        for (const waiter of ready) waiter.taken();
      });
    }
  }

  function replicaWrite(node: NodeName, cutBefore: RecentCut[], block: number, id: number): void {
    const unfinished = new Set(snapshots.filter((snapshot) => snapshot.cut.has(node) && !snapshot.finished.has(node)).map((snapshot) => snapshot.id));
    const placement = placeReplicatedWrite(cutBefore, cutsOf[node].map((cut) => cut.snapshotId), unfinished);
    if (sabotage !== "no-cut-first") {
      for (const { snapshotId } of placement.cutFirst) {
        const snapshot = snapshots.find((candidate) => candidate.id === snapshotId)!;
        if (!snapshot.cut.has(node)) {
          history.forcedCuts++;
          cut(node, snapshot);
        }
      }
    }
    const under = sabotage === "replica-ignores-primary" ? undefined : placement.under;
    if (under !== undefined) history.underCut++;
    stacks[node].write(under ?? "head", block, id);
  }

  startSnapshot();
  for (let atMs = 0; atMs < 400; atMs += random.range(0.2, 3)) queue.push(atMs, primaryWrite);
  for (let atMs = 0; atMs < 600; atMs += 0.5) queue.push(atMs, () => NODES.forEach(cutDue));
  const run = queue.runUntil(10_000, 1_000_000, (atMs) => (nowMs = atMs));
  if (run.error) history.error = run.error;
  history.snapshots = snapshots.filter((snapshot) => snapshot.taken.size === NODES.length).map((snapshot) => snapshot.id);
  return history;
}

/** Every copy's snapshots and head hold the same write in every block; a violation per difference. */
export function checkCutHistory(history: CutHistory): string[] {
  const violations: string[] = [];
  if (history.error) violations.push(history.error);
  if (history.snapshots.length < SNAPSHOTS) violations.push(`only ${history.snapshots.length} of ${SNAPSHOTS} snapshots completed`);
  for (const layer of [...history.snapshots, "head"]) {
    for (let block = 0; block < BLOCKS; block++) {
      const primary = history.stacks.p.read(layer, block);
      for (const replica of ["r1", "r2"] as const) {
        if (!history.stacks[replica].has(layer) && layer !== "head") violations.push(`${replica} has no layer ${layer}`);
        const copy = history.stacks[replica].read(layer, block);
        if (copy !== primary) violations.push(`${layer} block ${block}: the primary holds write ${primary}, ${replica} write ${copy}`);
      }
    }
  }
  return violations;
}
