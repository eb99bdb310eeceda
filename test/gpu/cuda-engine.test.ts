// The CUDA backend end to end: whole-model logits against the CPU backend (same bf16 weights), the lossless policies
// against dense on CUDA, the device-resident dense step against the engine, and the demo's passkey on CUDA.
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uploadWeights } from '../../src/cuda/cuda-weights.js';
import { DeviceArena, DeviceLayout } from '../../src/cuda/device-arena.js';
import { copyToHost } from '../../src/cuda/resident-context.js';
import { DenseResident, SpecacheResident, type HostKv } from '../../src/cuda/resident-attention.js';
import { ResidentDecoder } from '../../src/cuda/resident-decoder.js';
import { HostArena } from '../../src/arena.js';
import { KvoffArgumentError, createEngine, loadModel, type Model } from '../../src/index.js';
import { seededRandom, validateSampling } from '../../src/engine/sampling.js';
import { loadModelDir } from '../../src/model/load-dir.js';
import { writeRandomModel } from '../../src/model/random-model.js';
import { native } from '../../src/native.js';
import { errOverRange } from '../helpers.js';
import { acceptable, gpuUsable } from './cuda-helpers.js';

// head_dim 64, GQA 4, bf16 weights: the CPU backend widens them to f32 exactly, so both backends hold the same numbers.
const JSON_CONFIG = {
  architectures: ['LlamaForCausalLM'], hidden_act: 'silu', hidden_size: 512, intermediate_size: 1024, num_attention_heads: 8,
  num_key_value_heads: 2, num_hidden_layers: 2, vocab_size: 300, max_position_embeddings: 4096, rms_norm_eps: 1e-5, rope_theta: 10000,
  tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
};

