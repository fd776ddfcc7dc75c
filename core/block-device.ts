// What a client-facing protocol (NBD today) needs from a volume or snapshot, wherever its pages
// live. The node implements it by routing each page to its owner; tests can implement it on a file.

export interface Extent {
  /** Length in bytes of this run. */
  length: number;
  /** True when the run reads as zeros and takes no space (never written, trimmed, or zeroed). */
  hole: boolean;
}

export interface BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Preferred I/O size, e.g. the page size; a hint for clients. */
  readonly preferredBlockSizeBytes: number;
  /** Reads `length` bytes at `offset` into `target` starting at `targetOffset`. */
  read(offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> | void;
  /** Writes `data` at `offset`; with `fua` it is on stable storage before this resolves. */
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> | void;
  /** Makes every write completed before the call (through this node, on any connection) durable. */
  flush(): Promise<void> | void;
  /** Drops the data in the range (reads as zeros afterwards). */
  trim(offset: number, length: number, fua: boolean): Promise<void> | void;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> | void;
  /** Allocation of the range, as consecutive extents covering at least one byte from `offset`. */
  blockStatus(offset: number, length: number): Promise<Extent[]> | Extent[];
}

/** How the NBD server finds exports: by name, and the list for NBD_OPT_LIST. */
export interface ExportCatalog {
  open(name: string): BlockDevice | undefined;
  list(): { name: string; description: string }[];
}
