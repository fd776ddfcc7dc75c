// Speaking (bad) NBD by hand to the in-process server, and a good client working alongside.
import type { Socket } from "bun";
import { expect } from "bun:test";
import { ShoalError } from "../../core/errors.ts";
import { ByteQueue } from "../../transport/nbd/_byte-queue.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import {
  NBD_CMD_READ,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_EXPORT_NAME,
  type NbdRequest,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  encodeClientFlags,
  encodeOption,
  encodeRequest,
} from "../../transport/nbd/nbd-codec.ts";
import { waitFor } from "./_cluster.ts";
import { MiB } from "./_nbd-fixture.ts";

export class RawSocket {
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
export function keepWorking(port: number): { stop: () => Promise<{ operations: number; errors: string[] }> } {
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
