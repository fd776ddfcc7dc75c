// A page on its way between nodes: exported as every layer of a volume's family holds it
// (states and the chunks the layer holds itself), installed on the other side into the same
// stack of layers, and dropped here once the move is done.
import { ShoalError } from "../errors.ts";
import { ABSENT, chunkShiftFor, DATA, entryFrom, newEntry, runsOf, setState, stateOf, statesOf, type PageEntry } from "./_chunks.ts";
import type { DataPath } from "./_data-path.ts";
import type { StoreLayer } from "./_layers.ts";

/** One layer's copy of a page (or of a range of it, see PageRange) on its way to another node (see exportPage). */
export interface PagePiece {
  layer: string;
  pageSizeBytes: number;
  /**
   * Chunk size and per-chunk states (of the range's chunks only, for a range); `data` is then the
   * DATA chunks in order. Without them: the whole page (or range), every chunk DATA.
   */
  chunkShift?: number;
  states?: Uint8Array;
  /** The bytes, in as many parts as they arrived in (one after another). */
  data: Uint8Array[];
}

export interface PageExport {
  /** The layers involved, root first, each with its parent. */
  layers: { id: string; parent?: string }[];
  pieces: PagePiece[];
}

/**
 * Part of a page, in bytes, on the chunk boundaries of every layer involved: a replica's catch-up
 * copies only the parts written while it was away. Outside it, an import leaves every layer's
 * page as it was.
 */
export interface PageRange {
  offset: number;
  length: number;
}

/** Layers written by importPage and not yet made durable (see syncImport). */
export class ImportBatch {
  readonly layers = new Set<StoreLayer>();
}

export class PageMoves {
  constructor(private readonly path: DataPath) {}

  export(page: number, inFamily: (layerId: string) => boolean, allocate: (bytes: number) => Uint8Array, range?: PageRange): PageExport {
    const table = this.path.table;
    const layers: StoreLayer[] = [];
    const seen = new Set<StoreLayer>();
    for (const layer of table.all()) {
      if (!inFamily(layer.id)) continue;
      const chain = table.chainOf(layer);
      for (let index = chain.length - 1; index >= 0; index--) {
        const member = chain[index]!;
        if (seen.has(member)) continue;
        seen.add(member);
        layers.push(member);
      }
    }
    const pieces: PagePiece[] = [];
    for (const layer of layers) {
      const entry = layer.pages.get(page);
      if (entry === undefined) continue;
      const shift = this.path.chunkShiftOf(layer);
      const [first, end] = range === undefined ? [0, entry.chunks] : chunksOfRange(range, shift, entry.chunks, page, layer.id);
      const states = statesOf(entry).subarray(first, end);
      if (range !== undefined && states.every((state) => state === ABSENT)) continue;
      let dataChunks = 0;
      for (const state of states) if (state === DATA) dataChunks++;
      const data = allocate(dataChunks << shift);
      let at = 0;
      for (const [run, count] of runsOf(entry, DATA)) {
        const from = Math.max(run, first);
        const to = Math.min(run + count, end);
        if (from >= to) continue;
        this.path.readOwn(layer, page, from << shift, (to - from) << shift, data, at);
        at += (to - from) << shift;
      }
      pieces.push({ layer: layer.id, pageSizeBytes: layer.pageSizeBytes, chunkShift: shift, states: range === undefined ? states : states.slice(), data: [data] });
    }
    return { layers: layers.map((layer) => ({ id: layer.id, ...(layer.parent ? { parent: layer.parent.id } : {}) })), pieces };
  }

