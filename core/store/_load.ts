// Opening a store directory: replays the journal into the layer table and maps, removes files a
// crash left behind (a retired layer's file, a half-written checkpoint), and checks that every
// layer file is as long as its map says. Damage is refused with the file named, never served.
import { ShoalError } from "../errors.ts";
import type { FileIO } from "./file-io.ts";
import { chunkShiftFor, DATA, entryFrom, validateChunkSize } from "./_chunks.ts";
import { LAYER_FILE_SUFFIX } from "./_data-path.ts";
import { type CommitRecord, encodeCommit, Journal } from "./_journal.ts";
import { LayerTable, type StoreLayer } from "./_layers.ts";

export const DEFAULT_CHUNK_SIZE_BYTES = 4 * 1024;

export function openJournal(io: FileIO, dir: string, chunkSizeOption: number | undefined): { table: LayerTable; journal: Journal } {
  if (chunkSizeOption !== undefined) validateChunkSize(chunkSizeOption);
  const journal = new Journal(io, dir);
  const records = journal.load();
  if (records === undefined) {
    const leftover = io.list(dir).find((name) => name.endsWith(LAYER_FILE_SUFFIX));
    if (leftover !== undefined) {
      throw new ShoalError("IO_ERROR", `${dir} holds layer files (${leftover}) but no journal naming them; restore this node's data directory from a backup, or remove it and let the group copy the pages back`);
    }
    const table = new LayerTable(chunkSizeOption ?? DEFAULT_CHUNK_SIZE_BYTES);
    journal.replaceNow(encodeCommit({ table: table.toRecord(), layers: [] }));
    return { table, journal };
  }
  const bad = (why: string) => new ShoalError("IO_ERROR", `the page-store journal ${journal.path} is damaged (${why}); restore this node's data directory from a backup`);
  const first = records[0]!.table;
  if (first === undefined || !Number.isSafeInteger(first.chunkSizeBytes)) throw bad("no layer table in its checkpoint");
  if (chunkSizeOption !== undefined && chunkSizeOption !== first.chunkSizeBytes) {
    throw new ShoalError("BAD_ARGUMENT", `the page store in ${dir} was created with ${first.chunkSizeBytes}-byte chunks; start it with that chunk size (or none)`);
  }
  const table = new LayerTable(first.chunkSizeBytes);
  for (const record of records) replay(table, record, bad);
  table.version = 0;
  return { table, journal };
}

function replay(table: LayerTable, record: CommitRecord, bad: (why: string) => Error): void {
  if (record.table !== undefined) table.applyRecord(record.table, bad);
  if (record.layers.length === 0) return;
  const byKey = new Map<number, StoreLayer>();
  for (const layer of table.all()) byKey.set(layer.key, layer);
  for (const { key, pages } of record.layers) {
    const layer = byKey.get(key);
    if (layer === undefined) throw bad(`pages of layer file ${key}, which no layer names`);
    const chunks = layer.pageSizeBytes === 0 ? 0 : Math.max(1, layer.pageSizeBytes >> chunkShiftFor(layer.pageSizeBytes, table.chunkSizeBytes));
    for (const { page, states } of pages) {
      if (states === undefined) {
        layer.pages.delete(page);
        continue;
      }
      if (states.length !== chunks || states.some((state) => state > 2)) throw bad(`page ${page} of layer '${layer.id}' has ${states.length} chunk states, not ${chunks}`);
      layer.pages.set(page, entryFrom(states));
    }
  }
}

/**
 * Opens every layer file the maps point into, checking it reaches the last chunk its map holds,
 * and removes the files of layers no table names (retired before a crash, or made and never committed).
 */
export function openLayerFiles(io: FileIO, dir: string, table: LayerTable, fileOf: (layer: StoreLayer) => string): void {
  const named = new Set<string>();
  for (const layer of table.all()) named.add(`${layer.key}${LAYER_FILE_SUFFIX}`);
  for (const name of io.list(dir)) if (name.endsWith(LAYER_FILE_SUFFIX) && !named.has(name)) io.unlink(`${dir}/${name}`);
  for (const layer of table.all()) {
    const needed = neededBytes(table, layer);
    if (needed === 0) continue;
    const filePath = fileOf(layer);
    if (!io.exists(filePath)) throw new ShoalError("IO_ERROR", `layer file ${filePath} of layer '${layer.id}' is missing though the journal says it holds data; restore this node's data directory from a backup`);
    layer.fd = io.open(filePath, false);
    const size = io.sizeOf(layer.fd);
    if (size < needed) {
      throw new ShoalError("IO_ERROR", `layer file ${filePath} of layer '${layer.id}' is ${size} bytes, shorter than the ${needed} its map says it holds; restore this node's data directory from a backup`);
    }
  }
}

/** Where the layer's last DATA chunk ends in its file. */
function neededBytes(table: LayerTable, layer: StoreLayer): number {
  let end = 0;
  const shift = layer.pageSizeBytes === 0 ? 0 : chunkShiftFor(layer.pageSizeBytes, table.chunkSizeBytes);
  for (const [page, entry] of layer.pages) {
    if (entry.dataChunks === 0) continue;
    const last = entry.states.lastIndexOf(DATA);
    end = Math.max(end, page * layer.pageSizeBytes + (last + 1) * 2 ** shift);
  }
  return end;
}
