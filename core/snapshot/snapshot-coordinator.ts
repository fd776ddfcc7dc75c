// The snapshot coordinator: drives prepare -> take -> commit across the participants of one
// snapshot, and owns the durable commit decision. A pure state machine (no sockets, timers or
// clock reads): the node feeds it messages, ticks and peer-down notices and carries out the
// effects it returns, in order. Presumed abort: a snapshot this node has no record of was aborted.
import { ShoalError, errorFromWire } from "../errors.ts";
import { commitWaits, offsetBounds, type OffsetSample } from "./clock-offset.ts";
import type {
  AbortMessage,
  CoordinatorRecord,
  HoldReport,
  NodeId,
  SnapshotMessage,
  SnapshotMode,
  ToParticipantMessage,
  WireError,
} from "./snapshot-messages.ts";

export const DEFAULT_HOLD_TIMEOUT_MS = 2000;

export interface CoordinatorConfig {
  nodeId: NodeId;
  /** Snapshots in prepare or take at once on this coordinator. */
  maxActiveSnapshots: number;
  /** Committed snapshots still waiting for some participant's acknowledgement. */
  maxLingeringSnapshots: number;
  maxVolumesPerSnapshot: number;
  maxParticipants: number;
  /** First resend interval for prepare, take, commit and abort; doubles per resend for decisions. */
  retryIntervalMs: number;
  maxRetryIntervalMs: number;
  /** Sends of a decision (commit/abort) before relying on the participants' own questions. */
  maxDeliveryAttempts: number;
  /**
   * Timestamp mode: the most slack added to the measured lead when picking T (see planCut), used
   * at first and again after a take arrived late; each snapshot that commits halves the slack in
   * use, down to minCutMarginMs.
   */
  cutMarginMs: number;
  minCutMarginMs: number;
  /** Timestamp mode: never pick T further ahead than this; a slower network fails the snapshot. */
  maxCutLeadMs: number;
  /** How coarse this node's clock readings are; offset bounds are widened by it. */
  clockResolutionMs: number;
}

export const DEFAULT_COORDINATOR_CONFIG: Omit<CoordinatorConfig, "nodeId"> = {
  maxActiveSnapshots: 16,
  maxLingeringSnapshots: 256,
  maxVolumesPerSnapshot: 256,
  maxParticipants: 1024,
  retryIntervalMs: 200,
  maxRetryIntervalMs: 5000,
  maxDeliveryAttempts: 10,
  cutMarginMs: 20,
  minCutMarginMs: 2,
  maxCutLeadMs: 1000,
  clockResolutionMs: 1,
};

export interface SnapshotRequest {
  /** Unique across the cluster and across restarts, e.g. `${nodeId}.${bootId}.${counter}`. */
  snapshotId: string;
  name: string;
  volumes: string[];
  mode: SnapshotMode;
  /** Every node owning a page of any of the volumes (the coordinator itself if it owns one). */
  participants: NodeId[];
  holdTimeoutMs?: number;
  maxClockSkewMs: number;
  nowMs: number;
  /**
   * Split phases for scripts that quiesce an application in between: once every participant is
   * ready the coordinator reports `ready` and waits for `take()` (or `release()` to abort) until
   * the hold timeout, instead of taking at once.
   */
  manualTake?: boolean;
  /** Routing version of each volume the participants were chosen by; a participant on another refuses. */
  routingVersions?: Record<string, number>;
}

export interface SnapshotResult {
  snapshotId: string;
  name: string;
  volumes: string[];
  mode: SnapshotMode;
  participants: NodeId[];
  startedAtMs: number;
  /**
   * The cut instant T on the coordinator's clock. Timestamp mode: the planned T (real cut within
   * its skew bound). Hold mode: when take was sent, an instant at which every participant held.
   */
  cutAtMs?: number;
  /** Participants that had not yet acknowledged the commit; they make it visible when they learn of it. */
  pendingOn: NodeId[];
  /** Hold mode: what the hold cost each participant's clients, as each reported it. */
  holds?: Record<NodeId, HoldReport>;
}

export type CoordinatorEffect =
  | { kind: "send"; to: NodeId; msg: ToParticipantMessage }
  /** Make the record durable before carrying out any later effect of the same batch. */
  | { kind: "persist"; record: CoordinatorRecord }
  | { kind: "unpersist"; snapshotId: string }
  | { kind: "done"; snapshotId: string; ok: true; result: SnapshotResult }
  | { kind: "done"; snapshotId: string; ok: false; error: ShoalError }
  /** manualTake only: every participant is ready (holding, in hold mode); call take() or release(). */
  | { kind: "ready"; snapshotId: string };

