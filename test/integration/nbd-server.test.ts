// The NBD server in-process over in-memory devices, driven by real clients (qemu-io, nbdinfo and
// nbdcopy as processes), by our NbdClient, and by raw sockets sending bad input while a good
// client keeps working on the same server.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { BlockDevice, ExportCatalog, Extent } from "../../core/block-device.ts";
import { NBD_EINVAL, NBD_ENOSPC, NBD_ESHUTDOWN, ShoalError } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { ByteQueue } from "../../transport/nbd/_byte-queue.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLAG_DF,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_TYPE_ERROR,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  type NbdRequest,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  decodeStructuredError,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
} from "../../transport/nbd/nbd-codec.ts";
import { NbdServer } from "../../transport/nbd/nbd-server.ts";
import { run, waitFor } from "./_cluster.ts";

const MiB = 1024 * 1024;
const CHUNK_BYTES = 4096;
/** For tests that run real client processes or move hundreds of MiB. */
const SLOW_TEST_MS = 60_000;

// ---- Test devices -------------------------------------------------------------------------------

interface MemoryDeviceOptions {
  readOnly?: boolean;
  /** Makes every call asynchronous, finishing after this many ms (per call, by offset). */
  delayMs?: (offset: number) => number;
  /** Calls touching bytes at or past this offset fail like a bad disk. */
  failFromBytes?: number;
}

/** A sparse in-memory device: 4 KiB chunks in a Map, a missing chunk is a hole. */
class MemoryDevice implements BlockDevice {
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

function catalogOf(devices: MemoryDevice[]): ExportCatalog {
  const byName = new Map(devices.map((device) => [device.name, device]));
  return {
    open: (name) => byName.get(name),
    list: () => devices.map((device) => ({ name: device.name, description: `test export ${device.name}` })),
  };
}

class CapturedLog {
  readonly infos: string[] = [];
  readonly warnings: string[] = [];
  info = (msg: string) => void this.infos.push(msg);
  warn = (msg: string) => void this.warnings.push(msg);
  warningsFor(port: number): string[] {
    return this.warnings.filter((line) => line.includes(`:${port}:`) || line.includes(`:${port} `));
  }
}

// ---- A raw socket for speaking (bad) NBD by hand -------------------------------------------------

class RawSocket {
  private readonly input = new ByteQueue();
  private wake: (() => void) | undefined;
  private socket!: Socket<RawSocket>;
  /** Kept from the start: a closed socket no longer reports it. */
  localPort = 0;
  closed = false;

  static async open(port: number): Promise<RawSocket> {
    const raw = new RawSocket();
    raw.socket = await Bun.connect<RawSocket>({
      hostname: "127.0.0.1",
      port,
      data: raw,
      socket: {
        binaryType: "uint8array",
        data(socket, chunk) {
          socket.data.input.push(chunk);
          socket.data.wake?.();
        },
        close(socket) {
          socket.data.closed = true;
          socket.data.wake?.();
        },
      },
    });
    raw.localPort = raw.socket.localPort;
    return raw;
  }

  send(bytes: Uint8Array): void {
    expect(this.socket.write(bytes)).toBe(bytes.length);
  }

  end(): void {
    this.socket.end();
  }

