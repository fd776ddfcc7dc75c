// The admin operations a node answers for the CLI (`shoal volume`, `shoal snap`, `shoal archive`,
// `route nodes/show`). Every member answers every one the same way: they read the group's catalog, which all members share.
import type { ReplicaHost } from "../node/replica-host.ts";
import { ShoalError } from "../../core/errors.ts";
import { DEFAULT_PAGE_SIZE_BYTES, pageCount } from "../../core/geometry.ts";
import type { PageStore, VolumeUsage } from "../../core/store/page-store.ts";
import { copiesMissing, copiesWhole, describeReplicaRuns, describeRuns, formatRun, holders, pagesPerNode, replicaCount, replicaPagesPerNode } from "../../core/cluster/routing.ts";
import { newVolumeRecord, type VolumeRecord } from "../../core/cluster/volume.ts";
import type { Group } from "../mesh/group.ts";
import { storeUsage, type VolumeRouter } from "../node/volume-router.ts";
import type { SnapshotService } from "../snapshot/snapshot-service.ts";
import type { CreateSnapshot } from "../snapshot/snapshot-requests.ts";
import type { SnapshotResult } from "../../core/snapshot/snapshot-coordinator.ts";
import { parseSnapshotRef, snapshotLayerId, volumeUsageOn } from "../../core/snapshot/snapshot-record.ts";
import type { AdminArgs, AdminResult } from "./admin-ops.ts";
import type { ArchivePlan, NodeInfo, NodePageRuns, NodeUsage, RouteShow, SnapshotTaken, VolumeInfo, VolumeState, VolumeSummary } from "./admin-results.ts";
import type { AdminHandlers } from "./admin-service.ts";

export interface AdminApiOptions {
  group: Group;
  store: PageStore;
  router: VolumeRouter;
  snapshots: SnapshotService;
  version: string;
  startedAtMs: number;
  /** Copies of each page of a volume created without --replicas (the node's --default-replicas). */
  defaultReplicas: number;
  replicaHost: ReplicaHost;
}

type Usage = Record<string, VolumeUsage & { exclusiveBytes?: number }>;

/** `route show` lists this many runs a node at most (a table moved page by page has millions). */
const RUNS_SHOWN_PER_NODE = 1000;

/** A prepare or take that reached someone too late (a stalled event loop, a slow link) failed cleanly: try again. */
const TIMEOUT_ATTEMPTS = 3;
/** Pages moved while the snapshot prepared (routing versions differed): try again on the new table. */
const STALE_ROUTE_ATTEMPTS = 20;

async function retrySnapshot<T>(attempt: () => Promise<T>): Promise<T> {
  let timeouts = 0;
  let stale = 0;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      const code = err instanceof ShoalError ? err.code : undefined;
      if (code === "TIMEOUT" && ++timeouts < TIMEOUT_ATTEMPTS) continue;
      if (code !== "STALE_ROUTE" || ++stale >= STALE_ROUTE_ATTEMPTS) throw err;
      // Let the new table reach this node, and the move's next step start or not.
      await Bun.sleep(10 + Math.random() * 40);
    }
  }
}

export class AdminApi {
  constructor(private readonly options: AdminApiOptions) {}

  /** The operations of the table this service answers (RouteAdmin answers `admin.route.move` and the like). */
  readonly handlers = {
    "admin.node.info": async () => this.nodeInfo(),
    "admin.volume.create": (args) => this.createVolume(args),
    "admin.volume.list": () => this.listVolumes(),
    "admin.volume.info": ({ name }) => this.volumeInfo(name),
    "admin.volume.restoring": ({ name, restoring }) => this.markRestoring(name, restoring),
    "admin.volume.delete": ({ name }) => this.deleteVolume(name),
    "admin.route.nodes": () => this.routeNodes(),
    "admin.route.show": ({ volume, usage }) => this.routeShow(volume, usage !== false),
    "admin.snap.create": (args) => this.createSnapshot(args),
    "admin.snap.prepare": (args) => this.prepareSnapshot(args),
    "admin.snap.take": ({ name }) => this.options.snapshots.take(name).then((result) => describeResult(result, 0)),
    "admin.snap.release": ({ name }) => this.options.snapshots.release(name).then((outcome) => ({ name, outcome })),
    "admin.archive.plan": ({ volume, snapshot, since }) => this.archivePlan(volume, snapshot, since),
    "admin.volume.changedSince": ({ volume, snapshot }) => this.changedSince(volume, snapshot),
    "admin.snap.list": ({ volume }) => this.listSnapshots(volume),
    "admin.snap.delete": ({ volume, name }) => this.deleteSnapshot(volume, name),
    "admin.snap.rollback": ({ volume, name }) => this.rollbackSnapshot(volume, name),
    "admin.snap.clone": ({ volume, name, target }) => this.cloneSnapshot(volume, name, target),
  } satisfies Partial<AdminHandlers>;

