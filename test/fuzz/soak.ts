// Long fuzz runs against a real two-node group, outside `npm test`:
//   bun test/fuzz/soak.ts [--seed N] [--duration 10m] [--rounds N]
// Each round starts a fresh group and runs every phase with seed N, N+1, ...; a failure prints
// the seed, the phase, the last inputs (hex) and the node's log tail, and exits 1. Replay one
// failing seed with --seed N --rounds 1.
import { parseArgs } from "node:util";
import { parseDurationMs } from "../../cmd/_cli.ts";
import { Prng } from "../sim/kernel/prng.ts";
import { FuzzFailure, Fuzzer, runCampaign, type Campaign } from "./_fuzzer.ts";

const { values } = parseArgs({
  options: {
    seed: { type: "string", default: String(Date.now() % 1_000_000) },
    duration: { type: "string", default: "5m" },
    rounds: { type: "string" },
  },
});
const firstSeed = Number(values.seed);
const durationMs = parseDurationMs(values.duration!);
const maxRounds = values.rounds === undefined ? Infinity : Number(values.rounds);
const SOAK_CAMPAIGN: Campaign = { mixedRounds: 20, inputsPerRound: 1000, slowWriters: 64, slowWritersMs: 10_000, burstConnections: 1000, stalledWriters: 64, stalledBytes: 30 * 1024 * 1024, stalledReaders: 32, stalledReads: 16 };

const startedMs = performance.now();
let total = 0;
for (let round = 0; round < maxRounds && performance.now() - startedMs < durationMs; round++) {
  const seed = firstSeed + round;
  const fuzzer = await Fuzzer.start(seed);
  try {
    await runCampaign(fuzzer, new Prng(seed), SOAK_CAMPAIGN);
    total += fuzzer.inputsTried;
    console.log(`seed ${seed}: ok, ${fuzzer.inputsTried} inputs, node RSS max ${(fuzzer.maxRssBytes / 2 ** 20).toFixed(0)} MiB (total ${total})`);
  } catch (err) {
    total += fuzzer.inputsTried;
    console.error(err instanceof FuzzFailure ? `FAILED ${err.message}` : `FAILED seed ${seed}: ${(err as Error).stack}`);
    console.error(`replay: bun test/fuzz/soak.ts --seed ${seed} --rounds 1`);
    await fuzzer.stop();
    process.exit(1);
  }
  await fuzzer.stop();
}
console.log(`${total} inputs over ${((performance.now() - startedMs) / 1000).toFixed(0)} s, no failure`);
