// Hostile and broken clients against real nodes: each bad connection is closed (or answered with
// an error) on its own, one log line is written, and every other client keeps being served.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { encodeFrameHead } from "../../transport/mesh/frame.ts";
import { dialMesh } from "../../transport/mesh/mesh.ts";
import type { MeshConnection } from "../../transport/mesh/mesh-connection.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { adminRequest } from "../../cmd/_cli.ts";
import { ShoalError } from "../../core/errors.ts";
import { run, TestCluster, waitFor, type TestNode } from "./_cluster.ts";

let cluster: TestCluster;

beforeAll(async () => {
  cluster = await TestCluster.start(2);
  expect((await cluster.shoal(["volume", "create", "vol", "--size", "16M"])).exitCode).toBe(0);
  const seeded = await run(["qemu-io", "-f", "raw", "-c", "write -P 0x42 0 8M", "-c", "flush", cluster.nodes[0]!.nbdUrl("vol")]);
  expect(seeded.exitCode).toBe(0);
});
afterAll(async () => {
  await cluster?.stop();
});

/** Opens a raw TCP connection, sends `bytes`, and resolves with what came back when the peer closes (or after `waitMs`). */
async function rawExchange(port: number, bytes: Uint8Array, waitMs = 3000): Promise<{ closed: boolean; received: Uint8Array }> {
  const received: Uint8Array[] = [];
  let closed = false;
  let socket: Socket<undefined> | undefined;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, waitMs);
    void Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          socket = s;
          s.write(bytes);
        },
        data(_, chunk) {
          received.push(new Uint8Array(chunk));
        },
        close() {
          closed = true;
          clearTimeout(timer);
          resolve();
        },
        error() {},
      },
    });
  });
  socket?.end();
  const total = new Uint8Array(received.reduce((sum, c) => sum + c.byteLength, 0));
  let offset = 0;
  for (const chunk of received) {
    total.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return { closed, received: total };
}

/** The well-behaved client: reads the seeded pattern through the *other* node (forwarding included). */
async function goodClientWorks(): Promise<void> {
  const read = await run(["qemu-io", "-f", "raw", "-c", "read -P 0x42 0 8M", cluster.nodes[1]!.nbdUrl("vol")]);
  expect(read.stdout).not.toMatch(/Pattern verification failed|error/);
  expect(read.exitCode).toBe(0);
}

describe("malformed mesh input", () => {
  test("a frame with an absurd length closes that connection only", async () => {
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setUint32(0, 0xfffffff0);
    const { closed } = await rawExchange(cluster.nodes[0]!.meshPort, bytes);
    expect(closed).toBe(true);
    await goodClientWorks();
    await waitFor("one log line about the bad frame", () => cluster.nodes[0]!.stderrLog.includes("malformed"));
  });

  test("a header that is not msgpack closes that connection only", async () => {
    const bytes = new Uint8Array([0, 0, 0, 8, 0, 0, 0, 4, 0xc1, 0xc1, 0xc1, 0xc1]);
    const { closed } = await rawExchange(cluster.nodes[0]!.meshPort, bytes);
    expect(closed).toBe(true);
    await goodClientWorks();
  });

  test("a well-formed request before hello, or for an unknown volume, gets an error answer, not a crash", async () => {
    const head = encodeFrameHead({ t: "q", i: 1, op: "page.write", a: { v: "no-such-uid", p: 0, o: 0 } }, 4);
    const frame = new Uint8Array([...head, 1, 2, 3, 4]);
    const { received } = await rawExchange(cluster.nodes[0]!.meshPort, frame, 1000);
    expect(new TextDecoder().decode(received)).toContain("before hello");
    await goodClientWorks();
  });

  test("random garbage on the mesh port, many times, leaves the node serving", async () => {
    for (let round = 0; round < 20; round++) {
      const garbage = crypto.getRandomValues(new Uint8Array(64 + round * 13));
      await rawExchange(cluster.nodes[0]!.meshPort, garbage, 200);
    }
    await goodClientWorks();
  });
});

/** An admin request the CLI's types would refuse to send: the node must refuse it too. */
async function untypedAdmin(op: string, args: Record<string, unknown>): Promise<ShoalError> {
  const answer = await adminRequest(cluster.nodes[0]!.meshAddress, op as "admin.volume.list", args as never, 5000).then(
    () => new ShoalError("INTERNAL", `'${op}' with ${JSON.stringify(args)} was accepted`),
    (err: unknown) => err as ShoalError,
  );
  return answer;
}

