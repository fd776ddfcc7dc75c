// `shoal route`: the group's members and each volume's routing table.
import { defineCommand } from "citty";
import { isErrorCode, ShoalError } from "../core/errors.ts";
import { formatSize } from "../core/geometry.ts";
import type { AdminArgs } from "../transport/admin/admin-ops.ts";
import type { MoveAnswer as MoveStatus, Rehomed } from "../transport/admin/admin-results.ts";
import { adminRequest, nodeAddress, nodeArgs, parseDurationMs, printResult, rejectUnknownFlags, table } from "./_cli.ts";

const nodes = defineCommand({
  meta: { name: "nodes", description: "List the group's members with their addresses and state" },
  args: { ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.route.nodes");
    const members = result.nodes;
    printResult(args.json, result, () =>
      table(
        ["ID", "STATE", "MESH", "NBD", "WRITTEN", "USED", "VERSION", "UPTIME", "HEARTBEAT"],
        members.map((m) => [
          m.id,
          m.state,
          m.meshAddress,
          m.nbdAddress,
          m.pagesWritten ?? "?",
          m.bytesUsed === null ? "?" : formatSize(m.bytesUsed),
          m.version ?? "?",
          m.uptimeMs === null ? "?" : formatAge(m.uptimeMs),
          m.self ? "self" : m.heartbeatAgeMs === null ? "never" : `${formatAge(m.heartbeatAgeMs)} ago`,
        ]),
      ),
    );
  },
});

/** 850ms, 12.3s, 4m05s, 3h12m, 2d04h: short, and exact enough to spot a restart or a silent peer. */
function formatAge(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const whole = Math.floor(seconds);
  const pad = (n: number) => String(n).padStart(2, "0");
  if (whole < 3600) return `${Math.floor(whole / 60)}m${pad(whole % 60)}s`;
  if (whole < 86_400) return `${Math.floor(whole / 3600)}h${pad(Math.floor((whole % 3600) / 60))}m`;
  return `${Math.floor(whole / 86_400)}d${pad(Math.floor((whole % 86_400) / 3600))}h`;
}

const show = defineCommand({
  meta: { name: "show", description: "Show a volume's (or snapshot's) routing table: page runs, pages and bytes per node" },
  args: { volume: { type: "positional", description: "VOL or VOL@SNAP", required: true }, ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.route.show", { volume: args.volume });
    const perNode = result.nodes;
    printResult(args.json, result, () =>
      [
        `${result.name}  routing version ${result.version}  ${result.pageCount} pages of ${formatSize(result.pageSizeBytes)}  ${result.replicas} cop${result.replicas === 1 ? "y" : "ies"}${result.moving ? `  (move ${result.moving.moveId} under way)` : ""}`,
        result.replicas === 1
          ? table(
              ["NODE", "PAGES", "USED", "RUNS (first-last/step)"],
              perNode.map((n) => [n.node, n.pages, n.bytesUsed === null ? "?" : formatSize(n.bytesUsed), runList(n)]),
            )
          : table(
              ["NODE", "PRIMARY", "REPLICA", "USED", "PRIMARY RUNS", "REPLICA RUNS"],
              perNode.map((n) => [
                n.node,
                n.pages,
                n.replicaPages,
                n.bytesUsed === null ? "?" : formatSize(n.bytesUsed),
                runList(n),
                runList({ runs: n.replicaRuns, runCount: n.replicaRunCount }),
              ]),
            ),
        ...(result.replicaSets
          ? [`replica sets ${result.replicaSets.table}: ${result.replicaSets.whole ? "every page has all its copies" : "some page lacks a copy (a node away, or a copy filling)"}`]
          : []),
      ].join("\n"),
    );
  },
});

/** A node's runs as `route show` prints them; a node shown with only its first runs says how many it has. */
function runList(node: { runs: { text: string }[]; runCount?: number }): string {
  const shown = node.runs.map((run) => run.text).join(",");
  const count = node.runCount ?? node.runs.length;
  return count > node.runs.length ? `${shown},... (${count} runs; --json lists the first ${node.runs.length})` : shown;
}

const dryRunArg = { dryRun: { type: "boolean", description: "print the plan and change nothing" } } as const;
const waitArg = { wait: { type: "boolean", description: "wait for the move to finish (--no-wait: start it and print its id)", default: true } } as const;
const fillTimeoutArg = {
  timeout: { type: "string", description: "give up waiting for re-created copies after this long (exit 5; they keep filling in the background)", valueHint: "DURATION" },
} as const;

/** When waiting for re-created copies ends (--timeout), or never. */
function fillDeadlineMs(timeout: unknown): number {
  return typeof timeout === "string" ? Date.now() + parseDurationMs(timeout, "--timeout") : Infinity;
}

