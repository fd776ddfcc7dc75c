// This node's cuts in its page store: a participant's cut freezes its pages of the volumes into
// snapshot layers and makes them durable with its record; a cut given up loses its layers; and at
// start what a crash left half-made (a record without layers, layers without a record) goes.
import type { Catalog } from "../../core/cluster/catalog.ts";
import { asShoalError, ShoalError } from "../../core/errors.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import { holders } from "../../core/cluster/routing.ts";
import { settleWith } from "../../core/snapshot/durability-gate.ts";
import type { RecentCuts } from "../../core/snapshot/recent-cuts.ts";
import type { CutEffect, SnapshotEffectHost } from "../../core/snapshot/snapshot-effect-runner.ts";
import type { ParticipantRecord } from "../../core/snapshot/snapshot-messages.ts";
import { lostCutLayers, snapshotLayerId, type CutRecord } from "../../core/snapshot/snapshot-record.ts";
import type { Group } from "../mesh/group.ts";
import type { MeshLog } from "../mesh/mesh.ts";
import { nodeMetrics } from "../metrics/node-metrics.ts";

export class CutLayers {
  constructor(
    private readonly options: { group: Group; store: PageStore; catalog: Catalog; log: MeshLog },
    /** The snapshots cut here lately, which a write this node applies as a primary names (shared with the service). */
    private readonly recent: RecentCuts,
  ) {}

  /**
   * A pending cut's record and its layers are made durable side by side (see cut): a crash can
   * keep the record and lose the layers. Such a cut never said "taken", so the coordinator cannot
   * have committed it; recovering it would answer the coordinator's resent take with "taken" for
   * layers that are not there. Its record goes, and the coordinator's take is refused.
   */
  survived(record: CutRecord): boolean {
    const { catalog, store, log } = this.options;
    const lost = lostCutLayers(record, (layerId) => store.hasLayer(layerId));
    if (lost.length === 0) return true;
    log.info(`snapshot ${record.snapshotId}: its cut (layers ${lost.join(", ")}) did not survive the restart; dropping its record (it was never taken, so it aborts)`, { snapshot: record.snapshotId });
    catalog.removeProtocolRecord("participant", record.snapshotId);
    return false;
  }

  /** Why this node's store could not cut those volumes now (one at its snapshot limit), if it could not. */
  refusal(volumes: string[]): ShoalError | undefined {
    const { group, store } = this.options;
    for (const record of this.localVolumes(volumes)) {
      const refusal = store.freezeRefusal(record.uid);
      if (refusal) return new ShoalError(refusal.code, `volume '${record.name}' on node ${group.selfId}: ${refusal.message}`);
    }
    return undefined;
  }

  /** Freezes this node's pages of the volumes; their layers and the record become durable off the hold. */
  cut(effect: CutEffect): ReturnType<SnapshotEffectHost["cut"]> {
    const { catalog, store, log } = this.options;
    const uids = this.localVolumes(effect.volumes).map((record) => record.uid);
    const cutLayers = uids.map((uid) => snapshotLayerId(uid, effect.snapshotId));
    // Prepare checked this too, but another snapshot may have been cut since. Checked for
    // every volume first, so a refused cut leaves nothing behind.
    const refusal = this.refusal(effect.volumes) ?? this.freezeAll(uids, cutLayers);
    if (refusal) {
      log.warn(`snapshot ${effect.snapshotId} cannot be cut here: ${refusal.message}`, { snapshot: effect.snapshotId });
      return { refusal };
    }
    if (effect.record.commitWaitUntilMs !== undefined) nodeMetrics.commitWaitStarted(effect.snapshotId);
    // Released requests need only the frozen layer. Only the cut layers are synced, not the
    // node's other volumes. The layers and the record are made durable side by side ("taken"
    // waits for both): a crash may keep either alone. Layers no record names are removed at
    // start(), a record whose layers are missing is dropped there (survived), and the
    // coordinator, never told "taken", aborts.
    const record: CutRecord = { ...effect.record, volumeUids: uids };
    const { snapshotId } = effect;
    this.recent.note(snapshotId, effect.volumes, effect.record.cutAtMs);
    nodeMetrics.cutStarted(snapshotId);
    return {
      durable: settleWith(() => {
        catalog.putProtocolRecord("participant", snapshotId, record);
        const stored = store.flushLayers(cutLayers).then(() => nodeMetrics.cutStored(snapshotId));
        return Promise.all([stored, catalog.durable()]).then(() => nodeMetrics.cutDurable(snapshotId));
      }),
    };
  }

  /** Removes a cut given up (aborted, or refused by the store): its layers go. */
  discard(snapshotId: string): void {
    const { store, log } = this.options;
    for (const layer of this.layersOf(snapshotId)) {
      store.deleteLayer(layer).catch((err) => log.warn(`discarding snapshot layer ${layer} failed: ${asShoalError(err).message}`));
    }
  }

  /**
   * Snapshot layers whose snapshot neither the protocol nor the group knows (a cut that was
   * discarded while this node was down, a deleted snapshot) are removed at start.
   */
  deleteOrphans(): void {
    const { catalog, group, store, log } = this.options;
    const known = new Set<string>(catalog.protocolRecords<ParticipantRecord>("participant").map((record) => record.snapshotId));
    for (const snapshot of group.snapshots.values()) if (!snapshot.deleted) known.add(snapshot.snapshotId);
    for (const layer of store.layers()) {
      const at = layer.id.indexOf("@");
      if (at < 0 || known.has(layer.id.slice(at + 1))) continue;
      store.deleteLayer(layer.id).catch((err) => log.warn(`removing orphan layer ${layer.id} failed: ${asShoalError(err).message}`));
    }
  }

  /** Freezes each head into its cut layer; an unexpected failure is returned, not thrown (the holds must still be released). */
  private freezeAll(uids: string[], cutLayers: string[]): ShoalError | undefined {
    try {
      uids.forEach((uid, index) => this.options.store.freezeLayer(uid, cutLayers[index]!));
      return undefined;
    } catch (err) {
      return asShoalError(err);
    }
  }

  /** The records of those volumes that hold pages on this node. */
  private localVolumes(volumes: string[]) {
    const { group } = this.options;
    return volumes.flatMap((name) => {
      const record = group.volumes.get(name);
      return record && !record.deleted && holders(record.routing).includes(group.selfId) ? [record] : [];
    });
  }

  private layersOf(snapshotId: string): string[] {
    return this.options.store.layers().map((layer) => layer.id).filter((id) => id.endsWith(`@${snapshotId}`));
  }
}
