// What a node does to its page store when the group's catalog changes: a deleted or replaced
// volume's layer and a deleted snapshot's layer are freed in the background; a clone gets its
// empty layer over the snapshot it came from.
import type { PageStore } from "../../core/store/page-store.ts";
import { snapshotLayerId, type SnapshotRecord } from "../../core/snapshot/snapshot-record.ts";
import type { VolumeRecord } from "../../core/cluster/volume.ts";
import type { MeshLog } from "../mesh/mesh.ts";

export interface LayerUpkeep {
  onVolumeChanged(record: VolumeRecord, previous: VolumeRecord | undefined): void;
  onSnapshotChanged(record: SnapshotRecord): void;
}

/** `removeVolume`: the data path removes what it keeps for a volume uid that is gone. */
export function layerUpkeep(store: PageStore, log: MeshLog, removeVolume: (uid: string) => void): LayerUpkeep {
  const deleteLayer = (layer: string) => {
    if (!store.hasLayer(layer)) return;
    store.deleteLayer(layer).catch((err: unknown) => log.warn(`removing layer ${layer} failed: ${(err as Error).message}`));
  };
  return {
    onVolumeChanged: (record, previous) => {
      if (previous && (record.deleted || previous.uid !== record.uid)) {
        deleteLayer(previous.uid);
        removeVolume(previous.uid);
      }
      // A clone starts as an empty layer over the snapshot it was cloned from, on every node
      // that holds its pages (the same nodes as the snapshot's). A node without that snapshot
      // (one that joined later) holds none of them; a page move brings the layers along.
      if (!record.deleted && record.origin && previous?.uid !== record.uid && !store.hasLayer(record.uid) && store.hasLayer(record.origin)) {
        store.createLayer(record.uid, record.origin);
      }
    },
    onSnapshotChanged: (record) => {
      if (record.deleted) deleteLayer(snapshotLayerId(record.volumeUid, record.snapshotId));
    },
  };
}
