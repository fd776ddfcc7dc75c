// Opening a store directory: replays the journal into the layer table and maps, removes files a
// crash left behind (a removed layer's file, a half-written checkpoint), and checks that every
// layer file is as long as its map says. Damage is refused with the file named, never served.
import { ShoalError } from "../errors.ts";
import type { FileIO } from "./file-io.ts";
import { chunkShiftFor, DATA, entryFrom, lastChunkIn, validateChunkSize } from "./_chunks.ts";
import { LAYER_FILE_SUFFIX, parseSegmentFileName, segmentOf } from "./_data-path.ts";
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
 * Opens every layer file (each segment of each layer), checking each reaches the last chunk its
 * map holds there, and removes the files of layers no table names (removed before a crash, or
 * made and never committed).
 */
export function openLayerFiles(io: FileIO, dir: string, table: LayerTable, fileOf: (layer: StoreLayer, segment: number) => string): void {
  const byKey = new Map<number, StoreLayer>();
  for (const layer of table.all()) byKey.set(layer.key, layer);
  for (const name of io.list(dir)) {
    if (!name.endsWith(LAYER_FILE_SUFFIX)) continue;
    const file = parseSegmentFileName(name);
    const layer = file === undefined ? undefined : byKey.get(file.key);
    if (layer === undefined) io.unlink(`${dir}/${name}`);
    else layer.fds[file!.segment] = io.open(`${dir}/${name}`, false);
  }
  for (const layer of table.all()) {
    for (const [segment, needed] of neededBytes(table, layer)) {
      const filePath = fileOf(layer, segment);
      const fd = layer.fds[segment];
      if (fd === undefined) throw new ShoalError("IO_ERROR", `layer file ${filePath} of layer '${layer.id}' is missing though the journal says it holds data; restore this node's data directory from a backup`);
      const size = io.sizeOf(fd);
      if (size < needed) {
        throw new ShoalError("IO_ERROR", `layer file ${filePath} of layer '${layer.id}' is ${size} bytes, shorter than the ${needed} its map says it holds; restore this node's data directory from a backup`);
      }
    }
  }
}

/** Per segment file, where the layer's last DATA chunk in it ends. */
function neededBytes(table: LayerTable, layer: StoreLayer): Map<number, number> {
  const ends = new Map<number, number>();
  const shift = layer.pageSizeBytes === 0 ? 0 : chunkShiftFor(layer.pageSizeBytes, table.chunkSizeBytes);
  for (const [page, entry] of layer.pages) {
    if (entry.dataChunks === 0) continue;
    const last = lastChunkIn(entry, DATA);
    const start = segmentOf(page * layer.pageSizeBytes);
    const end = start.at + (last + 1) * 2 ** shift;
    ends.set(start.segment, Math.max(ends.get(start.segment) ?? 0, end));
  }
  return ends;
}
