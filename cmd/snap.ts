// `shoal snap`: crash-consistent snapshots of one or more volumes, and what can be done with them.
import { defineCommand } from "citty";
import { ShoalError } from "../core/errors.ts";
import { formatSize } from "../core/geometry.ts";
import { parseSnapshotRef } from "../core/snapshot/snapshot-record.ts";
import type { SnapshotTaken } from "../transport/admin/admin-results.ts";
import { adminRequest, nodeAddress, nodeArgs, parseDurationMs, printResult, rejectUnknownFlags, table } from "./_cli.ts";

const create = defineCommand({
  meta: { name: "create", description: "Take a crash-consistent snapshot of one or more volumes (the node asked coordinates)" },
  args: {
    volumes: { type: "positional", description: "volume names (VOL...)", required: true },
    name: { type: "string", description: "snapshot name", required: true },
    mode: { type: "string", description: "hold (suspend requests briefly) or timestamp (hold nothing)", default: "hold" },
    holdTimeout: { type: "string", description: "longest a client request may be held", default: "2s", valueHint: "DURATION" },
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context, { variadic: true });
    const { args } = context;
    const volumes = (args._ as string[]).length > 0 ? (args._ as string[]) : [args.volumes];
    const result = await adminRequest(nodeAddress(args), "admin.snap.create", {
      volumes,
      name: args.name,
      mode: snapshotMode(args.mode),
      holdTimeoutMs: parseDurationMs(args.holdTimeout, "--hold-timeout"),
    });
    printResult(args.json, result, () => describeCreated(result));
  },
});

function snapshotMode(text: string): "hold" | "timestamp" {
  if (text === "hold" || text === "timestamp") return text;
  throw new ShoalError("BAD_ARGUMENT", `unknown snapshot mode '${text}'; use hold or timestamp`);
}

/** The human form of a snapshot just made: one line, then one per node that held requests. */
function describeCreated(result: SnapshotTaken): string {
  const cut = new Date(result.cutAtMs ?? result.startedAtMs).toISOString();
  const lines = [
    `snapshot ${result.name} (${result.snapshotId}) of ${result.volumes.join(", ")}: ${result.mode} mode, cut at ${cut}, ${result.participants.length} participant(s), ${result.tookMs} ms`,
  ];
  for (const [node, hold] of Object.entries(result.holds).sort(([a], [b]) => a.localeCompare(b))) {
    const waited = hold.queued === 0 ? "no request waited" : `${hold.queued} request(s) waited, longest ${hold.longestWaitMs} ms`;
    lines.push(`  ${node}: held ${hold.heldMs} ms, ${waited}`);
  }
  return lines.join("\n");
}

const prepare = defineCommand({
  meta: {
    name: "prepare",
    description: "Phase 1 of 3: prepare a snapshot and return once every participant is ready (holding, in hold mode) until take, release or the hold timeout",
  },
  args: {
    volumes: { type: "positional", description: "volume names (VOL...)", required: true },
    name: { type: "string", description: "snapshot name", required: true },
    mode: { type: "string", description: "hold or timestamp", default: "hold" },
    holdTimeout: { type: "string", description: "how long participants wait for take", default: "2s", valueHint: "DURATION" },
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context, { variadic: true });
    const { args } = context;
    const volumes = (args._ as string[]).length > 0 ? (args._ as string[]) : [args.volumes];
    const result = await adminRequest(nodeAddress(args), "admin.snap.prepare", {
      volumes,
      name: args.name,
      mode: snapshotMode(args.mode),
      holdTimeoutMs: parseDurationMs(args.holdTimeout, "--hold-timeout"),
    });
    printResult(args.json, result, () => `prepared ${args.name} (${String(result.snapshotId)}); now \`shoal snap take ${args.name}\` on the same node`);
  },
});

function phaseCommand(name: "take" | "release", description: string) {
  return defineCommand({
    meta: { name, description },
    args: { name: { type: "positional", description: "snapshot name given to prepare", required: true }, ...nodeArgs },
    async run(context) {
      rejectUnknownFlags(context);
      const { args } = context;
      if (name === "take") {
        const taken = await adminRequest(nodeAddress(args), "admin.snap.take", { name: args.name });
        printResult(args.json, taken, () => describeCreated(taken));
        return;
      }
      const released = await adminRequest(nodeAddress(args), "admin.snap.release", { name: args.name });
      printResult(args.json, released, () => `released ${args.name}: ${released.outcome}`);
    },
  });
}

