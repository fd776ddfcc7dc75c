// The operator's surface on real nodes: /metrics scraped and parsed while qemu-io writes through
// one node to pages of both; config files (--config and $SHOAL_CONFIG) and flags that override
// them; JSON log lines; and `shoal route nodes` with versions, uptimes and heartbeats.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { freePort, run, shoalCommand, TestNode, waitFor, waitGroupUp } from "./_cluster.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { scrape, sumOf, type Sample } from "./_prometheus.ts";

let root: string;
let node1: TestNode;
let node2: TestNode;
let metrics1: string;
let metrics2: string;

const shoal = (args: string[], node = node1) => run([...shoalCommand(), ...args], { env: { SHOAL_NODE: node.meshAddress } });

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-ops-"));
  metrics1 = `127.0.0.1:${await freePort()}`;
  metrics2 = `127.0.0.1:${await freePort()}`;
  node1 = new TestNode("ops1", path.join(root, "ops1"), await freePort(), await freePort());
  node2 = new TestNode("ops2", path.join(root, "ops2"), await freePort(), await freePort(), { SHOAL_CONFIG: path.join(root, "env.toml") });
  // node1: everything from --config, except the NBD address, which the flag overrides.
  const config1 = path.join(root, "node1.toml");
  fs.writeFileSync(config1, `# node1\nmetrics = "${metrics1}"\nlog-format = "json"\nnbd = "127.0.0.1:1"\nmax-clock-skew = "7ms"\n`);
  node1.extraArgs = ["--config", config1];
  // node2: the file comes from $SHOAL_CONFIG, and --log-format on the command line beats its json.
  fs.writeFileSync(path.join(root, "env.toml"), `metrics = "${metrics2}"\nlog-format = "json"\n`);
  // node2 also writes back only past --dirty-limit: the write-back test compares the two.
  node2.extraArgs = ["--log-format", "human", "--writeback-interval", "0"];
  await node1.start();
  await node2.start(node1.meshAddress);
  await waitGroupUp([node1, node2]);
  expect((await shoal(["volume", "create", "m", "--size", "16M", "--page-size", "4M"])).exitCode).toBe(0);
});

