// Batches on the device-resident step: every sequence of a batch decodes exactly as it would alone (the multi-row
// GEMV is bitwise the one-row one, and each sequence's attention is its own), greedy and sampled, for every resident
// policy; the batch shares the budget and a budget too small names the batch's smallest.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvoffCapacityError, createEngine, loadModel, type Model } from '../../src/index.js';
import { writeRandomModel } from '../../src/model/random-model.js';
import { errOverRange } from '../helpers.js';
import { gpuUsable } from './cuda-helpers.js';

const JSON_CONFIG = {
  architectures: ['LlamaForCausalLM'], hidden_act: 'silu', hidden_size: 512, intermediate_size: 1024, num_attention_heads: 8,
  num_key_value_heads: 2, num_hidden_layers: 2, vocab_size: 300, max_position_embeddings: 4096, rms_norm_eps: 1e-5, rope_theta: 10000,
  tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
};

let dir = '';
let model: Model | null = null;
beforeAll(async () => {
  if (!gpuUsable) return;
  dir = (await writeRandomModel(JSON_CONFIG, { dtype: 'bf16', seed: 31 })).dir;
  model = await loadModel(dir, { backend: 'cuda' });
}, 120_000);
afterAll(async () => {
  await model?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

// Three prompts of different lengths (none a multiple of the block or key group), long enough for every policy's hot set.
const prompts = [301, 250, 333].map((n, s) => Array.from({ length: n }, (_, i) => (i * (7 + 2 * s) + s) % 300));
const base = { blockSize: 16, prefillChunk: 64, cpuThreads: 2 };
const POLICIES: Array<[string, Record<string, number>]> = [
  ['dense', {}], ['specache', { bits: 2, topK: 16, window: 64, sinks: 4 }], ['infinigen', { topK: 16, window: 64, sinks: 4 }],
  ['exact', {}], ['tiered', { topK: 16, cpuK: 32, window: 64, sinks: 4 }],
];

type Tok = { token: number; logits: Float32Array };

async function alone(policy: string, knobs: Record<string, number>, prompt: number[], gen: Record<string, number>): Promise<Tok[]> {
  const engine = await createEngine(model!, { ...base, policy, ...knobs });
  try {
    const out: Tok[] = [];
    for await (const t of engine.generate(prompt, { maxNewTokens: 6, stopAtEos: false, ...gen })) out.push({ token: t.token, logits: t.logits });
    return out;
  } finally {
    await engine.dispose();
  }
}

describe.skipIf(!gpuUsable)('batches on the device-resident step', () => {
  it.each(POLICIES)('%s: each sequence of a batch of 3 decodes as it does alone (greedy)', async (policy, knobs) => {
    const engine = await createEngine(model!, { ...base, policy, ...knobs });
    const got: Tok[][] = prompts.map(() => []);
    try {
      for await (const t of engine.generateBatch(prompts, { maxNewTokens: 6, stopAtEos: false })) got[t.seq].push({ token: t.token, logits: t.logits });
      const st = engine.stats();
      expect(st.decodeTokens).toBe(3 * 5);
      expect(st.prefillTokens).toBe(prompts.reduce((n, p) => n + p.length, 0));
    } finally {
      await engine.dispose();
    }
    for (const [s, p] of prompts.entries()) {
      const want = await alone(policy, knobs, p, {});
      expect(got[s].map((t) => t.token), `sequence ${s}`).toEqual(want.map((t) => t.token));
      for (let i = 0; i < want.length; i++) expect(errOverRange(got[s][i].logits, want[i].logits), `sequence ${s} step ${i}`).toBeLessThanOrEqual(1e-6);
    }
  }, 180_000);

  it('sampled: sequence s draws from the seed + s stream, as alone with that seed', async () => {
    const sampling = { temperature: 0.8, topK: 20, topP: 0.9, seed: 5 };
    const engine = await createEngine(model!, { ...base, policy: 'specache', bits: 2, topK: 16, window: 64, sinks: 4 });
    const got: number[][] = prompts.map(() => []);
    try {
      for await (const t of engine.generateBatch(prompts, { maxNewTokens: 6, stopAtEos: false, ...sampling })) got[t.seq].push(t.token);
    } finally {
      await engine.dispose();
    }
    for (const [s, p] of prompts.entries()) {
      const want = await alone('specache', { bits: 2, topK: 16, window: 64, sinks: 4 }, p, { ...sampling, seed: sampling.seed + s });
      expect(got[s], `sequence ${s}`).toEqual(want.map((t) => t.token));
    }
  }, 180_000);

  it('the batch shares the budget: one that holds a sequence but not three fails with the three numbers', async () => {
    const one = await createEngine(model!, { ...base, policy: 'dense' });
    let single = 0;
    try {
      for await (const _ of one.generate(prompts[2], { maxNewTokens: 2, stopAtEos: false })) single = Math.max(single, one.stats().deviceBytes);
    } finally {
      await one.dispose();
    }
    expect(single).toBeGreaterThan(0);
    const engine = await createEngine(model!, { ...base, policy: 'dense', vramBudget: single + 1 });
    try {
      const go = async () => {
        for await (const _ of engine.generateBatch(prompts, { maxNewTokens: 2 })) { /* drain */ }
      };
      const err = await go().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KvoffCapacityError);
      expect(String(err)).toMatch(/needs at least \d+ bytes .* for 3 sequences of 303, 252, 335 tokens; given \d+ bytes/);
    } finally {
      await engine.dispose();
    }
  }, 120_000);
});
