// Page moves on this node: as the source it drives one MoveStep at a time per volume (freezing
// the pages' requests, shipping their layers, committing the new routing table); as the target
// it stores shipped pages durably. The volume router asks it which pages are frozen.
import { asShoalError, ShoalError } from "../../core/errors.ts";
import { MoveStepRunner } from "../../core/move/move-step-runner.ts";
import { MoveStep } from "../../core/move/page-move.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { ImportBatch, type PageExport, type PagePiece, type PageStore } from "../../core/store/page-store.ts";
import { ownerOf } from "../../core/cluster/routing.ts";
import { volumeFromWire, type VolumeRecord, type VolumeRecordWire } from "../../core/cluster/volume.ts";
import { dataBuffers } from "../wire/buffer-pool.ts";
import { Payload, type FrameHeader } from "../mesh/frame.ts";
import type { Group } from "../mesh/group.ts";
import type { MeshConnection, Reply } from "../mesh/mesh-connection.ts";
import { fetchOver, receiveVolumeWire } from "../mesh/record-pieces.ts";
import { type PeerArgs, readPeerArgs } from "../mesh/peer-ops.ts";
import type { MeshLog, PeerLink } from "../mesh/mesh.ts";
import type { RunningMoveSteps } from "./running-move-steps.ts";

/** What a move needs to know of snapshots on this node. */
export interface SnapshotActivity {
  /** A snapshot of the volume is prepared or cut here and not finished. */
  involves(volume: string): boolean;
}

/**
 * Pages shipped at once; each is one request (or a few, for pages with many layers). One keeps
 * the link busy already: measured, four moved no faster and tripled clients' p99 during a
 * rebalance (97 vs 39 ms), every node's event loop busy with 4 MiB reads and writes.
 */
const INSTALL_CONCURRENCY = 1;
/** Staged pieces of a page nobody finished sending are dropped after this. */
const STAGING_TTL_MS = 60_000;
const QUIET_POLL_MS = 5;
/** Unfrozen copy rounds at most before the pages are frozen for the rest. */
const PRECOPY_ROUNDS = 4;

/** Layers of a volume's own family: its head (the uid) and its snapshots (uid@id). */
export function familyOf(uid: string): (layerId: string) => boolean {
  const prefix = `${uid}@`;
  return (layerId) => layerId === uid || layerId.startsWith(prefix);
}

export class PageMover {
  /** Requests waiting for frozen pages, by `${uid}:${page}`. */
  private readonly frozen = new Map<string, (() => void)[]>();
  /** Pages written during a step's copy, by volume uid (see the "precopy" effect). */
  private readonly written = new Map<string, Set<number>>();
  private readonly staged = new Map<string, { pieces: PagePiece[]; layers: PageExport["layers"]; expiresAtMs: number }>();
  /** Pages installed per step, made durable together when the source seals the step. */
  private readonly batches = new Map<string, { batch: ImportBatch; expiresAtMs: number }>();

  constructor(
    private readonly group: Group,
    private readonly store: PageStore,
    private readonly log: MeshLog,
    /** Steps wait while a snapshot involves their volume (see the "quiet" effect). */
    private readonly snapshots: SnapshotActivity,
    /** The steps running here, one per volume (shared with the snapshot service). */
    private readonly running: RunningMoveSteps,
  ) {}

  // ---- the data path's questions

  /** True while a step ships this page: requests to it must wait (see thaw). */
  isFrozen(uid: string, page: number): boolean {
    return this.frozen.size > 0 && this.frozen.has(`${uid}:${page}`);
  }

  /** A write to a page this node owns is about to be applied: a step copying it sends it again. */
  noteWrite(uid: string, page: number): void {
    if (this.written.size > 0) this.written.get(uid)?.add(page);
  }

  /** Runs `retry` once the page thaws; it routes again by the table then current. */
  whenThawed(uid: string, page: number, retry: () => void): void {
    this.frozen.get(`${uid}:${page}`)!.push(retry);
  }

  // ---- mesh

