// The page-move benchmark's measure 1 (test/bench/move.ts): MB/s of `route move` between two
// nodes against raw loopback TCP between two Bun processes (test/bench/_tcp-baseline.ts), into
// memory and into a file + fsync, interleaved round by round.
import * as fs from "node:fs";
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import type { TestNode } from "../integration/_cluster.ts";
import { bounded, loadAverage, progress, syncDisks } from "./_bench.ts";
import { cpuDuring, describeCpu, type CpuUse } from "./_move-cpu.ts";
import { ADMIN_TIMEOUT_MS, createVolume, differingChunks, fillVolume, mbps, MiB, MOVE_TIMEOUT_MS, PAGE_BYTES, shoalJson, startGroup, type MoveSummary, type Rate, type Resources } from "./_move-group.ts";
import type { Options } from "./_move-options.ts";

const BASELINE_TIMEOUT_MS = 300_000;

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

export async function measureThroughput(resources: Resources, options: Options) {
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