type Phase = "preparing" | "taking" | "committing" | "aborting";

interface ReadyInfo {
  prepareNonce: string;
  clockMs: number;
  echoSentAtMs: number;
  receivedAtMs: number;
  clockResolutionMs?: number;
}

interface Attempt {
  record: CoordinatorRecord;
  manualTake: boolean;
  /** manualTake: every participant answered ready; take() may start the take. */
  allReady: boolean;
  holdTimeoutMs: number;
  maxClockSkewMs: number;
  phase: Phase;
  /** Prepare/take must finish by then (coordinator clock). */
  deadlineMs: number;
  ready: Map<NodeId, ReadyInfo>;
  taken: Set<NodeId>;
  /** Timestamp mode: participants that said they cut (taken ones did too); allcut went out once all had. */
  cut: Set<NodeId>;
  allCutSent: boolean;
  holds: Map<NodeId, HoldReport>;
  acked: Set<NodeId>;
  nextSendAtMs: number;
  sendIntervalMs: number;
  deliveryAttempts: number;
  doneEmitted: boolean;
  abortReason?: WireError;
}

const NONE: CoordinatorEffect[] = [];

export class SnapshotCoordinator {
  readonly config: CoordinatorConfig;
  private readonly attempts = new Map<string, Attempt>();
  /** The slack planCut adds now: adapts between config.minCutMarginMs and config.cutMarginMs. */
  private cutMarginNowMs: number;

  constructor(config: Partial<CoordinatorConfig> & { nodeId: NodeId }) {
    this.config = { ...DEFAULT_COORDINATOR_CONFIG, ...config };
    this.cutMarginNowMs = this.config.cutMarginMs;
  }

  startSnapshot(req: SnapshotRequest): CoordinatorEffect[] {
    const refusal = this.refuseStart(req);
    if (refusal) return [{ kind: "done", snapshotId: req.snapshotId, ok: false, error: refusal }];
    const holdTimeoutMs = req.holdTimeoutMs ?? DEFAULT_HOLD_TIMEOUT_MS;
    const record: CoordinatorRecord = {
      snapshotId: req.snapshotId,
      name: req.name,
      volumes: [...req.volumes],
      mode: req.mode,
      participants: [...req.participants],
      // Times operators see are whole milliseconds (scripts do integer arithmetic on them).
      startedAtMs: Math.floor(req.nowMs),
      state: "started",
      ...(req.routingVersions ? { routingVersions: { ...req.routingVersions } } : {}),
    };
    const attempt = newAttempt(record, holdTimeoutMs, req.maxClockSkewMs, "preparing", req.nowMs + holdTimeoutMs);
    attempt.manualTake = req.manualTake === true;
    attempt.nextSendAtMs = req.nowMs + this.config.retryIntervalMs;
    this.attempts.set(req.snapshotId, attempt);
    return [{ kind: "persist", record }, ...this.sendPrepare(attempt, record.participants, req.nowMs)];
  }

  onMessage(from: NodeId, msg: SnapshotMessage, nowMs: number): CoordinatorEffect[] {
    switch (msg.type) {
      case "snap.ready":
        return this.onReady(from, msg.snapshotId, { ...msg, receivedAtMs: nowMs }, nowMs);
      case "snap.taken":
        return this.onTaken(from, msg.snapshotId, nowMs, msg.hold);
      case "snap.cut":
        return this.onCut(from, msg.snapshotId);
      case "snap.refuse":
        return this.onRefuse(from, msg.snapshotId, msg.error, nowMs);
      case "snap.ack":
        return this.onAck(from, msg.snapshotId, msg.outcome);
      default:
        return NONE; // participant-bound messages are not ours
    }
  }

  onTick(nowMs: number): CoordinatorEffect[] {
    const effects: CoordinatorEffect[] = [];
    for (const attempt of [...this.attempts.values()]) effects.push(...this.tickAttempt(attempt, nowMs));
    return effects;
  }

