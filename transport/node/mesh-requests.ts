// Which part of a node answers a mesh request: the group (hello, join, catalog sync) first, then,
// once the node has started its services, snapshots, the data path, page moves and the admin table.
import { ShoalError } from "../../core/errors.ts";
import type { FrameHeader, Payload } from "../mesh/frame.ts";
import type { Group } from "../mesh/group.ts";
import type { MeshConnection, Reply, RequestHandler } from "../mesh/mesh-connection.ts";
import { meshOpRefusal } from "../mesh/mesh-tls.ts";
import { readPeerArgs } from "../mesh/peer-ops.ts";
import type { PageMover } from "../move/page-mover.ts";
import type { SnapshotService } from "../snapshot/snapshot-service.ts";
import type { TlsIdentity } from "../tls/tls-identity.ts";
import type { ReplicaHost } from "./replica-host.ts";
import type { VolumeRouter } from "./volume-router.ts";

/** What answers requests once the node is built (the mesh listens before: the group needs its port). */
export interface NodeServices {
  snapshots: SnapshotService;
  router: VolumeRouter;
  mover: PageMover;
  replicaHost: ReplicaHost;
  admin: (op: string, args: FrameHeader) => Promise<FrameHeader> | undefined;
}

/** The node's mesh request handler; `group()` and `services()` are undefined until they exist. */
export function meshRequests(tls: TlsIdentity | undefined, group: () => Group | undefined, services: () => NodeServices | undefined): RequestHandler {
  return (connection: MeshConnection, op: string, args: FrameHeader, payload: Payload): Reply | Promise<Reply> => {
    if (tls) {
      const refusal = meshOpRefusal(connection.certificate, op, args);
      if (refusal) throw new ShoalError("NOT_AUTHENTICATED", refusal);
    }
    const groupResult = group()?.handle(connection, op, args);
    if (groupResult !== undefined) return groupResult;
    if (connection.peerId === undefined && op !== "group.join") {
      throw new ShoalError("BAD_REQUEST", `'${op}' before hello`);
    }
    if (connection.peerId === "admin" && !op.startsWith("admin.")) {
      throw new ShoalError("BAD_REQUEST", `'${op}' is for members of the group, not admin clients`);
    }
    const ready = services();
    if (ready === undefined) throw new ShoalError("NODE_DOWN", `this node is still starting; '${op}' can be sent again in a moment`);
    return answer(ready, connection, op, args, payload);
  };
}

function answer({ snapshots, router, mover, admin, replicaHost }: NodeServices, connection: MeshConnection, op: string, args: FrameHeader, payload: Payload): Reply | Promise<Reply> {
  if (op === "snap.msg") return { result: snapshots.onMessage(connection.peerId!, args) };
  if (op === "replica.msg" || op === "replica.stage") return replicaHost.handle(op, connection.peerId!, args, payload)!;
  if (op === "snap.rollback") {
    const { uid, layer } = readPeerArgs(op, args);
    return snapshots.rollbackLocal(uid, layer).then(() => ({}));
  }
  const routed = router.handle(op, args, payload) ?? mover.handle(op, args, payload, connection);
  if (routed !== undefined) return routed;
  const answered = admin(op, args);
  if (answered !== undefined) return answered.then((result) => ({ result }));
  throw new ShoalError("BAD_REQUEST", `unknown mesh operation '${op}'`);
}
