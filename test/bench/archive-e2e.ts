// Archive and restore end to end on a three-node group, against anchors measured in the same
// run: `archive create` of a snapshot with 1 GiB written, to /dev/null, vs `cat` of the same
// page data from the nodes' page files (in page cache); `archive restore --create` vs nbdcopy
// writing the same bytes into a fresh volume. Peak RSS of the shoal CLI for both.
// Not a *.test.ts: `bun test` skips it.
//
//   bun test/bench/archive-e2e.ts [--size 1G]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { parseSize } from "../../core/geometry.ts";
import { run, shoalCommand, TestCluster } from "../integration/_cluster.ts";

const { values } = parseArgs({ options: { size: { type: "string", default: "1G" } } });
const sizeBytes = parseSize(values.size!);
const MiB = 1024 * 1024;
const RSS_TARGET_KB = 256 * 1000;

async function timed(command: string[], env: Record<string, string> = {}): Promise<{ seconds: number; maxRssKb: number; stderr: string }> {
  const started = performance.now();
  const result = await run(["/usr/bin/time", "-f", "maxrss=%M", ...command], { env, timeoutMs: 600_000 });
  const seconds = (performance.now() - started) / 1000;
  if (result.exitCode !== 0) throw new Error(`${command.join(" ")} failed: ${result.stderr}`);
  const match = /maxrss=(\d+)/.exec(result.stderr);
  return { seconds, maxRssKb: match ? Number(match[1]) : NaN, stderr: result.stderr };
}

function row(label: string, seconds: number, anchorSeconds: number, target: number, rssKb?: number): string {
  const mbps = sizeBytes / seconds / 1e6;
  const ratio = anchorSeconds / seconds;
  const rss = rssKb === undefined ? "" : `  peak RSS ${(rssKb / 1000).toFixed(0)} MB (${rssKb <= RSS_TARGET_KB ? "met" : "not met"} < 256 MB)`;
  return `${label.padEnd(34)} ${mbps.toFixed(0).padStart(6)} MB/s  ratio ${ratio.toFixed(2)}  target >= ${target}: ${ratio >= target ? "met" : "not met"}${rss}`;
}

const cluster = await TestCluster.start(3);
const work = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-archive-bench-"));
try {
  const env = { SHOAL_NODE: cluster.nodes[0]!.meshAddress };
  const source = path.join(work, "source.img");
  const random = new Uint8Array(64 * MiB);
  crypto.getRandomValues(random.subarray(0, 65536));
  for (let at = 65536; at < random.byteLength; at += 65536) random.copyWithin(at, 0, 65536);
  const file = fs.openSync(source, "w");
  for (let at = 0; at < sizeBytes; at += random.byteLength) {
    new DataView(random.buffer).setUint32(0, at / random.byteLength); // distinct chunks
    fs.writeSync(file, random.subarray(0, Math.min(random.byteLength, sizeBytes - at)));
  }
  fs.closeSync(file);
  const shoal = shoalCommand();
  await run([...shoal, "volume", "create", "bench", "--size", String(sizeBytes)], { env });
  await run(["nbdcopy", source, cluster.nodes[0]!.nbdUrl("bench")]);
  await run([...shoal, "snap", "create", "bench", "--name", "s"], { env });

  // Anchor 1: cat of the same page data from the nodes' page files (warm them first).
  const pageFiles = cluster.nodes.flatMap((node) => {
    const pagesDir = path.join(node.dataDir, "pages");
    return fs.readdirSync(pagesDir, { recursive: true }).map((name) => path.join(pagesDir, String(name))).filter((p) => path.basename(path.dirname(p)).includes("~") && fs.existsSync(p) && fs.statSync(p).isFile());
  });
  const catCommand = ["bash", "-c", `cat ${pageFiles.map((p) => `'${p}'`).join(" ")} > /dev/null`];
  await timed(catCommand);
  const cat = await timed(catCommand);
  const archive = await timed([...shoal, "archive", "create", "bench@s", "-o", "/dev/null"], env);
  const archiveFile = path.join(work, "bench.tar");
  await run([...shoal, "archive", "create", "bench@s", "-o", archiveFile], { env });

  // Anchor 2: nbdcopy of the same bytes into a fresh volume.
  await run([...shoal, "volume", "create", "copy", "--size", String(sizeBytes)], { env });
  const nbdcopy = await timed(["nbdcopy", source, cluster.nodes[1]!.nbdUrl("copy")]);
  const restore = await timed([...shoal, "archive", "restore", "restored", "--create", "-i", archiveFile], env);

  console.log(`archive/restore of ${values.size} written, three nodes, load average ${os.loadavg()[0]!.toFixed(1)}`);
  console.log(`cat of page files (anchor)          ${(sizeBytes / cat.seconds / 1e6).toFixed(0).padStart(6)} MB/s`);
  console.log(row("shoal archive create -o /dev/null", archive.seconds, cat.seconds, 0.8, archive.maxRssKb));
  console.log(`nbdcopy into a fresh volume (anchor)${(sizeBytes / nbdcopy.seconds / 1e6).toFixed(0).padStart(6)} MB/s`);
  console.log(row("shoal archive restore --create", restore.seconds, nbdcopy.seconds, 0.8, restore.maxRssKb));
} finally {
  await cluster.stop();
  fs.rmSync(work, { recursive: true, force: true });
}
