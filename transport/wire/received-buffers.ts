// Collections paced by the bytes a process receives. Bun hands each socket read to its data
// handler in a fresh buffer (up to 512 KiB) whose memory the collector does not weigh, and that
// memory is reused only once the chunk is dead and collected; left alone, the heap grows first.

/** Calls `collect` once per `everyBytes` received; the count starts again at each collection. */
export class ReceivedBufferCollector {
  private sinceBytes = 0;

  constructor(
    private readonly everyBytes: number,
    private readonly collect: () => void,
  ) {}

  received(bytes: number): void {
    this.sinceBytes += bytes;
    if (this.sinceBytes < this.everyBytes) return;
    this.sinceBytes = 0;
    this.collect();
  }
}

/**
 * Fed every chunk the NBD server's and the mesh's sockets receive. Measured on fresh three-node
 * groups, jobs in the forwarding bench's order (512 MiB each, load 3.7-4): the forwarding node's
 * RSS after eight jobs 298-330 MB instead of 397-500, and its later forwarded 1 MiB read runs stay
 * at ~0.4 CPU s where without it some fault in 5-25k more pages; its first such run still faults
 * in 22-43k pages either way. Every 64 MiB measured about the same, every 1 or 4 MiB no better.
 * Bun.gc(false) is a full collection that sweeps lazily; Bun.gc(true) also sweeps at once and
 * drops compiled code, which cost the node 0.15-0.3 CPU s more per 512 MiB.
 */
export const receivedBuffers = new ReceivedBufferCollector(16 * 1024 * 1024, () => Bun.gc(false));
