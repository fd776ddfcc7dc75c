// Client load for integration tests: writers that stamp 4 KiB blocks through NBD on several
// nodes and record when each write was issued and acknowledged (see _cut-checker.ts).
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { BLOCK_BYTES, readStamp, stampBlock, type WriteHistory } from "./_cut-checker.ts";
import type { TestNode } from "./_cluster.ts";

export async function connect(node: TestNode, exportName: string): Promise<NbdClient> {
  return NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName });
}

export interface WriterOptions {
  writersPerNode: number;
  /** Blocks 0..blocks-1 are written. */
  blocks: number;
  /** Pause between a writer's batches (default none: as fast as acknowledgements come). */
  pauseMs?: number;
}

export interface WriterResult {
  errors: number;
  firstError: string | undefined;
  maxLatencyMs: number;
  latenciesMs: number[];
}

/** Writers: each owns the blocks b with b % writerCount == index and keeps one write per block in flight. */
export async function startWriters(nodes: TestNode[], volume: string, history: WriteHistory, options: WriterOptions) {
  let stop = false;
  let errors = 0;
  let firstError: string | undefined;
  let maxLatencyMs = 0;
  const latenciesMs: number[] = [];
  const clients: NbdClient[] = [];
  const writerCount = nodes.length * options.writersPerNode;
  const loops: Promise<void>[] = [];
  for (let writer = 0; writer < writerCount; writer++) {
    const client = await connect(nodes[writer % nodes.length]!, volume);
    clients.push(client);
    const blocks = [...Array(options.blocks).keys()].filter((block) => block % writerCount === writer);
    loops.push(
      (async () => {
        let cursor = 0;
        while (!stop) {
          // Four blocks of this writer in flight at once, each block written once at a time.
          const batch = [0, 1, 2, 3].map(() => blocks[cursor++ % blocks.length]!);
          await Promise.all(
            batch.map(async (block) => {
              const record = history.issue(block, performance.now());
              try {
                await client.write(block * BLOCK_BYTES, stampBlock(record.id));
                record.ackedAtMs = performance.now();
                const latencyMs = record.ackedAtMs - record.issuedAtMs;
                latenciesMs.push(latencyMs);
                maxLatencyMs = Math.max(maxLatencyMs, latencyMs);
              } catch (err) {
                errors++;
                firstError ??= (err as Error).message;
              }
            }),
          );
          if (options.pauseMs) await Bun.sleep(options.pauseMs);
        }
      })(),
    );
  }
  return {
    async stop(): Promise<WriterResult> {
      stop = true;
      await Promise.all(loops);
      await Promise.all(clients.map((client) => client.close()));
      return { errors, firstError, maxLatencyMs, latenciesMs };
    },
  };
}

/** The first `length` bytes of an export, read through `node`. */
export async function readExport(node: TestNode, exportName: string, length: number): Promise<Buffer> {
  const client = await connect(node, exportName);
  try {
    return Buffer.from(await client.read(0, length));
  } finally {
    await client.close();
  }
}

/** The write id each of blocks 0..blocks-1 holds in an export. */
export async function readStamps(node: TestNode, exportName: string, blocks: number): Promise<Map<number, number>> {
  const client = await connect(node, exportName);
  try {
    const bytes = await client.read(0, blocks * BLOCK_BYTES);
    const stamps = new Map<number, number>();
    for (let block = 0; block < blocks; block++) stamps.set(block, readStamp(bytes.subarray(block * BLOCK_BYTES, (block + 1) * BLOCK_BYTES)));
    return stamps;
  } finally {
    await client.close();
  }
}

/** Blocks whose content is not their last acknowledged write (or a later one still in flight). */
export function lostWrites(history: WriteHistory, stamps: Map<number, number>): string[] {
  const problems: string[] = [];
  for (const [block, ids] of history.byBlock) {
    const found = stamps.get(block) ?? 0;
    let lastAcked = -1;
    ids.forEach((id, index) => {
      if (history.writes.get(id)!.ackedAtMs !== undefined) lastAcked = index;
    });
    const position = found === 0 ? -1 : ids.indexOf(found);
    if (position < lastAcked) problems.push(`block ${block} holds write ${found} but write ${ids[lastAcked]} was acknowledged after it`);
  }
  return problems;
}