  handle(op: string, args: FrameHeader, payload: Payload, connection: MeshConnection): Reply | Promise<Reply> | undefined {
    switch (op) {
      case "move.step": {
        const stepArgs = readPeerArgs(op, args);
        // The next record comes inline, or (a table moved page by page) is pulled from the coordinator.
        return receiveVolumeWire(args, fetchOver(connection))
          .then((wire) => this.step(volumeFromWire(wire as VolumeRecordWire), stepArgs))
          .then((result) => ({ result }));
      }
      case "move.install":
        return this.install(readPeerArgs(op, args), payload);
      case "move.seal": {
        const { stepId, final } = readPeerArgs(op, args);
        return this.seal(stepId, final !== false);
      }
      default:
        return undefined;
    }
  }

  // ---- source

  /**
   * Runs one step: `next` is the volume's next record, built by the move's coordinator, in
   * which `pages` (owned here now) belong to `to`.
   */
  step(next: VolumeRecord, { pages, to, stepId }: PeerArgs<"move.step">): Promise<FrameHeader> {
    const current = this.group.volumeByUid(next.uid);
    if (!current) throw new ShoalError("UNKNOWN_VOLUME", `node ${this.group.selfId} has no volume with uid ${next.uid}`);
    if (next.version <= current.version || next.moving?.moveId !== current.moving?.moveId || !next.moving) {
      throw new ShoalError("STALE_ROUTE", `volume '${current.name}' changed under the move (version ${current.version} here); retry the move`);
    }
    for (const page of pages) {
      if (page >= current.routing.owners.length) throw new ShoalError("OUT_OF_RANGE", `page ${page} is not in '${current.name}'`);
      if (ownerOf(current.routing, page) !== this.group.selfId) {
        throw new ShoalError("NOT_OWNER", `node ${this.group.selfId} does not own page ${page} of '${current.name}' (routing version ${current.routing.version})`);
      }
      if (ownerOf(next.routing, page) !== to) throw new ShoalError("BAD_REQUEST", `the new table does not give page ${page} to ${to}`);
    }
    if (to === this.group.selfId || !this.group.members.has(to)) throw new ShoalError("UNKNOWN_NODE", `cannot move pages to '${to}'`);
    if (this.running.has(current.name)) throw new ShoalError("CONFLICT", `a move step of '${current.name}' is already running on node ${this.group.selfId}`);
    const step = new MoveStep({ stepId, volume: current.name, volumeUid: current.uid, pages, to, newVersion: next.version, nowMs: Date.now() });
    const done = this.drive(step, next);
    this.running.track(current.name, done);
    return done;
  }

  private drive(step: MoveStep, next: VolumeRecord): Promise<FrameHeader> {
    const uid = step.request.volumeUid;
    const stepId = step.request.stepId;
    let bytes = 0;
    return new Promise<FrameHeader>((resolve, reject) => {
      const failure = (err: unknown) => asShoalError(err).toWire();
      let ticker: ReturnType<typeof setInterval> | undefined;
      // The effects' wiring is shared with the simulation (core/move/move-step-runner.ts); the I/O is here.
      const runner = new MoveStepRunner(step, {
        nowMs: () => Date.now(),
        freeze: (pages) => {
          for (const page of pages) this.frozen.set(`${uid}:${page}`, []);
        },
        precopy: (pages, to, done) => {
          // Written pages are noted from now until the freeze, which comes in the same turn as
          // the copy's end: a write in between cannot slip through unnoticed.
          const written = new Set<number>();
          this.written.set(uid, written);
          this.precopy(uid, pages, to, stepId, written).then(
            (shipped) => {
              bytes += shipped;
              this.written.delete(uid);
              done({ written: [...written] });
            },
            (err) => {
              this.written.delete(uid);
              done({ error: failure(err) });
            },
          );
        },
        install: (pages, to, done) => {
          this.ship(uid, pages, to, stepId)
            .then(async (shipped) => {
              bytes += shipped;
              // One fsync pass at the target for every page of the step, copied or sent again.
              await this.group.link(to).request("move.seal", { stepId, final: true }, undefined, 60_000);
            })
            .then(
              () => done(),
              (err) => done(failure(err)),
            );
        },
        commit: (done) => {
          // The point of no return: the new table is on disk here before anyone hears of it.
          // Synced off the event loop; the frozen pages' requests wait, the rest run on.
          try {
            this.group.applyVolume(next, "later");
          } catch (err) {
            done(failure(err));
            return;
          }
          this.group.durable().then(
            () => done(),
            (err) => {
              // The new table may or may not be on disk: going on would publish a commit this
              // node can forget. The catalog has called the fatal hook (core/invariant.ts),
              // which in a node does not return; where it does, the step stops unpublished.
              done(failure(err));
            },
          );
        },
        publish: (to, done) => {
          this.group.sendVolume(to, next).then(
            () => done(),
            (err) => done(failure(err)),
          );
        },
        removePages: (pages) => this.store.removePages(pages, familyOf(uid)),
        unfreeze: (pages) => this.thaw(uid, pages),
        done: (effect) => {
          clearInterval(ticker);
          if (!effect.ok) {
            reject(new ShoalError(effect.error.code, effect.error.message));
            return;
          }
          if (!effect.published) this.log.warn(`move step ${stepId}: node ${step.request.to} has not confirmed it owns the pages; it learns by digest`, { peer: step.request.to });
          // Everyone else learns now; members that are down catch up by digest.
          void this.group.publishVolume(next, []).catch(() => undefined);
          resolve({ version: next.version, published: effect.published, bytes });
        },
      });
      ticker = setInterval(() => runner.run(step.onTick(Date.now())), 100);
      // The check and the freeze happen in one turn: no snapshot can start in between.
      const waitQuiet = () => {
        if (step.phase !== "quiet") return;
        if (this.snapshots.involves(step.request.volume)) setTimeout(waitQuiet, QUIET_POLL_MS);
        else runner.run(step.onQuiet(Date.now()));
      };
      waitQuiet();
    });
  }

