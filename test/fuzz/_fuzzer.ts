// Drives a real two-node group with hostile input (see _inputs.ts) in phases — mixed mutated
// input, slow writers sending a byte at a time, a burst of a thousand connections — and after
// each phase checks the node under fire: still running, RSS under a bound, and a well-behaved
// client still writes and reads back its data through it (and through the other node).
import * as fs from "node:fs";
import type { Socket } from "bun";
import { adminRequest } from "../../cmd/_cli.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { run, TestCluster, type TestNode } from "../integration/_cluster.ts";
import { Prng } from "../sim/kernel/prng.ts";
import { MAX_REQUEST_BYTES } from "../../core/geometry.ts";
import { MAX_FRAME_BYTES } from "../../transport/mesh/frame.ts";
import { encodeClientFlags, encodeInfoRequest, encodeOption, encodeRequest, NBD_CMD_READ, NBD_CMD_WRITE, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_OPT_GO } from "../../transport/nbd/nbd-codec.ts";
import { nbdSession, nextInput, randomBytes, type FuzzInput, type FuzzTargetInfo, type PortKind } from "./_inputs.ts";

const VOLUME_BYTES = 16 * 1024 * 1024;
/** Whatever hostile clients do, the node under fire stays under this resident size. */
export const RSS_LIMIT_BYTES = 768 * 1024 * 1024;
/** Inputs remembered for the failure report. */
const RECENT_INPUTS = 32;

export class FuzzFailure extends Error {}

export class Fuzzer {
  inputsTried = 0;
  readonly byKind = new Map<string, number>();
  maxRssBytes = 0;
  private readonly recent: { index: number; input: FuzzInput }[] = [];
  private target!: FuzzTargetInfo;
  private goodRound = 0;

  private constructor(
    readonly cluster: TestCluster,
    readonly seed: number,
  ) {}

  /** Two nodes; "good" (what the checks write and read) and "fuzz" (what the fuzzer may write) span both. */
  static async start(seed: number): Promise<Fuzzer> {
    const cluster = await TestCluster.start(2);
    const fuzzer = new Fuzzer(cluster, seed);
    try {
      await fuzzer.setup();
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return fuzzer;
  }

  get victim(): TestNode {
    return this.cluster.nodes[0]!;
  }

  private get other(): TestNode {
    return this.cluster.nodes[1]!;
  }

  private async setup(): Promise<void> {
    for (const name of ["good", "fuzz"]) {
      const created = await this.cluster.shoal(["volume", "create", name, "--size", `${VOLUME_BYTES}`, "--page-size", "4M"]);
      if (created.exitCode !== 0) throw new Error(`volume create ${name}: ${created.stderr}`);
    }
    const info = await adminRequest(this.victim.meshAddress, "admin.node.info");
    const volume = await adminRequest(this.victim.meshAddress, "admin.volume.info", { name: "fuzz" });
    const { nodes } = await adminRequest(this.victim.meshAddress, "admin.route.nodes");
    const peer = nodes.find((member) => member.id === this.other.id)!;
    this.target = {
      exportName: "fuzz",
      exportSizeBytes: VOLUME_BYTES,
      volumeUid: volume.uid,
      groupId: String(info.groupId),
      peerMember: { id: peer.id, meshAddress: peer.meshAddress, nbdAddress: peer.nbdAddress, joinedAtMs: 0 },
    };
  }

  async stop(): Promise<void> {
    await this.cluster.stop();
  }

  private port(kind: PortKind): number {
    return kind === "nbd" ? this.victim.nbdPort : this.victim.meshPort;
  }

  private remember(input: FuzzInput): void {
    this.inputsTried++;
    this.byKind.set(input.kind, (this.byKind.get(input.kind) ?? 0) + 1);
    this.recent.push({ index: this.inputsTried, input });
    if (this.recent.length > RECENT_INPUTS) this.recent.shift();
  }

  /** `count` inputs from the mixed stream, `parallel` connections at a time. */
  async mixed(prng: Prng, count: number, parallel = 16): Promise<void> {
    const inputs: FuzzInput[] = [];
    for (let i = 0; i < count; i++) inputs.push(nextInput(prng, this.target));
    let next = 0;
    const worker = async () => {
      while (next < inputs.length) {
        const input = inputs[next++]!;
        this.remember(input);
        await exchange(this.port(input.port), [input.bytes], 0, 150);
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
  }

  /**
   * Slow writers: `connections` clients send a valid handshake (NBD) or frame (mesh) one byte at
   * a time while the well-behaved client works; none of them may stall it.
   */
  async slowLoris(prng: Prng, connections: number, durationMs: number): Promise<void> {
    const deadline = performance.now() + durationMs;
    const slow = Array.from({ length: connections }, (_, i) => {
      const input: FuzzInput =
        i % 2 === 0
          ? { port: "nbd", kind: "nbd-slow", bytes: nbdSession(prng, this.target) }
          : { port: "mesh", kind: "mesh-slow", bytes: nextInput(prng, this.target).bytes };
      this.remember(input);
      const bytes = [...input.bytes].map((byte) => new Uint8Array([byte]));
      return exchange(this.port(input.port), bytes, prng.int(5, 40), durationMs, deadline);
    });
    await this.checkGoodClient("during slow writers");
    await Promise.all(slow);
  }

  /**
   * Stalled big writers: `count` clients each declare the largest frame the protocol allows (an
   * NBD WRITE of 32 MiB after a valid handshake; a mesh frame of 36 MiB), send `sentBytes` of it and
   * stop. Whatever they send, the node may not hold all of it: memory must stay bounded.
   */
  async stalledBigWriters(prng: Prng, count: number, sentBytes: number): Promise<void> {
    const body = randomBytes(prng, sentBytes);
    const sockets = await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        const input: FuzzInput = i % 2 === 0 ? { port: "nbd", kind: "nbd-stalled-write", bytes: stalledNbdWrite(this.target) } : { port: "mesh", kind: "mesh-stalled-frame", bytes: stalledMeshFrame() };
        this.remember(input);
        return openAndSend(this.port(input.port), [input.bytes, body]);
      }),
    );
    try {
      await Bun.sleep(500); // let the node take in what the kernel buffered
      await this.checkHealthy(`with ${count} stalled writers of ${sentBytes >> 20} MiB each`);
    } finally {
      for (const socket of sockets) socket?.terminate();
    }
  }

