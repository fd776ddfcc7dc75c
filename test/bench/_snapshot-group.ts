// The snapshot benchmark's group (test/bench/snapshot.ts): three nodes, cleaned up on any exit;
// striped volumes filled through their owners; timed snapshot creates.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { adminRequest } from "../../cmd/_cli.ts";
import { connect, fillRandom } from "./_write-load.ts";
import { bounded, progress, syncDisks } from "./_bench.ts";
import { freePort, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";
import type { Options } from "./_snapshot-options.ts";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const NODE_COUNT = 3;
export const FILL_WRITE_BYTES = 1 * MiB;
const FILL_INFLIGHT = 8;
/** stripedTable puts page p on the (p % nodes)-th node; fills send each page to its owner. */
export const PAGE_BYTES = 4 * MiB;
export const SMALL_WRITTEN_BYTES = 64 * MiB;
export const WARMUP_MS = 1000;
const HOLD_TIMEOUT_MS = 2000;
export const ADMIN_TIMEOUT_MS = 30_000;
const NODE_START_TIMEOUT_MS = 20_000;
const FILL_TIMEOUT_MS = 900_000;
/** --profile: how long nodes get to stop and write their CPU profiles. */
const GRACEFUL_STOP_MS = 30_000;

// ---- processes and cleanup: everything started is registered here and killed on any exit

export class Resources {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-snap-bench-"));
  readonly nodes: TestNode[] = [];
  private cleaned = false;

  /**
   * Kills the nodes (SIGKILL: the data is scratch) and removes the temp dir. Idempotent.
   * `graceful`: SIGTERM first (bounded), so nodes run with --profile write their profiles.
   */
  async cleanup(graceful = false): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    const running = this.nodes.map((node) => node.proc).filter((proc): proc is Subprocess => proc !== undefined);
    if (graceful) {
      for (const proc of running) if (proc.exitCode === null) proc.kill("SIGTERM");
      await Promise.race([Promise.all(running.map((proc) => proc.exited)), sleep(GRACEFUL_STOP_MS)]);
    }
    for (const proc of running) if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await Promise.all(running.map((proc) => proc.exited));
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

export function sleep(ms: number): Promise<void> {
  return Bun.sleep(Math.max(0, ms));
}

// ---- the group

export async function startGroup(resources: Resources, profileDir: string | undefined): Promise<TestNode[]> {
  if (profileDir) fs.mkdirSync(profileDir, { recursive: true });
  for (let index = 1; index <= NODE_COUNT; index++) {
    const id = `node${index}`;
    // The compiled binary honours BUN_OPTIONS; the profile is written when the node exits cleanly.
    const env: Record<string, string> = profileDir ? { BUN_OPTIONS: `--cpu-prof-md --cpu-prof-dir=${profileDir} --cpu-prof-name=${id}.md` } : {};
    const node = new TestNode(id, path.join(resources.root, id), await freePort(), await freePort(), env);
    node.extraArgs = ["--metrics", `127.0.0.1:${await freePort()}`];
    resources.nodes.push(node);
    await node.start(index === 1 ? undefined : resources.nodes[0]!.meshAddress);
  }
  await waitGroupUp(resources.nodes, NODE_START_TIMEOUT_MS);
  return resources.nodes;
}

/** Striped over every node (the default placement); returns the volume's uid. */
async function createVolume(nodes: TestNode[], name: string, sizeBytes: number): Promise<string> {
  const created = await adminRequest(nodes[0]!.meshAddress, "admin.volume.create", { name, sizeBytes }, ADMIN_TIMEOUT_MS);
  for (const node of nodes) {
    await waitFor(`${node.id} to know volume ${name}`, async () => {
      const volumes = (await adminRequest(node.meshAddress, "admin.volume.list", {}, 3000)).volumes as { name: string }[];
      return volumes.some((volume) => volume.name === name);
    });
  }
  return String(created.uid);
}

/**
 * Writes [0, bytes) with 1 MiB writes, each page through the node that owns it (no forwarding),
 * then FLUSHes, so the pages are allocated and durable before anything is measured.
 */
export async function fillVolume(nodes: TestNode[], volume: string, bytes: number, pattern: Uint8Array): Promise<number> {
  const started = performance.now();
  const clients = await Promise.all(nodes.map((node) => connect(node, volume, FILL_INFLIGHT)));
  try {
    const work = clients.map(async (client, index) => {
      const inflight = new Set<Promise<void>>();
      for (let page = index; page * PAGE_BYTES < bytes; page += nodes.length) {
        for (let offset = page * PAGE_BYTES; offset < Math.min(bytes, (page + 1) * PAGE_BYTES); offset += FILL_WRITE_BYTES) {
          const write = client.write(offset, pattern).finally(() => inflight.delete(write));
          inflight.add(write);
          if (inflight.size >= FILL_INFLIGHT) await Promise.race(inflight);
        }
      }
      await Promise.all(inflight);
      await client.flush();
    });
    await bounded(Promise.all(work), FILL_TIMEOUT_MS, `filling ${bytes / MiB} MiB of ${volume}`);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
  }
  return performance.now() - started;
}

// ---- snapshots

export interface CreateTiming {
  name: string;
  coordinator: string;
  startMs: number;
  endMs: number;
  wallMs: number;
  /** As the coordinator measured it, excluding the admin connection. */
  tookMs: number;
  /** Timestamp mode: the cut time T, on this process's performance.now() scale (NaN otherwise). */
  cutAtMs: number;
  /** Hold mode: each participant's report of its hold (held time, requests queued, longest wait). */
  holds: HoldReport[];
  error: string | undefined;
}

interface HoldReport {
  heldMs: number;
  queued: number;
  longestWaitMs: number;
}

export async function createSnapshot(node: TestNode, volume: string, name: string, mode: "hold" | "timestamp"): Promise<CreateTiming> {
  const startMs = performance.now();
  let tookMs = Number.NaN;
  let cutAtMs = Number.NaN;
  let holds: HoldReport[] = [];
  let error: string | undefined;
  try {
    const result = await adminRequest(node.meshAddress, "admin.snap.create", { volumes: [volume], name, mode, holdTimeoutMs: HOLD_TIMEOUT_MS }, ADMIN_TIMEOUT_MS);
    tookMs = Number(result.tookMs);
    // The nodes' clocks are this machine's (no skew here): T in wall time, moved to our monotonic scale.
    if (typeof result.cutAtMs === "number") cutAtMs = result.cutAtMs - performance.timeOrigin;
    holds = Object.values((result.holds ?? {}) as Record<string, HoldReport>);
  } catch (err) {
    error = (err as Error).message;
  }
  const endMs = performance.now();
  return { name, coordinator: node.id, startMs, endMs, wallMs: endMs - startMs, tookMs, cutAtMs, holds, error };
}

export function succeeded(timings: CreateTiming[]): CreateTiming[] {
  return timings.filter((timing) => timing.error === undefined);
}

export function failures(timings: CreateTiming[]): { count: number; first: string | undefined } {
  const failed = timings.filter((timing) => timing.error !== undefined);
  return { count: failed.length, first: failed[0]?.error };
}

// ---- the measures

export interface Context {
  nodes: TestNode[];
  options: Options;
}

/** A fresh volume of `sizeBytes`, written in full, synced; returns its uid. */
export async function preparedVolume(context: Context, name: string, sizeBytes: number, writtenBytes = sizeBytes): Promise<string> {
  const uid = await createVolume(context.nodes, name, sizeBytes);
  const fillMs = await fillVolume(context.nodes, name, writtenBytes, fillRandom(new Uint8Array(FILL_WRITE_BYTES)));
  progress(`${name}: wrote ${writtenBytes / MiB} MiB in ${(fillMs / 1000).toFixed(1)} s (${((writtenBytes / 1e6) / (fillMs / 1000)).toFixed(0)} MB/s); syncing`);
  await syncDisks();
  return uid;
}
