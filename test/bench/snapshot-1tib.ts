// The 1 TiB snapshot benchmark (issue 15): three nodes, a 1 TiB volume striped over them, and per
// round 4 s of 4 KiB random writes through one node (fio's nbd engine, iodepth 16; a new seed each
// round, so every round touches new pages) followed at once by `shoal snap create` run as a user
// runs it (the compiled CLI). Anchor, same run, interleaved: a second create right after, with
// nothing written in between. Reports the create's wall time, its phases as the nodes time them,
// the files under each node's data dir and the nodes' RSS. Not a *.test.ts: `bun test` skips it.
// (Reference only, not measured here: Ceph `rbd snap create` takes 0.86-0.90 s.)
//
//   bun test/bench/snapshot-1tib.ts [--rounds 5] [--write-seconds 4] [--mode hold|timestamp]
//                                   [--bin PATH] [--json] [--timeout-minutes 20]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { adminRequest } from "../../cmd/_cli.ts";
import { freePort, run, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";
import { buildShoal, loadAverage, percentile, printReport, progress, runBench, sourceRevision, table } from "./_bench.ts";
import { noPhaseTotals, phaseDelta, phaseMeans, phaseSum, phaseTotals } from "./_snapshot-phases.ts";

const TiB = 1024 ** 4;
const NODE_COUNT = 3;
const VOLUME = "tib";
const FIO_IODEPTH = 16;
const FIO_GRACE_MS = 30_000;
const CREATE_TIMEOUT_MS = 60_000;
const NODE_START_TIMEOUT_MS = 20_000;
/** Between the loaded create and the idle one: long enough for the loaded one's acks and write-back to finish. */
const SETTLE_MS = 1000;
const TARGETS = { createP50Ms: 150, filesPerNode: 500, rssBytes: 150 * 1000 * 1000 };

interface Options {
  rounds: number;
  writeSeconds: number;
  mode: "hold" | "timestamp";
  bin?: string;
  json: boolean;
  timeoutMs: number;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      rounds: { type: "string", default: "5" },
      "write-seconds": { type: "string", default: "4" },
      mode: { type: "string", default: "hold" },
      bin: { type: "string" },
      json: { type: "boolean", default: false },
      "timeout-minutes": { type: "string", default: "20" },
    },
    strict: true,
  });
  const integer = (name: string, text: string, min: number, max: number): number => {
    const value = Number(text);
    if (!Number.isInteger(value) || value < min || value > max) throw new Error(`--${name} ${text}: give ${min}..${max}`);
    return value;
  };
  if (values.mode !== "hold" && values.mode !== "timestamp") throw new Error(`--mode ${values.mode}: give hold or timestamp`);
  return {
    rounds: integer("rounds", values.rounds!, 1, 100),
    writeSeconds: integer("write-seconds", values["write-seconds"]!, 1, 600),
    mode: values.mode,
    bin: values.bin,
    json: values.json!,
    timeoutMs: integer("timeout-minutes", values["timeout-minutes"]!, 1, 600) * 60_000,
  };
}

class Resources {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-snap-1tib-"));
  readonly nodes: TestNode[] = [];
  private cleaned = false;

  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    const running = this.nodes.flatMap((node) => (node.proc ? [node.proc] : []));
    for (const proc of running) if (proc.exitCode === null) proc.kill("SIGKILL");
    await Promise.all(running.map((proc) => proc.exited));
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

async function startGroup(resources: Resources): Promise<TestNode[]> {
  for (let index = 1; index <= NODE_COUNT; index++) {
    const node = new TestNode(`node${index}`, path.join(resources.root, `node${index}`), await freePort(), await freePort());
    node.extraArgs = ["--metrics", `127.0.0.1:${await freePort()}`];
    resources.nodes.push(node);
    await node.start(index === 1 ? undefined : resources.nodes[0]!.meshAddress);
  }
  await waitGroupUp(resources.nodes, NODE_START_TIMEOUT_MS);
  return resources.nodes;
}

/** 4 KiB random writes over the whole volume through `node` for `seconds`; returns IOPS. */
async function randomWrites(node: TestNode, seconds: number, seed: number): Promise<number> {
  const command = [
    "fio", "--name=randwrite", "--ioengine=nbd", `--uri=${node.nbdUrl(VOLUME)}`, "--rw=randwrite", "--bs=4k",
    `--iodepth=${FIO_IODEPTH}`, `--size=${TiB}`, "--numjobs=1", "--time_based", `--runtime=${seconds}`,
    `--randseed=${seed}`, "--output-format=json",
  ];
  const result = await run(command, { timeoutMs: seconds * 1000 + FIO_GRACE_MS });
  if (result.exitCode !== 0) throw new Error(`fio failed (exit ${result.exitCode}): ${result.stderr}`);
  const report = JSON.parse(result.stdout.slice(result.stdout.indexOf("{"))) as { jobs: { error: number; write: { iops: number } }[] };
  if (report.jobs[0]!.error !== 0) throw new Error(`fio reported error ${report.jobs[0]!.error}`);
  return report.jobs[0]!.write.iops;
}

interface CreateTiming {
  wallMs: number;
  /** As the coordinator measured it. */
  tookMs: number;
}

/** `shoal snap create` as an operator runs it: the compiled CLI, a fresh process. */
async function snapCreate(bin: string, node: TestNode, name: string, mode: Options["mode"]): Promise<CreateTiming> {
  const startMs = performance.now();
  const result = await run([bin, "snap", "create", VOLUME, "--name", name, "--mode", mode, "--node", node.meshAddress, "--json"], { timeoutMs: CREATE_TIMEOUT_MS });
  const wallMs = performance.now() - startMs;
  if (result.exitCode !== 0) throw new Error(`snap create ${name} failed (exit ${result.exitCode}): ${result.stderr.trim()}`);
  return { wallMs, tookMs: Number(JSON.parse(result.stdout).tookMs) };
}

function filesUnder(dir: string): number {
  let count = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) if (entry.isFile()) count++;
  return count;
}