  /**
   * Stalled readers: `count` clients open the export, ask for `requests` reads of the whole
   * volume and never read a byte of the replies. The replies may not pile up without limit.
   */
  async stalledReaders(prng: Prng, count: number, requests: number): Promise<void> {
    const sockets = await Promise.all(
      Array.from({ length: count }, () => {
        const input: FuzzInput = { port: "nbd", kind: "nbd-stalled-reader", bytes: stalledNbdReads(this.target, requests, prng.nextU32()) };
        this.remember(input);
        return openAndSend(this.port(input.port), [input.bytes], { paused: true });
      }),
    );
    try {
      await Bun.sleep(1000); // let the node read the volume into replies nobody takes
      await this.checkHealthy(`with ${count} clients not reading ${requests} whole-volume reads each`);
    } finally {
      for (const socket of sockets) socket?.terminate();
    }
  }

  /** `count` connections opened at once and held open (half of them mid-handshake) while the good client works. */
  async burst(prng: Prng, count: number): Promise<void> {
    const sockets: Socket<undefined>[] = [];
    const opened = await Promise.allSettled(
      Array.from({ length: count }, (_, i) => {
        const input: FuzzInput = { port: i % 3 === 2 ? "mesh" : "nbd", kind: "burst", bytes: i % 2 === 0 ? new Uint8Array(0) : nextInput(prng, this.target).bytes.subarray(0, 10) };
        this.remember(input);
        return Bun.connect({
          hostname: "127.0.0.1",
          port: this.port(input.port),
          socket: {
            open(socket) {
              if (input.bytes.byteLength > 0) socket.write(input.bytes);
            },
            data() {},
            error() {},
          },
        }).then((socket) => void sockets.push(socket));
      }),
    );
    const refused = opened.filter((result) => result.status === "rejected").length;
    try {
      await this.checkGoodClient(`with ${sockets.length} connections open (${refused} refused)`);
    } finally {
      for (const socket of sockets) socket.terminate();
    }
  }

