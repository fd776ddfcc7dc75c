// Received bytes for a parser that reads fixed-size headers and then a known-length payload (the
// NBD server and client): frames come out as views of the received chunks, and are copied once
// only when they span chunks. Bun hands each data event a fresh buffer, so the views stay valid.

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

  /** Whether take(count) would be a view (the bytes sit in one received chunk), not a copy. */
  isContiguous(count: number): boolean {
    return count === 0 || this.chunks[this.head]!.length - this.headOffset >= count;
  }

  /** Takes target.byteLength bytes (<= lengthBytes) by copying them into `target` (a pooled buffer, say). */
  takeInto(target: Uint8Array): Uint8Array {
    return this.copyOut(target.byteLength, true, target);
  }

  /** Takes `count` bytes (count <= lengthBytes) as views of the received chunks: never a copy. */
  takeViews(count: number): Uint8Array[] {
    const views: Uint8Array[] = [];
    let index = this.head;
    let offset = this.headOffset;
    for (let left = count; left > 0; index++, offset = 0) {
      const chunk = this.chunks[index]!;
      const piece = Math.min(chunk.length - offset, left);
      views.push(chunk.subarray(offset, offset + piece));
      left -= piece;
    }
    this.advance(count);
    return views;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.headOffset = 0;
    this.lengthBytes = 0;
  }

  // Unzeroed: every byte is overwritten below, and zeroing a 32 MiB WRITE payload is not free.
  private copyOut(count: number, consume: boolean, target: Uint8Array = Buffer.allocUnsafe(count)): Uint8Array {
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
      // Drop the reference now: a consumed 512 KiB chunk kept alive is memory the GC must chase.
      this.chunks[this.head] = EMPTY;
      this.head++;
      this.headOffset = 0;
    }
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head >= 64) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
  }
}

const EMPTY = new Uint8Array(0);
