// The dense engine on the CPU backend: logits of every generated step match the plain TypeScript forward.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEngine, loadModel, type Model } from '../src/index.js';
import { KvoffArgumentError, KvoffCapacityError, KvoffRangeError } from '../src/errors.js';
import { writeTinyModel, type TinyModel } from './fixtures.js';
import { referenceForward } from './reference-forward.js';

let tiny: TinyModel;
let model: Model;
beforeAll(async () => {
  tiny = await writeTinyModel({ layers: 2, heads: 4, kvHeads: 2, hidden: 64, vocab: 97, maxPos: 96 });
  model = await loadModel(tiny.dir, { backend: 'cpu' });
});
afterAll(async () => {
  await model?.dispose();
  if (tiny) await rm(tiny.dir, { recursive: true, force: true });
});

function rowOf(logits: Float64Array, t: number, vocab: number): Float64Array {
  return logits.subarray(t * vocab, (t + 1) * vocab);
}

describe('dense engine, CPU backend', () => {
  it('greedy generation reproduces the reference logits at every step (prompt longer than a prefill chunk and a block)', async () => {
    const engine = await createEngine(model, { policy: 'dense', blockSize: 4, prefillChunk: 7, cpuThreads: 2, kvDtype: 'f16' });
    const prompt = Array.from({ length: 23 }, (_, i) => (i * 7 + 3) % 97);
    const steps: { token: number; logits: Float32Array }[] = [];
    for await (const t of engine.generate(prompt, { maxNewTokens: 6, stopAtEos: false })) steps.push({ token: t.token, logits: t.logits });
    expect(steps).toHaveLength(6);
    const all = [...prompt, ...steps.map((s) => s.token)];
    const ref = referenceForward(tiny.config, tiny.weights, all); // [T, vocab]
    const V = tiny.config.vocabSize;
    for (let i = 0; i < steps.length; i++) {
      const r = rowOf(ref, prompt.length - 1 + i, V);
      let lo = Infinity, hi = -Infinity, err = 0;
      for (let j = 0; j < V; j++) {
        lo = Math.min(lo, r[j]);
        hi = Math.max(hi, r[j]);
        err = Math.max(err, Math.abs(r[j] - steps[i].logits[j]));
      }
      // fp16 KV storage bounds the error, not the graphs: 1e-2 of the logit range.
      expect(err / (hi - lo)).toBeLessThan(1e-2);
      let arg = 0;
      for (let j = 1; j < V; j++) if (steps[i].logits[j] > steps[i].logits[arg]) arg = j;
      expect(steps[i].token).toBe(arg);
    }
    const s = engine.stats();
    expect(s.prefillTokens).toBe(23);
    expect(s.decodeTokens).toBe(5);
    expect(s.weightBytes).toBeGreaterThan(0);
    await engine.dispose();
  });

  it('refuses bad prompts, budgets and options with clear errors', async () => {
    const engine = await createEngine(model, { vramBudget: '1KiB' });
    const drain = async (p: Parameters<typeof engine.generate>[0], o = {}) => {
      for await (const _ of engine.generate(p, o)) void _;
    };
    await expect(drain([5, 97])).rejects.toThrow(KvoffRangeError);
    await expect(drain([5, 97])).rejects.toThrow('Expected prompt token ids[1] in [0, 96] but received 97');
    await expect(drain(Array(97).fill(3))).rejects.toThrow('Expected prompt length in tokens in [1, 96] but received 97');
    await expect(drain([])).rejects.toThrow(KvoffArgumentError);
    await expect(drain('text')).rejects.toThrow(/no tokenizer/);
    await expect(drain([1, 2, 3], { maxNewTokens: 4 })).rejects.toThrow(KvoffCapacityError);
    await expect(drain([1, 2, 3], { maxNewTokens: 4 })).rejects.toThrow(/smallest budget that works is \d+ bytes/);
    await engine.dispose();
    await expect(createEngine(model, { policy: 'bogus' })).rejects.toThrow(/one of "dense"/);
    await expect(createEngine(model, { vramBudget: '2 parsecs' })).rejects.toThrow(/Expected a byte size/);
    await expect(createEngine(model, { nope: 1 } as never)).rejects.toThrow(/unknown nope/);
  });

  it('an AbortSignal stops generation promptly', async () => {
    const engine = await createEngine(model);
    const ac = new AbortController();
    const got: number[] = [];
    await expect(async () => {
      for await (const t of engine.generate([1, 2, 3], { maxNewTokens: 50, signal: ac.signal, stopAtEos: false })) {
        got.push(t.token);
        if (got.length === 2) ac.abort();
      }
    }).rejects.toThrow(/abort/i);
    expect(got.length).toBe(2);
    await engine.dispose();
  });
});