  /** The victim is alive, under the RSS bound, and a client can write and read back through it. */
  async checkHealthy(phase: string): Promise<void> {
    if (process.env.SHOAL_FUZZ_VERBOSE) console.error(`fuzz: checking after ${phase} (${this.inputsTried} inputs), RSS ${(rssBytes(this.victim.proc!.pid) / 2 ** 20).toFixed(0)} MiB`);
    const proc = this.victim.proc!;
    if (proc.exitCode !== null) this.fail(phase, `the node exited with code ${proc.exitCode}`);
    if (this.other.proc!.exitCode !== null) this.fail(phase, `the other node exited with code ${this.other.proc!.exitCode}`);
    const rss = rssBytes(proc.pid);
    this.maxRssBytes = Math.max(this.maxRssBytes, rss);
    if (rss > RSS_LIMIT_BYTES) this.fail(phase, `the node's RSS is ${(rss / 2 ** 20).toFixed(0)} MiB, over ${RSS_LIMIT_BYTES / 2 ** 20} MiB`);
    await this.checkGoodClient(phase);
  }

  /** Writes a fresh pattern across a page boundary (one page per node) through the victim; reads it back through both nodes. */
  async checkGoodClient(phase: string): Promise<void> {
    const round = ++this.goodRound;
    const pattern = new Uint8Array(128 * 1024).fill(round & 0xff);
    const offset = 4 * 1024 * 1024 - 64 * 1024;
    try {
      await withDeadline(GOOD_CLIENT_TIMEOUT_MS, "write and read back", async () => {
        const client = await NbdClient.connect({ host: "127.0.0.1", port: this.victim.nbdPort, exportName: "good" });
        try {
          await client.write(offset, pattern);
          await client.flush();
          const back = await client.read(offset, pattern.byteLength);
          if (!Buffer.from(back).equals(Buffer.from(pattern))) throw new Error("read back different data through the node under fire");
        } finally {
          await client.close();
        }
      });
      const viaOther = await run(["qemu-io", "-f", "raw", "-r", "-c", `read -P ${round & 0xff} ${offset} ${pattern.byteLength}`, this.other.nbdUrl("good")], { timeoutMs: 20_000 });
      if (viaOther.exitCode !== 0 || /fail|error/i.test(viaOther.stdout)) throw new Error(`qemu-io through the other node: ${viaOther.stdout}${viaOther.stderr}`);
    } catch (err) {
      if (err instanceof FuzzFailure) throw err;
      this.fail(phase, `the well-behaved client failed: ${(err as Error).message}`);
    }
  }

  private fail(phase: string, what: string): never {
    const recent = this.recent
      .map(({ index, input }) => `  #${index} ${input.kind} -> ${input.port}: ${Buffer.from(input.bytes.subarray(0, 96)).toString("hex")}${input.bytes.byteLength > 96 ? "…" : ""} (${input.bytes.byteLength} bytes)`)
      .join("\n");
    const tail = this.victim.stderrLog.split("\n").slice(-15).join("\n");
    throw new FuzzFailure(`seed ${this.seed}, after ${phase}: ${what}\nlast inputs:\n${recent}\nnode log tail:\n${tail}`);
  }
}

function stalledNbdWrite(target: FuzzTargetInfo): Uint8Array {
  const handshake = [
    encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES),
    encodeOption(NBD_OPT_GO, encodeInfoRequest(target.exportName, [])),
    encodeRequest({ type: NBD_CMD_WRITE, flags: 0, handleHigh: 1, handleLow: 1, offset: 0, length: MAX_REQUEST_BYTES }),
  ];
  return Buffer.concat(handshake);
}

function stalledNbdReads(target: FuzzTargetInfo, requests: number, handle: number): Uint8Array {
  const parts = [encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES), encodeOption(NBD_OPT_GO, encodeInfoRequest(target.exportName, []))];
  for (let i = 0; i < requests; i++) {
    parts.push(encodeRequest({ type: NBD_CMD_READ, flags: 0, handleHigh: handle, handleLow: i, offset: 0, length: target.exportSizeBytes }));
  }
  return Buffer.concat(parts);
}

function stalledMeshFrame(): Uint8Array {
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setUint32(0, MAX_FRAME_BYTES);
  new DataView(prefix.buffer).setUint32(4, 16);
  return prefix;
}

