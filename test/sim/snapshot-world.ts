// A deterministic world for the snapshot protocol: N simulated nodes with skewed, jumping clocks,
// a lossy/duplicating/reordering mesh, crashes that keep only durable state, clients writing
// through random nodes, and a layered block store per node that honours hold, cut and commit wait
// exactly as the real node must, its protocol effects carried out by the node's own runner
// (core/snapshot/snapshot-effect-runner.ts) on records that reach the disk late. It records a history;
// snapshot-checker.ts judges it. This file is the top layer (protocol wiring, snapshots, writes);
// snapshot-world-base.ts holds the world's state, lifecycle and mesh, on test/sim/kernel/.
import { ShoalError } from "../../core/errors.ts";
import type { CoordinatorEffect } from "../../core/snapshot/snapshot-coordinator.ts";
import type { RecordStore, SnapshotEffectHost } from "../../core/snapshot/snapshot-effect-runner.ts";
import type { CoordinatorRecord, NodeId, ParticipantRecord } from "../../core/snapshot/snapshot-messages.ts";
import type { ParticipantEffect } from "../../core/snapshot/snapshot-participant.ts";
import type { History, PieceRecord, SnapshotMeta, VolumeLayout, WorldOptions, WriteRecord } from "./snapshot-history.ts";
import { BLOCKS_PER_PAGE, clone, commitSnapshot, describeEffect, type ClientState, type QueuedPiece, type SnapshotNode } from "./snapshot-node.ts";
import { SnapshotWorldBase } from "./snapshot-world-base.ts";

export * from "./snapshot-history.ts";

export function runWorld(options: WorldOptions): History {
  return new World(options).run();
}

/** The protocol's wiring (the node's own effect runner on simulated I/O), snapshots and client writes. */
class World extends SnapshotWorldBase {
  // ---- effects ----

  protected runCoordinatorEffects(node: SnapshotNode, effects: CoordinatorEffect[]): void {
    node.runner.runCoordinator(effects);
  }

  protected runParticipantEffects(node: SnapshotNode, effects: ParticipantEffect[]): void {
    node.runner.runParticipant(effects);
  }

  /** The simulated node's I/O under the real effect runner. */
  protected effectHost(node: SnapshotNode): SnapshotEffectHost {
    const coordinatorRecords = this.recordStore<CoordinatorRecord>(node, "coordinator");
    const participantRecords = this.recordStore<ParticipantRecord>(node, "participant");
    return {
      send: (to, msg) => this.send(node, to, { kind: "snap", msg }),
      coordinatorRecords,
      participantRecords,
      nowMs: () => this.clock(node),
      ready: () => {},
      publish: () => {},
      done: (effect) => {
        const list = this.history.outcomes.get(effect.snapshotId) ?? [];
        list.push(effect.ok ? { ok: true } : { ok: false, code: effect.error.code, message: effect.error.message });
        this.history.outcomes.set(effect.snapshotId, list);
      },
      hold: (snapshotId, volumes) => {
        node.volatile.holds.set(snapshotId, volumes);
        node.volatile.awaitingDrain.set(snapshotId, volumes);
        this.atOn(node, this.nowMs, () => this.checkDrains(node));
      },
      release: (snapshotId) => {
        node.volatile.holds.delete(snapshotId);
        node.volatile.awaitingDrain.delete(snapshotId);
        this.startReleased(node);
        return undefined;
      },
      cut: (effect) => {
        if (this.syncRng.chance(this.scenario.cutRefusalRate)) {
          return { refusal: new ShoalError("TOO_LARGE", `node ${node.id} has no room for another snapshot of ${effect.volumes.join(",")}`) };
        }
        node.durable.snapshots.set(effect.snapshotId, { state: "pending", volumes: effect.volumes, values: this.freeze(node, effect.volumes) });
        return {
          durable: (done) => {
            participantRecords.put(effect.snapshotId, effect.record);
            participantRecords.durable(done);
          },
        };
      },
      commit: (snapshotId) => commitSnapshot(node, snapshotId),
      discard: (snapshotId) => node.durable.snapshots.delete(snapshotId),
      unfence: (snapshotId) => this.unfence(node, snapshotId),
      beforeEffect: (role, effect) => {
        if (this.maybeStepCrash(node)) return false;
        this.log(`${node.id} ${role} ${effect.kind} ${describeEffect(effect)}`);
        return true;
      },
      durabilityFailed: (role, err) => {
        throw new Error(`${node.id}: the simulated ${role} record store failed: ${String(err)}`);
      },
    };
  }

