// The snapshot participant: one per node, for every snapshot touching pages this node owns. It
// decides when the node holds and releases requests, when it cuts its copy-on-write snapshot,
// and (timestamp mode) how long an acknowledgement must wait so that the cut stays one instant
// in real time. A pure state machine: the node feeds it messages, ticks, drain notices and every
// write's local stamp, and carries out the effects it returns, in order.
import { ShoalError } from "../errors.ts";
import type {
  NodeId,
  ParticipantRecord,
  PrepareMessage,
  SnapshotMessage,
  TakeMessage,
  ToCoordinatorMessage,
  WireError,
} from "./snapshot-messages.ts";
import { entryWakeAtMs, isOlder, newEntry, recordOf, refuse, release, taken, type Entry, type Phase } from "./participant-entry.ts";

export interface ParticipantConfig {
  nodeId: NodeId;
  /** Unique per boot of this node (random or a persisted counter); makes prepare nonces unique across restarts. */
  incarnation: string;
  /** This node's own bound on clock error; the larger of it and the coordinator's is used. */
  maxClockSkewMs: number;
  /** How coarse this node's clock readings are; told to coordinators, which widen offset bounds by it. */
  clockResolutionMs: number;
  /** Snapshots this node takes part in at once (holding, prepared or pending); more are refused. */
  maxSnapshotsInProgress: number;
  maxVolumesPerSnapshot: number;
  /** Upper bound on a coordinator's hold timeout, so no coordinator can hold this node's clients long. */
  maxHoldTimeoutMs: number;
  /** Prepares older than this (plus skew) are stale duplicates and refused. */
  maxPrepareAgeMs: number;
  /** Timestamp mode: a cut time further ahead than this is refused. */
  maxCutLeadMs: number;
  /** First interval at which a pending snapshot asks its coordinator for the decision; doubles up to the max. */
  queryIntervalMs: number;
  maxQueryIntervalMs: number;
  /** Recently finished snapshots remembered to ignore late duplicates; oldest aborted ones go first. */
  maxTombstones: number;
}

export const DEFAULT_PARTICIPANT_CONFIG: Omit<ParticipantConfig, "nodeId" | "incarnation" | "maxClockSkewMs"> = {
  maxSnapshotsInProgress: 8,
  maxVolumesPerSnapshot: 256,
  maxHoldTimeoutMs: 10_000,
  maxPrepareAgeMs: 1000,
  maxCutLeadMs: 2000,
  queryIntervalMs: 250,
  maxQueryIntervalMs: 5000,
  maxTombstones: 4096,
  clockResolutionMs: 1,
};

export type ParticipantEffect =
  | { kind: "send"; to: NodeId; msg: ToCoordinatorMessage }
  /** Stop starting requests on these volumes (queue them); report onInflightDrained when none is executing. */
  | { kind: "hold"; snapshotId: string; volumes: string[] }
  /** Start the requests queued for this hold now, before the next effect (a volume stays held while another hold covers it). */
  | { kind: "release"; snapshotId: string; volumes: string[] }
  /** Atomically freeze this node's pages of the volumes as an invisible snapshot, durably with the record. */
  | { kind: "cut"; snapshotId: string; volumes: string[]; record: ParticipantRecord }
  /** Make the snapshot visible, durably with the updated record. */
  | { kind: "commit"; snapshotId: string; record: ParticipantRecord }
  /** Delete the pending snapshot and its record. */
  | { kind: "discard"; snapshotId: string }
  /** Drop the protocol record only; the committed snapshot stays. */
  | { kind: "forget"; snapshotId: string }
  /** The snapshot's commit wait is over (every participant cut, or it committed, aborted or ran out): acknowledge what waited on it. */
  | { kind: "unfence"; snapshotId: string };

/**
 * The answer to beforeWrite: carry out `effects` (cuts) first, apply the write, then ack once
 * every snapshot in `fences` is unfenced (at the latest when the local clock reads ackNotBeforeMs).
 */
export interface WriteAdmission {
  effects: ParticipantEffect[];
  ackNotBeforeMs: number;
  fences: string[];
}

interface Tombstone {
  outcome: "committed" | "aborted";
  /** Aborted after cutting: the coordinator decided abort, so it can never send commit. */
  discardedCut?: boolean;
  reason?: WireError;
  forgetAtMs: number;
  persisted: boolean;
}

