// The admin operations behind `shoal route move/rebalance/drain/status/forget`: plans are made
// here from this node's tables, and carried out by its MoveService in the background.
import { ShoalError } from "../../core/errors.ts";
import { parsePageList, planDrain, planMove, planRebalance, type PageMove } from "../../core/move/move-plan.ts";
import { formatRun, holders, pagesPerNode, replicaCount, runsOfPages } from "../../core/cluster/routing.ts";
import type { VolumeRecord } from "../../core/cluster/volume.ts";
import type { Group } from "../mesh/group.ts";
import type { MoveService, MoveTask } from "../move/move-service.ts";
import type { ReplicaHost } from "../node/replica-host.ts";
import type { AdminArgs, AdminResult } from "./admin-ops.ts";
import type { MoveAnswer, MovePlanEntry, Rehomed } from "./admin-results.ts";
import type { AdminHandlers } from "./admin-service.ts";

export class RouteAdmin {
  constructor(
    private readonly group: Group,
    private readonly moves: MoveService,
    private readonly replicas: ReplicaHost,
  ) {}

  /** The operations of the table that plan and run page moves. */
  readonly handlers = {
    "admin.route.move": (args) => this.move(args),
    "admin.route.rebalance": (args) => this.rebalance(args),
    "admin.route.drain": (args) => this.drain(args),
    "admin.route.status": async ({ moveId }) => this.moves.status(moveId),
    "admin.route.forget": ({ node }) => this.forget(node),
  } satisfies Partial<AdminHandlers>;

  private async move(args: AdminArgs<"admin.route.move">): Promise<MoveAnswer> {
    const record = unreplicated(this.group.volume(args.volume));
    const to = this.memberId(args.to);
    const pages = parsePageList(args.pages, record.routing.owners.length);
    return this.start("move", [{ volume: record.name, moves: planMove(record.routing, pages, to) }], args.dryRun === true);
  }

  private async rebalance(args: AdminArgs<"admin.route.rebalance">): Promise<MoveAnswer> {
    const record = unreplicated(this.group.volume(args.volume));
    const nodes = args.nodes !== undefined && args.nodes.length > 0 ? args.nodes.map((node) => this.memberId(node)) : this.liveIds();
    return this.start("rebalance", [{ volume: record.name, moves: planRebalance(record.routing, nodes) }], args.dryRun === true);
  }

  /**
   * Every page of every volume (snapshots follow their volume's table) off one node: pages of
   * unreplicated volumes by page moves, copies of replicated ones by a re-homing (the members
   * resync the new copy, drop the node's and add the new one, one copy of a page at a time).
   */
  private async drain(args: AdminArgs<"admin.route.drain">): Promise<MoveAnswer> {
    const node = this.memberId(args.node);
    const targets = this.liveIds().filter((id) => id !== node);
    const tasks: MoveTask[] = [];
    const replicated: VolumeRecord[] = [];
    for (const record of this.group.liveVolumes()) {
      if (replicaCount(record.routing) > 1) {
        if (this.replicas.holdsOrHomes(record.name, node)) replicated.push(record);
        continue;
      }
      if (!pagesPerNode(record.routing).get(node)) continue;
      tasks.push({ volume: record.name, moves: planDrain(record.routing, node, targets) });
    }
    const rehomed = await this.rehome(replicated, node, "live", args.dryRun === true);
    return { ...(await this.start("drain", tasks, args.dryRun === true)), rehomed };
  }

  /**
   * Removes a member for good. A node that still holds the only copy of pages is refused (drain
   * it first). Copies of replicated volumes on a node that is down are re-created on the other
   * nodes of each volume (see rehome); the CLI waits until they are filled.
   */
  private async forget(node: string): Promise<AdminResult<"admin.route.forget">> {
    const id = this.memberId(node);
    if (id === this.group.selfId) throw new ShoalError("BAD_ARGUMENT", `node ${id} cannot forget itself; ask another member`);
    const live = this.group.liveVolumes();
    const copies = live.filter((record) => replicaCount(record.routing) > 1 && this.replicas.holdsOrHomes(record.name, id));
    const holding = live.filter((record) => replicaCount(record.routing) === 1 && holders(record.routing).includes(id));
    if (holding.length > 0) {
      throw new ShoalError(
        "CONFLICT",
        `node ${id} still holds pages of ${names(holding)}; run \`shoal route drain ${id}\` first`,
      );
    }
    if (copies.length > 0 && this.group.isUp(id)) {
      throw new ShoalError("CONFLICT", `node ${id} is up and holds copies of ${names(copies)}; drain it, or stop it first (forget re-creates the copies of a node that is gone for good)`);
    }
    // A drained node holds no copy but still votes: its re-homing takes it out of the voters too.
    const replicated = live.filter((record) => replicaCount(record.routing) > 1 && (this.replicas.holdsOrHomes(record.name, id) || this.replicas.votesIn(record.name, id)));
    const rehomed = await this.rehome(replicated, id, "gone", false);
    await this.group.forget(id);
    await this.moves.unlockMovesOf(id);
    return { node: id, forgotten: true as const, rehomed };
  }

