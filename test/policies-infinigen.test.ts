// infinigen through createEngine/generate on the demo model: calibration reproduces the model's queries, a run stays
// within its budget while prefetching one layer ahead, it equals dense when its selection covers everything, it
// retrieves a passkey at 1024 tokens under a quarter of the KV bytes, and bad knobs or budgets are refused.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvoffArgumentError, KvoffCapacityError } from '../src/errors.js';
import { runEval } from '../src/eval/run-eval.js';
import { createEngine, loadModel, type Model } from '../src/index.js';
import { withKvTape, type Kv } from './kv-tape.js';
import { runPreAttention } from '../src/model/onnx/session.js';
import { positionRange, ropeTables } from '../src/model/rope.js';
import { partialWeights } from '../src/policies/infinigen-calibrate.js';
import { matVec, rmsNorm, skewRow, unrotate } from '../src/policies/infinigen-skew.js';
import { errOverRange, randn, rng } from './helpers.js';

let demo: Model;
beforeAll(async () => {
  demo = await loadModel('demo', { backend: 'cpu' });
});
afterAll(async () => {
  await demo?.dispose();
});

const haystack = readFileSync(join(import.meta.dirname, '..', 'src', 'demo-model', 'haystack-8k.txt'), 'utf8');
const prompt = haystack.slice(-600); // ~600 tokens: past the default sinks + top-k + window
const STEPS = 6;

async function run(opts: Record<string, unknown>, text = prompt) {
  const engine = await createEngine(demo, { cpuThreads: 2, ...opts });
  try {
    const steps: { token: number; logits: Float32Array }[] = [];
    for await (const t of engine.generate(text, { maxNewTokens: STEPS, stopAtEos: false })) steps.push({ token: t.token, logits: t.logits });
    return { steps, stats: engine.stats(), knobs: engine.lastKnobs!, kvBytes: engine.kvBytesFor(engine.encode(text).length + STEPS) };
  } finally {
    await engine.dispose();
  }
}

let dense: Awaited<ReturnType<typeof run>>;
const denseKv: Kv[] = []; // replayed where a run is compared with dense to fp32 rounding (kv-tape.ts)
beforeAll(async () => {
  dense = await withKvTape(demo, { record: denseKv }, () => run({ policy: 'dense' }));
}, 60_000);

