// Wires one storage node together: catalog, page store, group membership, peer mesh, volume
// router and NBD server; and takes it apart again on SIGINT/SIGTERM without losing a write.
import * as fs from "node:fs";
import * as path from "node:path";
import { Catalog } from "../../core/cluster/catalog.ts";
import { asShoalError, ShoalError } from "../../core/errors.ts";
import { isValidNodeId, NODE_ID_RULE, parseHostPort, type Member } from "../../core/cluster/member.ts";
import { PageStore } from "../../core/store/page-store.ts";
import { MAX_REPLICAS } from "../../core/cluster/routing.ts";
import { convertOldStore } from "../../core/store/convert-old-store.ts";
import { Group, JoinInDoubt } from "../mesh/group.ts";
import { lockDataDir } from "./data-dir-lock.ts";
import { MeshServer } from "../mesh/mesh.ts";
import { loadTlsIdentity, type TlsIdentity, useTlsIdentity } from "../tls/tls-identity.ts";
import { NbdServer } from "../nbd/nbd-server.ts";
import { VolumeRouter } from "./volume-router.ts";
import { ReplicationsInFlight } from "./replica-writes.ts";
import { DEFAULT_REPLICA_TIMEOUT_MS, ReplicaHost } from "./replica-host.ts";
import { SnapshotService } from "../snapshot/snapshot-service.ts";
import { RunningMoveSteps } from "../move/running-move-steps.ts";
import { PageMover } from "../move/page-mover.ts";
import { MoveService } from "../move/move-service.ts";
import { RouteAdmin } from "../admin/route-admin.ts";
import { AdminApi } from "../admin/admin-api.ts";
import { adminDispatcher } from "../admin/admin-service.ts";
import { meshRequests, type NodeServices } from "./mesh-requests.ts";
import { layerUpkeep } from "./layer-upkeep.ts";
import type { LogFields, MeshLog } from "../mesh/mesh.ts";
import { SHOAL_VERSION } from "./version.ts";
import { exitOnFatal } from "./fatal-exit.ts";
import { nodeMetrics, watchNodeState } from "../metrics/node-metrics.ts";
import { serveMetrics } from "../metrics/metrics-endpoint.ts";

/**
 * Unsynced writes are written back this often: a FLUSH or a snapshot's cut then syncs only the
 * last moments' writes (the cut's wall time after 4 s of random writes over 1 TiB fell from
 * ~530 ms to the figure in the README), at the price of more, smaller syncs on a busy node.
 */
export const DEFAULT_WRITE_BACK_INTERVAL_MS = 200;

export interface NodeOptions {
  id?: string;
  dataDir: string;
  listen: string;
  nbd: string;
  join?: string;
  /** Bound on any node's clock error that timestamp-mode snapshots rely on. */
  maxClockSkewMs: number;
  /** Credentials directory: mutual TLS on the mesh, STARTTLS offered on NBD. */
  tlsDir?: string;
  /** Refuse NBD clients that do not STARTTLS. */
  tlsRequired?: boolean;
  /** HOST:PORT for the Prometheus endpoint; none when undefined. */
  metrics?: string;
  /** Unsynced written bytes past which the store writes back and writers wait for it. */
  dirtyLimitBytes?: number;
  /** How often unsynced writes are written back in the background (0: only past the dirty limit). */
  writeBackIntervalMs?: number;
  /** Copies of each page of a volume created without --replicas (1 when absent). */
  defaultReplicas?: number;
  /** A replica of a replicated volume not heard from for this long leaves its sets (--replica-timeout). */
  replicaTimeoutMs?: number;
  /** Where the node's lines go (the CLI makes it from --log-format). */
  log: NodeLog;
}

/** A log the node can tag with its id once it knows it. */
export interface NodeLog extends MeshLog {
  readonly fields: LogFields;
  error(message: string, fields?: LogFields): void;
}

export interface RunningNode {
  id: string;
  meshPort: number;
  nbdPort: number;
  stop(): Promise<void>;
}

