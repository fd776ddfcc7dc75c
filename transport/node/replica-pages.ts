// The data of a replica's catch-up copies and joins: each page with every layer of its volume's
// family (the head and the snapshots), so a copy that was away comes back holding the snapshots
// cut meanwhile exactly as the others do. The source exports pages as a move does; a copy too
// large for one message (16 MiB) goes ahead in `replica.stage` pieces, held on the receiver
// (bounded, expiring) until the copy comes; the receiver brings its stack of layers level with
// the source's (catch-up-layers.ts) and installs every page's layers together.
import { catchUpLayers, chainBelow } from "../../core/replica/catch-up-layers.ts";
import type { ChunkRange } from "../../core/replica/page-groups.ts";
import { ShoalError } from "../../core/errors.ts";
import { ImportBatch, type PageExport, type PagePiece, type PageStore } from "../../core/store/page-store.ts";
import type { FrameHeader, Payload } from "../mesh/frame.ts";
import type { MeshLog } from "../mesh/mesh.ts";
import { readCatchUpArgs, readPeerArgs, type CatchUpArgs } from "../mesh/peer-ops.ts";
import { familyOf, splitParts } from "../move/page-mover.ts";

/** A message carries at most this many bytes of page data (a frame holds 32 MiB). */
export const CATCH_UP_MESSAGE_BYTES_MAX = 16 * 1024 * 1024;
/** Staged pieces of copies not yet complete, over every sender: past this, more are refused (the copy is sent again). */
const STAGED_BYTES_MAX = 256 * 1024 * 1024;
/** Staged pieces whose copy never came are dropped after this. */
const STAGED_TTL_MS = 60_000;

/** Pages read for a catch-up message: what goes in its header, and the bytes, in order, split into messages. */
export interface OutgoingPages {
  args: FrameHeader;
  /** All but the last go ahead as `replica.stage` under `args.k`; the last is the message's payload. */
  messages: Uint8Array[][];
  bytes: number;
}

/** A received copy's page ranges (rangeKey), ready to install once the member says to apply them. */
export interface ReceivedPages {
  layers: PageExport["layers"];
  ranges: Map<string, PagePiece[]>;
}

/** A page range as a key: "page+offset+length". */
export function rangeKey(range: ChunkRange): string {
  return `${range.page}+${range.offset}+${range.length}`;
}

export class ReplicaPages {
  private readonly staged = new Map<string, { parts: Uint8Array[]; bytes: number; expiresAtMs: number }>();
  private stagedBytes = 0;
  private stageSeq = 0;

  constructor(
    private readonly store: PageStore,
    private readonly log: MeshLog,
    private readonly selfId: string,
  ) {}

  // ---- source

  /** The page ranges with every layer of the volume's family, read now (one consistent moment per page). */
  export(uid: string, ranges: ChunkRange[]): OutgoingPages {
    const inFamily = familyOf(uid);
    const data: Uint8Array[] = [];
    const x = ranges.map(({ page, offset, length }) => {
      const exported = this.store.exportPage(page, inFamily, undefined, { offset, length });
      const pieces = exported.pieces.map(({ data: parts, ...meta }) => {
        data.push(...parts);
        return { ...meta, bytes: parts.reduce((sum, part) => sum + part.byteLength, 0) };
      });
      return { p: page, o: offset, n: length, pieces };
    });
    const messages = splitBytes(data, CATCH_UP_MESSAGE_BYTES_MAX);
    // The stack goes even with no page: the receiver levels its layers with it all the same.
    const args: FrameHeader = { xl: this.stackOf(uid), x };
    if (messages.length > 1) args.k = `${this.selfId}.${++this.stageSeq}`;
    return { args, messages, bytes: data.reduce((sum, part) => sum + part.byteLength, 0) };
  }

  /** The layers of the volume's family and those they stand on, each after its parent (as exportPage lists them). */
  private stackOf(uid: string): PageExport["layers"] {
    const all = this.store.layers();
    const byId = new Map(all.map((layer) => [layer.id, layer]));
    const inFamily = familyOf(uid);
    const seen = new Set<string>();
    const stack: PageExport["layers"] = [];
    for (const layer of all) {
      if (!inFamily(layer.id)) continue;
      const chain: PageExport["layers"] = [];
      for (let at: typeof layer | undefined = layer; at !== undefined && !seen.has(at.id); at = at.parent === undefined ? undefined : byId.get(at.parent)) {
        seen.add(at.id);
        chain.unshift({ id: at.id, ...(at.parent !== undefined ? { parent: at.parent } : {}) });
      }
      stack.push(...chain);
    }
    return stack;
  }

  // ---- receiver

  /** `replica.stage`: holds the bytes until the copy they belong to comes. */
  stage(args: FrameHeader, payload: Payload): void {
    const { k: key } = readPeerArgs("replica.stage", args);
    this.expire(Date.now());
    const entry = this.staged.get(key) ?? { parts: [], bytes: 0, expiresAtMs: Date.now() + STAGED_TTL_MS };
    if (this.stagedBytes + payload.byteLength > STAGED_BYTES_MAX) {
      this.forget(key);
      throw new ShoalError("TOO_LARGE", `node ${this.selfId} holds ${this.stagedBytes} bytes of catch-up copies already; this copy is sent again later`);
    }
    entry.parts.push(...payload.parts);
    entry.bytes += payload.byteLength;
    this.stagedBytes += payload.byteLength;
    this.staged.set(key, entry);
  }