describe('infinigen on the demo model', () => {
  it('gives the same tokens and logits whether calibration ends before or after the prompt', async () => {
    // The first run calibrates beside a short prompt's prefill (its keys are back-filled); the second finds it cached.
    const short = haystack.slice(0, 40);
    const first = await run({ policy: 'infinigen' }, short);
    const second = await run({ policy: 'infinigen' }, short);
    expect(second.steps.map((s) => s.token)).toEqual(first.steps.map((s) => s.token));
    for (let i = 0; i < STEPS; i++) expect(Array.from(second.steps[i].logits)).toEqual(Array.from(first.steps[i].logits));
  }, 30_000);

  it('calibration: the partial query from the skewed weights is the graph query, un-rotated and skewed', async () => {
    const c = demo.config;
    const { numKvHeads: H, numHeads: nH, headDim: D } = c;
    const G = nH / H;
    const w = await partialWeights(demo, D); // every column: the whole query, in the skewed basis
    for (const A of w.bases) {
      for (let i = 0; i < D; i++) {
        for (let j = 0; j < D; j++) {
          let dot = 0;
          for (let k = 0; k < D; k++) dot += A[k * D + i] * A[k * D + j];
          expect(Math.abs(dot - (i === j ? 1 : 0))).toBeLessThan(1e-5);
        }
      }
    }
    const x = randn(c.hiddenSize, rng(4));
    const pos = 37;
    const { cos, sin } = ropeTables(demo.invFreq, positionRange(pos, 1));
    for (let l = 0; l < c.numLayers; l++) {
      const { q } = await runPreAttention(demo.runner, c, l, x, cos, sin); // [1, nH, D] post-RoPE
      unrotate(q, cos, sin, nH, D);
      const xn = rmsNorm(x, w.norm[l], c.rmsNormEps);
      for (let h = 0; h < H; h++) {
        const got = matVec(w.wq[l * H + h], xn, w.bq[l * H + h], D);
        const want = new Float32Array(D);
        const row = new Float32Array(D);
        for (let g = 0; g < G; g++) {
          skewRow(q, (h * G + g) * D, w.bases[l * H + h], D, D, row);
          for (let j = 0; j < D; j++) want[j] += row[j] / G;
        }
        expect(errOverRange(got, want)).toBeLessThan(1e-4);
      }
    }
  }, 30_000);

  it('runs within 40% of the dense KV bytes, prefetching each layer while the one before computes', async () => {
    const budget = Math.floor(0.4 * dense.kvBytes);
    const r = await run({ policy: 'infinigen', vramBudget: budget });
    expect(r.steps).toHaveLength(STEPS);
    expect(r.stats.deviceBytesPeak).toBeGreaterThan(0);
    expect(r.stats.deviceBytesPeak).toBeLessThanOrEqual(budget);
    expect(r.knobs.topK).toBeLessThan(prompt.length); // fitted: not every token fits
    expect(r.stats.hotMisses).toBeGreaterThan(0);
    expect(r.stats.hotHits).toBeGreaterThan(0);
    expect(r.stats.bytesH2D).toBeGreaterThan(0);
    expect(r.stats.copyMs).toBeGreaterThan(0);
    expect(r.stats.overlapRatio).toBeGreaterThan(0);
    expect(r.stats.overlapRatio).toBeLessThanOrEqual(1);
  }, 30_000);

  it('with topK covering the whole context it equals dense', async () => {
    const r = await withKvTape(demo, { replay: denseKv }, () => run({ policy: 'infinigen', topK: 4096 }));
    expect(r.steps.map((s) => s.token)).toEqual(dense.steps.map((s) => s.token));
    for (let i = 0; i < STEPS; i++) expect(errOverRange(r.steps[i].logits, dense.steps[i].logits)).toBeLessThanOrEqual(1e-5);
  }, 30_000);

  it('retrieves a passkey at 1024 tokens under 25% of the KV bytes in most of 4 trials', async () => {
    // Measured 3/4 with this seed (18/20 over seeds 0..19 at trials: 20); streaming at the same budget: 6/20.
    const [res] = await runEval(demo, { tasks: ['passkey'], contexts: [1024], policies: ['infinigen'], budget: '25%', trials: 4, seed: 0, cpuThreads: 2 });
    expect(res.accuracy).toBeGreaterThanOrEqual(0.75);
  }, 30_000);

  it('below its smallest budget fails with needed, given and the smallest', async () => {
    const err = await run({ policy: 'infinigen', vramBudget: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffCapacityError);
    const min = (err as KvoffCapacityError).needed;
    const short = await run({ policy: 'infinigen', vramBudget: min - 1 }).catch((e: unknown) => e);
    expect(short).toMatchObject({ needed: min, available: min - 1 });
    expect((short as Error).message).toContain(`the smallest budget that works is ${min} bytes`);
    const ok = await run({ policy: 'infinigen', vramBudget: min });
    expect(ok.knobs.topK).toBe(1);
    expect(ok.stats.deviceBytesPeak).toBeLessThanOrEqual(min);
  }, 30_000);

  it.each([
    [{ policy: 'infinigen', bits: 2 }, /infinigen knobs topK, partialRatio, window, sinks.*unknown bits/s],
    [{ policy: 'infinigen', partialRatio: 0 }, /a number in \(0, 1\] for engine options.partialRatio but received 0/],
    [{ policy: 'infinigen', partialRatio: 1.5 }, /a number in \(0, 1\] for engine options.partialRatio but received 1.5/],
    [{ policy: 'infinigen', topK: 0 }, /an integer >= 1 for engine options.topK but received 0/],
    [{ policy: 'infinigen', window: -1 }, /an integer >= 0 for engine options.window but received -1/],
    [{ policy: 'infinigen', sinks: 1.5 }, /engine options.sinks but received 1.5/],
  ])('%j is refused with the valid choices', async (opts, message) => {
    const err = await createEngine(demo, opts as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvoffArgumentError);
    expect((err as Error).message).toMatch(message);
  });
});