afterAll(async () => {
  await Promise.all([node1?.kill9(), node2?.kill9()]);
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

describe("metrics", () => {
  test("/metrics parses, and request, byte and path counters move with qemu-io traffic through one node to pages of both", async () => {
    const before1 = await scrape(metrics1);
    const before2 = await scrape(metrics2);
    const write = await run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 16M", "-c", "flush", "-c", "read -P 0x5a 0 16M", node1.nbdUrl("m")]);
    expect(write.exitCode).toBe(0);
    const after1 = await scrape(metrics1);
    const after2 = await scrape(metrics2);
    const grew = (before: Sample[], after: Sample[], name: string, labels: Record<string, string> = {}) => sumOf(after, name, labels) - sumOf(before, name, labels);
    const half = 8 * 1024 * 1024; // two of the four pages are on each node
    expect(grew(before1, after1, "shoal_nbd_bytes_total", { op: "write" })).toBe(2 * half);
    expect(grew(before1, after1, "shoal_nbd_bytes_total", { op: "read" })).toBe(2 * half);
    expect(grew(before1, after1, "shoal_nbd_requests_total", { op: "flush" })).toBeGreaterThanOrEqual(1);
    expect(grew(before1, after1, "shoal_page_bytes_total", { op: "write", path: "local" })).toBe(half);
    expect(grew(before1, after1, "shoal_page_bytes_total", { op: "write", path: "forwarded" })).toBe(half);
    expect(grew(before1, after1, "shoal_page_bytes_total", { op: "read", path: "forwarded" })).toBe(half);
    expect(grew(before1, after1, "shoal_page_requests_total", { op: "write", path: "forwarded" })).toBeGreaterThan(0);
    expect(grew(before2, after2, "shoal_page_bytes_total", { op: "write", path: "peer" })).toBe(half);
    expect(grew(before2, after2, "shoal_nbd_bytes_total", { op: "write" })).toBe(0);
    // Latency: every completed request is in the histogram, and +Inf holds them all.
    const writes = grew(before1, after1, "shoal_nbd_requests_total", { op: "write" });
    expect(grew(before1, after1, "shoal_nbd_request_duration_seconds_count", { op: "write" })).toBe(writes);
    expect(grew(before1, after1, "shoal_nbd_request_duration_seconds_bucket", { op: "write", le: "+Inf" })).toBe(writes);
    expect(sumOf(after1, "shoal_nbd_requests_in_flight")).toBe(0);
    expect(sumOf(after1, "shoal_volume_pages", { volume: "m" })).toBe(2);
    expect(sumOf(after1, "shoal_volume_bytes", { volume: "m" })).toBeGreaterThanOrEqual(half);
    expect(sumOf(after1, "shoal_peer_up", { peer: "ops2" })).toBe(1);
    expect(sumOf(after1, "shoal_peers", { state: "up" })).toBe(1);
    expect(sumOf(after1, "shoal_build_info", { node: "ops1" })).toBe(1);
    expect(sumOf(after1, "process_resident_memory_bytes")).toBeGreaterThan(0);
    for (const kind of ["heap_used", "heap_total", "external", "array_buffers"]) {
      const bytes = sumOf(after1, "shoal_process_memory_bytes", { kind });
      expect(bytes).toBeGreaterThan(0);
      expect(bytes).toBeLessThan(sumOf(after1, "process_resident_memory_bytes"));
    }
  });

  test("unsynced writes are written back every --writeback-interval without a FLUSH; with 0 they wait (shoal_store_dirty_bytes)", async () => {
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node1.nbdPort, exportName: "m" });
    try {
      const data = new Uint8Array(64 * 1024).fill(0x3c);
      await client.write(0, data); // page 0: node1 (default interval)
      await client.write(4 * 1024 * 1024, data); // page 1: node2 (--writeback-interval 0)
      await waitFor("node1 to write back without a FLUSH", async () => sumOf(await scrape(metrics1), "shoal_store_dirty_bytes") === 0, 3000);
      await Bun.sleep(1000);
      expect(sumOf(await scrape(metrics2), "shoal_store_dirty_bytes")).toBe(data.byteLength);
      await client.flush();
      expect(sumOf(await scrape(metrics2), "shoal_store_dirty_bytes")).toBe(0);
    } finally {
      await client.close();
    }
  });

  test("a snapshot records its phases on the coordinator, its hold and its cut and commit steps on every participant", async () => {
    const created = await shoal(["snap", "create", "m", "--name", "metrics"]);
    expect(created.exitCode).toBe(0);
    const samples1 = await scrape(metrics1);
    const samples2 = await scrape(metrics2);
    expect(sumOf(samples1, "shoal_snapshots_total", { result: "ok" })).toBe(1);
    for (const phase of ["prepare", "take", "taken", "decide", "ack", "total"]) expect(sumOf(samples1, "shoal_snapshot_phase_seconds_count", { phase })).toBe(1);
    expect(sumOf(samples2, "shoal_snapshot_phase_seconds_count", { phase: "total" })).toBe(0); // node2 did not coordinate
    // The take is its three parts, timed from the same instants.
    const part = (phase: string) => sumOf(samples1, "shoal_snapshot_phase_seconds_sum", { phase });
    expect(Math.abs(part("taken") + part("decide") + part("ack") - part("take"))).toBeLessThan(0.001);
    for (const samples of [samples1, samples2]) {
      for (const step of ["cut_store", "cut", "commit"]) expect(sumOf(samples, "shoal_snapshot_participant_seconds_count", { step })).toBe(1);
    }
    expect(sumOf(samples1, "shoal_snapshot_hold_seconds_count")).toBe(1);
    expect(sumOf(samples2, "shoal_snapshot_hold_seconds_count")).toBe(1);
    expect(sumOf(samples1, "shoal_snapshot_commit_wait_seconds_count")).toBe(0); // hold mode has none
  });

  test("a timestamp-mode snapshot records each participant's commit wait", async () => {
    const created = await shoal(["snap", "create", "m", "--name", "metrics-ts", "--mode", "timestamp"]);
    expect(created.exitCode).toBe(0);
    for (const metrics of [metrics1, metrics2]) {
      // The wait ends with the last cut heard (or at the latest T + 2 x skew), which may follow the reply.
      await waitFor("the commit wait to be recorded", async () => sumOf(await scrape(metrics), "shoal_snapshot_commit_wait_seconds_count") === 1);
      const samples = await scrape(metrics);
      expect(sumOf(samples, "shoal_snapshot_commit_wait_seconds_sum")).toBeLessThan(1);
    }
  });

  test("other paths are 404", async () => {
    expect((await fetch(`http://${metrics1}/`)).status).toBe(404);
  });
});

