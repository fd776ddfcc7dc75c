// The NBD server tests' in-process fixture: sparse in-memory devices, a catalog over them, a log
// that keeps what the server says, and the shared server each nbd-server-*.test.ts file runs its
// own copy of (the exports disk, copy, map, ro, slow and faulty).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { BlockDevice, ExportCatalog, Extent } from "../../core/block-device.ts";
import { ShoalError } from "../../core/errors.ts";
import { NbdServer } from "../../transport/nbd/nbd-server.ts";

export const MiB = 1024 * 1024;
const CHUNK_BYTES = 4096;
/** For tests that run real client processes or move hundreds of MiB. */
export const SLOW_TEST_MS = 60_000;

// ---- Test devices -------------------------------------------------------------------------------

interface MemoryDeviceOptions {
  readOnly?: boolean;
  /** Makes every call asynchronous, finishing after this many ms (per call, by offset). */
  delayMs?: (offset: number) => number;
  /** Calls touching bytes at or past this offset fail like a bad disk. */
  failFromBytes?: number;
}

/** A sparse in-memory device: 4 KiB chunks in a Map, a missing chunk is a hole. */
export class MemoryDevice implements BlockDevice {
  readonly chunks = new Map<number, Uint8Array>();
  readonly preferredBlockSizeBytes = CHUNK_BYTES;
  inFlight = 0;
  inFlightMax = 0;
  completedCalls = 0;

  constructor(
    readonly name: string,
    readonly sizeBytes: number,
    private readonly options: MemoryDeviceOptions = {},
  ) {}

  get readOnly(): boolean {
    return this.options.readOnly ?? false;
  }

  read(offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> | void {
    return this.call(offset, length, "IO_ERROR", () => {
      this.pieces(offset, length, (index, at, size, done) => {
        const chunk = this.chunks.get(index);
        if (chunk) target.set(chunk.subarray(at, at + size), targetOffset + done);
        else target.fill(0, targetOffset + done, targetOffset + done + size);
      });
    });
  }

  write(offset: number, data: Uint8Array): Promise<void> | void {
    return this.call(offset, data.length, "NO_SPACE", () => {
      this.pieces(offset, data.length, (index, at, size, done) => {
        let chunk = this.chunks.get(index);
        if (!chunk) this.chunks.set(index, (chunk = new Uint8Array(CHUNK_BYTES)));
        chunk.set(data.subarray(done, done + size), at);
      });
    });
  }

  flush(): Promise<void> | void {
    return this.call(0, 0, "IO_ERROR", () => {});
  }

  trim(offset: number, length: number): Promise<void> | void {
    return this.call(offset, length, "IO_ERROR", () => this.zero(offset, length));
  }

  writeZeroes(offset: number, length: number): Promise<void> | void {
    return this.call(offset, length, "NO_SPACE", () => this.zero(offset, length));
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> | Extent[] {
    return this.call(offset, length, "IO_ERROR", () => {
      const extents: Extent[] = [];
      this.pieces(offset, length, (index, _at, size) => extents.push({ length: size, hole: !this.chunks.has(index) }));
      return extents;
    });
  }

  fill(offset: number, length: number, value: number): void {
    this.write(offset, new Uint8Array(length).fill(value));
  }

  private zero(offset: number, length: number): void {
    this.pieces(offset, length, (index, at, size) => {
      if (size === CHUNK_BYTES) this.chunks.delete(index);
      else this.chunks.get(index)?.fill(0, at, at + size);
    });
  }

  private pieces(offset: number, length: number, each: (index: number, at: number, size: number, done: number) => void): void {
    for (let done = 0; done < length; ) {
      const position = offset + done;
      const at = position % CHUNK_BYTES;
      const size = Math.min(CHUNK_BYTES - at, length - done);
      each(Math.floor(position / CHUNK_BYTES), at, size, done);
      done += size;
    }
  }

  private call<T>(offset: number, length: number, failure: "IO_ERROR" | "NO_SPACE", work: () => T): T | Promise<T> {
    const { delayMs, failFromBytes } = this.options;
    const fails = failFromBytes !== undefined && offset + length > failFromBytes;
    if (delayMs === undefined) {
      if (fails) throw new ShoalError(failure, `simulated media error at offset ${offset}`);
      this.completedCalls++;
      return work();
    }
    this.inFlight++;
    this.inFlightMax = Math.max(this.inFlightMax, this.inFlight);
    return Bun.sleep(delayMs(offset)).then(() => {
      this.inFlight--;
      this.completedCalls++;
      if (fails) throw new ShoalError(failure, `simulated media error at offset ${offset}`);
      return work();
    });
  }
}

export function catalogOf(devices: MemoryDevice[]): ExportCatalog {
  const byName = new Map(devices.map((device) => [device.name, device]));
  return {
    open: (name) => byName.get(name),
    list: () => devices.map((device) => ({ name: device.name, description: `test export ${device.name}` })),
  };
}

export class CapturedLog {
  readonly infos: string[] = [];
  readonly warnings: string[] = [];
  info = (msg: string) => void this.infos.push(msg);
  warn = (msg: string) => void this.warnings.push(msg);
  warningsFor(port: number): string[] {
    return this.warnings.filter((line) => line.includes(`:${port}:`) || line.includes(`:${port} `));
  }
}


// ---- The shared server --------------------------------------------------------------------------

/** One server over the six test exports; `start` listens on a free port and makes a temp dir. */
export class SharedServer {
  readonly log = new CapturedLog();
  readonly disk = new MemoryDevice("disk", 64 * MiB);
  readonly copy = new MemoryDevice("copy", 32 * MiB);
  readonly map = new MemoryDevice("map", 8 * MiB);
  readonly readOnly = new MemoryDevice("ro", 1 * MiB, { readOnly: true });
  // Later offsets finish first, so replies leave in a different order than requests arrived.
  readonly slow = new MemoryDevice("slow", 8 * MiB, { delayMs: (offset) => 30 - Math.floor((offset / (8 * MiB)) * 30) });
  readonly faulty = new MemoryDevice("faulty", 4 * MiB, { delayMs: () => 1, failFromBytes: 2 * MiB });
  readonly server = new NbdServer({ catalog: catalogOf([this.disk, this.copy, this.map, this.readOnly, this.slow, this.faulty]), log: this.log });
  private tmp = "";

  async start(): Promise<{ port: number; tmp: string }> {
    this.readOnly.fill(0, 1 * MiB, 0x5a);
    const port = (await this.server.listen("127.0.0.1", 0)).port;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-nbd-"));
    return { port, tmp: this.tmp };
  }

  async stop(): Promise<void> {
    await this.server.close();
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}
