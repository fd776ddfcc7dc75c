// `shoal node`: runs a storage node in the foreground until SIGINT or SIGTERM.
import { defineCommand } from "citty";
import { startNode } from "./_node-runtime.ts";
import { parseDurationMs, rejectUnknownFlags } from "./_cli.ts";

export default defineCommand({
  meta: { name: "node", description: "Run a storage node (a one-node group unless --join names a member)" },
  args: {
    id: { type: "string", description: "node id (generated once and kept in the data dir when omitted)" },
    data: { type: "string", description: "data directory", default: "./shoal-data", valueHint: "DIR" },
    listen: { type: "string", description: "peer mesh and admin address", default: "127.0.0.1:7400", valueHint: "HOST:PORT" },
    nbd: { type: "string", description: "NBD address", default: "127.0.0.1:10809", valueHint: "HOST:PORT" },
    join: { type: "string", description: "join the group of the member at this mesh address", valueHint: "HOST:PORT" },
    maxClockSkew: {
      type: "string",
      description: "bound on any node's clock error, for timestamp-mode snapshots (default 5ms)",
      default: "5ms",
      valueHint: "DURATION",
    },
    tls: { type: "string", description: "TLS credentials (from `shoal tls issue`): mutual TLS on the mesh, STARTTLS on NBD", valueHint: "DIR" },
    tlsRequired: { type: "boolean", description: "refuse NBD clients that do not STARTTLS (needs --tls)" },
  },
  async run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const node = await startNode({
      id: args.id,
      dataDir: args.data,
      listen: args.listen,
      nbd: args.nbd,
      join: args.join,
      maxClockSkewMs: parseDurationMs(args.maxClockSkew),
      tlsDir: args.tls,
      tlsRequired: args.tlsRequired,
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
