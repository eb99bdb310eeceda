// Causal prefill attention through the pool equals one native call per query row.
import { afterAll, describe, expect, it } from 'vitest';
import { CpuAttentionPool, splitByWork } from '../src/cpu-attention.js';
import { HostKvCache } from '../src/kv/host-cache.js';
import { native } from '../src/native.js';
import { randn, rng, worstRatio } from './helpers.js';

const pool = new CpuAttentionPool({ threads: 2 });
afterAll(() => pool.dispose());

describe('attendCausal', () => {
  it('splits rows into contiguous ranges of balanced causal work', () => {
    expect(splitByWork(0, 1, 4)).toEqual([0, 1]);
    const cuts = splitByWork(100, 64, 4);
    expect(cuts[0]).toBe(0);
    expect(cuts[cuts.length - 1]).toBe(64);
    for (let i = 1; i < cuts.length; i++) expect(cuts[i]).toBeGreaterThan(cuts[i - 1]);
    // later rows cost more, so later ranges are shorter
    expect(cuts[1] - cuts[0]).toBeGreaterThanOrEqual(cuts[cuts.length - 1] - cuts[cuts.length - 2]);
  });

  for (const [G, D, start, T] of [[1, 64, 0, 1], [4, 128, 0, 37], [8, 64, 29, 20], [2, 32, 5, 3]] as const) {
    it(`G${G} D${D}, rows ${start}..${start + T}`, async () => {
      const r = rng(G * 100 + T);
      const nkv = 2;
      using cache = new HostKvCache({ numLayers: 1, numKvHeads: nkv, headDim: D, blockSize: 16, numBlocks: 8, dtype: 'bf16' });
      const seq = cache.store.createSequence();
      const slots = cache.reserve(seq, start + T);
      cache.write(0, slots, randn((start + T) * nkv * D, r), randn((start + T) * nkv * D, r));
      const kvHeads = Int32Array.of(0, 1);
      const row = nkv * G * D;
      const q = randn(T * row, r);
      const out = new Float32Array(T * row);
      const lse = new Float32Array(T * nkv * G);
      const region = cache.region(0);
      const blockIds = cache.store.blockIds(seq);
      await pool.attendCausal({ region, blockIds, start, kvHeads, groupSize: G, q, scale: 0.1, out, lse });
      for (let t = 0; t < T; t++) {
        const o1 = new Float32Array(row);
        const l1 = new Float32Array(nkv * G);
        native().kvAttend({ ...region, blockIds, numTokens: start + t + 1, kvHeads, groupSize: G, q: q.subarray(t * row, (t + 1) * row), scale: 0.1, out: o1, lse: l1 });
        expect(worstRatio(out.subarray(t * row, (t + 1) * row), o1, 0, 0)).toBe(0);
        expect(worstRatio(lse.subarray(t * nkv * G, (t + 1) * nkv * G), l1, 0, 0)).toBe(0);
      }
    });
  }
});
