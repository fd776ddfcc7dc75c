// Empty chunked page files made ahead, off the event loop, in `pages/~spares/`. Right after a
// snapshot every page's first write needs a new file; creating one (open O_CREAT + ftruncate) is
// journaled work that costs the event loop 0.2-0.5 ms and, while a cut's flush commits the
// journal, several ms. Renaming a ready spare into place costs ~0.02 ms. Spares belong to no
// layer and are not pages: a crash leaves them behind, and start-up removes the directory.
import * as fs from "node:fs";
import * as path from "node:path";
import { CHUNK_HEADER_BYTES } from "./_page-file.ts";

/** The spare directory's name: layer directories start with a layer id, never with `~`. */
export const SPARES_DIR_NAME = "~spares";
/** Spares kept ready per page size at first; doubled each time a writer finds none ready. */
const INITIAL_TARGET = 32;
/** Spares kept per page size at most: each holds a descriptor. */
const MAX_TARGET = 256;

export interface SpareFile {
  fd: number;
  filePath: string;
}

interface Pool {
  ready: SpareFile[];
  target: number;
}

export class SparePageFiles {
  private readonly dir: string;
  private readonly pools = new Map<number, Pool>();
  private dirMade = false;
  private refilling: Promise<void> | undefined;
  private seq = 0;
  private closed = false;

  constructor(pagesDir: string) {
    this.dir = path.join(pagesDir, SPARES_DIR_NAME);
  }

  /**
   * A ready spare sized for `pageSizeBytes` (header + page, sparse), now the caller's to rename
   * and own; undefined when none is ready, and then more are made for next time.
   */
  take(pageSizeBytes: number): SpareFile | undefined {
    let pool = this.pools.get(pageSizeBytes);
    if (pool === undefined) {
      pool = { ready: [], target: INITIAL_TARGET };
      this.pools.set(pageSizeBytes, pool);
    }
    const spare = pool.ready.pop();
    if (spare === undefined) pool.target = Math.min(pool.target * 2, MAX_TARGET);
    this.refill();
    return spare;
  }

  /** Spares ready now, for tests and metrics. */
  readyCount(pageSizeBytes: number): number {
    return this.pools.get(pageSizeBytes)?.ready.length ?? 0;
  }

  /** Resolves once every pool is at its target (or making spares fails); for tests. */
  async settled(): Promise<void> {
    while (this.refilling) await this.refilling;
  }

  /** Closes and removes the ready spares. */
  close(): void {
    this.closed = true;
    for (const pool of this.pools.values()) {
      pool.ready.forEach(discard);
      pool.ready = [];
    }
  }

  /** One spare at a time: the runtime's small thread pool also carries flushes and the catalog's syncs. */
  private refill(): void {
    if (this.refilling || this.closed) return;
    this.refilling = this.makeUntilFull().finally(() => (this.refilling = undefined));
  }

  private async makeUntilFull(): Promise<void> {
    for (;;) {
      const wanted = [...this.pools].find(([, pool]) => pool.ready.length < pool.target);
      if (wanted === undefined || this.closed) return;
      const [pageSizeBytes, pool] = wanted;
      const spare = await this.make(pageSizeBytes);
      if (spare === undefined) return; // the disk refuses: writers make their own files and report why
      if (this.closed) {
        discard(spare);
        return;
      }
      pool.ready.push(spare);
    }
  }

  private async make(pageSizeBytes: number): Promise<SpareFile | undefined> {
    const filePath = path.join(this.dir, String(++this.seq));
    let fd: number;
    try {
      if (!this.dirMade) await fs.promises.mkdir(this.dir, { recursive: true });
      this.dirMade = true;
      fd = await new Promise<number>((resolve, reject) => fs.open(filePath, "w+", 0o644, (err, opened) => (err ? reject(err) : resolve(opened))));
    } catch {
      return undefined;
    }
    try {
      await new Promise<void>((resolve, reject) => fs.ftruncate(fd, CHUNK_HEADER_BYTES + pageSizeBytes, (err) => (err ? reject(err) : resolve())));
    } catch {
      discard({ fd, filePath });
      return undefined;
    }
    return { fd, filePath };
  }
}

function discard(spare: SpareFile): void {
  fs.closeSync(spare.fd);
  fs.rmSync(spare.filePath, { force: true });
}
