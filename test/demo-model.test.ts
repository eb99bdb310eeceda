// The embedded demo model retrieves with the dense policy at short contexts, through kvoff's own engine.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../src/index.js';
import { runEval } from '../src/eval/run-eval.js';
import { loadTaskSpec, makeInstance, trialInstance } from '../src/eval/tasks.js';
import { seededRandom } from '../src/engine/sampling.js';

let model: Model;
beforeAll(async () => {
  model = await loadModel(undefined, { backend: 'cpu' });
});
afterAll(async () => {
  await model?.dispose();
});

describe('demo model', () => {
  it('is the Llama-format model the design asks for: GQA, RoPE, tied, <= 10 MB', () => {
    const c = model.config;
    expect(c.architecture).toBe('llama');
    expect(c.numKvHeads).toBeLessThan(c.numHeads);
    expect(c.maxPositionEmbeddings).toBeGreaterThanOrEqual(8192);
    expect(model.weightBytes).toBeLessThanOrEqual(10 * 1024 * 1024);
    expect(model.tokenizer?.encode('Ab\n')).toEqual(Int32Array.of(65, 98, 10)); // byte-level: id == byte
  });

  it('task prompts follow tasks.json: length bound, needle placed once, seeded', () => {
    const spec = loadTaskSpec();
    for (const ctx of [256, 1024, 4096]) {
      for (const task of ['passkey', 'multikey'] as const) {
        const a = trialInstance(spec, task, ctx, 7, 3);
        expect(trialInstance(spec, task, ctx, 7, 3)).toEqual(a);
        expect(1 + a.prompt.length).toBeLessThanOrEqual(ctx - spec.answer_reserve);
        expect(a.prompt.split(a.answer).length - 1).toBeGreaterThanOrEqual(1);
      }
    }
    const p = makeInstance(spec, 'passkey', 1024, seededRandom(1));
    expect(p.prompt).toContain(`The pass key is ${p.answer}\n`);
    expect(p.prompt.endsWith('What is the pass key? The pass key is ')).toBe(true);
  });

  it('retrieves the passkey and the asked key with dense attention at 512 and 1024 tokens', async () => {
    const results = await runEval(model, { tasks: ['passkey', 'multikey'], contexts: [512, 1024], policies: ['dense'], trials: 6, seed: 11 });
    for (const r of results) expect(r.accuracy, `${r.task} at ${r.context}`).toBeGreaterThanOrEqual(5 / 6);
    const all = results.reduce((s, r) => s + r.accuracy * r.trials, 0) / results.reduce((s, r) => s + r.trials, 0);
    expect(all).toBeGreaterThanOrEqual(0.95);
  }, 120_000);

  it('eval skips a policy whose working set does not fit the budget, naming the smallest budget that works', async () => {
    const results = await runEval(model, { tasks: ['passkey', 'multikey'], contexts: [512], policies: ['specache', 'cpu'], budget: '2%', trials: 2, seed: 1 });
    const spec = results.filter((r) => r.policy === 'specache');
    expect(spec).toHaveLength(2);
    for (const r of spec) {
      expect(r.skipped?.minBudgetBytes).toBeGreaterThan(r.budgetBytes!);
      expect(r.trials).toBe(0);
      expect(JSON.parse(JSON.stringify(r)).accuracy).toBeNull(); // --json prints null, not a number
    }
    for (const r of results.filter((x) => x.policy === 'cpu')) expect(r.skipped).toBeUndefined(); // cpu needs no device memory
  }, 120_000);
});