  private nodeInfo(): NodeInfo {
    const { group, version, startedAtMs } = this.options;
    const self = group.members.get(group.selfId)!;
    return {
      id: self.id,
      groupId: group.groupId,
      meshAddress: self.meshAddress,
      nbdAddress: self.nbdAddress,
      version,
      uptimeMs: Date.now() - startedAtMs,
      storeSyncs: this.options.store.syncCount,
    };
  }

  private async createVolume(args: AdminArgs<"admin.volume.create">): Promise<VolumeSummary> {
    const { group } = this.options;
    const { name } = args;
    const existing = group.volumes.get(name);
    if (existing && !existing.deleted) throw new ShoalError("VOLUME_EXISTS", `volume '${name}' already exists`);
    const nodes = args.nodes !== undefined && args.nodes.length > 0 ? args.nodes : group.liveMembers().map((member) => member.id).sort();
    for (const node of nodes) {
      if (!group.members.has(node) || group.members.get(node)!.forgotten) throw new ShoalError("UNKNOWN_NODE", `node '${node}' is not a member; \`shoal route nodes\` lists them`);
      if (!group.isUp(node)) throw new ShoalError("NODE_DOWN", `node '${node}' is down; a volume can only be placed on nodes that are up`);
    }
    const record = newVolumeRecord({
      name,
      sizeBytes: args.sizeBytes,
      pageSizeBytes: args.pageSizeBytes ?? DEFAULT_PAGE_SIZE_BYTES,
      nodes,
      uid: crypto.randomUUID(),
      nowMs: Date.now(),
      previousVersion: existing?.version ?? 0,
      replicas: args.replicas ?? this.options.defaultReplicas,
    });
    if (args.restoring === true) record.restoring = true; // created by `archive restore --create`
    group.applyVolume(record);
    await group.publishVolume(record, nodes);
    return summarize(record, this.options.group);
  }

  /** Marks a volume as being restored (clients cannot open it) or as whole again. */
  private async markRestoring(name: string, restoring: boolean): Promise<VolumeSummary> {
    const { group } = this.options;
    const record = group.volume(name);
    const { restoring: _, ...rest } = record;
    const updated: VolumeRecord = { ...rest, version: record.version + 1, ...(restoring ? { restoring: true } : {}) };
    group.applyVolume(updated);
    await group.publishVolume(updated, holders(record.routing));
    return summarize(updated, group);
  }

  private async listVolumes(): Promise<AdminResult<"admin.volume.list">> {
    const { group } = this.options;
    return { volumes: group.liveVolumes().map((record) => summarize(record, group)) };
  }

  private async volumeInfo(name: string): Promise<VolumeInfo> {
    const { group } = this.options;
    const record = group.volume(name);
    const usage = await this.usageByNode(holders(record.routing));
    const replicaPages = replicaPagesPerNode(record.routing);
    const perNode = [...pagesPerNode(record.routing)].map(([node, pages]) => ({
      node,
      pages,
      replicaPages: replicaPages.get(node) ?? 0,
      ...usageOn(usage.get(node), record.uid),
    }));
    return { ...summarize(record, group), createdAtMs: record.createdAtMs, nodes: perNode, unreachable: unreachablePages(record, group) };
  }

  private async deleteVolume(name: string): Promise<AdminResult<"admin.volume.delete">> {
    const { group } = this.options;
    const record = group.volume(name);
    if (record.moving) throw new ShoalError("CONFLICT", `volume '${name}' is being moved (move ${record.moving.moveId}); delete it when the move ends`);
    const snapshots = group.liveSnapshots(name);
    if (snapshots.length > 0) {
      throw new ShoalError(
        "CONFLICT",
        `volume '${name}' has ${snapshots.length} snapshot(s) (${snapshots.map((s) => s.name).join(", ")}); delete them first with \`shoal snap delete ${name}@NAME\``,
      );
    }
    const tombstone: VolumeRecord = { ...record, deleted: true, version: record.version + 1 };
    group.applyVolume(tombstone);
    // Members that are down now learn of the delete through the digest when they come back.
    await group.publishVolume(tombstone, []);
    return { name, deleted: true as const };
  }