  /**
   * A node's copies of replicated volumes get other homes: a re-homing per volume chosen by a
   * majority (ReplicaHost.rehome), after which the members fill the new copies while clients
   * keep writing; the catch-up copies carry every snapshot layer of a page. Clones and their
   * origins are refused first. A dry run plans and changes nothing.
   */
  private async rehome(records: VolumeRecord[], node: string, leaving: "gone" | "live", dryRun: boolean): Promise<Rehomed[]> {
    const live = this.group.liveVolumes();
    for (const record of records) {
      // A clone reads through to its origin's snapshot layer on the same node: re-homing the
      // two together is not built (a snapshot alone is: catch-up copies carry every layer).
      const cloned = record.origin !== undefined || live.some((other) => other.origin?.startsWith(`${record.uid}@`));
      if (cloned) {
        throw new ShoalError("BAD_ARGUMENT", `volume '${record.name}' is a clone or has clones: moving its copies with their origin's layers is not built yet; delete the clones (or archive and restore them as volumes of their own) before moving ${node}'s copies`);
      }
    }
    // Within the CLI's 60 s admin request, whatever the --replica-timeout.
    const deadlineMs = Date.now() + Math.min(45_000, this.replicas.setChangeWaitMs);
    // Every volume planned first, so one without room refuses the command before any is changed.
    if (!dryRun) for (const record of records) await this.replicas.rehome(record.name, node, this.candidates(record, node), deadlineMs, leaving, true);
    const rehomed: Rehomed[] = [];
    for (const record of records) {
      const moved = await this.replicas.rehome(record.name, node, this.candidates(record, node), deadlineMs, leaving, dryRun);
      // A volume the node only voted in (a drained node's forget): nothing moved to report.
      if (moved.length === 0) continue;
      const to: Record<string, number> = {};
      for (const { to: target } of moved) to[target] = (to[target] ?? 0) + 1;
      rehomed.push({ volume: record.name, groups: moved.length, to });
    }
    return rehomed;
  }

  /** The nodes of a replicated volume that may take `node`'s copies. */
  private candidates(record: VolumeRecord, node: string): string[] {
    return record.routing.nodes.filter((other) => other !== node && this.group.members.get(other)?.forgotten !== true);
  }

  private async start(kind: string, tasks: MoveTask[], dryRun: boolean): Promise<MoveAnswer> {
    const plan = tasks.map((task) => ({ volume: task.volume, steps: summarizeMoves(task.moves) }));
    const pages = tasks.reduce((sum, task) => sum + task.moves.length, 0);
    if (dryRun || pages === 0) return { kind, dryRun, pagesTotal: pages, plan, state: pages === 0 ? "done" : "planned" };
    const status = await this.moves.run(kind, tasks);
    return { ...status, plan };
  }

  private memberId(node: string): string {
    const member = this.group.members.get(node);
    if (!member || member.forgotten) throw new ShoalError("UNKNOWN_NODE", `node '${node}' is not a member of this group; \`shoal route nodes\` lists them`);
    return member.id;
  }

  private liveIds(): string[] {
    return this.group
      .liveMembers()
      .map((member) => member.id)
      .sort();
  }
}

function names(records: VolumeRecord[]): string {
  return records.map((record) => `'${record.name}'`).join(", ");
}

/** The plan per source and target: how many pages and which. */
function summarizeMoves(moves: PageMove[]): MovePlanEntry["steps"] {
  const byPair = new Map<string, number[]>();
  for (const move of moves) {
    const key = `${move.from}\u0000${move.to}`;
    let pages = byPair.get(key);
    if (!pages) byPair.set(key, (pages = []));
    pages.push(move.page);
  }
  return [...byPair].map(([key, pages]) => {
    const [from, to] = key.split("\u0000") as [string, string];
    return { from, to, pages: pages.length, list: formatPages(pages) };
  });
}

/** Runs listed per source and target in a plan: a drain of a 64 TiB volume moves millions of pages. */
const PLAN_RUNS_SHOWN = 1000;

/** Sorted pages as runs, "0-3,7,9-12/3", the first PLAN_RUNS_SHOWN of them and how many there are. */
export function formatPages(pages: number[]): string {
  const { runs, count } = runsOfPages(pages, PLAN_RUNS_SHOWN);
  const shown = runs.map(formatRun).join(",");
  return count > runs.length ? `${shown},... (${count} runs)` : shown;
}

/**
 * Page moves go one page's single copy at a time. A replicated volume's copies move by re-homing
 * whole page groups (drain, forget); moving chosen pages or rebalancing them is not built.
 */
function unreplicated(record: VolumeRecord): VolumeRecord {
  if (replicaCount(record.routing) > 1) {
    throw new ShoalError("BAD_ARGUMENT", `volume '${record.name}' keeps ${replicaCount(record.routing)} copies of each page: moves of replicated volumes are not supported yet`);
  }
  return record;
}
