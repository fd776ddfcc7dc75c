// TLS identities and who may do what on the mesh: certificates made by the openssl CLI through
// `shoal tls`'s code, read back, and refused when they are unsafe or do not fit.
import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { initAuthority, issueCertificate } from "../../cmd/_tls-authority.ts";
import { ShoalError } from "../../core/errors.ts";
import { meshOpRefusal } from "../../transport/mesh/mesh-tls.ts";
import { loadTlsIdentity, subjectIdentity } from "../../transport/tls/tls-identity.ts";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-tls-unit-"));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const issue = (caDir: string, name: string, role: "node" | "admin" | "client", layout: "shoal" | "qemu" = "shoal") =>
  issueCertificate(caDir, name, { role, ips: ["127.0.0.1"], dnsNames: ["localhost"], outDir: path.join(root, `${path.basename(caDir)}-${name}`), layout });

function codeOf(work: () => unknown): string | undefined {
  try {
    work();
  } catch (err) {
    return (err as ShoalError).code;
  }
  return undefined;
}

describe("TLS identities", () => {
  const ca = path.join(root, "ca");
  initAuthority(ca, "unit-ca");

  test("an issued certificate loads with its name and role, in either file layout", () => {
    issue(ca, "n1", "node");
    issue(ca, "vm1", "client", "qemu");
    expect(loadTlsIdentity(path.join(root, "ca-n1"))).toMatchObject({ name: "n1", role: "node" });
    expect(loadTlsIdentity(path.join(root, "ca-vm1"))).toMatchObject({ name: "vm1", role: "client" });
  });

  test("a key readable by others, a missing directory or a certificate from another CA are refused", () => {
    const dir = path.join(root, "ca-n2");
    issue(ca, "n2", "node");
    fs.chmodSync(path.join(dir, "key.pem"), 0o644);
    expect(() => loadTlsIdentity(dir)).toThrow("readable by others");
    expect(codeOf(() => loadTlsIdentity(path.join(root, "nowhere")))).toBe("BAD_ARGUMENT");
    const other = path.join(root, "other");
    initAuthority(other, "other-ca");
    issue(other, "n3", "node");
    fs.copyFileSync(path.join(ca, "ca-cert.pem"), path.join(root, "other-n3", "ca-cert.pem"));
    expect(() => loadTlsIdentity(path.join(root, "other-n3"))).toThrow("was not issued by the CA");
  });

  test("a CA is never overwritten, and names that are not ids are refused", () => {
    expect(codeOf(() => initAuthority(ca, "again"))).toBe("CONFLICT");
    expect(codeOf(() => issue(ca, "../n9", "node"))).toBe("BAD_ARGUMENT");
    expect(codeOf(() => issue(path.join(root, "no-ca"), "n9", "node"))).toBe("BAD_ARGUMENT");
  });

  test("the subject's OU is the role; anything else is a mere client", () => {
    expect(subjectIdentity("O=shoal\nOU=admin\nCN=ops")).toEqual({ name: "ops", role: "admin" });
    expect(subjectIdentity("CN=x")).toEqual({ name: "x", role: "client" });
  });
});

describe("who may send what on the mesh", () => {
  const node = { name: "n1", role: "node" as const };
  const admin = { name: "ops", role: "admin" as const };
  const client = { name: "vm1", role: "client" as const };

  test("a node acts only under its own name", () => {
    expect(meshOpRefusal(node, "hello", { role: "peer", member: { id: "n1" } })).toBeUndefined();
    expect(meshOpRefusal(node, "group.join", { member: { id: "n1" } })).toBeUndefined();
    expect(meshOpRefusal(node, "vol.read", {})).toBeUndefined();
    expect(meshOpRefusal(node, "hello", { role: "peer", member: { id: "n2" } })).toContain("cannot speak for node 'n2'");
    expect(meshOpRefusal(node, "group.join", { member: { id: "n2" } })).toContain("cannot speak for node 'n2'");
  });

  test("an admin reaches the admin API only; a client nothing; no certificate nothing", () => {
    expect(meshOpRefusal(admin, "hello", { role: "admin" })).toBeUndefined();
    expect(meshOpRefusal(admin, "admin.volume.list", {})).toBeUndefined();
    expect(meshOpRefusal(admin, "hello", { role: "peer", member: { id: "ops" } })).toContain("may not send 'hello'");
    expect(meshOpRefusal(admin, "catalog.volume", {})).toContain("may not send 'catalog.volume'");
    expect(meshOpRefusal(client, "hello", { role: "admin" })).toContain("client certificate");
    expect(meshOpRefusal(undefined, "ping", {})).toContain("no verified certificate");
  });
});