  /**
   * A node's protocol records: written to memory, on disk only after a sync that takes up to
   * recordSyncMaxMs (a crash before loses them); `durable` completes when the sync has run.
   */
  protected recordStore<R extends CoordinatorRecord | ParticipantRecord>(node: SnapshotNode, role: "coordinator" | "participant"): RecordStore<R> {
    const stored = (role === "coordinator" ? node.durable.coordinatorRecords : node.durable.participantRecords) as Map<string, R>;
    const syncMaxMs = this.scenario.recordSyncMaxMs;
    const write = (snapshotId: string, record: R | undefined): void => {
      if (syncMaxMs > 0) node.volatile.unsyncedRecords.push({ role, snapshotId, record: record && clone(record) });
      else if (record) stored.set(snapshotId, clone(record));
      else stored.delete(snapshotId);
    };
    return {
      put: (snapshotId, record) => write(snapshotId, record),
      remove: (snapshotId) => write(snapshotId, undefined),
      durable: (done) => {
        if (syncMaxMs === 0) return done();
        const early = this.sabotage.recordsDurableEarly === true;
        this.atOn(node, this.nowMs + this.syncRng.range(0, syncMaxMs), () => {
          this.syncRecords(node);
          if (!early) done();
        });
        if (early) done();
      },
    };
  }

  protected syncRecords(node: SnapshotNode): void {
    for (const { role, snapshotId, record } of node.volatile.unsyncedRecords) {
      const stored: Map<string, CoordinatorRecord | ParticipantRecord> = role === "coordinator" ? node.durable.coordinatorRecords : node.durable.participantRecords;
      if (record) stored.set(snapshotId, record);
      else stored.delete(snapshotId);
    }
    node.volatile.unsyncedRecords = [];
  }

  /** The copy-on-write cut, modelled as a copy of this node's blocks of the volumes. */
  protected freeze(node: SnapshotNode, volumes: string[]): Map<string, number> {
    const values = new Map<string, number>();
    for (const layout of this.history.volumes) {
      if (!volumes.includes(layout.name)) continue;
      for (let block = 0; block < layout.blocks; block++) {
        if (layout.ownerOfBlock[block] !== node.id) continue;
        const key = `${layout.name}:${block}`;
        values.set(key, node.durable.head.get(key) ?? 0);
      }
    }
    return values;
  }

  // ---- snapshots ----

  protected startSnapshot(volumes: string[]): void {
    const candidates = this.nodes.filter((n) => n.up);
    if (candidates.length === 0) return;
    const node = this.rng.pick(candidates);
    const participants = new Set<NodeId>();
    for (const layout of this.history.volumes) {
      if (volumes.includes(layout.name)) for (const owner of layout.ownerOfBlock) participants.add(owner);
    }
    const snapshotId = `${node.id}.${node.incarnation}.${++node.snapshotCounter}`;
    const meta: SnapshotMeta = { snapshotId, coordinator: node.id, volumes, participants: [...participants].sort(), startedAtMs: this.nowMs };
    this.history.snapshots.set(snapshotId, meta);
    this.log(`${node.id} START snapshot ${snapshotId} of ${volumes.join(",")} with ${meta.participants.join(",")}`);
    const effects = node.coordinator.startSnapshot({
      snapshotId,
      name: `snap-${snapshotId}`,
      volumes,
      mode: this.options.mode,
      participants: meta.participants,
      holdTimeoutMs: this.scenario.holdTimeoutMs,
      maxClockSkewMs: this.scenario.skewMs,
      nowMs: this.clock(node),
    });
    this.runCoordinatorEffects(node, effects);
    if (node.up) this.rearm(node, false);
  }

