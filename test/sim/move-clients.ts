// The page-move world's client traffic: requests routed by each node's own (maybe stale) table
// and passed on, answers going back the same way, writes applied and synced, flushes that settle
// what an entry owes the nodes that applied its writes, and the page cache's write-back.
import { ownerOf } from "../../core/cluster/routing.ts";
import { CLIENT_TIMEOUT_MS, FLUSH_TIMEOUT_MS, MAX_HOPS, syncPages, type ClientOp, type ClientState, type MoveNode, type Payload, type PendingFlush } from "./move-node.ts";
import { MoveWorldBase } from "./move-world-base.ts";

export abstract class MoveClientWorld extends MoveWorldBase {
  // ---- client requests: routed by the receiving node's own table

  protected issue(client: ClientState): void {
    if (this.nowMs >= this.scenario.activeEndMs) return;
    if (client.entry === undefined) {
      client.entry = this.rng.pick(this.nodes).id;
      client.sessionOpsLeft = this.rng.int(1, 12);
    }
    // A connection ends, mostly with a flush; the next one goes to a random node.
    let kind: ClientOp["kind"] = this.rng.chance(0.7) ? "write" : "read";
    if (client.sessionOpsLeft-- <= 0) {
      if (!this.rng.chance(0.75)) {
        client.entry = undefined;
        return this.issue(client);
      }
      kind = "flush";
    }
    const page = kind === "flush" ? 0 : this.rng.int(0, this.scenario.pageCount - 1);
    const fua = kind === "write" && this.rng.chance(this.scenario.fuaRate);
    const op: ClientOp = { id: `c${client.id}.${++client.seq}`, client: client.id, kind, page, fua, entry: client.entry, entryIncarnation: -1, path: [] };
    client.current = op;
    this.recordIssue(op);
    this.log(`client ${client.id} ${kind}${fua ? " fua" : ""} ${op.id}${kind === "flush" ? "" : ` page ${page}`} via ${client.entry}`);
    this.send(`client${client.id}`, client.entry, { kind: "request", op, hops: 0 });
    // A client gives up after a while and reconnects: the write's fate is unknown, never acknowledged.
    this.at(this.nowMs + CLIENT_TIMEOUT_MS, () => {
      if (client.current !== op) return;
      client.entry = undefined;
      this.next(client, 0);
    });
  }

  protected recordIssue(op: ClientOp): void {
    const at = { issueOrder: ++this.order, issueAtMs: this.nowMs };
    if (op.kind === "write") {
      const { client, page, fua, entry } = op;
      this.history.writes.set(op.id, { stamp: op.id, client, page, fua, entry, entryIncarnation: -1, ...at, ackOrder: Infinity, ackAtMs: Infinity, applyOrder: Infinity, applyCount: 0 });
    } else if (op.kind === "read") {
      this.history.reads.push({ readId: op.id, page: op.page, ...at, returnOrder: Infinity, value: undefined });
    } else {
      this.history.flushes.push({ flushId: op.id, client: op.client, entry: op.entry, entryIncarnation: -1, ...at, ackOrder: Infinity });
    }
  }

  protected next(client: ClientState, afterMs: number): void {
    client.current = undefined;
    this.at(this.nowMs + afterMs + this.rng.range(0, 4), () => this.issue(client));
  }

  protected receiveReply(reply: Extract<Payload, { kind: "reply" }>): void {
    const client = this.clients.find((candidate) => candidate.current?.id === reply.opId);
    if (!client) return; // it gave up on this request already
    const op = client.current!;
    if (op.kind === "flush") client.entry = undefined;
    if (!reply.ok) {
      this.log(`client ${client.id} ${op.id} failed: ${reply.code}; retries later`);
      return this.next(client, 10);
    }
    const order = ++this.order;
    if (op.kind === "write") {
      const write = this.history.writes.get(op.id)!;
      write.ackOrder = order;
      write.ackAtMs = this.nowMs;
      write.entryIncarnation = reply.entryIncarnation;
    } else if (op.kind === "read") {
      const read = this.history.reads.find((candidate) => candidate.readId === op.id)!;
      read.returnOrder = order;
      read.value = reply.stamp;
    } else {
      const flush = this.history.flushes.find((candidate) => candidate.flushId === op.id)!;
      flush.ackOrder = order;
      flush.entryIncarnation = reply.entryIncarnation;
    }
    this.next(client, 0);
  }

