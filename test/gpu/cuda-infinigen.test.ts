// infinigen on the device-resident step: lossless when its top-k covers every token, layer l + 1's pick made from
// layer l's input with layer l + 1's own weights and keys, the engine's stats, and its refusals.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostArena } from '../../src/arena.js';
import { uploadWeights } from '../../src/cuda/cuda-weights.js';
import { DeviceArena, DeviceLayout } from '../../src/cuda/device-arena.js';
import { InfinigenResident, infinigenDeviceBytes, infinigenKeyBits } from '../../src/cuda/infinigen-resident.js';
import { LayerKernels, activationLayout } from '../../src/cuda/layer-kernels.js';
import type { HostKv } from '../../src/cuda/resident-attention.js';
import { copyToHost } from '../../src/cuda/resident-context.js';
import { createEngine, loadModel, type Model } from '../../src/index.js';
import { loadModelDir } from '../../src/model/load-dir.js';
import { writeRandomModel } from '../../src/model/random-model.js';
import { ropeInvFreq, ropeTables } from '../../src/model/rope.js';
import { native, type DevRef } from '../../src/native.js';
import { errOverRange } from '../helpers.js';
import { gpuUsable } from './cuda-helpers.js';

// head_dim 64, GQA 4, 3 layers (so a layer's pick is speculated from a layer that itself attended a speculated pick).
const JSON_CONFIG = {
  architectures: ['LlamaForCausalLM'], hidden_act: 'silu', hidden_size: 512, intermediate_size: 1024, num_attention_heads: 8,
  num_key_value_heads: 2, num_hidden_layers: 3, vocab_size: 300, max_position_embeddings: 4096, rms_norm_eps: 1e-5, rope_theta: 10000,
  tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
};