  private thaw(uid: string, pages: number[]): void {
    for (const page of pages) {
      const key = `${uid}:${page}`;
      const waiting = this.frozen.get(key);
      this.frozen.delete(key);
      for (const retry of waiting ?? []) retry();
    }
  }

  /**
   * Copies the pages while clients keep writing them, then copies again those written meanwhile,
   * for a few rounds while that shrinks: the pages are frozen only for the last few written. The
   * target syncs what it has before the freeze, so the frozen part waits for little I/O.
   * `written` collects the pages written since the current round began.
   */
  private async precopy(uid: string, pages: number[], to: string, stepId: string, written: Set<number>): Promise<number> {
    let bytes = 0;
    let round = pages;
    for (let rounds = 0; ; rounds++) {
      written.clear();
      bytes += await this.ship(uid, round, to, stepId);
      if (written.size <= 1 || written.size >= round.length || rounds + 1 >= PRECOPY_ROUNDS) break;
      round = [...written];
    }
    // Writes during this sync land in `written` too: their pages go again, frozen.
    await this.group.link(to).request("move.seal", { stepId, final: false }, undefined, 60_000);
    return bytes;
  }

  /** Ships the pages' layers to the target, a few pages at a time (made durable by move.seal). */
  private async ship(uid: string, pages: number[], to: string, stepId: string): Promise<number> {
    const link = this.group.link(to);
    const inFamily = familyOf(uid);
    let next = 0;
    let bytes = 0;
    const worker = async () => {
      while (next < pages.length) {
        const page = pages[next++]!;
        // Read when sent, not all up front: the copy is as fresh as it can be.
        const buffers: Uint8Array[] = [];
        const exported = this.store.exportPage(page, inFamily, (size) => {
          const buffer = dataBuffers.acquire(size);
          buffers.push(buffer);
          return buffer;
        });
        try {
          await this.shipPage(link, stepId, uid, page, exported, (sent) => (bytes += sent));
        } finally {
          for (const buffer of buffers) dataBuffers.release(buffer);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(INSTALL_CONCURRENCY, pages.length) }, worker));
    return bytes;
  }

  /** One page: a request per group of layers that fits a frame, the last with the layer stack. */
  private async shipPage(link: PeerLink, stepId: string, uid: string, page: number, exported: PageExport, sent: (bytes: number) => void): Promise<void> {
    const groups = splitPieces(exported.pieces);
    for (let index = 0; index < groups.length; index++) {
      const group = groups[index]!;
      const last = index === groups.length - 1;
      const payload = Payload.concat(group.flatMap((piece) => piece.data));
      sent(payload.byteLength);
      const pieces = group.map(({ data, ...meta }) => ({ ...meta, bytes: data.reduce((sum, part) => sum + part.byteLength, 0) }));
      await link.request("move.install", { stepId, v: uid, p: page, last, ...(last ? { layers: exported.layers } : {}), pieces }, payload, 30_000);
    }
  }

  // ---- target