/** The flags, checked: what startNode needs before it creates anything. */
interface StartPlan {
  tls: TlsIdentity | undefined;
  meshAddress: { host: string; port: number };
  nbdAddress: { host: string; port: number };
  metricsAddress: { host: string; port: number } | undefined;
}

/**
 * Checks every flag before it creates anything on disk or opens any port; then locks the data
 * directory (one node per directory). A start that fails after that takes down what it opened
 * and removes the data directory if it created it, so a corrected retry starts clean.
 */
export async function startNode(options: NodeOptions): Promise<RunningNode> {
  const plan = checkOptions(options);
  const createdDir = makeDataDir(options.dataDir);
  const undo: (() => void)[] = [];
  let joinInDoubt = false;
  try {
    const lock = lockDataDir(options.dataDir);
    undo.push(() => lock.release());
    // Removed before the lock is released: no other node may have started on it meanwhile.
    // Kept after a join whose answer was lost: the member may have recorded its identity.
    undo.push(() => {
      if (createdDir !== undefined && !joinInDoubt) fs.rmSync(createdDir, { recursive: true, force: true });
    });
    const node = await runNode(options, plan, undo);
    return { ...node, stop: () => node.stop().finally(() => lock.release()) };
  } catch (err) {
    joinInDoubt = err instanceof JoinInDoubt;
    for (const step of undo.reverse()) {
      try {
        step();
      } catch {
        // Best effort: the error that stopped the start is the one to report.
      }
    }
    throw err;
  }
}

function checkOptions(options: NodeOptions): StartPlan {
  if (options.id !== undefined && !isValidNodeId(options.id)) {
    throw new ShoalError("BAD_ARGUMENT", `--id: '${options.id}' is not a valid node id (${NODE_ID_RULE})`);
  }
  if (!options.dataDir) throw new ShoalError("BAD_ARGUMENT", "--data needs a directory");
  if (options.join !== undefined) flagAddress("--join", options.join);
  const replicas = options.defaultReplicas ?? 1;
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
    throw new ShoalError("BAD_ARGUMENT", `--default-replicas ${replicas}: a volume keeps 1 to ${MAX_REPLICAS} copies of each page`);
  }
  return {
    // Bad credentials are found before anything is created on disk.
    tls: nodeTlsIdentity(options),
    meshAddress: flagAddress("--listen", options.listen),
    nbdAddress: flagAddress("--nbd", options.nbd),
    metricsAddress: options.metrics === undefined ? undefined : flagAddress("--metrics", options.metrics),
  };
}

/** The data directory, made if missing; returns the first directory it made (to remove on failure). */
function makeDataDir(dir: string): string | undefined {
  try {
    const created = fs.mkdirSync(dir, { recursive: true });
    if (!fs.statSync(dir).isDirectory()) throw new Error("not a directory");
    return created;
  } catch (err) {
    const code = (err as { code?: string }).code;
    const reason = code === "EEXIST" || code === "ENOTDIR" ? "not a directory" : asShoalError(err).message;
    throw new ShoalError("BAD_ARGUMENT", `--data ${dir}: ${reason}`);
  }
}

/** HOST:PORT given to `flag`, or BAD_ARGUMENT naming the flag. */
function flagAddress(flag: string, text: string): { host: string; port: number } {
  if (text === "") throw new ShoalError("BAD_ARGUMENT", `${flag} needs a value (HOST:PORT)`);
  try {
    return parseHostPort(text);
  } catch (err) {
    throw new ShoalError("BAD_ARGUMENT", `${flag}: ${(err as Error).message}`);
  }
}

/** Says which flag names an address that cannot be listened on. */
function onFlag<T>(flag: string, listen: () => T): T {
  const named = (err: unknown): never => {
    if (!(err instanceof ShoalError)) throw err;
    throw new ShoalError(err.code, `${err.message}; choose another with ${flag}`);
  };
  try {
    const result = listen();
    return result instanceof Promise ? (result.catch(named) as T) : result;
  } catch (err) {
    return named(err);
  }
}