  private async routeNodes(): Promise<AdminResult<"admin.route.nodes">> {
    const { group } = this.options;
    const ids = group.liveMembers().map((member) => member.id).sort();
    const [usage, infos] = await Promise.all([this.usageByNode(ids), this.infoByNode(ids)]);
    const nowMs = Date.now();
    const nodes = ids.map((id) => {
      const member = group.members.get(id)!;
      const link = group.links.get(id);
      const held = usage.get(id);
      // The sum of what `volume info` shows for this node, volume by volume.
      let pages = 0;
      let bytes = 0;
      for (const record of group.liveVolumes()) {
        const volumeUsage = usageOn(held, record.uid);
        pages += volumeUsage.pagesWritten ?? 0;
        bytes += volumeUsage.bytesUsed ?? 0;
      }
      return {
        id,
        meshAddress: member.meshAddress,
        nbdAddress: member.nbdAddress,
        state: group.isUp(id) ? ("up" as const) : ("down" as const),
        self: id === group.selfId,
        lastHeartbeatMs: id === group.selfId ? null : (link?.lastHeartbeatMs || null),
        heartbeatAgeMs: id === group.selfId || !link?.lastHeartbeatMs ? null : nowMs - link.lastHeartbeatMs,
        version: infos.get(id)?.version ?? null,
        uptimeMs: infos.get(id)?.uptimeMs ?? null,
        pagesWritten: held ? pages : null,
        bytesUsed: held ? bytes : null,
      };
    });
    return { nodes };
  }

  /**
   * A volume's (or one snapshot's) table with pages and bytes per node. Built only from what
   * every member shares (the catalog) and each node's own usage, so any member answers alike.
   */
  /** `withUsage` false skips asking every owner for its bytes: bulk jobs want only the runs. */
  private async routeShow(name: string, withUsage: boolean): Promise<RouteShow> {
    const { group } = this.options;
    const ref = name.includes("@") ? parseSnapshotRef(name) : undefined;
    const volume = ref?.volume ?? name;
    const snapshot = ref?.name;
    const record = group.volume(volume);
    const layer = snapshot === undefined ? undefined : snapshotLayerId(record.uid, group.snapshot(volume, snapshot).snapshotId);
    const counts = pagesPerNode(record.routing);
    const runs = describeRuns(record.routing, RUNS_SHOWN_PER_NODE);
    const replicaRuns = describeReplicaRuns(record.routing, RUNS_SHOWN_PER_NODE);
    const replicaPages = replicaPagesPerNode(record.routing);
    const usage = withUsage ? await this.usageByNode(record.routing.nodes) : new Map<string, Usage>();
    // A volume's USED is what `volume info` shows; a snapshot's, the bytes its own layer holds.
    const bytesOn = (node: string): number | null => {
      const held = usage.get(node);
      if (!held) return null;
      return layer === undefined ? usageOn(held, record.uid).bytesUsed : (held[layer]?.bytes ?? 0);
    };
    return {
      name,
      volume: record.name,
      uid: record.uid,
      version: record.routing.version,
      pageSizeBytes: record.pageSizeBytes,
      pageCount: pageCount(record),
      ...(record.moving ? { moving: record.moving } : {}),
      replicas: replicaCount(record.routing),
      nodes: [...record.routing.nodes].sort().map((node) => ({
        node,
        pages: counts.get(node) ?? 0,
        bytesUsed: bytesOn(node),
        runs: (runs.get(node)?.runs ?? []).map((run) => ({ ...run, text: formatRun(run) })),
        runCount: runs.get(node)?.count ?? 0,
        replicaPages: replicaPages.get(node) ?? 0,
        replicaRuns: (replicaRuns.get(node)?.runs ?? []).map((run) => ({ ...run, text: formatRun(run) })),
        replicaRunCount: replicaRuns.get(node)?.count ?? 0,
      })),
      ...(this.options.replicaHost.report(record.uid) ?? {}),
    };
  }

  // ---- snapshots