  /** A participant is gone: an undecided snapshot cannot complete, so fail it now rather than at the deadline. */
  onPeerDown(node: NodeId, nowMs: number): CoordinatorEffect[] {
    const effects: CoordinatorEffect[] = [];
    for (const attempt of [...this.attempts.values()]) {
      if (!isUndecided(attempt) || !attempt.record.participants.includes(node)) continue;
      const error = new ShoalError("NODE_DOWN", `participant ${node} of snapshot '${attempt.record.name}' went down; retry when it is back`);
      effects.push(...this.abort(attempt, error, nowMs));
    }
    return effects;
  }

  /**
   * Call once on a fresh coordinator with every persisted record. A snapshot not committed before
   * the crash is aborted (participants are told to discard); a committed one is delivered again.
   */
  recover(records: CoordinatorRecord[], nowMs: number): CoordinatorEffect[] {
    const effects: CoordinatorEffect[] = [];
    for (const record of records) {
      const attempt = newAttempt(record, 0, 0, "preparing", nowMs);
      this.attempts.set(record.snapshotId, attempt);
      if (record.state === "committed") {
        attempt.phase = "committing";
        effects.push(...this.deliver(attempt, nowMs, true));
      } else {
        const error = new ShoalError("TIMEOUT", `coordinator ${this.config.nodeId} restarted before snapshot '${record.name}' committed; retry it`);
        effects.push(...this.abort(attempt, error, nowMs));
      }
    }
    return effects;
  }

  /** The earliest local time at which onTick has something to do; re-arm the node's single timer to it. */
  nextWakeAtMs(): number | undefined {
    let wakeAtMs = Infinity;
    for (const attempt of this.attempts.values()) {
      wakeAtMs = Math.min(wakeAtMs, attempt.nextSendAtMs);
      if (isUndecided(attempt)) wakeAtMs = Math.min(wakeAtMs, attempt.deadlineMs);
    }
    return wakeAtMs === Infinity ? undefined : wakeAtMs;
  }

  /** A snapshot is being prepared or taken: the clock offsets measured for it must stay true. */
  clockInUse(): boolean {
    for (const attempt of this.attempts.values()) if (isUndecided(attempt)) return true;
    return false;
  }

  /** For status output and tests: the snapshots this coordinator still tracks, by phase. */
  inspect(): { snapshotId: string; phase: Phase }[] {
    return [...this.attempts.values()].map((a) => ({ snapshotId: a.record.snapshotId, phase: a.phase }));
  }

  private refuseStart(req: SnapshotRequest): ShoalError | undefined {
    const c = this.config;
    const holdTimeoutMs = req.holdTimeoutMs ?? DEFAULT_HOLD_TIMEOUT_MS;
    if (this.attempts.has(req.snapshotId)) return new ShoalError("SNAPSHOT_EXISTS", `snapshot id ${req.snapshotId} is already in use on this coordinator`);
    if (req.mode !== "hold" && req.mode !== "timestamp") return new ShoalError("BAD_ARGUMENT", `snapshot mode must be 'hold' or 'timestamp', not '${String(req.mode)}'`);
    if (req.volumes.length === 0 || req.volumes.length > c.maxVolumesPerSnapshot) return new ShoalError("BAD_ARGUMENT", `a snapshot takes 1 to ${c.maxVolumesPerSnapshot} volumes`);
    if (new Set(req.volumes).size !== req.volumes.length) return new ShoalError("BAD_ARGUMENT", "a volume is listed twice in the snapshot request");
    if (req.participants.length === 0 || req.participants.length > c.maxParticipants) return new ShoalError("BAD_ARGUMENT", `a snapshot has 1 to ${c.maxParticipants} participants`);
    if (new Set(req.participants).size !== req.participants.length) return new ShoalError("BAD_ARGUMENT", "a participant is listed twice");
    if (!(req.maxClockSkewMs >= 0)) return new ShoalError("BAD_ARGUMENT", "maxClockSkewMs must be zero or more");
    // Holds end 2 * skew early so that real time held stays within the timeout; leave them room.
    if (!(holdTimeoutMs > 4 * req.maxClockSkewMs)) return new ShoalError("BAD_ARGUMENT", `holdTimeoutMs (${holdTimeoutMs}) must exceed 4 * maxClockSkewMs (${4 * req.maxClockSkewMs})`);
    const active = [...this.attempts.values()].filter(isUndecided).length;
    if (active >= c.maxActiveSnapshots) return new ShoalError("CONFLICT", `${active} snapshots are already in progress on node ${c.nodeId}; retry when one finishes`);
    const lingering = this.attempts.size - active;
    if (lingering >= c.maxLingeringSnapshots) return new ShoalError("CONFLICT", `${lingering} finished snapshots still wait for participants to acknowledge; bring those nodes back first`);
    return undefined;
  }

