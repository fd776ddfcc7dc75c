// The data-path benchmark: one run puts the same fio load on qemu-nbd, nbdkit-file and a real
// three-node Shoal group (direct, forwarded, striped) on the same disk, and prints Shoal's ratios
// against those anchors plus node RSS with a 1 TiB volume. Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/datapath.ts [--size 1G] [--runtime 10] [--rounds 1] [--json] [--bin PATH] [--end-fsync] [--tls]
//
// --tls adds a second three-node group running with --tls/--tls-required (mutual TLS on the mesh,
// NBD over STARTTLS) and compares sequential 1 MiB copies through it with the plain group, direct
// and forwarded, in the same run. That comparison uses nbdcopy for both sides (1 connection, 16
// requests of 1 MiB, like the fio jobs): fio's nbd engine cannot present a client certificate
// (libnbd refuses tls-certificates in its URI, and as root only reads /etc/pki/libnbd).
//
// Fairness, the same for every system under test:
// - Backing store: fresh sparse files (`truncate`) for the anchors; Shoal's page files are sparse
//   too (created by ftruncate on first write). All under one temp dir on the same filesystem.
// - Caching: all three write through the page cache and make data durable only on FLUSH:
//   qemu-nbd `--cache=writeback --aio=io_uring` (writeback is qemu-nbd's default cache mode;
//   io_uring doubled its 4 KiB random-read IOPS over the default `threads` here, so it is the
//   stronger, fairer anchor; `threads` is the fallback where io_uring is missing), nbdkit file
//   with its defaults (`cache=default`, 16 threads), Shoal's pread/pwrite + fdatasync on FLUSH.
//   `--direct=1` does not apply to fio's nbd engine (nothing is opened with O_DIRECT on the
//   client side), so it is not passed. `--end-fsync` adds a FLUSH at the end of the write jobs,
//   so their time includes making the data durable.
// - qemu-nbd 7.2 reads fast with 64 KiB requests but slowly with 256 KiB and up (measured here:
//   ~900 vs ~200 MB/s), so its 1 MiB sequential read is a weak anchor; nbdkit is the one to beat.
// - `sync` runs between jobs (untimed) so no job pays for the previous job's writeback.
// - Writes run before reads on every target, so reads hit written data (from the page cache).
// - Memory: RSS is read from /proc/PID/status of the node processes (the compiled binary is the
//   process itself) when idle, then with a 1 TiB volume striped over all three before any I/O
//   (the target), and again after the load. The 1 TiB volume stays during the load.
// - One fio job, one NBD connection, iodepth 16; random jobs use fio's fixed seed (same offsets).
// - `--rounds N` repeats the whole sweep (targets interleaved) and reports the median per cell:
//   on a shared 2-CPU machine one round can be off by 2x.
//
// With --json the tables go to stderr and stdout carries one JSON document.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { adminRequest } from "../../cmd/_cli.ts";
import { parseSize } from "../../core/geometry.ts";
import { loadTlsIdentity, useTlsIdentity } from "../../transport/tls/tls-identity.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { fioSpecOf, JOBS, SEQUENTIAL_RUNTIME_SECONDS_MAX, type Job } from "./_fio-jobs.ts";
import { type FioResult, runFio } from "./_fio.ts";
import { Resources, sparseFile, startNbdkitFile, waitForExport } from "./_bench-processes.ts";
import { buildShoal, loadAverage, progress, sourceRevision, syncDisks, table } from "./_bench.ts";
import { freePort, run, shoalCommand, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";

const MiB = 1024 * 1024;
const NODE_START_TIMEOUT_MS = 20_000;
/** A sequential job covers the whole size but never runs longer than this. */
const RSS_TARGET_BYTES = 150 * 1000 * 1000;
const HUGE_VOLUME_SIZE = "1T";
const FIO_IODEPTH = 16;
/** Written and read back through every target before its load: fast numbers for wrong data mean nothing. */
const ROUND_TRIP_BYTES = 16 * MiB;

interface Options {
  sizeBytes: number;
  runtimeSeconds: number;
  rounds: number;
  json: boolean;
  bin?: string;
  endFsync: boolean;
  tls: boolean;
}

type TargetKey = "qemuNbd" | "nbdkitFile" | "shoalDirect" | "shoalForwarded" | "shoalStriped";

interface Target {
  key: TargetKey;
  label: string;
  uri: string;
}

type JobResult = FioResult;

type Results = Record<TargetKey, Partial<Record<Job["key"], JobResult>>>;

interface NodeMemory {
  node: string;
  pid: number;
  /** Group converged, the two small bench volumes created, before any I/O. */
  rssIdleBytes: number;
  /** The target: right after the 1 TiB volume is known to every node, before any I/O. */
  rssWithHugeVolumeBytes: number;
  /** After every fio job (the 1 TiB volume still there): what the data path keeps. */
  rssAfterLoadBytes: number;
  rssPeakBytes: number;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      size: { type: "string", default: "1G" },
      runtime: { type: "string", default: "10" },
      rounds: { type: "string", default: "1" },
      json: { type: "boolean", default: false },
      bin: { type: "string" },
      "end-fsync": { type: "boolean", default: false },
      tls: { type: "boolean", default: false },
    },
    strict: true,
  });
  const sizeBytes = parseSize(values.size!);
  const runtimeSeconds = Number(values.runtime);
  if (sizeBytes < 16 * MiB || sizeBytes % MiB !== 0) throw new Error(`--size ${values.size}: give a whole number of MiB, at least 16M`);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(runtimeSeconds) || runtimeSeconds < 1 || runtimeSeconds > 600) throw new Error(`--runtime ${values.runtime}: give 1..600 seconds`);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 9) throw new Error(`--rounds ${values.rounds}: give 1..9`);
  return { sizeBytes, runtimeSeconds, rounds, json: values.json!, bin: values.bin, endFsync: values["end-fsync"]!, tls: values.tls! };
}