  protected route(node: MoveNode, op: ClientOp, hops: number): void {
    if (op.kind === "flush") return this.startFlush(node, op);
    const owner = ownerOf(node.volatile.table, op.page);
    if (owner !== node.id) {
      if (hops >= MAX_HOPS) return this.answer(node, op, { ok: false, code: "NOT_OWNER" });
      const path = [...op.path, { node: node.id, incarnation: node.incarnation }];
      return this.send(node.id, owner, { kind: "request", op: { ...op, path }, hops: hops + 1 });
    }
    if (node.volatile.frozen.has(op.page)) {
      node.volatile.queue.push({ op, hops });
      return;
    }
    if (op.kind === "read") return this.serveRead(node, op);
    this.applyWrite(node, op);
  }

  /** Answers go back the way the request came, as mesh replies do; the entry answers the client. */
  protected answer(node: MoveNode, op: ClientOp, result: { ok: boolean; stamp?: string; code?: string }, applied?: { by: string; incarnation: number }): void {
    const previous = op.path[op.path.length - 1];
    if (previous === undefined) {
      this.send(node.id, `client${op.client}`, { kind: "reply", opId: op.id, entryIncarnation: node.incarnation, ...result });
      return;
    }
    const { by, incarnation } = applied ?? { by: node.id, incarnation: node.incarnation };
    this.send(node.id, previous.node, { kind: "answer", op, ...result, by: node.id, appliedBy: by, appliedIncarnation: incarnation });
  }

  /**
   * Passes an answer one hop back; a restart since lost the request. The entry owes the node that
   * applied a write a flush, from when the answer arrives (the write is in that node's store then),
   * so its flush reaches the page's owner however many hops the write took; store.flush stays local.
   */
  protected passAnswerBack(node: MoveNode, answer: Extract<Payload, { kind: "answer" }>): void {
    const { op, ok, stamp, code } = answer;
    const self = op.path[op.path.length - 1];
    if (self === undefined || self.node !== node.id || self.incarnation !== node.incarnation) return;
    const back = { ...op, path: op.path.slice(0, -1) };
    const applied = { by: answer.appliedBy, incarnation: answer.appliedIncarnation };
    if (ok && op.kind === "write" && back.path.length === 0) {
      // Today's router owes the node it sent the write to, which then owes nothing further.
      if (this.sabotage.flushMissesForwardedWrites) this.owe(node, answer.by, answer.by === answer.appliedBy ? answer.appliedIncarnation : undefined);
      else this.owe(node, applied.by, applied.incarnation);
    }
    this.answer(node, back, { ok, ...(stamp !== undefined ? { stamp } : {}), ...(code !== undefined ? { code } : {}) }, applied);
  }

  /** The peer's incarnation stands for the boot id a mesh connection learns in its handshake. */
  protected owe(node: MoveNode, peer: string, incarnation: number | undefined): void {
    const earlier = node.volatile.dirtyPeers.get(peer);
    // Owed since the first write not yet flushed: a later incarnation must not replace it.
    const since = earlier ? earlier.incarnation : this.sabotage.flushIgnoresRestart ? undefined : incarnation;
    node.volatile.dirtyPeers.set(peer, { incarnation: since, seq: ++this.debtSeq });
  }

  protected serveRead(node: MoveNode, op: ClientOp): void {
    const copy = node.volatile.memoryPages.get(op.page);
    this.history.timeline.push({ kind: "serve", order: ++this.order, atMs: this.nowMs, node: node.id, page: op.page, readId: op.id });
    const read = this.history.reads.find((candidate) => candidate.readId === op.id)!;
    read.servedBy = node.id;
    this.answer(node, op, { ok: true, ...(copy?.stamp !== undefined ? { stamp: copy.stamp } : {}) });
  }

