// The NBD server in-process over in-memory devices, driven by our NbdClient: every command,
// simple and structured replies, errors, many requests in flight, refusals.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ShoalError } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { NBD_FLAG_CAN_MULTI_CONN } from "../../transport/nbd/nbd-codec.ts";
import { MiB, SharedServer, SLOW_TEST_MS } from "./_nbd-fixture.ts";

const shared = new SharedServer();
const { slow } = shared;
let port = 0;

beforeAll(async () => {
  ({ port } = await shared.start());
});

afterAll(() => shared.stop());

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
