// Bulk jobs of the CLI on a three-node group against nbdkit's file plugin in the same run, rounds
// interleaved so a busy neighbour on the shared CPUs hits anchor and ours alike:
//   export/archive: `nbdcopy nbd://nbdkit - | cat` vs `volume export VOL - | cat`, `archive create -o - | cat`
//   import/restore: `nbdcopy FILE nbd://nbdkit` vs `volume import VOL FILE`, `archive restore --create`
// Prints MB/s, the ratio to the anchor of the same round, the CLI's peak RSS, and each node's peak
// RSS (VmHWM) at the end. Needs nbdkit and nbdcopy (`apt-get install -y nbdkit libnbd-bin`).
// The write anchor overwrites pages nbdkit's file already has in the page cache and never syncs;
// import and restore make new layer files and FLUSH at the end. So the write jobs also get a
// second anchor doing their work: `nbdcopy --flush FILE` into nbdkit on a new sparse file (on this
// VM a page of memory the kernel touches for the first time costs ~3 ms per MiB: free pages are
// handed back to the host).
// Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/bulk.ts [--size 1G] [--rounds 2] [--page-size 4M] [--only read|write] [--bin PATH]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../../core/geometry.ts";
import { freePort, run, TestCluster, waitFor } from "../integration/_cluster.ts";
import { buildShoal, processCpuMs, progress, syncDisks } from "./_bench.ts";

const { values } = parseArgs({
  options: { size: { type: "string", default: "1G" }, rounds: { type: "string", default: "2" }, "page-size": { type: "string", default: "4M" }, only: { type: "string" }, bin: { type: "string" } },
});
const runsReads = values.only !== "write";
const runsWrites = values.only !== "read";
const sizeBytes = parseSize(values.size!);
const rounds = Number(values.rounds);
const MiB = 1024 * 1024;
const RSS_TARGET_KB = 256 * 1000;

for (const tool of ["nbdkit", "nbdcopy"]) {
  if ((await run(["which", tool])).exitCode !== 0) throw new Error(`${tool} is required: apt-get install -y nbdkit libnbd-bin`);
}

interface Timed {
  seconds: number;
  rssKb: number;
  /** CPU seconds of the process `%RSS%` wraps. */
  cpuSeconds: number;
}

/** Runs a shell pipeline; `%RSS%` in it becomes a `time` prefix whose peak RSS is reported. */
async function timed(work: string, pipeline: string, env: Record<string, string> = {}): Promise<Timed> {
  const rssFile = path.join(work, "rss");
  fs.rmSync(rssFile, { force: true });
  const command = pipeline.replace("%RSS%", `/usr/bin/time -f '%M %U %S' -o ${rssFile}`);
  await syncDisks();
  const started = performance.now();
  const result = await run(["bash", "-o", "pipefail", "-c", command], { env, timeoutMs: 900_000 });
  const seconds = (performance.now() - started) / 1000;
  if (result.exitCode !== 0) throw new Error(`${command} failed: ${result.stderr}`);
  const [rss, user, system] = fs.existsSync(rssFile) ? fs.readFileSync(rssFile, "utf8").trim().split("\n").pop()!.split(" ").map(Number) : [];
  return { seconds, rssKb: rss ?? NaN, cpuSeconds: (user ?? NaN) + (system ?? NaN) };
}

function writeSource(file: string): void {
  const random = new Uint8Array(64 * MiB);
  crypto.getRandomValues(random.subarray(0, 65536));
  for (let at = 65536; at < random.byteLength; at += 65536) random.copyWithin(at, 0, 65536);
  const fd = fs.openSync(file, "w");
  for (let at = 0; at < sizeBytes; at += random.byteLength) {
    for (let word = 0; word < random.byteLength; word += 65536) new DataView(random.buffer).setFloat64(word, at + word); // no two 64 KiB alike
    fs.writeSync(fd, random.subarray(0, Math.min(random.byteLength, sizeBytes - at)));
  }
  fs.closeSync(fd);
}