// ---- the systems under test

/** io_uring where this qemu has it (the stronger anchor), else the default thread pool. */
async function startQemuNbd(resources: Resources, sizeBytes: number): Promise<{ target: Target; aio: string }> {
  const file = sparseFile(resources, "qemu-nbd.raw", sizeBytes);
  let lastError: unknown;
  for (const aio of ["io_uring", "threads"]) {
    const port = await freePort();
    const proc = resources.spawn(["qemu-nbd", "-f", "raw", "-x", "bench", "-p", String(port), "-b", "127.0.0.1", "--cache=writeback", `--aio=${aio}`, "-t", file]);
    const uri = `nbd://127.0.0.1:${port}/bench`;
    try {
      await waitForExport(uri, proc, `qemu-nbd --aio=${aio}`);
      return { target: { key: "qemuNbd", label: "qemu-nbd", uri }, aio };
    } catch (err) {
      lastError = err;
      proc.kill("SIGKILL");
      progress(`qemu-nbd --aio=${aio} did not start; trying the next AIO mode`);
    }
  }
  throw lastError;
}

async function startNbdkitFileTarget(resources: Resources, sizeBytes: number): Promise<Target> {
  return { key: "nbdkitFile", label: "nbdkit-file", uri: (await startNbdkitFile(resources, sizeBytes)).uri };
}

/** A group of `count` nodes; with `certificates` (from makeCertificates) they run with TLS required. */
async function startGroup(resources: Resources, count: number, certificates?: string): Promise<TestNode[]> {
  const nodes: TestNode[] = [];
  for (let index = 1; index <= count; index++) {
    const dataDir = path.join(resources.root, `${certificates ? "tls-" : ""}node${index}`);
    const node = new TestNode(`node${index}`, dataDir, await freePort(), await freePort());
    if (certificates) node.extraArgs = ["--tls", path.join(certificates, `node${index}`), "--tls-required"];
    resources.nodes.push(node);
    nodes.push(node);
    await node.start(index === 1 ? undefined : nodes[0]!.meshAddress);
  }
  await waitGroupUp(nodes, NODE_START_TIMEOUT_MS);
  return nodes;
}