/** Everything after the lock. Each thing opened pushes its undoing, for a start that fails. */
async function runNode(options: NodeOptions, plan: StartPlan, undo: (() => void)[]): Promise<RunningNode> {
  const { log } = options;
  exitOnFatal(log);
  const { tls, meshAddress, nbdAddress, metricsAddress } = plan;
  const catalog = new Catalog(path.join(options.dataDir, "catalog.db"));
  undo.push(() => catalog.close());
  const id = resolveNodeId(catalog, options.id ?? tls?.name);
  log.fields.node = id;
  const identity = resolveIdentity(catalog);
  if (tls && tls.name !== id) {
    throw new ShoalError("BAD_ARGUMENT", `the certificate in ${tls.dir} is for '${tls.name}' but this node is '${id}'; issue one with \`shoal tls issue CADIR ${id}\``);
  }
  useTlsIdentity(tls);
  await convertOldStore(options.dataDir, (message) => log.info(message));
  const store = new PageStore({
    dir: options.dataDir,
    dirtyLimitBytes: options.dirtyLimitBytes,
    // A snapshot deletion's merge lets clients' requests run between its pages.
    yieldToClients: () => new Promise((resolve) => setImmediate(resolve)),
    freeingClock: { nowMs: () => performance.now(), sleep: (ms) => Bun.sleep(ms) },
  });
  undo.push(() => store.close());
  const writeBackIntervalMs = options.writeBackIntervalMs ?? DEFAULT_WRITE_BACK_INTERVAL_MS;
  const writeBackTimer = writeBackIntervalMs > 0 ? setInterval(() => store.writeBackIfDirty(), writeBackIntervalMs) : undefined;
  undo.push(() => clearInterval(writeBackTimer));
  const startedAtMs = Date.now();

  // Requests may arrive as soon as the mesh listens; each part answers once it exists.
  let meshGroup: Group | undefined;
  let services: NodeServices | undefined;
  const handler = meshRequests(tls, () => meshGroup, () => services);

  const mesh = new MeshServer(handler, log, tls);
  const meshPort = onFlag("--listen", () => mesh.listen(meshAddress.host, meshAddress.port));
  undo.push(() => mesh.stop());
  const self: Member = {
    id,
    identity,
    meshAddress: `${meshAddress.host}:${meshPort}`,
    nbdAddress: "",
    joinedAtMs: Date.now(),
  };

  const upkeep = layerUpkeep(store, log, (uid) => services?.router.removeVolume(uid));
  const group = new Group({
    catalog,
    self: { ...self, nbdAddress: `${nbdAddress.host}:${nbdAddress.port}` },
    handler,
    log,
    onSnapshotChanged: upkeep.onSnapshotChanged,
    onVolumeChanged: (record, previous) => {
      upkeep.onVolumeChanged(record, previous);
      services?.replicaHost.volumeChanged(record);
    },
    onPeerDown: (nodeId) => {
      services?.snapshots.onPeerDown(nodeId);
      services?.replicaHost.peerDown(nodeId);
    },
    onPeerHeard: (nodeId) => services?.replicaHost.peerHeard(nodeId),
  });
  meshGroup = group;
  const clockSkewMs = Number(process.env.SHOAL_CLOCK_SKEW_MS ?? 0);
  // Built in the order they use each other: the running move steps are what the snapshot
  // service and the mover share, so neither is set on the other after construction.
  // Likewise the replications in flight, for the snapshot service and the router.
  const moveSteps = new RunningMoveSteps();
  const replications = new ReplicationsInFlight();
  const snapshots = new SnapshotService({ group, store, catalog, log, clockSkewMs, maxClockSkewMs: options.maxClockSkewMs, moveSteps, replications });
  const mover = new PageMover(group, store, log, snapshots, moveSteps);
  const replicaHost = new ReplicaHost({ group, catalog, store, log, timeoutMs: options.replicaTimeoutMs ?? DEFAULT_REPLICA_TIMEOUT_MS, snapshotUnderWay: (volume) => snapshots.involves(volume) });
  undo.push(() => replicaHost.stop());
  const router = new VolumeRouter(group, store, snapshots, mover, replications, replicaHost, Number(process.env.SHOAL_REPLICA_DELAY_MS ?? 0));
  const nbd = new NbdServer({
    catalog: router,
    log,
    tls: tls ? { identity: tls, required: options.tlsRequired === true } : undefined,
  });
  const { port: nbdPort } = await onFlag("--nbd", () => nbd.listen(nbdAddress.host, nbdAddress.port));
  undo.push(() => void nbd.close());
  group.addMember({ ...self, nbdAddress: `${nbdAddress.host}:${nbdPort}` });
  const moves = new MoveService(group, mover, log);
  const nodeAdmin = new AdminApi({ group, store, router, snapshots, version: SHOAL_VERSION, startedAtMs, defaultReplicas: options.defaultReplicas ?? 1, replicaHost });
  const admin = adminDispatcher({ ...nodeAdmin.handlers, ...new RouteAdmin(group, moves, replicaHost).handlers });
  services = { snapshots, router, mover, admin, replicaHost };
  watchNodeState(nodeMetrics, { group, store, version: SHOAL_VERSION, startedAtMs, nbdConnections: () => nbd.connectionCount, meshConnections: () => mesh.connections.size });
  const metricsEndpoint = metricsAddress && onFlag("--metrics", () => serveMetrics(metricsAddress.host, metricsAddress.port, nodeMetrics.registry));
  undo.push(() => metricsEndpoint?.stop());

  if (group.groupId === undefined) {
    if (options.join) await group.join(options.join);
    else group.found();
  } else if (options.join) {
    log.info(`already a member of group ${group.groupId}; --join ignored`);
  }
  group.start();
  replicaHost.start();
  snapshots.start();
  moves.start();
  const security = tls ? `, TLS (mesh mutual, NBD ${options.tlsRequired ? "required" : "offered"})` : "";
  const metricsNote = metricsAddress ? `, metrics http://${metricsAddress.host}:${metricsEndpoint!.port}/metrics` : "";
  log.info(`node ${id} up: mesh ${meshAddress.host}:${meshPort}, nbd ${nbdAddress.host}:${nbdPort}, data ${options.dataDir}${security}${metricsNote}`);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      log.info(`node ${id} stopping: finishing requests in flight`);
      await nbd.close();
      metricsEndpoint?.stop();
      snapshots.stop();
      replicaHost.stop();
      moves.stop();
      mesh.stop();
      group.stop();
      clearInterval(writeBackTimer);
      await store.flush();
      store.close();
      catalog.close();
      log.info(`node ${id} stopped`);
    })());
  return { id, meshPort, nbdPort, stop };
}

