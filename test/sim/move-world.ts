// A deterministic world for the page-move protocol: 3-4 simulated nodes sharing one volume, each
// with a durable and an in-memory routing table and a page store whose writes survive a crash only
// once synced; clients on connections to random nodes writing stamped values (FUA or not), reading
// and flushing; nodes that route by their own (maybe stale) tables and pass requests on (at most
// MAX_HOPS times), answers going back the same way; tables spread by gossip; one coordinator
// running moves as core/move/page-move.ts MoveSteps on the sources; a lossy, delaying network (FIFO per
// link, like the mesh's TCP connections, reordered across links); crashes anywhere, including
// between every two effects of a step. It records a history; move-checker.ts judges it.
// This file is the top layer, the protocol's roles (the source runs the node's own
// core/move/move-step-runner.ts); move-clients.ts and move-world-base.ts are the layers below.
//
// Rules the world follows where the real node's are not written down yet (each has a broken
// variant in MoveSabotage that the checker catches):
//   - a node keeps, across restarts, pages installed for a routing version newer than its table;
//   - a step's version is decided once, durably, by the coordinator, and the source commits it
//     only on top of the version before it (the coordinator learns the new table from the answer);
//   - answers carry the node (and incarnation, standing for a boot id) that applied a write; the
//     entry owes that node a flush from when the answer arrives; store.flush syncs one store and
//     fails if that node restarted since; a debt is settled only by a flush that succeeded.
import { MoveStepRunner, type MoveStepHost } from "../../core/move/move-step-runner.ts";
import { MoveStep, type MoveStepEffect } from "../../core/move/page-move.ts";
import { ownerOf, pagesOf, withOwner, type RoutingTable } from "../../core/cluster/routing.ts";
import { MoveClientWorld } from "./move-clients.ts";
import type { CrashPoint, MoveHistory, MoveWorldOptions } from "./move-history.ts";
import {
  cloneTable,
  COORDINATOR_TIMEOUT_MS,
  copyOf,
  ownersOf,
  PUBLISH_TIMEOUT_MS,
  QUIET_DELAY_MAX_MS,
  syncPages,
  VOLUME,
  VOLUME_UID,
  type DecidedStep,
  type MoveNode,
  type PageCopy,
  type Payload,
  type RunningStep,
  type StepAttempt,
} from "./move-node.ts";

export * from "./move-history.ts";
export { ownersOf } from "./move-node.ts";

export function runMoveWorld(options: MoveWorldOptions): MoveHistory {
  return new MoveWorld(options).run();
}

/** The move protocol's roles: the coordinator, a step's source (core/move/page-move.ts) and its target. */
class MoveWorld extends MoveClientWorld {
  // ---- the coordinator: one step at a time, each decided durably before it is sent

  protected coordinate(node: MoveNode): void {
    const plan = node.durable.coordinatorPlan!;
    if (node.volatile.coordinatorWaiting) return;
    if (plan.decided && node.volatile.table.version >= plan.decided.version && !this.sabotage.coordinatorForgetsTable) {
      return this.stepCommitted(node, undefined);
    }
    if (!plan.decided) {
      if (plan.committed >= this.scenario.stepsPlanned) return;
      plan.decided = this.decideStep(node);
      this.log(`coordinator ${node.id} decides step ${plan.decided.stepId}: v${plan.decided.version} pages ${plan.decided.pages.join(",")} ${plan.decided.from} -> ${plan.decided.to}`);
      if (this.crashPoint(node, "coordinator:decided")) return;
    }
    const decided = plan.decided;
    // A new key per attempt, unique across restarts (the attempt counter is durable).
    const key = `${decided.stepId}#${++plan.attempts}`;
    this.history.stepAttempts++;
    this.send(node.id, decided.from, { kind: "step.start", step: decided, key });
    if (this.crashPoint(node, "coordinator:sent")) return;
    const timer = ++this.timerSeq;
    node.volatile.coordinatorWaiting = { key, timer };
    this.atOn(node, this.nowMs + COORDINATOR_TIMEOUT_MS, () => {
      if (node.volatile.coordinatorWaiting?.timer !== timer) return;
      this.log(`coordinator ${node.id} step ${key} timed out; retries`);
      node.volatile.coordinatorWaiting = undefined;
      this.coordinate(node);
    });
  }

  protected decideStep(node: MoveNode): DecidedStep {
    const table = node.volatile.table;
    const holding = this.nodes.filter((candidate) => pagesOf(table, candidate.id).length > 0);
    const from = this.rng.pick(holding).id;
    const to = this.rng.pick(this.nodes.filter((candidate) => candidate.id !== from)).id;
    const owned = pagesOf(table, from);
    const count = this.rng.int(1, Math.min(3, owned.length));
    const pages: number[] = [];
    while (pages.length < count) {
      const page = this.rng.pick(owned);
      if (!pages.includes(page)) pages.push(page);
    }
    const plan = node.durable.coordinatorPlan!;
    return { stepId: `s${plan.committed + 1}.${this.rng.int(0, 9999)}`, version: table.version + 1, from, to, pages: pages.sort((a, b) => a - b) };
  }

