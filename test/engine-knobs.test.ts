// Policy knobs: validated per policy with the valid choices named, and fitted to the budget when not given.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvoffArgumentError, KvoffCapacityError } from '../src/errors.js';
import { createEngine, loadModel, type Model } from '../src/index.js';

let demo: Model;
beforeAll(async () => {
  demo = await loadModel('demo', { backend: 'cpu' });
});
afterAll(async () => {
  await demo?.dispose();
});

const prompt = 'The grass is green. '.repeat(60); // ~1.2k tokens

describe('policy knobs', () => {
  it.each([
    [{ policy: 'specache', topK: 'many' }, /expected number.*topK.*many/s],
    [{ policy: 'specache', bits: 3 }, /one of 1, 2, 4 for engine options.bits but received 3/],
    [{ policy: 'exact', keyGroupSize: 48 }, /one of 32, 64 for engine options.keyGroupSize/],
    [{ policy: 'specache', cpuK: 10 }, /specache knobs topK, sinks, window, bits, keyGroupSize.*unknown cpuK/s],
    [{ policy: 'dense', topK: 8 }, /policy dense takes no knobs.*unknown topK/s],
    [{ policy: 'tiered', window: 0 }, /window/],
    [{ policy: 'lru' }, /one of "dense", "cpu".* for engine options.policy but received "lru"/s],
    [{ policy: 'specache', window: 16 }, /at least keyGroupSize \(32\) for engine options.window but received 16/],
    [{ policy: 'dense', residentStep: 'yes' }, /expected boolean.*engine options.residentStep but received "yes"/s],
  ])('%j is refused with the valid choices', async (opts, message) => {
    const err = await createEngine(demo, opts as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffArgumentError);
    expect((err as Error).message).toMatch(message);
  });

  it('given knobs are used as given; without a budget the defaults are', async () => {
    const engine = await createEngine(demo, { policy: 'tiered', topK: 16, cpuK: 32, bits: 2 });
    for await (const _ of engine.generate(prompt, { maxNewTokens: 2 })) void _;
    expect(engine.lastKnobs).toMatchObject({ topK: 16, cpuK: 32, bits: 2, keyGroupSize: 32, window: 64, sinks: 4 });
    await engine.dispose();
    const plain = await createEngine(demo, { policy: 'specache' });
    for await (const _ of plain.generate(prompt, { maxNewTokens: 2 })) void _;
    expect(plain.lastKnobs).toMatchObject({ topK: 64, bits: 4, keyGroupSize: 32 });
    await plain.dispose();
  }, 60_000);

  it('under a budget, the fit gives up low-bit precision first, then key-group metadata, then hot-set size', async () => {
    const full = await createEngine(demo, { policy: 'specache' });
    for await (const _ of full.generate(prompt, { maxNewTokens: 2 })) void _;
    const roomy = full.stats().deviceBytesPeak;
    await full.dispose();
    const probe = await createEngine(demo, { policy: 'specache', vramBudget: 1 });
    const min = await probe.generate(prompt, { maxNewTokens: 1 }).next().catch((e: KvoffCapacityError) => e.needed);
    await probe.dispose();
    expect(min).toBeLessThan(roomy);
    const fitted: Record<string, number>[] = [];
    for (const share of [0.6, 0.25, 0]) {
      const budget = Math.floor(min as number + share * (roomy - (min as number)));
      const engine = await createEngine(demo, { policy: 'specache', vramBudget: budget });
      for await (const _ of engine.generate(prompt, { maxNewTokens: 2 })) void _;
      expect(engine.stats().deviceBytesPeak).toBeLessThanOrEqual(budget);
      fitted.push(engine.lastKnobs!);
      await engine.dispose();
    }
    const bits = fitted.map((k) => k.bits);
    expect(bits[0]).toBeLessThan(4);
    for (let i = 1; i < bits.length; i++) expect(bits[i]).toBeLessThanOrEqual(bits[i - 1]);
    expect(fitted[2]).toMatchObject({ bits: 1, keyGroupSize: 64, topK: 8 }); // the smallest setting
    // Given bits stay fixed: then only the rest can shrink, and too small a budget fails with the numbers.
    const fixed = await createEngine(demo, { policy: 'specache', bits: 4, vramBudget: Math.floor(roomy * 0.7) });
    const err = await fixed.generate(prompt, { maxNewTokens: 1 }).next().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffCapacityError);
    expect((err as Error).message).toMatch(/smallest budget that works is \d+ bytes/);
    await fixed.dispose();
  }, 60_000);

  it.each(['exact', 'tiered', 'specache'])('%s runs a context shorter than one key group (nothing quantized yet)', async (policy) => {
    const engine = await createEngine(demo, { policy });
    const got: number[] = [];
    for await (const t of engine.generate([256, 72, 105], { maxNewTokens: 3, stopAtEos: false })) got.push(t.token);
    expect(got).toHaveLength(3);
    await engine.dispose();
  });

  it('a vramBudget like "25%" is that share of each run\'s full-precision KV', async () => {
    const engine = await createEngine(demo, { policy: 'specache', vramBudget: '25%' });
    for await (const _ of engine.generate(prompt, { maxNewTokens: 2 })) void _;
    const full = engine.kvBytesFor(1203 + 2);
    expect(engine.stats().deviceBytesPeak).toBeLessThanOrEqual(Math.floor(full * 0.25) + 16 * 4 * 2 * 128); // + up to one block of rounding
    expect(engine.stats().deviceBytesPeak).toBeGreaterThan(0);
    await engine.dispose();
    for (const bad of ['0%', '2000%']) await expect(createEngine(demo, { policy: 'specache', vramBudget: bad })).rejects.toThrow(/percentage in \(0, 1000\] for vramBudget/);
  }, 60_000);
});
