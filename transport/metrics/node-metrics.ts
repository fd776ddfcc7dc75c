// What a node counts for `--metrics`: NBD requests and bytes by op, page requests by op and path
// (local, forwarded to the owner, served for a peer), latencies, in-flight requests, snapshot
// phases and holds, and gauges read from state at scrape time (volumes, peers, connections, moves).
// One process runs one node, so the data path reaches its counters through `nodeMetrics` instead
// of threading a registry through every constructor; every child is resolved once, up front.
import { Counter, type Gauge, Histogram, LATENCY_BUCKETS_SECONDS, MetricsRegistry } from "../../core/metrics.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import type { HoldReport } from "../../core/snapshot/snapshot-messages.ts";
import { volumeUsageOn } from "../../core/snapshot/snapshot-record.ts";
import type { Group } from "../mesh/group.ts";

/** NBD command types (NBD_CMD_*) by their wire number, as metric label values. */
const NBD_OPS = ["read", "write", "disc", "flush", "trim", "cache", "write_zeroes", "block_status"] as const;

export type PageOp = "read" | "write" | "zero";
/** local: this node owns the page; forwarded: sent to its owner; peer: served for another node. */
export type PagePath = "local" | "forwarded" | "peer";

type PageCounters = Record<PageOp, Record<PagePath, { requests: Counter; bytes: Counter }>>;

/** Bounds the snapshot start times kept; a snapshot never finished must not leak an entry. */
const MAX_TRACKED_SNAPSHOTS = 1024;

export class NodeMetrics {
  readonly registry = new MetricsRegistry();

  private readonly nbdRequests: Counter[] = [];
  private readonly nbdErrors: Counter[] = [];
  private readonly nbdBytes: Counter[] = [];
  private readonly nbdLatency: Histogram[] = [];
  readonly nbdInFlight: Gauge;
  readonly nbdViolations: Counter;
  readonly meshBadFrames: Counter;
  private readonly pages: PageCounters;

  private readonly snapshotPhase;
  private readonly snapshotResults;
  private readonly snapshotHold: Histogram;
  private readonly commitWait: Histogram;
  /** Timestamp-mode cuts made here whose commit wait is running, by snapshot id: when it began. */
  private readonly commitWaitFromMs = new Map<string, number>();
  private readonly snapshotStartedMs = new Map<string, number>();
  private readonly snapshotReadyMs = new Map<string, number>();
  private readonly snapshotTakingMs = new Map<string, number>();
  /** When every participant had answered taken (the decision's record was written), and when that record was durable. */
  private readonly snapshotAllTakenMs = new Map<string, number>();
  private readonly snapshotDecidedMs = new Map<string, number>();
  private readonly participantStep;
  /** Participant side: when this node cut, or received the commit, by snapshot id. */
  private readonly cutAtMs = new Map<string, number>();
  private readonly commitReceivedMs = new Map<string, number>();

  readonly movePagesTotal;
  readonly movePagesDone;