/** Timestamp mode: writes applied after the cut on these volumes wait for their ack until untilMs. */
interface Fence {
  volumes: string[];
  untilMs: number;
}

const NONE: ParticipantEffect[] = [];
const NO_FENCES: string[] = [];

export class SnapshotParticipant {
  readonly config: ParticipantConfig;
  private readonly entries = new Map<string, Entry>();
  private readonly tombstones = new Map<string, Tombstone>();
  private readonly fences = new Map<string, Fence>();
  private nonceCounter = 0;

  constructor(config: Partial<ParticipantConfig> & Pick<ParticipantConfig, "nodeId" | "incarnation" | "maxClockSkewMs">) {
    this.config = { ...DEFAULT_PARTICIPANT_CONFIG, ...config };
  }

  onMessage(from: NodeId, msg: SnapshotMessage, nowMs: number): ParticipantEffect[] {
    switch (msg.type) {
      case "snap.prepare":
        return this.onPrepare(from, msg, nowMs);
      case "snap.take":
        return this.onTake(from, msg, nowMs);
      case "snap.commit":
        return this.onCommit(from, msg.snapshotId, nowMs);
      case "snap.abort":
        return this.onAbort(from, msg.snapshotId, msg.reason, nowMs);
      case "snap.allcut":
        // Every participant has cut: a write applied after ours can no longer precede one in the snapshot.
        return this.entries.get(msg.snapshotId)?.coordinator === from ? this.unfence(msg.snapshotId) : NONE;
      default:
        return NONE; // coordinator-bound messages are not ours
    }
  }

  /** No request on the held volumes is executing any more (call after carrying out `hold`, even if it was already so). */
  onInflightDrained(snapshotId: string, nowMs: number): ParticipantEffect[] {
    const entry = this.entries.get(snapshotId);
    if (!entry || entry.phase !== "holding") return NONE;
    entry.phase = "ready";
    return [this.ready(entry, entry.prepareSentAtMs, nowMs)];
  }

  /**
   * Called on every write, with the local clock read when the write is applied (same event-loop
   * turn). In timestamp mode a write stamped at or after T makes this node cut first, and a write
   * applied after any cut waits for its ack until the local clock reads T plus the commit wait
   * (2 * skew, or less when the coordinator measured the clocks' offsets; see clock-offset.ts).
   */
  beforeWrite(volume: string, stampMs: number): WriteAdmission {
    let effects = NONE;
    for (const entry of this.entries.values()) {
      if (entry.phase === "armed" && stampMs >= entry.cutAtMs! && entry.volumes.includes(volume)) {
        effects = [...effects, ...this.cut(entry, stampMs)];
      }
    }
    let ackNotBeforeMs = stampMs;
    let fences: string[] = NO_FENCES;
    for (const [snapshotId, fence] of this.fences) {
      if (fence.untilMs <= stampMs || !fence.volumes.includes(volume)) continue;
      ackNotBeforeMs = Math.max(ackNotBeforeMs, fence.untilMs);
      fences = [...fences, snapshotId];
    }
    return { effects, ackNotBeforeMs, fences };
  }

  onTick(nowMs: number): ParticipantEffect[] {
    const effects: ParticipantEffect[] = [];
    for (const entry of [...this.entries.values()]) effects.push(...this.tickEntry(entry, nowMs));
    // Once the local clock has read untilMs, every participant's clock has read T: later acks are safe whatever the clock says next.
    for (const [snapshotId, fence] of this.fences) if (nowMs >= fence.untilMs) effects.push(...this.unfence(snapshotId));
    for (const [snapshotId, tomb] of this.tombstones) {
      if (nowMs < tomb.forgetAtMs) continue;
      this.tombstones.delete(snapshotId);
      if (tomb.persisted) effects.push({ kind: "forget", snapshotId });
    }
    return effects;
  }

  /** The coordinator is gone: a snapshot not yet cut here cannot commit, so stop holding for it now. */
  onPeerDown(node: NodeId, nowMs: number): ParticipantEffect[] {
    const effects: ParticipantEffect[] = [];
    for (const entry of [...this.entries.values()]) {
      if (entry.coordinator !== node || entry.phase === "pending") continue;
      effects.push(...this.abortLocally(entry, new ShoalError("NODE_DOWN", `coordinator ${node} went down`), nowMs));
    }
    return effects;
  }