let dir = '';
let model: Model | null = null;
beforeAll(async () => {
  if (!gpuUsable) return;
  dir = (await writeRandomModel(JSON_CONFIG, { dtype: 'bf16', seed: 21 })).dir;
  model = await loadModel(dir, { backend: 'cuda' });
}, 120_000);
afterAll(async () => {
  await model?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const prompt = Array.from({ length: 300 }, (_, i) => (i * 17 + 3) % 300);

async function generate(policy: string, knobs: Record<string, number>, maxNewTokens = 8) {
  const engine = await createEngine(model!, { policy, blockSize: 16, prefillChunk: 64, cpuThreads: 2, ...knobs });
  try {
    const steps: Float32Array[] = [];
    for await (const t of engine.generate(prompt, { maxNewTokens, stopAtEos: false })) steps.push(t.logits);
    return { steps, stats: engine.stats(), knobs: engine.lastKnobs };
  } finally {
    await engine.dispose();
  }
}

describe.skipIf(!gpuUsable)('infinigen on the device-resident step', () => {
  it('equals dense at every step when its top-k covers every token between sinks and window', async () => {
    const dense = await generate('dense', {});
    const all = await generate('infinigen', { topK: 1000, window: 64, sinks: 4 });
    for (let i = 0; i < dense.steps.length; i++) expect(errOverRange(all.steps[i], dense.steps[i]), `step ${i}`).toBeLessThanOrEqual(1e-5);
  }, 120_000);

  it('a small top-k: finite steps, a step ahead, its fetches counted and timed', async () => {
    const { steps, stats, knobs } = await generate('infinigen', { topK: 8, window: 64, sinks: 4, partialRatio: 0.125 });
    expect(steps.length).toBe(8);
    for (const l of steps) expect(l.every(Number.isFinite)).toBe(true);
    expect(knobs).toEqual({ topK: 8, partialRatio: 0.125, window: 64, sinks: 4 });
    expect(stats.decodeTokens).toBe(7);
    const c = model!.config;
    expect(stats.bytesH2D).toBe(7 * c.numLayers * c.numKvHeads * 8 * 4 * c.headDim); // 8 rows of K and V per head and layer
    expect(stats.copyMs).toBeGreaterThan(0);
    expect(stats.overlapRatio).toBeGreaterThanOrEqual(0);
    expect(stats.overlapRatio).toBeLessThanOrEqual(1);
  }, 120_000);

  it('fits its key bits, then its top-k, to the budget (4 -> 2 -> 1 bits)', async () => {
    const c = model!.config;
    const capacity = prompt.length + 8;
    const base = { topK: 64, window: 64, sinks: 4 };
    const oneBit = infinigenDeviceBytes(c, capacity, { ...base, partialRatio: 0.0625 });
    const twoBit = infinigenDeviceBytes(c, capacity, { ...base, partialRatio: 0.125 });
    expect(oneBit).toBeLessThan(twoBit);
    const { knobs, stats } = await generate('infinigen', { vramBudget: Math.floor((oneBit + twoBit) / 2) });
    expect(knobs).toEqual({ ...base, partialRatio: 0.0625 });
    expect(stats.decodeTokens).toBe(7);
  }, 120_000);

  it('speculates layer l + 1 from layer l\'s input: its query and top-k are what layer l + 1 itself would make from that input', async () => {
    const c = model!.config;
    const weights = uploadWeights(c, (await loadModelDir(dir)).weights);
    const block = 64;
    const context = 1000; // not a multiple of the key group or the block
    const capacity = context + 8;
    const numBlocks = Math.ceil(capacity / block);
    const layerBytes = numBlocks * c.numKvHeads * block * 4 * c.headDim;
    const arena = new HostArena(layerBytes * c.numLayers, { pin: true });
    const host: HostKv = {
      region: (l) => ({ handle: arena.handle, offset: l * layerBytes, numBlocks, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: block, dtype: 'bf16' }),
      blockIds: Int32Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i),
    };
    const copy = native().cudaStreamCreate();
    const knobs = { topK: 24, partialRatio: 0.25, window: 64, sinks: 4 };
    const inf = new InfinigenResident({ config: c, capacity, dtype: 'bf16', stream: 0 }, knobs, host, copy, weights);
    const kvBytes = c.numKvHeads * context * 4 * c.headDim;
    const scratch = DeviceArena.create(new DeviceLayout().add('kv', kvBytes).add('scores', c.numKvHeads * capacity * 4).add('picks', c.numKvHeads * knobs.topK * 4));
    const a = DeviceArena.create(activationLayout(c, 2));
    const down = async (src: DevRef, bytes: number) => (await native().cudaDownload({ src, bytes, stream: 0 })).slice();
    try {
      for (let l = 0; l < c.numLayers; l++) {
        native().cudaFillRandom({ dst: scratch.ref('kv'), count: kvBytes / 2, dtype: 'bf16', seed: 70 + l, scale: 1 });
        const staged = { kv: (off: number) => scratch.ref('kv', off), n: context, capacity: context };
        inf.load(l, staged);
        copyToHost(c, staged, host, l, 0);
        await native().cudaStreamSynchronize({});
      }
      const kernels = new LayerKernels(c, weights, 0);
      native().cudaFillRandom({ dst: a.ref('x'), count: c.hiddenSize, dtype: 'f32', seed: 5, scale: 1 });
      const { cos, sin } = ropeTables(ropeInvFreq(c), [context]);
      native().cudaUpload({ dst: a.ref('cos'), data: cos, stream: 0 });
      native().cudaUpload({ dst: a.ref('sin'), data: sin, stream: 0 });
      kernels.pre(a, 0, 1);
      inf.attend(0, a, { pos: context, rows: 1 }); // picks its own top-k, and speculates layer 1's from x
      await native().cudaStreamSynchronize({ stream: copy });
      await native().cudaStreamSynchronize({});
      const qBytes = c.numHeads * c.headDim * 4;
      const specQ = await down(inf.ref('specQ'), qBytes);
      const picks = await down(inf.ref('picks1'), c.numKvHeads * knobs.topK * 4);
      // Layer 1 run on the same input (layer 0's output left out): the same kernels, so the same bits.
      kernels.pre(a, 1, 1);
      expect(await down(a.ref('qkv'), qBytes)).toEqual(specQ);
      // Its top-k over layer 1's own low-bit keys, between the sinks and the window of the 1001 tokens.
      const n = context + 1;
      native().cudaKiviScores({
        numKvHeads: c.numKvHeads, headDim: c.headDim, bits: infinigenKeyBits(knobs.partialRatio), keyGroupSize: 64, valueGroupSize: c.headDim, capacityTokens: capacity, keysOnly: true,
        lowBit: inf.ref('keys1'), groupSize: c.numHeads / c.numKvHeads, q: a.ref('qkv'), numGroups: Math.ceil((n - knobs.window) / 64), out: scratch.ref('scores'), ldOut: capacity, stream: 0,
      });
      native().cudaTopK({ scores: scratch.ref('scores'), rows: c.numKvHeads, ld: capacity, first: knobs.sinks, n: n - knobs.window - knobs.sinks, k: knobs.topK, out: scratch.ref('picks'), stream: 0 });
      expect(await down(scratch.ref('picks'), c.numKvHeads * knobs.topK * 4)).toEqual(picks);
      inf.attend(1, a, { pos: context, rows: 1 }); // waits for that fetch, then attends
      await native().cudaStreamSynchronize({});
      const out = new Float32Array((await down(a.ref('attn'), qBytes)).buffer);
      expect(out.every(Number.isFinite)).toBe(true);
      const { copyMs, stallMs } = inf.drainCopyMs();
      expect(copyMs).toBeGreaterThan(0);
      expect(stallMs).toBeGreaterThanOrEqual(0);
    } finally {
      a.free();
      scratch.free();
      inf.dispose();
      native().cudaStreamDestroy({ stream: copy });
      weights.free();
      arena.dispose();
    }
  }, 120_000);

  it('refuses a window that is not whole key groups, and a context too short, with the numbers', async () => {
    const c = model!.config;
    const weights = uploadWeights(c, (await loadModelDir(dir)).weights);
    const arena = new HostArena(c.numLayers * c.numKvHeads * 64 * 4 * c.headDim, { pin: true });
    const host: HostKv = {
      region: (l) => ({ handle: arena.handle, offset: l * c.numKvHeads * 64 * 4 * c.headDim, numBlocks: 1, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: 64, dtype: 'bf16' }),
      blockIds: Int32Array.of(0),
    };
    const shape = { config: c, capacity: 64, dtype: 'bf16' as const, stream: 0 };
    const knobs = { topK: 8, partialRatio: 0.25, window: 64, sinks: 4 };
    const a = DeviceArena.create(activationLayout(c, 2));
    try {
      expect(() => new InfinigenResident(shape, { ...knobs, window: 40 }, host, 0, weights)).toThrow('Expected a positive multiple of 64 for infinigen window but received 40');
      const inf = new InfinigenResident(shape, knobs, host, 0, weights);
      try {
        expect(() => inf.attend(0, a, { pos: 60, rows: 1 })).toThrow('Expected at least sinks + window + 1 = 69 tokens for infinigen context but received 61');
      } finally {
        inf.dispose();
      }
    } finally {
      a.free();
      weights.free();
      arena.dispose();
    }
  }, 120_000);
});