  constructor() {
    const r = this.registry;
    const requests = r.counter("shoal_nbd_requests_total", "NBD requests completed, by command", ["op"]);
    const errors = r.counter("shoal_nbd_request_errors_total", "NBD requests answered with an error by the device, by command", ["op"]);
    const bytes = r.counter("shoal_nbd_bytes_total", "NBD payload bytes read or written, by command", ["op"]);
    const latency = r.histogram("shoal_nbd_request_duration_seconds", "NBD request time from execution start to reply, by command", ["op"]);
    for (const op of NBD_OPS) {
      // DISC never completes as a request and CACHE is not served: they are not exposed.
      const served = op !== "disc" && op !== "cache";
      this.nbdRequests.push(served ? requests.with(op) : new Counter());
      this.nbdErrors.push(served ? errors.with(op) : new Counter());
      this.nbdBytes.push(served ? bytes.with(op) : new Counter());
      this.nbdLatency.push(served ? latency.with(op) : new Histogram(LATENCY_BUCKETS_SECONDS));
    }
    this.nbdInFlight = r.gauge("shoal_nbd_requests_in_flight", "NBD requests admitted and not yet answered").with();
    this.nbdViolations = r.counter("shoal_nbd_protocol_violations_total", "NBD clients disconnected for breaking the protocol").with();
    this.meshBadFrames = r.counter("shoal_mesh_bad_frames_total", "mesh connections dropped for a malformed frame").with();

    const pageRequests = r.counter("shoal_page_requests_total", "page requests by op and path (local, forwarded to the owner, served for a peer)", ["op", "path"]);
    const pageBytes = r.counter("shoal_page_bytes_total", "page bytes by op and path (local, forwarded to the owner, served for a peer)", ["op", "path"]);
    const byPath = (op: PageOp) => {
      const entry = (path: PagePath) => ({ requests: pageRequests.with(op, path), bytes: pageBytes.with(op, path) });
      return { local: entry("local"), forwarded: entry("forwarded"), peer: entry("peer") };
    };
    this.pages = { read: byPath("read"), write: byPath("write"), zero: byPath("zero") };

    this.snapshotPhase = r.histogram(
      "shoal_snapshot_phase_seconds",
      "snapshots coordinated here: prepare (start to every participant ready), take (take sent to done), total; take splits into taken (take sent to every participant taken), decide (the decision's record made durable), ack (commit sent to every participant's ack)",
      ["phase"],
    );
    this.participantStep = r.histogram(
      "shoal_snapshot_participant_seconds",
      "snapshot participants: cut_store (cut to its layers durable), cut (cut to layers and record durable: taken may leave), commit (commit received to its record durable: ack may leave)",
      ["step"],
    );
    this.snapshotResults = r.counter("shoal_snapshots_total", "snapshots coordinated here, by result", ["result"]);
    this.snapshotHold = r.histogram("shoal_snapshot_hold_seconds", "how long this node held a volume's requests for a hold-mode snapshot").with();
    this.commitWait = r
      .histogram("shoal_snapshot_commit_wait_seconds", "timestamp mode: from this node's cut until every participant's clock has read T (acks of writes applied meanwhile wait)")
      .with();

    this.movePagesTotal = r.gauge("shoal_move_pages_total", "pages a running route move of the volume has to move", ["volume"]);
    this.movePagesDone = r.gauge("shoal_move_pages_done", "pages a running route move of the volume has moved", ["volume"]);
  }

  // ---- data path (no allocation)

  /** An NBD request finished; `type` is its NBD_CMD_* number. */
  nbdDone(type: number, lengthBytes: number, startedMs: number, ok: boolean): void {
    const index = type < NBD_OPS.length ? type : 0;
    this.nbdRequests[index]!.inc();
    if (!ok) this.nbdErrors[index]!.inc();
    if (type <= 1) this.nbdBytes[index]!.inc(lengthBytes);
    this.nbdLatency[index]!.observe((performance.now() - startedMs) / 1000);
  }

  countPage(op: PageOp, path: PagePath, lengthBytes: number): void {
    const counters = this.pages[op][path];
    counters.requests.inc();
    counters.bytes.inc(lengthBytes);
  }

  // ---- snapshots (coordinator phases on the coordinator, holds on each participant)

  snapshotStarted(snapshotId: string): void {
    if (this.snapshotStartedMs.size >= MAX_TRACKED_SNAPSHOTS) {
      this.snapshotStartedMs.clear();
      this.snapshotReadyMs.clear();
      this.snapshotTakingMs.clear();
      this.snapshotAllTakenMs.clear();
      this.snapshotDecidedMs.clear();
    }
    this.snapshotStartedMs.set(snapshotId, performance.now());
  }

  /** Every participant is ready: the end of the prepare phase (idempotent). */
  snapshotReady(snapshotId: string): void {
    const startedMs = this.snapshotStartedMs.get(snapshotId);
    if (startedMs === undefined || this.snapshotReadyMs.has(snapshotId)) return;
    const nowMs = performance.now();
    this.snapshotReadyMs.set(snapshotId, nowMs);
    this.snapshotPhase.with("prepare").observe((nowMs - startedMs) / 1000);
  }

  /** The coordinator sends take: the take phase starts (for a split-phase snapshot, after the operator's pause). */
  snapshotTaking(snapshotId: string): void {
    this.snapshotReady(snapshotId);
    if (this.snapshotStartedMs.has(snapshotId) && !this.snapshotTakingMs.has(snapshotId)) this.snapshotTakingMs.set(snapshotId, performance.now());
  }

