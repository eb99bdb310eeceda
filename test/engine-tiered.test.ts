// tiered: exact where its tiers cover the context, close to dense beyond, and it retrieves on the demo model.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runEval } from '../src/eval/run-eval.js';
import { createEngine, loadModel, type Model } from '../src/index.js';
import { errOverRange } from './helpers.js';
import { withKvTape, type Kv } from './kv-tape.js';
import { writeTinyModel, type TinyModel } from './fixtures.js';

let tiny: TinyModel;
let random: Model;
let demo: Model;
beforeAll(async () => {
  tiny = await writeTinyModel({ layers: 2, heads: 4, kvHeads: 2, hidden: 64, vocab: 97, maxPos: 512, seed: 78 });
  random = await loadModel(tiny.dir, { backend: 'cpu' });
  demo = await loadModel('demo', { backend: 'cpu' });
});
afterAll(async () => {
  await random?.dispose();
  await demo?.dispose();
  await rm(tiny.dir, { recursive: true, force: true });
});

async function logitsOf(model: Model, policy: string, prompt: number[] | string, steps = 4) {
  const engine = await createEngine(model, { policy, cpuThreads: 2 });
  const out: { token: number; logits: Float32Array }[] = [];
  for await (const t of engine.generate(prompt, { maxNewTokens: steps, stopAtEos: false })) out.push(t);
  const stats = engine.stats();
  await engine.dispose();
  return { out, stats };
}


describe('tiered policy', () => {
  it('equals dense when the hot set and the CPU tier cover the whole context (no low-bit tail)', async () => {
    const prompt = Array.from({ length: 300 }, (_, i) => (i * 7 + 1) % 97); // < 4 sinks + 64 + 64 hot + 256 CPU
    // Dense's K and V replayed, so both caches hold the same bytes and the bound is fp32 rounding (kv-tape.ts).
    const tape: Kv[] = [];
    const dense = await withKvTape(random, { record: tape }, () => logitsOf(random, 'dense', prompt));
    const tiered = await withKvTape(random, { replay: tape }, () => logitsOf(random, 'tiered', prompt));
    for (let i = 0; i < dense.out.length; i++) {
      expect(tiered.out[i].token).toBe(dense.out[i].token);
      expect(errOverRange(tiered.out[i].logits, dense.out[i].logits)).toBeLessThanOrEqual(1e-5);
    }
    expect(tiered.stats.hotMisses).toBeGreaterThan(0);
  }, 60_000);

  it('stays close to dense past its tiers, with a low-bit tail (demo model, 1.5k-token haystack)', async () => {
    const { readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const prompt = readFileSync(join(import.meta.dirname, '..', 'src', 'demo-model', 'haystack-8k.txt'), 'utf8').slice(-1500);
    const dense = await logitsOf(demo, 'dense', prompt);
    const tiered = await logitsOf(demo, 'tiered', prompt);
    for (let i = 0; i < dense.out.length; i++) {
      expect(tiered.out[i].token).toBe(dense.out[i].token);
      // Measured 5.9e-3 at 4k tokens: the 4-bit tail carries little of the attention mass.
      expect(errOverRange(tiered.out[i].logits, dense.out[i].logits)).toBeLessThan(0.05);
    }
  }, 60_000);

  it('retrieves the passkey and the asked key at 1024 tokens on the demo model', async () => {
    const results = await runEval(demo, { tasks: ['passkey', 'multikey'], contexts: [1024], policies: ['tiered'], trials: 4, seed: 5 });
    for (const r of results) expect(r.accuracy, r.task).toBeGreaterThanOrEqual(0.75);
  }, 120_000);
});
