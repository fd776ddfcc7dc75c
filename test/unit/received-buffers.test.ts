// The node's collections paced by bytes received: one per `everyBytes`, whatever the chunk sizes,
// and the count starts again after each, so a node collects in step with what it receives.
import { describe, expect, test } from "bun:test";
import { ReceivedBufferCollector } from "../../transport/wire/received-buffers.ts";

describe("ReceivedBufferCollector", () => {
  test("collects once per everyBytes received, over chunks of any size", () => {
    let collections = 0;
    const collector = new ReceivedBufferCollector(1000, () => collections++);
    collector.received(999);
    expect(collections).toBe(0);
    collector.received(1);
    expect(collections).toBe(1);
    // The count restarts at the collection: 999 more are not enough, one more is.
    for (let index = 0; index < 3; index++) collector.received(333);
    expect(collections).toBe(1);
    collector.received(1);
    expect(collections).toBe(2);
  });

  test("a chunk larger than everyBytes collects once, not once per everyBytes it holds", () => {
    let collections = 0;
    const collector = new ReceivedBufferCollector(1000, () => collections++);
    collector.received(5000);
    expect(collections).toBe(1);
    collector.received(999);
    expect(collections).toBe(1);
  });
});
