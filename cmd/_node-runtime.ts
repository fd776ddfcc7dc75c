// Wires one storage node together: catalog, page store, group membership, peer mesh, volume
// router and NBD server; and takes it apart again on SIGINT/SIGTERM without losing a write.
import * as fs from "node:fs";
import * as path from "node:path";
import { Catalog } from "../core/catalog.ts";
import { ShoalError } from "../core/errors.ts";
import { isValidNodeId, parseHostPort, type Member } from "../core/member.ts";
import { PageStore } from "../core/store/page-store.ts";
import { convertOldStore } from "../core/store/convert-old-store.ts";
import type { FrameHeader, Payload } from "../transport/frame.ts";
import { Group } from "../transport/group.ts";
import type { MeshConnection, Reply } from "../transport/mesh-connection.ts";
import { MeshServer } from "../transport/mesh.ts";
import { meshOpRefusal } from "../transport/mesh-tls.ts";
import { loadTlsIdentity, type TlsIdentity, useTlsIdentity } from "../transport/tls-identity.ts";
import { NbdServer } from "../transport/nbd-server.ts";
import { VolumeRouter } from "../transport/volume-router.ts";
import { SnapshotService } from "../transport/snapshot-service.ts";
import { PageMover } from "../transport/page-mover.ts";
import { MoveService } from "../transport/move-service.ts";
import { RouteAdmin } from "./_route-admin.ts";
import { snapshotLayerId } from "../core/snapshot-record.ts";
import { AdminApi } from "./_admin-api.ts";
import { createLog, type LogFormat } from "./_log.ts";
import { nodeMetrics, watchNodeState } from "../transport/node-metrics.ts";
import { serveMetrics } from "../transport/metrics-endpoint.ts";

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
  logFormat?: LogFormat;
  /** Unsynced written bytes past which the store writes back and writers wait for it. */
  dirtyLimitBytes?: number;
}

export interface RunningNode {
  id: string;
  meshPort: number;
  nbdPort: number;
  stop(): Promise<void>;
}

export const SHOAL_VERSION = "0.1.0";

