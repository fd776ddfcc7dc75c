// PageStore v2 property test: random layer operations against the byte model, many seeds.
import { afterEach, describe, expect, test } from "bun:test";
import { PageStore } from "../../core/store/page-store.ts";
import { LayerModel, prng } from "./_layer-model.ts";
import { KiB, parentsOf, removeTempDirs, tempDir } from "./_store-v2-fixture.ts";
import { expectReads as expectLayerReads } from "./_store-v2-model.ts";

afterEach(removeTempDirs);

interface RandomRun {
  store: PageStore;
  model: LayerModel;
  parents: Map<string, string | undefined>;
  deleting: Set<string>;
  pending: Promise<void>[];
}

const RANDOM_PAGE = 32 * KiB;
const RANDOM_CHUNK = 4 * KiB;
const RANDOM_PAGES = 3;

function childrenIn(run: RandomRun, id: string): number {
  let count = 0;
  for (const parent of run.parents.values()) if (parent === id) count++;
  return count;
}

function pick<T>(random: ReturnType<typeof prng>, items: T[]): T | undefined {
  return items.length === 0 ? undefined : items[random.int(items.length)];
}

function randomRange(random: ReturnType<typeof prng>): { at: number; length: number } {
  switch (random.int(5)) {
    case 0:
      return { at: 0, length: RANDOM_PAGE };
    case 1: {
      const first = random.int(RANDOM_PAGE / RANDOM_CHUNK);
      return { at: first * RANDOM_CHUNK, length: (1 + random.int(RANDOM_PAGE / RANDOM_CHUNK - first)) * RANDOM_CHUNK };
    }
    case 2: {
      const at = random.int(RANDOM_PAGE);
      return { at, length: 1 + random.int(Math.min(3 * RANDOM_CHUNK, RANDOM_PAGE - at)) };
    }
    default: {
      const at = random.int(RANDOM_PAGE - 1);
      return { at, length: 1 + random.int(Math.min(300, RANDOM_PAGE - at)) };
    }
  }
}