function nodeTlsIdentity(options: NodeOptions): TlsIdentity | undefined {
  if (!options.tlsDir) {
    if (options.tlsRequired) throw new ShoalError("BAD_ARGUMENT", "--tls-required needs --tls DIR");
    return undefined;
  }
  const identity = loadTlsIdentity(options.tlsDir);
  if (identity.role !== "node") {
    throw new ShoalError("BAD_ARGUMENT", `the certificate in ${options.tlsDir} is a ${identity.role} certificate; a node needs one issued with --role node`);
  }
  return identity;
}

/** The data directory's random identity (see Member.identity), made when the directory is new. */
function resolveIdentity(catalog: Catalog): string {
  const stored = catalog.getMeta("node_identity");
  if (stored) return stored;
  const identity = crypto.randomUUID();
  catalog.setMeta("node_identity", identity);
  return identity;
}

function resolveNodeId(catalog: Catalog, requested: string | undefined): string {
  const stored = catalog.getMeta("node_id");
  if (stored && requested && stored !== requested) {
    throw new ShoalError("CONFLICT", `this data directory belongs to node '${stored}', not '${requested}'`);
  }
  if (stored) return stored;
  const id = requested ?? `n-${crypto.randomUUID().slice(0, 8)}`;
  if (!isValidNodeId(id)) throw new ShoalError("BAD_ARGUMENT", `'${id}' is not a valid node id (${NODE_ID_RULE})`);
  catalog.setMeta("node_id", id);
  return id;
}

