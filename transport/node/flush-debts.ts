// What an NBD FLUSH owes: the writes a node acknowledged were applied here or on other nodes, and a
// flush of a volume must make every one of them durable where it was applied. This keeps the
// debts on the acknowledging node and answers `store.flush` on the applying one.
import { asShoalError, ShoalError } from "../../core/errors.ts";
import type { PageStore } from "../../core/store/page-store.ts";
import type { FrameHeader } from "../mesh/frame.ts";
import type { Group } from "../mesh/group.ts";
import { readPeerArgs } from "../mesh/peer-ops.ts";
import type { Applier } from "./page-wire.ts";
import type { FailoverHold } from "./failover-hold.ts";

export class FlushDebts {
  /**
   * Per volume (by uid), the nodes that applied writes of it this node acknowledged since they
   * were last flushed, with the incarnation that applied them: a FLUSH on the volume must reach
   * each, and fails if one restarted since (its unsynced writes may be gone). Per volume, not per
   * node: a FLUSH owes nothing to a node that applied none of its volume's writes, so a dead node
   * fails only the flushes of volumes it holds unflushed writes of. Per volume, not per
   * connection: with CAN_MULTI_CONN a flush covers writes completed on every connection to the
   * export. Owed to the node that applied the write, not to the hop it was sent to, so a flush
   * never has to travel along forwarding paths.
   */
  private readonly debts = new Map<string, Map<string, { boot: string; seq: number; routingVersion: number }>>();
  private debtSeq = 0;

  constructor(
    private readonly group: Group,
    private readonly store: PageStore,
    /** This process's incarnation, which a `store.flush` answer reports. */
    private readonly bootId: string,
    /** Waits for a replicated volume's next set (a copy that cannot flush may be out of it). */
    private readonly failover: FailoverHold,
    /** Syncs what the replica members recorded without an fsync (away maps the acks rested on). */
    private readonly syncRecords: () => Promise<void>,
  ) {}

  /** Records who applied a write of the volume `uid` this node acknowledges: the volume's next flush owes it one. */
  oweFor(uid: string): (appliers: Applier[] | void) => void {
    return (appliers) => {
      for (const applier of appliers ?? []) {
        if (applier.n === this.group.selfId) continue;
        let owed = this.debts.get(uid);
        if (!owed) this.debts.set(uid, (owed = new Map()));
        owed.set(applier.n, { boot: applier.b, seq: ++this.debtSeq, routingVersion: this.group.volumeByUid(uid)?.routing.version ?? 0 });
      }
    };
  }

  /**
   * Durability for every write of the volume `uid` acknowledged through this node before the
   * call, wherever it was applied; other volumes' writes are not its business. A debt is settled
   * only by a flush that succeeded and only if no newer write renewed it meanwhile, so concurrent
   * flushes each cover everything before them. A node that is down and owed fails the flush at
   * once (NODE_DOWN), and every later one until it is back: those writes are not durable.
   */
  async flush(uid: string): Promise<void> {
    const owedHere = this.debts.get(uid);
    const owed = owedHere ? [...owedHere] : [];
    const [local, ...remote] = await Promise.allSettled([
      Promise.all([this.store.flushVolume(uid), this.syncRecords()]),
      ...owed.map(([node]) => this.group.link(node).request("store.flush", { v: uid })),
    ]);
    let failure: unknown = local!.status === "rejected" ? local!.reason : undefined;
    const replicated = Boolean(this.group.volumeByUid(uid)?.routing.replicaOwners?.length);
    const excused = await Promise.all(
      remote.map((result, index) => {
        const [, debt] = owed[index]!;
        const failed = result.status === "rejected" || (debt.boot !== "" && result.value.result.b !== debt.boot);
        // A copy of a replicated volume that is down or restarted is excused once a newer set
        // exists: either it left (the copies that stayed applied the same writes and are flushed
        // here too) or it came back through a join copy, which is synced before it counts.
        return failed && replicated ? this.failover.newerWithin(uid, debt.routingVersion) : Promise.resolve(false);
      }),
    );
    remote.forEach((result, index) => {
      const [node, debt] = owed[index]!;
      if (excused[index]) {
        if (owedHere!.get(node)?.seq === debt.seq) owedHere!.delete(node);
        return;
      }
      if (result.status === "rejected") {
        failure ??= owedFailure(node, this.group.volumeByUid(uid)?.name ?? uid, result.reason); // still owed
        return;
      }
      if (debt.boot !== "" && result.value.result.b !== debt.boot) {
        failure ??= new ShoalError("IO_ERROR", `node ${node} restarted after applying writes acknowledged through this node; those not yet flushed may be lost`);
      }
      // Paid, or never payable (the node restarted and said so once): settled either way.
      if (owedHere!.get(node)?.seq === debt.seq) owedHere!.delete(node);
    });
    if (owedHere?.size === 0 && this.debts.get(uid) === owedHere) this.debts.delete(uid);
    if (failure !== undefined) throw failure;
  }

  /** A deleted or replaced volume's writes are owed nothing more. */
  forget(uid: string): void {
    this.debts.delete(uid);
  }

  /**
   * `store.flush` from a node that acknowledged writes this one applied: only this node's own
   * store (whoever acknowledged a write owes its applier directly). One volume's writes (its head
   * and layers snapshots froze it into); every volume's when asked by an older node.
   */
  answerFlush(args: FrameHeader): Promise<{ result: FrameHeader }> {
    const { v: uid } = readPeerArgs("store.flush", args);
    const done = Promise.all([uid !== undefined ? this.store.flushVolume(uid) : this.store.flush(), this.syncRecords()]);
    return done.then(() => ({ result: { b: this.bootId } }));
  }
}

/** Why a FLUSH fails when a node it owes did not answer: the writes at stake, and what to do. */
function owedFailure(node: string, volume: string, reason: unknown): ShoalError {
  const error = asShoalError(reason);
  return new ShoalError(
    error.code,
    `node ${node} holds writes of '${volume}' acknowledged through this node and not yet flushed, and did not flush them: ${error.message}; ` +
      "a FLUSH of this volume fails until it does",
  );
}
