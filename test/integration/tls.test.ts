// A TLS group of three real nodes (mutual TLS on the mesh, STARTTLS required on NBD): the data
// path, snapshots and archives work through qemu-io, nbdinfo and our CLI over TLS; processes
// without a certificate from the group's CA (plain, none, another CA, the wrong role) are
// refused at the handshake with one log line on the node and a clear error for the client.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { loadTlsIdentity, useTlsIdentity } from "../../transport/tls/tls-identity.ts";
import { freePort, run, shoalCommand, TestCluster, type TestNode } from "./_cluster.ts";

let cluster: TestCluster;
let certs: string;
const ca = () => path.join(certs, "ca");
const other = () => path.join(certs, "other");

const shoal = (args: string[], env: Record<string, string> = {}) => run([...shoalCommand(), ...args], { env });
/** The CLI as the group's admin, talking to `node`. */
const admin = (node: TestNode, args: string[]) => shoal(args, { SHOAL_NODE: node.meshAddress, SHOAL_TLS: path.join(ca(), "admin") });

/** qemu-io with qemu's own x509 credentials (ca-cert.pem, client-cert.pem, client-key.pem). */
function qemuIoTls(node: TestNode, exportName: string, ...commands: string[]) {
  return run([
    "qemu-io",
    "--object",
    `tls-creds-x509,id=tls0,dir=${path.join(ca(), "qemu")},endpoint=client`,
    "--image-opts",
    `driver=nbd,host=127.0.0.1,port=${node.nbdPort},export=${exportName},tls-creds=tls0`,
    ...commands.flatMap((command) => ["-c", command]),
  ]);
}

async function issue(caDir: string, name: string, ...flags: string[]): Promise<void> {
  const result = await shoal(["tls", "issue", caDir, name, ...flags]);
  expect(result.stderr).toBe("");
  expect(result.exitCode).toBe(0);
}

/** Lines of a node's log that mention `text`, once it has logged at least one. */
async function logLines(node: TestNode, text: string): Promise<string[]> {
  for (let attempt = 0; attempt < 100 && !node.stderrLog.includes(text); attempt++) await Bun.sleep(20);
  return node.stderrLog.split("\n").filter((line) => line.includes(text));
}

beforeAll(async () => {
  certs = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-tls-"));
  expect((await shoal(["tls", "init", ca()])).exitCode).toBe(0);
  expect((await shoal(["tls", "init", other()])).exitCode).toBe(0);
  for (const name of ["node1", "node2", "node3"]) await issue(ca(), name);
  await issue(ca(), "admin", "--role", "admin");
  await issue(ca(), "qemu", "--role", "client", "--layout", "qemu");
  await issue(other(), "node4");
  await issue(other(), "admin", "--role", "admin");
  // The test process itself is an admin client (the cluster helper asks nodes if they are up).
  useTlsIdentity(loadTlsIdentity(path.join(ca(), "admin")));
  cluster = await TestCluster.start(3, {}, (index) => ["--tls", path.join(ca(), `node${index + 1}`), "--tls-required"]);
});

afterAll(async () => {
  useTlsIdentity(undefined);
  await cluster?.stop();
  if (certs) fs.rmSync(certs, { recursive: true, force: true });
});