  /** Stops reading from the socket, like a client that no longer reads replies. */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  async read(count: number, timeoutMs = 20_000): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    while (this.input.lengthBytes < count) {
      if (this.closed) throw new Error(`connection closed with ${this.input.lengthBytes} of ${count} bytes`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} bytes`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    return this.input.take(count);
  }

  async waitClosed(timeoutMs = 10_000): Promise<void> {
    await waitFor("the server to close the connection", () => this.closed, timeoutMs);
  }

  /** Greeting and client flags; the server then expects options. */
  async handshake(): Promise<void> {
    await this.read(18);
    this.send(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
  }

  /** Sends an option and reads one reply. */
  async option(option: number, data?: Uint8Array): Promise<{ replyType: number; payload: Uint8Array }> {
    this.send(encodeOption(option, data));
    return this.optionReply();
  }

  async optionReply(): Promise<{ replyType: number; payload: Uint8Array }> {
    const header = decodeOptionReplyHeader(await this.read(20));
    if (header instanceof ShoalError) throw header;
    return { replyType: header.replyType, payload: await this.read(header.lengthBytes) };
  }

  /** Enters transmission with NBD_OPT_EXPORT_NAME (simple replies only). */
  async exportName(name: string): Promise<void> {
    await this.handshake();
    this.send(encodeOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode(name)));
    await this.read(10);
  }

  request(fields: Partial<NbdRequest>, payload?: Uint8Array): void {
    const request: NbdRequest = { flags: 0, type: NBD_CMD_READ, handleHigh: 0, handleLow: 1, offset: 0, length: 4096, ...fields };
    const bytes = encodeRequest(request);
    this.send(payload ? new Uint8Array([...bytes, ...payload]) : bytes);
  }

  async simpleReply(): Promise<{ errno: number; handleLow: number }> {
    const header = decodeReplyHeader(await this.read(16), 0);
    if (header instanceof ShoalError || header.kind !== "simple") throw new Error("expected a simple reply");
    return header;
  }
}

/** A client doing verified writes and reads in a loop, to show bad clients do not disturb it. */
function keepWorking(port: number): { stop: () => Promise<{ operations: number; errors: string[] }> } {
  let running = true;
  let operations = 0;
  const errors: string[] = [];
  const done = (async () => {
    const client = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "disk" });
    try {
      while (running) {
        const offset = 40 * MiB + (operations % 64) * 65536;
        const data = new Uint8Array(65536).fill(operations & 255);
        await client.write(offset, data);
        const back = await client.read(offset, data.length);
        if (!back.every((byte) => byte === (operations & 255))) errors.push(`mismatch at ${offset}`);
        operations++;
      }
    } catch (err) {
      errors.push(String(err));
    } finally {
      await client.close();
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return { operations, errors };
    },
  };
}

function sha256(file: string): string {
  return new Bun.CryptoHasher("sha256").update(fs.readFileSync(file)).digest("hex");
}

function randomFile(file: string, sizeBytes: number): void {
  const data = new Uint8Array(sizeBytes);
  for (let at = 0; at < sizeBytes; at += 65536) crypto.getRandomValues(data.subarray(at, at + 65536));
  fs.writeFileSync(file, data);
}

// ---- The shared server --------------------------------------------------------------------------

const log = new CapturedLog();
const disk = new MemoryDevice("disk", 64 * MiB);
const copy = new MemoryDevice("copy", 32 * MiB);
const map = new MemoryDevice("map", 8 * MiB);
const readOnly = new MemoryDevice("ro", 1 * MiB, { readOnly: true });
// Later offsets finish first, so replies leave in a different order than requests arrived.
const slow = new MemoryDevice("slow", 8 * MiB, { delayMs: (offset) => 30 - Math.floor((offset / (8 * MiB)) * 30) });
const faulty = new MemoryDevice("faulty", 4 * MiB, { delayMs: () => 1, failFromBytes: 2 * MiB });
const server = new NbdServer({ catalog: catalogOf([disk, copy, map, readOnly, slow, faulty]), log });
let port = 0;
let tmp = "";
const url = (name: string) => `nbd://127.0.0.1:${port}/${name}`;

beforeAll(async () => {
  readOnly.fill(0, 1 * MiB, 0x5a);
  port = (await server.listen("127.0.0.1", 0)).port;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-nbd-"));
});

afterAll(async () => {
  await server.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe("real NBD clients", () => {
  test("qemu-io writes, zeroes and discards; reads verify; our client sees the same bytes", async () => {
    const result = await run([
      "qemu-io", "-f", "raw", url("disk"),
      "-c", "write -P 0xab 0 1M",
      "-c", "read -P 0xab 0 1M",
      "-c", "write -z 1M 1M",
      "-c", "read -P 0 1M 1M",
      "-c", "write -P 0xcd 2M 64k",
      "-c", "discard 2M 64k",
      "-c", "read -P 0 2M 64k",
      "-c", "flush",
    ]);
    const output = result.stdout + result.stderr;
    expect(result.exitCode).toBe(0);
    expect(output).toContain("wrote 1048576/1048576 bytes at offset 0");
    expect(output).toContain("read 1048576/1048576 bytes at offset 0");
    expect(output).not.toMatch(/verification failed|error|fail/i);
    const client = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "disk" });
    const data = await client.read(0, 2 * MiB);
    expect(data.subarray(0, MiB).every((byte) => byte === 0xab)).toBe(true);
    expect(data.subarray(MiB).every((byte) => byte === 0)).toBe(true);
    await client.close();
  }, SLOW_TEST_MS);

  test("nbdinfo --json reports the size, flags, block sizes and multi-conn", async () => {
    const result = await run(["nbdinfo", "--json", url("disk")]);
    expect(result.exitCode).toBe(0);
    const info = JSON.parse(result.stdout);
    expect(info.protocol).toBe("newstyle-fixed");
    expect(info.structured).toBe(true);
    expect(info.exports[0]).toMatchObject({
      "export-name": "disk",
      "export-size": 64 * MiB,
      is_read_only: false,
      can_multi_conn: true,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_df: true,
      block_size_minimum: 512,
      block_size_preferred: 4096,
      block_size_maximum: MAX_REQUEST_BYTES,
      contexts: ["base:allocation"],
    });
    const readOnlyInfo = JSON.parse((await run(["nbdinfo", "--json", url("ro")])).stdout).exports[0];
    expect(readOnlyInfo).toMatchObject({ is_read_only: true, can_trim: false, can_zero: false, can_multi_conn: true });
  }, SLOW_TEST_MS);

  test("nbdinfo --list shows every export with its description", async () => {
    const result = await run(["nbdinfo", "--list", "--json", url("")]);
    expect(result.exitCode).toBe(0);
    const exports = JSON.parse(result.stdout).exports as { "export-name": string; description: string; "export-size": number }[];
    expect(exports.map((entry) => entry["export-name"]).sort()).toEqual(["copy", "disk", "faulty", "map", "ro", "slow"]);
    expect(exports.find((entry) => entry["export-name"] === "copy")).toMatchObject({ description: "test export copy", "export-size": 32 * MiB });
  }, SLOW_TEST_MS);

  test("nbdinfo --map shows written data between holes", async () => {
    const written = await run(["qemu-io", "-f", "raw", url("map"), "-c", "write -P 0x11 2M 1M"]);
    expect(written.exitCode).toBe(0);
    const result = await run(["nbdinfo", "--map", "--json", url("map")]);
    expect(result.exitCode).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual([
      { offset: 0, length: 2 * MiB, type: 3, description: "hole,zero" },
      { offset: 2 * MiB, length: MiB, type: 0, description: "data" },
      { offset: 3 * MiB, length: 5 * MiB, type: 3, description: "hole,zero" },
    ]);
  }, SLOW_TEST_MS);

  test("nbdcopy copies 32 MiB of random data in and back out over several connections, intact", async () => {
    const source = path.join(tmp, "source.img");
    const target = path.join(tmp, "target.img");
    randomFile(source, 32 * MiB);
    const opened = log.infos.filter((line) => line.includes("'copy'")).length;
    const copyIn = await run(["nbdcopy", source, url("copy")]);
    expect(copyIn.stderr).toBe("");
    expect(copyIn.exitCode).toBe(0);
    // CAN_MULTI_CONN lets nbdcopy spread the copy over several connections.
    expect(log.infos.filter((line) => line.includes("'copy'")).length - opened).toBeGreaterThan(1);
    const copyOut = await run(["nbdcopy", url("copy"), target]);
    expect(copyOut.exitCode).toBe(0);
    expect(sha256(target)).toBe(sha256(source));
  }, SLOW_TEST_MS);

  test("qemu-io reads the read-only export; our client's write is refused with EPERM", async () => {
    const result = await run(["qemu-io", "-r", "-f", "raw", url("ro"), "-c", "read -P 0x5a 0 64k"]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("read 65536/65536 bytes at offset 0");
    const client = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "ro" });
    expect(client.transmissionFlags & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    const refused = await client.write(0, new Uint8Array(4096)).catch((err: ShoalError) => err);
    expect(refused).toBeInstanceOf(ShoalError);
    expect((refused as ShoalError).code).toBe("READ_ONLY");
    expect((refused as ShoalError).message).toMatch(/EPERM/);
    expect((await client.read(0, 4096)).every((byte) => byte === 0x5a)).toBe(true);
    await client.close();
  }, SLOW_TEST_MS);
});

describe("NbdClient", () => {
  test("with structured replies every command works, including FUA, NO_HOLE and block status", async () => {
    const client = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "disk" });
    expect(client.sizeBytes).toBe(64 * MiB);
    expect(client.structuredReplies).toBe(true);
    expect(client.canBlockStatus).toBe(true);
    expect(client.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN).toBe(NBD_FLAG_CAN_MULTI_CONN);
    expect(client.blockSize).toEqual({ minimumBytes: 512, preferredBytes: 4096, maximumBytes: MAX_REQUEST_BYTES });
    const base = 8 * MiB;
    await client.write(base, new Uint8Array(16384).fill(7), { fua: true });
    expect((await client.read(base, 16384)).every((byte) => byte === 7)).toBe(true);
    await client.writeZeroes(base, 4096, { noHole: true, fua: true });
    await client.trim(base + 12288, 4096);
    await client.flush();
    const data = await client.read(base, 16384);
    expect(data.subarray(0, 4096).every((byte) => byte === 0)).toBe(true);
    expect(data.subarray(4096, 12288).every((byte) => byte === 7)).toBe(true);
    expect(await client.blockStatus(base, 16384)).toEqual([
      { length: 4096, hole: true, zero: true },
      { length: 8192, hole: false, zero: false },
      { length: 4096, hole: true, zero: true },
    ]);
    expect(await client.blockStatus(base, 16384, { requestOne: true })).toEqual([{ length: 4096, hole: true, zero: true }]);
    const whole = await client.read(0, MAX_REQUEST_BYTES);
    expect(whole.length).toBe(MAX_REQUEST_BYTES);
    // readViews: the same bytes as views, whether they came as one data chunk or with holes.
    const joined = (views: Uint8Array[]) => Buffer.concat(views);
    const random = crypto.getRandomValues(new Uint8Array(65536));
    await client.write(base + MiB, random);
    expect(joined(await client.readViews(base + MiB, 65536)).equals(random)).toBe(true);
    expect(joined(await client.readViews(base, 16384)).equals(data)).toBe(true);
    expect(joined(await client.readViews(0, MAX_REQUEST_BYTES)).equals(await client.read(0, MAX_REQUEST_BYTES))).toBe(true);
    await client.close();
  }, SLOW_TEST_MS);

  test("with simple replies reads and writes work and block status is unavailable", async () => {
    const client = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "disk", structuredReplies: false });
    expect(client.structuredReplies).toBe(false);
    await client.write(9 * MiB, new Uint8Array(65536).fill(9));
    expect((await client.read(9 * MiB, 65536)).every((byte) => byte === 9)).toBe(true);
    expect(Buffer.concat(await client.readViews(9 * MiB, 65536)).every((byte) => byte === 9)).toBe(true);
    expect(await client.blockStatus(0, 4096).catch((err: ShoalError) => err.code)).toBe("BAD_REQUEST");
    const pastEnd = await client.read(64 * MiB - 512, 1024).catch((err: ShoalError) => err);
    expect((pastEnd as ShoalError).message).toMatch(/EINVAL/);
    await client.close();
  });