async function createVolume(nodes: TestNode[], name: string, size: string, placement?: string[], env: Record<string, string> = {}): Promise<void> {
  const args = [...shoalCommand(), "volume", "create", name, "--size", size, "--node", nodes[0]!.meshAddress];
  if (placement) args.push("--nodes", placement.join(","));
  const created = await run(args, { timeoutMs: 60_000, env });
  if (created.exitCode !== 0) throw new Error(`volume create ${name} failed: ${created.stderr}`);
  for (const node of nodes) {
    await waitFor(`${node.id} to know volume ${name}`, async () => {
      const volumes = (await adminRequest(node.meshAddress, "admin.volume.list", {}, 3000)).volumes as { name: string }[];
      return volumes.some((volume) => volume.name === name);
    });
  }
}

// ---- fio

function runJob(resources: Resources, job: Job, target: Target, options: Options): Promise<JobResult> {
  const run = { name: `${target.key}-${job.key}`, uri: target.uri, iodepth: FIO_IODEPTH, sizeBytes: options.sizeBytes, runtimeSeconds: options.runtimeSeconds, endFsync: options.endFsync };
  return runFio(resources, fioSpecOf(job, run));
}

/** Every round runs every target in turn (writes before reads); cells are medians over rounds. */
async function measureTargets(resources: Resources, targets: Target[], options: Options): Promise<{ median: Results; rounds: Results[] }> {
  const rounds: Results[] = [];
  const pattern = randomFile(resources, "round-trip.raw", ROUND_TRIP_BYTES);
  for (let round = 1; round <= options.rounds; round++) {
    const results = Object.fromEntries(targets.map((target) => [target.key, {}])) as Results;
    for (const target of targets) {
      if (round === 1) await checkRoundTrip(resources, target, pattern);
      for (const job of JOBS) {
        await syncDisks();
        const result = await runJob(resources, job, target, options);
        results[target.key][job.key] = result;
        progress(`round ${round} ${target.label.padEnd(15)} ${job.label.padEnd(14)} ${result.mbPerSecond.toFixed(1).padStart(8)} MB/s ${Math.round(result.iops).toString().padStart(8)} IOPS${result.capped ? " (capped)" : ""}`);
      }
    }
    rounds.push(results);
  }
  return { median: medianResults(targets, rounds), rounds };
}

function medianResults(targets: Target[], rounds: Results[]): Results {
  const median = Object.fromEntries(targets.map((target) => [target.key, {}])) as Results;
  for (const target of targets) {
    for (const job of JOBS) {
      const cells = rounds.map((round) => round[target.key][job.key]!).sort((a, b) => a.mbPerSecond - b.mbPerSecond);
      median[target.key][job.key] = cells[Math.floor((cells.length - 1) / 2)]!; // lower median: never flatters
    }
  }
  return median;
}

// ---- correctness before speed

function randomFile(resources: Resources, name: string, sizeBytes: number): string {
  const file = path.join(resources.root, name);
  const bytes = new Uint8Array(sizeBytes);
  for (let offset = 0; offset < sizeBytes; offset += 65536) crypto.getRandomValues(bytes.subarray(offset, offset + 65536));
  fs.writeFileSync(file, bytes);
  return file;
}

/** Random bytes over the first pages (striped volumes: every node) written and read back unchanged. */
async function checkRoundTrip(resources: Resources, target: Target, pattern: string): Promise<void> {
  const copied = await run(["nbdcopy", pattern, target.uri], { timeoutMs: 60_000 });
  if (copied.exitCode !== 0) throw new Error(`nbdcopy to ${target.label} failed: ${copied.stderr}`);
  const readBack = path.join(resources.root, `readback-${target.key}.raw`);
  const mib = ROUND_TRIP_BYTES / MiB;
  const dd = target.uri.startsWith("nbds:")
    ? await run(["nbdcopy", "--no-extents", "--synchronous", target.uri, readBack], { timeoutMs: 60_000 })
    : await run(["qemu-img", "dd", "-f", "raw", "-O", "raw", `if=${target.uri}`, `of=${readBack}`, "bs=1M", `count=${mib}`], { timeoutMs: 60_000 });
  if (dd.exitCode !== 0) throw new Error(`qemu-img dd from ${target.label} failed: ${dd.stderr}`);
  if (!fs.readFileSync(pattern).equals(fs.readFileSync(readBack).subarray(0, ROUND_TRIP_BYTES))) {
    throw new Error(`${target.label} returned different bytes than were written to its first ${mib} MiB; not benchmarking a broken data path`);
  }
  fs.rmSync(readBack);
}