  /**
   * The node must give up a snapshot not yet cut here, e.g. its bounded hold queue is full or it
   * is shutting down: release now and tell the coordinator why. A pending cut cannot be abandoned.
   */
  abandon(snapshotId: string, error: ShoalError, nowMs: number): ParticipantEffect[] {
    const entry = this.entries.get(snapshotId);
    if (!entry || entry.phase === "pending") return NONE;
    return this.abortLocally(entry, error, nowMs);
  }

  /**
   * The node could not make a cut it started (its store refused the freeze). Nothing was said
   * "taken", so the coordinator cannot have committed: give the snapshot up here, drop whatever
   * part of the cut was made, and tell the coordinator why.
   */
  cutFailed(snapshotId: string, error: ShoalError, nowMs: number): ParticipantEffect[] {
    const entry = this.entries.get(snapshotId);
    if (!entry || entry.phase !== "pending") return NONE;
    this.entries.delete(snapshotId);
    this.addTombstone(snapshotId, { outcome: "aborted", reason: error.toWire(), forgetAtMs: nowMs + this.retainMs(entry.maxClockSkewMs), persisted: false });
    return [...this.unfence(snapshotId), { kind: "discard", snapshotId }, refuse(entry.coordinator, snapshotId, error.toWire())];
  }

  /** Call once on a fresh participant with every persisted record; pending snapshots ask their coordinator at once. */
  recover(records: ParticipantRecord[], nowMs: number): ParticipantEffect[] {
    for (const record of records) {
      if (record.state === "committed") {
        this.tombstones.set(record.snapshotId, { outcome: "committed", forgetAtMs: record.forgetAtMs ?? nowMs, persisted: true });
        continue;
      }
      const entry = newEntry(record.snapshotId, record.name, record.coordinator, record.volumes, record.mode, 0, 0, "", 0);
      entry.phase = "pending";
      if (record.cutAtMs !== undefined) entry.cutAtMs = record.cutAtMs;
      // The restart may come before real time passed T + skew; the commit wait must survive it.
      if (record.commitWaitUntilMs !== undefined) this.fences.set(record.snapshotId, { volumes: record.volumes, untilMs: record.commitWaitUntilMs });
      entry.nextQueryAtMs = nowMs;
      entry.queryIntervalMs = this.config.queryIntervalMs;
      this.entries.set(record.snapshotId, entry);
    }
    return this.onTick(nowMs);
  }

  nextWakeAtMs(): number | undefined {
    let wakeAtMs = Infinity;
    for (const entry of this.entries.values()) wakeAtMs = Math.min(wakeAtMs, entryWakeAtMs(entry));
    for (const fence of this.fences.values()) wakeAtMs = Math.min(wakeAtMs, fence.untilMs);
    for (const tomb of this.tombstones.values()) wakeAtMs = Math.min(wakeAtMs, tomb.forgetAtMs);
    return wakeAtMs === Infinity ? undefined : wakeAtMs;
  }

  /** When the earliest commit wait ends (Infinity: none runs). */
  nextFenceEndMs(): number {
    let endMs = Infinity;
    for (const fence of this.fences.values()) endMs = Math.min(endMs, fence.untilMs);
    return endMs;
  }

  /** A snapshot of this volume is under way here (prepared, or its commit wait still running). */
  involves(volume: string): boolean {
    for (const entry of this.entries.values()) if (entry.volumes.includes(volume)) return true;
    for (const fence of this.fences.values()) if (fence.volumes.includes(volume)) return true;
    return false;
  }

  /**
   * Timestamp-mode snapshots this node has cut and not finished (no outcome yet): a replicated
   * write that arrives now without its primary's word that it cut one of them belongs under it.
   */
  unfinishedTimestampCuts(): Set<string> {
    const ids = new Set<string>();
    for (const entry of this.entries.values()) if (entry.mode === "timestamp" && entry.phase === "pending") ids.add(entry.snapshotId);
    return ids;
  }

