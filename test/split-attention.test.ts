// The exact policy's split attention (hot set on the device tier + every other token on the CPU workers, merged by
// LSE) against the fp64 reference over the same cache bytes, step after step, on every SIMD path.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuAttentionPool } from '../src/cpu-attention.js';
import { HostDeviceTier } from '../src/device/device-tier.js';
import { emptyStats } from '../src/engine/stats.js';
import { EXACT_DEFAULTS, SplitAttention, splitDeviceParts } from '../src/engine/split-attention.js';
import { attendRef } from '../src/kernels/paged-kv.js';
import { HostKvCache } from '../src/kv/host-cache.js';
import { native, type KvDtype } from '../src/native.js';
import { maxAbs, randn, rng, worstRatio } from './helpers.js';
import { simdLevels } from './simd-levels.js';

let pool: CpuAttentionPool;
beforeAll(() => {
  pool = new CpuAttentionPool({ threads: 2 });
});
afterAll(async () => {
  native().setSimd({ level: 'auto' });
  await pool.dispose();
});

interface Case {
  groupSize: number;
  headDim: number;
  dtype: KvDtype;
  prompt: number; // tokens before the decode steps
  qScale: number; // large: peaked softmax, where one misplaced token would dominate the error
}

// Hot set: 4 sinks + 64 top-k + 64 recent = 132, so 1 and 100 leave the CPU part empty, 140 leaves it a few tokens.
const cases: Case[] = [
  { groupSize: 1, headDim: 64, dtype: 'bf16', prompt: 1, qScale: 1 },
  { groupSize: 4, headDim: 32, dtype: 'bf16', prompt: 299, qScale: 1 },
  { groupSize: 4, headDim: 32, dtype: 'f16', prompt: 140, qScale: 8 },
  { groupSize: 8, headDim: 64, dtype: 'bf16', prompt: 517, qScale: 8 },
  { groupSize: 8, headDim: 128, dtype: 'f16', prompt: 100, qScale: 1 },
  { groupSize: 1, headDim: 128, dtype: 'f16', prompt: 333, qScale: 3 },
];

const BLOCK = 16;
const LAYERS = 2;
const KV_HEADS = 2;
const STEPS = 4;

describe.each(simdLevels())('exact split attention on %s', (level) => {
  it.each(cases.map((c, i) => [i, c] as const))('case %i equals one fp64 attention over all tokens at every step', async (i, c) => {
    native().setSimd({ level });
    const r = rng(400 + i);
    const D = c.headDim, G = c.groupSize, H = KV_HEADS;
    const capacityTokens = c.prompt + STEPS;
    const numBlocks = Math.ceil(capacityTokens / BLOCK) + 1;
    const shape = { numLayers: LAYERS, numKvHeads: H, headDim: D, dtype: c.dtype, capacityTokens };
    const deviceBytes = splitDeviceParts(shape, EXACT_DEFAULTS).reduce((s, p) => s + p.bytes, 0);
    using cache = new HostKvCache({ numLayers: LAYERS, numKvHeads: H, headDim: D, blockSize: BLOCK, numBlocks, dtype: c.dtype });
    using tier = new HostDeviceTier({ capacity: deviceBytes + 64 * 1024 });
    const split = new SplitAttention(tier, shape, EXACT_DEFAULTS);
    try {
      const seq = cache.store.createSequence();
      const row = H * D;
      const append = (T: number, start: number) => {
        const slots = cache.reserve(seq, T);
        for (let l = 0; l < LAYERS; l++) {
          const k = randn(T * row, r), v = randn(T * row, r); // [T, H, D]
          cache.write(l, slots, k, v);
          split.onWrite(l, start, k, v);
        }
      };
      append(c.prompt, 0);
      const stats = emptyStats(0);
      for (let step = 0; step < STEPS; step++) {
        const n = c.prompt + step + 1;
        append(1, n - 1);
        for (let l = 0; l < LAYERS; l++) {
          const q = randn(H * G * D, r, c.qScale); // [H, G, D]
          const out = new Float32Array(H * G * D).fill(NaN);
          const lse = new Float32Array(H * G).fill(NaN);
          const scale = 1 / Math.sqrt(D);
          await split.attend({ layer: l, cache, seq, pool, groupSize: G, scale, stats }, q, out, lse);
          const region = cache.region(l);
          const image = new Uint16Array(native().arenaRead({ handle: region.handle, offset: region.offset, bytes: cache.layerBytes }).buffer);
          for (let h = 0; h < H; h++) {
            const ref = attendRef(region, image, { blockIds: cache.store.blockIds(seq), numTokens: n, kvHead: h, groupSize: G, q: q.subarray(h * G * D, (h + 1) * G * D), scale });
            const o = out.subarray(h * G * D, (h + 1) * G * D);
            // As tight as one kernel call against the same reference (kernels-attention.test.ts): the split and its
            // merge add no error of their own beyond fp32 rounding.
            expect(worstRatio(o, ref.o, 2e-5 * maxAbs(ref.o), 2e-5), `step ${step} layer ${l} head ${h}`).toBeLessThanOrEqual(1);
            expect(worstRatio(lse.subarray(h * G, (h + 1) * G), ref.lse, 1e-5, 1e-5)).toBeLessThanOrEqual(1);
          }
        }
      }
      // Every step's q is fresh, so the top-k part moves; the sinks and the window are hits after the first step.
      expect(stats.hotMisses).toBeGreaterThan(0);
      expect(stats.hotHits).toBeGreaterThan(0);
    } finally {
      split.dispose();
    }
  }, 30_000);
});
