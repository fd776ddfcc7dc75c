// Decides one replica-set change: single-decree Paxos for the slot (volume, base.version + 1)
// among the base table's voters (every member of the group, unless a forget took some out: every
// proposer for the slot builds on the same chosen base, so all ask the same acceptors), as a pure state machine (effects out, replies and ticks in;
// the host owns sockets, timers, randomness and the clock).
//
// Why this is safe (the argument the simulation's checker tests, test/sim/replica-checker.ts):
//  * One value per slot. A value is chosen when a majority of members accepted it in one ballot;
//    any later ballot's phase 1 hears from a majority, so from one of them, which reports it
//    (records are durable before any reply) and the proposer must propose the accepted value of
//    the highest ballot it heard. Two partitions cannot both choose: each needs a majority.
//  * Writes need every replica. A write tagged with version t is acknowledged only when every
//    replica of t's set applied it at fence exactly t (fence.ts), and a member's fence only grows.
//  * At most one live version per group. Call version t dead when some replica of t's set has
//    recorded a newer version: no write under t can be acknowledged again. A change moves one
//    node in or out of each group it names, so t's and t+1's sets share a replica (a drop keeps a subset, an add a superset; a
//    replacement is two versions). Version t+1 is ACTIVE once every replica of its set recorded it;
//    the shared replica then kills t. Versions below t die by the precondition this proposer
//    keeps: it runs phase 2 for t+1 only after, in every group, a replica carried over from t-1
//    into t (carriedOver) reports that it recorded t, which kills t-1; induction gives the rest.
//    (Without it, {A} -> {A,B} -> {B} could activate {B} while A, cut off and never told of
//    {A,B}, still takes writes alone under the first.) So once t+1 is active no write under an
//    older version is acknowledged, and a write under t+1 cannot be acknowledged before t+1 is
//    active (it needs all of t+1's set at fence t+1). The design as briefed ("activate once every
//    new-set member recorded") lacked this precondition; the join rule below also implies it when
//    proposers are up-to-date replicas (set-change-policy.ts), but a proposer outside the set
//    (an operator's repair) would not be covered.
//  * Acknowledged writes survive. A replica that stays has every write acknowledged under the
//    versions it was in. A joining replica serves nothing for its group until an up-to-date
//    replica that recorded the join version sent it every chunk changed since the joiner last had
//    them (away-map.ts; every chunk when the sender keeps no valid map). The sender holds every
//    write acknowledged so far, refuses writes of versions older than the join from the moment it
//    recorded it, and writes of versions that include the joiner wait for the joiner; so no
//    acknowledged write falls between its copy and the join.
//  * Reads. A dropped replica that has not heard of its drop still believes in the old set; a
//    read it answers alone may be stale. So a read is valid only when every replica of the set it
//    was routed by confirms its fence at that version (fence.ts admit, the same rule as for writes): a dead version has a
//    replica that refuses. (A read lease that lets one replica answer alone is a later
//    optimisation: it must expire before a drop can be chosen.)
// Liveness: rejections and silence retry with a higher round after a backoff with injected
// jitter; a proposer that learns the slot is decided adopts the newer table and stops. Progress
// needs a majority of members up and, per group, one carried-over replica of the base version.
import { invariant } from "../invariant.ts";
import { compareBallots, type AcceptorReply, type Ballot } from "./acceptor.ts";
import { carriedOver, type ReplicaTable } from "./replica-table.ts";

export interface ProposerConfig {
  self: string;
  /**
   * The proposer part of this proposal's ballots, unique to it (the member's id, incarnation and
   * proposal count): a member proposes again for a slot after giving up, or after a restart, and
   * starts again at round 1. With its bare id the two proposals would share ballot (1, id) with
   * different values, and an acceptor holding the first value at that ballot answers "accepted"
   * to the second: a later proposer could then learn the first value while the second was
   * chosen. Absent: `self` (tests that run one proposal per member).
   */
  ballotId?: string;
  /** Every member of the group: the acceptors, in any order. */
  members: string[];
  /** How long one ballot waits for its replies before retrying higher. */
  attemptTimeoutMs: number;
  /** Base pause before a retry; the retry waits backoffMs * (1 + jitter()): two proposers duelling drift apart. */
  backoffMs: number;
  /** Uniform in [0, 1): the host's random source (seeded in the simulation). */
  jitter: () => number;
  /** After this many ballots the proposer gives up (the host proposes again later if still needed). */
  maxAttempts: number;
  /** Break rules on purpose, for the simulation's checker (never set outside tests). */
  sabotage?: ProposerSabotage;
}

export interface ProposerSabotage {
  /** Count a minority of acceptances (and promises) as enough. */
  minorityQuorum?: boolean;
  /** Propose our own value even when a promise reports one already accepted. */
  ignoreAccepted?: boolean;
}

export type ProposerEffect =
  | { kind: "prepare"; to: string[]; version: number; ballot: Ballot }
  | { kind: "accept"; to: string[]; version: number; ballot: Ballot; value: ReplicaTable }
  /** A majority accepted `table`: the host records it and tells every member (it may not be our own value). */
  | { kind: "chosen"; table: ReplicaTable }
  /** The slot was decided by others and a member knows a table of that version or newer: adopt it. */
  | { kind: "superseded"; table: ReplicaTable }
  | { kind: "gave-up"; attempts: number };