// ---- memory

function procStatusBytes(pid: number, field: "VmRSS" | "VmHWM"): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
  if (!match) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/**
 * RSS of fresh nodes, then with a 1 TiB volume striped over all of them (before any I/O, so the
 * number is the volume's metadata and not buffers left over from the load); `afterLoad` fills in
 * the rest once the fio jobs have run.
 */
async function measureMemoryBeforeLoad(nodes: TestNode[]): Promise<NodeMemory[]> {
  const pids = nodes.map((node) => node.proc!.pid);
  const idle = pids.map((pid) => procStatusBytes(pid, "VmRSS"));
  await createVolume(nodes, "huge", HUGE_VOLUME_SIZE);
  const info = await run([...shoalCommand(), "volume", "info", "huge", "--node", nodes[0]!.meshAddress], { timeoutMs: 30_000 });
  if (info.exitCode !== 0) throw new Error(`volume info huge failed: ${info.stderr}`);
  return nodes.map((node, index) => ({
    node: node.id,
    pid: pids[index]!,
    rssIdleBytes: idle[index]!,
    rssWithHugeVolumeBytes: procStatusBytes(pids[index]!, "VmRSS"),
    rssAfterLoadBytes: 0,
    rssPeakBytes: 0,
  }));
}

function measureMemoryAfterLoad(memory: NodeMemory[]): void {
  for (const entry of memory) {
    entry.rssAfterLoadBytes = procStatusBytes(entry.pid, "VmRSS");
    entry.rssPeakBytes = procStatusBytes(entry.pid, "VmHWM");
  }
}

// ---- report

function ratio(numerator: JobResult | undefined, denominator: JobResult | undefined): number {
  return numerator && denominator && denominator.mbPerSecond > 0 ? numerator.mbPerSecond / denominator.mbPerSecond : 0;
}

function verdict(value: number, minimum: number): string {
  return value >= minimum ? "met" : "not met";
}

function ratios(results: Results) {
  return JOBS.map((job) => {
    const direct = results.shoalDirect[job.key];
    const directOverQemu = ratio(direct, results.qemuNbd[job.key]);
    const forwardedOverDirect = ratio(results.shoalForwarded[job.key], direct);
    return {
      measure: job.key,
      directOverQemuNbd: directOverQemu,
      directOverQemuNbdMet: directOverQemu >= 1.0,
      directOverNbdkit: ratio(direct, results.nbdkitFile[job.key]),
      forwardedOverDirect,
      forwardedOverDirectMet: forwardedOverDirect >= 0.7,
      stripedOverDirect: ratio(results.shoalStriped[job.key], direct),
    };
  });
}

interface RunInfo {
  revision: string;
  qemuAio: string;
  loadAtStart: number;
  loadAtEnd: number;
}

