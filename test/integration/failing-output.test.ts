// Commands whose output or input fails, on real processes: a full disk, a missing directory, a
// reader that leaves a pipe, a file that is not there, a truncated archive, Ctrl-C mid-restore.
// Each must end within seconds with one typed line (or quietly, for a closed pipe), never a stack
// trace or a hang, and leave nothing behind that the retry trips over.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { run, shoalCommand, TestCluster, waitFor, type RunResult } from "./_cluster.ts";

let cluster: TestCluster;
let dir: string;
let archive: string;
let truncated: string;

/** Every failure of this file must end well inside this; a hang is what the tests are for. */
const QUICK_MS = 10_000;
/** A command still running after this is killed, so a hang fails its test instead of the suite. */
const KILL_MS = 30_000;

beforeAll(async () => {
  cluster = await TestCluster.start(2);
  dir = path.join(cluster.root, "files");
  fs.mkdirSync(dir);
  expect((await cluster.shoal(["volume", "create", "vol", "--size", "64M"])).exitCode).toBe(0);
  // Data in every page: the archive and the export are far larger than a pipe's buffer.
  expect((await run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64M", "-c", "flush", cluster.nodes[0]!.nbdUrl("vol")])).exitCode).toBe(0);
  expect((await cluster.shoal(["snap", "create", "vol", "--name", "s1"])).exitCode).toBe(0);
  archive = path.join(dir, "vol.tar");
  expect((await cluster.shoal(["archive", "create", "vol@s1", "-o", archive])).exitCode).toBe(0);
  truncated = path.join(dir, "truncated.tar");
  fs.writeFileSync(truncated, fs.readFileSync(archive).subarray(0, 30_000_000)); // cut inside a page
});
afterAll(async () => {
  await cluster?.stop();
});

interface Timed extends RunResult {
  elapsedMs: number;
}

/** A shell pipeline with `shoal` on the node; the exit code is shoal's own (PIPESTATUS[0]). */
async function pipeline(script: string): Promise<Timed> {
  const startMs = Date.now();
  const shoal = shoalCommand().map((word) => `'${word}'`).join(" ");
  // `timeout` inside the pipeline: killing bash alone would leave a hung shoal holding the pipes.
  const result = await run(["bash", "-c", `shoal() { timeout -s KILL ${KILL_MS / 1000} ${shoal} "$@"; }; ${script}; exit \${PIPESTATUS[0]}`], {
    env: { SHOAL_NODE: cluster.nodes[0]!.meshAddress },
    timeoutMs: KILL_MS,
  });
  return { ...result, elapsedMs: Date.now() - startMs };
}

async function shoal(args: string[]): Promise<Timed> {
  const startMs = Date.now();
  const result = await run([...shoalCommand(), ...args], { env: { SHOAL_NODE: cluster.nodes[0]!.meshAddress }, timeoutMs: KILL_MS });
  return { ...result, elapsedMs: Date.now() - startMs };
}

/** The contract for an operating error: quick, one line naming the thing, the code, its exit code. */
function expectOneLine(result: Timed, code: string, exitCode: number, names: string): void {
  expect(result.stderr).not.toMatch(/^\s+at /m);
  expect(result.stderr.trim().split("\n")).toHaveLength(1);
  expect(result.stderr).toContain(`[${code}]`);
  expect(result.stderr).toContain(names);
  expect(result.exitCode).toBe(exitCode);
  expect(result.elapsedMs).toBeLessThan(QUICK_MS);
}

/** A reader that leaves: nothing on stderr, the status `cat` would have (141, SIGPIPE), quickly. */
function expectQuietBrokenPipe(result: Timed): void {
  expect(result.stderr).toBe("");
  expect(result.exitCode).toBe(141);
  expect(result.elapsedMs).toBeLessThan(QUICK_MS);
}

async function volumeNames(): Promise<Record<string, string>> {
  const listed = await cluster.shoal(["volume", "list", "--json"]);
  expect(listed.exitCode).toBe(0);
  return Object.fromEntries((JSON.parse(listed.stdout).volumes as { name: string; state: string }[]).map((v) => [v.name, v.state]));
}

/** A small file system that fills up (tmpfs, as root), or undefined where mounting is not allowed. */
function mountTmpfs(name: string, options: string): string | undefined {
  const mountPoint = path.join(dir, name);
  fs.mkdirSync(mountPoint);
  const mounted = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mountPoint]);
  return mounted.exitCode === 0 ? mountPoint : undefined;
}