  private onReady(from: NodeId, snapshotId: string, info: ReadyInfo, nowMs: number): CoordinatorEffect[] {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt) return [presumedAbort(from, snapshotId)];
    if (!attempt.record.participants.includes(from)) return NONE;
    if (attempt.phase === "aborting") return [sendAbort(from, attempt)];
    if (attempt.phase !== "preparing" || attempt.ready.has(from)) return NONE;
    attempt.ready.set(from, info);
    if (attempt.ready.size < attempt.record.participants.length) return NONE;
    if (attempt.manualTake) {
      attempt.allReady = true;
      return [{ kind: "ready", snapshotId }];
    }
    return this.startTake(attempt, nowMs);
  }

  /** manualTake: take now. Fails with the reason when the snapshot is not ready (or gone). */
  take(snapshotId: string, nowMs: number): CoordinatorEffect[] {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt || attempt.phase !== "preparing" || !attempt.allReady) {
      throw new ShoalError("CONFLICT", `snapshot ${snapshotId} is not prepared on this coordinator (it finished, failed, or timed out)`);
    }
    return this.startTake(attempt, nowMs);
  }

  /** manualTake: before take, abort and release everyone; after take, nothing is left to do. */
  release(snapshotId: string, nowMs: number): CoordinatorEffect[] {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt || attempt.phase !== "preparing") return NONE;
    return this.abort(attempt, new ShoalError("CONFLICT", `snapshot '${attempt.record.name}' was released before take`), nowMs);
  }

  private startTake(attempt: Attempt, nowMs: number): CoordinatorEffect[] {
    if (attempt.record.mode === "timestamp") {
      const plan = planCut(attempt, nowMs, this.config, Math.min(this.cutMarginNowMs, this.config.cutMarginMs));
      if (plan instanceof ShoalError) return this.abort(attempt, plan, nowMs);
      attempt.record.cutAtMs = plan;
      // Participants cut by T + skew in real time; give the taken replies a full timeout after that.
      attempt.deadlineMs = plan + 2 * attempt.maxClockSkewMs + attempt.holdTimeoutMs;
    } else {
      // Every participant said ready and holds until this take reaches it (a lapsed hold refuses
      // the take), so now is an instant at which all of them hold: the cut's T, reported in whole
      // milliseconds as a millisecond clock would read it.
      attempt.record.cutAtMs = Math.floor(nowMs);
    }
    attempt.phase = "taking";
    attempt.nextSendAtMs = nowMs + this.config.retryIntervalMs;
    return this.sendTake(attempt, attempt.record.participants);
  }

  private onTaken(from: NodeId, snapshotId: string, nowMs: number, hold: HoldReport | undefined): CoordinatorEffect[] {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt) return [presumedAbort(from, snapshotId)];
    if (!attempt.record.participants.includes(from)) return NONE;
    switch (attempt.phase) {
      case "preparing":
        return NONE;
      case "aborting":
        return [sendAbort(from, attempt)];
      case "committing":
        return attempt.acked.has(from) ? NONE : [sendCommit(from, attempt)];
      case "taking":
        attempt.taken.add(from);
        if (isHoldReport(hold)) attempt.holds.set(from, hold);
        if (attempt.taken.size < attempt.record.participants.length) return NONE;
        return this.commit(attempt, nowMs);
    }
  }

  /** Timestamp mode: once every participant has cut, tell them all, so acks stop commit-waiting. */
  private onCut(from: NodeId, snapshotId: string): CoordinatorEffect[] {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt || attempt.phase !== "taking" || attempt.allCutSent || !attempt.record.participants.includes(from)) return NONE;
    attempt.cut.add(from);
    if (!attempt.record.participants.every((p) => attempt.cut.has(p) || attempt.taken.has(p))) return NONE;
    attempt.allCutSent = true;
    return attempt.record.participants.map((to) => ({ kind: "send" as const, to, msg: { type: "snap.allcut" as const, snapshotId } }));
  }

  private onRefuse(from: NodeId, snapshotId: string, error: WireError, nowMs: number): CoordinatorEffect[] {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt || !isUndecided(attempt) || !attempt.record.participants.includes(from)) return NONE;
    const cause = errorFromWire(error);
    // A take that reached its participant at or after T (or too late to be waited for) says the
    // lead was short: back to the full margin until snapshots commit again.
    if (attempt.phase === "taking" && cause.code === "TIMEOUT") this.cutMarginNowMs = this.config.cutMarginMs;
    const wrapped = new ShoalError(cause.code, `participant ${from} refused snapshot '${attempt.record.name}': ${cause.message}`);
    return this.abort(attempt, wrapped, nowMs);
  }

  private onAck(from: NodeId, snapshotId: string, outcome: "committed" | "aborted"): CoordinatorEffect[] {
    const attempt = this.attempts.get(snapshotId);
    if (!attempt) return NONE;
    const expected = attempt.phase === "committing" ? "committed" : attempt.phase === "aborting" ? "aborted" : undefined;
    if (outcome !== expected || !attempt.record.participants.includes(from)) return NONE;
    attempt.acked.add(from);
    if (attempt.acked.size < attempt.record.participants.length) return NONE;
    this.attempts.delete(snapshotId);
    if (attempt.phase === "aborting") return NONE; // the record went when the abort was decided
    const effects: CoordinatorEffect[] = [{ kind: "unpersist", snapshotId }];
    if (!attempt.doneEmitted) effects.push(doneOk(attempt));
    return effects;
  }

  /** The decision point: once the record says committed, the snapshot exists, whatever crashes next. */
  private commit(attempt: Attempt, nowMs: number): CoordinatorEffect[] {
    if (attempt.record.mode === "timestamp") this.cutMarginNowMs = Math.max(this.config.minCutMarginMs, this.cutMarginNowMs / 2);
    attempt.phase = "committing";
    attempt.record = { ...attempt.record, state: "committed" };
    return [{ kind: "persist", record: attempt.record }, ...this.deliver(attempt, nowMs, true)];
  }

  private abort(attempt: Attempt, error: ShoalError, nowMs: number): CoordinatorEffect[] {
    attempt.phase = "aborting";
    attempt.abortReason = error.toWire();
    attempt.acked.clear();
    // Forget first: from here on presumed abort answers any question about this snapshot.
    const effects: CoordinatorEffect[] = [{ kind: "unpersist", snapshotId: attempt.record.snapshotId }];
    if (!attempt.doneEmitted) {
      attempt.doneEmitted = true;
      effects.push({ kind: "done", snapshotId: attempt.record.snapshotId, ok: false, error });
    }
    return [...effects, ...this.deliver(attempt, nowMs, true)];
  }

  private tickAttempt(attempt: Attempt, nowMs: number): CoordinatorEffect[] {
    if (isUndecided(attempt) && nowMs >= attempt.deadlineMs) {
      const missing = attempt.record.participants.filter((p) => !(attempt.phase === "preparing" ? attempt.ready.has(p) : attempt.taken.has(p)));
      const error = new ShoalError("TIMEOUT", `snapshot '${attempt.record.name}' timed out waiting for ${missing.join(", ")} to ${attempt.phase === "preparing" ? "prepare" : "take"}`);
      return this.abort(attempt, error, nowMs);
    }
    if (nowMs < attempt.nextSendAtMs) return NONE;
    if (attempt.phase === "preparing") {
      attempt.nextSendAtMs = nowMs + this.config.retryIntervalMs;
      return this.sendPrepare(attempt, attempt.record.participants.filter((p) => !attempt.ready.has(p)), nowMs);
    }
    if (attempt.phase === "taking") {
      attempt.nextSendAtMs = nowMs + this.config.retryIntervalMs;
      return this.sendTake(attempt, attempt.record.participants.filter((p) => !attempt.taken.has(p)));
    }
    return this.deliver(attempt, nowMs, false);
  }

  /** Sends (or resends) the decision to participants that have not acknowledged it, with backoff. */
  private deliver(attempt: Attempt, nowMs: number, first: boolean): CoordinatorEffect[] {
    if (first) {
      attempt.deliveryAttempts = 0;
      attempt.sendIntervalMs = this.config.retryIntervalMs;
    }
    if (attempt.deliveryAttempts >= this.config.maxDeliveryAttempts) return this.giveUpDelivery(attempt);
    attempt.deliveryAttempts++;
    attempt.nextSendAtMs = nowMs + attempt.sendIntervalMs;
    attempt.sendIntervalMs = Math.min(attempt.sendIntervalMs * 2, this.config.maxRetryIntervalMs);
    const targets = attempt.record.participants.filter((p) => !attempt.acked.has(p));
    return targets.map((p) => (attempt.phase === "committing" ? sendCommit(p, attempt) : sendAbort(p, attempt)));
  }

  /**
   * Stop pushing. An abort is forgotten (presumed abort answers later questions); a commit stays
   * recorded and lingers, answering the participants' own questions until every one has acknowledged.
   */
  private giveUpDelivery(attempt: Attempt): CoordinatorEffect[] {
    attempt.nextSendAtMs = Infinity;
    if (attempt.phase === "aborting") {
      this.attempts.delete(attempt.record.snapshotId);
      return NONE;
    }
    if (attempt.doneEmitted) return NONE;
    return [doneOk(attempt)];
  }

  private sendPrepare(attempt: Attempt, targets: NodeId[], nowMs: number): CoordinatorEffect[] {
    const r = attempt.record;
    return targets.map((to) => ({
      kind: "send" as const,
      to,
      msg: {
        type: "snap.prepare" as const,
        snapshotId: r.snapshotId,
        name: r.name,
        volumes: r.volumes,
        mode: r.mode,
        startedAtMs: r.startedAtMs,
        sentAtMs: nowMs,
        holdTimeoutMs: attempt.holdTimeoutMs,
        maxClockSkewMs: attempt.maxClockSkewMs,
        ...(r.routingVersions ? { routingVersions: r.routingVersions } : {}),
      },
    }));
  }

  private sendTake(attempt: Attempt, targets: NodeId[]): CoordinatorEffect[] {
    const r = attempt.record;
    // Timestamp mode: each participant's commit wait, from the offsets the ready round trips measured.
    const waits = r.mode === "timestamp" && r.cutAtMs !== undefined ? commitWaits(offsetSamples(attempt), r.cutAtMs, attempt.maxClockSkewMs, this.config.clockResolutionMs) : undefined;
    return targets.map((to) => ({
      kind: "send" as const,
      to,
      msg: {
        type: "snap.take" as const,
        snapshotId: r.snapshotId,
        prepareNonce: attempt.ready.get(to)!.prepareNonce,
        ...(r.cutAtMs === undefined || r.mode !== "timestamp" ? {} : { cutAtMs: r.cutAtMs }),
        ...(waits?.has(to) ? { commitWaitMs: waits.get(to)! } : {}),
      },
    }));
  }
}