  /**
   * A replicated write's primary cut this timestamp-mode snapshot (at `cutAtMs`) before it applied
   * the write, so this replica must cut it before applying it too, even if its own clock has not
   * reached T or its take has not come yet. Cutting early is safe: writes applied after the cut
   * are fenced until T plus the commit wait as after any cut. Hold-mode snapshots wait instead
   * (the replica's hold queue); a snapshot cut or ended here needs nothing.
   */
  cutForPrimary(snapshotId: string, cutAtMs: number, nowMs: number): ParticipantEffect[] {
    const entry = this.entries.get(snapshotId);
    if (entry === undefined || entry.mode !== "timestamp" || !Number.isFinite(cutAtMs)) return NONE;
    if (entry.phase === "armed") return this.cut(entry, nowMs);
    if (entry.phase !== "prepared") return NONE;
    entry.cutAtMs = cutAtMs;
    return this.cut(entry, nowMs);
  }

  /** A snapshot not yet cut here, or a commit wait, relies on this clock running without steps. */
  clockInUse(): boolean {
    if (this.fences.size > 0) return true;
    for (const entry of this.entries.values()) if (entry.phase !== "pending") return true;
    return false;
  }

  /** Acknowledgements of writes after this snapshot's cut still wait (see WriteAdmission.fences). */
  isFenced(snapshotId: string): boolean {
    return this.fences.has(snapshotId);
  }

  /** For status output and tests. */
  inspect(): { entries: { snapshotId: string; phase: Phase }[]; fences: number; tombstones: number } {
    const entries = [...this.entries.values()].map((e) => ({ snapshotId: e.snapshotId, phase: e.phase }));
    return { entries, fences: this.fences.size, tombstones: this.tombstones.size };
  }

  private onPrepare(from: NodeId, msg: PrepareMessage, nowMs: number): ParticipantEffect[] {
    const tomb = this.tombstones.get(msg.snapshotId);
    if (tomb) return tomb.outcome === "aborted" && tomb.reason ? [refuse(from, msg.snapshotId, tomb.reason)] : NONE;
    const existing = this.entries.get(msg.snapshotId);
    if (existing) return existing.coordinator === from ? this.repeatReady(existing, msg.sentAtMs, nowMs) : NONE;
    const skewMs = Math.max(this.config.maxClockSkewMs, msg.maxClockSkewMs);
    const refusal = this.refusePrepare(msg, skewMs, nowMs);
    if (refusal) {
      this.addTombstone(msg.snapshotId, { outcome: "aborted", reason: refusal.toWire(), forgetAtMs: nowMs + this.retainMs(skewMs), persisted: false });
      return [refuse(from, msg.snapshotId, refusal.toWire())];
    }
    const effects: ParticipantEffect[] = [];
    for (const loser of this.holdConflicts(msg)) {
      const error = new ShoalError("CONFLICT", `node ${this.config.nodeId} preempted this hold for older snapshot '${msg.name}' (${msg.snapshotId}) on an overlapping volume`);
      effects.push(...this.abortLocally(loser, error, nowMs));
    }
    const holdTimeoutMs = Math.min(msg.holdTimeoutMs, this.config.maxHoldTimeoutMs);
    const nonce = `${this.config.incarnation}.${++this.nonceCounter}`;
    const entry = newEntry(msg.snapshotId, msg.name, from, msg.volumes, msg.mode, msg.startedAtMs, skewMs, nonce, msg.sentAtMs);
    this.entries.set(msg.snapshotId, entry);
    if (msg.mode === "hold") {
      // End the hold 2 * skew early on this clock: then the real time held never exceeds holdTimeoutMs.
      entry.phase = "holding";
      entry.deadlineMs = nowMs + holdTimeoutMs - 2 * skewMs;
      effects.push({ kind: "hold", snapshotId: msg.snapshotId, volumes: msg.volumes });
      return effects;
    }
    entry.phase = "prepared";
    entry.deadlineMs = nowMs + holdTimeoutMs;
    effects.push(this.ready(entry, msg.sentAtMs, nowMs));
    return effects;
  }

