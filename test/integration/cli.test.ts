// The CLI as scripts and cron jobs use it, on a real two-node group: kebab-case --help that names
// the program, colour only on a terminal, refused stray arguments, --since forms, JSON errors,
// `snap list` for scripts, one meaning of WRITTEN/USED everywhere (and in /metrics), and
// examples/nightly-archive.sh with nothing but the shoal binary on PATH.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { freePort, run, shoalCommand, TestCluster, type RunResult } from "./_cluster.ts";
import { scrape, sumOf } from "./_prometheus.ts";

const MiB = 1024 * 1024;
const ANSI = /\u001b\[/;
let cluster: TestCluster;
const metrics: string[] = [];

const shoal = (args: string[], env: Record<string, string> = {}): Promise<RunResult> =>
  run([...shoalCommand(), ...args], { env: { SHOAL_NODE: cluster.nodes[0]!.meshAddress, ...env } });

/** Runs `shoal` on a pseudo-terminal (util-linux `script`), as a person at a terminal would. */
const onTerminal = (args: string[], env: Record<string, string> = {}): Promise<RunResult> =>
  run(["script", "-qec", [...shoalCommand(), ...args].map((word) => `'${word}'`).join(" "), "/dev/null"], { env: { TERM: "xterm", ...env } });

const qemuIo = async (volume: string, ...commands: string[]) => {
  const result = await run(["qemu-io", "-f", "raw", ...commands.flatMap((command) => ["-c", command]), cluster.nodes[0]!.nbdUrl(volume)]);
  expect(result.exitCode).toBe(0);
};

beforeAll(async () => {
  for (let index = 0; index < 2; index++) metrics.push(`127.0.0.1:${await freePort()}`);
  cluster = await TestCluster.start(2, {}, (index) => ["--metrics", metrics[index]!]);
  expect((await shoal(["volume", "create", "v", "--size", "16M", "--page-size", "4M"])).exitCode).toBe(0);
});

afterAll(async () => {
  await cluster?.stop();
});

describe("--help", () => {
  test("names the whole command and shows every flag kebab-case, as the README writes them", async () => {
    const cases: [string[], string[]][] = [
      [["volume", "create"], ["Usage: shoal volume create NAME --size SIZE", "--page-size SIZE"]],
      [["route", "move"], ["Usage: shoal route move VOLUME", "--dry-run", "--[no-]wait"]],
      [["snap", "create"], ["Usage: shoal snap create VOLUMES --name NAME", "--hold-timeout DURATION"]],
      [["archive", "create"], ["Usage: shoal archive create SNAPSHOT", "--record-size N", "-o, --output FILE"]],
      [["node"], ["Usage: shoal node", "--max-clock-skew DURATION", "--log-format FORMAT", "--tls-required"]],
      [["snap", "list"], ["Usage: shoal snap list [VOLUME]", "--latest", "--prefix PREFIX"]],
      [["snap"], ["Usage: shoal snap COMMAND", "rollback"]],
      [[], ["Usage: shoal COMMAND", "--version"]],
    ];
    for (const [words, expected] of cases) {
      const help = await shoal([...words, "--help"]);
      expect(help.exitCode).toBe(0);
      for (const text of expected) expect(help.stdout).toContain(text);
      expect(help.stdout).not.toMatch(/--[a-z]+[A-Z]/);
      expect(help.stdout).not.toMatch(ANSI);
    }
  });

  test("a command group without its command prints its usage on stderr and exits 2", async () => {
    const result = await shoal(["volume"]);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain("Usage: shoal volume COMMAND");
    expect(result.stdout).toBe("");
  });
});

describe("colour", () => {
  test("only on a terminal, and not there either under NO_COLOR", async () => {
    const terminal = await onTerminal(["volume", "create", "--help"], { NO_COLOR: "" });
    expect(terminal.exitCode).toBe(0);
    expect(terminal.stdout).toMatch(ANSI);
    const noColor = await onTerminal(["volume", "create", "--help"], { NO_COLOR: "1" });
    expect(noColor.stdout).toContain("Usage: shoal volume create");
    expect(noColor.stdout).not.toMatch(ANSI);
  });

  test("errors sent to a pipe carry none, even from a terminal session", async () => {
    const piped = await shoal(["voume"]);
    expect(piped.exitCode).toBe(2);
    expect(piped.stderr).toContain("Unknown command voume");
    expect(piped.stderr).not.toMatch(ANSI);
    const errFile = path.join(cluster.root, "err.txt");
    const terminal = await run(["script", "-qec", `${shoalCommand().join(" ")} voume 2>${errFile}`, "/dev/null"], { env: { TERM: "xterm" } });
    expect(terminal.exitCode).toBe(2);
    expect(fs.readFileSync(errFile, "utf8")).toContain("Unknown command voume");
    expect(fs.readFileSync(errFile, "utf8")).not.toMatch(ANSI);
  });
});

describe("arguments", () => {
  test("an extra positional argument is refused with exit 2, before any request", async () => {
    for (const args of [["volume", "info", "v", "extra"], ["volume", "import", "v", "-", "extra"], ["archive", "verify", "x"], ["route", "nodes", "n1"]]) {
      const result = await shoal(args);
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toContain(`unexpected argument`);
      expect(result.stderr).toContain(`see 'shoal ${args[0]} ${args[1]} --help'`);
      expect(result.stderr.trim().split("\n")).toHaveLength(1);
    }
  });

  test("snap create still takes several volumes", async () => {
    expect((await shoal(["volume", "create", "w", "--size", "8M", "--page-size", "4M"])).exitCode).toBe(0);
    const result = await shoal(["snap", "create", "v", "w", "--name", "pair", "--json"]);
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(result.stdout).volumes.sort()).toEqual(["v", "w"]);
    expect((await shoal(["snap", "delete", "w@pair"])).exitCode).toBe(0);
    expect((await shoal(["snap", "delete", "v@pair"])).exitCode).toBe(0);
  });
});

