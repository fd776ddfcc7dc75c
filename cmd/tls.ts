// `shoal tls`: the group's certificate authority and the certificates nodes, admins and NBD
// clients present, so an operator needs nothing else to set up a secure group.
import * as path from "node:path";
import { defineCommand } from "citty";
import { ShoalError } from "../core/errors.ts";
import type { TlsRole } from "../transport/tls/tls-identity.ts";
import { initAuthority, issueCertificate } from "./_tls-authority.ts";
import { printResult, rejectUnknownFlags } from "./_cli.ts";

const init = defineCommand({
  meta: { name: "init", description: "Create the group's CA (ca-key.pem, mode 0600, and ca-cert.pem) in DIR" },
  args: {
    dir: { type: "positional", description: "directory for the CA; keep ca-key.pem offline or at least private", required: true },
    name: { type: "string", description: "the CA's common name", default: "shoal-ca" },
    json: { type: "boolean", description: "print one JSON document on stdout" },
  },
  run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const result = initAuthority(args.dir, args.name);
    printResult(args.json, result, () => `CA created: ${result.caCert}`);
  },
});

const issue = defineCommand({
  meta: { name: "issue", description: "Issue a certificate signed by the CA in CADIR for a node, an admin or an NBD client" },
  args: {
    caDir: { type: "positional", description: "the directory `shoal tls init` made", required: true },
    name: { type: "positional", description: "the node id (a node's certificate must name it) or the admin's/client's name", required: true },
    role: { type: "string", description: "node (a group member), admin (admin commands) or client (NBD only)", default: "node" },
    ip: { type: "string", description: "IP addresses the holder is reached at, comma-separated", default: "127.0.0.1", valueHint: "IP,..." },
    dns: { type: "string", description: "DNS names the holder is reached at, comma-separated", default: "localhost", valueHint: "NAME,..." },
    out: { type: "string", description: "output directory (default CADIR/NAME)", valueHint: "DIR" },
    layout: {
      type: "string",
      description: "shoal (cert.pem, key.pem) or qemu (client-cert.pem, client-key.pem: qemu's tls-creds-x509 dir and nbdinfo's tls-certificates)",
      default: "shoal",
    },
    json: { type: "boolean", description: "print one JSON document on stdout" },
  },
  run(context) {
    rejectUnknownFlags(context);
    const { args } = context;
    const role = args.role as TlsRole;
    if (role !== "node" && role !== "admin" && role !== "client") throw new ShoalError("BAD_ARGUMENT", `--role must be node, admin or client, not '${args.role}'`);
    if (args.layout !== "shoal" && args.layout !== "qemu") throw new ShoalError("BAD_ARGUMENT", `--layout must be shoal or qemu, not '${args.layout}'`);
    const result = issueCertificate(args.caDir, args.name, {
      role,
      ips: splitList(args.ip),
      dnsNames: splitList(args.dns),
      outDir: args.out ?? path.join(args.caDir, args.name),
      layout: args.layout,
    });
    printResult(args.json, result, () => `issued ${role} certificate '${args.name}':\n${result.files.map((file) => `  ${file}`).join("\n")}`);
  },
});

function splitList(text: string): string[] {
  return text.split(",").map((item) => item.trim()).filter((item) => item.length > 0);
}

export default defineCommand({
  meta: { name: "tls", description: "Make the group's CA and the certificates its nodes, admins and NBD clients present" },
  subCommands: { init, issue },
});