  /** Every participant answered taken: the coordinator writes its decision. */
  snapshotAllTaken(snapshotId: string): void {
    const takingMs = this.snapshotTakingMs.get(snapshotId);
    if (takingMs === undefined || this.snapshotAllTakenMs.has(snapshotId)) return;
    const nowMs = performance.now();
    this.snapshotAllTakenMs.set(snapshotId, nowMs);
    this.snapshotPhase.with("taken").observe((nowMs - takingMs) / 1000);
  }

  /** The decision's record is durable: commit goes out. */
  snapshotDecided(snapshotId: string): void {
    const allTakenMs = this.snapshotAllTakenMs.get(snapshotId);
    if (allTakenMs === undefined || this.snapshotDecidedMs.has(snapshotId)) return;
    const nowMs = performance.now();
    this.snapshotDecidedMs.set(snapshotId, nowMs);
    this.snapshotPhase.with("decide").observe((nowMs - allTakenMs) / 1000);
  }

  snapshotDone(snapshotId: string, ok: boolean): void {
    const startedMs = this.snapshotStartedMs.get(snapshotId);
    const takingMs = this.snapshotTakingMs.get(snapshotId);
    const decidedMs = this.snapshotDecidedMs.get(snapshotId);
    this.snapshotStartedMs.delete(snapshotId);
    this.snapshotReadyMs.delete(snapshotId);
    this.snapshotTakingMs.delete(snapshotId);
    this.snapshotAllTakenMs.delete(snapshotId);
    this.snapshotDecidedMs.delete(snapshotId);
    this.snapshotResults.with(ok ? "ok" : "failed").inc();
    if (startedMs === undefined || !ok) return;
    const nowMs = performance.now();
    if (takingMs !== undefined) this.snapshotPhase.with("take").observe((nowMs - takingMs) / 1000);
    if (decidedMs !== undefined) this.snapshotPhase.with("ack").observe((nowMs - decidedMs) / 1000);
    this.snapshotPhase.with("total").observe((nowMs - startedMs) / 1000);
  }

  /** This node cut its share of a snapshot; cutStored and cutDurable follow. */
  cutStarted(snapshotId: string): void {
    if (this.cutAtMs.size >= MAX_TRACKED_SNAPSHOTS) this.cutAtMs.clear();
    this.cutAtMs.set(snapshotId, performance.now());
  }

  /** The cut's layers are durable in the page store. */
  cutStored(snapshotId: string): void {
    const fromMs = this.cutAtMs.get(snapshotId);
    if (fromMs !== undefined) this.participantStep.with("cut_store").observe((performance.now() - fromMs) / 1000);
  }

  /** The cut's layers and record are durable: taken may leave. */
  cutDurable(snapshotId: string): void {
    const fromMs = this.cutAtMs.get(snapshotId);
    this.cutAtMs.delete(snapshotId);
    if (fromMs !== undefined) this.participantStep.with("cut").observe((performance.now() - fromMs) / 1000);
  }

  /** A participant received the commit; commitAcked follows once its record is durable. */
  commitReceived(snapshotId: string): void {
    if (this.commitReceivedMs.size >= MAX_TRACKED_SNAPSHOTS) this.commitReceivedMs.clear();
    if (!this.commitReceivedMs.has(snapshotId)) this.commitReceivedMs.set(snapshotId, performance.now());
  }

  commitAcked(snapshotId: string): void {
    const fromMs = this.commitReceivedMs.get(snapshotId);
    this.commitReceivedMs.delete(snapshotId);
    if (fromMs !== undefined) this.participantStep.with("commit").observe((performance.now() - fromMs) / 1000);
  }

  holdReleased(report: HoldReport): void {
    this.snapshotHold.observe(report.heldMs / 1000);
  }

  /** A timestamp-mode cut here: acknowledgements of writes applied from now on wait (see commitWaitEnded). */
  commitWaitStarted(snapshotId: string): void {
    if (this.commitWaitFromMs.size >= MAX_TRACKED_SNAPSHOTS) this.commitWaitFromMs.clear();
    this.commitWaitFromMs.set(snapshotId, performance.now());
  }

