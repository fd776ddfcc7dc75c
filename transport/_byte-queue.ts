// The two byte-stream halves both NBD ends need: an input queue that hands out frames as views of
// the received chunks (copying only when a frame spans chunks), and an outgoing queue that holds
// what the socket did not take (Bun's socket.write is unbuffered and may write fewer bytes).

/** Received chunks, consumed front to back. Bun hands each data event a fresh buffer, so views stay valid. */
export class ByteQueue {
  private chunks: Uint8Array[] = [];
  private head = 0;
  private headOffset = 0;
  /** Bytes buffered and not yet taken. */
  lengthBytes = 0;

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.lengthBytes += chunk.length;
  }

  /** First 4 bytes as a big-endian u32 without consuming them; the caller checks lengthBytes >= 4. */
  peekU32(): number {
    const first = this.chunks[this.head]!;
    if (first.length - this.headOffset >= 4) {
      const at = this.headOffset;
      return ((first[at]! << 24) | (first[at + 1]! << 16) | (first[at + 2]! << 8) | first[at + 3]!) >>> 0;
    }
    const copy = this.copyOut(4, false);
    return ((copy[0]! << 24) | (copy[1]! << 16) | (copy[2]! << 8) | copy[3]!) >>> 0;
  }

  /** Takes `count` bytes (count <= lengthBytes): a view if they sit in one chunk, else one copy. */
  take(count: number): Uint8Array {
    if (count === 0) return new Uint8Array(0);
    const first = this.chunks[this.head]!;
    const available = first.length - this.headOffset;
    if (count <= available) {
      const view = first.subarray(this.headOffset, this.headOffset + count);
      this.advance(count);
      return view;
    }
    return this.copyOut(count, true);
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.headOffset = 0;
    this.lengthBytes = 0;
  }

  private copyOut(count: number, consume: boolean): Uint8Array {
    const target = new Uint8Array(count);
    let filled = 0;
    let index = this.head;
    let offset = this.headOffset;
    while (filled < count) {
      const chunk = this.chunks[index]!;
      const piece = Math.min(chunk.length - offset, count - filled);
      target.set(chunk.subarray(offset, offset + piece), filled);
      filled += piece;
      index++;
      offset = 0;
    }
    if (consume) this.advance(count);
    return target;
  }

  private advance(count: number): void {
    this.lengthBytes -= count;
    let remaining = count;
    while (remaining > 0) {
      const chunk = this.chunks[this.head]!;
      const available = chunk.length - this.headOffset;
      if (remaining < available) {
        this.headOffset += remaining;
        return;
      }
      remaining -= available;
      this.head++;
      this.headOffset = 0;
    }
    // Drop consumed chunks in batches so a long-lived connection does not keep an ever-growing array.
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head >= 64) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
  }
}

/** The part of a Bun socket the outbox needs; tests can pass a fake. */
export interface ByteSink {
  write(data: Uint8Array, byteOffset?: number, byteLength?: number): number;
}

/**
 * Messages not yet accepted by the socket, in order. Callers bound it by checking `queuedBytes`
 * before taking on more work; `flush` runs from the socket's drain handler.
 */
export class Outbox {
  private queue: Uint8Array[] = [];
  private head = 0;
  queuedBytes = 0;
  /** Set once the socket refused a write (closed); later sends are dropped. */
  broken = false;

  constructor(private readonly sink: ByteSink) {}

  get empty(): boolean {
    return this.queuedBytes === 0;
  }

  /** Sends or queues `bytes`; the caller must not modify them afterwards. False if the socket is gone. */
  send(bytes: Uint8Array): boolean {
    if (this.broken) return false;
    if (bytes.length === 0) return true;
    if (this.queuedBytes === 0) {
      const written = this.sink.write(bytes);
      if (written < 0) return this.markBroken();
      if (written === bytes.length) return true;
      bytes = bytes.subarray(written);
    }
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
    return true;
  }

  /** Writes as much of the queue as the socket takes; true when the queue is empty. */
  flush(): boolean {
    while (this.head < this.queue.length) {
      if (this.broken) return false;
      const next = this.queue[this.head]!;
      const written = this.sink.write(next);
      if (written < 0) return this.markBroken();
      this.queuedBytes -= written;
      if (written < next.length) {
        this.queue[this.head] = next.subarray(written);
        return false;
      }
      this.head++;
    }
    this.queue.length = 0;
    this.head = 0;
    return true;
  }

  clear(): void {
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
  }

  private markBroken(): false {
    this.broken = true;
    this.clear();
    return false;
  }
}
