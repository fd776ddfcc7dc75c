// The data path's page requests as they cross the mesh (page.read/write/zero/status, and the
// answers of page.write/zero/replicate): what the sending node puts in a request's header and what
// the receiving one checks before it runs it. Checked inline, not by the peer-ops table: these run
// once per forwarded request (see pageAddress).
import { ShoalError } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import type { VolumeRecord } from "../../core/cluster/volume.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import type { FrameHeader } from "../mesh/frame.ts";
import type { Group } from "../mesh/group.ts";
import type { Target } from "./volume-router.ts";

/** The node (and its incarnation) that applied a write: a FLUSH through the entry node owes it one. */
export interface Applier {
  n: string;
  b: string;
}

/**
 * A page request's arguments, made for every forwarded request: no spread, and no field that
 * is undefined (msgpackr encodes those too, and packing plus unpacking the header then takes
 * twice as long: 6.8 vs 3.1 µs measured here).
 */
export function pageAddress(target: Target, page: number, pageOffset: number, hops: number, length: number | undefined, fua?: boolean): FrameHeader {
  const args: FrameHeader = { v: target.record.uid, p: page, o: pageOffset, h: hops };
  if (target.layer !== target.record.uid) args.l = target.layer;
  if (length !== undefined) args.n = length;
  if (fua !== undefined) args.f = fua;
  return args;
}

/** How a target is named on the wire: the volume uid, and the layer when it is not the head. */
export function addressOf(target: Target): { v: string; l?: string } {
  return target.layer === target.record.uid ? { v: target.record.uid } : { v: target.record.uid, l: target.layer };
}

/** The volume (and layer) a peer's request names, as this node knows it. */
export function targetOf(group: Group, store: PageStore, args: FrameHeader): Target {
  const uid = args.v;
  const record = typeof uid === "string" ? group.volumeByUid(uid) : undefined;
  if (!record) throw new ShoalError("UNKNOWN_VOLUME", `node ${group.selfId} has no volume with uid ${String(uid)}`);
  const layer = args.l;
  if (layer === undefined) return { record, layer: record.uid };
  if (typeof layer !== "string") throw new ShoalError("BAD_ARGUMENT", `argument 'l' (the layer) must be a string`);
  if (!layer.startsWith(`${record.uid}@`) || !store.hasLayer(layer)) {
    throw new ShoalError("UNKNOWN_SNAPSHOT", `node ${group.selfId} has no snapshot layer ${layer}`);
  }
  return { record, layer };
}

/** A peer's page request: its target, page and offset checked, and the hops it has made so far. */
export function pageArgs(group: Group, store: PageStore, args: FrameHeader): { target: Target; page: number; pageOffset: number; hops: number } {
  const target = targetOf(group, store, args);
  const page = args.p;
  const pageOffset = args.o;
  if (!Number.isInteger(page) || !Number.isInteger(pageOffset) || (pageOffset as number) < 0) {
    throw new ShoalError("BAD_REQUEST", "page request has no valid page or offset");
  }
  if ((page as number) >= target.record.routing.owners.length) {
    throw new ShoalError("OUT_OF_RANGE", `page ${String(page)} is past the end of '${target.record.name}'`);
  }
  const hops = Number.isInteger(args.h) ? (args.h as number) : 1;
  return { target, page: page as number, pageOffset: pageOffset as number, hops };
}

/** A page request's length, checked against the request limit and the page. */
export function checkedLength(value: unknown, record: VolumeRecord, pageOffset: number): number {
  if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > MAX_REQUEST_BYTES) {
    throw new ShoalError("BAD_REQUEST", `page request length ${String(value)} is invalid`);
  }
  if (pageOffset + (value as number) > record.pageSizeBytes) {
    throw new ShoalError("OUT_OF_RANGE", `range ${pageOffset}+${String(value)} is outside a page of ${record.pageSizeBytes} bytes`);
  }
  return value as number;
}

/**
 * A write's answer: who applied it (a write passed on reports the nodes that really did), the
 * primary as `n`/`b` (what older nodes read) and its replicas in `r`; `selfId`/`bootId` when this
 * node alone did.
 */
export function answerFor(appliers: Applier[] | void, selfId: string, bootId: string): FrameHeader {
  if (!appliers || appliers.length === 0) return { n: selfId, b: bootId };
  const [primary, ...replicas] = appliers;
  const answer: FrameHeader = { n: primary!.n, b: primary!.b };
  if (replicas.length > 0) answer.r = replicas as unknown as FrameHeader[];
  return answer;
}

/** Who applied a forwarded write, the primary first; an answer without one (an older node) names the node asked. */
export function appliersOf(result: FrameHeader, asked: string): Applier[] {
  const first: Applier = typeof result.n === "string" && typeof result.b === "string" ? { n: result.n, b: result.b } : { n: asked, b: "" };
  const more = Array.isArray(result.r) ? (result.r as unknown[]).filter(isApplier) : [];
  return [first, ...more];
}

function isApplier(value: unknown): value is Applier {
  const applier = value as Applier | null;
  return typeof applier === "object" && applier !== null && typeof applier.n === "string" && typeof applier.b === "string";
}