  // ---- writes ----

  protected issueWrite(client: ClientState): void {
    if (this.nowMs >= this.scenario.activeEndMs) return;
    const candidates = this.nodes.filter((n) => n.up);
    if (candidates.length === 0) {
      this.at(this.nowMs + 5, () => this.issueWrite(client));
      return;
    }
    const entry = this.rng.pick(candidates);
    const layout = this.rng.pick(this.history.volumes);
    const first = this.rng.int(0, layout.blocks - 1);
    const last = Math.min(layout.blocks - 1, first + this.rng.int(0, 2));
    const writeId = this.nextWriteId++;
    const pieces = this.cutIntoPieces(writeId, layout, first, last);
    const write: WriteRecord = { writeId, issueOrder: ++this.order, ackOrder: Infinity, issueAtMs: this.nowMs, ackAtMs: Infinity, pieceIds: pieces.map((p) => p.pieceId) };
    this.history.writes.set(writeId, write);
    client.current = writeId;
    entry.volatile.pendingWrites.set(writeId, new Set(write.pieceIds));
    for (const piece of pieces) this.send(entry, piece.owner, { kind: "piece", piece, entry: entry.id });
    // A client gives up after a while; an abandoned write counts as never acknowledged.
    const timeoutMs = 3 * this.scenario.holdTimeoutMs + 50;
    this.at(this.nowMs + timeoutMs, () => {
      if (client.current === writeId) this.settleWrite(client);
    });
    this.clients.set(writeId, client);
  }

  protected settleWrite(client: ClientState): void {
    client.current = undefined;
    this.at(this.nowMs + this.rng.range(0, 4), () => this.issueWrite(client));
  }

  /** One piece per page: a page is the unit a single owner applies atomically. */
  protected cutIntoPieces(writeId: number, layout: VolumeLayout, first: number, last: number): PieceRecord[] {
    const pieces: PieceRecord[] = [];
    for (let block = first; block <= last; block++) {
      const previous = pieces[pieces.length - 1];
      if (previous && Math.floor(previous.blocks[0]! / BLOCKS_PER_PAGE) === Math.floor(block / BLOCKS_PER_PAGE)) {
        previous.blocks.push(block);
        continue;
      }
      const piece: PieceRecord = { pieceId: this.nextPieceId++, writeId, volume: layout.name, blocks: [block], owner: layout.ownerOfBlock[block]! };
      pieces.push(piece);
      this.history.pieces.set(piece.pieceId, piece);
    }
    return pieces;
  }

  protected receivePiece(node: SnapshotNode, piece: PieceRecord, entry: NodeId): void {
    if (node.durable.appliedPieces.has(piece.pieceId) || node.volatile.acceptedPieces.has(piece.pieceId)) return;
    node.volatile.acceptedPieces.add(piece.pieceId);
    if (this.isHeld(node, piece.volume)) {
      node.volatile.queue.push({ piece, entry, enqueuedAtMs: this.nowMs });
      return;
    }
    this.startPiece(node, piece, entry);
  }

  protected isHeld(node: SnapshotNode, volume: string): boolean {
    if (this.sabotage.ignoreHold) return false;
    for (const volumes of node.volatile.holds.values()) if (volumes.includes(volume)) return true;
    return false;
  }

