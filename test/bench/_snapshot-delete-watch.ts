// Watches a snapshot layer's deletion for the snapshot benchmark's delete stall (measure 5), in
// its own process. Reading and parsing every node's journal each 100 ms is synchronous work; done
// in the load generator it stalled that process's event loop (~350 ms) and the stall was counted
// as client write latency. Here it costs the load process nothing but reading the lines below.
//
//   bun test/bench/_snapshot-delete-watch.ts LAYER_ID DATA_DIR...
//
// Prints `ready` once loaded, starts polling when a line arrives on stdin (so that its own start-up
// falls outside the measured window), then prints `gone` once no node's layer table names the layer, then `settled BYTES` (disk use in
// bytes) once disk use also stopped dropping; exits 1 with one line on stderr on timeout.
import * as fs from "node:fs";
import * as path from "node:path";
import { lastTableIn } from "../../core/store/_journal.ts";

export const DELETE_TIMEOUT_MS = 120_000;
const DELETE_POLL_MS = 100;
/** Disk use that has not dropped by more than this over DELETE_SETTLE_POLLS polls has settled. */
const DELETE_SETTLE_BYTES = 1024 * 1024;
const DELETE_SETTLE_POLLS = 5;

/**
 * Bytes in use on the filesystem holding the nodes' data dirs. statfs, not `du`: du walks every
 * page file of every layer (tens of thousands by now) and, polled every 100 ms on two CPUs, would
 * itself slow the writes it is watching. The load only overwrites chunks the head already holds,
 * so it allocates nothing: what changes here is the deletion (and anything else on this disk).
 */
export function diskUsedBytes(dataDir: string): number {
  const stats = fs.statfsSync(dataDir);
  return (stats.blocks - stats.bfree) * stats.bsize;
}

/** Data dirs whose layer table (as last saved: the store's journal, or a one-file-per-page store's layers.json) still names the layer. */
export function dirsHoldingLayer(dataDirs: string[], layerId: string): string[] {
  return dataDirs.filter((dataDir) => {
    const oldTable = path.join(dataDir, "pages", "layers.json");
    const journal = path.join(dataDir, "store", "journal");
    const layers = fs.existsSync(oldTable) ? (JSON.parse(fs.readFileSync(oldTable, "utf8")) as { layers: { id: string }[] }).layers : (lastTableIn(fs.readFileSync(journal), journal)?.layers ?? []);
    return layers.some((layer) => layer.id === layerId);
  });
}

async function watch(layerId: string, dataDirs: string[]): Promise<void> {
  const startMs = performance.now();
  let gone = false;
  const usage: number[] = [];
  while (performance.now() - startMs < DELETE_TIMEOUT_MS) {
    usage.push(diskUsedBytes(dataDirs[0]!));
    if (!gone && dirsHoldingLayer(dataDirs, layerId).length === 0) {
      gone = true;
      console.log("gone");
    }
    const recent = usage.slice(-DELETE_SETTLE_POLLS);
    const settled = recent.length === DELETE_SETTLE_POLLS && recent[0]! - recent[recent.length - 1]! <= DELETE_SETTLE_BYTES;
    if (gone && settled) {
      console.log(`settled ${usage[usage.length - 1]}`);
      return;
    }
    await Bun.sleep(DELETE_POLL_MS);
  }
  console.error(`the deletion of layer ${layerId} did not finish within ${DELETE_TIMEOUT_MS} ms (still named in ${dirsHoldingLayer(dataDirs, layerId).join(", ") || "no data dir"})`);
  process.exit(1);
}

if (import.meta.main) {
  const [layerId, ...dataDirs] = process.argv.slice(2);
  if (!layerId || dataDirs.length === 0) {
    console.error("usage: bun test/bench/_snapshot-delete-watch.ts LAYER_ID DATA_DIR...");
    process.exit(2);
  }
  console.log("ready");
  for await (const _ of console) break;
  await watch(layerId, dataDirs);
}
