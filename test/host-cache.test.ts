// HostKvCache: shared prompts stay intact after copy-on-write, in every layer, and attention sees each sequence's own history.
import { describe, expect, it } from 'vitest';
import { HostKvCache } from '../src/kv/host-cache.js';
import { native } from '../src/native.js';
import { arenaTotals } from '../src/arena.js';
import { randn, rng, worstRatio } from './helpers.js';

function attendDense(cache: HostKvCache, layer: number, seqId: number, q: Float32Array, G: number) {
  const { numKvHeads, headDim } = cache.shape;
  const out = new Float32Array(numKvHeads * G * headDim);
  const lse = new Float32Array(numKvHeads * G);
  native().kvAttend({
    ...cache.region(layer), blockIds: cache.store.blockIds(seqId), numTokens: cache.store.numTokens(seqId),
    kvHeads: Int32Array.from({ length: numKvHeads }, (_, i) => i), groupSize: G, q, scale: 1 / Math.sqrt(headDim), out, lse,
  });
  return { out, lse };
}

describe('HostKvCache', () => {
  it('a forked sequence writes into its own copy of the shared partial block, in every layer', () => {
    const r = rng(9);
    const shape = { numLayers: 3, numKvHeads: 2, headDim: 64, blockSize: 8, numBlocks: 16, dtype: 'bf16' as const };
    using cache = new HostKvCache(shape);
    const row = shape.numKvHeads * shape.headDim;
    const parent = cache.store.createSequence();
    const prompt = { k: randn(13 * row, r), v: randn(13 * row, r) };
    const slots = cache.reserve(parent, 13);
    for (let l = 0; l < 3; l++) cache.write(l, slots, prompt.k, prompt.v);
    const child = cache.store.fork(parent);
    // Both continue with different tokens; the child's append triggers copy-on-write of block 1 (5 of 8 used).
    const extra = (seq: number) => {
      const k = randn(4 * row, r), v = randn(4 * row, r);
      const s = cache.reserve(seq, 4);
      for (let l = 0; l < 3; l++) cache.write(l, s, k, v);
      return { k, v };
    };
    const childTail = extra(child);
    const parentTail = extra(parent);
    // Rebuild each history in a fresh single-sequence cache and compare attention outputs.
    for (const [seq, tail] of [[parent, parentTail], [child, childTail]] as const) {
      using solo = new HostKvCache(shape);
      const s = solo.store.createSequence();
      const all = solo.reserve(s, 17);
      const k = new Float32Array(17 * row), v = new Float32Array(17 * row);
      k.set(prompt.k); k.set(tail.k, 13 * row);
      v.set(prompt.v); v.set(tail.v, 13 * row);
      for (let l = 0; l < 3; l++) solo.write(l, all, k, v);
      for (let l = 0; l < 3; l++) {
        const q = randn(shape.numKvHeads * 4 * shape.headDim, r);
        const a = attendDense(cache, l, seq, q, 4);
        const b = attendDense(solo, l, s, q, 4);
        expect(worstRatio(a.out, b.out, 1e-6, 1e-6)).toBeLessThanOrEqual(1);
        expect(worstRatio(a.lse, b.lse, 1e-6, 1e-6)).toBeLessThanOrEqual(1);
      }
    }
  });

  it('dispose frees the arena and the store', () => {
    const before = arenaTotals().count;
    const cache = new HostKvCache({ numLayers: 1, numKvHeads: 1, headDim: 8, blockSize: 4, numBlocks: 2, dtype: 'f16' });
    expect(arenaTotals().count).toBe(before + 1);
    cache.dispose();
    expect(arenaTotals().count).toBe(before);
    expect(cache.store.live).toBe(false);
  });
});