function nodeRssKb(pid: number): number {
  const match = /VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Number(match[1]) : NaN;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-bulk-bench-"));
const bin = await buildShoal(work, values.bin);
process.env.SHOAL_BIN = bin;
const source = path.join(work, "source.img");
const anchorImage = path.join(work, "anchor.img");
writeSource(source);
fs.copyFileSync(source, anchorImage);
const nbdkitPort = await freePort();
const nbdkit = Bun.spawn(["nbdkit", "-f", "-i", "127.0.0.1", "-p", String(nbdkitPort), "file", anchorImage], { stdout: "ignore", stderr: "inherit" });
const anchorUrl = `nbd://127.0.0.1:${nbdkitPort}`;
const cluster = await TestCluster.start(3);
const results = new Map<string, { mbps: number[]; ratios: number[]; fairRatios: number[]; rssKb: number[]; cliCpu: number[]; nodesCpu: number[] }>();
/** The group's CPU seconds over `work`: beside the CLI's, where a job's cost lies. */
const nodesCpu = async (work: () => Promise<Timed>): Promise<Timed & { nodesCpuSeconds: number }> => {
  const pids = cluster.nodes.map((node) => node.proc!.pid);
  const before = pids.map(processCpuMs);
  const timedWork = await work();
  return { ...timedWork, nodesCpuSeconds: pids.reduce((sum, pid, index) => sum + processCpuMs(pid) - before[index]!, 0) / 1000 };
};
/** nbdcopy's CPU plus nbdkit's over `work`, in cpuSeconds. */
const anchorCpu = async (work: () => Promise<Timed>): Promise<Timed> => {
  const before = processCpuMs(nbdkit.pid);
  const timedWork = await work();
  return { ...timedWork, cpuSeconds: timedWork.cpuSeconds + (processCpuMs(nbdkit.pid) - before) / 1000 };
};
/** nbdcopy --flush FILE into nbdkit serving a new sparse file: the write anchor doing our jobs' work. */
const freshAnchorWrite = async (): Promise<Timed> => {
  const fresh = path.join(work, "fresh.img");
  fs.writeFileSync(fresh, "");
  fs.truncateSync(fresh, sizeBytes);
  const port = await freePort();
  const server = Bun.spawn(["nbdkit", "-f", "-i", "127.0.0.1", "-p", String(port), "file", fresh], { stdout: "ignore", stderr: "inherit" });
  try {
    const url = `nbd://127.0.0.1:${port}`;
    await waitFor("nbdkit to listen", async () => (await run(["nbdinfo", "--size", url])).exitCode === 0);
    const before = processCpuMs(server.pid);
    const timedWork = await timed(work, `%RSS% nbdcopy --flush ${source} ${url}`);
    return { ...timedWork, cpuSeconds: timedWork.cpuSeconds + (processCpuMs(server.pid) - before) / 1000 };
  } finally {
    server.kill();
    await server.exited;
    fs.rmSync(fresh, { force: true });
  }
};
const note = (label: string, ours: Timed & { nodesCpuSeconds: number }, anchor: Timed, fairAnchor?: Timed) => {
  const entry = results.get(label) ?? { mbps: [], ratios: [], fairRatios: [], rssKb: [], cliCpu: [], nodesCpu: [] };
  if (fairAnchor) entry.fairRatios.push(fairAnchor.seconds / ours.seconds);
  entry.cliCpu.push(ours.cpuSeconds);
  entry.nodesCpu.push(ours.nodesCpuSeconds);
  entry.mbps.push(sizeBytes / ours.seconds / 1e6);
  entry.ratios.push(anchor.seconds / ours.seconds);
  entry.rssKb.push(ours.rssKb);
  results.set(label, entry);
  progress(`${label}: ${(sizeBytes / ours.seconds / 1e6).toFixed(0)} MB/s, anchor ${(sizeBytes / anchor.seconds / 1e6).toFixed(0)} MB/s, ratio ${(anchor.seconds / ours.seconds).toFixed(2)}, RSS ${(ours.rssKb / 1000).toFixed(0)} MB`);
};
try {
  await waitFor("nbdkit to listen", async () => (await run(["nbdinfo", "--size", anchorUrl])).exitCode === 0);
  const env = { SHOAL_NODE: cluster.nodes[0]!.meshAddress };
  await run([bin, "volume", "create", "bench", "--size", String(sizeBytes), "--page-size", values["page-size"]!], { env });
  await run([bin, "volume", "import", "bench", source], { env, timeoutMs: 900_000 });
  await run([bin, "snap", "create", "bench", "--name", "s"], { env });
  const archiveFile = path.join(work, "bench.tar");
  await run([bin, "archive", "create", "bench@s", "-o", archiveFile], { env, timeoutMs: 900_000 });
  const anchorReads: Timed[] = [];
  const anchorWrites: Timed[] = [];
  const freshAnchorWrites: Timed[] = [];
  for (let round = 0; round < rounds; round++) {
    if (runsReads) {
      const anchorRead = await anchorCpu(() => timed(work, `%RSS% nbdcopy ${anchorUrl} - | cat > /dev/null`));
      anchorReads.push(anchorRead);
      note("volume export VOL - | cat", await nodesCpu(() => timed(work, `%RSS% ${bin} volume export bench - | cat > /dev/null`, env)), anchorRead);
      note("archive create VOL@SNAP -o - | cat", await nodesCpu(() => timed(work, `%RSS% ${bin} archive create bench@s -o - | cat > /dev/null`, env)), anchorRead);
    }
    if (!runsWrites) continue;
    const anchorWrite = await anchorCpu(() => timed(work, `%RSS% nbdcopy ${source} ${anchorUrl}`));
    anchorWrites.push(anchorWrite);
    const freshAnchor = await freshAnchorWrite();
    freshAnchorWrites.push(freshAnchor);
    note("volume import VOL FILE", await nodesCpu(() => timed(work, `%RSS% ${bin} volume import bench ${source}`, env)), anchorWrite, freshAnchor);
    note("archive restore NEW --create", await nodesCpu(() => timed(work, `%RSS% ${bin} archive restore r${round} --create -i ${archiveFile}`, env)), anchorWrite, freshAnchor);
    await run([bin, "volume", "delete", `r${round}`], { env });
  }
  const mbps = (list: Timed[]) => list.map((t) => (sizeBytes / t.seconds / 1e6).toFixed(0)).join(", ");
  console.log(`bulk jobs, ${values.size} of random data, three nodes, ${rounds} interleaved round(s), load average ${os.loadavg()[0]!.toFixed(1)}`);
  console.log(`anchor nbdcopy nbd://nbdkit - | cat: ${mbps(anchorReads)} MB/s; nbdcopy FILE nbd://nbdkit: ${mbps(anchorWrites)} MB/s`);
  const cpuPerGiB = (list: Timed[]) => list.map((t) => (t.cpuSeconds / (sizeBytes / 1024 ** 3)).toFixed(1)).join(", ");
  console.log(`anchor nbdcopy --flush FILE nbd://nbdkit (new sparse file): ${mbps(freshAnchorWrites)} MB/s`);
  console.log(`anchor CPU s per GiB, nbdcopy + nbdkit: read ${cpuPerGiB(anchorReads)}; write ${cpuPerGiB(anchorWrites)}; write --flush to a new file ${cpuPerGiB(freshAnchorWrites)}`);
  for (const [label, entry] of results) {
    const list = (values: number[], digits: number) => values.map((value) => value.toFixed(digits)).join(", ");
    const rss = Math.max(...entry.rssKb);
    const fair = entry.fairRatios.length > 0 ? ` (vs --flush to a new file ${list(entry.fairRatios, 2)})` : "";
    console.log(`${label.padEnd(36)} ${list(entry.mbps, 0)} MB/s  ratio ${list(entry.ratios, 2)}${fair}  CLI peak RSS ${(rss / 1000).toFixed(0)} MB (${rss <= RSS_TARGET_KB ? "met" : "not met"} < 256 MB)`);
    const perGiB = (seconds: number[]) => list(seconds.map((s) => s / (sizeBytes / 1024 ** 3)), 1);
    console.log(`${"".padEnd(36)} CPU s per GiB: CLI ${perGiB(entry.cliCpu)}; nodes together ${perGiB(entry.nodesCpu)}`);
  }
  const nodeRss = cluster.nodes.map((node) => nodeRssKb(node.proc!.pid));
  console.log(`nodes' peak RSS (VmHWM): ${nodeRss.map((kb) => `${(kb / 1000).toFixed(0)} MB`).join(", ")} (${nodeRss.every((kb) => kb <= RSS_TARGET_KB) ? "met" : "not met"} < 256 MB)`);
} finally {
  nbdkit.kill();
  await cluster.stop();
  fs.rmSync(work, { recursive: true, force: true });
}