describe("malformed admin arguments", () => {
  test("a missing, mistyped or unknown argument is BAD_ARGUMENT naming it, never a coerced string", async () => {
    const missing = await untypedAdmin("admin.volume.create", { sizeBytes: 16 * 1024 * 1024 });
    expect(missing.code).toBe("BAD_ARGUMENT");
    expect(missing.message).toContain("'name'");
    // Before the table, String(undefined) made a volume called "undefined".
    const volumes = (await adminRequest(cluster.nodes[0]!.meshAddress, "admin.volume.list")).volumes as { name: string }[];
    expect(volumes.map((volume) => volume.name)).not.toContain("undefined");
    const mistyped = await untypedAdmin("admin.volume.create", { name: "typed", sizeBytes: "16M" });
    expect([mistyped.code, mistyped.message]).toEqual(["BAD_ARGUMENT", "'admin.volume.create': argument 'sizeBytes' must be a whole number >= 0 (string \"16M\")"]);
    expect((await untypedAdmin("admin.volume.info", {})).code).toBe("BAD_ARGUMENT");
    expect((await untypedAdmin("admin.snap.delete", { volume: "vol", name: 7 })).code).toBe("BAD_ARGUMENT");
    expect((await untypedAdmin("admin.snap.create", { volumes: "vol", name: "s" })).code).toBe("BAD_ARGUMENT");
    const extra = await untypedAdmin("admin.volume.delete", { name: "vol", force: true });
    expect([extra.code, extra.message]).toEqual(["BAD_ARGUMENT", "'admin.volume.delete' takes no argument 'force'"]);
    // Refused whole: the volume named alongside the unknown argument is still there.
    expect((await adminRequest(cluster.nodes[0]!.meshAddress, "admin.volume.info", { name: "vol" })).name).toBe("vol");
    await goodClientWorks();
  });
});

describe("malformed NBD input", () => {
  test("a wrong magic in the client flags, or garbage, is disconnected", async () => {
    const { closed } = await rawExchange(cluster.nodes[0]!.nbdPort, crypto.getRandomValues(new Uint8Array(200)));
    expect(closed).toBe(true);
    await goodClientWorks();
  });

  test("requests past the end and over 32 MiB get error replies and the connection keeps working", async () => {
    const node = cluster.nodes[0]!;
    const client = await NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: "vol" });
    try {
      await expect(client.read(16 * 1024 * 1024 - 512, 4096)).rejects.toThrow(/EINVAL|EOVERFLOW|past/i);
      await expect(client.read(0, 33 * 1024 * 1024)).rejects.toThrow(/EINVAL|EOVERFLOW|exceeds/i);
      const data = await client.read(0, 4096);
      expect(data.every((b) => b === 0x42)).toBe(true);
    } finally {
      await client.close();
    }
  });

  test("an unknown export is refused and a truncated request just drops that client", async () => {
    const node = cluster.nodes[0]!;
    await expect(NbdClient.connect({ host: "127.0.0.1", port: node.nbdPort, exportName: "nope" })).rejects.toThrow();
    const info = await run(["nbdinfo", `nbd://127.0.0.1:${node.nbdPort}/nope`]);
    expect(info.exitCode).not.toBe(0);
    await goodClientWorks();
  });
});