describe("--json errors", () => {
  const parseError = (result: RunResult) => {
    const lines = result.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    return JSON.parse(lines[0]!) as { code: string; message: string; exitCode: number };
  };

  test("one JSON object on stderr with the code, the message and the exit code", async () => {
    const missing = await shoal(["volume", "info", "nosuch", "--json"]);
    expect(missing.exitCode).toBe(3);
    expect(missing.stdout).toBe("");
    expect(parseError(missing)).toMatchObject({ code: "UNKNOWN_VOLUME", exitCode: 3 });
    expect(parseError(missing).message).toContain("nosuch");

    const usage = await shoal(["volume", "create", "x", "--json"]);
    expect(usage.exitCode).toBe(2);
    expect(parseError(usage)).toMatchObject({ code: "BAD_ARGUMENT", message: "Missing required argument: --size" });

    const down = await shoal(["volume", "list", "--json", "--node", `127.0.0.1:${await freePort()}`]);
    expect(down.exitCode).toBe(5);
    expect(parseError(down).code).toBe("NODE_DOWN");

    const plain = await shoal(["volume", "info", "nosuch"]);
    expect(plain.stderr).toMatch(/^shoal: .*nosuch.*\[UNKNOWN_VOLUME\]\n$/);
  });
});

describe("progress of long jobs", () => {
  const PROGRESS = (label: string) => new RegExp(`\\r${label}: \\S+ of 16M at \\S+/s`);

  test("import, export, archive create and restore show bytes, rate and ETA on a terminal; --quiet and a pipe show none", async () => {
    const dir = fs.mkdtempSync(path.join(cluster.root, "progress-"));
    const input = path.join(dir, "in.img");
    fs.writeFileSync(input, new Uint8Array(16 * MiB).fill(7));
    const env = { SHOAL_NODE: cluster.nodes[0]!.meshAddress };
    expect((await shoal(["volume", "create", "p", "--size", "16M", "--page-size", "4M"])).exitCode).toBe(0);
    const jobs: [string, string[]][] = [
      ["import p", ["volume", "import", "p", input]],
      ["export p", ["volume", "export", "p", path.join(dir, "out.img")]],
    ];
    for (const [label, args] of jobs) {
      const shown = await onTerminal(args, env);
      expect(shown.exitCode).toBe(0);
      expect(shown.stdout).toMatch(PROGRESS(label));
      const quiet = await onTerminal([...args, "--quiet"], env);
      expect(quiet.exitCode).toBe(0);
      expect(quiet.stdout).not.toContain(`${label}:`);
      const piped = await shoal(args);
      expect(piped.exitCode).toBe(0);
      expect(piped.stderr).not.toContain(`${label}:`);
    }
    expect(fs.readFileSync(path.join(dir, "out.img")).equals(fs.readFileSync(input))).toBe(true);

    expect((await shoal(["snap", "create", "p", "--name", "n"])).exitCode).toBe(0);
    const archive = path.join(dir, "p.tar");
    const created = await onTerminal(["archive", "create", "p@n", "-o", archive], env);
    expect(created.exitCode).toBe(0);
    expect(created.stdout).toMatch(PROGRESS("archive p@n"));
    const restored = await onTerminal(["archive", "restore", "p2", "--create", "-i", archive], env);
    expect(restored.exitCode).toBe(0);
    expect(restored.stdout).toMatch(PROGRESS("restore p2"));
    const quietRestore = await onTerminal(["archive", "restore", "p3", "--create", "-i", archive, "-q"], env);
    expect(quietRestore.exitCode).toBe(0);
    expect(quietRestore.stdout).not.toContain("restore p3:");
    expect(quietRestore.stdout).toContain("restored p3");
  });
});

