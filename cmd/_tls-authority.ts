// The group's certificate authority on disk, driven through the openssl CLI: a CA key and
// certificate (`tls init`), and certificates for nodes, admins and NBD clients signed by it
// (`tls issue`). openssl is on every server already and is the reference implementation; a JS
// X.509 library would be a new dependency holding our CA key for no gain.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ShoalError } from "../core/errors.ts";
import { CA_CERT_FILE, type TlsRole } from "../transport/tls/tls-identity.ts";

const CA_KEY_FILE = "ca-key.pem";
const CA_DAYS = 3650;
const CERT_DAYS = 825;
/** P-256: every TLS stack (OpenSSL, GnuTLS in qemu and libnbd) has it, and handshakes are cheap. */
const KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

export function initAuthority(dir: string, commonName: string): { caCert: string } {
  const caKey = path.join(dir, CA_KEY_FILE);
  if (fs.existsSync(caKey)) throw new ShoalError("CONFLICT", `${caKey} exists already; a group keeps its CA (delete the directory to start over)`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caCert = path.join(dir, CA_CERT_FILE);
  openssl([
    "req", "-x509", "-new", ...KEY_ARGS, "-keyout", caKey, "-out", caCert, "-days", String(CA_DAYS),
    "-subj", `/O=shoal/CN=${commonName}`,
    "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  fs.chmodSync(caKey, 0o600);
  return { caCert };
}

export interface IssueOptions {
  role: TlsRole;
  ips: string[];
  dnsNames: string[];
  outDir: string;
  /** "qemu": client-cert.pem/client-key.pem, what qemu's tls-creds-x509 and libnbd read. */
  layout: "shoal" | "qemu";
}

export function issueCertificate(caDir: string, name: string, options: IssueOptions): { files: string[] } {
  const caKey = path.join(caDir, CA_KEY_FILE);
  const caCert = path.join(caDir, CA_CERT_FILE);
  if (!fs.existsSync(caKey) || !fs.existsSync(caCert)) {
    throw new ShoalError("BAD_ARGUMENT", `'${caDir}' holds no CA (${CA_KEY_FILE}, ${CA_CERT_FILE}); run \`shoal tls init ${caDir}\` first`);
  }
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new ShoalError("BAD_ARGUMENT", `'${name}' is not a valid certificate name (letters, digits, '.', '_', '-')`);
  const [certName, keyName] = options.layout === "qemu" ? ["client-cert.pem", "client-key.pem"] : ["cert.pem", "key.pem"];
  const certPath = path.join(options.outDir, certName);
  const keyPath = path.join(options.outDir, keyName);
  if (fs.existsSync(keyPath)) throw new ShoalError("CONFLICT", `${keyPath} exists already; pick another --out`);
  fs.mkdirSync(options.outDir, { recursive: true, mode: 0o700 });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-tls-"));
  try {
    const request = path.join(work, "request.csr");
    const extensions = path.join(work, "extensions.cnf");
    fs.writeFileSync(extensions, extensionLines(options).join("\n") + "\n");
    openssl(["req", "-new", ...KEY_ARGS, "-keyout", keyPath, "-out", request, "-subj", `/O=shoal/OU=${options.role}/CN=${name}`]);
    fs.chmodSync(keyPath, 0o600);
    openssl([
      "x509", "-req", "-in", request, "-CA", caCert, "-CAkey", caKey, "-CAcreateserial", "-CAserial", path.join(work, "serial"),
      "-out", certPath, "-days", String(CERT_DAYS), "-extfile", extensions,
    ]);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const caCopy = path.join(options.outDir, CA_CERT_FILE);
  if (path.resolve(caCopy) !== path.resolve(caCert)) fs.copyFileSync(caCert, caCopy);
  return { files: [caCopy, certPath, keyPath] };
}

/** Every certificate may serve and dial: members are both on the mesh, and it costs nothing. */
function extensionLines(options: IssueOptions): string[] {
  const names = [...options.ips.map((ip) => `IP:${ip}`), ...options.dnsNames.map((dns) => `DNS:${dns}`)];
  const lines = [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage=serverAuth,clientAuth",
  ];
  if (names.length > 0) lines.push(`subjectAltName=${names.join(",")}`);
  return lines;
}

/** Keys are created private (umask 077): a chmod after the fact leaves a window. */
function openssl(args: string[]): void {
  let result;
  const previousUmask = process.umask(0o077);
  try {
    result = Bun.spawnSync(["openssl", ...args], { stdout: "pipe", stderr: "pipe" });
  } catch (err) {
    throw new ShoalError("BAD_ARGUMENT", `cannot run openssl (${(err as Error).message}); install it (Debian: apt-get install openssl)`);
  } finally {
    process.umask(previousUmask);
  }
  if (result.exitCode !== 0) {
    throw new ShoalError("IO_ERROR", `openssl ${args[0]} failed: ${result.stderr.toString().trim().split("\n").slice(-2).join("; ")}`);
  }
}
