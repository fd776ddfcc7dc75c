// Archives on a three-node group of real processes: full and incremental round trips restored
// byte for byte, tar compatibility, and every kind of bad stream rejected.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { run, TestCluster } from "./_cluster.ts";

let cluster: TestCluster;
let dir: string;

beforeAll(async () => {
  cluster = await TestCluster.start(3);
  dir = path.join(cluster.root, "archives");
  fs.mkdirSync(dir);
});
afterAll(async () => {
  await cluster?.stop();
});

const qemuIo = (url: string, ...commands: string[]) => run(["qemu-io", "-f", "raw", ...commands.flatMap((c) => ["-c", c]), url]);

async function sha256(file: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(file).stream()) hasher.update(chunk);
  return hasher.digest("hex");
}

async function exportSha(name: string): Promise<string> {
  const file = path.join(dir, `${name.replace("@", "_at_")}.img`);
  const result = await cluster.shoal(["volume", "export", name, file], { node: cluster.nodes[2] });
  expect(result.exitCode).toBe(0);
  return sha256(file);
}

describe("archives", () => {
  test("a full archive and two incrementals restore, in a chain, to exactly the last snapshot", async () => {
    const node1 = cluster.nodes[0]!;
    expect((await cluster.shoal(["volume", "create", "src", "--size", "96M"])).exitCode).toBe(0);
    expect((await qemuIo(node1.nbdUrl("src"), "write -P 0x11 0 40M", "write -P 0x12 64M 8M")).exitCode).toBe(0);
    expect((await cluster.shoal(["snap", "create", "src", "--name", "n1"])).exitCode).toBe(0);
    expect((await qemuIo(node1.nbdUrl("src"), "write -P 0x21 4M 4M", "write -z 64M 4M")).exitCode).toBe(0);
    expect((await cluster.shoal(["snap", "create", "src", "--name", "n2"])).exitCode).toBe(0);
    expect((await qemuIo(node1.nbdUrl("src"), "write -P 0x31 88M 1M")).exitCode).toBe(0);
    expect((await cluster.shoal(["snap", "create", "src", "--name", "n3"])).exitCode).toBe(0);

    const full = path.join(dir, "n1.tar");
    const inc2 = path.join(dir, "n2.tar");
    const inc3 = path.join(dir, "n3.tar");
    expect((await cluster.shoal(["archive", "create", "src@n1", "-o", full])).exitCode).toBe(0);
    expect((await cluster.shoal(["archive", "create", "src@n2", "--since", "n1", "-o", inc2], { node: cluster.nodes[1] })).exitCode).toBe(0);
    // Through stdout, as a pipe to S3 or mt would take it.
    const piped = await run(["bash", "-c", `SHOAL_NODE=${cluster.nodes[2]!.meshAddress} ${process.env.SHOAL_BIN ?? "dist/shoal"} archive create src@n3 --since n2 > ${inc3}`]);
    expect(piped.exitCode).toBe(0);

    // Incremental size follows the pages changed: n2 changed 2 pages, n3 one.
    const sizes = [full, inc2, inc3].map((file) => fs.statSync(file).size);
    expect(sizes[0]).toBeGreaterThan(48 * 1024 * 1024);
    expect(sizes[1]).toBeLessThan(9 * 1024 * 1024);
    expect(sizes[2]).toBeLessThan(5 * 1024 * 1024);
    for (const size of sizes) expect(size % 10240).toBe(0);

    const listing = await run(["tar", "-tvf", full]);
    expect(listing.exitCode).toBe(0);
    expect(listing.stdout).toContain("shoal-archive/manifest.json");
    expect(listing.stdout).toContain("shoal-archive/pages/0000000000");
    expect(listing.stdout).toContain("shoal-archive/trailer.json");

    const verified = await cluster.shoal(["archive", "verify", "-i", full, "--json"]);
    expect(verified.exitCode).toBe(0);
    expect(JSON.parse(verified.stdout).ok).toBe(true);
    const manifest = JSON.parse((await cluster.shoal(["archive", "list", "-i", inc2, "--json"])).stdout);
    expect(manifest.base.name).toBe("n1");

    expect((await cluster.shoal(["archive", "restore", "dst", "--create", "-i", full])).exitCode).toBe(0);
    expect(await exportSha("dst")).toBe(await exportSha("src@n1"));
    // The wrong order is refused: n3's base is n2, not n1.
    const wrongBase = await cluster.shoal(["archive", "restore", "dst", "-i", inc3]);
    expect(wrongBase.exitCode).toBe(4);
    expect(wrongBase.stderr).toContain("base");
    expect((await cluster.shoal(["archive", "restore", "dst", "-i", inc2])).exitCode).toBe(0);
    expect((await run(["bash", "-c", `SHOAL_NODE=${cluster.nodes[1]!.meshAddress} ${process.env.SHOAL_BIN ?? "dist/shoal"} archive restore dst < ${inc3}`])).exitCode).toBe(0);
    expect(await exportSha("dst")).toBe(await exportSha("src@n3"));

    // A volume written after its restore no longer holds exactly the base: refused.
    expect((await cluster.shoal(["archive", "restore", "dst2", "--create", "-i", full])).exitCode).toBe(0);
    expect((await qemuIo(node1.nbdUrl("dst2"), "write -P 0x99 0 4k")).exitCode).toBe(0);
    const changed = await cluster.shoal(["archive", "restore", "dst2", "-i", inc2]);
    expect(changed.exitCode).toBe(4);
    expect(changed.stderr).toContain("changed");
  }, 180_000);

  test("bad streams are rejected with a reason and a non-zero exit, and leave no volume that looks complete", async () => {
    const full = path.join(dir, "n1.tar");
    const bytes = new Uint8Array(await Bun.file(full).arrayBuffer());
    const cases: [string, Uint8Array][] = [
      ["truncated mid-page", bytes.subarray(0, 3 * 1024 * 1024 + 17)],
      ["truncated before the trailer", bytes.subarray(0, bytes.byteLength - 20480)],
      ["a flipped byte in page data", flip(bytes, 2048 + 4 * 1024 * 1024 + 12345)],
      ["a flipped byte in the manifest", flip(bytes, 520)],
      ["a flipped byte in a tar header", flip(bytes, 1024 + 100)],
      ["a newer format version", newerVersion(bytes)],
    ];
    for (const [what, stream] of cases) {
      const file = path.join(dir, "bad.tar");
      await Bun.write(file, stream);
      const verify = await cluster.shoal(["archive", "verify", "-i", file]);
      expect({ what, code: verify.exitCode }).toEqual({ what, code: 6 });
      expect(verify.stderr.length).toBeGreaterThan(0);
      const restore = await cluster.shoal(["archive", "restore", "bad", "--create", "-i", file]);
      expect({ what, code: restore.exitCode === 0 }).toEqual({ what, code: false });
      // Whatever was written, clients cannot open a half-restored volume.
      const info = await run(["nbdinfo", cluster.nodes[0]!.nbdUrl("bad")]);
      expect({ what, code: info.exitCode === 0 }).toEqual({ what, code: false });
      await cluster.shoal(["volume", "delete", "bad"]);
    }
  }, 120_000);
});

function flip(bytes: Uint8Array, offset: number): Uint8Array {
  const copy = new Uint8Array(bytes);
  copy[offset]! ^= 0x40;
  return copy;
}

/** The manifest says version 2 (its header checksum fixed up, so only the version is wrong). */
function newerVersion(bytes: Uint8Array): Uint8Array {
  const copy = new Uint8Array(bytes);
  const text = new TextDecoder().decode(copy.subarray(512, 1024));
  const at = text.indexOf('"version":1');
  if (at < 0) throw new Error("manifest has no version field to change");
  copy[512 + at + '"version":'.length] = "2".charCodeAt(0);
  return copy;
}