function newAttempt(record: CoordinatorRecord, holdTimeoutMs: number, maxClockSkewMs: number, phase: Phase, deadlineMs: number): Attempt {
  return {
    record,
    holdTimeoutMs,
    maxClockSkewMs,
    phase,
    deadlineMs,
    ready: new Map(),
    taken: new Set(),
    cut: new Set(),
    allCutSent: false,
    holds: new Map(),
    acked: new Set(),
    nextSendAtMs: Infinity,
    sendIntervalMs: 0,
    deliveryAttempts: 0,
    doneEmitted: false,
    manualTake: false,
    allReady: false,
  };
}

function isUndecided(attempt: Attempt): boolean {
  return attempt.phase === "preparing" || attempt.phase === "taking";
}

/**
 * Picks the cut time T on this clock: far enough ahead that take reaches every participant before
 * its clock reads T. A take sent now reaches P at our now + d, when P's clock reads at most
 * now + d + high(P) (its offset bound from the prepare exchange, see clock-offset.ts); d is taken
 * as P's measured round trip plus `marginMs`. Without the measured bound P's offset is taken as
 * 2 * skew, as before; the smaller of the two is used.
 *
 * Why a short lead stays safe: the lead never decides which writes fall into the snapshot. A
 * participant that receives the take when its clock already reads T refuses it (participant's
 * arm(): writes stamped >= T may already be applied there), the coordinator aborts, and no
 * participant keeps a cut; so a lead that proves too short costs one failed create (and puts the
 * margin back to its maximum), never a snapshot that is not one instant.
 *
 * Also rejects readings that prove some clock is outside the skew bound: a participant read its
 * clock between our send and our receive, so it must lie within [sent - 2e, received + 2e].
 */