export type ProposerPhase = "prepare" | "accept" | "backoff" | "done";

export class SetChangeProposer {
  phase: ProposerPhase = "prepare";
  ballot: Ballot;
  attempts = 0;
  private deadlineMs = 0;
  private promises = new Map<string, { ballot: Ballot; value: ReplicaTable } | undefined>();
  private accepts = new Set<string>();
  /** The newest version each member reported having recorded (for the precondition). */
  private recorded = new Map<string, number>();
  private highestRoundSeen = 0;
  private proposing: ReplicaTable;

  constructor(
    private readonly config: ProposerConfig,
    /** The newest chosen table the host knows; the slot decided is base.version + 1. */
    readonly base: ReplicaTable,
    /** What the host wants chosen: base with one change (withChange). */
    readonly value: ReplicaTable,
    /**
     * Versions members are known to have recorded durably before this proposal (from their
     * tables heartbeats, which leave only after the records): the precondition may be met by a
     * replica that cannot answer now, say one paused right after it recorded the base.
     */
    knownRecorded: ReadonlyMap<string, number> = new Map(),
  ) {
    invariant(value.version === base.version + 1 && value.volume === base.volume, "a set change proposes the version after its base");
    this.ballot = { round: 0, proposer: config.ballotId ?? config.self };
    this.proposing = value;
    for (const [member, version] of knownRecorded) this.recorded.set(member, version);
    this.recorded.set(config.self, base.version);
  }

  get version(): number {
    return this.value.version;
  }

  start(nowMs: number): ProposerEffect[] {
    return this.nextBallot(nowMs);
  }

  onReply(from: string, reply: AcceptorReply, nowMs: number): ProposerEffect[] {
    if (this.phase === "done" || reply.version !== this.version) return [];
    if (reply.kind === "decided") return this.finish({ kind: "superseded", table: reply.table });
    this.recorded.set(from, Math.max(this.recorded.get(from) ?? 0, reply.recordedVersion));
    if (compareBallots(reply.ballot, this.ballot) !== 0) return [];
    switch (reply.kind) {
      case "refused":
        if (this.phase === "backoff") return [];
        this.highestRoundSeen = Math.max(this.highestRoundSeen, reply.promised.round);
        return this.backoff(nowMs);
      case "promise":
        if (this.phase !== "prepare") return [];
        this.promises.set(from, reply.accepted);
        return this.maybeAccept();
      case "accepted":
        if (this.phase !== "accept") return [];
        this.accepts.add(from);
        return this.accepts.size >= this.quorum() ? this.finish({ kind: "chosen", table: this.proposing }) : [];
    }
  }

  /** The host calls this at nextWakeAtMs(): a silent ballot retries higher; a backoff ends. */
  onTick(nowMs: number): ProposerEffect[] {
    if (this.phase === "done" || nowMs < this.deadlineMs) return [];
    if (this.phase === "backoff") return this.nextBallot(nowMs);
    return this.backoff(nowMs);
  }

  nextWakeAtMs(): number | undefined {
    return this.phase === "done" ? undefined : this.deadlineMs;
  }

  private quorum(): number {
    const majority = Math.floor(this.config.members.length / 2) + 1;
    return this.config.sabotage?.minorityQuorum ? Math.max(1, majority - 1) : majority;
  }

  private nextBallot(nowMs: number): ProposerEffect[] {
    if (this.attempts >= this.config.maxAttempts) return this.finish({ kind: "gave-up", attempts: this.attempts });
    this.attempts++;
    this.phase = "prepare";
    this.ballot = { round: Math.max(this.ballot.round, this.highestRoundSeen) + 1, proposer: this.config.ballotId ?? this.config.self };
    this.promises.clear();
    this.accepts.clear();
    this.deadlineMs = nowMs + this.config.attemptTimeoutMs;
    return [{ kind: "prepare", to: [...this.config.members], version: this.version, ballot: this.ballot }];
  }

  private backoff(nowMs: number): ProposerEffect[] {
    this.phase = "backoff";
    this.deadlineMs = nowMs + this.config.backoffMs * (1 + this.config.jitter());
    return [];
  }

  /** Phase 2 once a majority promised and the base's predecessor is known dead in every group. */
  private maybeAccept(): ProposerEffect[] {
    if (this.promises.size < this.quorum() || !this.predecessorDead()) return [];
    this.phase = "accept";
    this.proposing = this.config.sabotage?.ignoreAccepted ? this.value : this.highestAccepted() ?? this.value;
    return [{ kind: "accept", to: [...this.config.members], version: this.version, ballot: this.ballot, value: this.proposing }];
  }

  private highestAccepted(): ReplicaTable | undefined {
    let best: { ballot: Ballot; value: ReplicaTable } | undefined;
    for (const accepted of this.promises.values()) {
      if (accepted && (!best || compareBallots(accepted.ballot, best.ballot) > 0)) best = accepted;
    }
    return best?.value;
  }

  /** In every group some replica carried over into the base from the version before has recorded the base. */
  private predecessorDead(): boolean {
    if (this.base.version === 1) return true;
    return carriedOver(this.base).every((nodes) => nodes.some((node) => (this.recorded.get(node) ?? 0) >= this.base.version));
  }

  private finish(effect: ProposerEffect): ProposerEffect[] {
    this.phase = "done";
    return [effect];
  }
}