  protected stepDone(node: MoveNode, done: Extract<Payload, { kind: "step.done" }>): void {
    const plan = node.durable.coordinatorPlan;
    if (!plan || node.volatile.coordinatorWaiting?.key !== done.key) return;
    node.volatile.coordinatorWaiting = undefined;
    const outcome = done.ok ? "ok" : done.code ?? "failed";
    this.history.stepOutcomes.set(outcome, (this.history.stepOutcomes.get(outcome) ?? 0) + 1);
    if (done.ok) return this.stepCommitted(node, done.table);
    this.log(`coordinator ${node.id} step ${done.key} failed (${done.code}); retries`);
    this.atOn(node, this.nowMs + this.rng.range(10, 40), () => this.coordinate(node));
  }

  /** The decided step's version is committed: learn its table, then plan the next on top of it. */
  protected stepCommitted(node: MoveNode, table: RoutingTable | undefined): void {
    const plan = node.durable.coordinatorPlan!;
    if (table && !this.sabotage.coordinatorForgetsTable) this.adopt(node, table);
    plan.committed++;
    plan.decided = undefined;
    this.log(`coordinator ${node.id} step committed (${plan.committed}/${this.scenario.stepsPlanned})`);
    this.atOn(node, this.nowMs + this.rng.range(0, 40), () => this.coordinate(node));
  }

  // ---- the source: runs one MoveStep, carrying its effects out one by one

  protected startStep(node: MoveNode, coordinator: string, step: DecidedStep, key: string): void {
    const refuse = (code: string): void => this.send(node.id, coordinator, { kind: "step.done", stepId: step.stepId, key, ok: false, code });
    if (node.volatile.running) return node.volatile.running.key === key ? undefined : refuse("CONFLICT");
    if (node.volatile.table.version >= step.version) {
      // Committed already (by an attempt whose answer was lost): the version has one content.
      return this.send(node.id, coordinator, { kind: "step.done", stepId: step.stepId, key, ok: true, table: cloneTable(node.volatile.table) });
    }
    if (node.volatile.table.version !== step.version - 1 && !this.sabotage.sourceIgnoresVersion) return refuse("STALE_ROUTE");
    if (step.pages.some((page) => ownerOf(node.volatile.table, page) !== node.id)) return refuse("NOT_OWNER");
    const machine = new MoveStep(
      { stepId: key, volume: VOLUME, volumeUid: VOLUME_UID, pages: step.pages, to: step.to, newVersion: step.version, nowMs: this.nowMs },
      { quietTimeoutMs: 50, installTimeoutMs: this.scenario.installTimeoutMs },
    );
    // The host needs the attempt (its identity tells a stale completion) and the attempt its runner.
    const attempt: StepAttempt = { decided: step, key, coordinator, timerGeneration: 0, publishTimer: 0 };
    node.volatile.running = Object.assign(attempt, { runner: new MoveStepRunner(machine, this.stepHost(node, attempt)) });
    this.log(`${node.id} starts step ${key}: v${step.version} pages ${step.pages.join(",")} -> ${step.to}`);
    // No snapshots in this world: the volume is quiet as soon as the source looks.
    this.atOn(node, this.nowMs + this.rng.range(0, QUIET_DELAY_MAX_MS), () => {
      if (node.volatile.running?.key === key) this.runEffects(node, machine.onQuiet(this.nowMs));
    });
  }

  protected runEffects(node: MoveNode, effects: MoveStepEffect[]): void {
    node.volatile.running!.runner.run(effects);
  }