  test("errors name the NBD errno, and the connection keeps working after them", async () => {
    const client = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "faulty" });
    const cases: [Promise<unknown>, string, RegExp][] = [
      [client.read(4 * MiB, 4096), "BAD_REQUEST", /READ of 4096 bytes at offset 4194304 failed with EINVAL \(22\): .*past the end/],
      [client.write(4 * MiB, new Uint8Array(4096)), "NO_SPACE", /ENOSPC/],
      [client.read(3 * MiB, 4096), "IO_ERROR", /EIO \(5\): simulated media error/],
      [client.write(3 * MiB, new Uint8Array(4096)), "NO_SPACE", /ENOSPC \(28\): simulated media error/],
    ];
    for (const [attempt, code, message] of cases) {
      const error = (await attempt.catch((err: ShoalError) => err)) as ShoalError;
      expect(error).toBeInstanceOf(ShoalError);
      expect(error.code).toBe(code as ShoalError["code"]);
      expect(error.message).toMatch(message);
    }
    await client.write(MiB, new Uint8Array(4096).fill(1));
    expect((await client.read(MiB, 4096)).every((byte) => byte === 1)).toBe(true);
    expect(client.read(-1, 10)).rejects.toThrow(/non-negative/);
    expect(client.read(0, MAX_REQUEST_BYTES + 1)).rejects.toThrow(/maximum/);
    await client.close();
  });

  test("many requests in flight are answered out of order, each with its own data", async () => {
    const client = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "slow", maxInFlight: 128 });
    const blockBytes = 65536;
    const blocks = (8 * MiB) / blockBytes;
    await Promise.all(Array.from({ length: blocks }, (_, index) => client.write(index * blockBytes, new Uint8Array(blockBytes).fill(index))));
    const completionOrder: number[] = [];
    const reads = Array.from({ length: blocks }, (_, index) =>
      client.read(index * blockBytes, blockBytes).then((data) => {
        completionOrder.push(index);
        return data;
      }),
    );
    const results = await Promise.all(reads);
    results.forEach((data, index) => expect(data.every((byte) => byte === (index & 255))).toBe(true));
    expect(completionOrder).not.toEqual([...completionOrder].sort((a, b) => a - b));
    expect(slow.inFlightMax).toBeGreaterThan(16);
    expect(slow.inFlightMax).toBeLessThanOrEqual(64); // The server's default bound per connection.
    await client.close();
  });

  test("an unknown export is refused with UNKNOWN_VOLUME; listExports shows the exports", async () => {
    const refused = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "nope" }).catch((err: ShoalError) => err);
    expect((refused as ShoalError).code).toBe("UNKNOWN_VOLUME");
    expect((refused as ShoalError).message).toMatch(/NBD_REP_ERR_UNKNOWN.*'nope' does not exist/);
    const exports = await NbdClient.listExports({ host: "127.0.0.1", port });
    expect(exports.map((entry) => entry.name)).toEqual(["disk", "copy", "map", "ro", "slow", "faulty"]);
    expect(exports[0]).toEqual({ name: "disk", description: "test export disk" });
  });

  test("a closed port is reported as NODE_DOWN", async () => {
    const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const closedPort = listener.port;
    listener.stop(true);
    const refused = await NbdClient.connect({ host: "127.0.0.1", port: closedPort, exportName: "disk" }).catch((err: ShoalError) => err);
    expect((refused as ShoalError).code).toBe("NODE_DOWN");
  });
});

