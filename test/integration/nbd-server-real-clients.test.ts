// The NBD server in-process over in-memory devices, driven by real clients as processes:
// qemu-io, nbdinfo and nbdcopy.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { ShoalError } from "../../core/errors.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { NBD_FLAG_READ_ONLY } from "../../transport/nbd/nbd-codec.ts";
import { run } from "./_cluster.ts";
import { MiB, SharedServer, SLOW_TEST_MS } from "./_nbd-fixture.ts";

function sha256(file: string): string {
  return new Bun.CryptoHasher("sha256").update(fs.readFileSync(file)).digest("hex");
}

function randomFile(file: string, sizeBytes: number): void {
  const data = new Uint8Array(sizeBytes);
  for (let at = 0; at < sizeBytes; at += 65536) crypto.getRandomValues(data.subarray(at, at + 65536));
  fs.writeFileSync(file, data);
}

const shared = new SharedServer();
const { log } = shared;
let port = 0;
let tmp = "";
const url = (name: string) => `nbd://127.0.0.1:${port}/${name}`;

beforeAll(async () => {
  ({ port, tmp } = await shared.start());
});

afterAll(() => shared.stop());

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