  /**
   * Installs an exported page (durable once the batch is committed); the family's own copies are
   * replaced, a foreign layer keeps its own. With a range, only that part of each family layer's
   * page is replaced (a layer without a piece reads through there), the rest stays as it was.
   */
  import(page: number, exported: PageExport, inFamily: (layerId: string) => boolean, batch: ImportBatch, range?: PageRange): void {
    this.stackLike(exported.layers);
    if (range !== undefined) return this.importRange(page, exported, inFamily, batch, range);
    const pieces = new Map(exported.pieces.map((piece) => [piece.layer, piece]));
    for (const { id } of exported.layers) {
      const layer = this.path.table.get(id)!;
      const existing = layer.pages.get(page);
      if (existing !== undefined && !inFamily(id)) continue;
      if (existing !== undefined) this.path.removeEntry(layer, page);
      const piece = pieces.get(id);
      if (piece === undefined) continue;
      this.writePiece(layer, page, piece);
      batch.layers.add(layer);
    }
  }

  private importRange(page: number, exported: PageExport, inFamily: (layerId: string) => boolean, batch: ImportBatch, range: PageRange): void {
    const pieces = new Map(exported.pieces.map((piece) => [piece.layer, piece]));
    for (const { id } of exported.layers) {
      const layer = this.path.table.get(id)!;
      const existing = layer.pages.get(page);
      const piece = pieces.get(id);
      if ((existing !== undefined && !inFamily(id)) || (existing === undefined && piece === undefined)) continue;
      if (piece !== undefined) this.path.adoptPageSize(layer, piece.pageSizeBytes);
      const shift = this.path.chunkShiftOf(layer);
      const chunks = Math.max(1, layer.pageSizeBytes >> shift);
      const [first, end] = chunksOfRange(range, shift, chunks, page, id);
      if (piece !== undefined && (piece.chunkShift !== shift || piece.states === undefined || piece.states.length !== end - first || piece.states.some((state) => state > 2))) {
        throw new ShoalError("CONFLICT", `a range of page ${page} of layer '${id}' does not come in this node's ${2 ** shift}-byte chunks`);
      }
      const entry = existing ?? newEntry(chunks, ABSENT);
      const bytes = new PartsCursor(piece?.data ?? []);
      for (let chunk = first; chunk < end; chunk++) {
        const state = piece?.states![chunk - first] ?? ABSENT;
        if (state === DATA) bytes.each(1 << shift, (part, offset) => this.path.writeOwn(layer, page, (chunk << shift) + offset, part));
        // Bytes this layer held itself and no longer does: their blocks go.
        else if (stateOf(entry, chunk) === DATA) this.path.punch(layer, page, chunk << shift, 1 << shift);
        setState(entry, chunk, state);
      }
      if (bytes.remaining !== 0) throw new ShoalError("BAD_REQUEST", `a range of page ${page} of layer '${id}' came with ${bytes.remaining} bytes too many`);
      if (entry.dataChunks === 0 && !hasNonAbsent(entry)) layer.pages.delete(page);
      else layer.pages.set(page, entry);
      layer.dirtyPages.add(page);
      batch.layers.add(layer);
    }
  }

  /** Drops the family's copies of pages this node no longer owns; layers a foreign one stands on keep theirs. */
  removePages(pages: number[], inFamily: (layerId: string) => boolean): void {
    const table = this.path.table;
    const standsOn = new Set<StoreLayer>();
    for (const layer of table.all()) if (!inFamily(layer.id)) for (const below of table.chainOf(layer)) standsOn.add(below);
    for (const layer of table.all()) {
      if (!inFamily(layer.id) || standsOn.has(layer)) continue;
      for (const page of pages) this.path.removeEntry(layer, page);
    }
  }

