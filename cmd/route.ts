// `shoal route`: the group's members and each volume's routing table.
import { defineCommand } from "citty";
import { formatSize } from "../core/geometry.ts";
import { adminRequest, nodeAddress, nodeArgs, printResult, rejectUnknownFlags, table } from "./_cli.ts";

const nodes = defineCommand({
  meta: { name: "nodes", description: "List the group's members with their addresses and state" },
  args: { ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.route.nodes");
    const members = result.nodes as {
      id: string;
      meshAddress: string;
      nbdAddress: string;
      state: string;
      pagesWritten: number | null;
      bytesUsed: number | null;
      version: string | null;
      uptimeMs: number | null;
      self: boolean;
      heartbeatAgeMs: number | null;
    }[];
    printResult(args.json, result, () =>
      table(
        ["ID", "STATE", "MESH", "NBD", "PAGES", "USED", "VERSION", "UPTIME", "HEARTBEAT"],
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
  meta: { name: "show", description: "Show a volume's routing table as page runs per node" },
  args: { volume: { type: "positional", description: "volume name", required: true }, ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.route.show", { volume: args.volume });
    const perNode = result.nodes as { node: string; pages: number; runs: { text: string }[] }[];
    printResult(args.json, result, () =>
      [
        `volume ${String(result.volume)}  routing version ${String(result.version)}  ${String(result.pageCount)} pages of ${formatSize(Number(result.pageSizeBytes))}`,
        table(
          ["NODE", "PAGES", "RUNS (first-last/step)"],
          perNode.map((n) => [n.node, n.pages, n.runs.map((run) => run.text).join(",")]),
        ),
      ].join("\n"),
    );
  },
});

export default defineCommand({
  meta: { name: "route", description: "Inspect the group's members and volumes' routing tables" },
  subCommands: { nodes, show },
});
