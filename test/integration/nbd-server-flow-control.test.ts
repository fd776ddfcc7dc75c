// The NBD server in-process: the bound on requests in flight per connection, a client that stops
// reading, and close() with requests in flight or waiting for a slot. Each test runs its own server.
import { describe, expect, test } from "bun:test";
import { NBD_ESHUTDOWN, ShoalError } from "../../core/errors.ts";
import { NbdClient } from "../../transport/nbd/nbd-client.ts";
import { NBD_CMD_READ, encodeRequest } from "../../transport/nbd/nbd-codec.ts";
import { NbdServer } from "../../transport/nbd/nbd-server.ts";
import { waitFor } from "./_cluster.ts";
import { CapturedLog, catalogOf, MemoryDevice, MiB, SLOW_TEST_MS } from "./_nbd-fixture.ts";
import { RawSocket } from "./_nbd-raw-socket.ts";

describe("flow control and shutdown", () => {
  /** Reads synthesize data (each byte is its MiB index), so large volumes cost no memory. */
  class PatternDevice extends MemoryDevice {
    readCalls = 0;
    override read(offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
      this.readCalls++;
      this.inFlight++;
      this.inFlightMax = Math.max(this.inFlightMax, this.inFlight);
      return Bun.sleep(1).then(() => {
        this.inFlight--;
        target.fill(Math.floor(offset / MiB) & 255, targetOffset, targetOffset + length);
      });
    }
  }

  test("in-flight requests stay within the bound, and a client that stops reading still gets every reply", async () => {
    const device = new PatternDevice("bounded", 1024 * MiB);
    const bounded = new NbdServer({ catalog: catalogOf([device]), log: new CapturedLog(), maxInFlightPerConnection: 4 });
    const boundedPort = (await bounded.listen("127.0.0.1", 0)).port;
    const raw = await RawSocket.open(boundedPort);
    await raw.exportName("bounded");
    const count = 200;
    const requests = new Uint8Array(28 * count);
    for (let index = 0; index < count; index++) {
      requests.set(encodeRequest({ flags: 0, type: NBD_CMD_READ, handleHigh: 0, handleLow: index + 1, offset: index * MiB, length: MiB }), 28 * index);
    }
    raw.pause();
    raw.send(requests);
    // Not reading: replies pile up until the server stops taking requests (its unsent-reply bound).
    await waitFor("the server to stop taking requests", async () => {
      const before = device.readCalls;
      await Bun.sleep(200);
      return device.readCalls === before && before > 0 && before < count;
    });
    raw.resume();
    const seen = new Set<number>();
    for (let index = 0; index < count; index++) {
      const reply = await raw.simpleReply();
      expect(reply.errno).toBe(0);
      const data = await raw.read(MiB);
      const offsetMiB = reply.handleLow - 1;
      expect(data[0]).toBe(offsetMiB & 255);
      expect(data[MiB - 1]).toBe(offsetMiB & 255);
      seen.add(reply.handleLow);
    }
    expect(seen.size).toBe(count);
    expect(device.inFlightMax).toBeLessThanOrEqual(4);
    raw.end();
    await bounded.close();
    expect(bounded.connectionCount).toBe(0);
  }, SLOW_TEST_MS);

  test("close() lets in-flight requests finish, then closes every connection and refuses new ones", async () => {
    const device = new MemoryDevice("closing", 16 * MiB, { delayMs: () => 100 });
    const closing = new NbdServer({ catalog: catalogOf([device]), log: new CapturedLog() });
    const closingPort = (await closing.listen("127.0.0.1", 0)).port;
    const client = await NbdClient.connect({ host: "127.0.0.1", port: closingPort, exportName: "closing" });
    const negotiating = await RawSocket.open(closingPort);
    await negotiating.handshake();
    const reads = Array.from({ length: 8 }, (_, index) => client.read(index * 4096, 4096));
    await waitFor("the reads to reach the device", () => device.inFlight === 8);
    const closed = closing.close();
    const results = await Promise.all(reads);
    expect(results.every((data) => data.length === 4096)).toBe(true);
    await closed;
    expect(closing.connectionCount).toBe(0);
    await negotiating.waitClosed();
    const late = await client.read(0, 4096).catch((err: ShoalError) => err);
    expect((late as ShoalError).code).toBe("NODE_DOWN");
    const refused = await NbdClient.connect({ host: "127.0.0.1", port: closingPort, exportName: "closing" }).catch((err: ShoalError) => err);
    expect((refused as ShoalError).code).toBe("NODE_DOWN");
    await client.close();
  });

  test("close() answers requests still waiting for a slot with ESHUTDOWN", async () => {
    const device = new MemoryDevice("closing", 16 * MiB, { delayMs: () => 100 });
    const closing = new NbdServer({ catalog: catalogOf([device]), log: new CapturedLog(), maxInFlightPerConnection: 1 });
    const closingPort = (await closing.listen("127.0.0.1", 0)).port;
    const raw = await RawSocket.open(closingPort);
    await raw.exportName("closing");
    const first = encodeRequest({ flags: 0, type: NBD_CMD_READ, handleHigh: 0, handleLow: 1, offset: 0, length: 4096 });
    const second = encodeRequest({ flags: 0, type: NBD_CMD_READ, handleHigh: 0, handleLow: 2, offset: 4096, length: 4096 });
    raw.send(new Uint8Array([...first, ...second]));
    await waitFor("the first read to reach the device", () => device.inFlight === 1);
    const closed = closing.close();
    const replies = new Map<number, number>();
    for (let index = 0; index < 2; index++) {
      const reply = await raw.simpleReply();
      replies.set(reply.handleLow, reply.errno);
      if (reply.errno === 0) await raw.read(4096);
    }
    expect(replies.get(1)).toBe(0);
    expect(replies.get(2)).toBe(NBD_ESHUTDOWN);
    await raw.waitClosed();
    await closed;
  });
});