  /** Makes the given layers (root first, with parents) exist here stacked as they are at the source. */
  private stackLike(layers: { id: string; parent?: string }[]): void {
    const table = this.path.table;
    const sourceParent = new Map(layers.map((layer) => [layer.id, layer.parent]));
    const isBelow = (candidate: string, start: string | undefined): boolean => {
      for (let at = start; at !== undefined; at = sourceParent.get(at)) if (at === candidate) return true;
      return false;
    };
    for (const { id, parent: parentId } of layers) {
      const parent = parentId === undefined ? undefined : table.get(parentId);
      if (parentId !== undefined && parent === undefined) throw new ShoalError("UNKNOWN_SNAPSHOT", `this node has no layer '${parentId}'; \`shoal snap list\` shows what exists`);
      const layer = table.get(id);
      if (layer === undefined) {
        table.create(id, parent);
        continue;
      }
      if (layer.deleting) throw new ShoalError("CONFLICT", `layer '${layer.id}' is being deleted; finish with deleteLayer (a node restart interrupted it)`);
      if (layer.parent === parent) continue;
      // Here the layer sits on nothing, or on a layer the source has further down: stack it on
      // the one in between. Anything else means the two nodes disagree about history.
      if (layer.parent === undefined || isBelow(layer.parent.id, parentId)) table.setParent(layer, parent);
      else throw new ShoalError("CONFLICT", `layer '${id}' stands on '${layer.parent.id}' here but on '${parentId ?? "nothing"}' at the source`);
    }
  }

  private writePiece(layer: StoreLayer, page: number, piece: PagePiece): void {
    this.path.adoptPageSize(layer, piece.pageSizeBytes);
    const shift = chunkShiftFor(piece.pageSizeBytes, this.path.table.chunkSizeBytes);
    const chunks = Math.max(1, piece.pageSizeBytes >> shift);
    if (piece.states !== undefined && (piece.chunkShift !== shift || piece.states.length !== chunks || piece.states.some((state) => state > 2))) {
      throw new ShoalError("CONFLICT", `page ${page} of layer '${layer.id}' comes in ${2 ** (piece.chunkShift ?? 0)}-byte chunks; this node uses ${2 ** shift}`);
    }
    const entry = piece.states === undefined ? newEntry(chunks, DATA) : entryFrom(piece.states);
    const bytes = new PartsCursor(piece.data);
    for (const [first, count] of runsOf(entry, DATA)) {
      bytes.each(count << shift, (part, offset) => this.path.writeOwn(layer, page, (first << shift) + offset, part));
    }
    if (bytes.remaining !== 0) throw new ShoalError("BAD_REQUEST", `page ${page} of layer '${layer.id}' came with ${bytes.remaining} bytes too many`);
    layer.pages.set(page, entry);
    layer.dirtyPages.add(page);
  }
}

/** Reads byte arrays one after another, as if they were one, without gathering them. */
class PartsCursor {
  private index = 0;
  private offset = 0;
  remaining: number;

  constructor(private readonly parts: Uint8Array[]) {
    this.remaining = parts.reduce((sum, part) => sum + part.byteLength, 0);
  }

  /** Hands the next `length` bytes to `take` in pieces, each with its offset from the start. */
  each(length: number, take: (piece: Uint8Array, offset: number) => void): void {
    if (length > this.remaining) throw new ShoalError("BAD_REQUEST", `a page copy is ${length - this.remaining} bytes short`);
    this.remaining -= length;
    let done = 0;
    while (done < length) {
      const part = this.parts[this.index]!;
      const count = Math.min(length - done, part.byteLength - this.offset);
      take(part.subarray(this.offset, this.offset + count), done);
      done += count;
      this.offset += count;
      if (this.offset === part.byteLength) {
        this.index++;
        this.offset = 0;
      }
    }
  }
}

/** The chunks [first, end) a range covers in a layer of 2^shift-byte chunks; it must fall on their boundaries. */
function chunksOfRange(range: PageRange, shift: number, chunks: number, page: number, layerId: string): [number, number] {
  const first = range.offset >> shift;
  const end = (range.offset + range.length) >> shift;
  if (range.length <= 0 || first << shift !== range.offset || end << shift !== range.offset + range.length || end > chunks) {
    throw new ShoalError("BAD_REQUEST", `range ${range.offset}+${range.length} of page ${page} does not fall on the ${2 ** shift}-byte chunks of layer '${layerId}'`);
  }
  return [first, end];
}

function hasNonAbsent(entry: PageEntry): boolean {
  for (let chunk = 0; chunk < entry.chunks; chunk++) if (stateOf(entry, chunk) !== ABSENT) return true;
  return false;
}
