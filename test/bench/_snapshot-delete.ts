// The snapshot benchmark's delete stall (test/bench/snapshot.ts, measure 5): write p99 while a
// snapshot that alone holds --delete-size is deleted and its space freed.
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import { diskUsedBytes } from "./_snapshot-delete-watch.ts";
import type { TestNode } from "../integration/_cluster.ts";
import { fillRandom, PacedWriteLoad } from "./_write-load.ts";
import { progress, stats, syncDisks } from "./_bench.ts";
import { ADMIN_TIMEOUT_MS, createSnapshot, FILL_WRITE_BYTES, fillVolume, MiB, preparedVolume, sleep, type Context } from "./_snapshot-group.ts";
import { health, steadyWindow } from "./_snapshot-load-stats.ts";

const DELETE_WINDOW_MIN_MS = 1000;
const WATCHER = path.join(import.meta.dir, "_snapshot-delete-watch.ts");

// ---- 5: deleting a snapshot that alone holds --delete-size

async function snapshotHeldBytes(node: TestNode, volume: string, name: string): Promise<number | null> {
  const listed = (await adminRequest(node.meshAddress, "admin.snap.list", { volume }, ADMIN_TIMEOUT_MS)).snapshots as { name: string; bytesHeldOnlyByIt: number | null }[];
  return listed.find((snapshot) => snapshot.name === name)?.bytesHeldOnlyByIt ?? null;
}

/** Reads a child's stdout a line at a time. */
async function* linesOf(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0) {
      yield pending.slice(0, newline);
      pending = pending.slice(newline + 1);
    }
  }
}

/**
 * The deletion watcher, loaded and idle: the polling for the layer's deletion runs in a child
 * process (_snapshot-delete-watch.ts) so that its synchronous journal reads do not stall this
 * process, whose event loop times every client write. `waitForDeletion` starts its polling and
 * waits until no node's layer table names the layer and disk usage stopped dropping; each of its
 * lines is stamped here on arrival (a pipe's delay, well under its 100 ms poll).
 */
async function startDeletionWatcher(nodes: TestNode[], layerId: string) {
  const watcher = Bun.spawn([process.execPath, WATCHER, layerId, ...nodes.map((node) => node.dataDir)], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  const lines = linesOf(watcher.stdout);
  const failed = async (): Promise<never> => {
    const exitCode = await watcher.exited;
    throw new Error(`deletion watcher exited ${exitCode}: ${(await new Response(watcher.stderr).text()).trim()}`);
  };
  if ((await lines.next()).value !== "ready") await failed();
  const waitForDeletion = async (): Promise<{ layerGoneMs: number; settledMs: number; usageAfterBytes: number }> => {
    watcher.stdin.write("go\n");
    watcher.stdin.flush();
    let layerGoneMs = Number.NaN;
    for await (const line of lines) {
      if (line === "gone") layerGoneMs = performance.now();
      const settled = /^settled (\d+)$/.exec(line);
      if (settled) return { layerGoneMs, settledMs: performance.now(), usageAfterBytes: Number(settled[1]) };
    }
    return failed();
  };
  return { waitForDeletion, kill: () => watcher.kill() };
}

export async function measureDelete(context: Context) {
  const { nodes, options } = context;
  const volume = "del";
  const bytes = options.deleteSizeBytes;
  const uid = await preparedVolume(context, volume, bytes);
  const snapshot = await createSnapshot(nodes[0]!, volume, "old", "hold");
  if (snapshot.error) throw new Error(`snapshot del@old failed: ${snapshot.error}`);
  const snapshotId = String(((await adminRequest(nodes[0]!.meshAddress, "admin.snap.list", { volume }, ADMIN_TIMEOUT_MS)).snapshots as { name: string; snapshotId: string }[]).find((s) => s.name === "old")!.snapshotId);
  // Whole 1 MiB writes cover whole chunks: no copy-up, the head simply takes every chunk.
  const overwriteMs = await fillVolume(nodes, volume, bytes, fillRandom(new Uint8Array(FILL_WRITE_BYTES)));
  progress(`del: overwrote ${bytes / MiB} MiB after the snapshot in ${(overwriteMs / 1000).toFixed(1)} s; syncing`);
  await syncDisks();
  const heldBytes = await snapshotHeldBytes(nodes[0]!, volume, "old");
  const load = await PacedWriteLoad.start(nodes, volume, bytes, options);
  const startedMs = performance.now();
  let watcher: Awaited<ReturnType<typeof startDeletionWatcher>> | undefined;
  try {
    const steady = await steadyWindow(load, options.durationMs, nodes);
    const usageBeforeBytes = diskUsedBytes(nodes[0]!.dataDir);
    watcher = await startDeletionWatcher(nodes, `${uid}@${snapshotId}`);
    progress(`del: steady p99 ${steady.stats.p99Ms.toFixed(2)} ms; deleting the snapshot`);
    const fromMs = performance.now();
    await adminRequest(nodes[0]!.meshAddress, "admin.snap.delete", { volume, name: "old" }, ADMIN_TIMEOUT_MS);
    const deleteCallMs = performance.now() - fromMs;
    const done = await watcher.waitForDeletion();
    const toMs = Math.max(done.settledMs, fromMs + DELETE_WINDOW_MIN_MS);
    await sleep(toMs - performance.now());
    await load.stop();
    const during = stats(load.log.issuedIn(fromMs, toMs));
    return {
      snapshotHeldBytes: heldBytes,
      steady: steady.stats,
      during,
      deleteCallMs,
      layerGoneAfterMs: done.layerGoneMs - fromMs,
      windowMs: toMs - fromMs,
      freedBytes: usageBeforeBytes - done.usageAfterBytes,
      ratio: during.p99Ms / steady.stats.p99Ms,
      load: health(load, performance.now() - startedMs),
    };
  } finally {
    watcher?.kill();
    await load.stop().catch(() => undefined);
  }
}
