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
    }[];
    printResult(args.json, result, () =>
      table(
        ["ID", "STATE", "MESH", "NBD", "PAGES", "USED"],
        members.map((m) => [m.id, m.state, m.meshAddress, m.nbdAddress, m.pagesWritten ?? "?", m.bytesUsed === null ? "?" : formatSize(m.bytesUsed)]),
      ),
    );
  },
});

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