describe("failing output", () => {
  test("archive create -o /dev/full: exit 6, one line naming the device, within seconds", async () => {
    expectOneLine(await shoal(["archive", "create", "vol@s1", "-o", "/dev/full"]), "NO_SPACE", 6, "/dev/full");
    expectOneLine(await shoal(["volume", "export", "vol", "/dev/full"]), "NO_SPACE", 6, "/dev/full");
  });

  test("stdout on a full device: exit 6, one line naming stdout", async () => {
    expectOneLine(await pipeline("shoal archive create vol@s1 > /dev/full"), "NO_SPACE", 6, "stdout");
    expectOneLine(await pipeline("shoal volume export vol > /dev/full"), "NO_SPACE", 6, "stdout");
  });

  test("a missing directory or a directory as the output: exit 2 naming it, before any node is asked", async () => {
    const missing = await shoal(["archive", "create", "vol@s1", "-o", "/nonexistent-dir/x.tar"]);
    expectOneLine(missing, "BAD_PATH", 2, "'/nonexistent-dir/x.tar'");
    expect(missing.stderr).toContain("directory '/nonexistent-dir' does not exist");
    // No node at this address: the path is checked first, so the answer is still the path.
    expectOneLine(await shoal(["archive", "create", "vol@s1", "-o", "/nonexistent-dir/x.tar", "--node", "127.0.0.1:1"]), "BAD_PATH", 2, "/nonexistent-dir");
    expectOneLine(await shoal(["volume", "export", "vol", dir]), "BAD_PATH", 2, "it is a directory");
  });

  test("a reader that leaves the pipe ends the command quietly, with the SIGPIPE status", async () => {
    expectQuietBrokenPipe(await pipeline("shoal archive create vol@s1 -o - | head -c 100 > /dev/null"));
    expectQuietBrokenPipe(await pipeline("shoal volume export vol - | head -c 120 > /dev/null"));
    expectQuietBrokenPipe(await pipeline("shoal volume list --json | true"));
    // The same through a path naming the descriptor, as scripts write it.
    expectQuietBrokenPipe(await pipeline("shoal archive create vol@s1 -o /dev/stdout | head -c 100 > /dev/null"));
    // zstd refusing to overwrite a file closes the pipe: zstd says why, shoal says nothing.
    fs.writeFileSync(path.join(dir, "existing.zst"), "keep");
    const zstd = await pipeline(`shoal archive create vol@s1 | zstd -q -o '${path.join(dir, "existing.zst")}'`);
    expect(zstd.stderr).not.toContain("shoal:");
    expect(zstd.stderr).not.toMatch(/^\s+at /m);
    expect(zstd.exitCode).toBe(141);
    expect(fs.readFileSync(path.join(dir, "existing.zst"), "utf8")).toBe("keep");
  });

  test("a full file system: exit 6, no partial file, and the previous file at that path survives", async () => {
    const small = mountTmpfs("small", "size=8m");
    const target = small ? path.join(small, "nightly.tar") : "/dev/full";
    try {
      if (small) fs.writeFileSync(target, "last night's archive");
      expectOneLine(await shoal(["archive", "create", "vol@s1", "-o", target]), "NO_SPACE", 6, target);
      expectOneLine(await shoal(["volume", "export", "vol", small ? path.join(small, "vol.img") : target]), "NO_SPACE", 6, small ?? target);
      if (small) {
        expect(fs.readdirSync(small)).toEqual(["nightly.tar"]);
        expect(fs.readFileSync(target, "utf8")).toBe("last night's archive");
      }
    } finally {
      if (small) Bun.spawnSync(["umount", small]);
    }
  });

  test("a read-only file system: exit 2 naming the path", async () => {
    const readOnly = mountTmpfs("read-only", "ro,size=1m");
    const target = readOnly ? path.join(readOnly, "vol.img") : "/proc/version/x";
    try {
      expectOneLine(await shoal(["volume", "export", "vol", target]), "BAD_PATH", 2, target);
    } finally {
      if (readOnly) Bun.spawnSync(["umount", readOnly]);
    }
  });

  test("no permission: exit 2 naming the file, which is kept (as nobody, when run as root)", async () => {
    // Outside the cluster's 0700 directory, so nobody reaches the file and meets its mode.
    const shared = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-perm-"));
    fs.chmodSync(shared, 0o777);
    const readOnlyFile = path.join(shared, "read-only.tar");
    fs.writeFileSync(readOnlyFile, "keep");
    fs.chmodSync(readOnlyFile, 0o444);
    const asNobody = process.getuid?.() === 0 ? ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] : [];
    const startMs = Date.now();
    // Refused before any node is asked: no node answers at this address.
    const result = await run([...asNobody, ...shoalCommand(), "archive", "create", "vol@s1", "-o", readOnlyFile, "--node", "127.0.0.1:1"], { timeoutMs: KILL_MS });
    expectOneLine({ ...result, elapsedMs: Date.now() - startMs }, "BAD_PATH", 2, "permission denied");
    expect(fs.readFileSync(readOnlyFile, "utf8")).toBe("keep");
    expect(fs.readdirSync(shared)).toEqual(["read-only.tar"]);
    fs.rmSync(shared, { recursive: true, force: true });
  });

    test("a good archive to a file lands whole under its name, with no temporary file left", async () => {
    const target = path.join(dir, "again.tar");
    const created = await shoal(["archive", "create", "vol@s1", "-o", target]);
    expect(created.exitCode).toBe(0);
    expect(fs.readdirSync(dir).filter((name) => name.includes("partial"))).toEqual([]);
    expect((await shoal(["archive", "verify", "-i", target])).exitCode).toBe(0);
    // -o /dev/stdout into a pipe and into a redirected file: written in place, byte for byte the same.
    const viaPipe = path.join(dir, "via-pipe.tar");
    const viaRedirect = path.join(dir, "via-redirect.tar");
    expect((await pipeline(`shoal archive create vol@s1 -o /dev/stdout | cat > '${viaPipe}'`)).exitCode).toBe(0);
    expect((await pipeline(`shoal archive create vol@s1 -o /dev/stdout > '${viaRedirect}'`)).exitCode).toBe(0);
    for (const copy of [viaPipe, viaRedirect]) expect((await shoal(["archive", "verify", "-i", copy])).exitCode).toBe(0);
    expect(fs.readdirSync(dir).filter((name) => name.includes("partial"))).toEqual([]);
  });
});