  private refusePrepare(msg: PrepareMessage, skewMs: number, nowMs: number): ShoalError | undefined {
    const c = this.config;
    if (msg.mode !== "hold" && msg.mode !== "timestamp") return new ShoalError("BAD_REQUEST", `unknown snapshot mode '${String(msg.mode)}'`);
    if (msg.volumes.length === 0 || msg.volumes.length > c.maxVolumesPerSnapshot) return new ShoalError("BAD_REQUEST", `a snapshot takes 1 to ${c.maxVolumesPerSnapshot} volumes`);
    const ageMs = nowMs - msg.sentAtMs;
    if (ageMs > c.maxPrepareAgeMs + 2 * skewMs) return new ShoalError("TIMEOUT", `prepare reached node ${c.nodeId} ${Math.round(ageMs)} ms after it was sent (limit ${c.maxPrepareAgeMs} ms); stale copy ignored`);
    const holdTimeoutMs = Math.min(msg.holdTimeoutMs, c.maxHoldTimeoutMs);
    if (msg.mode === "hold" && holdTimeoutMs <= 2 * skewMs) return new ShoalError("BAD_ARGUMENT", `hold timeout ${holdTimeoutMs} ms leaves no time after the ${2 * skewMs} ms clock-skew allowance`);
    if (this.entries.size >= c.maxSnapshotsInProgress) return new ShoalError("CONFLICT", `node ${c.nodeId} already takes part in ${this.entries.size} snapshots; retry when one finishes`);
    if (msg.mode !== "hold") return undefined;
    const older = this.holdConflicts(msg).find((e) => isOlder(e, msg));
    if (older) return new ShoalError("CONFLICT", `node ${c.nodeId} is holding overlapping volumes for older snapshot '${older.name}' (${older.snapshotId}); retry after it finishes`);
    return undefined;
  }

  /**
   * Hold-mode snapshots of overlapping volumes cannot share a hold: a request queued under the
   * first would wait past its timeout under the second. The older one wins (wound-wait), so of
   * two racing snapshots one always succeeds. Timestamp snapshots hold nothing and never conflict.
   */
  private holdConflicts(msg: PrepareMessage): Entry[] {
    if (msg.mode !== "hold") return [];
    return [...this.entries.values()].filter(
      (e) => e.mode === "hold" && (e.phase === "holding" || e.phase === "ready") && e.volumes.some((v) => msg.volumes.includes(v)),
    );
  }

  private repeatReady(entry: Entry, echoSentAtMs: number, nowMs: number): ParticipantEffect[] {
    if (entry.phase !== "ready" && entry.phase !== "prepared") return NONE;
    return [this.ready(entry, echoSentAtMs, nowMs)];
  }

  private onTake(from: NodeId, msg: TakeMessage, nowMs: number): ParticipantEffect[] {
    const entry = this.entries.get(msg.snapshotId);
    if (!entry || entry.coordinator !== from) {
      const tomb = this.tombstones.get(msg.snapshotId);
      if (tomb?.outcome === "committed") return NONE;
      const reason = tomb?.reason ?? { code: "UNKNOWN_SNAPSHOT", message: `node ${this.config.nodeId} is not prepared for snapshot ${msg.snapshotId} (restarted or timed out)` };
      return [refuse(from, msg.snapshotId, reason)];
    }
    if (entry.phase === "pending") return [taken(entry)];
    if (entry.phase === "armed") return NONE;
    // A take names the prepared state it answers; after a re-prepare (duplicate prepare, restart)
    // the hold that sent ready may have lapsed in between, so cutting now could break the cut.
    if (msg.prepareNonce !== entry.prepareNonce || entry.phase === "holding") {
      return this.abortLocally(entry, new ShoalError("CONFLICT", `take for snapshot ${msg.snapshotId} does not match node ${this.config.nodeId}'s current prepare`), nowMs);
    }
    if (entry.mode === "hold") return this.cut(entry, nowMs);
    return this.arm(entry, msg.cutAtMs, msg.commitWaitMs, nowMs);
  }

