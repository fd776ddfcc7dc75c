// Shared setup of the store-v2-{data,layers,durability,random} tests: temp data directories
// removed after each test, and the small PageStore helpers more than one of those files uses.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PageStore } from "../../core/store/page-store.ts";

export const KiB = 1024;
export const PAGE = 64 * 1024;

const dirs: string[] = [];
export function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-store-v2-"));
  dirs.push(dir);
  return dir;
}
/** Each test file registers this with afterEach, so hooks stay visible in the file that runs them. */
export function removeTempDirs(): void {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

export function reopen(store: PageStore, dir: string, options: { chunkSizeBytes?: number; maxOpenFiles?: number } = {}): PageStore {
  store.close();
  return new PageStore({ dir, ...options });
}

export function parentsOf(store: PageStore): Record<string, string | undefined> {
  return Object.fromEntries(store.layers().map((layer) => [layer.id, layer.parent]));
}
