// The page-move benchmark's groups and volumes (test/bench/move.ts): nodes registered for cleanup,
// volumes created through the CLI, filled through their owners and read back to verify.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Subprocess } from "bun";
import { adminRequest } from "../../cmd/_cli.ts";
import type { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { bounded, progress, syncDisks } from "./_bench.ts";
import { connect, fillRandom } from "./_write-load.ts";
import { freePort, run, shoalCommand, TestNode, waitFor, waitGroupUp } from "../integration/_cluster.ts";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const PAGE_BYTES = 4 * MiB;
const IO_BYTES = 1 * MiB;
const IO_WORKERS = 8;
export const NODE_START_TIMEOUT_MS = 20_000;
export const ADMIN_TIMEOUT_MS = 30_000;
export const MOVE_TIMEOUT_MS = 600_000;
const FILL_TIMEOUT_MS = 600_000;

// ---- processes: every node and anchor process is registered here and killed on any exit

export class Resources {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-move-bench-"));
  readonly nodes: TestNode[] = [];
  readonly helpers = new Set<Subprocess>();
  private cleaned = false;

  /** Kills the given nodes (the data is scratch) and removes their data dirs. */
  async stopNodes(nodes: TestNode[]): Promise<void> {
    await Promise.all(nodes.map((node) => node.kill9()));
    for (const node of nodes) fs.rmSync(node.dataDir, { recursive: true, force: true });
  }

  /** Kills everything this run started and removes the temp dir. Idempotent. */
  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    for (const proc of this.helpers) if (proc.exitCode === null) proc.kill("SIGKILL");
    await Promise.all([...this.helpers].map((proc) => proc.exited));
    await this.stopNodes(this.nodes);
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}

/** Starts node`index` under `dir` (joining `join` if given) and registers it. */
export async function startNode(resources: Resources, dir: string, index: number, join: TestNode | undefined): Promise<TestNode> {
  const node = new TestNode(`node${index}`, path.join(dir, `node${index}`), await freePort(), await freePort());
  resources.nodes.push(node);
  await node.start(join?.meshAddress);
  return node;
}

export async function startGroup(resources: Resources, name: string, count: number): Promise<TestNode[]> {
  const dir = path.join(resources.root, name);
  const nodes: TestNode[] = [];
  for (let index = 1; index <= count; index++) nodes.push(await startNode(resources, dir, index, nodes[0]));
  await waitGroupUp(nodes, NODE_START_TIMEOUT_MS);
  return nodes;
}

/** `shoal ARGS --json` asked of `node`; fails on a non-zero exit. */
export async function shoalJson(node: TestNode, args: string[], timeoutMs = ADMIN_TIMEOUT_MS): Promise<Record<string, unknown>> {
  const result = await run([...shoalCommand(), ...args, "--json"], { env: { SHOAL_NODE: node.meshAddress }, timeoutMs });
  if (result.exitCode !== 0) throw new Error(`shoal ${args.join(" ")} exited with ${result.exitCode}: ${result.stderr.trim()}`);
  return JSON.parse(result.stdout) as Record<string, unknown>;
}

/** Creates the volume and waits until every node knows it; returns the page owners' order. */
export async function createVolume(nodes: TestNode[], name: string, sizeBytes: number, placeOn?: string[]): Promise<string[]> {
  const created = await shoalJson(nodes[0]!, ["volume", "create", name, "--size", String(sizeBytes), ...(placeOn ? ["--nodes", placeOn.join(",")] : [])]);
  for (const node of nodes) {
    await waitFor(`${node.id} to know volume ${name}`, async () => {
      const volumes = (await adminRequest(node.meshAddress, "admin.volume.list", {}, 3000)).volumes as { name: string }[];
      return volumes.some((volume) => volume.name === name);
    });
  }
  return created.nodes as string[];
}

/**
 * Runs `work(chunk, buffer)` for every 1 MiB chunk of [0, bytes), IO_WORKERS at a time, each
 * worker with its own buffer (reused only once its previous request has been answered).
 */
async function eachChunk(bytes: number, work: (chunk: number, buffer: Uint8Array) => Promise<void>): Promise<void> {
  const chunks = bytes / IO_BYTES;
  let next = 0;
  const worker = async () => {
    const buffer = new Uint8Array(IO_BYTES);
    while (next < chunks) await work(next++, buffer);
  };
  await Promise.all(Array.from({ length: IO_WORKERS }, worker));
}

/**
 * Writes the whole volume with fresh random data, each page through its owner (`owners` in the
 * table's order: page p is on owners[p % owners.length]), then FLUSHes and syncs the disks.
 * Returns a hash of every 1 MiB chunk written.
 */
export async function fillVolume(nodes: TestNode[], volume: string, bytes: number, owners: string[]): Promise<Float64Array> {
  const started = performance.now();
  const clients = new Map<string, NbdClient>();
  for (const id of owners) clients.set(id, await connect(nodes.find((node) => node.id === id)!, volume, IO_WORKERS));
  const hashes = new Float64Array(bytes / IO_BYTES);
  try {
    const fill = eachChunk(bytes, async (chunk, buffer) => {
      hashes[chunk] = Number(Bun.hash(fillRandom(buffer)));
      const page = Math.floor((chunk * IO_BYTES) / PAGE_BYTES);
      await clients.get(owners[page % owners.length]!)!.write(chunk * IO_BYTES, buffer);
    });
    await bounded(fill, FILL_TIMEOUT_MS, `filling ${bytes / MiB} MiB of ${volume}`);
    await Promise.all([...clients.values()].map((client) => client.flush()));
  } finally {
    await Promise.all([...clients.values()].map((client) => client.close()));
  }
  const ms = performance.now() - started;
  progress(`${volume}: wrote ${bytes / MiB} MiB in ${(ms / 1000).toFixed(1)} s (${mbps(bytes, ms).toFixed(0)} MB/s); syncing`);
  await syncDisks();
  return hashes;
}

/** Reads the volume back through `node`; returns the 1 MiB chunks whose content differs. */
export async function differingChunks(node: TestNode, volume: string, bytes: number, hashes: Float64Array): Promise<number[]> {
  const client = await connect(node, volume, IO_WORKERS);
  const differing: number[] = [];
  try {
    const check = eachChunk(bytes, async (chunk) => {
      const data = await client.read(chunk * IO_BYTES, IO_BYTES);
      if (Number(Bun.hash(data)) !== hashes[chunk]) differing.push(chunk);
    });
    await bounded(check, FILL_TIMEOUT_MS, `reading ${volume} back`);
  } finally {
    await client.close();
  }
  return differing.sort((a, b) => a - b);
}

export function mbps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

// ---- 1. throughput

export interface MoveSummary {
  state: string;
  pagesTotal: number;
  pagesMoved: number;
  bytesMoved: number;
  startedAtMs: number;
  finishedAtMs: number;
}

export interface Rate {
  bytes: number;
  ms: number;
  mbPerSecond: number;
}