function planCut(attempt: Attempt, nowMs: number, config: CoordinatorConfig, marginMs: number): number | ShoalError {
  const skewMs = attempt.maxClockSkewMs;
  let maxRoundTripMs = 0;
  let measuredLeadMs = 0;
  for (const [node, info] of attempt.ready) {
    if (info.clockMs < info.echoSentAtMs - 2 * skewMs || info.clockMs > info.receivedAtMs + 2 * skewMs) {
      const offsetMs = Math.round(info.clockMs - (info.echoSentAtMs + info.receivedAtMs) / 2);
      return new ShoalError("CLOCK_SKEW", `node ${node}'s clock is about ${offsetMs} ms off this node's, beyond the ${skewMs} ms bound; fix time sync (chrony/NTP) and retry`);
    }
    const roundTripMs = info.receivedAtMs - info.echoSentAtMs;
    maxRoundTripMs = Math.max(maxRoundTripMs, roundTripMs);
    const sample = { sentAtMs: info.echoSentAtMs, clockMs: info.clockMs, receivedAtMs: info.receivedAtMs, clockResolutionMs: resolutionOf(info) };
    measuredLeadMs = Math.max(measuredLeadMs, roundTripMs + offsetBounds(sample, config.clockResolutionMs).highMs);
  }
  const leadMs = Math.min(maxRoundTripMs + 2 * skewMs, measuredLeadMs) + marginMs;
  if (leadMs > config.maxCutLeadMs) {
    return new ShoalError("TIMEOUT", `round trips of ${Math.round(maxRoundTripMs)} ms plus skew allowance exceed the ${config.maxCutLeadMs} ms cut lead; the network is too slow for a timestamp snapshot now`);
  }
  return Math.ceil(nowMs + leadMs); // a whole millisecond, as reported
}

