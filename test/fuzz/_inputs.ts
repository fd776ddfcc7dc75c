// Seeded generators of hostile input for a node's two ports: random bytes, valid NBD sessions and
// mesh conversations that are then mutated (bit flips, boundary integers, huge declared lengths,
// truncation, splicing). The same seed always yields the same inputs, so a failure replays.
import { Packr } from "msgpackr";
import { encodeFrameHead } from "../../transport/mesh/frame.ts";
import {
  BASE_ALLOCATION_CONTEXT,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
} from "../../transport/nbd/nbd-codec.ts";
import type { Prng } from "../sim/kernel/prng.ts";

export type PortKind = "nbd" | "mesh";

export interface FuzzInput {
  port: PortKind;
  kind: string;
  bytes: Uint8Array;
}

/** What the generators aim at: the fuzzed export, and what a peer's hello must say to be accepted. */
export interface FuzzTargetInfo {
  exportName: string;
  exportSizeBytes: number;
  volumeUid: string;
  groupId: string;
  /** A real member's record, sent unchanged in hellos so the node treats the connection as that peer. */
  peerMember: { id: string; meshAddress: string; nbdAddress: string; joinedAtMs: number };
}

const INTERESTING_U32 = [0, 1, 0x7f, 0x80, 0xff, 0x1000, 0x7fffffff, 0x80000000, 0xfffffff0, 0xffffffff, 0x2000000, 0x2000001, 0x4000000, 0x400000];
const INTERESTING_VALUES: unknown[] = [0, 1, -1, 511, 512, 4096, 2 ** 31, 2 ** 32, 2 ** 53, -(2 ** 53), 1.5, NaN, Infinity, -Infinity, 1e308, "", "x", "fuzz", null, true, [], {}, [1, 2], 4 * 1024 * 1024, 32 * 1024 * 1024 + 1, 0xffffffff];
const packr = new Packr({ useRecords: false, moreTypes: false });

export function randomBytes(prng: Prng, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = prng.nextU32() & 0xff;
  return bytes;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const total = new Uint8Array(parts.reduce((sum, part) => sum + part.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    total.set(part, at);
    at += part.byteLength;
  }
  return total;
}

/** One to four random edits: bit flips, random bytes, boundary integers, cuts, repeats, inserts. */
export function mutate(prng: Prng, input: Uint8Array, protectBytes = 0): Uint8Array {
  let bytes: Uint8Array = new Uint8Array(input);
  const edits = prng.int(1, 4);
  for (let edit = 0; edit < edits && bytes.length > protectBytes; edit++) {
    const at = prng.int(protectBytes, bytes.length - 1);
    switch (prng.int(0, 6)) {
      case 0:
        bytes[at]! ^= 1 << prng.int(0, 7);
        break;
      case 1:
        bytes[at] = prng.nextU32() & 0xff;
        break;
      case 2: {
        const value = prng.pick(INTERESTING_U32);
        const start = Math.min(at, bytes.length - 4);
        if (start >= protectBytes) new DataView(bytes.buffer).setUint32(start, value);
        break;
      }
      case 3:
        bytes = bytes.slice(0, at);
        break;
      case 4: {
        const end = Math.min(bytes.length, at + prng.int(1, 64));
        bytes = concat([bytes.subarray(0, end), bytes.subarray(at, end), bytes.subarray(end)]);
        break;
      }
      case 5:
        bytes = concat([bytes.subarray(0, at), randomBytes(prng, prng.int(1, 32)), bytes.subarray(at)]);
        break;
      default:
        bytes = concat([bytes.subarray(0, at), bytes.subarray(Math.min(bytes.length, at + prng.int(1, 32)))]);
    }
  }
  return bytes;
}

/** A client's whole side of a valid NBD session: flags, options, and a few requests. */
export function nbdSession(prng: Prng, target: FuzzTargetInfo): Uint8Array {
  const parts: Uint8Array[] = [encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (prng.chance(0.5) ? NBD_FLAG_C_NO_ZEROES : 0))];
  const name = new TextEncoder().encode(target.exportName);
  const structured = prng.chance(0.7);
  if (structured) parts.push(encodeOption(NBD_OPT_STRUCTURED_REPLY));
  for (let extra = prng.int(0, 3); extra > 0; extra--) {
    const option = prng.pick([NBD_OPT_LIST, NBD_OPT_INFO, NBD_OPT_STARTTLS, NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT, prng.int(11, 40)]);
    const data =
      option === NBD_OPT_INFO
        ? encodeInfoRequest(target.exportName, [NBD_INFO_NAME, NBD_INFO_DESCRIPTION])
        : option === NBD_OPT_LIST_META_CONTEXT || option === NBD_OPT_SET_META_CONTEXT
          ? encodeMetaContextRequest(target.exportName, prng.chance(0.7) ? [BASE_ALLOCATION_CONTEXT] : ["base:", "qemu:dirty-bitmap:x"])
          : new Uint8Array(0);
    parts.push(encodeOption(option, data));
  }
  if (prng.chance(0.05)) return concat([...parts, encodeOption(NBD_OPT_ABORT)]);
  if (prng.chance(0.8)) parts.push(encodeOption(NBD_OPT_GO, encodeInfoRequest(target.exportName, [NBD_INFO_BLOCK_SIZE])));
  else parts.push(encodeOption(NBD_OPT_EXPORT_NAME, name));
  for (let request = prng.int(0, 6); request > 0; request--) parts.push(...nbdRequest(prng, target));
  if (prng.chance(0.5)) parts.push(encodeRequest({ type: NBD_CMD_DISC, flags: 0, handleHigh: 0, handleLow: 0, offset: 0, length: 0 }));
  return concat(parts);
}