describe("TLS group", () => {
  test("tls init/issue make private keys and certificates that name their holder", async () => {
    expect(fs.statSync(path.join(ca(), "ca-key.pem")).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(ca(), "node1", "key.pem")).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(ca(), "qemu", "client-key.pem")).mode & 0o777).toBe(0o600);
    const text = await run(["openssl", "x509", "-in", path.join(ca(), "node1", "cert.pem"), "-noout", "-subject", "-ext", "subjectAltName"]);
    expect(text.stdout).toContain("CN = node1");
    expect(text.stdout).toContain("IP Address:127.0.0.1");
    const again = await shoal(["tls", "init", ca()]);
    expect(again.exitCode).toBe(4);
  });

  test("the data path works over TLS: qemu-io writes through node 1, reads back through node 3, the CLI imports and exports", async () => {
    const [node1, , node3] = cluster.nodes as [TestNode, TestNode, TestNode];
    expect((await admin(node1, ["volume", "create", "tv", "--size", "48M"])).exitCode).toBe(0);
    const write = await qemuIoTls(node1, "tv", "write -P 0x5a 0 20M", "write -P 0xa5 20M 4M");
    expect(write.stderr).toBe("");
    expect(write.exitCode).toBe(0);
    const read = await qemuIoTls(node3, "tv", "read -P 0x5a 0 20M", "read -P 0xa5 20M 4M", "read -P 0 24M 24M");
    expect(read.stdout).not.toContain("Pattern verification failed");
    expect(read.exitCode).toBe(0);

    const info = await run(["nbdinfo", "--json", `nbds://127.0.0.1:${node3.nbdPort}/tv?tls-certificates=${path.join(ca(), "qemu")}`]);
    expect(info.exitCode).toBe(0);
    expect(JSON.parse(info.stdout).exports[0]["export-size"]).toBe(48 * 1024 * 1024);

    const input = path.join(certs, "in.bin");
    const output = path.join(certs, "out.bin");
    fs.writeFileSync(input, crypto.getRandomValues(new Uint8Array(12 * 1024 * 1024)));
    expect((await admin(node1, ["volume", "import", "tv", input])).exitCode).toBe(0);
    expect((await admin(node3, ["volume", "export", "tv", output])).exitCode).toBe(0);
    expect(Buffer.compare(fs.readFileSync(output).subarray(0, 12 * 1024 * 1024), fs.readFileSync(input))).toBe(0);
  });

  test("snapshot, archive and restore work over TLS", async () => {
    const [node1, node2] = cluster.nodes as [TestNode, TestNode];
    expect((await admin(node1, ["volume", "create", "sv", "--size", "32M"])).exitCode).toBe(0);
    expect((await qemuIoTls(node2, "sv", "write -P 0x33 0 16M")).exitCode).toBe(0);
    expect((await admin(node2, ["snap", "create", "sv", "--name", "s1"])).exitCode).toBe(0);
    expect((await qemuIoTls(node1, "sv", "write -P 0x44 0 16M")).exitCode).toBe(0);
    const archive = path.join(certs, "sv.tar");
    const created = await admin(node1, ["archive", "create", "sv@s1", "-o", archive]);
    expect(created.exitCode).toBe(0);
    const restored = await admin(node2, ["archive", "restore", "rv", "-i", archive, "--create"]);
    expect(restored.exitCode).toBe(0);
    const read = await qemuIoTls(node1, "rv", "read -P 0x33 0 16M", "read -P 0 16M 16M");
    expect(read.stdout).not.toContain("Pattern verification failed");
    expect(read.exitCode).toBe(0);
    expect((await qemuIoTls(node1, "sv@s1", "read -P 0x33 0 16M")).stdout).not.toContain("Pattern verification failed");
  });

  test("with --tls-required a plain NBD client is refused (NBD_REP_ERR_TLS_REQD) and told why", async () => {
    const node2 = cluster.nodes[1]!;
    const plain = await run(["qemu-io", "-f", "raw", "-c", "read 0 4k", node2.nbdUrl("tv")]);
    expect(plain.exitCode).not.toBe(0);
    expect(plain.stderr).toContain("TLS");
    const info = await run(["nbdinfo", node2.nbdUrl("tv")]);
    expect(info.exitCode).not.toBe(0);
    expect(await logLines(node2, "requires TLS")).not.toHaveLength(0);
  });

  test("an NBD client with a certificate from another CA, or none, is refused at the handshake with one log line", async () => {
    const node3 = cluster.nodes[2]!;
    // Trusts our CA (so it would accept the server) but holds a certificate from another one.
    const foreign = path.join(certs, "foreign-client");
    await issue(other(), "mallory", "--role", "client", "--layout", "qemu", "--out", foreign);
    fs.copyFileSync(path.join(ca(), "ca-cert.pem"), path.join(foreign, "ca-cert.pem"));
    const none = path.join(certs, "no-client-cert");
    fs.mkdirSync(none);
    fs.copyFileSync(path.join(ca(), "ca-cert.pem"), path.join(none, "ca-cert.pem"));
    for (const dir of [foreign, none]) {
      const result = await run(["nbdinfo", `nbds://127.0.0.1:${node3.nbdPort}/tv?tls-certificates=${dir}`]);
      expect(result.exitCode).not.toBe(0);
    }
    expect(await logLines(node3, "refused: its certificate 'mallory' is not from this group's CA")).toHaveLength(1);
    expect(await logLines(node3, "refused: it presented no client certificate")).toHaveLength(1);
  });

  test("admin commands without a certificate, with one from another CA or of the wrong role are refused", async () => {
    const node1 = cluster.nodes[0]!;
    const good = await admin(node1, ["route", "nodes", "--json"]);
    expect(good.exitCode).toBe(0);
    expect((JSON.parse(good.stdout).nodes as { state: string }[]).map((member) => member.state)).toEqual(["up", "up", "up"]);

    const plain = await shoal(["volume", "list"], { SHOAL_NODE: node1.meshAddress });
    expect(plain.exitCode).not.toBe(0);
    expect(plain.stderr).toContain("--tls");
    expect(await logLines(node1, "TLS handshake failed")).toHaveLength(1);

    const foreign = await shoal(["volume", "list", "--tls", path.join(other(), "admin"), "--node", node1.meshAddress]);
    expect(foreign.exitCode).toBe(7);
    expect(foreign.stderr).toContain("not from this group's CA");

    const client = await shoal(["volume", "delete", "tv", "--tls", path.join(ca(), "qemu"), "--node", node1.meshAddress]);
    expect(client.exitCode).toBe(7);
    expect(client.stderr).toContain("client certificate");
  });

  test("a node with a certificate from another CA, or none, cannot join", async () => {
    const node1 = cluster.nodes[0]!;
    const before = (await logLines(node1, "refusing mesh connection")).length;
    const start = async (args: string[]) =>
      shoal(["node", "--id", "node4", "--data", fs.mkdtempSync(path.join(certs, "n4-")), "--listen", `127.0.0.1:${await freePort()}`, "--nbd", `127.0.0.1:${await freePort()}`, "--join", node1.meshAddress, ...args]);
    const foreign = await start(["--tls", path.join(other(), "node4")]);
    expect(foreign.exitCode).toBe(7);
    expect(foreign.stderr).toContain("not from this group's CA");
    const plain = await start([]);
    expect(plain.exitCode).not.toBe(0);
    const lines = (await logLines(node1, "refusing mesh connection")).slice(before);
    expect(lines.some((line) => line.includes("certificate 'node4' is not from this group's CA"))).toBe(true);
    expect(lines.some((line) => line.includes("TLS handshake failed"))).toBe(true);
    const members = JSON.parse((await admin(node1, ["route", "nodes", "--json"])).stdout).nodes as unknown[];
    expect(members).toHaveLength(3);
  });
});