  /**
   * A copy's or join's pages, with its staged bytes; undefined (after a warning) when they do not
   * add up: the copy is then not applied, and the source sends it again.
   */
  received(what: string, args: FrameHeader, payload: Payload): ReceivedPages | undefined {
    let catchUp: CatchUpArgs;
    try {
      catchUp = readCatchUpArgs(args);
    } catch (err) {
      this.log.warn(`${what}: ${(err as Error).message}; not applied`);
      return undefined;
    }
    const staged = catchUp.k === undefined ? [] : (this.forget(catchUp.k)?.parts ?? []);
    const parts = [...staged, ...payload.parts];
    const lengths = catchUp.x.flatMap((page) => page.pieces.map((piece) => piece.bytes));
    const total = parts.reduce((sum, part) => sum + part.byteLength, 0);
    if (lengths.reduce((sum, length) => sum + length, 0) !== total) {
      this.log.warn(`${what} came with ${total} bytes for pieces of ${lengths.reduce((sum, length) => sum + length, 0)}; not applied (it is sent again)`);
      return undefined;
    }
    const datas = splitParts(parts, lengths);
    let index = 0;
    const ranges = new Map<string, PagePiece[]>();
    for (const { p, o, n, pieces } of catchUp.x) {
      ranges.set(
        rangeKey({ page: p, offset: o, length: n }),
        pieces.map(({ layer, pageSizeBytes, chunkShift, states }) => ({ layer, pageSizeBytes, ...(states !== undefined ? { chunkShift, states: new Uint8Array(states) } : {}), data: datas[index++]! })),
      );
    }
    return { layers: catchUp.xl, ranges };
  }

  /**
   * Brings this node's stack of the volume's layers level with the source's before its pages are
   * installed: snapshots cut while this copy was away are frozen from its head (which holds only
   * pages from before them), and layers of snapshots deleted meanwhile (`deletedLayer`) are
   * removed. False when the copy cannot be applied now (read before a cut seen here, stacks that
   * disagree, a removal under way): it is dropped and comes again.
   */
  levelLayers(what: string, uid: string, received: ReceivedPages, deletedLayer: (layerId: string) => boolean): boolean {
    const layers = this.store.layers();
    // Installing into a layer being deleted would fail half-way, after the member took the copy
    // as applied: such a copy waits until the deletion is done.
    const copied = new Set(received.layers.map((layer) => layer.id));
    if (layers.some((layer) => layer.deleting && copied.has(layer.id))) return false;
    const here = chainBelow(uid, layers.map((layer) => ({ id: layer.id, ...(layer.parent !== undefined ? { parent: layer.parent } : {}) })));
    const source = chainBelow(uid, received.layers);
    const plan = catchUpLayers(source, here);
    if (plan.kind !== "freeze") {
      // A snapshot deleted while this copy was away, or while it catches up, whose layer is still
      // here: it goes now, as its deletion would have taken it, and the copy comes again.
      const stale = here.filter((layer) => !source.includes(layer) && deletedLayer(layer));
      const deleting = new Set(layers.filter((layer) => layer.deleting).map((layer) => layer.id));
      for (const layer of stale.filter((id) => !deleting.has(id))) {
        this.log.info(`${what}: removing layer ${layer} of a snapshot deleted meanwhile before the copy is applied`);
        this.store.deleteLayer(layer).catch((err) => this.log.warn(`removing layer ${layer} failed: ${(err as Error).message}`));
      }
      if (stale.length > 0) return false;
    }
    if (plan.kind === "behind") return false;
    if (plan.kind === "diverged") {
      this.log.warn(`${what}: the source's snapshots (${plan.source.join(", ")}) and this node's (${plan.here.join(", ")}) disagree; not applied until they agree`);
      return false;
    }
    for (const layer of plan.layers) {
      this.store.freezeLayer(uid, layer);
      this.log.info(`${what}: took snapshot layer ${layer}, cut while this copy was away, from the pages it held`);
    }
    return true;
  }

  /** Installs the named page ranges with all their layers; resolves once they and the layer table are durable. */
  install(uid: string, received: ReceivedPages, ranges: ChunkRange[]): Promise<void> {
    const batch = new ImportBatch();
    const inFamily = familyOf(uid);
    for (const range of ranges) {
      const { page, offset, length } = range;
      this.store.importPage(page, { layers: received.layers, pieces: received.ranges.get(rangeKey(range)) ?? [] }, inFamily, batch, { offset, length });
    }
    return Promise.all([this.store.syncImport(batch), this.store.flushVolume(uid)]).then(() => {});
  }

  private forget(key: string): { parts: Uint8Array[]; bytes: number } | undefined {
    const entry = this.staged.get(key);
    if (entry === undefined) return undefined;
    this.staged.delete(key);
    this.stagedBytes -= entry.bytes;
    return entry;
  }

  private expire(nowMs: number): void {
    for (const [key, entry] of this.staged) if (entry.expiresAtMs < nowMs) this.forget(key);
  }
}

/** Consecutive groups of the bytes, each at most `maxBytes` (a larger array is cut into views); at least one group. */
export function splitBytes(parts: Uint8Array[], maxBytes: number): Uint8Array[][] {
  const groups: Uint8Array[][] = [[]];
  let bytes = 0;
  for (let part of parts) {
    while (part.byteLength > 0) {
      if (bytes === maxBytes) {
        groups.push([]);
        bytes = 0;
      }
      const take = Math.min(part.byteLength, maxBytes - bytes);
      groups[groups.length - 1]!.push(part.subarray(0, take));
      bytes += take;
      part = part.subarray(take);
    }
  }
  return groups;
}