function renderReport(targets: Target[], results: Results, memory: NodeMemory[], options: Options, info: RunInfo): string {
  const throughput = JOBS.flatMap((job) => [
    [job.label, "MB/s", ...targets.map((target) => formatResult(results[target.key][job.key], "mb"))],
    ["", "IOPS", ...targets.map((target) => formatResult(results[target.key][job.key], "iops"))],
  ]);
  const ratioRows = ratios(results).map((row, index) => [
    JOBS[index]!.label,
    row.directOverQemuNbd.toFixed(2),
    verdict(row.directOverQemuNbd, 1.0),
    row.directOverNbdkit.toFixed(2),
    row.forwardedOverDirect.toFixed(2),
    verdict(row.forwardedOverDirect, 0.7),
    row.stripedOverDirect.toFixed(2),
  ]);
  const mb = (bytes: number) => (bytes / 1e6).toFixed(1);
  const memoryRows = memory.map((m) => [
    m.node,
    mb(m.rssIdleBytes),
    mb(m.rssWithHugeVolumeBytes),
    m.rssWithHugeVolumeBytes < RSS_TARGET_BYTES ? "met" : "not met",
    mb(m.rssAfterLoadBytes),
    mb(m.rssPeakBytes),
  ]);
  return [
    `shoal ${info.revision}; every target passed a ${ROUND_TRIP_BYTES / MiB} MiB write/read-back check first`,
    `fio nbd engine, iodepth ${FIO_IODEPTH}, 1 connection; size ${options.sizeBytes / MiB} MiB; random jobs ${options.runtimeSeconds} s; ${options.rounds > 1 ? `median of ${options.rounds} rounds` : "1 round"}`,
    `sparse backing files; page cache on, flush only on request${options.endFsync ? " (writes end with a FLUSH)" : ""}; qemu-nbd --cache=writeback --aio=${info.qemuAio}; nbdkit file defaults`,
    `MB/s = 10^6 bytes/s; ${os.cpus().length} CPUs; load average ${info.loadAtStart.toFixed(2)} at start, ${info.loadAtEnd.toFixed(2)} at end${Math.max(info.loadAtStart, info.loadAtEnd) > 0.5 ? " (other work on the machine: numbers are noisy)" : ""}; * = sequential job stopped by its ${SEQUENTIAL_RUNTIME_SECONDS_MAX} s bound`,
    "",
    table(["MEASURE", "UNIT", ...targets.map((target) => target.label)], throughput),
    "",
    table(["MEASURE", "DIRECT/QEMU-NBD", "TARGET>=1.0", "DIRECT/NBDKIT", "FWD/DIRECT", "TARGET>=0.7", "STRIPED/DIRECT"], ratioRows),
    "",
    `Node RSS (MB = 10^6 bytes): idle; with a 1 TiB volume (262,144 pages of 4 MiB) striped over all nodes, before any I/O (target < 150 MB);`,
    `after all fio jobs (the 1 TiB volume still there); peak over the run (VmHWM)`,
    table(["NODE", "IDLE", "WITH 1 TiB", "TARGET<150MB", "AFTER LOAD", "PEAK"], memoryRows),
  ].join("\n");
}

function formatResult(result: JobResult | undefined, unit: "mb" | "iops"): string {
  if (!result) return "-";
  const text = unit === "mb" ? result.mbPerSecond.toFixed(1) : Math.round(result.iops).toString();
  return result.capped ? `${text}*` : text;
}

// ---- TLS on vs. off

type CopyKey = "seqWrite" | "seqRead";
const COPY_JOBS: { key: CopyKey; label: string }[] = [
  { key: "seqWrite", label: "seq write 1M" },
  { key: "seqRead", label: "seq read 1M" },
];
const TLS_TARGET_RATIO = 0.7;

interface TlsRow {
  /** Which server and client: shoal's paths with nbdcopy, nbdkit-file (the anchor) with nbdcopy, shoal with our own client. */
  path: "direct" | "forwarded" | "nbdkit-file" | "direct, Bun client";
  job: CopyKey;
  plainMbPerSecond: number;
  tlsMbPerSecond: number;
  ratio: number;
}

/** A CA and certificates for three nodes, an admin and an NBD client (qemu/libnbd layout), made by `shoal tls`. */
async function makeCertificates(resources: Resources): Promise<{ dir: string; admin: string; client: string }> {
  const dir = path.join(resources.root, "tls");
  const shoal = (args: string[]) => run([...shoalCommand(), "tls", ...args], { timeoutMs: 30_000 });
  const steps = [["init", dir], ...[1, 2, 3].map((index) => ["issue", dir, `node${index}`]), ["issue", dir, "admin", "--role", "admin"], ["issue", dir, "bench", "--role", "client", "--layout", "qemu"]];
  for (const step of steps) {
    const result = await shoal(step);
    if (result.exitCode !== 0) throw new Error(`shoal tls ${step.join(" ")} failed: ${result.stderr}`);
  }
  return { dir, admin: path.join(dir, "admin"), client: path.join(dir, "bench") };
}