  /** Timestamp mode: remember T; the cut happens at the first write stamped >= T or tick at >= T. */
  private arm(entry: Entry, cutAtMs: number | undefined, commitWaitMs: number | undefined, nowMs: number): ParticipantEffect[] {
    if (cutAtMs === undefined || !Number.isFinite(cutAtMs)) {
      return this.abortLocally(entry, new ShoalError("BAD_REQUEST", "timestamp-mode take without a cut time"), nowMs);
    }
    if (nowMs >= cutAtMs) {
      // Writes stamped >= T may already be applied here, before any cut: refusing is the only safe answer.
      const lateMs = Math.round(nowMs - cutAtMs);
      return this.abortLocally(entry, new ShoalError("TIMEOUT", `take reached node ${this.config.nodeId} ${lateMs} ms after its cut time; the network was slower than measured, retry`), nowMs);
    }
    if (cutAtMs - nowMs > this.config.maxCutLeadMs + 2 * entry.maxClockSkewMs) {
      return this.abortLocally(entry, new ShoalError("BAD_REQUEST", `cut time is ${Math.round(cutAtMs - nowMs)} ms ahead, beyond node ${this.config.nodeId}'s ${this.config.maxCutLeadMs} ms limit`), nowMs);
    }
    entry.phase = "armed";
    entry.cutAtMs = cutAtMs;
    if (typeof commitWaitMs === "number" && commitWaitMs >= 0) entry.commitWaitMs = commitWaitMs;
    return NONE;
  }

  private cut(entry: Entry, nowMs: number): ParticipantEffect[] {
    const wasHolding = entry.phase === "ready";
    entry.phase = "pending";
    entry.queryIntervalMs = this.config.queryIntervalMs;
    entry.nextQueryAtMs = nowMs + entry.queryIntervalMs;
    const record = recordOf(entry, "pending");
    if (entry.mode === "timestamp") {
      record.cutAtMs = entry.cutAtMs!;
      // The record keeps the skew bound's wait: after a restart this clock may be re-anchored, and
      // the measured offsets no longer describe it.
      const skewWaitMs = 2 * entry.maxClockSkewMs;
      record.commitWaitUntilMs = entry.cutAtMs! + skewWaitMs;
      const untilMs = entry.cutAtMs! + Math.min(skewWaitMs, entry.commitWaitMs ?? skewWaitMs);
      this.fences.set(entry.snapshotId, { volumes: entry.volumes, untilMs });
    }
    const effects: ParticipantEffect[] = [{ kind: "cut", snapshotId: entry.snapshotId, volumes: entry.volumes, record }];
    // Holding past the local cut buys nothing: every participant held before the take was sent.
    if (wasHolding) effects.push(release(entry));
    if (entry.mode === "timestamp") effects.push({ kind: "send", to: entry.coordinator, msg: { type: "snap.cut", snapshotId: entry.snapshotId } });
    effects.push(taken(entry));
    return effects;
  }

  private onCommit(from: NodeId, snapshotId: string, nowMs: number): ParticipantEffect[] {
    const ack: ParticipantEffect = { kind: "send", to: from, msg: { type: "snap.ack", snapshotId, outcome: "committed" } };
    const entry = this.entries.get(snapshotId);
    const tomb = this.tombstones.get(snapshotId);
    if (entry && entry.coordinator === from) {
      if (entry.phase !== "pending") throw new ShoalError("INTERNAL", `commit for snapshot ${snapshotId} before node ${this.config.nodeId} cut it`);
      this.entries.delete(snapshotId);
      // Commit means every participant has cut, so any write applied from now on is out of the
      // snapshot and no write in it can follow it: the commit wait has nothing left to protect.
      const unfenced = this.unfence(snapshotId);
      const record = { ...recordOf(entry, "committed"), forgetAtMs: nowMs + this.retainMs(entry.maxClockSkewMs) };
      if (entry.cutAtMs !== undefined) record.cutAtMs = entry.cutAtMs;
      this.tombstones.set(snapshotId, { outcome: "committed", forgetAtMs: record.forgetAtMs, persisted: true });
      return [{ kind: "commit", snapshotId, record }, ...unfenced, ack];
    }
    // Other aborted tombstones may be refusals of stale duplicates that came after this node
    // committed and forgot the snapshot; only a discarded cut contradicts a commit.
    if (tomb?.discardedCut) throw new ShoalError("INTERNAL", `commit for snapshot ${snapshotId}, whose cut node ${this.config.nodeId} discarded on the coordinator's abort`);
    return [ack];
  }

