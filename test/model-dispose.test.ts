// Loading and disposing a model 50 times, and an engine 50 times, does not grow memory.
import { rm } from 'node:fs/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { arenaTotals } from '../src/arena.js';
import { createEngine, loadModel } from '../src/index.js';
import { writeTinyModel, type TinyModel } from './fixtures.js';

let tiny: TinyModel;
// A real collection before each reading, so the JS heap's lazy growth is not mistaken for a leak.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
const rssNow = (): number => {
  gc();
  return process.memoryUsage().rss;
};
beforeAll(async () => {
  tiny = await writeTinyModel({ hidden: 64, layers: 2, vocab: 97 });
});
afterAll(async () => {
  await rm(tiny.dir, { recursive: true, force: true });
});

async function measure(cycle: () => Promise<void>, warmup: number, cycles: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await cycle(); // JIT, onnxruntime's globals, the allocator's per-thread arenas
  const rss0 = rssNow();
  for (let i = 0; i < cycles; i++) await cycle();
  return rssNow() - rss0;
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);

// The model cycle loads the demo model: its f32 graphs take ~12 MiB, a worker thread ~5 MiB, so leaking either
// would add hundreds of MiB over 50 cycles, far past the bound, while the allocator's settling (seen up to
// ~20 MiB on a busy 2-core machine) stays under it. Measured idle: 2-5 MiB per 50 cycles.
describe('dispose', () => {
  it('loading and disposing a model 50 times keeps RSS and native arenas flat', async () => {
    const arenas = arenaTotals();
    const growth = await measure(async () => {
      const model = await loadModel('demo', { backend: 'cpu' });
      await model.dispose();
    }, 20, 50);
    console.log(`RSS growth over 50 model load/dispose cycles: ${mib(growth)} MiB`);
    expect(arenaTotals()).toEqual(arenas);
    expect(growth).toBeLessThan(48 * 2 ** 20);
  }, 240_000);

  it('creating, using and disposing an engine 50 times keeps RSS and native arenas flat', async () => {
    const model = await loadModel(tiny.dir, { backend: 'cpu' });
    const arenas = arenaTotals();
    const growth = await measure(async () => {
      const engine = await createEngine(model, { cpuThreads: 1 });
      for await (const _ of engine.generate([1, 2, 3], { maxNewTokens: 2 })) void _;
      await engine.dispose();
    }, 20, 50);
    await model.dispose();
    console.log(`RSS growth over 50 engine create/generate/dispose cycles: ${mib(growth)} MiB`);
    expect(arenaTotals()).toEqual(arenas);
    expect(growth).toBeLessThan(32 * 2 ** 20);
  }, 240_000);
});