  private async prepareSnapshot(args: SnapshotArgs): Promise<AdminResult<"admin.snap.prepare">> {
    const request = snapshotRequest(args);
    const snapshotId = await retrySnapshot(() => this.options.snapshots.prepare(request));
    return { name: request.name, snapshotId, volumes: request.volumes, mode: request.mode, state: "ready" as const };
  }

  private async createSnapshot(args: SnapshotArgs): Promise<SnapshotTaken> {
    const request = snapshotRequest(args);
    const startedMs = performance.now();
    const result = await retrySnapshot(() => this.options.snapshots.create(request));
    return describeResult(result, Math.round(performance.now() - startedMs));
  }

  private async listSnapshots(volume: string | undefined): Promise<AdminResult<"admin.snap.list">> {
    const { group } = this.options;
    if (volume !== undefined) group.volume(volume);
    const snapshots = group.liveSnapshots(volume);
    const nodes = [...new Set(snapshots.flatMap((s) => s.participants))];
    const usage = await this.usageByNode(nodes);
    return {
      snapshots: snapshots.map((snapshot) => {
        const layer = snapshotLayerId(snapshot.volumeUid, snapshot.snapshotId);
        let bytes = 0;
        let known = true;
        for (const node of snapshot.participants) {
          const held = usage.get(node);
          if (!held) known = false;
          else bytes += held[layer]?.exclusiveBytes ?? 0;
        }
        return {
          name: snapshot.name,
          snapshotId: snapshot.snapshotId,
          volume: snapshot.volume,
          mode: snapshot.mode,
          cutAtMs: snapshot.cutAtMs ?? snapshot.startedAtMs,
          createdAtMs: snapshot.createdAtMs,
          // Read by the volume's table: unreachable pages of the volume are unreachable here too.
          state: downOwners(group.volume(snapshot.volume), group).length > 0 ? ("degraded" as const) : ("complete" as const),
          bytesHeldOnlyByIt: known ? bytes : null,
        };
      }),
    };
  }

  private async deleteSnapshot(volume: string, name: string): Promise<AdminResult<"admin.snap.delete">> {
    const { group } = this.options;
    const snapshot = group.snapshot(volume, name);
    const tombstone = { ...snapshot, deleted: true, version: snapshot.version + 1 };
    // Each node frees the layer in the background, page by page: clients never stall on it.
    group.applySnapshot(tombstone);
    await group.publishSnapshot(tombstone);
    return { volume, name, snapshotId: snapshot.snapshotId, deleted: true as const };
  }

  private async rollbackSnapshot(volume: string, name: string): Promise<AdminResult<"admin.snap.rollback">> {
    const { group } = this.options;
    const record = group.volume(volume);
    // A move copies pages while clients write them; a rollback under it would not be seen.
    if (record.moving) throw new ShoalError("CONFLICT", `volume '${volume}' is being moved (move ${record.moving.moveId}); roll back when the move ends`);
    const snapshot = group.snapshot(volume, name);
    const layer = snapshotLayerId(record.uid, snapshot.snapshotId);
    if (!copiesWhole(record.routing)) throw copiesMissing(volume, "roll back");
    const nodes = holders(record.routing);
    for (const node of nodes) {
      if (!group.isUp(node)) throw new ShoalError("NODE_DOWN", `node ${node} holds pages of '${volume}' and is down; nothing was rolled back`);
    }
    await Promise.all(
      nodes.map((node) =>
        node === group.selfId
          ? this.options.snapshots.rollbackLocal(record.uid, layer)
          : group.link(node).request("snap.rollback", { uid: record.uid, layer }),
      ),
    );
    return { volume, name, snapshotId: snapshot.snapshotId, rolledBack: true as const };
  }

