// `shoal node`: runs a storage node in the foreground until SIGINT or SIGTERM. The CLI front of
// transport/node/start-node.ts: flags and config file in, a running node out.
import { defineCommand, type ArgsDef } from "citty";
import { parseDurationMs, parseReplicas, parseReplicaTimeoutMs, rejectUnknownFlags } from "./_cli.ts";
import { resolveSettings, withoutDefaults, type Settings } from "./_config.ts";
import { createLog, parseLogFormat } from "./_log.ts";
import { NODE_PURGE_DELAY_MS, reexecWithAllocatorTuning } from "./_allocator-tuning.ts";
import { parseSize } from "../core/geometry.ts";

/** The node's flags with their defaults; a config file may set any of them (except config). */
const nodeFlags = {
  config: { type: "string", description: "TOML file whose keys are these flags, kebab-case (default $SHOAL_CONFIG); flags win", valueHint: "FILE" },
  id: { type: "string", description: "node id (generated once and kept in the data dir when omitted)" },
  data: { type: "string", description: "data directory", default: "./shoal-data", valueHint: "DIR" },
  listen: { type: "string", description: "peer mesh and admin address", default: "127.0.0.1:7400", valueHint: "HOST:PORT" },
  nbd: { type: "string", description: "NBD address", default: "127.0.0.1:10809", valueHint: "HOST:PORT" },
  join: { type: "string", description: "join the group of the member at this mesh address", valueHint: "HOST:PORT" },
  maxClockSkew: {
    type: "string",
    description: "bound on any node's clock error, for timestamp-mode snapshots",
    default: "5ms",
    valueHint: "DURATION",
  },
  metrics: { type: "string", description: "serve Prometheus metrics over HTTP at http://HOST:PORT/metrics", valueHint: "HOST:PORT" },
  logFormat: { type: "string", description: "log lines on stderr: human, or json (one object per line)", default: "human", valueHint: "FORMAT" },
  tls: { type: "string", description: "TLS credentials (from `shoal tls issue`): mutual TLS on the mesh, STARTTLS on NBD", valueHint: "DIR" },
  tlsRequired: { type: "boolean", description: "refuse NBD clients that do not STARTTLS (needs --tls)" },
  dirtyLimit: {
    type: "string",
    description: "written bytes not yet synced past which the node writes back and holds writers to the disk's pace",
    default: "128MiB",
    valueHint: "SIZE",
  },
  defaultReplicas: {
    type: "string",
    description: "copies of each page (1-3, on distinct nodes) of a volume created through this node without --replicas",
    default: "1",
    valueHint: "N",
  },
  replicaTimeout: {
    type: "string",
    description: "a replica of a replicated volume not heard from for this long leaves its page groups' sets; 500ms-10m; a client's request waits for a new set at most three times this, and at least this plus 5s",
    default: "3s",
    valueHint: "DURATION",
  },
  writebackInterval: {
    type: "string",
    description: "how often unsynced writes are written back in the background, so a FLUSH or a snapshot finds little to sync (0: only past --dirty-limit)",
    default: "200ms",
    valueHint: "DURATION",
  },
} as const satisfies ArgsDef;

export default defineCommand({
  meta: { name: "node", description: "Run a storage node (a one-node group unless --join names a member)" },
  args: withoutDefaults(nodeFlags),
  async run(context) {
    rejectUnknownFlags(context);
    // First, before anything of ours is open: the new image would inherit it.
    reexecWithAllocatorTuning((message) => createLog("node").warn(message), NODE_PURGE_DELAY_MS);
    const configPath = context.args.config || process.env.SHOAL_CONFIG || undefined;
    const settings = resolveSettings(nodeFlags, context.args as Settings, configPath);
    const text = (name: string) => settings[name] as string | undefined;
    // Loaded here, not at the top: only `shoal node` needs sqlite, the page store and the servers.
    const { startNode } = await import("../transport/node/start-node.ts");
    const node = await startNode({
      id: text("id"),
      dataDir: text("data")!,
      listen: text("listen")!,
      nbd: text("nbd")!,
      join: text("join"),
      maxClockSkewMs: parseDurationMs(text("maxClockSkew")!, "--max-clock-skew"),
      metrics: text("metrics"),
      log: createLog(undefined, parseLogFormat(text("logFormat")!)),
      tlsDir: text("tls"),
      tlsRequired: settings.tlsRequired === true,
      dirtyLimitBytes: parseSize(text("dirtyLimit")!),
      writeBackIntervalMs: parseDurationMs(text("writebackInterval")!, "--writeback-interval"),
      defaultReplicas: parseReplicas(text("defaultReplicas")!, "--default-replicas"),
      replicaTimeoutMs: parseReplicaTimeoutMs(text("replicaTimeout")!, "--replica-timeout"),
    });
    await new Promise<void>((resolve) => {
      const onSignal = () => {
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
        node.stop().then(resolve, (err) => {
          process.stderr.write(`shoal: stop failed: ${(err as Error).message}\n`);
          process.exit(1);
        });
      };
      process.on("SIGINT", onSignal);
      process.on("SIGTERM", onSignal);
    });
    process.exit(0);
  },
});