let dir = '';
const models: Record<string, Model> = {};
beforeAll(async () => {
  if (!gpuUsable) return;
  dir = (await writeRandomModel(JSON_CONFIG, { dtype: 'bf16', seed: 9 })).dir;
  models.cpu = await loadModel(dir, { backend: 'cpu' });
  models.cuda = await loadModel(dir, { backend: 'cuda' });
}, 120_000);
afterAll(async () => {
  for (const m of Object.values(models)) await m.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function run(model: Model, policy: string, prompt: number[], maxNewTokens = 5, residentStep = true, knobs: Record<string, number> = {}) {
  const engine = await createEngine(model, { policy, blockSize: 16, prefillChunk: 40, cpuThreads: 2, residentStep, ...knobs });
  try {
    const steps: { token: number; logits: Float32Array }[] = [];
    for await (const t of engine.generate(prompt, { maxNewTokens, stopAtEos: false })) steps.push({ token: t.token, logits: t.logits });
    return steps;
  } finally {
    await engine.dispose();
  }
}

const prompt = Array.from({ length: 18 * 16 + 11 }, (_, i) => (i * 13 + 5) % 300);

describe.skipIf(!gpuUsable)('CUDA backend', () => {
  it('reproduces the CPU backend logits at every step (dense), on the host-side path and the device-resident one', async () => {
    const cpu = await run(models.cpu, 'dense', prompt);
    for (const residentStep of [false, true]) {
      const cuda = await run(models.cuda, 'dense', prompt, 5, residentStep);
      // Same bf16 weights and f32 activations; the prefill GEMM (tensor cores) rounds its activations to bf16, so
      // the prefill's K/V differ by up to 2^-8 relative, which reaches the logits at about 1e-3 of their range.
      for (let i = 0; i < cpu.length; i++) expect(errOverRange(cuda[i].logits, cpu[i].logits), `step ${i}, resident ${residentStep}`).toBeLessThanOrEqual(2e-2);
    }
  }, 120_000);

  it('Qwen2 (q/k/v biases, tied embeddings) on CUDA reproduces the CPU backend, on both paths', async () => {
    const qwen = { ...JSON_CONFIG, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', tie_word_embeddings: true, rope_theta: 1e6 };
    const q = await writeRandomModel(qwen, { dtype: 'bf16', seed: 12 });
    const cpu = await loadModel(q.dir, { backend: 'cpu' });
    const cuda = await loadModel(q.dir, { backend: 'cuda' });
    try {
      expect(cuda.backend).toBe('cuda');
      const want = await run(cpu, 'dense', prompt);
      for (const residentStep of [false, true]) {
        const got = await run(cuda, 'dense', prompt, 5, residentStep);
        for (let i = 0; i < want.length; i++) expect(errOverRange(got[i].logits, want[i].logits), `step ${i}, resident ${residentStep}`).toBeLessThanOrEqual(2e-2);
      }
    } finally {
      await cpu.dispose();
      await cuda.dispose();
      await rm(q.dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('cpu, offload-layer and exact equal dense on CUDA at every step (host-side path)', async () => {
    const dense = await run(models.cuda, 'dense', prompt, 5, false);
    for (const policy of ['cpu', 'offload-layer', 'exact']) {
      const r = await run(models.cuda, policy, prompt, 5, false);
      expect(r.map((s) => s.token), policy).toEqual(dense.map((s) => s.token));
      for (let i = 0; i < r.length; i++) expect(errOverRange(r[i].logits, dense[i].logits), `${policy} step ${i}`).toBeLessThanOrEqual(1e-5);
    }
  }, 120_000);

  it('the engine on the device-resident step: cpu and exact equal dense, and dense equals the host-side path', async () => {
    const dense = await run(models.cuda, 'dense', prompt, 8);
    // tiered with a CPU tier larger than the tokens between sinks and window attends every token exactly:
    // the device hot set (top 32), the CPU workers (the rest by score), nothing left to the low-bit tail.
    const lossless: Array<[string, Record<string, number>]> = [['cpu', {}], ['exact', {}], ['tiered', { topK: 32, cpuK: 1000 }]];
    for (const [policy, knobs] of lossless) {
      const r = await run(models.cuda, policy, prompt, 8, true, knobs);
      expect(r.map((s) => s.token), policy).toEqual(dense.map((s) => s.token));
      for (let i = 0; i < r.length; i++) expect(errOverRange(r[i].logits, dense[i].logits), `${policy} step ${i}`).toBeLessThanOrEqual(1e-5);
    }
    // Prefill attention on the GPU (flash, f32) against the CPU workers' (f32) over the same bf16 KV: only the
    // order of the f32 sums differs, but the next prefill GEMM rounds its input to bf16, where an ulp of f32 can
    // flip a rounding (2^-8 relative): measured 1.4e-3 of the range on the H100, the size the CPU-backend bound allows for.
    const host = await run(models.cuda, 'dense', prompt, 8, false);
    for (let i = 0; i < host.length; i++) expect(errOverRange(dense[i].logits, host[i].logits), `step ${i}`).toBeLessThanOrEqual(1e-2);
  }, 120_000);

  it('the engine on the resident specache step: an exact prefill, then finite steps that report their prefetch', async () => {
    const dense = await run(models.cuda, 'dense', prompt, 8);
    const engine = await createEngine(models.cuda, { policy: 'specache', blockSize: 16, prefillChunk: 40, bits: 2, topK: 32, window: 64, sinks: 4 });
    try {
      const steps: Float32Array[] = [];
      for await (const t of engine.generate(prompt, { maxNewTokens: 8, stopAtEos: false })) steps.push(t.logits);
      expect(steps.length).toBe(8);
      // The first token comes from the prefill, which is exact for every policy.
      expect(errOverRange(steps[0], dense[0].logits)).toBeLessThanOrEqual(1e-5);
      for (const l of steps) expect(l.every(Number.isFinite)).toBe(true);
      const st = engine.stats();
      expect(st.decodeTokens).toBe(7);
      expect(st.specUsed + st.specWasted).toBe(6); // every step but the first had a guess to check
      expect(st.copyMs).toBeGreaterThan(0);
      expect(st.overlapRatio).toBeGreaterThanOrEqual(0);
      expect(st.overlapRatio).toBeLessThanOrEqual(1);
      expect(engine.lastKnobs).toMatchObject({ bits: 2, topK: 32, window: 64, sinks: 4 });
    } finally {
      await engine.dispose();
    }
  }, 120_000);

  it('sampling on the device: each token is what sample() draws from its logits with the seed\'s next draw', async () => {
    // dense and specache run a step ahead, exact step by step; the first token is drawn on the host, the rest on the device.
    for (const policy of ['dense', 'specache', 'exact']) {
      const knobs = policy === 'specache' ? { topK: 32, bits: 2 } : {};
      const engine = await createEngine(models.cuda, { policy, blockSize: 16, prefillChunk: 40, cpuThreads: 2, ...knobs });
      try {
        const o = validateSampling({ temperature: 0.9, topK: 40, topP: 0.9, seed: 11 });
        const random = seededRandom(o.seed);
        const drawn = new Set<number>();
        for await (const t of engine.generate(prompt, { maxNewTokens: 10, stopAtEos: false, ...o })) {
          const u = random();
          expect(acceptable(t.logits, o, u).has(t.token), `${policy}: token ${t.token} at u ${u}`).toBe(true);
          drawn.add(t.token);
        }
        expect(drawn.size, `${policy}: draws, not one repeated token`).toBeGreaterThan(1);
      } finally {
        await engine.dispose();
      }
    }
  }, 120_000);

  it('top-k 1 sampling draws what greedy decodes, both a step ahead', async () => {
    for (const policy of ['dense', 'specache']) {
      const knobs = policy === 'specache' ? { topK: 32, bits: 2 } : {};
      const greedy = await run(models.cuda, policy, prompt, 8, true, knobs);
      const engine = await createEngine(models.cuda, { policy, blockSize: 16, prefillChunk: 40, cpuThreads: 2, ...knobs });
      try {
        const drawn: number[] = [];
        const logits: Float32Array[] = [];
        for await (const t of engine.generate(prompt, { maxNewTokens: 8, stopAtEos: false, temperature: 1, topK: 1, seed: 3 })) {
          drawn.push(t.token);
          logits.push(t.logits);
        }
        expect(drawn, policy).toEqual(greedy.map((s) => s.token));
        for (let i = 0; i < drawn.length; i++) expect(errOverRange(logits[i], greedy[i].logits), `${policy} step ${i}`).toBeLessThanOrEqual(1e-6);
      } finally {
        await engine.dispose();
      }
    }
  }, 120_000);

  it('the engine on the resident tiered step: device top-k, CPU next-k and a low-bit tail, counted in the stats', async () => {
    const dense = await run(models.cuda, 'dense', prompt, 6);
    const engine = await createEngine(models.cuda, { policy: 'tiered', blockSize: 16, prefillChunk: 40, cpuThreads: 2, bits: 2, topK: 32, cpuK: 64, window: 64, sinks: 4 });
    try {
      const steps: Float32Array[] = [];
      for await (const t of engine.generate(prompt, { maxNewTokens: 6, stopAtEos: false })) steps.push(t.logits);
      expect(errOverRange(steps[0], dense[0].logits)).toBeLessThanOrEqual(1e-5); // the exact prefill
      for (const l of steps) expect(l.every(Number.isFinite)).toBe(true);
      const st = engine.stats();
      expect(st.specUsed + st.specWasted).toBe(0); // tiered feeds no speculative token
      const c2 = models.cuda.config;
    const perStep = c2.numLayers * (c2.numKvHeads * 32 * 4 * c2.headDim + c2.numHeads * c2.headDim * 4 + c2.numHeads * 4);
      expect(st.bytesH2D).toBe(5 * perStep);
      expect(st.overlapRatio).toBe(0); // its fetch serves the step itself: never hidden
    } finally {
      await engine.dispose();
    }
  }, 120_000);

  it('the resident step fits specache to a budget share, and refuses a budget too small with the smallest that works', async () => {
    const engine = await createEngine(models.cuda, { policy: 'specache', vramBudget: '60%', blockSize: 16 }); // the hot set alone is ~40% of this short context's KV
    const tiny = await createEngine(models.cuda, { policy: 'dense', vramBudget: 4096, blockSize: 16 });
    try {
      let n = 0;
      for await (const _ of engine.generate(prompt, { maxNewTokens: 3, stopAtEos: false })) n++;
      expect(n).toBe(3);
      expect(engine.stats().deviceBytesPeak).toBeLessThanOrEqual(0.6 * engine.kvBytesFor(prompt.length + 3));
      const go = async () => {
        for await (const _ of tiny.generate(prompt, { maxNewTokens: 3 })) void _;
      };
      await expect(go()).rejects.toThrow(/Expected room for \d+ bytes of KV device tier but only 4096 are available/);
    } finally {
      await engine.dispose();
      await tiny.dispose();
    }
  }, 120_000);

  it('an abort stops a resident run between steps, frees its memory, and the engine runs again', async () => {
    const engine = await createEngine(models.cuda, { policy: 'exact', blockSize: 16, cpuThreads: 2 });
    try {
      const before = native().cudaMemInfo().freeBytes;
      for (let cycle = 0; cycle < 3; cycle++) {
        const ac = new AbortController();
        let n = 0;
        const go = async () => {
          for await (const _ of engine.generate(prompt, { maxNewTokens: 50, stopAtEos: false, signal: ac.signal })) if (++n === 3) ac.abort();
        };
        await expect(go()).rejects.toMatchObject({ name: 'AbortError' });
        expect(n).toBe(3);
      }
      const after = native().cudaMemInfo().freeBytes;
      expect(before - after).toBeLessThan(8 << 20); // no device memory left behind by three runs
      const again = await run(models.cuda, 'exact', prompt, 2);
      expect(again.length).toBe(2);
    } finally {
      await engine.dispose();
    }
  }, 120_000);

  it('the device-resident dense step reproduces the engine on CUDA, token by token from an empty cache, fed by host or device ids', async () => {
    const c = models.cuda.config;
    const engineSteps = await run(models.cuda, 'dense', [7], 12, false); // a one-token prompt, then greedy decode
    const weights = uploadWeights(c, (await loadModelDir(dir)).weights);
    // With the layer kernels as CUDA graphs (the default) and launched one by one: the graphs replay the same work.
    for (const useGraphs of [true, false]) {
      const dense = new DenseResident({ config: c, capacity: 64, dtype: 'bf16', stream: 0 });
      const dec = new ResidentDecoder(c, weights, dense, 0, { useGraphs });
      try {
        let tok = 7;
        for (let pos = 0; pos < engineSteps.length; pos++) {
          // With graphs, steps after the first are fed on the device by the last argmax (stepOnDevice).
          const [next] = useGraphs && pos > 0 ? await dec.stepOnDevice(pos, 1) : await dec.step(Int32Array.of(tok), pos);
          const logits = await dec.logits(1);
          expect(errOverRange(logits, engineSteps[pos].logits), `position ${pos}, graphs ${useGraphs}`).toBeLessThanOrEqual(1e-4);
          expect(next).toBe(engineSteps[pos].token);
          tok = next;
        }
      } finally {
        dec.dispose();
        dense.dispose();
      }
    }
    weights.free();
  }, 120_000);

  it('the device-resident specache step runs at a context past its hot set, with finite logits for both rows', async () => {
    const c = models.cuda.config;
    const weights = uploadWeights(c, (await loadModelDir(dir)).weights);
    const block = 64;
    const context = 1024;
    const capacity = context + 16;
    const numBlocks = Math.ceil(capacity / block);
    const layerBytes = numBlocks * c.numKvHeads * block * 4 * c.headDim;
    const arena = new HostArena(layerBytes * c.numLayers, { pin: true });
    const host: HostKv = {
      region: (l) => ({ handle: arena.handle, offset: l * layerBytes, numBlocks, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: block, dtype: 'bf16' }),
      blockIds: Int32Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i), // scattered: logical block i is physical n-1-i
    };
    const copy = native().cudaStreamCreate();
    const spec = new SpecacheResident({ config: c, capacity, dtype: 'bf16', stream: 0 }, { topK: 32, sinks: 4, window: 64, bits: 2, keyGroupSize: 32 }, host, copy);
    const dec = new ResidentDecoder(c, weights, spec);
    const kvBytes = c.numKvHeads * context * 4 * c.headDim;
    const staging = DeviceArena.create(new DeviceLayout().add('kv', kvBytes));
    try {
      // A random context, as a prefill would leave it: host cache, low-bit copy and hot set all from the same KV.
      for (let l = 0; l < c.numLayers; l++) {
        native().cudaFillRandom({ dst: staging.ref('kv'), count: kvBytes / 2, dtype: 'bf16', seed: 50 + l, scale: 1 });
        const staged = { kv: (off: number) => staging.ref('kv', off), n: context, capacity: context };
        spec.load(l, staged);
        copyToHost(c, staged, host, l, 0);
        await native().cudaStreamSynchronize({});
      }
      spec.prime(context);
      let toks = Int32Array.of(3, 4);
      for (let i = 0; i < 8; i++) {
        // Odd steps take their tokens (the next one and the next guess) from the last argmax, on the device.
        const got = i % 2 ? await dec.stepOnDevice(context + i, 2) : await dec.step(toks, context + i);
        if (i % 2) expect(got.length).toBe(2);
        toks = got;
        const logits = await dec.logits(2);
        expect(logits.every(Number.isFinite)).toBe(true);
      }
      const { copyMs, stallMs } = spec.drainCopyMs();
      expect(copyMs).toBeGreaterThan(0);
      expect(stallMs).toBeGreaterThanOrEqual(0);
    } finally {
      staging.free();
      dec.dispose();
      spec.dispose();
      native().cudaStreamDestroy({ stream: copy });
      weights.free();
      arena.dispose();
    }
  }, 120_000);
});

describe.skipIf(!gpuUsable)('the device-resident specache step on bad input', () => {
  it('refuses a context shorter than its sinks, window and top-k with the numbers, before any kernel runs', () => {
    const c = models.cuda.config;
    const arena = new HostArena(c.numLayers * c.numKvHeads * 64 * 4 * c.headDim, { pin: true });
    const host: HostKv = {
      region: (l) => ({ handle: arena.handle, offset: l * c.numKvHeads * 64 * 4 * c.headDim, numBlocks: 1, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: 64, dtype: 'bf16' }),
      blockIds: Int32Array.of(0),
    };
    const knobs = { topK: 32, sinks: 4, window: 64, bits: 2 as const, keyGroupSize: 32 as const };
    expect(() => new SpecacheResident({ config: c, capacity: 64, dtype: 'bf16', stream: 0 }, { ...knobs, window: 40 }, host, 0)).toThrow(KvoffArgumentError);
    const spec = new SpecacheResident({ config: c, capacity: 64, dtype: 'bf16', stream: 0 }, knobs, host, 0);
    try {
      expect(() => spec.prime(60)).toThrow('Expected at least sinks + window + topK = 100 tokens for specache context but received 60');
    } finally {
      spec.dispose();
      arena.dispose();
    }
  });
});

describe.skipIf(!gpuUsable)('the demo model on CUDA', () => {
  it('finds the passkey of the README quick start', async () => {
    const { readFile } = await import('node:fs/promises');
    const { join } = await import('node:path');
    const { demoModelDir } = await import('../../src/model/model.js');
    const model = await loadModel('demo', { backend: 'cuda' });
    try {
      const engine = await createEngine(model, { policy: 'exact' });
      const text = await readFile(join(demoModelDir(), 'haystack-8k.txt'), 'utf8');
      let out = '';
      for await (const t of engine.generate(text, { maxNewTokens: 6 })) out += t.text;
      await engine.dispose();
      expect(out).toContain('89819');
    } finally {
      await model.dispose();
    }
  }, 300_000);
});
