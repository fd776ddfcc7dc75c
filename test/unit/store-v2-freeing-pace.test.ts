// The pace at which a removed layer file's blocks are freed (core/store/_freeing-pace.ts): steps
// follow the measured time toward the target, never jump by more than twice, rest in proportion,
// and a sparse file's steps are longer in proportion to its holes; and RealFileIO's unlinkAsync
// follows it with the clock it is given.
import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { FreeingPace, REST_RATIO, STEP_TARGET_MS } from "../../core/store/_freeing-pace.ts";
import { RealFileIO } from "../../core/store/file-io.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Drives a pace over a file freeing `msPerMiB` per MiB freed; returns the steps' times and the step count. */
function simulate(sizeBytes: number, heldBytes: number, msPerMiB: number): { stepMs: number[]; restMs: number[] } {
  const pace = new FreeingPace();
  const stepMs: number[] = [];
  const restMs: number[] = [];
  let size = sizeBytes;
  let held = heldBytes;
  for (;;) {
    const length = pace.nextLength(size, held);
    if (length === 0) break;
    expect(length).toBeLessThan(size);
    const freed = Math.min(held, Math.round(((size - length) * heldBytes) / sizeBytes));
    const elapsedMs = (freed / MiB) * msPerMiB;
    stepMs.push(elapsedMs);
    restMs.push(pace.stepTook(elapsedMs, freed));
    size = length;
    held -= freed;
  }
  return { stepMs, restMs };
}

describe("freeing pace", () => {
  test("a slow disk's steps shrink to the target; a fast one's grow, at most twice per step", () => {
    const slow = simulate(1 * GiB, 1 * GiB, 1); // 1 ms per MiB: 4 MiB steps take 4 ms
    expect(slow.stepMs[0]).toBeCloseTo(4, 0);
    expect(Math.max(...slow.stepMs.slice(3))).toBeLessThanOrEqual(STEP_TARGET_MS * 1.1);
    const fast = simulate(1 * GiB, 1 * GiB, 0.05);
    expect(fast.stepMs.length).toBeLessThan(30);
    for (let index = 1; index < fast.stepMs.length - 1; index++) expect(fast.stepMs[index]!).toBeLessThanOrEqual(fast.stepMs[index - 1]! * 2 + 1e-9);
  });

  test("every step rests in proportion to its time", () => {
    const { stepMs, restMs } = simulate(256 * MiB, 256 * MiB, 0.5);
    stepMs.forEach((ms, index) => expect(restMs[index]).toBeCloseTo(ms * REST_RATIO, 6));
  });

  test("a sparse file takes few steps, and a small one none (the unlink frees it)", () => {
    expect(simulate(1024 * GiB, 64 * MiB, 0.5).stepMs.length).toBeLessThan(40);
    expect(simulate(1 * GiB, 2 * MiB, 0.5).stepMs.length).toBe(0);
    expect(new FreeingPace().nextLength(512 * 1024, 512 * 1024)).toBe(0);
  });
});

describe("RealFileIO.unlinkAsync", () => {
  test("with a clock a dense file shrinks in timed steps with rests, then goes; without one it goes in one unlink", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shoal-freeing-"));
    try {
      const file = path.join(dir, "layer");
      fs.writeFileSync(file, new Uint8Array(24 * MiB).fill(1));
      let nowMs = 0;
      const rests: number[] = [];
      const sizes: number[] = [];
      const clock = {
        nowMs: () => (nowMs += 1), // every step "takes" 1 ms
        sleep: async (ms: number) => {
          rests.push(ms);
          sizes.push(fs.statSync(file).size);
        },
      };
      await new RealFileIO(clock).unlinkAsync(file);
      expect(fs.existsSync(file)).toBe(false);
      expect(rests.length).toBeGreaterThan(1);
      for (const ms of rests) expect(ms).toBeGreaterThanOrEqual(0);
      for (let index = 1; index < sizes.length; index++) expect(sizes[index]!).toBeLessThan(sizes[index - 1]!);

      fs.writeFileSync(file, new Uint8Array(24 * MiB).fill(1));
      await new RealFileIO().unlinkAsync(file);
      expect(fs.existsSync(file)).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