  private async cloneSnapshot(volume: string, name: string, target: string): Promise<AdminResult<"admin.snap.clone">> {
    const { group } = this.options;
    const source = group.volume(volume);
    const snapshot = group.snapshot(volume, name);
    const existing = group.volumes.get(target);
    if (existing && !existing.deleted) throw new ShoalError("VOLUME_EXISTS", `volume '${target}' already exists`);
    if (!copiesWhole(source.routing)) throw copiesMissing(volume, "clone it");
    const nodes = holders(source.routing);
    for (const node of nodes) {
      if (!group.isUp(node)) throw new ShoalError("NODE_DOWN", `node ${node} holds pages of '${volume}' and is down`);
    }
    const record: VolumeRecord = {
      ...newVolumeRecord({
        name: target,
        sizeBytes: source.sizeBytes,
        pageSizeBytes: source.pageSizeBytes,
        nodes: source.routing.nodes,
        uid: crypto.randomUUID(),
        nowMs: Date.now(),
        previousVersion: existing?.version ?? 0,
        origin: snapshotLayerId(source.uid, snapshot.snapshotId),
      }),
      // The clone's pages live where the snapshot's do: same table, so every page reads through locally.
      // Every replica of the source holds the snapshot layer, so the clone keeps the replica ranks too.
      routing: {
        version: 1,
        nodes: [...source.routing.nodes],
        owners: source.routing.owners.slice(),
        ...(source.routing.replicaOwners?.length ? { replicaOwners: source.routing.replicaOwners.map((rank) => rank.slice()) } : {}),
      },
    };
    group.applyVolume(record);
    await group.publishVolume(record, nodes);
    return { ...summarize(record, group), origin: `${volume}@${name}` };
  }

  // ---- archives

  /** What an archive of VOL@SNAP (or of its changes since another snapshot) must hold. */
  private async archivePlan(volume: string, snapshotName: string, sinceName: string | undefined): Promise<ArchivePlan> {
    const { group, router } = this.options;
    const record = group.volume(volume);
    const snapshot = group.snapshot(volume, snapshotName);
    const base = sinceName === undefined ? undefined : group.snapshot(volume, sinceName);
    if (base && base.snapshotId === snapshot.snapshotId) {
      throw new ShoalError("BAD_ARGUMENT", `--since ${sinceName} is the snapshot being archived; name an older snapshot of '${volume}'`);
    }
    if (base && base.createdAtMs > snapshot.createdAtMs) {
      throw new ShoalError("BAD_ARGUMENT", `snapshot '${sinceName}' is newer than '${snapshotName}'; --since names an older snapshot`);
    }
    const layer = snapshotLayerId(record.uid, snapshot.snapshotId);
    const sinceLayer = base ? snapshotLayerId(record.uid, base.snapshotId) : undefined;
    const nodes = holders(record.routing);
    const perNode = await Promise.all(
      nodes.map(async (node) => {
        if (node === group.selfId) return router.ownChangedPages({ record, layer }, sinceLayer);
        const response = await group.link(node).request("store.changedPages", { v: record.uid, l: layer, ...(sinceLayer ? { since: sinceLayer } : {}) });
        return response.result.pages as number[];
      }),
    );
    const pages = perNode.flat().sort((a, b) => a - b);
    // Where to pull each page from directly: its owner's NBD address (no forwarding hop).
    const owners = Object.fromEntries(nodes.map((node, index) => [group.members.get(node)?.nbdAddress ?? "", perNode[index]!]));
    return {
      owners,
      volume,
      volumeUid: record.uid,
      sizeBytes: record.sizeBytes,
      pageSizeBytes: record.pageSizeBytes,
      snapshot: { name: snapshot.name, id: snapshot.snapshotId, cutAtMs: snapshot.cutAtMs ?? snapshot.startedAtMs },
      base: base ? { name: base.name, id: base.snapshotId } : null,
      pages,
    };
  }

  /** How many pages of a volume's head may differ from one of its snapshots (layer metadata only). */
  private async changedSince(volume: string, snapshotName: string): Promise<AdminResult<"admin.volume.changedSince">> {
    const { group, router } = this.options;
    const record = group.volume(volume);
    const snapshot = group.snapshot(volume, snapshotName);
    const sinceLayer = snapshotLayerId(record.uid, snapshot.snapshotId);
    const counts = await Promise.all(
      holders(record.routing).map(async (node) => {
        if (node === group.selfId) return router.ownChangedPages({ record, layer: record.uid }, sinceLayer).length;
        const response = await group.link(node).request("store.changedPages", { v: record.uid, since: sinceLayer });
        return (response.result.pages as number[]).length;
      }),
    );
    return { volume, snapshot: snapshotName, changedPages: counts.reduce((sum, count) => sum + count, 0) };
  }