/** MB/s of one nbdcopy: 1 connection, 16 requests of 1 MiB in flight, every byte sent (no sparseness, no extents). */
async function timedCopy(source: string, target: string, bytes: number): Promise<number> {
  const started = performance.now();
  const copied = await run(["nbdcopy", "-C", "1", "-R", "16", "--request-size=1048576", "-S", "0", "--no-extents", source, target], { timeoutMs: SEQUENTIAL_RUNTIME_SECONDS_MAX * 1000 });
  if (copied.exitCode !== 0) throw new Error(`nbdcopy ${source} ${target} failed: ${copied.stderr}`);
  return bytes / 1e6 / ((performance.now() - started) / 1000);
}

/**
 * The same sequential copies through the plain group (already running) and a TLS group started
 * here: writes then reads of the whole size, plain and TLS interleaved per round, lower medians.
 */
async function measureTls(resources: Resources, plainNodes: TestNode[], options: Options): Promise<TlsRow[]> {
  const certificates = await makeCertificates(resources);
  const size = `${options.sizeBytes / MiB}M`;
  // The bench process asks the TLS nodes whether they are up, so it presents the admin certificate meanwhile.
  useTlsIdentity(loadTlsIdentity(certificates.admin));
  let tlsNodes: TestNode[];
  try {
    tlsNodes = await startGroup(resources, 3, certificates.dir);
    await createVolume(tlsNodes, "seq", size, ["node1"], { SHOAL_TLS: certificates.admin });
  } finally {
    useTlsIdentity(undefined);
  }
  await createVolume(plainNodes, "seq", size, ["node1"]);
  const source = randomFile(resources, "seq-source.raw", options.sizeBytes);
  const uri = (node: TestNode, tls: boolean) =>
    tls ? `nbds://127.0.0.1:${node.nbdPort}/seq?tls-certificates=${certificates.client}` : `nbd://127.0.0.1:${node.nbdPort}/seq`;
  const pattern = randomFile(resources, "tls-round-trip.raw", ROUND_TRIP_BYTES);
  await checkRoundTrip(resources, { key: "shoalForwarded", label: "shoal forwarded TLS", uri: uri(tlsNodes[1]!, true) }, pattern);
  // The anchor: nbdkit's file plugin with and without TLS, same certificates, same nbdcopy.
  const nbdkit = await startNbdkitTls(resources, certificates.dir, certificates.client, options.sizeBytes);
  const samples = new Map<string, number[]>();
  const record = (key: string, value: number) => samples.set(key, [...(samples.get(key) ?? []), value]);
  const clientIdentity = loadTlsIdentity(certificates.client);
  for (let round = 1; round <= options.rounds; round++) {
    const targets: [TlsRow["path"], (tls: boolean) => string][] = [
      ["direct", (tls) => uri((tls ? tlsNodes : plainNodes)[0]!, tls)],
      ["forwarded", (tls) => uri((tls ? tlsNodes : plainNodes)[1]!, tls)],
      ["nbdkit-file", (tls) => (tls ? nbdkit.tlsUri : nbdkit.plainUri)],
    ];
    for (const [pathName, target] of targets) {
      for (const tls of [false, true]) {
        await syncDisks();
        const writeMbPerSecond = await timedCopy(source, target(tls), options.sizeBytes);
        await syncDisks();
        const readMbPerSecond = await timedCopy(target(tls), "null:", options.sizeBytes);
        record(`${pathName}/${tls}/seqWrite`, writeMbPerSecond);
        record(`${pathName}/${tls}/seqRead`, readMbPerSecond);
        progress(`round ${round} ${pathName.padEnd(11)} ${tls ? "TLS  " : "plain"} seq write ${writeMbPerSecond.toFixed(1).padStart(7)} MB/s, seq read ${readMbPerSecond.toFixed(1).padStart(7)} MB/s`);
      }
    }
    // Our own client (Bun's TLS, BoringSSL) against the direct path: the server's share of the cost.
    for (const tls of [false, true]) {
      useTlsIdentity(tls ? clientIdentity : undefined);
      try {
        const node = (tls ? tlsNodes : plainNodes)[0]!;
        await syncDisks();
        const { writeMbPerSecond, readMbPerSecond } = await clientCopy(node, options.sizeBytes);
        record(`direct, Bun client/${tls}/seqWrite`, writeMbPerSecond);
        record(`direct, Bun client/${tls}/seqRead`, readMbPerSecond);
        progress(`round ${round} Bun client  ${tls ? "TLS  " : "plain"} seq write ${writeMbPerSecond.toFixed(1).padStart(7)} MB/s, seq read ${readMbPerSecond.toFixed(1).padStart(7)} MB/s`);
      } finally {
        useTlsIdentity(undefined);
      }
    }
  }
  const lowerMedian = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor((values.length - 1) / 2)]!;
  return (["direct", "forwarded", "nbdkit-file", "direct, Bun client"] as const).flatMap((pathName) =>
    COPY_JOBS.map(({ key }) => {
      const plainMbPerSecond = lowerMedian(samples.get(`${pathName}/false/${key}`)!);
      const tlsMbPerSecond = lowerMedian(samples.get(`${pathName}/true/${key}`)!);
      return { path: pathName, job: key, plainMbPerSecond, tlsMbPerSecond, ratio: tlsMbPerSecond / plainMbPerSecond };
    }),
  );
}