async function runRandomOps(seed: number, steps: number): Promise<void> {
  const random = prng(seed);
  const dir = tempDir();
  const options = { dir, chunkSizeBytes: RANDOM_CHUNK, dirtyLimitBytes: (1 + random.int(8)) * RANDOM_CHUNK };
  const run: RandomRun = { store: new PageStore(options), model: new LayerModel(RANDOM_PAGE, RANDOM_PAGES), parents: new Map(), deleting: new Set(), pending: [] };
  let counter = 0;
  const live = () => [...run.model.layers.keys()].filter((id) => !run.deleting.has(id));
  const writable = () => live().filter((id) => childrenIn(run, id) === 0);
  const context = (step: number, op: string) => `seed ${seed} step ${step} ${op}`;
  const trace = process.env.SHOAL_TRACE ? (line: string) => console.log(line) : () => {};
  const settle = async () => {
    await Promise.all(run.pending.splice(0));
  };
  run.store.createLayer("v", undefined);
  run.model.copy("v", undefined);
  run.parents.set("v", undefined);
  for (let step = 0; step < steps; step++) {
    const roll = random.int(100);
    if (roll < 40) {
      const id = pick(random, writable());
      if (id === undefined) continue;
      const page = random.int(RANDOM_PAGES);
      const { at, length } = randomRange(random);
      const data = random.bytes(length);
      trace(`${step} write ${id} ${page} ${at}+${length}`);
      run.store.write(id, page, at, data, RANDOM_PAGE);
      run.model.write(id, page, at, data);
    } else if (roll < 50) {
      const id = pick(random, writable());
      if (id === undefined) continue;
      const page = random.int(RANDOM_PAGES);
      const { at, length } = randomRange(random);
      trace(`${step} zero ${id} ${page} ${at}+${length}`);
      run.store.zero(id, page, at, length, RANDOM_PAGE);
      run.model.zero(id, page, at, length);
    } else if (roll < 60) {
      const head = pick(random, writable());
      if (head === undefined) continue;
      const snap = `${head}@s${counter++}`;
      trace(`${step} freeze ${head} ${snap}`);
      run.store.freezeLayer(head, snap);
      run.model.copy(snap, head);
      // The head's layer object becomes the snapshot: whatever sat on the head now sits on it.
      for (const [id, parent] of run.parents) if (parent === head) run.parents.set(id, snap);
      run.parents.set(snap, run.parents.get(head));
      run.parents.set(head, snap);
    } else if (roll < 67) {
      const from = pick(random, live());
      if (from === undefined) continue;
      const clone = `c${counter++}`;
      trace(`${step} clone ${clone} ${from}`);
      run.store.createLayer(clone, from);
      run.model.copy(clone, from);
      run.parents.set(clone, from);
    } else if (roll < 73) {
      const head = pick(random, writable());
      const target = pick(random, live().filter((id) => id !== head));
      if (head === undefined) continue;
      const parent = random.int(4) === 0 ? undefined : target;
      trace(`${step} reset ${head} ${parent}`);
      run.store.resetLayer(head, parent);
      run.model.copy(head, parent);
      run.parents.set(head, parent);
    } else if (roll < 81) {
      const id = pick(random, live());
      if (id === undefined || live().length < 2) continue;
      trace(`${step} delete ${id}`);
      run.deleting.add(id);
      run.model.delete(id);
      const deletion = run.store.deleteLayer(id).then(() => {
        const parent = run.parents.get(id);
        for (const [child, childParent] of run.parents) if (childParent === id) run.parents.set(child, parent);
        run.parents.delete(id);
        run.deleting.delete(id);
      });
      if (random.int(2) === 0) await deletion;
      else run.pending.push(deletion);
    } else if (roll < 86) {
      await settle();
      trace(`${step} reopen`);
      if (random.int(2) === 0) await run.store.flush();
      run.store.close();
      run.store = new PageStore(options);
      for (const id of live()) expectLayerReads(run.store, run.model, id);
    } else if (roll < 94) {
      const id = pick(random, live());
      if (id === undefined) continue;
      const page = random.int(RANDOM_PAGES);
      const { at, length } = randomRange(random);
      const target = new Uint8Array(length);
      run.store.read(id, page, at, length, target, 0);
      const start = page * RANDOM_PAGE + at;
      const expected = run.model.bytesOf(id).subarray(start, start + length);
      if (!Buffer.from(target).equals(Buffer.from(expected))) expect(context(step, `read ${id} ${page}+${at}/${length}`)).toBe("equal to the model");
    } else {
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  await settle();
  for (const id of live()) expectLayerReads(run.store, run.model, id);
  expect(parentsOf(run.store)).toEqual(Object.fromEntries(run.parents));
  // changedPages covers every page that differs from an ancestor.
  for (const id of live()) {
    for (let ancestor = run.parents.get(id); ancestor !== undefined; ancestor = run.parents.get(ancestor)) {
      const changed = new Set(run.store.changedPages(id, ancestor));
      for (let page = 0; page < RANDOM_PAGES; page++) {
        const mine = run.model.bytesOf(id).subarray(page * RANDOM_PAGE, (page + 1) * RANDOM_PAGE);
        const theirs = run.model.bytesOf(ancestor).subarray(page * RANDOM_PAGE, (page + 1) * RANDOM_PAGE);
        if (!Buffer.from(mine).equals(Buffer.from(theirs))) expect(changed.has(page)).toBe(true);
      }
    }
  }
  await run.store.flush();
  run.store.close();
  const reopened = new PageStore(options);
  for (const id of live()) expectLayerReads(reopened, run.model, id);
  reopened.close();
}

describe("PageStore v2 layers against a model", () => {
  test("random writes, trims, snapshots, clones, rollbacks, deletions and reopens, many seeds", async () => {
    // SHOAL_SEED=n reruns one seed (SHOAL_TRACE=1 prints its operations); SHOAL_SEEDS and
    // SHOAL_STEPS make a longer soak.
    const only = Number(process.env.SHOAL_SEED ?? 0);
    const seeds = Number(process.env.SHOAL_SEEDS ?? 30);
    const steps = Number(process.env.SHOAL_STEPS ?? 150);
    for (let seed = only || 1; seed <= (only || seeds); seed++) {
      try {
        await runRandomOps(seed, steps);
      } catch (err) {
        throw new Error(`seed ${seed} failed (SHOAL_SEED=${seed} reruns it): ${(err as Error).message}`);
      }
    }
  }, 600_000);
});