const move = defineCommand({
  meta: { name: "move", description: "Move pages of a volume (with their snapshot versions) to a node, while clients keep working" },
  args: {
    volume: { type: "positional", description: "volume name", required: true },
    pages: { type: "string", description: "pages to move, e.g. 0-15,40", required: true, valueHint: "A-B[,C...]" },
    to: { type: "string", description: "node id to move them to", required: true, valueHint: "NODE" },
    ...dryRunArg,
    ...waitArg,
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    await runMove(args, "admin.route.move", { volume: args.volume, pages: args.pages, to: args.to, dryRun: Boolean(args.dryRun) });
  },
});

const rebalance = defineCommand({
  meta: { name: "rebalance", description: "Even a volume's pages out over nodes, moving as few pages as it can" },
  args: {
    volume: { type: "positional", description: "volume name", required: true },
    nodes: { type: "string", description: "node ids to spread over (default: every member)", valueHint: "ID,..." },
    ...dryRunArg,
    ...waitArg,
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const nodes = args.nodes ? String(args.nodes).split(",").map((node) => node.trim()).filter(Boolean) : undefined;
    await runMove(args, "admin.route.rebalance", { volume: args.volume, ...(nodes ? { nodes } : {}), dryRun: Boolean(args.dryRun) });
  },
});

const drain = defineCommand({
  meta: { name: "drain", description: "Move every page of every volume and snapshot off a node, and a replicated volume's copies one at a time (then `route forget` it)" },
  args: { nodeId: { type: "positional", description: "node id to empty", required: true }, ...dryRunArg, ...waitArg, ...fillTimeoutArg, ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    await runMove({ ...args, fillDeadlineMs: fillDeadlineMs(args.timeout) }, "admin.route.drain", { node: args.nodeId, dryRun: Boolean(args.dryRun) });
  },
});

const status = defineCommand({
  meta: { name: "status", description: "Progress of a move started with --no-wait (ask the node that started it)" },
  args: { moveId: { type: "positional", description: "move id", required: true }, ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.route.status", { moveId: args.moveId });
    printResult(args.json, result, () => describeStatus(result));
    if (result.state === "failed") throw failure(result);
  },
});

const forget = defineCommand({
  meta: {
    name: "forget",
    description: "Remove a node from the group for good: refused while it holds the only copy of pages (drain it first); copies of replicated volumes on a node that is down are re-created on the others",
  },
  args: { nodeId: { type: "positional", description: "node id", required: true }, wait: { type: "boolean", description: "wait until the re-created copies are filled (--no-wait: return once they are placed)", default: true }, ...fillTimeoutArg, ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const address = nodeAddress(args);
    const deadlineMs = fillDeadlineMs(args.timeout);
    const result = await adminRequest(address, "admin.route.forget", { node: args.nodeId });
    const rehomed = result.rehomed.filter((entry) => entry.groups > 0);
    const filled: Record<string, string> = {};
    if (args.wait !== false) for (const entry of rehomed) filled[entry.volume] = await waitCopiesWhole(address, entry.volume, deadlineMs);
    printResult(args.json, { ...result, ...(args.wait !== false ? { filled } : {}) }, () =>
      [
        `node ${String(result.node)} removed from the group`,
        ...rehomed.map((entry) => describeRehomed(entry, filled[entry.volume], false)),
      ].join("\n"),
    );
  },
});

/** Polls a replicated volume's sets as the asked node sees them until every group has all its copies; progress on stderr. */
async function waitCopiesWhole(address: string, volume: string, deadlineMs: number): Promise<string> {
  let lastPrintMs = 0;
  for (;;) {
    const shown = await adminRequest(address, "admin.route.show", { volume });
    const sets = shown.replicaSets;
    const nowMs = Date.now();
    if (sets === undefined || sets.whole) {
      if (process.stderr.isTTY && lastPrintMs > 0) process.stderr.write("\n");
      return sets?.table ?? "";
    }
    if (nowMs >= deadlineMs) {
      if (process.stderr.isTTY && lastPrintMs > 0) process.stderr.write("\n");
      throw new ShoalError("TIMEOUT", `'${volume}' does not have all its copies yet (${sets.table}); they keep filling in the background: \`shoal route show ${volume} --json\` says when its replica sets are whole`);
    }
    if (nowMs - lastPrintMs >= (process.stderr.isTTY ? 250 : 2000)) {
      lastPrintMs = nowMs;
      const line = `repairing '${volume}': ${sets.table}, ${formatSize(sets.copiedBytes)} copied by this node`;
      process.stderr.write(process.stderr.isTTY ? `\r${line}   ` : `${line}\n`);
    }
    await Bun.sleep(200);
  }
}