  /** Version and uptime of each node that answers; nodes that are down are missing from the map. */
  private async infoByNode(nodes: string[]): Promise<Map<string, { version: string; uptimeMs: number }>> {
    const { group } = this.options;
    const result = new Map<string, { version: string; uptimeMs: number }>();
    await Promise.all(
      nodes.map(async (node) => {
        if (node === group.selfId) {
          const info = this.nodeInfo();
          result.set(node, { version: String(info.version), uptimeMs: Number(info.uptimeMs) });
          return;
        }
        if (!group.isUp(node)) return;
        try {
          const info = (await group.link(node).request("admin.node.info", {}, undefined, 3000)).result;
          result.set(node, { version: String(info.version), uptimeMs: Number(info.uptimeMs) });
        } catch {
          // reported as unknown (null) by the caller
        }
      }),
    );
    return result;
  }

  /** Page usage of each node that answers; nodes that are down are missing from the map. */
  private async usageByNode(nodes: string[]): Promise<Map<string, Usage>> {
    const { group, store } = this.options;
    const result = new Map<string, Usage>();
    await Promise.all(
      nodes.map(async (node) => {
        if (node === group.selfId) {
          result.set(node, storeUsage(store));
          return;
        }
        if (!group.isUp(node)) return;
        try {
          const response = await group.link(node).request("store.usage", {}, undefined, 3000);
          result.set(node, response.result.usage as Usage);
        } catch {
          // reported as unknown (null) by the caller
        }
      }),
    );
    return result;
  }
}

type SnapshotArgs = AdminArgs<"admin.snap.create">;

function snapshotRequest(args: SnapshotArgs): CreateSnapshot {
  return { volumes: args.volumes, name: args.name, mode: args.mode ?? "hold", holdTimeoutMs: args.holdTimeoutMs };
}

function describeResult(result: SnapshotResult, tookMs: number): SnapshotTaken {
  return {
    snapshotId: result.snapshotId,
    name: result.name,
    volumes: result.volumes,
    mode: result.mode,
    participants: result.participants,
    startedAtMs: result.startedAtMs,
    cutAtMs: result.cutAtMs ?? null,
    pendingOn: result.pendingOn,
    // Hold mode: per participant, how long it held and what the requests it queued waited.
    holds: Object.fromEntries(
      Object.entries(result.holds ?? {}).map(([node, hold]) => [
        node,
        { heldMs: roundMs(hold.heldMs), queued: hold.queued, longestWaitMs: roundMs(hold.longestWaitMs) },
      ]),
    ),
    tookMs,
  };
}

function roundMs(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/**
 * Nodes this node sees down that own pages of the volume: those pages (of the head and of every
 * snapshot, which are read by the same table) can be neither read nor written until they are back.
 */
function downOwners(record: VolumeRecord, group: Group): string[] {
  return holders(record.routing).filter((node) => !group.isUp(node));
}

/** Runs listed per down node: a scattered 64 TiB table would otherwise list millions. */
const MAX_UNREACHABLE_RUNS = 1000;

/** Per down owner, the pages it holds as runs (as `route show` prints them). */
function unreachablePages(record: VolumeRecord, group: Group): NodePageRuns[] {
  const down = downOwners(record, group);
  if (down.length === 0) return [];
  const counts = pagesPerNode(record.routing);
  const runs = describeRuns(record.routing, MAX_UNREACHABLE_RUNS);
  return down.map((node) => ({
    node,
    pages: counts.get(node) ?? 0,
    runs: (runs.get(node)?.runs ?? []).map((run) => ({ ...run, text: formatRun(run) })),
    runCount: runs.get(node)?.count ?? 0,
  }));
}

/** `restoring` while an archive restore writes it; else `degraded` while an owner of its pages is down. */
function stateOf(record: VolumeRecord, group: Group): VolumeState {
  if (record.restoring) return "restoring";
  return downOwners(record, group).length > 0 ? "degraded" : "ready";
}

function summarize(record: VolumeRecord, group: Group): VolumeSummary {
  return {
    name: record.name,
    uid: record.uid,
    sizeBytes: record.sizeBytes,
    pageSizeBytes: record.pageSizeBytes,
    pageCount: pageCount(record),
    nodes: record.routing.nodes,
    replicas: replicaCount(record.routing),
    routingVersion: record.routing.version,
    state: stateOf(record, group),
    nodesDown: downOwners(record, group),
  };
}

/** WRITTEN and USED of a volume on a node (null when the node did not answer). */
function usageOn(held: Usage | undefined, volumeUid: string): NodeUsage {
  if (!held) return { pagesWritten: null, bytesUsed: null };
  const { pagesWritten, bytesUsed } = volumeUsageOn(Object.entries(held), volumeUid);
  return { pagesWritten, bytesUsed };
}
