// The NBD and mesh decoders of a real node under seeded hostile input (random and mutated frames,
// huge declared lengths, slow writers, a burst of a thousand connections): the node never exits,
// stays under an RSS bound, and keeps serving a well-behaved client. `bun test/fuzz/soak.ts` runs
// the same phases for longer with other seeds.
import { expect, test } from "bun:test";
import { Prng } from "../sim/kernel/prng.ts";
import { Fuzzer, RSS_LIMIT_BYTES, runCampaign, SUITE_CAMPAIGN } from "../fuzz/_fuzzer.ts";

const SEED = 20261125;

test("hostile input on both ports never takes the node down, nor its memory, nor other clients' service", async () => {
  const fuzzer = await Fuzzer.start(SEED);
  const startedMs = performance.now();
  try {
    await runCampaign(fuzzer, new Prng(SEED), SUITE_CAMPAIGN);
    const kinds = [...fuzzer.byKind].map(([kind, count]) => `${kind} ${count}`).join(", ");
    console.log(
      `fuzz: seed ${SEED}: ${fuzzer.inputsTried} inputs (${kinds}) in ${((performance.now() - startedMs) / 1000).toFixed(1)} s; ` +
        `node RSS max ${(fuzzer.maxRssBytes / 2 ** 20).toFixed(0)} MiB`,
    );
    expect(fuzzer.inputsTried).toBeGreaterThan(3500);
    expect(fuzzer.maxRssBytes).toBeLessThan(RSS_LIMIT_BYTES);
    // The node saw the garbage as garbage (one log line per bad connection), not as silence.
    expect(fuzzer.victim.stderrLog).toMatch(/disconnecting|dropping mesh connection/);
  } finally {
    if (process.env.SHOAL_FUZZ_LOG) await Bun.write(process.env.SHOAL_FUZZ_LOG, fuzzer.victim.stderrLog);
    await fuzzer.stop();
  }
}, 120_000);