  private onAbort(from: NodeId, snapshotId: string, reason: WireError, nowMs: number): ParticipantEffect[] {
    const ack: ParticipantEffect = { kind: "send", to: from, msg: { type: "snap.ack", snapshotId, outcome: "aborted" } };
    const entry = this.entries.get(snapshotId);
    if (!entry || entry.coordinator !== from) {
      // A committed snapshot is never discarded: an abort for it is a stale presumed-abort answer.
      return this.tombstones.get(snapshotId)?.outcome === "committed" ? NONE : [ack];
    }
    this.entries.delete(snapshotId);
    const unfenced = this.unfence(snapshotId); // no snapshot, nothing to keep consistent with
    const discardedCut = entry.phase === "pending";
    this.addTombstone(snapshotId, { outcome: "aborted", reason, discardedCut, forgetAtMs: nowMs + this.retainMs(entry.maxClockSkewMs), persisted: false });
    if (discardedCut) return [{ kind: "discard", snapshotId }, ...unfenced, ack];
    if (entry.phase === "holding" || entry.phase === "ready") return [release(entry), ack];
    return [...unfenced, ack];
  }

  private tickEntry(entry: Entry, nowMs: number): ParticipantEffect[] {
    switch (entry.phase) {
      case "holding":
      case "ready":
        if (nowMs < entry.deadlineMs) return NONE;
        return this.abortLocally(entry, new ShoalError("HOLD_TIMEOUT", `node ${this.config.nodeId} released its hold for snapshot '${entry.name}' at the hold timeout`), nowMs);
      case "prepared":
        if (nowMs < entry.deadlineMs) return NONE;
        return this.abortLocally(entry, new ShoalError("TIMEOUT", `node ${this.config.nodeId} gave up waiting for take of snapshot '${entry.name}'`), nowMs);
      case "armed":
        return nowMs >= entry.cutAtMs! ? this.cut(entry, nowMs) : NONE;
      case "pending":
        if (nowMs < entry.nextQueryAtMs) return NONE;
        // A pending cut cannot be decided here: only the coordinator's record can. Ask again, with backoff.
        entry.nextQueryAtMs = nowMs + entry.queryIntervalMs;
        entry.queryIntervalMs = Math.min(entry.queryIntervalMs * 2, this.config.maxQueryIntervalMs);
        return [taken(entry)];
    }
  }

  private unfence(snapshotId: string): ParticipantEffect[] {
    return this.fences.delete(snapshotId) ? [{ kind: "unfence", snapshotId }] : NONE;
  }

  /** Gives up a snapshot not yet cut here (never a pending one) and tells the coordinator why. */
  private abortLocally(entry: Entry, error: ShoalError, nowMs: number): ParticipantEffect[] {
    this.entries.delete(entry.snapshotId);
    this.addTombstone(entry.snapshotId, { outcome: "aborted", reason: error.toWire(), forgetAtMs: nowMs + this.retainMs(entry.maxClockSkewMs), persisted: false });
    const effects: ParticipantEffect[] = [];
    if (entry.phase === "holding" || entry.phase === "ready") effects.push(release(entry));
    effects.push(refuse(entry.coordinator, entry.snapshotId, error.toWire()));
    return effects;
  }

  /**
   * How long a finished snapshot is remembered. A duplicate prepare is accepted only within
   * maxPrepareAgeMs + 2e of its send stamp, and that stamp is at most 2e after our first sight
   * of it; a few more e cover clock error when the tombstone is dropped.
   */
  private retainMs(skewMs: number): number {
    return this.config.maxPrepareAgeMs + 8 * Math.max(skewMs, this.config.maxClockSkewMs);
  }

  private addTombstone(snapshotId: string, tomb: Tombstone): void {
    if (this.tombstones.size >= this.config.maxTombstones) {
      // Forgetting an aborted snapshot early is safe: a re-prepare gets a new nonce, so no old take can cut it.
      for (const [id, old] of this.tombstones) {
        if (old.outcome === "aborted") {
          this.tombstones.delete(id);
          break;
        }
      }
    }
    this.tombstones.set(snapshotId, tomb);
  }

  private ready(entry: Entry, echoSentAtMs: number, nowMs: number): ParticipantEffect {
    return {
      kind: "send",
      to: entry.coordinator,
      msg: {
        type: "snap.ready",
        snapshotId: entry.snapshotId,
        prepareNonce: entry.prepareNonce,
        clockMs: nowMs,
        echoSentAtMs,
        clockResolutionMs: this.config.clockResolutionMs,
      },
    };
  }
}

