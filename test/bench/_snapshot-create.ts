// The snapshot benchmark's create time against data written (test/bench/snapshot.ts, measure 3).
import { PacedWriteLoad } from "./_write-load.ts";
import { stats } from "./_bench.ts";
import { createSnapshot, failures, preparedVolume, sleep, SMALL_WRITTEN_BYTES, succeeded, WARMUP_MS, type Context, type CreateTiming } from "./_snapshot-group.ts";
import { median } from "./_snapshot-load-stats.ts";

export const CREATE_ROUNDS = 10;

/**
 * 3: hold-mode create time with 64 MiB written vs --big written (both --big in size, idle), while
 * the load runs on a third volume: the same background for both, so only the data written differs.
 * (A load on the snapshotted volumes themselves would differ too: random writes over --big touch
 * far more page files after each snapshot than writes over 64 MiB.)
 */
export async function measureCreateVsData(context: Context) {
  const { nodes, options } = context;
  await preparedVolume(context, "small", options.bigBytes, SMALL_WRITTEN_BYTES);
  await preparedVolume(context, "big", options.bigBytes);
  await preparedVolume(context, "background", options.loadSizeBytes);
  const load = await PacedWriteLoad.start(nodes, "background", options.loadSizeBytes, options);
  try {
    await sleep(WARMUP_MS);
    const small: CreateTiming[] = [];
    const big: CreateTiming[] = [];
    for (let round = 0; round < CREATE_ROUNDS; round++) {
      const coordinator = nodes[round % nodes.length]!;
      small.push(await createSnapshot(coordinator, "small", `c${round}`, "hold"));
      await sleep(options.intervalMs);
      big.push(await createSnapshot(coordinator, "big", `c${round}`, "hold"));
      await sleep(options.intervalMs);
    }
    await load.stop();
    const smallOk = succeeded(small);
    const bigOk = succeeded(big);
    return {
      smallWrittenBytes: SMALL_WRITTEN_BYTES,
      bigWrittenBytes: options.bigBytes,
      failures: { small: failures(small), big: failures(big) },
      small: { wall: stats(smallOk.map((timing) => timing.wallMs)), took: stats(smallOk.map((timing) => timing.tookMs)) },
      big: { wall: stats(bigOk.map((timing) => timing.wallMs)), took: stats(bigOk.map((timing) => timing.tookMs)) },
      ratio: median(bigOk.map((timing) => timing.wallMs)) / median(smallOk.map((timing) => timing.wallMs)),
    };
  } finally {
    await load.stop().catch(() => undefined);
  }
}