/** Starts a move job, then (unless --no-wait) polls it, with progress on stderr, until it ends. */
type MoveOp = "admin.route.move" | "admin.route.rebalance" | "admin.route.drain";

async function runMove<Op extends MoveOp>(args: { node?: string; json?: boolean; wait?: boolean; fillDeadlineMs?: number }, op: Op, request: AdminArgs<Op>): Promise<void> {
  const address = nodeAddress(args);
  let result: MoveStatus = await adminRequest<MoveOp>(address, op, request);
  const { plan, rehomed } = result;
  if (result.state === "running" && args.wait !== false) {
    let lastPrintMs = 0;
    while (result.state === "running") {
      await Bun.sleep(200);
      result = await adminRequest(address, "admin.route.status", { moveId: result.moveId! });
      const nowMs = Date.now();
      if (nowMs - lastPrintMs >= (process.stderr.isTTY ? 250 : 2000) || result.state !== "running") {
        lastPrintMs = nowMs;
        const seconds = Math.max((nowMs - (result.startedAtMs ?? nowMs)) / 1000, 0.001);
        const line = `${result.kind} ${result.moveId}: ${result.pagesMoved}/${result.pagesTotal} pages, ${formatSize(result.bytesMoved ?? 0)} at ${formatSize(Math.round((result.bytesMoved ?? 0) / seconds))}/s`;
        process.stderr.write(process.stderr.isTTY ? `\r${line}   ${result.state !== "running" ? "\n" : ""}` : `${line}\n`);
      }
    }
  }
  if (result.state === "failed") {
    printResult(args.json, { ...result, plan }, () => [describeStatus(result), ...describePlan(plan)].join("\n"));
    throw failure(result);
  }
  // A drain's replicated volumes: their copies move in the background, one copy of a page at a time.
  const moving = (rehomed ?? []).filter((entry) => entry.groups > 0);
  const filled: Record<string, string> = {};
  if (result.state !== "planned" && args.wait !== false) for (const entry of moving) filled[entry.volume] = await waitCopiesWhole(address, entry.volume, args.fillDeadlineMs ?? Infinity);
  printResult(args.json, { ...result, plan, ...(rehomed ? { rehomed } : {}), ...(moving.length > 0 && args.wait !== false && result.state !== "planned" ? { filled } : {}) }, () =>
    [describeStatus(result), ...describePlan(plan), ...moving.map((entry) => describeRehomed(entry, filled[entry.volume], result.state === "planned"))].join("\n"),
  );
}

function describeRehomed(entry: Rehomed, filled: string | undefined, planned: boolean): string {
  const where = Object.entries(entry.to)
    .map(([node, groups]) => `${groups} to ${node}`)
    .join(", ");
  return `'${entry.volume}': ${entry.groups} page group(s) ${planned ? "would be " : ""}re-homed (${where})${filled ? `, copies whole: ${filled}` : ""}`;
}

function describeStatus(status: MoveStatus): string {
  if (status.state === "planned") return `${status.kind} would move ${status.pagesTotal} page(s) (dry run: nothing changed)`;
  if (status.pagesTotal === 0) return `${status.kind}: nothing to move`;
  const seconds = status.finishedAtMs && status.startedAtMs ? ` in ${((status.finishedAtMs - status.startedAtMs) / 1000).toFixed(1)}s` : "";
  const base = `${status.kind} ${status.moveId}: ${status.state}, ${status.pagesMoved}/${status.pagesTotal} pages moved (${formatSize(status.bytesMoved ?? 0)})${seconds}`;
  return status.error ? `${base}: ${status.error.message}` : base;
}

function describePlan(plan: MoveStatus["plan"]): string[] {
  if (!plan || plan.length === 0) return [];
  return [table(["VOLUME", "FROM", "TO", "PAGES", "WHICH"], plan.flatMap((entry) => entry.steps.map((step) => [entry.volume, step.from, step.to, step.pages, step.list])))];
}

function failure(status: MoveStatus): ShoalError {
  const code = status.error && isErrorCode(status.error.code) ? status.error.code : "INTERNAL";
  return new ShoalError(code, `${status.kind} ${status.moveId ?? ""} failed after ${status.pagesMoved ?? 0} of ${status.pagesTotal} pages: ${status.error?.message ?? "unknown error"}`);
}

export default defineCommand({
  meta: { name: "route", description: "Inspect members and routing tables; move pages, rebalance, drain and forget nodes" },
  subCommands: { nodes, show, move, rebalance, drain, status, forget },
});
