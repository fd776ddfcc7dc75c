// The snapshot benchmark's delete stall (test/bench/snapshot.ts, measure 5): write p99 while a
// snapshot that alone holds --delete-size is deleted and its space freed.
import * as fs from "node:fs";
import * as path from "node:path";
import { adminRequest } from "../../cmd/_cli.ts";
import { lastTableIn } from "../../core/store/_journal.ts";
import type { TestNode } from "../integration/_cluster.ts";
import { fillRandom, PacedWriteLoad } from "./_write-load.ts";
import { progress, stats, syncDisks } from "./_bench.ts";
import { ADMIN_TIMEOUT_MS, createSnapshot, FILL_WRITE_BYTES, fillVolume, MiB, preparedVolume, sleep, type Context } from "./_snapshot-group.ts";
import { health, steadyWindow } from "./_snapshot-load-stats.ts";

const DELETE_TIMEOUT_MS = 120_000;
const DELETE_POLL_MS = 100;
/** Disk use that has not dropped by more than this over DELETE_SETTLE_POLLS polls has settled. */
const DELETE_SETTLE_BYTES = 1 * MiB;
const DELETE_SETTLE_POLLS = 5;
const DELETE_WINDOW_MIN_MS = 1000;

// ---- 5: deleting a snapshot that alone holds --delete-size

/**
 * Bytes in use on the filesystem holding the nodes' data dirs. statfs, not `du`: du walks every
 * page file of every layer (tens of thousands by now) and, polled every 100 ms on two CPUs, would
 * itself slow the writes it is watching. The load only overwrites chunks the head already holds,
 * so it allocates nothing: what changes here is the deletion (and anything else on this disk).
 */
function diskUsedBytes(nodes: TestNode[]): number {
  const stats = fs.statfsSync(nodes[0]!.dataDir);
  return (stats.blocks - stats.bfree) * stats.bsize;
}

/** Nodes whose layer table (as last saved: the store's journal, or a one-file-per-page store's layers.json) still names the layer. */
function nodesHoldingLayer(nodes: TestNode[], layerId: string): string[] {
  return nodes.filter((node) => {
    const oldTable = path.join(node.dataDir, "pages", "layers.json");
    const journal = path.join(node.dataDir, "store", "journal");
    const layers = fs.existsSync(oldTable) ? (JSON.parse(fs.readFileSync(oldTable, "utf8")) as { layers: { id: string }[] }).layers : (lastTableIn(fs.readFileSync(journal), journal)?.layers ?? []);
    return layers.some((layer) => layer.id === layerId);
  }).map((node) => node.id);
}

async function snapshotHeldBytes(node: TestNode, volume: string, name: string): Promise<number | null> {
  const listed = (await adminRequest(node.meshAddress, "admin.snap.list", { volume }, ADMIN_TIMEOUT_MS)).snapshots as { name: string; bytesHeldOnlyByIt: number | null }[];
  return listed.find((snapshot) => snapshot.name === name)?.bytesHeldOnlyByIt ?? null;
}

/** Polls until no node's layer table names the layer and disk usage stopped dropping. */
async function waitForDeletion(nodes: TestNode[], layerId: string): Promise<{ layerGoneMs: number; settledMs: number; usageAfterBytes: number }> {
  const startMs = performance.now();
  let layerGoneMs = Number.NaN;
  const usage: number[] = [];
  while (performance.now() - startMs < DELETE_TIMEOUT_MS) {
    usage.push(diskUsedBytes(nodes));
    if (Number.isNaN(layerGoneMs) && nodesHoldingLayer(nodes, layerId).length === 0) layerGoneMs = performance.now();
    const recent = usage.slice(-DELETE_SETTLE_POLLS);
    const settled = recent.length === DELETE_SETTLE_POLLS && recent[0]! - recent[recent.length - 1]! <= DELETE_SETTLE_BYTES;
    if (!Number.isNaN(layerGoneMs) && settled) return { layerGoneMs, settledMs: performance.now(), usageAfterBytes: usage[usage.length - 1]! };
    await sleep(DELETE_POLL_MS);
  }
  throw new Error(`the deletion of layer ${layerId} did not finish within ${DELETE_TIMEOUT_MS} ms (still named by ${nodesHoldingLayer(nodes, layerId).join(", ") || "no node"})`);
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
  try {
    const steady = await steadyWindow(load, options.durationMs, nodes);
    const usageBeforeBytes = diskUsedBytes(nodes);
    progress(`del: steady p99 ${steady.stats.p99Ms.toFixed(2)} ms; deleting the snapshot`);
    const fromMs = performance.now();
    await adminRequest(nodes[0]!.meshAddress, "admin.snap.delete", { volume, name: "old" }, ADMIN_TIMEOUT_MS);
    const deleteCallMs = performance.now() - fromMs;
    const done = await waitForDeletion(nodes, `${uid}@${snapshotId}`);
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
    await load.stop().catch(() => undefined);
  }
}