  protected startPiece(node: SnapshotNode, piece: PieceRecord, entry: NodeId): void {
    node.volatile.inflight.set(piece.volume, (node.volatile.inflight.get(piece.volume) ?? 0) + 1);
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.execDelayMaxMs), () => this.applyPiece(node, piece, entry));
  }

  protected startReleased(node: SnapshotNode): void {
    const stillHeld: QueuedPiece[] = [];
    for (const queued of node.volatile.queue) {
      if (this.isHeld(node, queued.piece.volume)) {
        stillHeld.push(queued);
        continue;
      }
      this.recordHoldWait(node, queued);
      this.startPiece(node, queued.piece, queued.entry);
    }
    node.volatile.queue = stillHeld;
  }

  protected recordHoldWait(node: SnapshotNode, queued: QueuedPiece): void {
    this.history.holdWaits.push({ node: node.id, pieceId: queued.piece.pieceId, waitedMs: this.nowMs - queued.enqueuedAtMs });
  }

  /** Apply is atomic on the owner's loop: stamp, ask the participant (maybe cut first), write, then ack. */
  protected applyPiece(node: SnapshotNode, piece: PieceRecord, entry: NodeId): void {
    const stampMs = this.clock(node);
    const admission = node.participant.beforeWrite(piece.volume, stampMs);
    this.runParticipantEffects(node, admission.effects);
    if (!node.up) return;
    for (const block of piece.blocks) {
      const key = `${piece.volume}:${block}`;
      node.durable.head.set(key, piece.pieceId);
      const log = this.history.applyLog.get(key) ?? [];
      log.push(piece.pieceId);
      this.history.applyLog.set(key, log);
    }
    node.durable.appliedPieces.add(piece.pieceId);
    node.volatile.acceptedPieces.delete(piece.pieceId);
    node.volatile.inflight.set(piece.volume, node.volatile.inflight.get(piece.volume)! - 1);
    this.checkDrains(node);
    this.rearm(node, false);
    if (this.sabotage.ignoreCommitWait || admission.fences.length === 0) {
      this.send(node, entry, { kind: "pieceAck", pieceId: piece.pieceId, writeId: piece.writeId });
      return;
    }
    // The participant unfences each snapshot when its clock reads T + 2e, or earlier when every
    // participant has cut (allcut), the snapshot committed or it aborted.
    this.log(`${node.id} piece ${piece.pieceId} commit-waits for ${admission.fences.join(",")} (until ${admission.ackNotBeforeMs.toFixed(3)} at the latest)`);
    node.volatile.fencedAcks.push({ piece, entry, fences: new Set(admission.fences) });
  }

  protected unfence(node: SnapshotNode, snapshotId: string): void {
    const waiting = node.volatile.fencedAcks;
    node.volatile.fencedAcks = [];
    for (const fenced of waiting) {
      fenced.fences.delete(snapshotId);
      if (fenced.fences.size > 0) node.volatile.fencedAcks.push(fenced);
      else this.send(node, fenced.entry, { kind: "pieceAck", pieceId: fenced.piece.pieceId, writeId: fenced.piece.writeId });
    }
  }

  protected checkDrains(node: SnapshotNode): void {
    for (const [snapshotId, volumes] of node.volatile.awaitingDrain) {
      if (volumes.some((v) => (node.volatile.inflight.get(v) ?? 0) > 0)) continue;
      node.volatile.awaitingDrain.delete(snapshotId);
      this.atOn(node, this.nowMs, () => {
        this.runParticipantEffects(node, node.participant.onInflightDrained(snapshotId, this.clock(node)));
        if (node.up) this.rearm(node, false);
      });
    }
  }

  protected receivePieceAck(node: SnapshotNode, pieceId: number, writeId: number): void {
    const remaining = node.volatile.pendingWrites.get(writeId);
    if (!remaining) return;
    remaining.delete(pieceId);
    if (remaining.size > 0) return;
    node.volatile.pendingWrites.delete(writeId);
    const client = this.clients.get(writeId)!;
    if (client.current !== writeId) return; // the client gave up already
    const write = this.history.writes.get(writeId)!;
    write.ackOrder = ++this.order;
    write.ackAtMs = this.nowMs;
    this.settleWrite(client);
  }
}
