// A node started on a data directory of the one-file-per-page store (pages/) converts it to the
// extent-file store before it serves, and then serves the same bytes: the volume's head and its
// snapshot, through a real NBD client. The unit tests (store-v2-convert.test.ts) cover every
// byte, crashes and damage by calling the conversion directly; this one proves the node runs it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { snapshotLayerId } from "../../core/snapshot/snapshot-record.ts";
import { OldFormatFixture } from "../unit/_old-format-fixture.ts";
import { run, TestCluster } from "./_cluster.ts";

const MiB = 1024 * 1024;
const PAGE_BYTES = 4 * MiB;
const CHUNK_BYTES = 4096;

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await TestCluster.start(1);
});

afterAll(async () => {
  await cluster.stop();
});

/** qemu-io on `url`; read-only when every command only reads (a snapshot's export is read-only). */
async function expectPatterns(url: string, commands: string[]): Promise<void> {
  const readOnly = commands.every((command) => command.startsWith("read"));
  const result = await run(["qemu-io", "-f", "raw", ...(readOnly ? ["-r"] : []), ...commands.flatMap((command) => ["-c", command]), url]);
  expect(result.stdout + result.stderr).not.toMatch(/Pattern verification failed|error/i);
  expect(result.exitCode).toBe(0);
}

describe("an old-format data directory", () => {
  test("is converted when the node starts, and the volume and its snapshot read back the bytes the old store held", async () => {
    const shoal = async (args: string[]) => {
      const result = await cluster.shoal([...args, "--json"]);
      expect(result.exitCode).toBe(0);
      return JSON.parse(result.stdout);
    };
    await shoal(["volume", "create", "old", "--size", "8M"]);
    await shoal(["snap", "create", "old", "--name", "s1"]);
    const { uid } = (await shoal(["volume", "info", "old"])) as { uid: string };
    const { snapshots } = (await shoal(["snap", "list", "old"])) as { snapshots: { name: string; snapshotId: string }[] };
    const snapshotId = snapshots.find((snapshot) => snapshot.name === "s1")!.snapshotId;

    // What the old store held: the snapshot's layer under the head's, each written in its own time.
    const fixture = new OldFormatFixture(CHUNK_BYTES);
    fixture.createLayer(uid, undefined);
    fixture.write(uid, 0, 0, new Uint8Array(MiB).fill(0xa1), PAGE_BYTES);
    fixture.write(uid, 1, 0, new Uint8Array(MiB).fill(0xa2), PAGE_BYTES);
    fixture.freezeLayer(uid, snapshotLayerId(uid, snapshotId));
    fixture.write(uid, 0, 0, new Uint8Array(64 * 1024).fill(0xb1), PAGE_BYTES);
    fixture.zero(uid, 1, 0, 8192, PAGE_BYTES);

    const node = cluster.nodes[0]!;
    expect(await node.stop()).toBe(0);
    fs.rmSync(path.join(node.dataDir, "store"), { recursive: true, force: true });
    fixture.writeTo(node.dataDir);
    await node.start();

    expect(node.stderrLog).toContain(`converting ${path.join(node.dataDir, "pages")} (one file per page)`);
    expect(node.stderrLog).toMatch(/converted 2 pages of 2 layers/); // pages 0 and 1, each with both layers
    expect(fs.existsSync(path.join(node.dataDir, "pages"))).toBe(false);
    expect(fs.existsSync(path.join(node.dataDir, "store", "journal"))).toBe(true);
    await expectPatterns(node.nbdUrl("old"), [
      "read -P 0xb1 0 64k",
      "read -P 0xa1 64k 960k",
      "read -P 0 1M 3M",
      "read -P 0 4M 8k",
      "read -P 0xa2 4104k 1016k",
      "read -P 0 5M 3M",
    ]);
    await expectPatterns(node.nbdUrl("old@s1"), ["read -P 0xa1 0 1M", "read -P 0 1M 3M", "read -P 0xa2 4M 1M", "read -P 0 5M 3M"]);

    // And it keeps working as a new-format store: a write, a restart, the write is there.
    await expectPatterns(node.nbdUrl("old"), ["write -P 0xc3 2M 4k", "flush"]);
    expect(await node.stop()).toBe(0);
    await node.start();
    expect(node.stderrLog).not.toContain("converting");
    await expectPatterns(node.nbdUrl("old"), ["read -P 0xc3 2M 4k", "read -P 0xb1 0 64k"]);
  });
});
