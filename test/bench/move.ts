// The page-move benchmark: how fast `shoal route move` carries page data between two real nodes,
// against raw loopback TCP between two Bun processes measured in the same run, and what a
// rebalance onto a new node costs the clients' 4 KiB writes. Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/move.ts [--size 1G] [--duration 5] [--rate 300] [--inflight 32] [--json]
//                          [--bin PATH] [--timeout-minutes 10] [--rounds 2] [--throughput-only]
//
// 1. Throughput: a two-node group; a volume of --size with 4 MiB pages, all on node1 (`volume
//    create --nodes node1`), written in full with random (incompressible) 1 MiB writes through
//    our NBD client, flushed, then `sync`. `route move VOL --pages 0-N --to node2 --json` (asked
//    of node1, the source) moves every page; MB/s = bytesMoved / (finishedAtMs - startedAtMs) as
//    the move job reports it, and again over the CLI's wall time (process start and its 200 ms
//    polling included). The volume is then read back through node2 and compared with what was
//    written (a fast move of wrong data means nothing). Anchors, the same byte count, same run:
//    test/bench/_tcp-baseline.ts sends it from one Bun process to another over loopback TCP in
//    1 MiB writes with backpressure, once into memory and once into a file fsynced at the end.
//    Target: move >= 0.7x the raw TCP anchor, and >= 0.8x TCP into a file + fsync. With --rounds N
//    the pages go back and forth N times, each move followed by the file anchor (interleaved).
// 2. Latency: a three-node group and a volume of --size striped over it, written in full and
//    synced; a fourth node joins. 4 KiB random writes at --rate per second from each of three NBD
//    clients (one per original node; open loop, so a stall delays the writes that fell due
//    rather than hiding them; at most --inflight in flight each, a write due beyond that is
//    skipped and counted) run for a 1 s warm-up, --duration s of steady state ("before"), then
//    during `route rebalance VOL` (asked of node4), then 2 s after it. Latency is
//    performance.now() from issue to reply in this process, whose own event-loop lag is reported.
//    Target: write p99 during the rebalance within 10x of p99 before it.
//
// With --json the tables go to stderr and stdout carries one JSON document.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";
import { adminRequest } from "../../cmd/_cli.ts";
import { parseSize } from "../../core/geometry.ts";
import type { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { bounded, buildShoal, loadAverage, printReport, progress, runBench, sourceRevision, stats, syncDisks, table, type LatencyStats } from "./_bench.ts";
import { connect, fillRandom, PacedWriteLoad } from "./_write-load.ts";
import { freePort, run, shoalCommand, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE_BYTES = 4 * MiB;
const IO_BYTES = 1 * MiB;
const IO_WORKERS = 8;
const WARMUP_MS = 1000;
const AFTER_MS = 2000;
const NODE_START_TIMEOUT_MS = 20_000;
const ADMIN_TIMEOUT_MS = 30_000;
const MOVE_TIMEOUT_MS = 600_000;
const FILL_TIMEOUT_MS = 600_000;
const BASELINE_TIMEOUT_MS = 300_000;

const USAGE = `usage: bun test/bench/move.ts [--size 1G] [--duration 5] [--rate 300] [--inflight 32] [--json] [--bin PATH] [--timeout-minutes 10] [--rounds 2] [--throughput-only]
  --rounds     moves (back and forth between the two nodes), each followed by the TCP-into-a-file anchor
  --throughput-only  skip measure 2 (latency during a rebalance)
  --size       volume size for both measures (a multiple of 4 MiB); the move carries all of it
  --duration   seconds of steady write load measured before the rebalance
  --rate       4 KiB writes per second per client (three clients)
  --inflight   writes in flight per client at most (a write due beyond that is skipped and counted)
  --json       tables on stderr, one JSON document on stdout
  --bin        a built shoal binary (default: build the current source into the temp dir)`;

const TARGETS = { moveVsTcp: 0.7, moveVsTcpFile: 0.8, p99DuringVsBefore: 10 };

interface Options {
  sizeBytes: number;
  durationMs: number;
  ratePerClient: number;
  inflightPerClient: number;
  json: boolean;
  bin?: string;
  timeoutMs: number;
  rounds: number;
  throughputOnly: boolean;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      size: { type: "string", default: "1G" },
      duration: { type: "string", default: "5" },
      rate: { type: "string", default: "300" },
      inflight: { type: "string", default: "32" },
      json: { type: "boolean", default: false },
      bin: { type: "string" },
      "timeout-minutes": { type: "string", default: "10" },
      rounds: { type: "string", default: "2" },
      "throughput-only": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const integer = (name: string, text: string, min: number, max: number): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} ${text}: give ${min}..${max}`);
    return value;
  };
  const sizeBytes = parseSize(values.size!);
  // Four pages at least, so the rebalance onto a fourth node has one to move.
  if (sizeBytes < 4 * PAGE_BYTES || sizeBytes % PAGE_BYTES !== 0) throw new Error(`--size ${values.size}: give a multiple of 4 MiB, at least 16 MiB`);
  return {
    sizeBytes,
    durationMs: integer("duration", values.duration!, 1, 600) * 1000,
    ratePerClient: integer("rate", values.rate!, 1, 100_000),
    inflightPerClient: integer("inflight", values.inflight!, 1, 64),
    json: values.json!,
    bin: values.bin,
    timeoutMs: integer("timeout-minutes", values["timeout-minutes"]!, 1, 600) * 60_000,
    rounds: integer("rounds", values.rounds!, 1, 9),
    throughputOnly: values["throughput-only"]!,
  };
}

// ---- processes: every node and anchor process is registered here and killed on any exit

class Resources {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-move-bench-"));
  readonly nodes: TestNode[] = [];
  readonly helpers = new Set<Subprocess>();
  private cleaned = false;

  /** Kills the given nodes (the data is scratch) and removes their data dirs. */
  async stopNodes(nodes: TestNode[]): Promise<void> {
    await Promise.all(nodes.map((node) => node.kill9()));
    for (const node of nodes) fs.rmSync(node.dataDir, { recursive: true, force: true });
  }

  /** Kills everything this run started and removes the temp dir. Idempotent. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    for (const proc of this.helpers) if (proc.exitCode === null) proc.kill("SIGKILL");
    await Promise.all([...this.helpers].map((proc) => proc.exited));
    await this.stopNodes(this.nodes);
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

/** Starts node`index` under `dir` (joining `join` if given) and registers it. */
async function startNode(resources: Resources, dir: string, index: number, join: TestNode | undefined): Promise<TestNode> {
  const node = new TestNode(`node${index}`, path.join(dir, `node${index}`), await freePort(), await freePort());
  resources.nodes.push(node);
  await node.start(join?.meshAddress);
  return node;
}

async function startGroup(resources: Resources, name: string, count: number): Promise<TestNode[]> {
  const dir = path.join(resources.root, name);
  const nodes: TestNode[] = [];
  for (let index = 1; index <= count; index++) nodes.push(await startNode(resources, dir, index, nodes[0]));
  await waitGroupUp(nodes, NODE_START_TIMEOUT_MS);
  return nodes;
}

/** `shoal ARGS --json` asked of `node`; fails on a non-zero exit. */
async function shoalJson(node: TestNode, args: string[], timeoutMs = ADMIN_TIMEOUT_MS): Promise<Record<string, unknown>> {
  const result = await run([...shoalCommand(), ...args, "--json"], { env: { SHOAL_NODE: node.meshAddress }, timeoutMs });
  if (result.exitCode !== 0) throw new Error(`shoal ${args.join(" ")} exited with ${result.exitCode}: ${result.stderr.trim()}`);
  return JSON.parse(result.stdout) as Record<string, unknown>;
}

/** Creates the volume and waits until every node knows it; returns the page owners' order. */
async function createVolume(nodes: TestNode[], name: string, sizeBytes: number, placeOn?: string[]): Promise<string[]> {
  const created = await shoalJson(nodes[0]!, ["volume", "create", name, "--size", String(sizeBytes), ...(placeOn ? ["--nodes", placeOn.join(",")] : [])]);
  for (const node of nodes) {
    await waitFor(`${node.id} to know volume ${name}`, async () => {
      const volumes = (await adminRequest(node.meshAddress, "admin.volume.list", {}, 3000)).volumes as { name: string }[];
      return volumes.some((volume) => volume.name === name);
    });
  }
  return created.nodes as string[];
}

/**
 * Runs `work(chunk, buffer)` for every 1 MiB chunk of [0, bytes), IO_WORKERS at a time, each
 * worker with its own buffer (reused only once its previous request has been answered).
 */
async function eachChunk(bytes: number, work: (chunk: number, buffer: Uint8Array) => Promise<void>): Promise<void> {
  const chunks = bytes / IO_BYTES;
  let next = 0;
  const worker = async () => {
    const buffer = new Uint8Array(IO_BYTES);
    while (next < chunks) await work(next++, buffer);
  };
  await Promise.all(Array.from({ length: IO_WORKERS }, worker));
}

/**
 * Writes the whole volume with fresh random data, each page through its owner (`owners` in the
 * table's order: page p is on owners[p % owners.length]), then FLUSHes and syncs the disks.
 * Returns a hash of every 1 MiB chunk written.
 */
async function fillVolume(nodes: TestNode[], volume: string, bytes: number, owners: string[]): Promise<Float64Array> {
  const started = performance.now();
  const clients = new Map<string, NbdClient>();
  for (const id of owners) clients.set(id, await connect(nodes.find((node) => node.id === id)!, volume, IO_WORKERS));
  const hashes = new Float64Array(bytes / IO_BYTES);
  try {
    const fill = eachChunk(bytes, async (chunk, buffer) => {
      hashes[chunk] = Number(Bun.hash(fillRandom(buffer)));
      const page = Math.floor((chunk * IO_BYTES) / PAGE_BYTES);
      await clients.get(owners[page % owners.length]!)!.write(chunk * IO_BYTES, buffer);
    });
    await bounded(fill, FILL_TIMEOUT_MS, `filling ${bytes / MiB} MiB of ${volume}`);
    await Promise.all([...clients.values()].map((client) => client.flush()));
  } finally {
    await Promise.all([...clients.values()].map((client) => client.close()));
  }
  const ms = performance.now() - started;
  progress(`${volume}: wrote ${bytes / MiB} MiB in ${(ms / 1000).toFixed(1)} s (${mbps(bytes, ms).toFixed(0)} MB/s); syncing`);
  await syncDisks();
  return hashes;
}

/** Reads the volume back through `node`; returns the 1 MiB chunks whose content differs. */
async function differingChunks(node: TestNode, volume: string, bytes: number, hashes: Float64Array): Promise<number[]> {
  const client = await connect(node, volume, IO_WORKERS);
  const differing: number[] = [];
  try {
    const check = eachChunk(bytes, async (chunk) => {
      const data = await client.read(chunk * IO_BYTES, IO_BYTES);
      if (Number(Bun.hash(data)) !== hashes[chunk]) differing.push(chunk);
    });
    await bounded(check, FILL_TIMEOUT_MS, `reading ${volume} back`);
  } finally {
    await client.close();
  }
  return differing.sort((a, b) => a - b);
}

// ---- CPU use: was a phase short of CPU, and who used it?

const CLOCK_TICKS_PER_SECOND = 100;

/** utime + stime of a process in seconds (0 once it is gone). */
function processCpuSeconds(pid: number | undefined): number {
  try {
    // The command may contain spaces: fields are counted after its closing parenthesis.
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return 0;
  }
}

/** Busy CPU seconds of the whole machine (every core; iowait and idle excluded). */
function machineBusySeconds(): number {
  const [, user, nice, system, , , irq, softirq, steal] = fs.readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).map(Number);
  return (user! + nice! + system! + irq! + softirq! + steal!) / CLOCK_TICKS_PER_SECOND;
}

interface CpuUse {
  wallSeconds: number;
  /** CPU seconds per node over the wall time. */
  nodes: Record<string, number>;
  machineBusySeconds: number;
  machineSeconds: number;
}

/** CPU seconds the nodes and the whole machine used while `work` ran. */
async function cpuDuring<T>(nodes: TestNode[], work: () => Promise<T>): Promise<{ result: T; cpu: CpuUse }> {
  const nodesBefore = nodes.map((node) => processCpuSeconds(node.proc?.pid));
  const busyBefore = machineBusySeconds();
  const started = performance.now();
  const result = await work();
  const wallSeconds = (performance.now() - started) / 1000;
  const cpu: CpuUse = {
    wallSeconds,
    nodes: Object.fromEntries(nodes.map((node, index) => [node.id, processCpuSeconds(node.proc?.pid) - nodesBefore[index]!])),
    machineBusySeconds: machineBusySeconds() - busyBefore,
    machineSeconds: wallSeconds * os.cpus().length,
  };
  return { result, cpu };
}

function describeCpu(cpu: CpuUse): string {
  const nodes = Object.entries(cpu.nodes).map(([node, seconds]) => `${node} ${seconds.toFixed(1)} s`).join(", ");
  return `CPU over ${cpu.wallSeconds.toFixed(1)} s: ${nodes}; whole machine busy ${cpu.machineBusySeconds.toFixed(1)} of ${cpu.machineSeconds.toFixed(1)} CPU-s`;
}

function mbps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

// ---- 1. throughput

interface MoveSummary {
  state: string;
  pagesTotal: number;
  pagesMoved: number;
  bytesMoved: number;
  startedAtMs: number;
  finishedAtMs: number;
}

interface Rate {
  bytes: number;
  ms: number;
  mbPerSecond: number;
}

interface TcpAnchor extends Rate {
  /** The receiver's fsync at the end (0 into memory). */
  fsyncMs: number;
  /** CPU the receiving process used in all (Bun's start included), to set beside the move target's. */
  receiverCpuSeconds: number;
}

/** One anchor run: a receiving and a sending Bun process, both registered for cleanup. */
async function tcpAnchor(resources: Resources, bytes: number, file: string | undefined): Promise<TcpAnchor> {
  const script = path.join(import.meta.dir, "_tcp-baseline.ts");
  const spawn = (args: string[]) => {
    const proc = Bun.spawn([process.execPath, script, ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    resources.helpers.add(proc);
    return proc;
  };
  const receiver = spawn(["receive", "--bytes", String(bytes), ...(file ? ["--file", file] : [])]);
  const lines = (receiver.stdout as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let received = "";
  const nextLine = async (): Promise<string> => {
    for (;;) {
      const newline = received.indexOf("\n");
      if (newline >= 0) {
        const line = received.slice(0, newline);
        received = received.slice(newline + 1);
        return line;
      }
      const { value, done } = await lines.read();
      if (done) throw new Error(`the TCP receiver ended early: ${await new Response(receiver.stderr).text()}`);
      received += decoder.decode(value, { stream: true });
    }
  };
  try {
    const { port } = JSON.parse(await bounded(nextLine(), 30_000, "the TCP receiver to listen")) as { port: number };
    const sender = spawn(["send", "--port", String(port), "--bytes", String(bytes)]);
    const [out, err, code] = await bounded(
      Promise.all([new Response(sender.stdout).text(), new Response(sender.stderr).text(), sender.exited]),
      BASELINE_TIMEOUT_MS,
      "the TCP anchor",
    );
    if (code !== 0) throw new Error(`the TCP sender exited with ${code}: ${err}`);
    const { ms } = JSON.parse(out) as { ms: number };
    const { fsyncMs } = JSON.parse(await bounded(nextLine(), 30_000, "the TCP receiver's report")) as { fsyncMs: number };
    await Promise.race([receiver.exited, Bun.sleep(5000)]);
    if (receiver.exitCode === null) receiver.kill("SIGKILL");
    await receiver.exited;
    const receiverCpuSeconds = Number(receiver.resourceUsage()?.cpuTime.total ?? 0) / 1e6;
    return { bytes, ms, mbPerSecond: mbps(bytes, ms), fsyncMs, receiverCpuSeconds };
  } finally {
    if (receiver.exitCode === null) receiver.kill("SIGKILL");
    if (file) fs.rmSync(file, { force: true });
  }
}

async function measureThroughput(resources: Resources, options: Options) {
  progress("1: throughput: two nodes, every page on node1, moved to node2");
  const nodes = await startGroup(resources, "throughput", 2);
  const [node1, node2] = nodes as [TestNode, TestNode];
  const pages = options.sizeBytes / PAGE_BYTES;
  await createVolume(nodes, "tp", options.sizeBytes, [node1.id]);
  const hashes = await fillVolume(nodes, "tp", options.sizeBytes, [node1.id]);

  // Rounds interleave a move with the file anchor (A B A B ...), the pages going back and forth
  // between the two nodes; the first move is read back and verified.
  const rounds: MoveRound[] = [];
  let first: { summary: MoveSummary; wallMs: number; cpu: CpuUse } | undefined;
  for (let round = 1; round <= options.rounds; round++) {
    const [source, target] = round % 2 === 1 ? [node1, node2] : [node2, node1];
    await syncDisks();
    const load = loadAverage();
    progress(`round ${round}: moving pages 0-${pages - 1} (${options.sizeBytes / MiB} MiB) from ${source.id} to ${target.id}`);
    const moved = await moveAll(source, target, pages);
    first ??= moved;
    if (round === 1) await verifyOn(node2, pages, hashes, options);
    const bytes = moved.summary.bytesMoved;
    const jobMs = moved.summary.finishedAtMs - moved.summary.startedAtMs;
    await syncDisks();
    const tcpFile = await tcpAnchor(resources, bytes, path.join(resources.root, "tcp-anchor.bin"));
    const cell: MoveRound = { move: { bytes, ms: jobMs, mbPerSecond: mbps(bytes, jobMs) }, tcpFile, load, cpu: moved.cpu };
    rounds.push(cell);
    progress(`round ${round}: move ${cell.move.mbPerSecond.toFixed(0)} MB/s, TCP into a file + fsync ${tcpFile.mbPerSecond.toFixed(0)} MB/s (receiver CPU ${tcpFile.receiverCpuSeconds.toFixed(1)} s): ${(cell.move.mbPerSecond / tcpFile.mbPerSecond).toFixed(2)}x (load ${load}); ${describeCpu(moved.cpu)}`);
  }
  const { summary, wallMs, cpu } = first!;
  const jobMs = summary.finishedAtMs - summary.startedAtMs;
  await resources.stopNodes(nodes);

  const bytes = summary.bytesMoved;
  await syncDisks();
  progress(`anchor: ${(bytes / MiB).toFixed(0)} MiB over loopback TCP between two Bun processes, into memory`);
  const tcpMemory = await tcpAnchor(resources, bytes, undefined);
  const tcpFile = rounds[0]!.tcpFile;
  return {
    pages,
    summary,
    moveJob: { bytes, ms: jobMs, mbPerSecond: mbps(bytes, jobMs) } satisfies Rate,
    moveWall: { bytes, ms: wallMs, mbPerSecond: mbps(bytes, wallMs) } satisfies Rate,
    moveCpu: cpu,
    tcpMemory,
    tcpFile,
    rounds,
    verifiedBytes: options.sizeBytes,
  };
}

interface MoveRound {
  move: Rate;
  tcpFile: TcpAnchor;
  load: number;
  cpu: CpuUse;
}

/** Every page of "tp" from `source` to `target`, asked of the source. */
async function moveAll(source: TestNode, target: TestNode, pages: number): Promise<{ summary: MoveSummary; wallMs: number; cpu: CpuUse }> {
  const started = performance.now();
  const { result: summary, cpu } = await cpuDuring([source, target], async () => (await shoalJson(source, ["route", "move", "tp", "--pages", `0-${pages - 1}`, "--to", target.id], MOVE_TIMEOUT_MS)) as unknown as MoveSummary);
  const wallMs = performance.now() - started;
  if (summary.state !== "done" || summary.pagesMoved !== pages) throw new Error(`the move ended ${summary.state} after ${summary.pagesMoved}/${pages} pages`);
  return { summary, wallMs, cpu };
}

/** After the first move node2 owns every page and serves exactly what was written. */
async function verifyOn(node2: TestNode, pages: number, hashes: Float64Array, options: Options): Promise<void> {
  const route = await adminRequest(node2.meshAddress, "admin.route.show", { volume: "tp" }, ADMIN_TIMEOUT_MS);
  const onNode2 = (route.nodes as { node: string; pages: number }[]).find((entry) => entry.node === node2.id)?.pages ?? 0;
  if (onNode2 !== pages) throw new Error(`after the move node2 owns ${onNode2} of ${pages} pages`);
  const differing = await differingChunks(node2, "tp", options.sizeBytes, hashes);
  if (differing.length > 0) throw new Error(`after the move ${differing.length} MiB read back through node2 differ from what was written (first at ${differing[0]} MiB)`);
  progress(`read back and verified through node2`);
}

// ---- 2. latency: the load

/** Latencies of the load's writes issued in [fromMs, toMs), and this process's lag meanwhile. */
function windowOf(load: PacedWriteLoad, fromMs: number, toMs: number): Window {
  const latencies = load.log.issuedIn(fromMs, toMs);
  const lag = stats(load.ticks.issuedIn(fromMs, toMs));
  const skipped = load.skippedAtMs.filter((at) => at >= fromMs && at < toMs).length;
  return { ms: toMs - fromMs, latency: stats(latencies), skipped, writesPerSecond: latencies.length / ((toMs - fromMs) / 1000), clientLagP99Ms: lag.p99Ms, clientLagMaxMs: lag.maxMs };
}

interface Window {
  ms: number;
  latency: LatencyStats;
  /** Writes that fell due while their client had --inflight writes waiting: not issued. */
  skipped: number;
  writesPerSecond: number;
  clientLagP99Ms: number;
  clientLagMaxMs: number;
}

// ---- 2. latency: the measure

async function measureLatency(resources: Resources, options: Options) {
  progress("2: latency: three nodes, a striped volume written in full, then a fourth node joins");
  const nodes = await startGroup(resources, "latency", 3);
  const owners = await createVolume(nodes, "lat", options.sizeBytes);
  await fillVolume(nodes, "lat", options.sizeBytes, owners);
  const node4 = await startNode(resources, path.join(resources.root, "latency"), 4, nodes[0]);
  const all = [...nodes, node4];
  await waitGroupUp(all, NODE_START_TIMEOUT_MS);

  progress(`load: ${nodes.length} clients x ${options.ratePerClient} writes/s of 4 KiB; ${WARMUP_MS / 1000} s warm-up, ${options.durationMs / 1000} s before the rebalance`);
  const load = await PacedWriteLoad.start(nodes, "lat", options.sizeBytes, options);
  let summary: MoveSummary;
  let cpu: CpuUse;
  let before: Window, during: Window, after: Window;
  try {
    await Bun.sleep(WARMUP_MS);
    const beforeFromMs = performance.now();
    await Bun.sleep(options.durationMs);
    const duringFromMs = performance.now();
    progress("route rebalance lat (asked of node4) under the load");
    ({ result: summary, cpu } = await cpuDuring(all, async () => (await shoalJson(node4, ["route", "rebalance", "lat"], MOVE_TIMEOUT_MS)) as unknown as MoveSummary));
    const duringToMs = performance.now();
    await Bun.sleep(AFTER_MS);
    const afterToMs = performance.now();
    before = windowOf(load, beforeFromMs, duringFromMs);
    during = windowOf(load, duringFromMs, duringToMs);
    after = windowOf(load, duringToMs, afterToMs);
  } finally {
    await load.stop();
  }
  if (summary.state !== "done") throw new Error(`the rebalance ended ${summary.state}`);
  const route = await adminRequest(node4.meshAddress, "admin.route.show", { volume: "lat" }, ADMIN_TIMEOUT_MS);
  const perNode = Object.fromEntries((route.nodes as { node: string; pages: number }[]).map((entry) => [entry.node, entry.pages]));
  if (!perNode[node4.id]) throw new Error(`after the rebalance node4 owns no page of lat: ${JSON.stringify(perNode)}`);
  const rebalanceMs = summary.finishedAtMs - summary.startedAtMs;
  progress(`rebalance moved ${summary.pagesMoved} pages (${(summary.bytesMoved / MiB).toFixed(0)} MiB) in ${rebalanceMs} ms; pages now ${JSON.stringify(perNode)}`);
  await resources.stopNodes(all);
  return {
    summary,
    rebalance: { bytes: summary.bytesMoved, ms: rebalanceMs, mbPerSecond: mbps(summary.bytesMoved, rebalanceMs) } satisfies Rate,
    pagesPerNode: perNode,
    rebalanceCpu: cpu,
    before,
    during,
    after,
    load: { issued: load.counters.issued, skipped: load.counters.skipped, errors: load.counters.errors },
  };
}

// ---- report

type Results = {
  throughput: Awaited<ReturnType<typeof measureThroughput>>;
  /** Absent with --throughput-only. */
  latency: Awaited<ReturnType<typeof measureLatency>> | undefined;
};

const fixed = (value: number, digits = 2) => (Number.isFinite(value) ? value.toFixed(digits) : "-");
const times = (value: number) => (Number.isFinite(value) ? `${value.toFixed(2)}x` : "-");

function verdicts(results: Results) {
  const { throughput, latency } = results;
  const moveVsTcp = throughput.moveJob.mbPerSecond / throughput.tcpMemory.mbPerSecond;
  const fileRatios = throughput.rounds.map((round) => round.move.mbPerSecond / round.tcpFile.mbPerSecond).sort((a, b) => a - b);
  const fileRatio = fileRatios[Math.floor((fileRatios.length - 1) / 2)]!; // lower median: never flatters
  const rows = [
    { measure: "move MB/s vs raw loopback TCP", value: moveVsTcp, target: `>= ${TARGETS.moveVsTcp}x`, met: moveVsTcp >= TARGETS.moveVsTcp },
    { measure: `move MB/s vs TCP into a file + fsync (median of ${fileRatios.length} interleaved rounds)`, value: fileRatio, target: `>= ${TARGETS.moveVsTcpFile}x`, met: fileRatio >= TARGETS.moveVsTcpFile },
  ];
  if (!latency) return rows;
  const p99Ratio = latency.during.latency.p99Ms / latency.before.latency.p99Ms;
  return [...rows, { measure: "write p99 during rebalance vs before", value: p99Ratio, target: `<= ${TARGETS.p99DuringVsBefore}x`, met: p99Ratio <= TARGETS.p99DuringVsBefore }];
}

function renderReport(results: Results, options: Options, info: RunInfo): string {
  const { throughput, latency } = results;
  const rateRow = (label: string, rate: Rate): string[] => [
    label,
    fixed(rate.bytes / MiB, 0),
    fixed(rate.ms, 0),
    fixed(rate.mbPerSecond, 0),
    times(throughput.moveJob.mbPerSecond / rate.mbPerSecond),
  ];
  return [
    `shoal ${info.revision}; nodes on loopback; 4 MiB pages; volume size ${options.sizeBytes / MiB} MiB`,
    `${os.cpus().length} CPUs; load average ${fixed(info.loadAtStart)} at start, ${fixed(info.loadAtEnd)} at end`,
    "",
    table(
      ["VERDICT", "VALUE", "TARGET", ""],
      verdicts(results).map((v) => [v.measure, times(v.value), v.target, v.met === undefined ? "" : v.met ? "met" : "NOT MET"]),
    ),
    "",
    `1: ${throughput.pages} pages moved node1 -> node2 by one \`route move\`; read back through node2 and verified (${throughput.verifiedBytes / MiB} MiB)`,
    table(
      ["THROUGHPUT", "MiB", "MS", "MB/S", "MOVE (JOB) / THIS"],
      [
        rateRow("route move (job: startedAtMs..finishedAtMs)", throughput.moveJob),
        rateRow("route move (CLI wall time)", throughput.moveWall),
        rateRow("TCP loopback, Bun -> Bun, into memory", throughput.tcpMemory),
        rateRow(`TCP loopback, into a file + fsync (${fixed(throughput.tcpFile.fsyncMs, 0)} ms)`, throughput.tcpFile),
      ],
    ),
    `   during the move: ${describeCpu(throughput.moveCpu)}`,
    ...throughput.rounds.map(
      (round, index) =>
        `   round ${index + 1}: move ${fixed(round.move.mbPerSecond, 0)} MB/s, TCP into a file + fsync ${fixed(round.tcpFile.mbPerSecond, 0)} MB/s (receiver CPU ${fixed(round.tcpFile.receiverCpuSeconds, 1)} s): ` +
        `${times(round.move.mbPerSecond / round.tcpFile.mbPerSecond)} (load ${fixed(round.load, 1)}); ${describeCpu(round.cpu)}`,
    ),
    ...(latency ? ["", ...renderLatency(latency, options)] : []),
  ].join("\n");
}

