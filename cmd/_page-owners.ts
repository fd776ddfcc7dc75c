// One NBD connection to each node that owns pages of a volume, looked up by page: bulk jobs
// (import, export, restore) read and write each page where it lives, in parallel across nodes,
// instead of through one node that forwards two pages in three over the mesh.
import { parseHostPort } from "../core/cluster/member.ts";
import { NbdClient } from "../transport/nbd/nbd-client.ts";
import { adminRequest } from "./_cli.ts";

/** A byte range of a volume and the connection that serves it. */
export interface OwnerSegment {
  client: NbdClient;
  offset: number;
  length: number;
}

interface OwnerRun {
  first: number;
  last: number;
  step: number;
  owner: NbdClient;
}

/**
 * Which owner's connection serves each page, from the runs `route show` prints: a 64 TiB volume
 * has 16 Mi pages, so they are looked up in the runs, never listed one by one. Pages in no run
 * listed (a table shown only in part, a move under way) go through the node asked, which forwards.
 */
export class PageOwners {
  constructor(
    private readonly runs: OwnerRun[],
    readonly clients: NbdClient[],
    readonly pageSizeBytes: number,
  ) {}

  get(page: number): NbdClient | undefined {
    for (const run of this.runs) {
      if (page >= run.first && page <= run.last && (page - run.first) % run.step === 0) return run.owner;
    }
    return undefined;
  }

  /**
   * `offset..+length` cut where the owner changes: each piece goes to its pages' owner, or to
   * `fallback` (the node asked, which forwards) where no owner is known. With pages smaller than
   * a bulk job's chunk (say 1 MiB pages, 4 MiB chunks), a chunk spans several owners; sent whole
   * to the node asked, two pieces in three would cross the mesh as well.
   */
  segments(offset: number, length: number, fallback: NbdClient): OwnerSegment[] {
    const end = offset + length;
    const pieces: OwnerSegment[] = [];
    for (let at = offset; at < end; ) {
      const pageEnd = (Math.floor(at / this.pageSizeBytes) + 1) * this.pageSizeBytes;
      const stop = Math.min(pageEnd, end);
      const client = this.get(Math.floor(at / this.pageSizeBytes)) ?? fallback;
      const last = pieces[pieces.length - 1];
      if (last !== undefined && last.client === client) last.length += stop - at;
      else pieces.push({ client, offset: at, length: stop - at });
      at = stop;
    }
    return pieces;
  }

  async flush(): Promise<void> {
    await Promise.all(this.clients.map((client) => client.flush()));
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((client) => client.close().catch(() => {})));
  }
}

/** Connects to the owners of `volume`'s pages, opening `exportName` (the volume, a snapshot, a restore) on each. */
/**
 * Connects to the owners of `volume`'s pages, opening `exportName` (the volume, a snapshot, a
 * restore) on each. An owner that is down or refuses the connection gets no runs: its pages go
 * through the node asked, which fails them the way a client of that node sees it (EIO, one line).
 */
export async function connectPageOwners(nodeAddress: string, volume: string, exportName: string): Promise<PageOwners> {
  const [route, members] = await Promise.all([adminRequest(nodeAddress, "admin.route.show", { volume, usage: false }), adminRequest(nodeAddress, "admin.route.nodes")]);
  const memberOf = new Map((members.nodes as { id: string; nbdAddress: string; state: string }[]).map((member) => [member.id, member]));
  const entries = (route.nodes as { node: string; runs: { first: number; last: number; step: number }[] }[]).filter(
    (entry) => entry.runs.length > 0 && memberOf.get(entry.node)?.state === "up",
  );
  const connected = await Promise.allSettled(
    entries.map((entry) => {
      const { host, port } = parseHostPort(memberOf.get(entry.node)!.nbdAddress);
      return NbdClient.connect({ host, port, exportName });
    }),
  );
  const runs: OwnerRun[] = [];
  const clients: NbdClient[] = [];
  connected.forEach((result, index) => {
    if (result.status !== "fulfilled") return;
    clients.push(result.value);
    for (const run of entries[index]!.runs) runs.push({ first: run.first, last: run.last, step: run.step, owner: result.value });
  });
  return new PageOwners(runs, clients, Number(route.pageSizeBytes));
}
