// The anchor of the move benchmark (test/bench/move.ts): raw TCP between two Bun processes on
// loopback, with the same byte count as a page move. Run as two processes, receiver first:
//
//   bun test/bench/_tcp-baseline.ts receive --bytes N [--file PATH]   prints {"port":P}, then {"bytes":N,...} when done
//   bun test/bench/_tcp-baseline.ts send --port P --bytes N           prints {"bytes":N,"ms":T}
//
// The sender writes 1 MiB buffers and, when the socket takes only part of one, waits for `drain`
// before writing the rest (the same rule as transport/wire/socket-writer.ts). With --file the receiver
// writes every chunk to the file as it arrives and fsyncs once at the end (a page move's target
// fsyncs every page it installs, so this is the kinder anchor). The receiver answers one byte
// after the last byte (and the fsync); the sender's time runs from connect to that answer.
import * as fs from "node:fs";
import { parseArgs } from "node:util";

const CHUNK_BYTES = 1024 * 1024;
const ACK = new Uint8Array([1]);

interface Args {
  role: "send" | "receive";
  port: number;
  bytes: number;
  file: string | undefined;
}

function parse(): Args {
  const { values, positionals } = parseArgs({
    args: Bun.argv.slice(2),
    options: { port: { type: "string", default: "0" }, bytes: { type: "string" }, file: { type: "string" } },
    allowPositionals: true,
    strict: true,
  });
  const role = positionals[0];
  if (role !== "send" && role !== "receive") throw new Error("usage: _tcp-baseline.ts send|receive --bytes N [--port P] [--file PATH]");
  const bytes = Number(values.bytes);
  const port = Number(values.port);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new Error(`--bytes ${values.bytes}: give a positive integer`);
  if (!Number.isInteger(port) || port < 0 || port > 65535 || (role === "send" && port === 0)) throw new Error(`--port ${values.port}: give a TCP port`);
  return { role, port, bytes, file: values.file };
}

function receive(args: Args): void {
  const fd = args.file === undefined ? undefined : fs.openSync(args.file, "w");
  let received = 0;
  let firstByteAtMs = 0;
  const listener = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(socket, data) {
        if (received === 0) firstByteAtMs = performance.now();
        // Written before the handler returns: Bun reuses `data`'s memory afterwards.
        if (fd !== undefined) fs.writeSync(fd, data);
        received += data.byteLength;
        if (received < args.bytes) return;
        let fsyncMs = 0;
        if (fd !== undefined) {
          const started = performance.now();
          fs.fsyncSync(fd);
          fs.closeSync(fd);
          fsyncMs = performance.now() - started;
        }
        socket.write(ACK);
        socket.end();
        console.log(JSON.stringify({ bytes: received, receiveMs: performance.now() - firstByteAtMs, fsyncMs }));
        listener.stop();
      },
    },
  });
  console.log(JSON.stringify({ port: listener.port }));
}

async function send(args: Args): Promise<void> {
  const chunk = new Uint8Array(CHUNK_BYTES);
  for (let offset = 0; offset < CHUNK_BYTES; offset += 65536) crypto.getRandomValues(chunk.subarray(offset, offset + 65536));
  let drained: (() => void) | undefined;
  let acked: (() => void) | undefined;
  const ackReceived = new Promise<void>((resolve) => (acked = resolve));
  const startedAtMs = performance.now();
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port: args.port,
    socket: {
      drain() {
        drained?.();
      },
      data() {
        acked?.();
      },
    },
  });
  for (let sent = 0; sent < args.bytes; ) {
    let rest = chunk.subarray(0, Math.min(CHUNK_BYTES, args.bytes - sent));
    for (;;) {
      const written = Math.max(socket.write(rest), 0);
      sent += written;
      if (written >= rest.byteLength) break;
      rest = rest.subarray(written);
      await new Promise<void>((resolve) => (drained = resolve));
    }
  }
  await ackReceived;
  const ms = performance.now() - startedAtMs;
  socket.end();
  console.log(JSON.stringify({ bytes: args.bytes, ms }));
}

const args = parse();
if (args.role === "receive") receive(args);
else await send(args);