const list = defineCommand({
  meta: { name: "list", description: "List snapshots (of one volume, or all), oldest first" },
  args: {
    volume: { type: "positional", description: "volume name", required: false },
    prefix: { type: "string", description: "only snapshots whose name starts with PREFIX", valueHint: "PREFIX" },
    latest: { type: "boolean", description: "only the newest snapshot, as VOL@NAME (with --json, its record); exit 3 if there is none" },
    names: { type: "boolean", description: "only VOL@NAME, one a line, no header (for scripts)" },
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await adminRequest(nodeAddress(args), "admin.snap.list", args.volume ? { volume: args.volume } : {});
    const snapshots = result.snapshots
      .filter((s) => args.prefix === undefined || s.name.startsWith(args.prefix))
      .sort((a, b) => a.cutAtMs - b.cutAtMs || a.name.localeCompare(b.name))
      .map((s) => ({ ...s, cutAt: new Date(s.cutAtMs).toISOString(), createdAt: new Date(s.createdAtMs).toISOString() }));
    if (args.latest) {
      const newest = snapshots.at(-1);
      if (!newest) {
        const which = `${args.volume ? `volume '${args.volume}' has` : "there are"} no snapshots${args.prefix === undefined ? "" : ` named ${args.prefix}*`}`;
        throw new ShoalError("UNKNOWN_SNAPSHOT", which);
      }
      printResult(args.json, newest, () => `${newest.volume}@${newest.name}`);
      return;
    }
    if (args.names && !args.json) {
      printResult(false, undefined, () => snapshots.map((s) => `${s.volume}@${s.name}`).join("\n"));
      return;
    }
    printResult(args.json, { snapshots }, () =>
      snapshots.length === 0
        ? "no snapshots"
        : table(
            ["SNAPSHOT", "ID", "MODE", "CUT", "STATE", "EXCLUSIVE"],
            snapshots.map((s) => [
              `${s.volume}@${s.name}`,
              s.snapshotId,
              s.mode,
              s.cutAt,
              s.state,
              s.bytesHeldOnlyByIt === null ? "?" : formatSize(s.bytesHeldOnlyByIt),
            ]),
          ),
    );
  },
});

function refCommand(name: string, description: string, op: "admin.snap.delete" | "admin.snap.rollback", verb: string) {
  return defineCommand({
    meta: { name, description },
    args: { snapshot: { type: "positional", description: "VOL@NAME", required: true }, ...nodeArgs },
    async run(context) {
      rejectUnknownFlags(context);
      const { args } = context;
      const { volume, name: snapshotName } = parseSnapshotRef(args.snapshot);
      const result = await adminRequest(nodeAddress(args), op, { volume, name: snapshotName });
      printResult(args.json, result, () => `${verb} ${args.snapshot}`);
    },
  });
}

const clone = defineCommand({
  meta: { name: "clone", description: "Make a writable volume from a snapshot, sharing its unchanged pages" },
  args: {
    snapshot: { type: "positional", description: "VOL@NAME", required: true },
    target: { type: "positional", description: "new volume name", required: true },
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const { volume, name } = parseSnapshotRef(args.snapshot);
    const result = await adminRequest(nodeAddress(args), "admin.snap.clone", { volume, name, target: args.target });
    printResult(args.json, result, () => `cloned ${args.snapshot} as volume ${args.target}`);
  },
});

export default defineCommand({
  meta: { name: "snap", description: "Crash-consistent snapshots: create (or prepare/take/release), list, delete, rollback, clone" },
  subCommands: {
    create,
    prepare,
    take: phaseCommand("take", "Phase 2 of 3: cut the prepared snapshot (send to the node that ran prepare); returns when it is complete"),
    release: phaseCommand("release", "Phase 3 of 3: resume; before take this aborts the snapshot"),
    list,
    delete: refCommand("delete", "Delete a snapshot; its space is freed in the background without stalling clients", "admin.snap.delete", "deleted"),
    rollback: refCommand("rollback", "Make a volume read exactly as one of its snapshots", "admin.snap.rollback", "rolled back to"),
    clone,
  },
});