  commitWaitEnded(snapshotId: string): void {
    const fromMs = this.commitWaitFromMs.get(snapshotId);
    if (fromMs === undefined) return;
    this.commitWaitFromMs.delete(snapshotId);
    this.commitWait.observe((performance.now() - fromMs) / 1000);
  }

  // ---- route moves (called by the move code)

  /** Progress of a route move of `volume`: `donePages` of `totalPages` moved so far. */
  setMoveProgress(volume: string, donePages: number, totalPages: number): void {
    this.movePagesTotal.with(volume).set(totalPages);
    this.movePagesDone.with(volume).set(donePages);
  }

  /** The move of `volume` ended (finished or abandoned): its series go away. */
  removeMoveProgress(volume: string): void {
    this.movePagesTotal.remove(volume);
    this.movePagesDone.remove(volume);
  }
}

export const nodeMetrics = new NodeMetrics();

export interface NodeState {
  group: Group;
  store: PageStore;
  version: string;
  startedAtMs: number;
  nbdConnections: () => number;
  meshConnections: () => number;
}

/** Registers the gauges read from the node's state when a scrape comes. */
export function watchNodeState(metrics: NodeMetrics, state: NodeState): void {
  const r = metrics.registry;
  const info = r.gauge("shoal_build_info", "always 1; labels name this node and its version", ["node", "version"]);
  const uptime = r.gauge("shoal_uptime_seconds", "seconds since this node started").with();
  const memory = r.gauge("process_resident_memory_bytes", "resident memory of the node process").with();
  const heap = r.gauge("shoal_process_memory_bytes", "the node's memory by kind: JavaScript heap used and reserved, buffers outside it (array_buffers: received and pooled data, page maps)", ["kind"]);
  const nbdConnections = r.gauge("shoal_nbd_connections", "NBD client connections open").with();
  const meshConnections = r.gauge("shoal_mesh_connections", "inbound mesh connections open (peers and admin clients)").with();
  const peerUp = r.gauge("shoal_peer_up", "1 when the link to the member is up, else 0", ["peer"]);
  const heartbeatAge = r.gauge("shoal_peer_heartbeat_age_seconds", "seconds since the member last answered a heartbeat", ["peer"]);
  const peers = r.gauge("shoal_peers", "other members of the group by link state", ["state"]);
  const volumePages = r.gauge("shoal_volume_pages", "pages of the volume written on this node (its own layer, as `shoal volume info` WRITTEN)", ["volume"]);
  const volumeBytes = r.gauge("shoal_volume_bytes", "bytes the volume and its snapshots use on this node (as USED in `shoal volume info`)", ["volume"]);
  const dirtyBytes = r.gauge("shoal_store_dirty_bytes", "bytes written on this node that no write-back or FLUSH has taken yet (bounded by --dirty-limit; taken every --writeback-interval)").with();
  info.with(state.group.selfId, state.version).set(1);
  r.onCollect(() => {
    const nowMs = Date.now();
    uptime.set((nowMs - state.startedAtMs) / 1000);
    const usage = process.memoryUsage();
    memory.set(usage.rss);
    heap.with("heap_used").set(usage.heapUsed);
    heap.with("heap_total").set(usage.heapTotal);
    heap.with("external").set(usage.external);
    heap.with("array_buffers").set(usage.arrayBuffers);
    nbdConnections.set(state.nbdConnections());
    meshConnections.set(state.meshConnections());
    dirtyBytes.set(state.store.dirtyBytes);
    peerUp.clear();
    heartbeatAge.clear();
    let up = 0;
    for (const link of state.group.links.values()) {
      const isUp = link.state === "up";
      if (isUp) up++;
      peerUp.with(link.peerId).set(isUp ? 1 : 0);
      if (link.lastHeartbeatMs > 0) heartbeatAge.with(link.peerId).set((nowMs - link.lastHeartbeatMs) / 1000);
    }
    peers.with("up").set(up);
    peers.with("down").set(state.group.links.size - up);
    volumePages.clear();
    volumeBytes.clear();
    const layers = [...state.store.usage()];
    for (const record of state.group.liveVolumes()) {
      const usage = volumeUsageOn(layers, record.uid);
      if (usage.layers === 0) continue; // none of its pages here
      volumePages.with(record.name).set(usage.pagesWritten);
      volumeBytes.with(record.name).set(usage.bytesUsed);
    }
  });
}