/** nbdkit's file plugin twice: plain, and with TLS required using a server certificate from the same CA. */
async function startNbdkitTls(resources: Resources, caDir: string, clientDir: string, sizeBytes: number): Promise<{ plainUri: string; tlsUri: string }> {
  const serverDir = path.join(caDir, "nbdkit-server");
  const issued = await run([...shoalCommand(), "tls", "issue", caDir, "nbdkit", "--role", "node", "--out", serverDir], { timeoutMs: 30_000 });
  if (issued.exitCode !== 0) throw new Error(`shoal tls issue for nbdkit failed: ${issued.stderr}`);
  // nbdkit reads ca-cert.pem, server-cert.pem and server-key.pem from its directory.
  fs.copyFileSync(path.join(serverDir, "cert.pem"), path.join(serverDir, "server-cert.pem"));
  fs.copyFileSync(path.join(serverDir, "key.pem"), path.join(serverDir, "server-key.pem"));
  const plainPort = await freePort();
  const tlsPort = await freePort();
  const plainFile = sparseFile(resources, "nbdkit-tls-plain.raw", sizeBytes);
  const tlsFile = sparseFile(resources, "nbdkit-tls.raw", sizeBytes);
  const plain = resources.spawn(["nbdkit", "-f", "-p", String(plainPort), "-i", "127.0.0.1", "file", plainFile]);
  const secure = resources.spawn(["nbdkit", "-f", "-p", String(tlsPort), "-i", "127.0.0.1", "--tls=require", `--tls-certificates=${serverDir}`, "--tls-verify-peer", "file", tlsFile]);
  const plainUri = `nbd://127.0.0.1:${plainPort}/`;
  const tlsUri = `nbds://127.0.0.1:${tlsPort}/?tls-certificates=${clientDir}`;
  await waitForExport(plainUri, plain, "nbdkit");
  await waitForExport(tlsUri, secure, "nbdkit --tls=require");
  return { plainUri, tlsUri };
}

