// A mesh connection: the receiving side bounds the requests it runs at once and stops reading
// beyond it (a sender that ignores its own bound meets TCP backpressure, not a node holding all);
// a payload handed over in pieces arrives whole.
import { afterEach, describe, expect, test } from "bun:test";
import { ShoalError } from "../../core/errors.ts";
import { UNTRUSTED_MAX_RUNNING_REQUESTS } from "../../transport/mesh/mesh-connection.ts";
import { dialMesh, MeshServer } from "../../transport/mesh/mesh.ts";

const quiet = { info: () => {}, warn: () => {} };
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

describe("mesh receiving bound", () => {
  test("past the bound, requests wait unread and start in order as others end", async () => {
    const started: number[] = [];
    const answers: (() => void)[] = [];
    const server = new MeshServer((_, op, args) => {
      if (op !== "hang") throw new ShoalError("BAD_REQUEST", op);
      started.push(args.n as number);
      return new Promise((resolve) => answers.push(() => resolve({ result: { n: args.n } })));
    }, quiet);
    const port = server.listen("127.0.0.1", 0);
    cleanups.push(() => server.stop());
    const client = await dialMesh(`127.0.0.1:${port}`, () => ({}), quiet);
    cleanups.push(() => client.close());

    const sent = UNTRUSTED_MAX_RUNNING_REQUESTS * 5;
    const replies = Array.from({ length: sent }, (_, n) => client.request("hang", { n }, undefined, 20_000));
    const deadline = performance.now() + 5000;
    while (started.length < UNTRUSTED_MAX_RUNNING_REQUESTS && performance.now() < deadline) await Bun.sleep(10);
    await Bun.sleep(200); // time for any request past the bound to be (wrongly) started
    expect(started.length).toBe(UNTRUSTED_MAX_RUNNING_REQUESTS);

    // Answer as they start: every request is run once, in the order it was sent.
    while (started.length < sent || answers.length > 0) {
      const answer = answers.shift();
      if (answer) answer();
      else await Bun.sleep(1);
      expect(answers.length).toBeLessThanOrEqual(UNTRUSTED_MAX_RUNNING_REQUESTS);
    }
    const results = await Promise.all(replies);
    expect(results.map((reply) => reply.result.n)).toEqual(Array.from({ length: sent }, (_, n) => n));
    expect(started).toEqual(Array.from({ length: sent }, (_, n) => n));
  });
});

describe("mesh payload in pieces", () => {
  test("a request's payload given as pieces arrives as the pieces joined, small (batched) or large (written piece by piece)", async () => {
    const server = new MeshServer((connection, op, _args, payload) => {
      if (op === "hello") {
        connection.peerId = "node9"; // a member: frames past the untrusted 64 KiB limit are allowed
        return {};
      }
      return { result: { bytes: payload.byteLength }, payload: Uint8Array.from(payload.bytes()) };
    }, quiet);
    const port = server.listen("127.0.0.1", 0);
    cleanups.push(() => server.stop());
    const client = await dialMesh(`127.0.0.1:${port}`, () => ({}), quiet);
    cleanups.push(() => client.close());
    await client.request("hello", {});

    const whole = new Uint8Array(3 * 1024 * 1024 + 12345);
    for (let index = 0; index < whole.length; index++) whole[index] = (index * 7 + (index >> 12)) & 0xff;
    const cuts = [
      [0, 100, 4096], // small: joined into the batch with its header
      [0, 1, 70_000, 2 * 1024 * 1024, whole.length], // large: each piece written from where it lies
    ];
    for (const cut of cuts) {
      const pieces = cut.slice(1).map((end, index) => whole.subarray(cut[index]!, end));
      const expected = whole.subarray(0, cut[cut.length - 1]!);
      // Two at once, so the second's pieces queue behind the first's.
      const [first, second] = await Promise.all([client.request("echo", {}, pieces), client.request("echo", {}, pieces)]);
      for (const response of [first, second]) {
        expect(response.result.bytes).toBe(expected.byteLength);
        expect(Buffer.compare(response.payload.bytes(), expected)).toBe(0);
      }
    }
  });
});
