// Batches: generateBatch decodes sequences together and each gets what it would alone; prompts sharing a
// prefix share its host blocks; all sequences share one device budget.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvoffCapacityError } from '../src/errors.js';
import { createEngine, loadModel, type Model } from '../src/index.js';
import { planPrefixSharing } from '../src/engine/prefix-sharing.js';
import { errOverRange } from './helpers.js';
import { writeTinyModel, type TinyModel } from './fixtures.js';

let tiny: TinyModel;
let model: Model;
beforeAll(async () => {
  tiny = await writeTinyModel({ layers: 2, heads: 8, kvHeads: 2, hidden: 64, vocab: 97, maxPos: 1024, seed: 5 });
  model = await loadModel(tiny.dir, { backend: 'cpu' });
});
afterAll(async () => {
  await model?.dispose();
  await rm(tiny.dir, { recursive: true, force: true });
});

const common = Array.from({ length: 200 }, (_, i) => (i * 13 + 5) % 97); // 12.5 blocks of 16
// Two prompts share 200 tokens (a partial block included), one shares nothing, one repeats the first exactly.
const prompts = [
  [...common, 1, 2, 3],
  Array.from({ length: 170 }, (_, i) => (i * 7 + 2) % 97),
  [...common, 9, 8, 7, 6, 5],
  [...common, 1, 2, 3],
];

type Step = { token: number; logits: Float32Array };
const opts = { maxNewTokens: 6, stopAtEos: false };

async function alone(policy: string, prompt: number[], extra = {}): Promise<Step[]> {
  const engine = await createEngine(model, { policy, cpuThreads: 2, ...extra });
  try {
    const out: Step[] = [];
    for await (const t of engine.generate(prompt, opts)) out.push({ token: t.token, logits: t.logits });
    return out;
  } finally {
    await engine.dispose();
  }
}

describe('generateBatch', () => {
  it.each(['dense', 'cpu', 'offload-layer', 'exact'])('%s: every sequence gets the tokens and logits it gets alone', async (policy) => {
    const engine = await createEngine(model, { policy, cpuThreads: 2 });
    const got: Step[][] = prompts.map(() => []);
    const order: number[] = [];
    for await (const t of engine.generateBatch(prompts, opts)) {
      got[t.seq].push({ token: t.token, logits: t.logits });
      order.push(t.seq);
    }
    const s = engine.stats();
    await engine.dispose();
    expect(order.slice(0, 8)).toEqual([0, 1, 2, 3, 0, 1, 2, 3]); // step by step, in prompt order
    for (let i = 0; i < prompts.length; i++) {
      const want = await alone(policy, prompts[i]);
      expect(got[i].map((x) => x.token), `seq ${i}`).toEqual(want.map((x) => x.token));
      // The dense graphs run over 4 rows instead of 1 (another GEMM shape), so logits agree to float
      // rounding, not bit for bit: 1e-5 of the logit range, the lossless bound.
      for (let j = 0; j < want.length; j++) expect(errOverRange(got[i][j].logits, want[j].logits)).toBeLessThan(1e-5);
    }
    // Seq 2 and 3 took the 200 (and 202) common tokens from seq 0 instead of computing them.
    expect(s.sharedPrefixTokens).toBe(200 + 202);
    expect(s.prefillTokens).toBe(prompts.reduce((n, p) => n + p.length, 0) - 402);
    expect(s.decodeTokens).toBe(4 * 5);
  }, 120_000);


  it('all sequences share the device budget: a batch needs more than one sequence, and stays inside it', async () => {
    const smallest = async (ps: number[][]) => {
      const engine = await createEngine(model, { policy: 'specache', vramBudget: 1 });
      try {
        for await (const _ of engine.generateBatch(ps, opts)) void _;
        return 0;
      } catch (e) {
        return (e as KvoffCapacityError).needed;
      } finally {
        await engine.dispose();
      }
    };
    const one = await smallest([prompts[0]]);
    const all = await smallest(prompts);
    expect(all).toBeGreaterThan(3 * one);
    const engine = await createEngine(model, { policy: 'specache', vramBudget: all });
    const counts = [0, 0, 0, 0];
    for await (const t of engine.generateBatch(prompts, opts)) counts[t.seq]++;
    const s = engine.stats();
    await engine.dispose();
    expect(counts).toEqual([6, 6, 6, 6]);
    expect(s.deviceBytesPeak).toBeLessThanOrEqual(all);
    expect(s.specUsed + s.specWasted).toBe(4 * 4); // steps 2..5 of each sequence check the guess fed beside them
  }, 120_000);

  it('rejects an empty batch and names the bad prompt', async () => {
    const engine = await createEngine(model, { policy: 'dense' });
    await expect(engine.generateBatch([], opts).next()).rejects.toThrow(/prompts/);
    await expect(engine.generateBatch([[1, 2], [3, 400]], opts).next()).rejects.toThrow(/prompts\[1\] token ids\[1\]/);
    await expect(engine.generateBatch([[1], []], opts).next()).rejects.toThrow(/prompts\[1\]/);
    await engine.dispose();
  });
});

describe('planPrefixSharing', () => {
  const t = (...xs: number[]) => Int32Array.from(xs);
  it('shares the longest prefix with an earlier prompt, from one full block, keeping the last token to prefill', () => {
    const plan = planPrefixSharing([t(1, 2, 3, 4, 5), t(1, 2, 3, 4, 9), t(1, 2, 3, 4, 5), t(7, 7, 7), t(1, 2)], 2);
    expect(plan).toEqual([
      { from: -1, shared: 0 },
      { from: 0, shared: 4 },
      { from: 0, shared: 4 }, // identical to prompt 0: all but the last token
      { from: -1, shared: 0 },
      { from: -1, shared: 0 }, // 1 token in common: less than a block
    ]);
  });
});
