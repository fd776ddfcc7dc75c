// What members send about the group, checked before anything of it is stored or linked to:
// member records (in hellos, joins and dumps), snapshot records, catalog dumps. A record that
// fails is refused as BAD_REQUEST/BAD_FRAME; the group logs it once and keeps the link up.
import { ShoalError } from "../../core/errors.ts";
import { isValidIdentity, isValidMemberAddress, isValidNodeId, type Member } from "../../core/cluster/member.ts";
import type { VolumeRecordWire } from "../../core/cluster/volume.ts";
import type { SnapshotRecord } from "../../core/snapshot/snapshot-record.ts";
import { unpackValue, type FrameHeader, type Payload } from "./frame.ts";
import { parsePiecedRef, pullPieces, type PieceFetch, type PiecedRef } from "./record-pieces.ts";

export interface GroupDump {
  groupId: string;
  members: Member[];
  volumes: VolumeRecordWire[];
  /** Records too big to go inline (their tables moved page by page): pulled only if newer. */
  volumeRefs?: PiecedRef[];
  snapshots?: SnapshotRecord[];
}

/** A dump from a reply: inline (old members), packed in the payload, or pulled piece by piece. */
export async function receiveDump(response: { result: FrameHeader; payload: Payload }, fetch: PieceFetch): Promise<GroupDump> {
  const { result, payload } = response;
  let dump: unknown = result;
  if (result.dumpRef !== undefined) dump = await pullPieces(parsePiecedRef(result.dumpRef), fetch);
  else if (result.packed === true) dump = unpackValue(payload.bytes());
  if (typeof dump !== "object" || dump === null || typeof (dump as GroupDump).groupId !== "string") {
    throw new ShoalError("BAD_FRAME", "catalog dump is malformed");
  }
  return dump as GroupDump;
}

/** False when the member's identity is known and the record claims another (or none). */
export function sameIdentity(known: Member, claimed: Member): boolean {
  return known.identity === undefined || claimed.identity === known.identity;
}

export function volumeLabel(wire: VolumeRecordWire | undefined): string {
  return `volume record '${String(wire?.name).slice(0, 64)}' (version ${String(wire?.version)})`;
}

export function parseSnapshotRecord(value: unknown): SnapshotRecord {
  const record = value as SnapshotRecord | undefined;
  if (!record || typeof record.snapshotId !== "string" || typeof record.volumeUid !== "string" || typeof record.name !== "string") {
    throw new ShoalError("BAD_REQUEST", "snapshot record is malformed");
  }
  return record;
}

export function parseMember(value: unknown): Member {
  const member = value as Member | undefined;
  if (!member || typeof member.id !== "string" || typeof member.meshAddress !== "string" || typeof member.nbdAddress !== "string") {
    throw new ShoalError("BAD_REQUEST", "member record is malformed");
  }
  // A garbled address would re-point the member's link and be stored in the catalog.
  if (!isValidNodeId(member.id) || !isValidMemberAddress(member.meshAddress) || !isValidMemberAddress(member.nbdAddress)) {
    throw new ShoalError("BAD_REQUEST", `member record for '${member.id.slice(0, 64)}' has an invalid id or address`);
  }
  if (member.identity !== undefined && (typeof member.identity !== "string" || !isValidIdentity(member.identity))) {
    throw new ShoalError("BAD_REQUEST", `member record for '${member.id}' has an invalid identity`);
  }
  return {
    id: member.id,
    meshAddress: member.meshAddress,
    nbdAddress: member.nbdAddress,
    joinedAtMs: Number(member.joinedAtMs) || Date.now(),
    ...(member.identity !== undefined ? { identity: member.identity } : {}),
    ...(member.forgotten === true ? { forgotten: true } : {}),
  };
}