/** Connects and writes `pieces` in full (waiting for drains), then leaves the socket open. */
async function openAndSend(port: number, pieces: Uint8Array[], options: { paused?: boolean } = {}): Promise<Socket<undefined> | undefined> {
  let pending = Buffer.concat(pieces);
  let resolveSent: () => void = () => {};
  const sent = new Promise<void>((resolve) => (resolveSent = resolve));
  const push = (socket: Socket<undefined>) => {
    while (pending.byteLength > 0) {
      const written = socket.write(pending);
      if (written <= 0) return;
      pending = pending.subarray(written);
    }
    resolveSent();
  };
  let socket: Socket<undefined>;
  try {
    socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {}, drain: (s) => push(s), close: () => resolveSent(), error() {} } });
  } catch {
    return undefined;
  }
  // A client that never reads: the kernel's receive buffer fills and the node's replies queue.
  if (options.paused) socket.pause();
  push(socket);
  // A node that drops the connection (or stops reading for good) ends the wait too.
  await Promise.race([sent, Bun.sleep(5000)]);
  return socket;
}

/** A well-behaved client that waits this long is not being served. */
const GOOD_CLIENT_TIMEOUT_MS = 20_000;

async function withDeadline(timeoutMs: number, what: string, work: () => Promise<void>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} took over ${timeoutMs} ms`)), timeoutMs)));
  try {
    await Promise.race([work(), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resident set size of a process, from /proc. */
export function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) * 1024 : 0;
}

/**
 * Connects, sends `pieces` (with `gapMs` between them), then waits until the server closes or
 * `waitMs` passes, and hangs up. Connection failures count as tried inputs too.
 */
async function exchange(port: number, pieces: Uint8Array[], gapMs: number, waitMs: number, deadlineMs = Infinity): Promise<void> {
  let closed = false;
  let socket: Socket<undefined> | undefined;
  try {
    socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        data() {},
        close() {
          closed = true;
        },
        error() {},
      },
    });
  } catch {
    return;
  }
  for (const piece of pieces) {
    if (closed || performance.now() > deadlineMs) break;
    socket.write(piece);
    if (gapMs > 0) await Bun.sleep(gapMs);
  }
  const until = Math.min(performance.now() + waitMs, deadlineMs);
  while (!closed && performance.now() < until) await Bun.sleep(10);
  socket.terminate();
}

export interface Campaign {
  /** Rounds of mixed input, each followed by a health check. */
  mixedRounds: number;
  inputsPerRound: number;
  slowWriters: number;
  slowWritersMs: number;
  burstConnections: number;
  /** Clients that send most of a maximal frame and stall, and how much each sends. */
  stalledWriters: number;
  stalledBytes: number;
  /** Clients that ask for whole-volume reads and never read the replies, and how many reads each. */
  stalledReaders: number;
  stalledReads: number;
}

export const SUITE_CAMPAIGN: Campaign = { mixedRounds: 3, inputsPerRound: 1000, slowWriters: 24, slowWritersMs: 3000, burstConnections: 1000, stalledWriters: 48, stalledBytes: 24 * 1024 * 1024, stalledReaders: 16, stalledReads: 12 };

/** Every phase once, in order, checking health after each; throws FuzzFailure with the seed and recent inputs. */
export async function runCampaign(fuzzer: Fuzzer, prng: Prng, campaign: Campaign): Promise<void> {
  await fuzzer.checkHealthy("start");
  for (let round = 1; round <= campaign.mixedRounds; round++) {
    await fuzzer.mixed(prng.fork(), campaign.inputsPerRound);
    await fuzzer.checkHealthy(`mixed input round ${round}`);
  }
  await fuzzer.slowLoris(prng.fork(), campaign.slowWriters, campaign.slowWritersMs);
  await fuzzer.checkHealthy("slow writers");
  await fuzzer.burst(prng.fork(), campaign.burstConnections);
  await fuzzer.checkHealthy("connection burst");
  await fuzzer.stalledBigWriters(prng.fork(), campaign.stalledWriters, campaign.stalledBytes);
  await fuzzer.checkHealthy("stalled big writers");
  await fuzzer.stalledReaders(prng.fork(), campaign.stalledReaders, campaign.stalledReads);
  await fuzzer.checkHealthy("stalled readers");
}
