// `shoal volume`: create, list, inspect, delete, import and export volumes.
import { reexecWithAllocatorTuning } from "./_allocator-tuning.ts";
import { defineCommand } from "citty";
import { DEFAULT_PAGE_SIZE_BYTES, formatSize, parseSize, validateGeometry } from "../core/geometry.ts";
import { adminRequest, nodeAddress, nodeArgs, parseReplicas, printResult, quietArgs, rejectUnknownFlags, table } from "./_cli.ts";
import { writesToStdout } from "./_file-sink.ts";
import { exportVolume, importVolume } from "./_volume-stream.ts";

const create = defineCommand({
  meta: { name: "create", description: "Create a volume spread over the group's nodes" },
  args: {
    name: { type: "positional", description: "volume name", required: true },
    size: { type: "string", description: "size with K/M/G/T/P suffix, e.g. 10G; at most 16777216 pages (64T at 4M pages)", required: true },
    nodes: { type: "string", description: "comma-separated node ids to place pages on (default: all members)" },
    replicas: {
      type: "string",
      description: "copies of each page, 1 to 3, each on another node; writes reach every copy (default: the node's --default-replicas, 1 unless set)",
      valueHint: "N",
    },
    pageSize: { type: "string", description: "page size (default 4M = 8192 blocks of 512 B)", valueHint: "SIZE" },
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const sizeBytes = parseSize(args.size);
    const pageSizeBytes = args.pageSize ? parseSize(args.pageSize) : undefined;
    // Refused here too, so a script learns of a bad size even with no node to ask.
    validateGeometry({ sizeBytes, pageSizeBytes: pageSizeBytes ?? DEFAULT_PAGE_SIZE_BYTES });
    const result = await adminRequest(nodeAddress(args), "admin.volume.create", {
      name: args.name,
      sizeBytes,
      pageSizeBytes,
      nodes: args.nodes ? args.nodes.split(",").map((node) => node.trim()).filter(Boolean) : undefined,
      replicas: args.replicas === undefined ? undefined : parseReplicas(args.replicas, "--replicas"),
    });
    printResult(
      args.json,
      result,
      () => `created volume ${result.name}: ${formatSize(result.sizeBytes)}, ${result.pageCount} pages of ${formatSize(result.pageSizeBytes)} over ${result.nodes.join(", ")}, ${copies(result.replicas)}`,
    );
  },
});

const list = defineCommand({
  meta: { name: "list", description: "List volumes" },
  args: { ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.volume.list");
    const { volumes } = result;
    printResult(args.json, result, () =>
      volumes.length === 0
        ? "no volumes"
        : table(
            ["NAME", "SIZE", "PAGE", "PAGES", "REPLICAS", "STATE", "NODES"],
            volumes.map((v) => [v.name, formatSize(v.sizeBytes), formatSize(v.pageSizeBytes), v.pageCount, v.replicas, v.state, v.nodes.join(",")]),
          ),
    );
  },
});

const info = defineCommand({
  meta: { name: "info", description: "Show a volume: geometry, placement, pages written per node" },
  args: { name: { type: "positional", description: "volume name", required: true }, ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.volume.info", { name: args.name });
    const { nodes, unreachable } = result;
    printResult(args.json, result, () =>
      [
        `volume ${result.name} (uid ${result.uid}), ${result.state}`,
        `size ${formatSize(result.sizeBytes)}, ${result.pageCount} pages of ${formatSize(result.pageSizeBytes)}, ${copies(result.replicas)}, routing version ${result.routingVersion}`,
        // One copy: reads and writes of these pages (and of the same pages of its snapshots) fail
        // with EIO until the node is back. More: the other copies go on without it (failover).
        ...(result.replicas > 1
          ? result.nodesDown.map((node) => `down: ${node}; the other copies of its pages go on without it, and it catches up when it is back`)
          : unreachable.map((down) => `unreachable: ${down.pages} page(s) on ${down.node} (down): ${runsText(down.runs)}`)),
        result.replicas === 1
          ? table(["NODE", "PAGES", "WRITTEN", "USED"], nodes.map((n) => [n.node, n.pages, n.pagesWritten ?? "?", usedText(n.bytesUsed)]))
          : table(
              ["NODE", "PRIMARY", "REPLICA", "WRITTEN", "USED"],
              nodes.map((n) => [n.node, n.pages, n.replicaPages, n.pagesWritten ?? "?", usedText(n.bytesUsed)]),
            ),
      ].join("\n"),
    );
  },
});

function usedText(bytes: number | null): string {
  return bytes === null ? "?" : formatSize(bytes);
}

function copies(replicas: number): string {
  return replicas === 1 ? "1 copy of each page" : `${replicas} copies of each page`;
}

/** A table moved page by page can have thousands of runs: the line names the first few, --json all. */
const RUNS_SHOWN_MAX = 16;

function runsText(runs: { text: string }[]): string {
  const shown = runs.slice(0, RUNS_SHOWN_MAX).map((run) => run.text).join(", ");
  return runs.length > RUNS_SHOWN_MAX ? `${shown}, and ${runs.length - RUNS_SHOWN_MAX} more run(s) (--json lists all)` : shown;
}

const remove = defineCommand({
  meta: { name: "delete", description: "Delete a volume and free its pages on every node" },
  args: { name: { type: "positional", description: "volume name", required: true }, ...nodeArgs },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.volume.delete", { name: args.name });
    printResult(args.json, result, () => `deleted volume ${args.name}`);
  },
});

const importCommand = defineCommand({
  meta: { name: "import", description: "Write a file (or stdin) into a volume from offset 0, through any node" },
  args: {
    name: { type: "positional", description: "volume name", required: true },
    file: { type: "positional", description: "input file, or - for stdin", required: false, default: "-" },
    ...quietArgs,
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    reexecWithAllocatorTuning(); // before anything of ours is open: the new image would inherit it
    const { args } = context;
    const result = await importVolume(nodeAddress(args), args.name, args.file ?? "-", Boolean(args.quiet));
    const human = `imported ${formatSize(result.bytes)} into ${result.volume} in ${result.seconds.toFixed(2)}s (${formatSize(result.bytesPerSecond)}/s)`;
    if (args.json) printResult(true, result, () => "");
    else process.stderr.write(`${human}\n`);
  },
});

const exportCommand = defineCommand({
  meta: { name: "export", description: "Read a whole volume to a file (or stdout), through any node" },
  args: {
    name: { type: "positional", description: "volume name", required: true },
    file: { type: "positional", description: "output file, or - for stdout", required: false, default: "-" },
    ...quietArgs,
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    reexecWithAllocatorTuning(); // before anything of ours is open: the new image would inherit it
    const { args } = context;
    const target = args.file ?? "-";
    const result = await exportVolume(nodeAddress(args), args.name, target, Boolean(args.quiet));
    // With data on stdout, the summary must go to stderr whatever --json says.
    const line = args.json ? JSON.stringify(result) : `exported ${formatSize(result.bytes)} of ${result.volume} in ${result.seconds.toFixed(2)}s (${formatSize(result.bytesPerSecond)}/s)`;
    if (writesToStdout(target)) process.stderr.write(`${line}\n`);
    else printResult(args.json, result, () => line);
  },
});

export default defineCommand({
  meta: { name: "volume", description: "Create, list, inspect, delete, import and export volumes" },
  subCommands: { create, list, info, delete: remove, import: importCommand, export: exportCommand },
});