describe("config file and logs", () => {
  test("values from --config take effect and the --nbd flag overrides the file's", async () => {
    const info = await shoal(["route", "nodes", "--json"]);
    const nodes = JSON.parse(info.stdout).nodes as { id: string; nbdAddress: string }[];
    expect(nodes.find((n) => n.id === "ops1")!.nbdAddress).toBe(`127.0.0.1:${node1.nbdPort}`);
    expect(node1.stderrLog).toContain(`metrics http://${metrics1}/metrics`);
  });

  test("--log-format json (from the file) writes one parseable JSON object per line", () => {
    const lines = node1.stderrLog.split("\n").filter((line) => line.length > 0);
    expect(lines.length).toBeGreaterThan(2);
    for (const line of lines) {
      const entry = JSON.parse(line) as { time: string; level: string; msg: string };
      expect(typeof entry.msg).toBe("string");
      expect(Number.isNaN(Date.parse(entry.time))).toBe(false);
      expect(["info", "warn", "error", "debug", "log", "success", "fail", "ready", "start"]).toContain(entry.level);
    }
  });

  test("JSON log lines carry their subject as fields: the node on every line, the peer, the volume", () => {
    const entries = node1.stderrLog
      .split("\n")
      .filter((line) => line.length > 0)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    for (const entry of entries) expect(entry.node).toBe("ops1");
    expect(entries.some((entry) => entry.peer === "ops2" && String(entry.msg).includes("ops2"))).toBe(true);
    // qemu-io in the metrics test opened export 'm' through node1.
    expect(entries.some((entry) => entry.volume === "m" && typeof entry.client === "string")).toBe(true);
  });

  test("human log lines start with a UTC timestamp and the level, without colour on a pipe", () => {
    const lines = node2.stderrLog.split("\n").filter((line) => line.length > 0);
    expect(lines.length).toBeGreaterThan(1);
    for (const line of lines) expect(line).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO |WARN |ERROR) \S/);
  });

  test("$SHOAL_CONFIG is read, and a flag beats it (human logs despite log-format = json)", () => {
    expect(node2.stderrLog).toContain(`metrics http://${metrics2}/metrics`);
    expect(node2.stderrLog.split("\n").some((line) => line.startsWith("{"))).toBe(false);
  });

  test("an unknown key, a wrong type or bad TOML is refused with exit code 2 and names the problem", async () => {
    const cases: [string, RegExp][] = [
      ['listen = "127.0.0.1:0"\nmetrix = "127.0.0.1:1"\n', /unknown key 'metrix'/],
      ["listen = 7400\nlog-format = true\n", /'log-format' must be a string/],
      ['listen = "127.0.0.1:0\n', /not valid TOML/],
      ['log-format = "xml"\n', /not a log format/],
    ];
    for (const [text, message] of cases) {
      const file = path.join(root, "bad.toml");
      fs.writeFileSync(file, text);
      const result = await run([...shoalCommand(), "node", "--config", file, "--data", path.join(root, "never")], { timeoutMs: 20_000 });
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toMatch(message);
    }
  });
});

