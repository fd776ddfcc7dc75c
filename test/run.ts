// `npm test`: makes sure the real NBD clients the integration tests drive, and the tar programs
// the archive tests check against, are installed (with apt-get when running as root; otherwise
// it says what to install and stops, never skips),
// builds the binary the tests start, runs the whole suite, and ends with one summary line.
export {};

const REQUIRED_TOOLS: Record<string, string> = {
  "qemu-io": "qemu-utils",
  "qemu-img": "qemu-utils",
  nbdcopy: "libnbd-bin",
  nbdinfo: "libnbd-bin",
  // The archive tests check that both tar implementations list and extract shoal's archives.
  tar: "tar",
  bsdtar: "libarchive-tools",
  // `shoal tls init/issue` drive the openssl CLI; the TLS tests make a CA with it.
  openssl: "openssl",
  // The failing-output test pipes an archive into a zstd that refuses to overwrite its file.
  zstd: "zstd",
};

function missingTools(): string[] {
  return Object.keys(REQUIRED_TOOLS).filter((tool) => !Bun.which(tool));
}

async function sh(command: string[], env: Record<string, string> = {}): Promise<number> {
  const proc = Bun.spawn(command, { stdout: "inherit", stderr: "inherit", stdin: "ignore", env: { ...process.env, ...env } });
  return proc.exited;
}

async function ensureTools(): Promise<void> {
  let missing = missingTools();
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((tool) => REQUIRED_TOOLS[tool]!))];
  if (process.getuid?.() !== 0 || !Bun.which("apt-get")) {
    console.error(`npm test needs ${missing.join(", ")}: install the Debian packages ${packages.join(" ")} (apt-get install ${packages.join(" ")}) and run it again.`);
    process.exit(1);
  }
  console.error(`installing ${packages.join(" ")} with apt-get for the integration tests`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  if ((await sh(["apt-get", "update", "-qq"], env)) !== 0 || (await sh(["apt-get", "install", "-y", "-qq", ...packages], env)) !== 0) {
    console.error("apt-get failed; install the packages by hand");
    process.exit(1);
  }
  missing = missingTools();
  if (missing.length > 0) {
    console.error(`still missing after apt-get: ${missing.join(", ")}`);
    process.exit(1);
  }
}

async function main(): Promise<void> {
  await ensureTools();
  const bun = process.execPath;
  if ((await sh([bun, "build", "--compile", "--bytecode", "--format=esm", "cmd/shoal.ts", "--outfile", "dist/shoal"])) !== 0) {
    console.error("building dist/shoal failed");
    process.exit(1);
  }
  const selected = process.argv.slice(2);
  const proc = Bun.spawn([bun, "test", "--timeout", "120000", ...(selected.length > 0 ? selected : ["test/unit", "test/sim", "test/integration"])], {
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, SHOAL_BIN: `${process.cwd()}/dist/shoal` },
  });
  let passed = 0;
  let failed = 0;
  const watch = async (stream: ReadableStream<Uint8Array>, sink: NodeJS.WriteStream) => {
    const decoder = new TextDecoder();
    let carry = "";
    for await (const chunk of stream) {
      sink.write(chunk);
      const lines = (carry + decoder.decode(chunk, { stream: true })).split("\n");
      carry = lines.pop()!;
      for (const line of lines) {
        const pass = /^\s*(\d+) pass\s*$/.exec(line);
        const fail = /^\s*(\d+) fail\s*$/.exec(line);
        if (pass) passed = Number(pass[1]);
        if (fail) failed = Number(fail[1]);
      }
    }
  };
  await Promise.all([watch(proc.stdout, process.stdout), watch(proc.stderr, process.stderr)]);
  const code = await proc.exited;
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code !== 0 ? code : passed === 0 ? 1 : 0);
}

await main();
