// `shoal archive`: snapshots as tar streams to files, tapes or pipes; incremental; restore, verify.
import { defineCommand } from "citty";
import { reexecWithAllocatorTuning } from "./_allocator-tuning.ts";
import { ShoalError } from "../core/errors.ts";
import { parseRecordSize } from "../core/archive/manifest.ts";
import { formatSize } from "../core/geometry.ts";
import { parseSnapshotRef } from "../core/snapshot/snapshot-record.ts";
import { nodeAddress, nodeArgs, printResult, quietArgs, rejectUnknownFlags } from "./_cli.ts";
import { writesToStdout } from "./_file-sink.ts";
import { createArchive, readManifest, restoreArchive, verifyArchiveStream } from "./_archive-stream.ts";

function summaryLine(verb: string, summary: { pages: number; bytes: number; seconds: number; bytesPerSecond: number }): string {
  return `${verb} ${summary.pages} page(s), ${formatSize(summary.bytes)} in ${summary.seconds.toFixed(2)}s (${formatSize(summary.bytesPerSecond)}/s)`;
}

const create = defineCommand({
  meta: { name: "create", description: "Write a snapshot (or only its pages changed since an older one) as a tar stream" },
  args: {
    snapshot: { type: "positional", description: "VOL@SNAP", required: true },
    since: { type: "string", description: "an older snapshot of the same volume (NAME or VOL@NAME): write only the pages changed since it", valueHint: "SNAP" },
    output: { type: "string", alias: "o", description: "file or tape device, or - for stdout (default)", default: "-", valueHint: "FILE" },
    recordSize: { type: "string", description: "tar record size in bytes, a multiple of 512 (default 10240)", valueHint: "N" },
    ...quietArgs,
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    reexecWithAllocatorTuning(); // before anything of ours is open: the new image would inherit it
    const { args } = context;
    const { volume, name } = parseSnapshotRef(args.snapshot);
    const since = args.since === undefined ? undefined : baseSnapshotName(args.since, volume, name);
    const summary = await createArchive(nodeAddress(args), volume, name, since, args.output, args.recordSize === undefined ? undefined : parseRecordSize(args.recordSize), Boolean(args.quiet));
    const line = args.json ? JSON.stringify(summary) : summaryLine(`archived ${args.snapshot}${args.since ? ` since ${args.since}` : ""}:`, summary);
    // With the archive on stdout, the summary must go to stderr.
    if (writesToStdout(args.output)) process.stderr.write(`${line}\n`);
    else printResult(args.json, summary, () => line);
  },
});

/** `--since OLD` or `--since VOL@OLD` (as `snap list` prints it): the base snapshot's name. */
function baseSnapshotName(since: string, volume: string, snapshot: string): string {
  const base = since.includes("@") ? parseSnapshotRef(since) : { volume, name: since };
  if (base.volume !== volume) {
    throw new ShoalError("BAD_ARGUMENT", `--since ${since} is a snapshot of '${base.volume}'; an incremental archive of ${volume}@${snapshot} needs an older snapshot of '${volume}'`);
  }
  if (base.name === snapshot) throw new ShoalError("BAD_ARGUMENT", `--since ${since} is the snapshot being archived; name an older snapshot of '${volume}'`);
  return base.name;
}

const restore = defineCommand({
  meta: { name: "restore", description: "Apply a full archive (or an incremental onto a volume holding exactly its base)" },
  args: {
    volume: { type: "positional", description: "volume to restore into", required: true },
    input: { type: "string", alias: "i", description: "archive file or tape device, or - for stdin (default)", default: "-", valueHint: "FILE" },
    create: { type: "boolean", description: "create the volume (full archives only)" },
    ...quietArgs,
    ...nodeArgs,
  },
  async run(context) {
    rejectUnknownFlags(context);
    reexecWithAllocatorTuning(); // before anything of ours is open: the new image would inherit it
    const { args } = context;
    const summary = await restoreArchive(nodeAddress(args), args.volume, args.input, Boolean(args.create), Boolean(args.quiet));
    printResult(args.json, summary, () => summaryLine(`restored ${summary.volume} to ${summary.snapshot} (${summary.snapshotId}):`, summary));
  },
});

const verify = defineCommand({
  meta: { name: "verify", description: "Check every checksum and the structure of an archive; exits non-zero naming the first bad entry" },
  args: {
    input: { type: "string", alias: "i", description: "archive file or tape device, or - for stdin (default)", default: "-", valueHint: "FILE" },
    json: { type: "boolean", description: "print one JSON document on stdout" },
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = await verifyArchiveStream(args.input);
    const { manifest } = result;
    printResult(args.json, { ok: true, ...result }, () => `archive of ${manifest.volume}@${manifest.snapshot.name} (${manifest.snapshot.id})${manifest.base ? ` since ${manifest.base.name}` : ""}: ${result.pages} page(s) and ${result.zeroPages} zero page(s), every checksum good`);
  },
});

const list = defineCommand({
  meta: { name: "list", description: "Print an archive's manifest" },
  args: {
    input: { type: "string", alias: "i", description: "archive file or tape device, or - for stdin (default)", default: "-", valueHint: "FILE" },
    json: { type: "boolean", description: "print the manifest as JSON" },
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const manifest = await readManifest(args.input);
    printResult(args.json, manifest, () =>
      [
        `volume     ${manifest.volume} (${formatSize(manifest.sizeBytes)}, pages of ${formatSize(manifest.pageSizeBytes)})`,
        `snapshot   ${manifest.snapshot.name} (${manifest.snapshot.id}), cut at ${new Date(manifest.snapshot.cutAtMs).toISOString()}`,
        `base       ${manifest.base ? `${manifest.base.name} (${manifest.base.id})` : "none (full archive)"}`,
        `pages      ${manifest.candidatePages} candidate page(s) in ${manifest.pages.length} range(s)`,
        `records    ${manifest.recordSizeBytes} bytes`,
      ].join("\n"),
    );
  },
});

export default defineCommand({
  meta: { name: "archive", description: "Snapshots as tar streams: create (full or incremental), restore, verify, list" },
  subCommands: { create, restore, verify, list },
});
