// What receiving bytes costs a Bun process, by the way it reads the socket: one sender pushes
// --size bytes over loopback TCP to a fresh receiver process per measure, and the receiver's CPU
// (user + system, every thread, from just before it connects until the data is in and the garbage
// collected) and minor page faults are reported per GiB. Each Bun way is run with the allocator's
// default purge delay and with MIMALLOC_PURGE_DELAY=-1 (never hand freed memory back), rounds
// interleaved so load on the shared CPUs hits every way alike. The anchor is `cat` reading the
// socket (bash's /dev/tcp) into /dev/null: the kernel's copy and nothing else.
//
//   bun test/bench/recv-cost.ts [--size 1G] [--rounds 2] [--ways a,b,...] [--json]
//
// Ways: bun-buffer, bun-uint8array, bun-arraybuffer (Bun.connect's data handler per binaryType),
// net-data (node:net 'data' events), net-onread (node:net with onread into one reused buffer),
// fd-read-sync / fd-read (a socket made with libc's socket(2)+connect(2) through bun:ffi, read
// with fs.readSync / fs.read into one reused buffer), bun-paused-worker (a Bun.connect socket
// paused so Bun never reads it; a worker thread polls its descriptor and reads into a ring of
// shared buffers the main thread takes by Atomics.waitAsync), file-stream (Bun.file(fd).stream()),
// cat.
// The sender writes a pattern (byte i of the stream is i % 251) and every receiver checks the
// first and last byte of each read, so a way that hands back stale or foreign bytes fails.
import * as fs from "node:fs";
import * as net from "node:net";
import { parseArgs } from "node:util";
import { parentPort } from "node:worker_threads";
import { parseSize } from "../../core/geometry.ts";
import { run } from "../integration/_cluster.ts";
import { loadAverage, printReport, progress, table } from "./_bench.ts";

const GiB = 1024 * 1024 * 1024;
const PATTERN_PERIOD = 251;
/** A whole number of pattern periods, so consecutive writes of it continue the pattern. */
const SEND_CHUNK_BYTES = PATTERN_PERIOD * 4096;
const READ_BUFFER_BYTES = 1024 * 1024;
/** After the last byte: long enough for the allocator's 10 ms purge timer to fire and be counted. */
const SETTLE_MS = 200;

const WAYS = ["bun-buffer", "bun-uint8array", "bun-arraybuffer", "net-data", "net-onread", "fd-read-sync", "fd-read", "bun-paused-worker", "file-stream", "cat"] as const;
type Way = (typeof WAYS)[number];

const USAGE = `usage: bun test/bench/recv-cost.ts [--size 1G] [--rounds 2] [--ways ${WAYS.join(",")}] [--json]
Receiver CPU s/GiB and page faults/GiB for each way of reading a loopback TCP socket in Bun.`;

interface Measure {
  bytes: number;
  cpuSeconds: number;
  minorFaults: number;
  seconds: number;
}

// ---------------------------------------------------------------- sender (a child process)

function send(sizeBytes: number): void {
  const chunk = new Uint8Array(SEND_CHUNK_BYTES);
  for (let index = 0; index < chunk.length; index++) chunk[index] = index % PATTERN_PERIOD;
  const listener = Bun.listen<{ sent: number; rest: Uint8Array | undefined }>({
    hostname: "127.0.0.1",
    port: 0,
    data: { sent: 0, rest: undefined },
    socket: {
      open(socket) {
        socket.data = { sent: 0, rest: undefined };
        pump(socket);
      },
      drain: pump,
      data() {},
    },
  });
  function pump(socket: import("bun").Socket<{ sent: number; rest: Uint8Array | undefined }>): void {
    const state = socket.data;
    for (;;) {
      const piece = state.rest ?? chunk.subarray(0, Math.min(SEND_CHUNK_BYTES, sizeBytes - state.sent));
      if (piece.byteLength === 0) return void socket.end();
      const written = Math.max(socket.write(piece), 0);
      state.sent += written;
      state.rest = written < piece.byteLength ? piece.subarray(written) : undefined;
      if (state.rest !== undefined) return; // drain calls again
    }
  }
  console.log(JSON.stringify({ port: listener.port }));
  process.stdin.on("end", () => process.exit(0)); // the parent closes stdin when done
  process.stdin.resume();
}

// ---------------------------------------------------------------- receivers (a child process each)

class PatternCheck {
  received = 0;

  /** Checks the first and last byte of the next `count` bytes of the stream, as read into `bytes`. */
  next(bytes: Uint8Array, offset: number, count: number): void {
    if (count === 0) return;
    const first = bytes[offset]!;
    const last = bytes[offset + count - 1]!;
    if (first !== this.received % PATTERN_PERIOD || last !== (this.received + count - 1) % PATTERN_PERIOD) {
      throw new Error(`stream byte ${this.received}: read ${first}..${last}, expected ${this.received % PATTERN_PERIOD}..${(this.received + count - 1) % PATTERN_PERIOD}`);
    }
    this.received += count;
  }
}