describe("bad input disconnects only the bad client", () => {
  let worker: ReturnType<typeof keepWorking>;
  beforeAll(() => {
    worker = keepWorking(port);
  });
  afterAll(async () => {
    const { operations, errors } = await worker.stop();
    expect(errors).toEqual([]);
    expect(operations).toBeGreaterThan(0);
  });

  async function expectOneWarning(raw: RawSocket, pattern: RegExp): Promise<void> {
    await raw.waitClosed();
    const lines = log.warningsFor(raw.localPort);
    expect(lines.length).toBe(1);
    expect(lines[0]).toMatch(pattern);
  }

  test("garbage instead of client flags", async () => {
    const raw = await RawSocket.open(port);
    await raw.read(18);
    raw.send(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
    await expectOneWarning(raw, /client flags 0x47455420 include bits the server did not offer .*; disconnecting/);
  });

  test("an option with the wrong magic", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    raw.send(new Uint8Array(16).fill(0x41));
    await expectOneWarning(raw, /IHAVEOPT/);
  });

  test("an option announcing more data than the limit", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    const header = encodeOption(NBD_OPT_GO);
    header.set([0, 0x10, 0, 0], 12); // 1 MiB of option data
    raw.send(header);
    await expectOneWarning(raw, /exceeds the 65536-byte limit/);
  });

  test("unknown options, unknown exports, STARTTLS and early meta contexts get error replies; negotiation goes on", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    expect((await raw.option(99)).replyType).toBe(NBD_REP_ERR_UNSUP);
    const unknown = await raw.option(NBD_OPT_GO, encodeInfoRequest("nope", []));
    expect(unknown.replyType).toBe(NBD_REP_ERR_UNKNOWN);
    expect(new TextDecoder().decode(unknown.payload)).toMatch(/'nope' does not exist/);
    expect((await raw.option(NBD_OPT_STARTTLS)).replyType).toBe(NBD_REP_ERR_POLICY);
    expect((await raw.option(NBD_OPT_GO, new Uint8Array(3))).replyType).toBe(NBD_REP_ERR_INVALID);
    const early = await raw.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest("disk", ["base:allocation"]));
    expect(early.replyType).toBe(NBD_REP_ERR_INVALID);
    raw.send(encodeOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode("disk")));
    await raw.read(10);
    raw.request({ handleLow: 5, offset: 0, length: 512 });
    expect(await raw.simpleReply()).toEqual({ kind: "simple", errno: 0, handleHigh: 0, handleLow: 5 } as never);
    expect((await raw.read(512)).length).toBe(512);
    raw.end();
    await raw.waitClosed();
    expect(log.warningsFor(raw.localPort)).toEqual([]);
  });

  test("NBD_OPT_EXPORT_NAME for an unknown export (which cannot return an error)", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    raw.send(encodeOption(NBD_OPT_EXPORT_NAME, new TextEncoder().encode("nope")));
    await expectOneWarning(raw, /NBD_OPT_EXPORT_NAME: export 'nope' does not exist/);
  });

  test("a request with the wrong magic after the handshake", async () => {
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    raw.send(new Uint8Array(28).fill(0x77));
    await expectOneWarning(raw, /request magic is 0x77777777/);
  });

  test("a truncated request and a hang-up leave nothing behind", async () => {
    const baseline = server.connectionCount;
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    expect(server.connectionCount).toBe(baseline + 1);
    raw.send(encodeRequest({ flags: 0, type: NBD_CMD_WRITE, handleHigh: 0, handleLow: 1, offset: 0, length: 4096 }).subarray(0, 20));
    raw.end();
    await waitFor("the server to drop the connection", () => server.connectionCount === baseline);
  });

  test("requests past the end, of length 0, with bad flags or an unknown type get EINVAL/ENOSPC; the connection goes on", async () => {
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    const refused: [Partial<NbdRequest>, number, Uint8Array?][] = [
      [{ offset: 64 * MiB - 512, length: 1024 }, NBD_EINVAL],
      [{ offset: 2 ** 52, length: 512 }, NBD_EINVAL],
      [{ length: 0 }, NBD_EINVAL],
      [{ type: 99 }, NBD_EINVAL],
      [{ flags: NBD_CMD_FLAG_DF }, NBD_EINVAL],
      [{ type: NBD_CMD_BLOCK_STATUS }, NBD_EINVAL],
      [{ type: NBD_CMD_WRITE, offset: 64 * MiB, length: 4096 }, NBD_ENOSPC, new Uint8Array(4096)],
    ];
    for (const [index, [fields, errno, payload]] of refused.entries()) {
      raw.request({ ...fields, handleLow: 100 + index }, payload);
      expect(await raw.simpleReply()).toMatchObject({ errno, handleLow: 100 + index });
    }
    raw.request({ handleLow: 7, offset: 0, length: 4096 });
    expect(await raw.simpleReply()).toMatchObject({ errno: 0, handleLow: 7 });
    expect((await raw.read(4096)).every((byte) => byte === 0xab)).toBe(true);
    raw.end();
    await raw.waitClosed();
    expect(log.warningsFor(raw.localPort)).toEqual([]);
  });

  test("an oversize WRITE gets EINVAL, then a clean disconnect", async () => {
    const raw = await RawSocket.open(port);
    await raw.exportName("disk");
    raw.request({ type: NBD_CMD_WRITE, handleLow: 3, length: MAX_REQUEST_BYTES + 1 });
    expect(await raw.simpleReply()).toMatchObject({ errno: NBD_EINVAL, handleLow: 3 });
    await expectOneWarning(raw, /WRITE of 33554433 bytes exceeds/);
  });

  test("with structured replies, errors arrive as error chunks with a message", async () => {
    const raw = await RawSocket.open(port);
    await raw.handshake();
    expect((await raw.option(NBD_OPT_STRUCTURED_REPLY)).replyType).toBe(NBD_REP_ACK);
    raw.send(encodeOption(NBD_OPT_GO, encodeInfoRequest("disk", [])));
    let reply = await raw.optionReply();
    while (reply.replyType === NBD_REP_INFO) reply = await raw.optionReply();
    expect(reply.replyType).toBe(NBD_REP_ACK);
    raw.request({ handleLow: 11, offset: 64 * MiB, length: 4096 });
    const header = decodeReplyHeader(await raw.read(20), 0);
    expect(header).toMatchObject({ kind: "structured", type: NBD_REPLY_TYPE_ERROR, handleLow: 11 });
    const payload = await raw.read((header as { lengthBytes: number }).lengthBytes);
    const error = decodeStructuredError(NBD_REPLY_TYPE_ERROR, payload) as { errno: number; message: string };
    expect(error.errno).toBe(NBD_EINVAL);
    expect(error.message).toMatch(/past the end of the export/);
    raw.end();
  });
});