describe("snapshots for scripts", () => {
  test("snap list --json has ISO times beside the epoch ms; --latest, --prefix and --names serve cron jobs", async () => {
    expect((await shoal(["volume", "create", "s", "--size", "8M", "--page-size", "4M"])).exitCode).toBe(0);
    const none = await shoal(["snap", "list", "s", "--latest"]);
    expect(none.exitCode).toBe(3);
    expect(none.stderr).toContain("no snapshots");
    for (const name of ["daily-1", "daily-2", "other"]) expect((await shoal(["snap", "create", "s", "--name", name])).exitCode).toBe(0);

    const listed = JSON.parse((await shoal(["snap", "list", "s", "--json"])).stdout).snapshots as { name: string; cutAtMs: number; cutAt: string; createdAtMs: number; createdAt: string }[];
    expect(listed.map((s) => s.name)).toEqual(["daily-1", "daily-2", "other"]);
    for (const snapshot of listed) {
      expect(snapshot.cutAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(Date.parse(snapshot.cutAt)).toBe(snapshot.cutAtMs);
      expect(Date.parse(snapshot.createdAt)).toBe(snapshot.createdAtMs);
    }
    const latest = await shoal(["snap", "list", "s", "--latest"]);
    expect([latest.exitCode, latest.stdout]).toEqual([0, "s@other\n"]);
    const latestDaily = await shoal(["snap", "list", "s", "--prefix", "daily-", "--latest", "--json"]);
    expect(JSON.parse(latestDaily.stdout)).toMatchObject({ name: "daily-2", volume: "s" });
    expect((await shoal(["snap", "list", "s", "--prefix", "daily-", "--names"])).stdout).toBe("s@daily-1\ns@daily-2\n");
    expect((await shoal(["snap", "list", "s", "--prefix", "weekly-", "--latest"])).exitCode).toBe(3);
  });

  test("--since takes NAME or VOL@NAME; the snapshot itself or another volume's is refused with exit 2", async () => {
    await qemuIo("v", "write -P 0x11 0 16M");
    expect((await shoal(["snap", "create", "v", "--name", "base"])).exitCode).toBe(0);
    await qemuIo("v", "write -P 0x22 4M 4M");
    expect((await shoal(["snap", "create", "v", "--name", "next"])).exitCode).toBe(0);
    for (const since of ["base", "v@base"]) {
      const file = path.join(cluster.root, `since-${since}.tar`);
      const created = await shoal(["archive", "create", "v@next", "--since", since, "-o", file]);
      expect(created.exitCode).toBe(0);
      const manifest = JSON.parse((await shoal(["archive", "list", "-i", file, "--json"])).stdout);
      expect(manifest.base.name).toBe("base");
      expect(manifest.candidatePages).toBe(1);
    }
    for (const [since, message] of [["next", "is the snapshot being archived"], ["v@next", "is the snapshot being archived"], ["s@daily-1", "needs an older snapshot of 'v'"]] as const) {
      const file = path.join(cluster.root, "refused.tar");
      const refused = await shoal(["archive", "create", "v@next", "--since", since, "-o", file]);
      expect(refused.exitCode).toBe(2);
      expect(refused.stderr).toContain(message);
      expect(fs.existsSync(file)).toBe(false);
    }
  });
});

describe("WRITTEN and USED", () => {
  interface InfoNode {
    node: string;
    pagesWritten: number;
    bytesUsed: number;
  }
  const volumeInfo = async (name: string) => JSON.parse((await shoal(["volume", "info", name, "--json"])).stdout).nodes as InfoNode[];

  /** volume info, route show, route nodes and /metrics, compared node by node for every volume. */
  async function expectOneMeaning(volume: string): Promise<{ written: number; used: number }> {
    const info = await volumeInfo(volume);
    const shown = JSON.parse((await shoal(["route", "show", volume, "--json"])).stdout).nodes as { node: string; bytesUsed: number }[];
    for (const row of shown) expect(row.bytesUsed).toBe(info.find((n) => n.node === row.node)?.bytesUsed ?? 0);
    const volumes = (JSON.parse((await shoal(["volume", "list", "--json"])).stdout).volumes as { name: string }[]).map((v) => v.name);
    const everyInfo = await Promise.all(volumes.map(volumeInfo));
    const members = JSON.parse((await shoal(["route", "nodes", "--json"])).stdout).nodes as { id: string; pagesWritten: number; bytesUsed: number }[];
    for (const member of members) {
      const rows = everyInfo.flat().filter((row) => row.node === member.id);
      expect(member.bytesUsed).toBe(rows.reduce((sum, row) => sum + row.bytesUsed, 0));
      expect(member.pagesWritten).toBe(rows.reduce((sum, row) => sum + row.pagesWritten, 0));
      const samples = await scrape(metrics[cluster.nodes.findIndex((node) => node.id === member.id)]!);
      const mine = info.find((row) => row.node === member.id);
      expect(sumOf(samples, "shoal_volume_pages", { volume })).toBe(mine?.pagesWritten ?? 0);
      expect(sumOf(samples, "shoal_volume_bytes", { volume })).toBe(mine?.bytesUsed ?? 0);
    }
    return { written: info.reduce((sum, row) => sum + row.pagesWritten, 0), used: info.reduce((sum, row) => sum + row.bytesUsed, 0) };
  }

  test("mean the same in volume info, route show, route nodes and the shoal_volume_* metrics, with known pages written", async () => {
    expect((await shoal(["volume", "create", "u", "--size", "16M", "--page-size", "4M"])).exitCode).toBe(0);
    expect(await expectOneMeaning("u")).toEqual({ written: 0, used: 0 });
    await qemuIo("u", "write -P 0x33 0 8M", "flush");
    expect(await expectOneMeaning("u")).toEqual({ written: 2, used: 8 * MiB });
    // After a snapshot the old pages stay (the snapshot's), and an overwritten page is held twice.
    expect((await shoal(["snap", "create", "u", "--name", "before"])).exitCode).toBe(0);
    await qemuIo("u", "write -P 0x44 0 4M", "flush");
    expect(await expectOneMeaning("u")).toEqual({ written: 1, used: 12 * MiB });
    const human = (await shoal(["volume", "info", "u"])).stdout;
    expect(human).toContain("WRITTEN");
    expect(human).toContain("USED");
  });
});

describe("examples/nightly-archive.sh", () => {
  const script = path.resolve(import.meta.dir, "../../examples/nightly-archive.sh");

  /** A PATH with the shoal binary and the system's tools only: no bun. */
  function shoalOnlyPath(): string {
    const bin = path.join(cluster.root, "bin");
    fs.mkdirSync(bin, { recursive: true });
    const command = shoalCommand();
    if (command.length === 1) fs.copyFileSync(command[0]!, path.join(bin, "shoal"));
    else fs.writeFileSync(path.join(bin, "shoal"), `#!/bin/sh\nexec ${command.map((word) => `'${word}'`).join(" ")} "$@"\n`);
    fs.chmodSync(path.join(bin, "shoal"), 0o755);
    return `${bin}:/usr/bin:/bin`;
  }

  const nightly = (volume: string, dir: string, env: Record<string, string> = {}) =>
    run(["/bin/bash", script, volume, dir], { env: { PATH: shoalOnlyPath(), SHOAL_NODE: cluster.nodes[0]!.meshAddress, SHOAL_TLS: "", FULL_DAY: "0", ...env } });

  test("the first night writes a full archive, later nights an incremental, and old snapshots rotate out", async () => {
    if (shoalCommand().length !== 1) return; // needs the compiled binary (npm test builds it)
    const today = `nightly-${new Date().toISOString().slice(0, 10).replace(/-/g, "")}`;
    expect((await run(["/bin/bash", "-c", "command -v bun || true"], { env: { PATH: shoalOnlyPath() } })).stdout).toBe("");

    expect((await shoal(["volume", "create", "n1", "--size", "8M", "--page-size", "4M"])).exitCode).toBe(0);
    const first = await nightly("n1", path.join(cluster.root, "backup-n1"));
    if (first.exitCode !== 0) console.error(first.stdout, first.stderr);
    expect(first.exitCode).toBe(0);
    expect(first.stderr).toContain("every checksum good");
    expect(fs.existsSync(path.join(cluster.root, "backup-n1", `${today}.full.tar`))).toBe(true);

    expect((await shoal(["volume", "create", "n2", "--size", "8M", "--page-size", "4M"])).exitCode).toBe(0);
    for (const name of ["nightly-20000101", "nightly-20000102"]) expect((await shoal(["snap", "create", "n2", "--name", name])).exitCode).toBe(0);
    const later = await nightly("n2", path.join(cluster.root, "backup-n2"), { KEEP: "2" });
    expect(later.exitCode).toBe(0);
    const archive = path.join(cluster.root, "backup-n2", `${today}.incr.tar`);
    expect(JSON.parse((await shoal(["archive", "list", "-i", archive, "--json"])).stdout).base.name).toBe("nightly-20000102");
    expect((await shoal(["snap", "list", "n2", "--names"])).stdout).toBe(`n2@nightly-20000102\nn2@${today}\n`);
  });
});
