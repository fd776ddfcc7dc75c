// Reads a data directory of the one-file-per-page store (<data>/pages/), which nodes before the
// extent-file store wrote, so that convert-old-store.ts can carry it over at start. Read only:
// nothing here writes, syncs or waits. On disk, under pages/:
//   layers.json   {format: 1, chunkSizeBytes, nextDirSeq, layers: [{id, parent?, dir, deleting?}]}
//                 (absent in directories from before layers: every directory is then a
//                 parentless layer named by the volume uid it holds)
//   <dir>/<page>     a plain page file: exactly the page's bytes, every chunk the layer's own
//   <dir>/<page>.c   a chunked page file: a 4 KiB header (magic "SHPC", version 1, page size,
//                    chunk size, one state byte per chunk: 0 read below, 1 data here, 2 zeros),
//                    then the page's bytes at offset 4096; a header never written (all zeros)
//                    holds nothing
// Anything else (spares, half-dropped files, directories no table names) holds nothing.
import * as fs from "node:fs";
import * as path from "node:path";
import { ShoalError } from "../errors.ts";
import type { PageExport, PagePiece } from "./_moves.ts";

const TABLE_FILE = "layers.json";
const TABLE_FORMAT = 1;
const LAYER_ID = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$/;
const PAGE_FILE = /^(0|[1-9]\d{0,15})(\.c)?$/;
export const OLD_CHUNK_HEADER_BYTES = 4096;
export const OLD_HEADER_MAGIC = 0x43504853; // "SHPC" little-endian
export const OLD_HEADER_VERSION = 1;
const STATES_OFFSET_BYTES = 16;
const DATA = 1;
const MAX_STATE = 2;
/** The old store's chunk size when layers.json does not say (directories from before layers). */
const OLD_DEFAULT_CHUNK_SIZE_BYTES = 4 * 1024;

export interface OldLayer {
  id: string;
  parent: string | undefined;
  /** A deletion the old store started and a crash cut short: the new store finishes it. */
  deleting: boolean;
}

/** One page file of one layer, as its header (or size, for a plain one) describes it. */
interface OldPageFile {
  path: string;
  pageSizeBytes: number;
  /** Chunked files only: chunk size (log2) and one state per chunk. */
  chunkShift?: number;
  states?: Uint8Array;
}

export class OldPageDirectory {
  readonly chunkSizeBytes: number;
  /** Every layer, each after the layer it stands on. */
  readonly layers: OldLayer[];
  private readonly files = new Map<string, Map<number, OldPageFile>>();

  constructor(private readonly dir: string) {
    const table = readTable(dir);
    this.chunkSizeBytes = table?.chunkSizeBytes ?? OLD_DEFAULT_CHUNK_SIZE_BYTES;
    const entries = table?.layers ?? legacyLayers(dir);
    this.layers = parentsFirst(entries, dir);
    for (const entry of entries) this.files.set(entry.id, readLayerDir(path.join(dir, entry.dir)));
  }

  /** Every page some layer holds, ascending. */
  pages(): number[] {
    const pages = new Set<number>();
    for (const files of this.files.values()) for (const page of files.keys()) pages.add(page);
    return [...pages].sort((a, b) => a - b);
  }

  /** The page as every layer holds it, in the form a page move carries (see PageStore.importPage). */
  exportPage(page: number): PageExport {
    const pieces: PagePiece[] = [];
    for (const layer of this.layers) {
      const file = this.files.get(layer.id)!.get(page);
      if (file !== undefined) pieces.push(readPiece(layer.id, file));
    }
    return { layers: this.layers.map(({ id, parent }) => ({ id, ...(parent !== undefined ? { parent } : {}) })), pieces };
  }
}

function damaged(what: string, why: string): ShoalError {
  return new ShoalError("IO_ERROR", `${what} is damaged (${why}); restore it from a backup of this node's data directory`);
}

function readTable(dir: string): { chunkSizeBytes: number; layers: (OldLayer & { dir: string })[] } | undefined {
  const tablePath = path.join(dir, TABLE_FILE);
  if (!fs.existsSync(tablePath)) return undefined;
  let parsed: { format?: unknown; chunkSizeBytes?: unknown; layers?: unknown };
  try {
    parsed = JSON.parse(fs.readFileSync(tablePath, "utf8"));
  } catch {
    throw damaged(tablePath, "not JSON");
  }
  if (parsed.format !== TABLE_FORMAT) throw damaged(tablePath, `format ${String(parsed.format)} is not ${TABLE_FORMAT}`);
  if (!Number.isSafeInteger(parsed.chunkSizeBytes) || !Array.isArray(parsed.layers)) throw damaged(tablePath, "missing fields");
  const layers = (parsed.layers as { id?: unknown; parent?: unknown; dir?: unknown; deleting?: unknown }[]).map((record) => {
    if (typeof record?.id !== "string" || !LAYER_ID.test(record.id) || typeof record.dir !== "string" || record.dir.includes("/") || (record.parent !== undefined && typeof record.parent !== "string")) {
      throw damaged(tablePath, `layer entry ${JSON.stringify(record)} is invalid`);
    }
    return { id: record.id, parent: record.parent as string | undefined, dir: record.dir, deleting: record.deleting === true };
  });
  return { chunkSizeBytes: parsed.chunkSizeBytes as number, layers };
}

