// The reader's record of each page entry it has passed (page number, offset, SHA-256), kept
// until the trailer arrives to be checked against. 48 bytes an entry in three growing typed
// arrays, not a million small objects for the collector to walk.
const DIGEST_BYTES = 32;
const INITIAL_ENTRIES = 64;

export class PageDigestLog {
  private pages = new Float64Array(INITIAL_ENTRIES);
  private offsets = new Float64Array(INITIAL_ENTRIES);
  private digests = new Uint8Array(INITIAL_ENTRIES * DIGEST_BYTES);
  count = 0;

  add(page: number, offsetBytes: number, digest: Uint8Array): void {
    if (this.count === this.pages.length) this.grow();
    this.pages[this.count] = page;
    this.offsets[this.count] = offsetBytes;
    this.digests.set(digest, this.count * DIGEST_BYTES);
    this.count++;
  }

  page(index: number): number {
    return this.pages[index]!;
  }

  offsetBytes(index: number): number {
    return this.offsets[index]!;
  }

  digestHex(index: number): string {
    return Buffer.from(this.digests.buffer, this.digests.byteOffset + index * DIGEST_BYTES, DIGEST_BYTES).toString("hex");
  }

  private grow(): void {
    const entries = this.pages.length * 2;
    const pages = new Float64Array(entries);
    const offsets = new Float64Array(entries);
    const digests = new Uint8Array(entries * DIGEST_BYTES);
    pages.set(this.pages);
    offsets.set(this.offsets);
    digests.set(this.digests);
    this.pages = pages;
    this.offsets = offsets;
    this.digests = digests;
  }
}