  /** The write lands in memory at once; a FUA write is answered only after a sync made it durable. */
  protected applyWrite(node: MoveNode, op: ClientOp): void {
    node.volatile.memoryPages.set(op.page, { stamp: op.id, installedFor: 0 });
    node.volatile.copyWritten?.add(op.page);
    const order = ++this.order;
    const write = this.history.writes.get(op.id)!;
    write.applyOrder = order;
    write.appliedAt = node.id;
    write.applyCount++;
    this.history.timeline.push({ kind: "apply", order, atMs: this.nowMs, node: node.id, page: op.page, stamp: op.id });
    this.log(`${node.id} applies ${op.id} to page ${op.page}`);
    if (this.crashPoint(node, "owner:applied")) return;
    if (!op.fua) return this.answer(node, op, { ok: true });
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.syncDelayMaxMs), () => {
      syncPages(node, [op.page]);
      this.answer(node, op, { ok: true });
    });
  }

  // ---- flushes: the entry syncs its own store and every node that applied writes it answered

  protected startFlush(node: MoveNode, op: ClientOp): void {
    syncPages(node, [...node.volatile.memoryPages.keys()]);
    // Debts are settled only when their flush succeeded, so a flush started meanwhile flushes them too.
    const peers = [...node.volatile.dirtyPeers];
    if (this.sabotage.flushClearsDebtsAtStart) node.volatile.dirtyPeers.clear();
    const key = `${op.id}@${node.id}.${node.incarnation}`;
    const pending: PendingFlush = { op, peers, waiting: new Set(peers.map(([peer]) => peer)) };
    this.log(`${node.id} flush ${key}: store synced, owes ${peers.map(([peer, debt]) => `${peer}@${debt.incarnation ?? "?"}`).join(",") || "nobody"}`);
    if (peers.length === 0) return this.answerFlush(node, pending, true);
    node.volatile.flushes.set(key, pending);
    for (const [peer, { incarnation }] of peers) {
      this.send(node.id, peer, { kind: "store.flush", key, ...(incarnation !== undefined ? { expectIncarnation: incarnation } : {}) });
    }
    this.atOn(node, this.nowMs + FLUSH_TIMEOUT_MS, () => {
      if (node.volatile.flushes.get(key) === pending) this.finishFlush(node, key, false);
    });
  }

  protected flushAnswered(node: MoveNode, peer: string, key: string, ok: boolean): void {
    const pending = node.volatile.flushes.get(key);
    if (!pending) return;
    if (!ok) return this.finishFlush(node, key, false);
    pending.waiting.delete(peer);
    if (pending.waiting.size === 0) this.finishFlush(node, key, true);
  }

  /** A failed flush leaves the peers owed (a restarted one for good: its lost writes stay lost). */
  protected finishFlush(node: MoveNode, key: string, ok: boolean): void {
    const pending = node.volatile.flushes.get(key)!;
    node.volatile.flushes.delete(key);
    this.log(`${node.id} flush ${key} ${ok ? "ok" : "FAILED"}`);
    for (const [peer, debt] of pending.peers) {
      if (this.sabotage.flushClearsDebtsAtStart) {
        if (!ok) node.volatile.dirtyPeers.set(peer, debt);
      } else if (ok && node.volatile.dirtyPeers.get(peer)?.seq === debt.seq) node.volatile.dirtyPeers.delete(peer);
    }
    this.answerFlush(node, pending, ok);
  }

  protected answerFlush(node: MoveNode, pending: PendingFlush, ok: boolean): void {
    this.answer(node, pending.op, ok ? { ok } : { ok, code: "IO_ERROR" });
  }

  /** The page cache reaches the disk on its own now and then. */
  protected writeback(node: MoveNode): void {
    syncPages(node, [...node.volatile.memoryPages.keys()]);
    this.atOn(node, this.nowMs + this.rng.range(0.5, 1.5) * this.scenario.writebackIntervalMs, () => this.writeback(node));
  }

}