/** MB/s of our own NBD client (Bun's TLS when the process has an identity): 1 MiB writes then reads, 16 in flight. */
async function clientCopy(node: TestNode, bytes: number): Promise<{ writeMbPerSecond: number; readMbPerSecond: number }> {
  const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: "seq", maxInFlight: 16 });
  try {
    const chunk = new Uint8Array(MiB);
    crypto.getRandomValues(chunk.subarray(0, 65536));
    const timed = async (op: (offset: number) => Promise<unknown>) => {
      const started = performance.now();
      const inFlight = new Set<Promise<unknown>>();
      for (let offset = 0; offset < bytes; offset += MiB) {
        const done: Promise<unknown> = op(offset).finally(() => inFlight.delete(done));
        inFlight.add(done);
        if (inFlight.size >= 16) await Promise.race(inFlight);
      }
      await Promise.all(inFlight);
      return bytes / 1e6 / ((performance.now() - started) / 1000);
    };
    const writeMbPerSecond = await timed((offset) => client.write(offset, chunk));
    const readMbPerSecond = await timed((offset) => client.read(offset, MiB));
    return { writeMbPerSecond, readMbPerSecond };
  } finally {
    await client.close();
  }
}

function renderTlsReport(rows: TlsRow[], options: Options): string {
  const label = (key: CopyKey) => COPY_JOBS.find((job) => job.key === key)!.label;
  return [
    `TLS on vs. off: nbdcopy (GnuTLS), 1 connection, 16 x 1 MiB requests, ${options.sizeBytes / MiB} MiB, ${options.rounds > 1 ? `median of ${options.rounds} rounds` : "1 round"};`,
    "TLS group: --tls --tls-required (mutual TLS on the mesh, NBD_OPT_STARTTLS with client certificates);",
    "nbdkit-file: the anchor, plain and --tls=require with the same certificates; Bun client: our NbdClient (BoringSSL) instead of nbdcopy",
    table(
      ["MEASURE", "PATH", "PLAIN MB/s", "TLS MB/s", "TLS/PLAIN", `TARGET>=${TLS_TARGET_RATIO}`],
      rows.map((row) => [label(row.job), row.path, row.plainMbPerSecond.toFixed(1), row.tlsMbPerSecond.toFixed(1), row.ratio.toFixed(2), verdict(row.ratio, TLS_TARGET_RATIO)]),
    ),
  ].join("\n");
}

// ---- main

async function main(): Promise<void> {
  const options = parseOptions();
  const resources = new Resources();
  const onSignal = (signal: string) => {
    progress(`${signal}: stopping every process this run started`);
    void resources.cleanup().finally(() => process.exit(130));
  };
  process.on("SIGINT", () => onSignal("SIGINT"));
  process.on("SIGTERM", () => onSignal("SIGTERM"));
  try {
    const loadAtStart = loadAverage();
    progress(`temp dir ${resources.root}; load average ${loadAtStart}`);
    const revision = await sourceRevision();
    process.env.SHOAL_BIN = await buildShoal(resources.root, options.bin);
    const size = `${options.sizeBytes / MiB}M`;
    const qemu = await startQemuNbd(resources, options.sizeBytes);
    const anchors = [qemu.target, await startNbdkitFileTarget(resources, options.sizeBytes)];
    const nodes = await startGroup(resources, 3);
    await createVolume(nodes, "direct", size, ["node1"]);
    await createVolume(nodes, "striped", size);
    const memory = await measureMemoryBeforeLoad(nodes);
    const targets: Target[] = [
      ...anchors,
      { key: "shoalDirect", label: "shoal direct", uri: nodes[0]!.nbdUrl("direct") },
      { key: "shoalForwarded", label: "shoal forwarded", uri: nodes[1]!.nbdUrl("direct") },
      { key: "shoalStriped", label: "shoal striped", uri: nodes[0]!.nbdUrl("striped") },
    ];
    const { median: results, rounds } = await measureTargets(resources, targets, options);
    measureMemoryAfterLoad(memory);
    const tls = options.tls ? await measureTls(resources, nodes, options) : undefined;
    const info: RunInfo = { revision, qemuAio: qemu.aio, loadAtStart, loadAtEnd: loadAverage() };
    const report = renderReport(targets, results, memory, options, info) + (tls ? `\n\n${renderTlsReport(tls, options)}` : "");
    if (options.json) {
      console.error(report);
      console.log(JSON.stringify({ ...info, options, targets, results, rounds, ratios: ratios(results), memory, tls }, null, 2));
    } else {
      console.log(report);
    }
  } finally {
    await resources.cleanup();
  }
}

await main();
