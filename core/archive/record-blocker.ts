// Turns a sequence of byte chunks into chunks that are each a whole number of records, so that a
// caller can hand every one straight to a tape or a pipe; only flush() pads, with zeros. Big
// chunks pass through as views; only the bytes that straddle a record boundary are copied
// (at most two records per chunk), into a fresh buffer each time, so returned chunks stay valid.

export class RecordBlocker {
  /** The record being filled; a new buffer each time, never reused once handed out. */
  private partial: Uint8Array | undefined;
  private partialBytes = 0;
  /** Bytes handed out so far, always a multiple of recordSizeBytes. */
  emittedBytes = 0;

  constructor(readonly recordSizeBytes: number) {}

  /** Bytes taken in so far (emitted plus waiting for their record to fill). */
  get acceptedBytes(): number {
    return this.emittedBytes + this.partialBytes;
  }

  /** Takes `chunk`; appends the whole records it completes to `out`. */
  push(chunk: Uint8Array, out: Uint8Array[] = []): Uint8Array[] {
    let at = 0;
    if (this.partialBytes > 0) at = this.fillPartial(chunk, out);
    const wholeBytes = chunk.byteLength - at - ((chunk.byteLength - at) % this.recordSizeBytes);
    if (wholeBytes > 0) {
      this.emit(chunk.subarray(at, at + wholeBytes), out);
      at += wholeBytes;
    }
    if (at < chunk.byteLength) this.fillPartial(chunk.subarray(at), out);
    return out;
  }

  /** Pads the last record with zeros and hands it out. Nothing may be pushed after. */
  flush(out: Uint8Array[] = []): Uint8Array[] {
    if (this.partial !== undefined) {
      this.emit(this.partial, out); // allocated zeroed, so the tail is already the padding
      this.partial = undefined;
      this.partialBytes = 0;
    }
    return out;
  }

  /** Copies as much of `chunk` as fits the partial record; returns how many bytes it took. */
  private fillPartial(chunk: Uint8Array, out: Uint8Array[]): number {
    this.partial ??= new Uint8Array(this.recordSizeBytes);
    const taken = Math.min(chunk.byteLength, this.recordSizeBytes - this.partialBytes);
    this.partial.set(chunk.subarray(0, taken), this.partialBytes);
    this.partialBytes += taken;
    if (this.partialBytes === this.recordSizeBytes) {
      this.emit(this.partial, out);
      this.partial = undefined;
      this.partialBytes = 0;
    }
    return taken;
  }

  private emit(records: Uint8Array, out: Uint8Array[]): void {
    out.push(records);
    this.emittedBytes += records.byteLength;
  }
}

/**
 * One view per record of a whole-record chunk: a tape in variable-block mode makes one tape block
 * of each write(2), so a tape writer writes these one at a time; a file or pipe takes the chunk whole.
 */
export function recordsOf(chunk: Uint8Array, recordSizeBytes: number): Uint8Array[] {
  const records: Uint8Array[] = [];
  for (let at = 0; at < chunk.byteLength; at += recordSizeBytes) records.push(chunk.subarray(at, at + recordSizeBytes));
  return records;
}
