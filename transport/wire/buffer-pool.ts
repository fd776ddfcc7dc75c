// Reusable buffers for the data path. A fresh 1 MiB ArrayBuffer costs a zero fill and a page
// fault per 4 KiB on first touch, which on this kind of VM costs more than the copy itself;
// reusing buffers for read replies keeps their pages mapped and warm.

const MIN_CLASS_BYTES = 64 * 1024;

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private pooledBytes = 0;

  constructor(
    /** Buffers beyond this many pooled bytes are left to the garbage collector. */
    private readonly maxPooledBytes: number,
    /** Sizes up to this are pooled; larger ones are allocated each time. */
    private readonly maxBufferBytes = 16 * 1024 * 1024,
  ) {}

  /** A buffer of exactly `sizeBytes` (a view of a pooled one when possible); contents are stale. */
  acquire(sizeBytes: number): Uint8Array {
    if (sizeBytes > this.maxBufferBytes) return new Uint8Array(sizeBytes);
    const capacity = classOf(sizeBytes);
    const reusable = this.free.get(capacity)?.pop();
    if (reusable) {
      this.pooledBytes -= capacity;
      return new Uint8Array(reusable, 0, sizeBytes);
    }
    return new Uint8Array(new ArrayBuffer(capacity), 0, sizeBytes);
  }

  /** Returns a buffer from `acquire` once nothing reads or writes it any more. */
  release(bytes: Uint8Array): void {
    const buffer = bytes.buffer as ArrayBuffer;
    const capacity = buffer.byteLength;
    if (capacity !== classOf(capacity) || capacity > this.maxBufferBytes) return;
    if (this.pooledBytes + capacity > this.maxPooledBytes) return;
    let list = this.free.get(capacity);
    if (!list) this.free.set(capacity, (list = []));
    list.push(buffer);
    this.pooledBytes += capacity;
  }
}

function classOf(sizeBytes: number): number {
  let capacity = MIN_CLASS_BYTES;
  while (capacity < sizeBytes) capacity *= 2;
  return capacity;
}

/** One pool per process for the data path: read replies on NBD and the mesh. */
export const dataBuffers = new BufferPool(256 * 1024 * 1024);