describe("failing input", () => {
  test("archive verify/list/restore -i a missing file or a directory, volume import of a missing file: exit 2, one line", async () => {
    expectOneLine(await shoal(["archive", "verify", "-i", "/nonexistent"]), "BAD_PATH", 2, "'/nonexistent'");
    expectOneLine(await shoal(["archive", "verify", "-i", "/tmp"]), "BAD_PATH", 2, "'/tmp': it is a directory");
    expectOneLine(await shoal(["archive", "list", "-i", "/nonexistent"]), "BAD_PATH", 2, "'/nonexistent'");
    expectOneLine(await shoal(["volume", "import", "vol", "/nonexistent"]), "BAD_PATH", 2, "'/nonexistent'");
    expectOneLine(await shoal(["archive", "restore", "fresh", "--create", "-i", "/nonexistent"]), "BAD_PATH", 2, "'/nonexistent'");
    expect(await volumeNames()).not.toHaveProperty("fresh");
  });

  test("data to or from a terminal is refused with exit 2 instead of filling it or waiting on it", async () => {
    // `script` runs the commands on a pseudo-terminal, as an operator at a shell would.
    const commands = ["archive verify", "archive create vol@s1", "volume export vol", "volume import vol"];
    const shoal = shoalCommand().join(" ");
    const onTerminal = await pipeline(`timeout -s KILL ${KILL_MS / 1000} script -qec "${commands.map((command) => `${shoal} ${command}; echo exit=\\$?`).join("; ")}" /dev/null`);
    const lines = onTerminal.stdout.split(/\r?\n/).filter(Boolean);
    expect(lines.filter((line) => line === "exit=2")).toHaveLength(commands.length);
    expect(lines.filter((line) => /is a terminal; give .* \[BAD_ARGUMENT\]$/.test(line))).toHaveLength(commands.length);
    expect(onTerminal.stdout).not.toMatch(/^\s+at /m);
  });

  test("an input larger than the volume is refused before the first write; a bad --record-size before any request", async () => {
    const large = path.join(dir, "large.img");
    fs.writeFileSync(large, new Uint8Array(65 * 1024 * 1024).fill(0x77));
    expectOneLine(await shoal(["volume", "import", "vol", large]), "OUT_OF_RANGE", 2, "nothing was written");
    // Still the snapshot's pattern: not one byte of the refused file went in.
    expect((await run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 64M", cluster.nodes[0]!.nbdUrl("vol")])).exitCode).toBe(0);
    expectOneLine(await shoal(["archive", "create", "vol@s1", "-o", path.join(dir, "r.tar"), "--record-size", "abc", "--node", "127.0.0.1:1"]), "BAD_ARGUMENT", 2, "record size 'abc'");
  });

    test("a closed or empty stdin is a truncated archive: exit 6, one line", async () => {
    expectOneLine(await pipeline("shoal archive verify <&-"), "BAD_ARCHIVE", 6, "truncated");
    expectOneLine(await pipeline("shoal archive restore fresh --create < /dev/null"), "BAD_ARCHIVE", 6, "truncated");
    expect(await volumeNames()).not.toHaveProperty("fresh");
  });

  test("restore --create from a truncated archive removes the volume it made, and the retry works", async () => {
    const failed = await shoal(["archive", "restore", "copy", "--create", "-i", truncated]);
    expectOneLine(failed, "BAD_ARCHIVE", 6, "removed volume 'copy'");
    expect(await volumeNames()).not.toHaveProperty("copy");
    const retried = await shoal(["archive", "restore", "copy", "--create", "-i", archive]);
    expect(retried.exitCode).toBe(0);
    expect((await volumeNames()).copy).toBe("ready");
  });

  test("a failed restore over an existing volume keeps it hidden and says so; --create names the way out; the retry works", async () => {
    expect((await cluster.shoal(["volume", "create", "over", "--size", "64M"])).exitCode).toBe(0);
    expectOneLine(await shoal(["archive", "restore", "over", "-i", truncated]), "BAD_ARCHIVE", 6, "run the restore again");
    expect((await volumeNames()).over).toBe("restoring");
    expectOneLine(await shoal(["archive", "restore", "over", "--create", "-i", archive]), "VOLUME_EXISTS", 4, "without --create");
    expect((await shoal(["archive", "restore", "over", "-i", archive])).exitCode).toBe(0);
    expect((await volumeNames()).over).toBe("ready");
  });

  test("Ctrl-C in the middle of restore --create removes the volume it made", async () => {
    const fifo = path.join(dir, "slow.fifo");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    // Half an archive, then a stream that stays open: the restore is mid-way when interrupted.
    // bash opens the FIFO itself (an open for writing waits for the reader); `exec sleep` keeps
    // it open as the same process, so one kill ends it.
    const feeder = Bun.spawn(["bash", "-c", `exec > '${fifo}'; head -c 30000000 '${archive}'; exec sleep 60`], { stdout: "ignore", stderr: "ignore" });
    const restore = Bun.spawn([...shoalCommand(), "archive", "restore", "interrupted", "--create", "-i", fifo], {
      env: { ...process.env, SHOAL_NODE: cluster.nodes[0]!.meshAddress },
      stdout: "ignore",
      stderr: "pipe",
    });
    try {
      await waitFor("the restore to create its volume", async () => (await volumeNames()).interrupted === "restoring");
      restore.kill("SIGINT");
      const exitCode = await restore.exited;
      const stderr = await new Response(restore.stderr).text();
      expect(stderr).toContain("removed volume 'interrupted'");
      expect(exitCode).toBe(130);
      expect(stderr).not.toMatch(/^\s+at /m);
      expect(await volumeNames()).not.toHaveProperty("interrupted");
    } finally {
      feeder.kill("SIGKILL");
      restore.kill("SIGKILL");
    }
  });
});

describe("interrupted output", () => {
  test("Ctrl-C while writing a file removes the partial file and keeps the previous one", async () => {
    const node = cluster.nodes[1]!;
    const target = path.join(dir, "interrupted.img");
    fs.writeFileSync(target, "previous export");
    // A stopped node never answers: the export has opened its file and waits on the node.
    node.proc!.kill("SIGSTOP");
    const exporter = Bun.spawn([...shoalCommand(), "volume", "export", "vol", target, "--node", node.meshAddress], { stdout: "ignore", stderr: "pipe" });
    try {
      await waitFor("the export to open its partial file", () => fs.readdirSync(dir).some((name) => name.startsWith(".interrupted.img.partial-")));
      exporter.kill("SIGINT");
      expect(await exporter.exited).toBe(130);
      expect(await new Response(exporter.stderr).text()).toBe("");
      expect(fs.readdirSync(dir).filter((name) => name.includes("partial"))).toEqual([]);
      expect(fs.readFileSync(target, "utf8")).toBe("previous export");
    } finally {
      exporter.kill("SIGKILL");
      node.proc!.kill("SIGCONT");
      await cluster.waitConverged();
    }
  });
});

describe("failing source", () => {
  // Last in the file: it kills a member for good.
  test("a member killed mid-archive ends archive create within seconds, one line, no partial file", async () => {
    const victim = cluster.nodes[1]!;
    const target = path.join(dir, "mid-archive.tar");
    const startMs = Date.now();
    const archiver = Bun.spawn([...shoalCommand(), "archive", "create", "vol@s1", "-o", target], {
      env: { ...process.env, SHOAL_NODE: cluster.nodes[0]!.meshAddress },
      stdout: "ignore",
      stderr: "pipe",
    });
    try {
      // Its manifest written: the plan is made and the page reads are under way (64 MiB take
      // about a second here). Stopped at once so the archive waits on the victim's pages, then
      // killed: the kernel closes its connections under the reads in flight.
      await waitFor("the archive to start writing", () => {
        const partial = fs.readdirSync(dir).find((name) => name.startsWith(".mid-archive.tar.partial-"));
        return partial !== undefined && fs.statSync(path.join(dir, partial)).size > 0;
      });
      victim.proc!.kill("SIGSTOP");
      await victim.kill9();
      const exitCode = await archiver.exited;
      const stderr = await new Response(archiver.stderr).text();
      expect(stderr).not.toMatch(/^\s+at /m);
      expect(stderr.trim().split("\n")).toHaveLength(1);
      expect(stderr).toContain("[NODE_DOWN]");
      expect(exitCode).toBe(5);
      expect(Date.now() - startMs).toBeLessThan(QUICK_MS);
      expect(fs.readdirSync(dir).filter((name) => name.startsWith(".mid-archive"))).toEqual([]);
      expect(fs.existsSync(target)).toBe(false);
    } finally {
      archiver.kill("SIGKILL");
    }
  });
});