describe("health", () => {
  test("route nodes shows each member's version, uptime and last heartbeat", async () => {
    const json = await shoal(["route", "nodes", "--json"]);
    const nodes = JSON.parse(json.stdout).nodes as { id: string; version: string; uptimeMs: number; heartbeatAgeMs: number | null; self: boolean }[];
    expect(nodes.map((n) => n.id)).toEqual(["ops1", "ops2"]);
    for (const node of nodes) {
      expect(node.version).toMatch(/^\d+\.\d+\.\d+/);
      expect(node.uptimeMs).toBeGreaterThan(0);
    }
    const peer = nodes.find((n) => !n.self)!;
    await waitFor("a recent heartbeat", async () => {
      const fresh = JSON.parse((await shoal(["route", "nodes", "--json"])).stdout).nodes.find((n: { self: boolean }) => !n.self);
      return fresh.heartbeatAgeMs !== null && fresh.heartbeatAgeMs < 3000;
    });
    expect(peer.heartbeatAgeMs === null || peer.heartbeatAgeMs >= 0).toBe(true);
    const human = await shoal(["route", "nodes"], node2);
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toMatch(/VERSION\s+UPTIME\s+HEARTBEAT/);
    expect(human.stdout).toMatch(/ops1 .* ago/);
    expect(human.stdout).toMatch(/ops2 .*self/);
  });
});

describe("allocator tuning", () => {
  const environOf = (node: TestNode) => fs.readFileSync(`/proc/${node.proc!.pid}/environ`, "utf8").split("\0");

  test("a node re-executes itself (same pid) with mimalloc's purging off, and keeps an operator's own value", async () => {
    // The pid we spawned is the node serving: execve replaced the image in place.
    expect(environOf(node1)).toContain("MIMALLOC_PURGE_DELAY=-1");
    const own = new TestNode("ops3", path.join(root, "ops3"), await freePort(), await freePort(), { MIMALLOC_PURGE_DELAY: "10000" });
    try {
      await own.start();
      expect(environOf(own)).toContain("MIMALLOC_PURGE_DELAY=10000");
      expect(environOf(own)).not.toContain("MIMALLOC_PURGE_DELAY=-1");
    } finally {
      await own.kill9();
    }
  });

  test("a bulk job of the CLI re-executes itself (same pid) with purging off, and keeps an operator's own value", async () => {
    // Exported into a FIFO, the job blocks opening it (after the re-exec) until the test reads it.
    const exportInto = async (name: string, env: Record<string, string>) => {
      const fifo = path.join(root, name);
      expect((await run(["mkfifo", fifo])).exitCode).toBe(0);
      const { MIMALLOC_PURGE_DELAY: _inherited, ...inherited } = process.env;
      const job = Bun.spawn([...shoalCommand(), "volume", "export", "m", fifo, "--quiet"], { env: { ...inherited, SHOAL_NODE: node1.meshAddress, ...env }, stdout: "ignore", stderr: "pipe" });
      const environ = await waitFor("the job's re-executed environment", () => {
        const text = fs.readFileSync(`/proc/${job.pid}/environ`, "utf8");
        return text.includes("MIMALLOC_PURGE_DELAY=") ? text.split("\0") : undefined;
      });
      const drained = await run(["bash", "-c", `cat ${fifo} | wc -c`]);
      expect(await job.exited).toBe(0);
      expect(Number(drained.stdout.trim())).toBe(16 * 1024 * 1024);
      return environ;
    };
    expect(await exportInto("purge-off.fifo", {})).toContain("MIMALLOC_PURGE_DELAY=-1");
    const own = await exportInto("purge-own.fifo", { MIMALLOC_PURGE_DELAY: "5" });
    expect(own).toContain("MIMALLOC_PURGE_DELAY=5");
    expect(own).not.toContain("MIMALLOC_PURGE_DELAY=-1");
  });
});
