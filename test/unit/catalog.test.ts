import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Catalog } from "../../core/cluster/catalog.ts";
import { setFatalHandler } from "../../core/invariant.ts";
import { MAX_VOLUME_PAGES } from "../../core/geometry.ts";
import { replicaCount, replicasOf, withOwner } from "../../core/cluster/routing.ts";
import { newVolumeRecord } from "../../core/cluster/volume.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

function catalogPath(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-catalog-"));
  dirs.push(dir);
  return path.join(dir, "catalog.db");
}

const largest = (name: string) =>
  newVolumeRecord({ name, sizeBytes: MAX_VOLUME_PAGES * 4 * 1024 * 1024, pageSizeBytes: 4 * 1024 * 1024, nodes: ["a", "b", "c"], uid: `uid-${name}`, nowMs: 1, previousVersion: 0 });

describe("catalog volume rows", () => {
  test("the largest volume's table is stored as runs, a few dozen bytes, and reads back whole", () => {
    const file = catalogPath();
    const catalog = new Catalog(file);
    const record = largest("big");
    const moved = { ...record, version: 2, routing: withOwner(record.routing, [9, 10, 11, 12], "d") };
    catalog.putVolume(moved);
    catalog.close();
    const db = new Database(file);
    const row = db.query("SELECT length(route_owners) AS map, length(route_runs) AS runs FROM volumes").get() as { map: number; runs: number };
    db.close();
    expect(row.map).toBe(0);
    expect(row.runs).toBeLessThan(200);
    const reopened = new Catalog(file);
    const [back] = reopened.volumes();
    reopened.close();
    expect(back!.routing.nodes).toEqual(["a", "b", "c", "d"]);
    expect(Buffer.from(back!.routing.owners.buffer).equals(Buffer.from(moved.routing.owners.buffer))).toBe(true);
  });

  test("a row written before runs existed (owner map only) still reads", () => {
    const file = catalogPath();
    const catalog = new Catalog(file);
    const record = newVolumeRecord({ name: "old", sizeBytes: 40 * 4 * 1024 * 1024, pageSizeBytes: 4 * 1024 * 1024, nodes: ["a", "b"], uid: "u1", nowMs: 1, previousVersion: 0 });
    catalog.putVolume(record);
    catalog.close();
    const db = new Database(file);
    const owners = new Uint8Array(record.routing.owners.buffer.slice(0));
    db.query("UPDATE volumes SET route_owners = ?, route_runs = NULL").run(owners);
    db.close();
    const reopened = new Catalog(file);
    const [back] = reopened.volumes();
    reopened.close();
    expect([...back!.routing.owners]).toEqual([...record.routing.owners]);
  });

  test("a replicated volume's ranks are stored as runs beside the primaries and read back; a row without them reads as one copy", () => {
    const file = catalogPath();
    const catalog = new Catalog(file);
    const record = newVolumeRecord({ name: "r3", sizeBytes: MAX_VOLUME_PAGES * 4 * 1024 * 1024, pageSizeBytes: 4 * 1024 * 1024, nodes: ["a", "b", "c"], uid: "u3", nowMs: 1, previousVersion: 0, replicas: 3 });
    catalog.putVolume(record);
    catalog.close();
    const db = new Database(file);
    const row = db.query("SELECT length(route_replicas) AS replicas FROM volumes").get() as { replicas: number };
    expect(row.replicas).toBeLessThan(200);
    db.close();
    const reopened = new Catalog(file);
    const [back] = reopened.volumes();
    expect(replicaCount(back!.routing)).toBe(3);
    expect(replicasOf(back!.routing, 4)).toEqual(["b", "c", "a"]);
    reopened.close();
    const old = new Database(file);
    old.query("UPDATE volumes SET route_replicas = NULL").run();
    old.close();
    const before = new Catalog(file);
    expect(replicaCount(before.volumes()[0]!.routing)).toBe(1);
    before.close();
  });
});

describe("catalog durability", () => {
  test("a failed write-ahead-log fsync calls the fatal hook (and rejects), never a quiet retry", async () => {
    const catalog = new Catalog(catalogPath());
    const calls: { reason: string; code: unknown }[] = [];
    const previous = setFatalHandler((error, reason) => calls.push({ reason, code: (error as { code?: unknown }).code }));
    try {
      await catalog.durable();
      expect(calls).toEqual([]);
      // A descriptor the kernel refuses to sync stands in for a disk that failed the fsync.
      const walFd = (catalog as unknown as { walFd: number }).walFd;
      fs.closeSync(walFd);
      (catalog as unknown as { walFd: number }).walFd = fs.openSync("/dev/null", "r");
      const outcome = await catalog.durable().then(() => "synced", (err: { code?: string }) => err.code);
      expect(outcome).toBe("EINVAL");
      expect(calls).toEqual([{ reason: "syncing the catalog's write-ahead log failed", code: "EINVAL" }]);
    } finally {
      setFatalHandler(previous);
      catalog.close();
    }
  });

  test("a sync cut short by close() is not a fatal fsync failure (a node stopping must not die)", async () => {
    const calls: string[] = [];
    const previous = setFatalHandler((_, reason) => calls.push(reason));
    try {
      for (let round = 0; round < 20; round++) {
        const catalog = new Catalog(catalogPath());
        const syncs = [catalog.durable(), catalog.durable()];
        catalog.close();
        await Promise.allSettled(syncs);
        // One started after close(): its log is gone with the checkpoint.
        await catalog.durable().catch(() => undefined);
      }
      expect(calls).toEqual([]);
    } finally {
      setFatalHandler(previous);
    }
  });
});
