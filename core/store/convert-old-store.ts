// Carries a data directory of the one-file-per-page store (<data>/pages/) over to the
// extent-file store when a node starts: every page of every layer is read from the old page
// files (old-page-directory.ts) and installed through the page-move path (importPage
// keeps each layer's chunk states and its stacking) into <data>/store.converting/, made durable,
// renamed to <data>/store, and only then is pages/ removed. A crash at any point leaves either
// the old directory whole (the conversion starts over) or the new store whole (the removal of
// the old one finishes).
import * as fs from "node:fs";
import * as path from "node:path";
import { OldPageDirectory } from "./old-page-directory.ts";
import { RealFileIO } from "./file-io.ts";
import { ImportBatch, OLD_PAGES_DIR_NAME, PageStore, STORE_DIR_NAME } from "./page-store.ts";

const CONVERTING_DIR_NAME = "store.converting";
/** Pages copied between two commits of the new store: bounds what a crash makes it redo. */
const PAGES_PER_COMMIT = 256;

/** Converts an old-format data directory if there is one; returns the pages copied (0: nothing to do). */
export async function convertOldStore(dataDir: string, log: (message: string) => void): Promise<number> {
  const oldDir = path.join(dataDir, OLD_PAGES_DIR_NAME);
  if (!fs.existsSync(oldDir)) return 0;
  if (fs.existsSync(path.join(dataDir, STORE_DIR_NAME, "journal"))) {
    // Converted before a crash cut the old directory's removal short.
    fs.rmSync(oldDir, { recursive: true, force: true });
    return 0;
  }
  if (fs.readdirSync(oldDir).length === 0) {
    fs.rmSync(oldDir, { recursive: true, force: true });
    return 0;
  }
  const converting = path.join(dataDir, CONVERTING_DIR_NAME);
  fs.rmSync(converting, { recursive: true, force: true }); // a conversion a crash interrupted
  log(`converting ${oldDir} (one file per page) to ${path.join(dataDir, STORE_DIR_NAME)} (one file per layer)`);
  const source = new OldPageDirectory(oldDir);
  const target = new PageStore({ dir: converting, chunkSizeBytes: source.chunkSizeBytes });
  let copied = 0;
  try {
    copied = await copyPages(source, target);
    // Layers that hold no page anywhere came over with no page: made here, parents first.
    for (const layer of source.layers) if (!target.hasLayer(layer.id)) target.createLayer(layer.id, layer.parent);
    // A deletion a crash interrupted in the old store is finished in the new one.
    for (const layer of source.layers) if (layer.deleting) await target.deleteLayer(layer.id);
    await target.flush();
  } finally {
    target.close();
  }
  fs.renameSync(path.join(converting, STORE_DIR_NAME), path.join(dataDir, STORE_DIR_NAME));
  new RealFileIO().syncDirNow(dataDir);
  fs.rmSync(oldDir, { recursive: true, force: true });
  fs.rmSync(converting, { recursive: true, force: true });
  log(`converted ${copied} pages of ${source.layers.length} layers; ${oldDir} removed`);
  return copied;
}

async function copyPages(source: OldPageDirectory, target: PageStore): Promise<number> {
  const all = () => true;
  const pages = source.pages();
  let batch = new ImportBatch();
  let inBatch = 0;
  for (const page of pages) {
    target.importPage(page, source.exportPage(page), all, batch);
    if (++inBatch < PAGES_PER_COMMIT) continue;
    await target.syncImport(batch);
    batch = new ImportBatch();
    inBatch = 0;
  }
  await target.syncImport(batch);
  return pages.length;
}
