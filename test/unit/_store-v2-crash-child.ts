// Run by store-v2-durability.test.ts in its own process, then killed with SIGKILL mid-way: the parent
// reopens the directory and checks what every layer reads. Nothing here survives but the files.
//   bun _store-v2-crash-child.ts DIR SEED delete LAYER TICKS   kill TICKS event-loop turns into deleteLayer(LAYER)
//   bun _store-v2-crash-child.ts DIR SEED flush                 kill right after flush() returns
//   bun _store-v2-crash-child.ts DIR SEED fua                   flush, freeze, FUA-write one page, kill
import { PageStore } from "../../core/store/page-store.ts";
import { LayerModel, SCENARIO_CHUNK_BYTES, SCENARIO_PAGE_BYTES, SCENARIO_PAGES } from "./_layer-model.ts";
import { buildScenarioOn } from "./_store-v2-model.ts";

const [dir, seedText, mode, layer, ticksText] = process.argv.slice(2);
const store = new PageStore({ dir: dir!, chunkSizeBytes: SCENARIO_CHUNK_BYTES });
buildScenarioOn(store, new LayerModel(SCENARIO_PAGE_BYTES, SCENARIO_PAGES), Number(seedText));
await store.flush();

function die(): never {
  process.kill(process.pid, "SIGKILL");
  throw new Error("unreachable");
}

if (mode === "flush") die();
if (mode === "fua") {
  store.freezeLayer("v", "v@s3");
  store.write("v", 1, 5000, new Uint8Array(3000).fill(0x5a), SCENARIO_PAGE_BYTES);
  await store.syncPage("v", 1);
  die();
}
let ticks = Number(ticksText);
const deletion = store.deleteLayer(layer!);
const tick = () => (ticks-- <= 0 ? die() : setImmediate(tick));
tick();
await deletion;
die();