function nbdRequest(prng: Prng, target: FuzzTargetInfo): Uint8Array[] {
  const type = prng.pick([NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS, prng.int(8, 20)]);
  const length = prng.chance(0.9) ? prng.int(1, 128) * 512 : prng.pick(INTERESTING_U32);
  const offset = prng.chance(0.9) ? prng.int(0, target.exportSizeBytes / 512 - 1) * 512 : prng.pick([target.exportSizeBytes, target.exportSizeBytes - 512, 2 ** 53 - 1, 2 ** 40]);
  const flags = prng.chance(0.8) ? 0 : prng.pick([NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_REQ_ONE, 0xffff, prng.int(0, 0xffff)]);
  const header = encodeRequest({ type, flags, handleHigh: prng.nextU32(), handleLow: prng.nextU32(), offset, length });
  if (type !== NBD_CMD_WRITE) return [header];
  // Huge declared writes carry only a little data: the server must not wait for (or buffer) 4 GiB.
  return [header, randomBytes(prng, Math.min(length, 64 * 1024))];
}

function frame(header: Record<string, unknown>, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  return concat([encodeFrameHead(header, payload.byteLength), payload]);
}

function maybeOdd(prng: Prng, value: unknown): unknown {
  return prng.chance(0.25) ? prng.pick(INTERESTING_VALUES) : value;
}

/** A hello (as the real peer, or as an admin client) and then a few requests; `helloBytes` long hello. */
export function meshConversation(prng: Prng, target: FuzzTargetInfo): { bytes: Uint8Array; helloBytes: number; asPeer: boolean } {
  const asPeer = prng.chance(0.7);
  const hello = frame({
    t: "q",
    i: 1,
    op: "hello",
    a: asPeer ? { role: "peer", groupId: target.groupId, member: target.peerMember, digest: "fuzz" } : { role: "admin" },
  });
  const parts: Uint8Array[] = [];
  for (let id = 2, count = prng.int(1, 6); id < count + 2; id++) parts.push(asPeer ? peerRequest(prng, target, id) : adminRequest(prng, id));
  return { bytes: concat([hello, ...parts]), helloBytes: hello.byteLength, asPeer };
}

function peerRequest(prng: Prng, target: FuzzTargetInfo, id: number): Uint8Array {
  const page = maybeOdd(prng, prng.int(0, 3));
  const offset = maybeOdd(prng, prng.int(0, 1024) * 512);
  const length = maybeOdd(prng, prng.int(1, 64) * 512);
  const volume = maybeOdd(prng, target.volumeUid);
  switch (prng.int(0, 7)) {
    case 0:
      return frame({ t: "q", i: id, op: "page.read", a: { v: volume, p: page, o: offset, n: length } });
    case 1: {
      const payload = randomBytes(prng, prng.int(0, 8192));
      return frame({ t: "q", i: id, op: "page.write", a: { v: volume, p: page, o: offset, f: maybeOdd(prng, false) } }, payload);
    }
    case 2:
      return frame({ t: "q", i: id, op: "page.zero", a: { v: volume, p: page, o: offset, n: length, f: false } });
    case 3:
      return frame({ t: "q", i: id, op: "page.status", a: { v: volume, ps: maybeOdd(prng, [page, 1, 2]) } });
    case 4:
      return frame({ t: "q", i: id, op: prng.pick(["store.usage", "store.flush", "catalog.dump", "ping", "store.changedPages"]), a: { v: volume } });
    case 5:
      return frame({ t: "q", i: id, op: "snap.msg", a: { msg: snapshotMessage(prng) } });
    case 6:
      // Not a request at all: a response to nothing, a frame of an unknown type, a header that is not a map.
      return prng.chance(0.5)
        ? frame({ t: prng.pick(["r", "x", 7, null]), i: maybeOdd(prng, id), ok: maybeOdd(prng, true), a: maybeOdd(prng, {}) })
        : rawFrame(packr.pack(prng.pick([[1, 2, 3], "text", 42, null, { t: "q" }])));
    default:
      return frame({ t: "q", i: maybeOdd(prng, id), op: maybeOdd(prng, "page.read"), a: maybeOdd(prng, { v: volume }) });
  }
}