function receiveBun(port: number, binaryType: "buffer" | "uint8array" | "arraybuffer"): Promise<number> {
  const check = new PatternCheck();
  return new Promise((resolve, reject) => {
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        binaryType,
        data(_socket, chunk: Uint8Array | ArrayBuffer) {
          const bytes = chunk instanceof ArrayBuffer ? new Uint8Array(chunk) : chunk;
          check.next(bytes, 0, bytes.byteLength);
        },
        close: () => resolve(check.received),
        error: (_socket, error) => reject(error),
      },
    }).catch(reject);
  });
}

function receiveNetData(port: number): Promise<number> {
  const check = new PatternCheck();
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    socket.on("data", (chunk: Buffer) => check.next(chunk, 0, chunk.byteLength));
    socket.on("error", reject);
    socket.on("close", () => resolve(check.received));
  });
}

function receiveNetOnread(port: number): Promise<number> {
  const check = new PatternCheck();
  const buffer = Buffer.alloc(READ_BUFFER_BYTES);
  return new Promise((resolve, reject) => {
    const socket = net.connect({
      host: "127.0.0.1",
      port,
      onread: {
        buffer,
        callback(count: number, into: Uint8Array) {
          if (into.buffer !== buffer.buffer) throw new Error("onread handed over a buffer other than the one given");
          check.next(into, 0, count);
          return true;
        },
      },
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(check.received));
  });
}

/** A blocking TCP socket connected to 127.0.0.1:port, made with libc (no Bun socket around it). */
function libcConnect(port: number): number {
  const { dlopen, FFIType, ptr } = require("bun:ffi") as typeof import("bun:ffi");
  const libc = dlopen("libc.so.6", {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    connect: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
  });
  const AF_INET = 2;
  const SOCK_STREAM = 1;
  const fd = libc.symbols.socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw new Error("socket(2) failed");
  const address = new Uint8Array(16); // struct sockaddr_in
  new DataView(address.buffer).setUint16(0, AF_INET, true);
  new DataView(address.buffer).setUint16(2, port, false);
  address.set([127, 0, 0, 1], 4);
  if (libc.symbols.connect(fd, ptr(address), address.byteLength) !== 0) throw new Error("connect(2) failed");
  return fd;
}

function receiveFdSync(port: number): number {
  const fd = libcConnect(port);
  const check = new PatternCheck();
  const buffer = new Uint8Array(READ_BUFFER_BYTES);
  for (;;) {
    const count = fs.readSync(fd, buffer, 0, buffer.byteLength, null);
    if (count === 0) break;
    check.next(buffer, 0, count);
  }
  fs.closeSync(fd);
  return check.received;
}

function receiveFdAsync(port: number): Promise<number> {
  const fd = libcConnect(port);
  const check = new PatternCheck();
  const buffer = new Uint8Array(READ_BUFFER_BYTES);
  return new Promise((resolve, reject) => {
    const next = () =>
      fs.read(fd, buffer, 0, buffer.byteLength, null, (err, count) => {
        if (err) return reject(err);
        if (count === 0) {
          fs.closeSync(fd);
          return resolve(check.received);
        }
        check.next(buffer, 0, count);
        next();
      });
    next();
  });
}

/** Slots in the ring a reader worker fills and the main thread empties. */
const RING_SLOTS = 4;
/** The ring's control words: slots filled, slots emptied, end (1 EOF, 2 error), then each slot's byte count. */
const FILLED = 0;
const EMPTIED = 1;
const ENDED = 2;
const COUNTS = 3;

/** The reader thread: poll(2) the descriptor, read into the next free slot, tell the main thread. */
function readerWorker(): void {
  parentPort!.once("message", (message: { fd: number; control: SharedArrayBuffer; ring: SharedArrayBuffer }) => {
    const { fd } = message;
    const control = new Int32Array(message.control);
    const ring = new Uint8Array(message.ring);
    const { dlopen, FFIType, ptr } = require("bun:ffi") as typeof import("bun:ffi");
    const libc = dlopen("libc.so.6", { poll: { args: [FFIType.ptr, FFIType.u64, FFIType.i32], returns: FFIType.i32 } });
    const pollfd = new Int32Array(2); // struct pollfd: fd, events | revents << 16
    const POLLIN = 1;
    for (let filled = 0; ; ) {
      for (let emptied = Atomics.load(control, EMPTIED); filled - emptied >= RING_SLOTS; emptied = Atomics.load(control, EMPTIED)) Atomics.wait(control, EMPTIED, emptied);
      const slot = filled % RING_SLOTS;
      let count: number;
      try {
        count = fs.readSync(fd, ring, slot * READ_BUFFER_BYTES, READ_BUFFER_BYTES, null);
      } catch (err) {
        if ((err as { code?: string }).code !== "EAGAIN") {
          Atomics.store(control, ENDED, 2);
          Atomics.notify(control, FILLED);
          return;
        }
        pollfd[0] = fd;
        pollfd[1] = POLLIN;
        libc.symbols.poll(ptr(pollfd), 1, -1);
        continue;
      }
      if (count === 0) {
        Atomics.store(control, ENDED, 1);
        Atomics.notify(control, FILLED);
        return;
      }
      control[COUNTS + slot] = count;
      Atomics.store(control, FILLED, ++filled);
      Atomics.notify(control, FILLED);
    }
  });
}

async function receivePausedWorker(port: number): Promise<number> {
  const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
  socket.pause();
  const control = new Int32Array(new SharedArrayBuffer(4 * (COUNTS + RING_SLOTS)));
  const ring = new Uint8Array(new SharedArrayBuffer(RING_SLOTS * READ_BUFFER_BYTES));
  const worker = new Worker(import.meta.path);
  // Bun's sockets have `fd`; its types do not say so.
  worker.postMessage({ fd: (socket as unknown as { fd: number }).fd, control: control.buffer, ring: ring.buffer });
  const check = new PatternCheck();
  for (let emptied = 0; ; ) {
    const filled = Atomics.load(control, FILLED);
    if (filled === emptied) {
      // The end is set after the last slot is counted filled: look at FILLED again once it is seen.
      if (Atomics.load(control, ENDED) !== 0 && Atomics.load(control, FILLED) === emptied) break;
      await Atomics.waitAsync(control, FILLED, filled).value;
      continue;
    }
    for (; emptied < filled; emptied++) {
      const slot = emptied % RING_SLOTS;
      check.next(ring, slot * READ_BUFFER_BYTES, control[COUNTS + slot]!);
    }
    Atomics.store(control, EMPTIED, emptied);
    Atomics.notify(control, EMPTIED);
  }
  if (Atomics.load(control, ENDED) === 2) throw new Error("the reader worker's read failed");
  worker.terminate();
  socket.end();
  return check.received;
}

async function receiveFileStream(port: number): Promise<number> {
  const fd = libcConnect(port);
  const check = new PatternCheck();
  for await (const chunk of Bun.file(fd).stream()) check.next(chunk, 0, chunk.byteLength);
  return check.received;
}

function minorFaults(): number {
  // Fields after "(comm) ": state is the 1st, minflt the 8th.
  return Number(fs.readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ")[7]);
}

async function receive(way: Way, port: number): Promise<void> {
  const before = process.resourceUsage();
  const faultsBefore = minorFaults();
  const startedMs = performance.now();
  const bytes = await receiveBy(way, port);
  const seconds = (performance.now() - startedMs) / 1000;
  // The garbage the reads made is part of their cost: collect it, let the purge timer fire.
  Bun.gc(true);
  await Bun.sleep(SETTLE_MS);
  const after = process.resourceUsage();
  const cpuSeconds = (after.userCPUTime - before.userCPUTime + after.systemCPUTime - before.systemCPUTime) / 1e6;
  const measure: Measure = { bytes, cpuSeconds: cpuSeconds, minorFaults: minorFaults() - faultsBefore, seconds };
  console.log(JSON.stringify(measure));
  process.exit(0);
}

function receiveBy(way: Way, port: number): Promise<number> {
  switch (way) {
    case "bun-buffer":
      return receiveBun(port, "buffer");
    case "bun-uint8array":
      return receiveBun(port, "uint8array");
    case "bun-arraybuffer":
      return receiveBun(port, "arraybuffer");
    case "net-data":
      return receiveNetData(port);
    case "net-onread":
      return receiveNetOnread(port);
    case "fd-read-sync":
      return Promise.resolve(receiveFdSync(port));
    case "fd-read":
      return receiveFdAsync(port);
    case "bun-paused-worker":
      return receivePausedWorker(port);
    case "file-stream":
      return receiveFileStream(port);
    case "cat":
      throw new Error("cat is not a Bun way");
  }
}

// ---------------------------------------------------------------- the run

interface Row {
  way: Way;
  purge: "default" | "never";
  measures: Measure[];
}

/** `cat` reading the socket, under /usr/bin/time (its start-up is a millisecond, not subtracted). */
async function measureCat(port: number, sizeBytes: number): Promise<Measure> {
  const started = performance.now();
  const timed = await run(["/usr/bin/time", "-f", "%U %S %R", "bash", "-c", `exec cat </dev/tcp/127.0.0.1/${port} >/dev/null`], { timeoutMs: 600_000 });
  if (timed.exitCode !== 0) throw new Error(`cat from the socket failed: ${timed.stderr}`);
  const [user, system, faults] = timed.stderr.trim().split("\n").pop()!.split(" ").map(Number);
  return { bytes: sizeBytes, cpuSeconds: user! + system!, minorFaults: faults!, seconds: (performance.now() - started) / 1000 };
}

async function measureBun(way: Way, purge: Row["purge"], port: number, sizeBytes: number): Promise<Measure> {
  const env: Record<string, string> = { ...(process.env as Record<string, string>) };
  if (purge === "never") env.MIMALLOC_PURGE_DELAY = "-1";
  else delete env.MIMALLOC_PURGE_DELAY;
  // Bun.spawn, not run(): run() adds the parent's environment back, MIMALLOC_PURGE_DELAY included.
  const receiver = Bun.spawn([process.execPath, import.meta.path, "--role", "receive", "--way", way, "--port", String(port)], { env, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, exitCode] = await Promise.all([new Response(receiver.stdout).text(), new Response(receiver.stderr).text(), receiver.exited]);
  if (exitCode !== 0) throw new Error(`${way} receiver failed: ${stderr.slice(-2000)}`);
  const measure = JSON.parse(stdout.trim().split("\n").pop()!) as Measure;
  if (measure.bytes !== sizeBytes) throw new Error(`${way} received ${measure.bytes} of ${sizeBytes} bytes`);
  return measure;
}

async function startSender(sizeBytes: number): Promise<{ port: number; stop: () => void }> {
  const sender = Bun.spawn([process.execPath, import.meta.path, "--role", "send", "--size", String(sizeBytes)], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const reader = sender.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the sender exited before it listened");
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const { port } = JSON.parse(text.split("\n")[0]!) as { port: number };
  return {
    port,
    stop: () => {
      sender.stdin.end();
      sender.kill();
    },
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function perGiB(value: number, bytes: number): number {
  return (value * GiB) / bytes;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      role: { type: "string", default: "run" },
      way: { type: "string" },
      port: { type: "string" },
      size: { type: "string", default: "1G" },
      rounds: { type: "string", default: "2" },
      ways: { type: "string", default: WAYS.join(",") },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) return void console.log(USAGE);
  if (values.role === "send") return send(Number(values.size));
  if (values.role === "receive") return receive(values.way as Way, Number(values.port));
  const sizeBytes = parseSize(values.size!);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds ${values.rounds}: give a positive integer\n${USAGE}`);
  const ways = values.ways!.split(",") as Way[];
  for (const way of ways) if (!WAYS.includes(way)) throw new Error(`--ways: no way '${way}'\n${USAGE}`);
  const rows: Row[] = ways.flatMap((way): Row[] => (way === "cat" ? [{ way, purge: "default", measures: [] }] : [
    { way, purge: "default", measures: [] },
    { way, purge: "never", measures: [] },
  ]));
  const loads: number[] = [loadAverage()];
  const sender = await startSender(sizeBytes);
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const row of rows) {
        progress(`round ${round}/${rounds}: ${row.way}, purge ${row.purge}`);
        row.measures.push(row.way === "cat" ? await measureCat(sender.port, sizeBytes) : await measureBun(row.way, row.purge, sender.port, sizeBytes));
      }
      loads.push(loadAverage());
    }
  } finally {
    sender.stop();
  }
  const catCpu = median(rows.find((row) => row.way === "cat")?.measures.map((m) => perGiB(m.cpuSeconds, m.bytes)) ?? [Number.NaN]);
  const cells = rows.map((row) => {
    const cpu = row.measures.map((m) => perGiB(m.cpuSeconds, m.bytes));
    const faults = median(row.measures.map((m) => perGiB(m.minorFaults, m.bytes)));
    const rate = median(row.measures.map((m) => m.bytes / m.seconds / 1e6));
    return { ...row, cpuPerGiB: median(cpu), cpuRange: `${Math.min(...cpu).toFixed(2)}-${Math.max(...cpu).toFixed(2)}`, faultsPerGiB: faults, mbPerSecond: rate };
  });
  const report = [
    `receiving ${values.size} over loopback TCP, ${rounds} round(s), medians; load ${loads.map((l) => l.toFixed(1)).join(" -> ")}`,
    table(
      ["way", "purge", "CPU s/GiB", "range", "x cat", "minflt/GiB", "MB/s"],
      cells.map((c) => [c.way, c.purge, c.cpuPerGiB.toFixed(2), c.cpuRange, Number.isNaN(catCpu) ? "-" : (c.cpuPerGiB / catCpu).toFixed(1), Math.round(c.faultsPerGiB).toString(), Math.round(c.mbPerSecond).toString()]),
      2,
    ),
  ].join("\n");
  printReport(report, values.json!, () => ({ sizeBytes, rounds, loads, rows: cells }));
}

if (Bun.isMainThread) await main();
else readerWorker();