function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

interface Round {
  iops: number;
  loaded: CreateTiming;
  idle: CreateTiming;
  load: number;
}

async function measure(resources: Resources, options: Options): Promise<void> {
  const loadAtStart = loadAverage();
  const revision = await sourceRevision();
  const bin = await buildShoal(resources.root, options.bin);
  process.env.SHOAL_BIN = bin;
  const nodes = await startGroup(resources);
  await adminRequest(nodes[0]!.meshAddress, "admin.volume.create", { name: VOLUME, sizeBytes: TiB });
  for (const node of nodes) {
    await waitFor(`${node.id} to know volume ${VOLUME}`, async () => ((await adminRequest(node.meshAddress, "admin.volume.list", {}, 3000)).volumes as { name: string }[]).some((v) => v.name === VOLUME));
  }
  const rounds: Round[] = [];
  let loadedPhases = noPhaseTotals();
  for (let round = 0; round < options.rounds; round++) {
    const iops = await randomWrites(nodes[0]!, options.writeSeconds, round + 1);
    const before = await phaseTotals(nodes);
    const loaded = await snapCreate(bin, nodes[0]!, `r${round}`, options.mode);
    const after = await phaseTotals(nodes);
    loadedPhases = phaseSum(loadedPhases, phaseDelta(before, after));
    await Bun.sleep(SETTLE_MS);
    const idle = await snapCreate(bin, nodes[0]!, `r${round}-idle`, options.mode);
    rounds.push({ iops, loaded, idle, load: loadAverage() });
    progress(`round ${round + 1}: ${iops.toFixed(0)} IOPS; create ${loaded.wallMs.toFixed(0)} ms (took ${loaded.tookMs} ms), idle ${idle.wallMs.toFixed(0)} ms; load ${loadAverage()}`);
  }
  const files = nodes.map((node) => filesUnder(node.dataDir));
  const rss = nodes.map((node) => rssBytes(node.proc!.pid));
  const p50 = (values: number[]) => percentile(Float64Array.from(values).sort(), 0.5);
  const loadedP50 = p50(rounds.map((r) => r.loaded.wallMs));
  const idleP50 = p50(rounds.map((r) => r.idle.wallMs));
  const phases = phaseMeans(noPhaseTotals(), loadedPhases);
  const verdict = (met: boolean) => (met ? "met" : "NOT MET");
  const report = [
    `shoal ${revision}; ${NODE_COUNT} nodes on loopback, a 1 TiB volume striped over all; per round ${options.writeSeconds} s of fio 4 KiB random writes (iodepth ${FIO_IODEPTH}) through node1, then \`shoal snap create --mode ${options.mode}\` (the CLI, a new process)`,
    `${os.cpus().length} CPUs; load average ${loadAtStart.toFixed(2)} at start, ${loadAverage().toFixed(2)} at end`,
    "",
    table(
      ["ROUND", "WRITE IOPS", "CREATE WALL ms", "TOOK ms", "IDLE CREATE ms", "IDLE TOOK ms", "LOAD"],
      rounds.map((r, i) => [String(i + 1), r.iops.toFixed(0), r.loaded.wallMs.toFixed(0), String(r.loaded.tookMs), r.idle.wallMs.toFixed(0), String(r.idle.tookMs), r.load.toFixed(1)]),
    ),
    "",
    table(
      ["MEASURE", "VALUE", "ANCHOR", "TARGET", "VERDICT"],
      [
        ["create wall p50 after the writes", `${loadedP50.toFixed(0)} ms`, `idle ${idleP50.toFixed(0)} ms (${(loadedP50 / idleP50).toFixed(2)}x); Ceph rbd 860-900 ms (reference)`, `<= ${TARGETS.createP50Ms} ms`, verdict(loadedP50 <= TARGETS.createP50Ms)],
        ["files under a node's data dir, max", String(Math.max(...files)), files.join(", "), `<= ${TARGETS.filesPerNode}`, verdict(Math.max(...files) <= TARGETS.filesPerNode)],
        ["node RSS, max", `${(Math.max(...rss) / 1e6).toFixed(0)} MB`, rss.map((b) => (b / 1e6).toFixed(0)).join(", "), `< ${TARGETS.rssBytes / 1e6} MB`, verdict(Math.max(...rss) < TARGETS.rssBytes)],
      ],
      3,
    ),
    "",
    table(
      ["CREATE PHASES AFTER WRITES (ms)", "N", "MEAN", "P50~"],
      phases.map((p) => [p.phase, String(p.count), Number.isFinite(p.meanMs) ? p.meanMs.toFixed(1) : "-", Number.isFinite(p.p50Ms) ? p.p50Ms.toFixed(1) : "-"]),
    ),
    "P50~: from the nodes' histograms (doubling buckets), interpolated",
  ].join("\n");
  printReport(report, options.json, () => ({ revision, loadAtStart, options, rounds, files, rss, loadedP50, idleP50, phases }));
}

const options = parseOptions();
const resources = new Resources();
await runBench({ nodes: resources.nodes, cleanup: () => resources.cleanup() }, options.timeoutMs, () => measure(resources, options));