/** Before layer tables, each directory held one volume's pages and was named by its uid. */
function legacyLayers(dir: string): (OldLayer & { dir: string })[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && LAYER_ID.test(entry.name))
    .map((entry) => ({ id: entry.name, parent: undefined, dir: entry.name, deleting: false }));
}

/** The layers ordered so that each comes after its parent; refuses unknown parents, repeats and cycles. */
function parentsFirst(layers: OldLayer[], dir: string): OldLayer[] {
  const byId = new Map<string, OldLayer>();
  for (const layer of layers) {
    if (byId.has(layer.id)) throw damaged(path.join(dir, TABLE_FILE), `layer '${layer.id}' is listed twice`);
    byId.set(layer.id, layer);
  }
  const ordered: OldLayer[] = [];
  const placed = new Set<string>();
  let waiting = layers;
  while (waiting.length > 0) {
    const ready = waiting.filter((layer) => layer.parent === undefined || placed.has(layer.parent));
    if (ready.length === 0) throw damaged(path.join(dir, TABLE_FILE), `layers ${waiting.map((layer) => `'${layer.id}'`).join(", ")} stand on layers that do not exist`);
    for (const layer of ready) {
      ordered.push({ id: layer.id, parent: layer.parent, deleting: layer.deleting });
      placed.add(layer.id);
    }
    waiting = waiting.filter((layer) => !placed.has(layer.id));
  }
  return ordered;
}

function readLayerDir(layerDir: string): Map<number, OldPageFile> {
  const files = new Map<number, OldPageFile>();
  if (!fs.existsSync(layerDir)) return files; // made on a layer's first page: none written yet
  for (const name of fs.readdirSync(layerDir)) {
    const match = PAGE_FILE.exec(name);
    if (!match) continue;
    const page = Number(match[1]);
    const filePath = path.join(layerDir, name);
    const file = match[2] === undefined ? plainFile(filePath) : chunkedFile(filePath);
    if (file === undefined) continue; // created and never written: holds nothing
    if (files.has(page)) throw damaged(layerDir, `page ${page} is there twice (plain and chunked)`);
    files.set(page, file);
  }
  return files;
}

function plainFile(filePath: string): OldPageFile | undefined {
  const sizeBytes = fs.statSync(filePath).size;
  return sizeBytes === 0 ? undefined : { path: filePath, pageSizeBytes: sizeBytes };
}

function chunkedFile(filePath: string): OldPageFile | undefined {
  const header = new Uint8Array(OLD_CHUNK_HEADER_BYTES);
  const fd = fs.openSync(filePath, "r");
  try {
    fs.readSync(fd, header, 0, OLD_CHUNK_HEADER_BYTES, 0);
  } finally {
    fs.closeSync(fd);
  }
  if (header.every((byte) => byte === 0)) return undefined;
  const view = new DataView(header.buffer);
  if (view.getUint32(0, true) !== OLD_HEADER_MAGIC || view.getUint16(4, true) !== OLD_HEADER_VERSION) throw damaged(filePath, "bad magic or version");
  const pageSizeBytes = view.getUint32(8, true);
  const chunkSizeBytes = view.getUint32(12, true);
  const chunkShift = Math.log2(chunkSizeBytes);
  if (!Number.isInteger(chunkShift) || pageSizeBytes === 0 || pageSizeBytes % chunkSizeBytes !== 0) throw damaged(filePath, `page size ${pageSizeBytes}, chunk size ${chunkSizeBytes}`);
  const chunks = pageSizeBytes / chunkSizeBytes;
  if (STATES_OFFSET_BYTES + chunks > OLD_CHUNK_HEADER_BYTES) throw damaged(filePath, `${chunks} chunks do not fit the header`);
  const states = header.slice(STATES_OFFSET_BYTES, STATES_OFFSET_BYTES + chunks);
  if (states.some((state) => state > MAX_STATE)) throw damaged(filePath, "unknown chunk state");
  return { path: filePath, pageSizeBytes, chunkShift, states };
}

/** A layer's piece of a page: the whole page for a plain file, its DATA chunks in order for a chunked one. */
function readPiece(layer: string, file: OldPageFile): PagePiece {
  const fd = fs.openSync(file.path, "r");
  try {
    if (file.states === undefined) return { layer, pageSizeBytes: file.pageSizeBytes, data: [readAt(fd, file.pageSizeBytes, 0)] };
    const chunkBytes = 2 ** file.chunkShift!;
    const parts: Uint8Array[] = [];
    for (let chunk = 0; chunk < file.states.length; chunk++) {
      if (file.states[chunk] === DATA) parts.push(readAt(fd, chunkBytes, OLD_CHUNK_HEADER_BYTES + chunk * chunkBytes));
    }
    return { layer, pageSizeBytes: file.pageSizeBytes, chunkShift: file.chunkShift, states: file.states, data: parts };
  } finally {
    fs.closeSync(fd);
  }
}

/** `length` bytes from `position`; past the end of a sparse file they read as zeros. */
function readAt(fd: number, length: number, position: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const count = fs.readSync(fd, bytes, done, length - done, position + done);
    if (count === 0) break;
    done += count;
  }
  return bytes;
}