function renderLatency(latency: NonNullable<Results["latency"]>, options: Options): string[] {
  const windowRow = (label: string, w: Window): string[] => [
    label,
    fixed(w.ms / 1000, 1),
    String(w.latency.count),
    String(w.skipped),
    fixed(w.writesPerSecond, 0),
    fixed(w.latency.p50Ms),
    fixed(w.latency.p99Ms),
    fixed(w.latency.maxMs),
    fixed(w.clientLagP99Ms),
    fixed(w.clientLagMaxMs),
  ];
  return [
    `2: 3 NBD clients (one per original node) x ${options.ratePerClient} 4 KiB random writes/s (open loop, <= ${options.inflightPerClient} in flight each; ${latency.load.skipped} skipped of ${latency.load.issued + latency.load.skipped} due)`,
    `   rebalance onto node4 (asked of node4): ${latency.summary.pagesMoved} pages, ${fixed(latency.rebalance.bytes / MiB, 0)} MiB in ${fixed(latency.rebalance.ms, 0)} ms (${fixed(latency.rebalance.mbPerSecond, 0)} MB/s under load); pages now ${Object.entries(latency.pagesPerNode).map(([node, pages]) => `${node} ${pages}`).join(", ")}`,
    `   during the rebalance: ${describeCpu(latency.rebalanceCpu)}`,
    table(
      ["WRITE LATENCY (ms)", "S", "N", "SKIPPED", "WRITES/S", "P50", "P99", "MAX", "CLIENT LAG P99", "CLIENT LAG MAX"],
      [windowRow("before (steady)", latency.before), windowRow("during the rebalance", latency.during), windowRow(`after (${AFTER_MS / 1000} s)`, latency.after)],
    ),
    "client lag: gaps between this process's 1 ms pacer ticks; large gaps inflate every latency above",
  ];
}

interface RunInfo {
  revision: string;
  loadAtStart: number;
  loadAtEnd: number;
}

// ---- main

async function measure(resources: Resources, options: Options): Promise<void> {
  const loadAtStart = loadAverage();
  progress(`temp dir ${resources.root}; load average ${loadAtStart}`);
  const revision = await sourceRevision();
  process.env.SHOAL_BIN = await buildShoal(resources.root, options.bin);
  const throughput = await measureThroughput(resources, options);
  const latency = options.throughputOnly ? undefined : await measureLatency(resources, options);
  const results: Results = { throughput, latency };
  const info: RunInfo = { revision, loadAtStart, loadAtEnd: loadAverage() };
  printReport(renderReport(results, options, info), options.json, () => ({ ...info, options, targets: TARGETS, verdicts: verdicts(results), results }));
}

async function main(): Promise<void> {
  const options = parseOptions();
  const resources = new Resources();
  await runBench(resources, options.timeoutMs, () => measure(resources, options));
}

await main();
