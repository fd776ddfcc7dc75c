// Where a bulk job's time goes: wall time, CPU of the CLI and of each node (from /proc), and a
// CPU profile of the CLI (bun --cpu-prof) summarised by self time (its samples include idle
// time, so read it beside the CPU figures). Used to find what to remove.
// With --strace, each node's and the CLI's syscalls (strace -c -f) instead of the CLI's profile;
// with --perf, where the nodes' CPU and the CLI's go by library and symbol (perf record; JIT code
// unnamed).
//   bun test/bench/bulk-profile.ts [--size 256M] [--job export|archive|import|restore] [--bin PATH] [--strace]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../../core/geometry.ts";
import { run, TestCluster } from "../integration/_cluster.ts";
import { processCpuMs, ROOT } from "./_bench.ts";

const { values } = parseArgs({ options: { size: { type: "string", default: "256M" }, job: { type: "string", default: "export" }, bin: { type: "string" }, strace: { type: "boolean", default: false }, perf: { type: "boolean", default: false } } });
const sizeBytes = parseSize(values.size!);
const work = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-bulk-profile-"));
const cluster = await TestCluster.start(3);
try {
  // Set, so the CLI does not re-execute itself for it (which would drop --cpu-prof).
  const env = { SHOAL_NODE: cluster.nodes[0]!.meshAddress, MIMALLOC_PURGE_DELAY: "-1" };
  const cli = [process.execPath, path.join(ROOT, "cmd/shoal.ts")];
  const source = path.join(work, "source.img");
  await run(["bash", "-c", `head -c ${sizeBytes} /dev/urandom > ${source}`]);
  await run([...cli, "volume", "create", "bench", "--size", String(sizeBytes)], { env });
  await run([...cli, "volume", "import", "bench", source], { env });
  await run([...cli, "snap", "create", "bench", "--name", "s"], { env });
  const archive = path.join(work, "a.tar");
  await run([...cli, "archive", "create", "bench@s", "-o", archive], { env });
  const job = {
    export: `volume export bench - | cat > /dev/null`,
    archive: `archive create bench@s -o - | cat > /dev/null`,
    import: `volume import bench ${source}`,
    restore: `archive restore r --create -i ${archive}`,
  }[values.job!]!;
  const pids = cluster.nodes.map((node) => node.proc!.pid);
  const before = pids.map(processCpuMs);
  const started = performance.now();
  const profDir = path.join(work, "prof");
  // With --bin (a build to compare, say the one before a change) no profile: wall, CPU and peak RSS only.
  const traceDir = path.join(work, "strace");
  fs.mkdirSync(traceDir);
  const tracers = values.strace ? pids.map((pid) => Bun.spawn(["strace", "-c", "-f", "-o", path.join(traceDir, `node${pid}`), "-p", String(pid)], { stdout: "ignore", stderr: "ignore" })) : [];
  const perfData = path.join(work, "perf.data");
  if (values.perf) tracers.push(Bun.spawn(["perf", "record", "-F", "999", "-o", perfData, "-p", pids.join(",")], { stdout: "ignore", stderr: "ignore" }));
  if (values.strace || values.perf) await Bun.sleep(500); // attached before the job starts
  const cliCommand = values.bin ?? `${process.execPath} ${cli[1]}`;
  const perfCliData = path.join(work, "perf-cli.data");
  const profiled = values.perf ? `perf record -g -F 999 -o ${perfCliData} ${cliCommand}` : values.strace ? `strace -c -f -o ${path.join(traceDir, "cli")} ${cliCommand}` : values.bin ?? `${process.execPath} --cpu-prof --cpu-prof-dir=${profDir} ${cli[1]}`;
  const result = await run(["bash", "-o", "pipefail", "-c", `/usr/bin/time -f 'cli cpu %U+%S s, peak RSS %M KB, %R minor faults' ${profiled} ${job}`], { env, timeoutMs: 600_000 });
  const seconds = (performance.now() - started) / 1000;
  const nodeCpu = pids.map((pid, index) => (processCpuMs(pid) - before[index]!) / 1000);
  console.log(`${values.job} ${values.size}: ${seconds.toFixed(2)} s wall, ${(sizeBytes / seconds / 1e6).toFixed(0)} MB/s; ${result.stderr.trim().split("\n").filter((l) => l.startsWith("cli cpu")).join("")}; nodes' cpu ${nodeCpu.map((s) => s.toFixed(2)).join(", ")} s`);
  for (const tracer of tracers) tracer.kill("SIGINT");
  await Promise.all(tracers.map((tracer) => tracer.exited));
  if (values.perf) {
    for (const [who, data] of [["nodes", perfData], ["CLI", perfCliData]]) {
      const report = await run(["perf", "report", "-i", data!, "--no-children", "--sort", "dso,sym", "--stdio"], { timeoutMs: 120_000 });
      console.log(`where the CPU of the ${who} goes:`);
      console.log(report.stdout.split("\n").filter((line) => line.trim() !== "" && !line.startsWith("#")).slice(0, 30).join("\n"));
    }
  }
  for (const file of fs.readdirSync(traceDir)) {
    console.log(`syscalls of ${file}:`);
    console.log(fs.readFileSync(path.join(traceDir, file), "utf8").split("\n").slice(0, 14).join("\n"));
  }
  for (const file of values.bin || values.strace || values.perf ? [] : fs.readdirSync(profDir)) {
    const profile = JSON.parse(fs.readFileSync(path.join(profDir, file), "utf8")) as { nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[]; samples: number[]; timeDeltas: number[] };
    const self = new Map<number, number>();
    profile.samples.forEach((id, index) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[index] ?? 0)));
    const byName = new Map<string, number>();
    for (const node of profile.nodes) {
      const key = `${node.callFrame.functionName || "(anon)"} ${path.basename(node.callFrame.url)}:${node.callFrame.lineNumber}`;
      byName.set(key, (byName.get(key) ?? 0) + (self.get(node.id) ?? 0));
    }
    const total = [...byName.values()].reduce((a, b) => a + b, 0);
    for (const [name, us] of [...byName].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log(`  ${((us / total) * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${name}`);
  }
} finally {
  await cluster.stop();
  fs.rmSync(work, { recursive: true, force: true });
}