export async function startNode(options: NodeOptions): Promise<RunningNode> {
  const log = createLog(undefined, options.logFormat);
  // Bad credentials are found before anything is created on disk.
  const tls = nodeTlsIdentity(options);
  fs.mkdirSync(options.dataDir, { recursive: true });
  const catalog = new Catalog(path.join(options.dataDir, "catalog.db"));
  const id = resolveNodeId(catalog, options.id ?? tls?.name);
  if (tls && tls.name !== id) {
    throw new ShoalError("BAD_ARGUMENT", `the certificate in ${tls.dir} is for '${tls.name}' but this node is '${id}'; issue one with \`shoal tls issue CADIR ${id}\``);
  }
  useTlsIdentity(tls);
  await convertOldStore(options.dataDir, (message) => log.info(message));
  const store = new PageStore({ dir: options.dataDir, dirtyLimitBytes: options.dirtyLimitBytes });
  const meshAddress = parseHostPort(options.listen);
  const nbdAddress = parseHostPort(options.nbd);
  const startedAtMs = Date.now();

  let group: Group;
  let router: VolumeRouter;
  let admin: AdminApi;
  let snapshots: SnapshotService;
  let mover: PageMover;
  let routeAdmin: RouteAdmin;
  const handler = (connection: MeshConnection, op: string, args: FrameHeader, payload: Payload): Reply | Promise<Reply> => {
    if (tls) {
      const refusal = meshOpRefusal(connection.certificate, op, args);
      if (refusal) throw new ShoalError("NOT_AUTHENTICATED", refusal);
    }
    const groupResult = group.handle(connection, op, args);
    if (groupResult !== undefined) return { result: groupResult };
    if (connection.peerId === undefined && op !== "group.join") {
      throw new ShoalError("BAD_REQUEST", `'${op}' before hello`);
    }
    if (connection.peerId === "admin" && !op.startsWith("admin.")) {
      throw new ShoalError("BAD_REQUEST", `'${op}' is for members of the group, not admin clients`);
    }
    if (op === "snap.msg") return { result: snapshots.onMessage(connection.peerId!, args) };
    if (op === "snap.rollback") return snapshots.rollbackLocal(String(args.uid), String(args.layer)).then(() => ({}));
    const routed = router.handle(op, args, payload) ?? mover.handle(op, args, payload);
    if (routed !== undefined) return routed;
    const answered = admin.handle(op, args) ?? routeAdmin.handle(op, args);
    if (answered !== undefined) return answered.then((result) => ({ result }));
    throw new ShoalError("BAD_REQUEST", `unknown mesh operation '${op}'`);
  };

  const mesh = new MeshServer(handler, { info: (m) => log.info(m), warn: (m) => log.warn(m) }, tls);
  const meshPort = mesh.listen(meshAddress.host, meshAddress.port);
  const self: Member = {
    id,
    meshAddress: `${meshAddress.host}:${meshPort}`,
    nbdAddress: "",
    joinedAtMs: Date.now(),
  };

  group = new Group({
    catalog,
    self: { ...self, nbdAddress: `${nbdAddress.host}:${nbdAddress.port}` },
    handler,
    log: { info: (m) => log.info(m), warn: (m) => log.warn(m) },
    onVolumeChanged: (record, previous) => {
      if (previous && (record.deleted || previous.uid !== record.uid)) dropLayer(previous.uid);
      // A clone starts as an empty layer over the snapshot it was cloned from, on every node
      // that holds its pages (the same nodes as the snapshot's). A node without that snapshot
      // (one that joined later) holds none of them; a page move brings the layers along.
      if (!record.deleted && record.origin && previous?.uid !== record.uid && !store.hasLayer(record.uid) && store.hasLayer(record.origin)) {
        store.createLayer(record.uid, record.origin);
      }
    },
    onSnapshotChanged: (record) => {
      if (record.deleted) dropLayer(snapshotLayerId(record.volumeUid, record.snapshotId));
    },
    onPeerDown: (nodeId) => snapshots?.onPeerDown(nodeId),
  });
  const dropLayer = (layer: string) => {
    if (!store.hasLayer(layer)) return;
    store.deleteLayer(layer).catch((err: unknown) => log.warn(`removing layer ${layer} failed: ${(err as Error).message}`));
  };
  router = new VolumeRouter(group, store);
  const nbd = new NbdServer({
    catalog: router,
    log: { info: (m: string) => log.info(m), warn: (m: string) => log.warn(m) },
    tls: tls ? { identity: tls, required: options.tlsRequired === true } : undefined,
  });
  const { port: nbdPort } = await nbd.listen(nbdAddress.host, nbdAddress.port);
  group.addMember({ ...self, nbdAddress: `${nbdAddress.host}:${nbdPort}` });
  const clockSkewMs = Number(process.env.SHOAL_CLOCK_SKEW_MS ?? 0);
  snapshots = new SnapshotService({ group, store, catalog, log: { info: (m) => log.info(m), warn: (m) => log.warn(m) }, clockSkewMs, maxClockSkewMs: options.maxClockSkewMs });
  router.gate = snapshots;
  const meshLog = { info: (m: string) => log.info(m), warn: (m: string) => log.warn(m) };
  mover = new PageMover(group, store, meshLog);
  mover.snapshots = snapshots;
  router.mover = mover;
  snapshots.mover = mover;
  const moves = new MoveService(group, mover, meshLog);
  routeAdmin = new RouteAdmin(group, moves);
  admin = new AdminApi({ group, store, router, snapshots, version: SHOAL_VERSION, startedAtMs });
  watchNodeState(nodeMetrics, { group, store, version: SHOAL_VERSION, startedAtMs, nbdConnections: () => nbd.connectionCount, meshConnections: () => mesh.connections.size });
  const metricsAddress = options.metrics === undefined ? undefined : parseHostPort(options.metrics);
  const metricsEndpoint = metricsAddress && serveMetrics(metricsAddress.host, metricsAddress.port, nodeMetrics.registry);

  if (group.groupId === undefined) {
    if (options.join) await group.join(options.join);
    else group.found();
  } else if (options.join) {
    log.info(`already a member of group ${group.groupId}; --join ignored`);
  }
  group.start();
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
      moves.stop();
      mesh.stop();
      group.stop();
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

function resolveNodeId(catalog: Catalog, requested: string | undefined): string {
  const stored = catalog.getMeta("node_id");
  if (stored && requested && stored !== requested) {
    throw new ShoalError("CONFLICT", `this data directory belongs to node '${stored}', not '${requested}'`);
  }
  if (stored) return stored;
  const id = requested ?? `n-${crypto.randomUUID().slice(0, 8)}`;
  if (!isValidNodeId(id)) throw new ShoalError("BAD_ARGUMENT", `'${id}' is not a valid node id (letters, digits, '.', '_', '-')`);
  catalog.setMeta("node_id", id);
  return id;
}