function resolutionOf(info: ReadyInfo): number {
  return typeof info.clockResolutionMs === "number" && info.clockResolutionMs >= 0 ? info.clockResolutionMs : 1;
}

function offsetSamples(attempt: Attempt): Map<NodeId, OffsetSample> {
  const samples = new Map<NodeId, OffsetSample>();
  for (const [node, info] of attempt.ready) {
    samples.set(node, { sentAtMs: info.echoSentAtMs, clockMs: info.clockMs, receivedAtMs: info.receivedAtMs, clockResolutionMs: resolutionOf(info) });
  }
  return samples;
}

function presumedAbort(to: NodeId, snapshotId: string): CoordinatorEffect {
  const reason = { code: "UNKNOWN_SNAPSHOT" as const, message: `snapshot ${snapshotId} is not in progress on its coordinator (aborted or restarted)` };
  return { kind: "send", to, msg: { type: "snap.abort", snapshotId, reason } satisfies AbortMessage };
}

function sendAbort(to: NodeId, attempt: Attempt): CoordinatorEffect {
  const reason = attempt.abortReason ?? { code: "INTERNAL", message: "aborted" };
  return { kind: "send", to, msg: { type: "snap.abort", snapshotId: attempt.record.snapshotId, reason } };
}

function sendCommit(to: NodeId, attempt: Attempt): CoordinatorEffect {
  return { kind: "send", to, msg: { type: "snap.commit", snapshotId: attempt.record.snapshotId } };
}

function doneOk(attempt: Attempt): CoordinatorEffect {
  attempt.doneEmitted = true;
  const r = attempt.record;
  const result: SnapshotResult = {
    snapshotId: r.snapshotId,
    name: r.name,
    volumes: r.volumes,
    mode: r.mode,
    participants: r.participants,
    startedAtMs: r.startedAtMs,
    ...(r.cutAtMs === undefined ? {} : { cutAtMs: r.cutAtMs }),
    pendingOn: r.participants.filter((p) => !attempt.acked.has(p)),
    ...(attempt.holds.size > 0 ? { holds: Object.fromEntries(attempt.holds) } : {}),
  };
  return { kind: "done", snapshotId: r.snapshotId, ok: true, result };
}

/** A peer's report is shown to operators, never trusted for anything else: keep it only if well formed. */
function isHoldReport(hold: unknown): hold is HoldReport {
  if (typeof hold !== "object" || hold === null) return false;
  const { heldMs, queued, longestWaitMs } = hold as Record<string, unknown>;
  return [heldMs, queued, longestWaitMs].every((n) => typeof n === "number" && Number.isFinite(n) && n >= 0);
}