function adminRequest(prng: Prng, id: number): Uint8Array {
  // Read-only admin operations only: the fuzzer must not delete what the checks read back.
  const op = prng.pick(["admin.node.info", "admin.volume.list", "admin.route.nodes", "admin.volume.info", "admin.route.show", "admin.snap.list", "page.read", "no.such.op"]);
  return frame({ t: "q", i: id, op, a: { name: maybeOdd(prng, "fuzz"), volume: maybeOdd(prng, "fuzz") } });
}

function snapshotMessage(prng: Prng): unknown {
  const type = prng.pick(["snap.prepare", "snap.take", "snap.commit", "snap.abort", "snap.ready", "snap.taken", "snap.refuse", "snap.ack", "snap.cut", "snap.allcut", "snap.bogus"]);
  return {
    type: maybeOdd(prng, type),
    snapshotId: maybeOdd(prng, `fuzz.${prng.int(0, 3)}`),
    name: maybeOdd(prng, "fz"),
    volumes: maybeOdd(prng, ["fuzz"]),
    mode: maybeOdd(prng, prng.pick(["hold", "timestamp"])),
    startedAtMs: maybeOdd(prng, Date.now()),
    sentAtMs: maybeOdd(prng, Date.now()),
    holdTimeoutMs: maybeOdd(prng, 200),
    maxClockSkewMs: maybeOdd(prng, 5),
    prepareNonce: maybeOdd(prng, "n"),
    cutAtMs: maybeOdd(prng, Date.now() + 50),
    outcome: maybeOdd(prng, "aborted"),
    reason: maybeOdd(prng, { code: "TIMEOUT", message: "fuzz" }),
    error: maybeOdd(prng, { code: "TIMEOUT", message: "fuzz" }),
    hold: maybeOdd(prng, { heldMs: 1.5, queued: 2, longestWaitMs: 1 }),
  };
}

/** A frame around arbitrary header bytes (the length prefixes are right, the content may not be). */
function rawFrame(headerBytes: Uint8Array): Uint8Array {
  const prefix = new Uint8Array(8);
  const view = new DataView(prefix.buffer);
  view.setUint32(0, 4 + headerBytes.byteLength);
  view.setUint32(4, headerBytes.byteLength);
  return concat([prefix, headerBytes]);
}

/** A frame whose prefix declares a huge length (or header length) and then sends little. */
export function hugeMeshFrame(prng: Prng): Uint8Array {
  const prefix = new Uint8Array(8);
  const view = new DataView(prefix.buffer);
  view.setUint32(0, prng.pick([0xffffffff, 0x7fffffff, 36 * 1024 * 1024, 36 * 1024 * 1024 + 8, 4 * 1024 * 1024 + 5, prng.nextU32()]));
  view.setUint32(4, prng.pick([0, 3, 4 * 1024 * 1024, 4 * 1024 * 1024 + 1, 0xffffffff, prng.nextU32()]));
  return concat([prefix, randomBytes(prng, prng.int(0, 256))]);
}

/** The next input of a mixed stream: what the soak script and the suite's fuzz test send. */
export function nextInput(prng: Prng, target: FuzzTargetInfo): FuzzInput {
  const roll = prng.int(0, 9);
  if (roll === 0) return { port: "nbd", kind: "nbd-random", bytes: randomBytes(prng, prng.int(0, 2048)) };
  if (roll === 1) return { port: "mesh", kind: "mesh-random", bytes: randomBytes(prng, prng.int(0, 2048)) };
  if (roll === 2) return { port: "mesh", kind: "mesh-huge-length", bytes: hugeMeshFrame(prng) };
  if (roll <= 5) {
    const session = nbdSession(prng, target);
    const valid = prng.chance(0.1);
    return { port: "nbd", kind: valid ? "nbd-valid" : "nbd-mutated", bytes: valid ? session : mutate(prng, session) };
  }
  const { bytes, helloBytes, asPeer } = meshConversation(prng, target);
  const valid = prng.chance(0.1);
  // A peer's hello is never mutated: a hello naming a real member with an address changed into
  // another valid one is indistinguishable from that member moving (keeping impostors out is
  // TLS's job), and would take the group apart. Admin hellos are mutated half the time.
  const spareHello = asPeer || prng.chance(0.5);
  return { port: "mesh", kind: valid ? "mesh-valid" : "mesh-mutated", bytes: valid ? bytes : mutate(prng, bytes, spareHello ? helloBytes : 0) };
}