describe("malformed peer requests", () => {
  test("a member that sends missing or mistyped arguments gets BAD_ARGUMENT naming them; the node keeps serving", async () => {
    // A separate node: the test joins it as a member, which a shared cluster should not keep.
    const alone = await TestCluster.start(1);
    const peer = await dialQuietly(alone.nodes[0]!);
    try {
      // Asked before hello too: catalog pieces are answered to anyone.
      const piece = await peerRefusal(peer, "catalog.piece", { ref: 42, offset: 0 });
      expect([piece.code, piece.message]).toEqual(["BAD_ARGUMENT", "'catalog.piece': argument 'ref' must be a non-empty string (number 42)"]);
      const { groupId, hello } = await joinAsMember(peer, "peer-x");
      expect(hello.nodeId).toBe(alone.nodes[0]!.id);
      const seal = await peerRefusal(peer, "move.seal", { final: true });
      expect([seal.code, seal.message]).toEqual(["BAD_ARGUMENT", "'move.seal': argument 'stepId' must be a non-empty string (missing)"]);
      expect((await peerRefusal(peer, "move.install", { stepId: "s", v: "u", p: "0", pieces: [] })).message).toContain("argument 'p'");
      expect((await peerRefusal(peer, "snap.rollback", { uid: "u" })).message).toContain("argument 'layer'");
      expect((await peerRefusal(peer, "store.changedPages", { v: "u", since: 3 })).message).toContain("argument 'since'");
      // The same connection, and the node, still serve.
      expect((await peer.request("ping", {})).result.groupId).toBe(groupId);
      expect((await alone.shoal(["volume", "create", "after", "--size", "8M", "--nodes", alone.nodes[0]!.id])).exitCode).toBe(0);
    } finally {
      peer.close();
      await alone.stop();
    }
  }, 60_000);
});

describe("malformed replica-set messages", () => {
  test("a replica message that does not parse is BAD_FRAME naming the field; the replicated volume keeps serving", async () => {
    const pair = await TestCluster.start(2);
    const peer = await dialQuietly(pair.nodes[0]!);
    try {
      expect((await pair.shoal(["volume", "create", "twice", "--size", "16M", "--replicas", "2"])).exitCode).toBe(0);
      const uid = JSON.parse((await pair.shoal(["volume", "info", "twice", "--json"])).stdout).uid as string;
      const { groupId } = await joinAsMember(peer, "peer-y");
      const refusals = [
        await peerRefusal(peer, "replica.msg", { u: uid, m: { kind: "prepare", volume: "twice", version: -1, ballot: { round: 1, node: "peer-y" } } }),
        await peerRefusal(peer, "replica.msg", { u: uid, m: { kind: "copy", table: { volume: "twice", version: 1, sets: [[{ node: "node1", since: 1 }]] }, group: 0, batch: "b", chunks: ["x"] } }),
        await peerRefusal(peer, "replica.msg", { u: uid, m: { kind: "no-such-kind" } }),
        await peerRefusal(peer, "replica.msg", { u: uid, m: "not an object" }),
      ];
      for (const refusal of refusals) {
        expect(refusal.code).toBe("BAD_FRAME");
        expect(refusal.message).toContain("replica message from peer-y for 'twice' is malformed");
      }
      expect(refusals[0]!.message).toContain("version");
      expect(refusals[1]!.message).toContain("chunk");
      // The connection and the volume still serve, through both nodes.
      expect((await peer.request("ping", {})).result.groupId).toBe(groupId);
      for (const node of pair.nodes) {
        const io = await run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M", node.nbdUrl("twice")]);
        expect(io.exitCode).toBe(0);
        expect(io.stdout).not.toMatch(/verification failed|error/i);
      }
    } finally {
      peer.close();
      await pair.stop();
    }
  }, 60_000);
});

/** A mesh connection to `node` whose link logs stay quiet (the test's peer has no address to dial back). */
function dialQuietly(node: TestNode): Promise<MeshConnection> {
  return dialMesh(node.meshAddress, () => ({ result: {} }), { info: () => {}, warn: () => {} });
}

/** Joins the connection's far node's group as member `id` and says hello as that peer. */
async function joinAsMember(peer: MeshConnection, id: string): Promise<{ groupId: string; hello: { nodeId: string } }> {
  const member = { id, identity: crypto.randomUUID(), meshAddress: "127.0.0.1:1", nbdAddress: "127.0.0.1:1", joinedAtMs: Date.now() };
  const { groupId } = (await peer.request("ping", {})).result;
  await peer.request("group.join", { member });
  const hello = await peer.request("hello", { role: "peer", groupId, member, digest: "" });
  return { groupId: String(groupId), hello: { nodeId: String(hello.result.nodeId) } };
}

async function peerRefusal(peer: MeshConnection, op: string, args: Record<string, unknown>): Promise<ShoalError> {
  return peer.request(op, args, undefined, 5000).then(
    () => new ShoalError("INTERNAL", `'${op}' with ${JSON.stringify(args)} was accepted`),
    (err: unknown) => err as ShoalError,
  );
}