describe("flow control and shutdown", () => {
  /** Reads synthesize data (each byte is its MiB index), so large volumes cost no memory. */
  class PatternDevice extends MemoryDevice {
    readCalls = 0;
    override read(offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
      this.readCalls++;
      this.inFlight++;
      this.inFlightMax = Math.max(this.inFlightMax, this.inFlight);
      return Bun.sleep(1).then(() => {
        this.inFlight--;
        target.fill(Math.floor(offset / MiB) & 255, targetOffset, targetOffset + length);
      });
    }
  }

  test("in-flight requests stay within the bound, and a client that stops reading still gets every reply", async () => {
    const device = new PatternDevice("bounded", 1024 * MiB);
    const bounded = new NbdServer({ catalog: catalogOf([device]), log: new CapturedLog(), maxInFlightPerConnection: 4 });
    const boundedPort = (await bounded.listen("127.0.0.1", 0)).port;
    const raw = await RawSocket.open(boundedPort);
    await raw.exportName("bounded");
    const count = 200;
    const requests = new Uint8Array(28 * count);
    for (let index = 0; index < count; index++) {
      requests.set(encodeRequest({ flags: 0, type: NBD_CMD_READ, handleHigh: 0, handleLow: index + 1, offset: index * MiB, length: MiB }), 28 * index);
    }
    raw.pause();
    raw.send(requests);
    // Not reading: replies pile up until the server stops taking requests (its unsent-reply bound).
    await waitFor("the server to stop taking requests", async () => {
      const before = device.readCalls;
      await Bun.sleep(200);
      return device.readCalls === before && before > 0 && before < count;
    });
    raw.resume();
    const seen = new Set<number>();
    for (let index = 0; index < count; index++) {
      const reply = await raw.simpleReply();
      expect(reply.errno).toBe(0);
      const data = await raw.read(MiB);
      const offsetMiB = reply.handleLow - 1;
      expect(data[0]).toBe(offsetMiB & 255);
      expect(data[MiB - 1]).toBe(offsetMiB & 255);
      seen.add(reply.handleLow);
    }
    expect(seen.size).toBe(count);
    expect(device.inFlightMax).toBeLessThanOrEqual(4);
    raw.end();
    await bounded.close();
    expect(bounded.connectionCount).toBe(0);
  }, SLOW_TEST_MS);

  test("close() lets in-flight requests finish, then closes every connection and refuses new ones", async () => {
    const device = new MemoryDevice("closing", 16 * MiB, { delayMs: () => 100 });
    const closing = new NbdServer({ catalog: catalogOf([device]), log: new CapturedLog() });
    const closingPort = (await closing.listen("127.0.0.1", 0)).port;
    const client = await NbdClient.connect({ host: "127.0.0.1", port: closingPort, exportName: "closing" });
    const negotiating = await RawSocket.open(closingPort);
    await negotiating.handshake();
    const reads = Array.from({ length: 8 }, (_, index) => client.read(index * 4096, 4096));
    await waitFor("the reads to reach the device", () => device.inFlight === 8);
    const closed = closing.close();
    const results = await Promise.all(reads);
    expect(results.every((data) => data.length === 4096)).toBe(true);
    await closed;
    expect(closing.connectionCount).toBe(0);
    await negotiating.waitClosed();
    const late = await client.read(0, 4096).catch((err: ShoalError) => err);
    expect((late as ShoalError).code).toBe("NODE_DOWN");
    const refused = await NbdClient.connect({ host: "127.0.0.1", port: closingPort, exportName: "closing" }).catch((err: ShoalError) => err);
    expect((refused as ShoalError).code).toBe("NODE_DOWN");
    await client.close();
  });

  test("close() answers requests still waiting for a slot with ESHUTDOWN", async () => {
    const device = new MemoryDevice("closing", 16 * MiB, { delayMs: () => 100 });
    const closing = new NbdServer({ catalog: catalogOf([device]), log: new CapturedLog(), maxInFlightPerConnection: 1 });
    const closingPort = (await closing.listen("127.0.0.1", 0)).port;
    const raw = await RawSocket.open(closingPort);
    await raw.exportName("closing");
    const first = encodeRequest({ flags: 0, type: NBD_CMD_READ, handleHigh: 0, handleLow: 1, offset: 0, length: 4096 });
    const second = encodeRequest({ flags: 0, type: NBD_CMD_READ, handleHigh: 0, handleLow: 2, offset: 4096, length: 4096 });
    raw.send(new Uint8Array([...first, ...second]));
    await waitFor("the first read to reach the device", () => device.inFlight === 1);
    const closed = closing.close();
    const replies = new Map<number, number>();
    for (let index = 0; index < 2; index++) {
      const reply = await raw.simpleReply();
      replies.set(reply.handleLow, reply.errno);
      if (reply.errno === 0) await raw.read(4096);
    }
    expect(replies.get(1)).toBe(0);
    expect(replies.get(2)).toBe(NBD_ESHUTDOWN);
    await raw.waitClosed();
    await closed;
  });
});
