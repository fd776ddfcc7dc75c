// A completed snapshot of one volume as every member keeps it in its catalog, so that any node
// lists it, exports it over NBD as VOL@NAME and routes its pages. A multi-volume snapshot is one
// record per volume sharing one snapshot id (and one cut instant).
import { ShoalError } from "../errors.ts";
import type { ParticipantRecord, SnapshotMode } from "./snapshot-messages.ts";

export interface SnapshotRecord {
  /** Unique forever (never reused, unlike names). */
  snapshotId: string;
  name: string;
  volume: string;
  volumeUid: string;
  mode: SnapshotMode;
  /** Coordinator's clock when the snapshot started, and (timestamp mode) the cut time T. */
  startedAtMs: number;
  cutAtMs?: number;
  createdAtMs: number;
  coordinator: string;
  participants: string[];
  /** Bumped on deletion; the highest version wins. */
  version: number;
  deleted: boolean;
}

const SNAPSHOT_NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

export function validateSnapshotName(name: string): void {
  if (!SNAPSHOT_NAME.test(name)) {
    throw new ShoalError("BAD_ARGUMENT", `'${name}' is not a valid snapshot name: 1-64 letters, digits, '.', '_', ':' or '-'`);
  }
}

/** The page-store layer holding a volume's pages as of a snapshot, on every node that owns some. */
export function snapshotLayerId(volumeUid: string, snapshotId: string): string {
  return `${volumeUid}@${snapshotId}`;
}

/** A participant's record as a node stores it: a pending cut's names the uids of the volumes it cut there. */
export type CutRecord = ParticipantRecord & { volumeUids?: string[] };

/**
 * The snapshot layers a pending cut's record names that the store lacks. A node makes a cut's
 * layers and its record durable side by side, so a crash can keep the record alone: such a cut
 * was never reported taken, and must not be recovered as if it had been made.
 */
export function lostCutLayers(record: CutRecord, hasLayer: (layerId: string) => boolean): string[] {
  if (record.state !== "pending" || record.volumeUids === undefined) return [];
  return record.volumeUids.map((uid) => snapshotLayerId(uid, record.snapshotId)).filter((layerId) => !hasLayer(layerId));
}

/**
 * What one node holds of a volume, in the one sense `volume info`, `route show`, `route nodes`
 * and the shoal_volume_* metrics all use: pages written are the pages of the volume's own (head)
 * layer; bytes used are the bytes of its head layer and of all its snapshots' layers, so that
 * taking a snapshot and then overwriting shows up as space, wherever it is looked at.
 */
export function volumeUsageOn(layers: Iterable<[string, { pages: number; bytes: number }]>, volumeUid: string): { pagesWritten: number; bytesUsed: number; layers: number } {
  const usage = { pagesWritten: 0, bytesUsed: 0, layers: 0 };
  for (const [layerId, held] of layers) {
    if (layerId !== volumeUid && !layerId.startsWith(`${volumeUid}@`)) continue;
    if (layerId === volumeUid) usage.pagesWritten += held.pages;
    usage.bytesUsed += held.bytes;
    usage.layers++;
  }
  return usage;
}

export function snapshotKey(record: Pick<SnapshotRecord, "volumeUid" | "snapshotId">): string {
  return `${record.volumeUid}/${record.snapshotId}`;
}

/** Splits "VOL@NAME". */
export function parseSnapshotRef(ref: string): { volume: string; name: string } {
  const at = ref.indexOf("@");
  if (at <= 0 || at === ref.length - 1) {
    throw new ShoalError("BAD_ARGUMENT", `'${ref}' is not VOL@SNAPSHOT`);
  }
  return { volume: ref.slice(0, at), name: ref.slice(at + 1) };
}

export function isNewerSnapshot(candidate: SnapshotRecord, current: SnapshotRecord | undefined): boolean {
  return !current || candidate.version > current.version;
}
