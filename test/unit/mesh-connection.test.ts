// The receiving side of a mesh connection bounds the requests it runs at once and stops reading
// beyond it: a sender that ignores its own bound meets TCP backpressure, not a node holding all.
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
