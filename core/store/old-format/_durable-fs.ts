// The few file-system steps that make bytes and names survive a power cut: fdatasync a file,
// fsync the directory that names it, and replace a small file atomically (temp, sync, rename,
// sync the directory). Async forms keep the event loop free; sync forms are for start and close.
import * as fs from "node:fs";

export function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise<void>((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

export async function syncDirectory(dir: string): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(dir, "r");
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") return; // removed since: nothing left to make durable
    throw err;
  }
  try {
    await new Promise<void>((resolve, reject) => fs.fsync(fd, (err) => (err ? reject(err) : resolve())));
  } finally {
    fs.closeSync(fd);
  }
}

export function syncDirectorySync(dir: string): void {
  let fd: number;
  try {
    fd = fs.openSync(dir, "r");
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") return;
    throw err;
  }
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `text` to `tempPath` and makes its bytes durable; the caller renames it into place. */
export async function writeDurableTemp(tempPath: string, text: string): Promise<void> {
  const handle = await fs.promises.open(tempPath, "w");
  try {
    await handle.writeFile(text);
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

export function replaceFileSync(targetPath: string, tempPath: string, text: string, dir: string): void {
  const fd = fs.openSync(tempPath, "w");
  try {
    fs.writeFileSync(fd, text);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tempPath, targetPath);
  syncDirectorySync(dir);
}