  /** The simulated source's I/O under the node's own step runner (core/move/move-step-runner.ts). */
  protected stepHost(node: MoveNode, running: StepAttempt): MoveStepHost {
    const { decided, key } = running;
    const copies = (pages: number[]) => pages.map((page): [number, PageCopy | undefined] => [page, copyOf(node.volatile.memoryPages.get(page))]);
    const current = () => node.volatile.running === running;
    return {
      nowMs: () => this.nowMs,
      beforeEffect: (effect) => {
        if (!node.up || this.crashPoint(node, `source:${effect.kind}` as CrashPoint)) return false;
        this.log(`${node.id} step ${key} effect ${effect.kind}`);
        return true;
      },
      afterBatch: () => {
        if (this.crashPoint(node, "source:after-batch")) return;
        if (current()) this.armStepTimer(node, node.volatile.running!);
      },
      precopy: (pages, to, done) => {
        node.volatile.copyWritten = new Set();
        running.copied = done;
        this.send(node.id, to, { kind: "install", key, version: decided.version, pages: copies(pages), precopy: true });
      },
      freeze: (pages) => {
        for (const page of pages) node.volatile.frozen.add(page);
      },
      install: (pages, to, done) => {
        running.installed = done;
        this.send(node.id, to, { kind: "install", key, version: decided.version, pages: copies(pages) });
        if (this.sabotage.unfreezeBeforeCommit) this.unfreeze(node, pages);
        if (this.sabotage.commitBeforeInstalled) this.atOn(node, this.nowMs, () => current() && done());
      },
      commit: (done) => {
        // Compare-and-set on the version: a table that moved on under the step fails it (a
        // coordinator that builds on the committed version never lets that happen).
        const table = node.volatile.table;
        const ok = table.version === decided.version - 1 || this.sabotage.sourceIgnoresVersion;
        if (ok) this.commit(node, decided);
        const error = ok ? undefined : { code: "STALE_ROUTE" as const, message: `table is v${table.version}, not v${decided.version - 1}` };
        this.atOn(node, this.nowMs, () => current() && done(error));
      },
      publish: (to, done) => {
        this.send(node.id, to, { kind: "publish", key, table: cloneTable(node.volatile.table) });
        running.published = done;
        const timer = ++this.timerSeq;
        running.publishTimer = timer;
        this.atOn(node, this.nowMs + PUBLISH_TIMEOUT_MS, () => {
          if (current() && running.publishTimer === timer) done({ code: "TIMEOUT", message: `${to} did not answer the publish` });
        });
      },
      removePages: (pages) => {
        for (const page of pages) {
          node.volatile.memoryPages.delete(page);
          node.durable.pages.delete(page);
        }
      },
      unfreeze: (pages) => this.unfreeze(node, pages),
      done: (effect) => {
        node.volatile.running = undefined;
        this.send(node.id, running.coordinator, {
          kind: "step.done",
          stepId: decided.stepId,
          key,
          ok: effect.ok,
          ...(effect.ok ? { table: cloneTable(node.volatile.table) } : { code: effect.error.code }),
        });
      },
    };
  }

  /** The point of no return: the new version is durable here, built on the version before it. */
  protected commit(node: MoveNode, decided: DecidedStep): void {
    const table = { ...withOwner(node.volatile.table, decided.pages, decided.to), version: decided.version };
    node.durable.table = cloneTable(table);
    node.volatile.table = cloneTable(table);
    this.history.timeline.push({ kind: "commit", order: ++this.order, atMs: this.nowMs, node: node.id, version: table.version, owners: ownersOf(table) });
    this.log(`${node.id} COMMITS v${table.version} ${ownersOf(table).join(",")}`);
    this.recordBelief(node);
  }

  protected unfreeze(node: MoveNode, pages: number[]): void {
    for (const page of pages) node.volatile.frozen.delete(page);
    const queued = node.volatile.queue.filter((entry) => pages.includes(entry.op.page));
    node.volatile.queue = node.volatile.queue.filter((entry) => !pages.includes(entry.op.page));
    for (const { op, hops } of queued) {
      if (!node.up) return; // crashed while applying one of them: the rest are lost with it
      this.route(node, op, hops);
    }
  }

  protected armStepTimer(node: MoveNode, running: RunningStep): void {
    const wakeAtMs = running.runner.step.nextWakeAtMs();
    const generation = ++running.timerGeneration;
    if (wakeAtMs === undefined) return;
    this.atOn(node, wakeAtMs, () => {
      if (node.volatile.running === running && running.timerGeneration === generation) this.runEffects(node, running.runner.step.onTick(this.nowMs));
    });
  }

  // ---- the target: stores the pages durably, then answers

  protected install(node: MoveNode, source: string, install: Extract<Payload, { kind: "install" }>): void {
    // A version this node knows is committed already: the install is stale, never overwrite with it.
    if (install.version <= node.volatile.table.version) return this.log(`${node.id} ignores stale install ${install.key}`);
    const pages = install.pages.map(([page]) => page);
    for (const [page, copy] of install.pages) {
      if (copy === undefined) node.volatile.memoryPages.delete(page);
      else node.volatile.memoryPages.set(page, { stamp: copy.stamp, installedFor: install.version });
    }
    this.log(`${node.id} writes install ${install.key} pages ${pages.join(",")}`);
    if (this.sabotage.targetSkipsSync) {
      // Answers at once and syncs only a while later, as a lazy write-back would.
      this.send(node.id, source, { kind: "installed", key: install.key, precopy: install.precopy });
      this.atOn(node, this.nowMs + 20 + this.rng.range(0, this.scenario.syncDelayMaxMs), () => syncPages(node, pages));
      return;
    }
    if (this.crashPoint(node, "target:written")) return;
    this.atOn(node, this.nowMs + this.rng.range(0, this.scenario.syncDelayMaxMs), () => {
      syncPages(node, pages);
      if (this.crashPoint(node, "target:synced")) return;
      this.send(node.id, source, { kind: "installed", key: install.key, precopy: install.precopy });
    });
  }
}