  private async install({ stepId, v: uid, p: page, last, layers = [], pieces }: PeerArgs<"move.install">, payload: Payload): Promise<Reply> {
    const record = this.group.volumeByUid(uid);
    if (!record) throw new ShoalError("UNKNOWN_VOLUME", `node ${this.group.selfId} has no volume with uid ${uid}`);
    if (page >= record.routing.owners.length) throw new ShoalError("OUT_OF_RANGE", `page ${page} is not in '${record.name}'`);
    if (ownerOf(record.routing, page) === this.group.selfId) {
      throw new ShoalError("CONFLICT", `node ${this.group.selfId} already owns page ${page} of '${record.name}'`);
    }
    const key = `${stepId}:${uid}:${page}`;
    const now = Date.now();
    for (const [stale, entry] of this.staged) if (entry.expiresAtMs < now) this.staged.delete(stale);
    for (const [stale, entry] of this.batches) if (entry.expiresAtMs < now) this.batches.delete(stale);
    const entry = this.staged.get(key) ?? { pieces: [], layers: [], expiresAtMs: now + STAGING_TTL_MS };
    this.staged.set(key, entry);
    // Views of the received chunks (each has a buffer of its own, never reused): no copy.
    const lengths = pieces.map((piece) => piece.bytes);
    if (lengths.reduce((sum, length) => sum + length, 0) !== payload.byteLength) {
      throw new ShoalError("BAD_REQUEST", "move.install pieces do not match the payload");
    }
    const datas = splitParts(payload.parts, lengths);
    pieces.forEach(({ layer, pageSizeBytes, chunkShift, states }, index) => {
      if (states !== undefined && chunkShift === undefined) throw new ShoalError("BAD_ARGUMENT", `'move.install': argument 'pieces[${index}].chunkShift' must come with its states`);
      entry.pieces.push({ layer, pageSizeBytes, ...(states !== undefined ? { chunkShift, states: new Uint8Array(states) } : {}), data: datas[index]! });
    });
    if (!last) return {};
    this.staged.delete(key);
    let step = this.batches.get(stepId);
    if (!step) this.batches.set(stepId, (step = { batch: new ImportBatch(), expiresAtMs: now + STAGING_TTL_MS }));
    this.store.importPage(page, { layers, pieces: entry.pieces }, familyOf(uid), step.batch);
    this.store.startSync(step.batch);
    return {};
  }

  /** The source sent every page of a step: make them durable before it commits. */
  /** Syncs what the step installed so far; the final seal (before the source commits) also ends the step here. */
  private async seal(stepId: string, final: boolean): Promise<Reply> {
    const step = this.batches.get(stepId);
    if (!step) throw new ShoalError("CONFLICT", `node ${this.group.selfId} has no pages of move step ${stepId} (restarted since?)`);
    if (final) this.batches.delete(stepId);
    await this.store.syncImport(step.batch);
    return {};
  }
}

/** Groups pieces so each request stays under the mesh's payload limit. */
function splitPieces(pieces: PagePiece[]): PagePiece[][] {
  const groups: PagePiece[][] = [[]];
  let bytes = 0;
  for (const piece of pieces) {
    const pieceBytes = piece.data.reduce((sum, part) => sum + part.byteLength, 0);
    if (pieceBytes > MAX_REQUEST_BYTES) throw new ShoalError("TOO_LARGE", `a page copy of ${pieceBytes} bytes is over the mesh limit`);
    if (bytes + pieceBytes > MAX_REQUEST_BYTES) {
      groups.push([]);
      bytes = 0;
    }
    groups[groups.length - 1]!.push(piece);
    bytes += pieceBytes;
  }
  return groups;
}

/** Cuts a run of byte arrays into consecutive pieces of the given lengths, as views. */
export function splitParts(parts: Uint8Array[], lengths: number[]): Uint8Array[][] {
  const pieces: Uint8Array[][] = [];
  let index = 0;
  let offset = 0;
  for (let length of lengths) {
    const piece: Uint8Array[] = [];
    while (length > 0) {
      const part = parts[index]!;
      const take = Math.min(length, part.byteLength - offset);
      piece.push(part.subarray(offset, offset + take));
      length -= take;
      offset += take;
      if (offset === part.byteLength) {
        index++;
        offset = 0;
      }
    }
    pieces.push(piece);
  }
  return pieces;
}
