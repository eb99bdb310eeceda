// LSE merge exactness (halves merge to the whole) and top-k against the reference.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { native } from '../src/native.js';
import { lseMergeRef } from '../src/kernels/merge.js';
import { topKRef } from '../src/kernels/topk.js';
import { randn, rng, worstRatio } from './helpers.js';

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});

describe('lseMerge', () => {
  it('merging attention over two disjoint halves equals attention over the whole', () => {
    for (const [G, D, n, dtype] of [[1, 64, 1, 'f16'], [4, 128, 77, 'bf16'], [8, 64, 300, 'f16']] as const) {
      const r = rng(G * D + n);
      const bs = 16;
      const nb = Math.ceil(n / bs);
      const region = { handle: 0, offset: 0, numBlocks: nb, numKvHeads: 1, headDim: D, blockSize: bs, dtype };
      const arena = new HostArena(nb * bs * 2 * D * 2);
      arenas.push(arena);
      region.handle = arena.handle;
      const blockIds = Int32Array.from({ length: nb }, (_, i) => i);
      native().kvAppend({ ...region, slots: Int32Array.from({ length: n }, (_, i) => i), k: randn(n * D, r), v: randn(n * D, r) });
      const q = randn(G * D, r);
      const attend = (exclude?: Int32Array) => {
        const out = new Float32Array(G * D);
        const lse = new Float32Array(G);
        native().kvAttend({ ...region, blockIds, numTokens: n, kvHeads: Int32Array.of(0), groupSize: G, q, scale: 1 / Math.sqrt(D), out, lse, exclude });
        return { out, lse };
      };
      // a random split into two disjoint sets, not contiguous halves
      const inA = Array.from({ length: n }, () => r() < 0.5);
      const a = attend(Int32Array.from(inA.flatMap((x, i) => (x ? [] : [i]))));
      const b = attend(Int32Array.from(inA.flatMap((x, i) => (x ? [i] : []))));
      const whole = attend();
      const out = new Float32Array(G * D);
      const lseOut = new Float32Array(G);
      native().lseMerge({ rows: G, headDim: D, oA: a.out, lseA: a.lse, oB: b.out, lseB: b.lse, out, lseOut });
      expect(worstRatio(out, whole.out, 1e-5, 1e-5)).toBeLessThanOrEqual(1);
      expect(worstRatio(lseOut, whole.lse, 1e-5, 1e-5)).toBeLessThanOrEqual(1);
    }
  });

  it('matches the reference, including empty partials (-inf) and in-place output', () => {
    const r = rng(3);
    const rows = 6, D = 32;
    const oA = randn(rows * D, r), oB = randn(rows * D, r);
    const lseA = Float32Array.from([0.5, -Infinity, 80, -80, -Infinity, 3]);
    const lseB = Float32Array.from([0.25, 2, -80, 80, -Infinity, 3]);
    const ref = lseMergeRef(rows, D, oA, lseA, oB, lseB);
    const lseOut = new Float32Array(rows);
    native().lseMerge({ rows, headDim: D, oA, lseA, oB, lseB, out: oA, lseOut }); // out aliases oA
    expect(worstRatio(oA, ref.o, 1e-6, 1e-6)).toBeLessThanOrEqual(1);
    expect(worstRatio(lseOut, ref.lse, 1e-6, 1e-6)).toBeLessThanOrEqual(1);
    expect(lseOut[4]).toBe(-Infinity);
  });
});

describe('topK', () => {
  it('matches the reference on random rows, ties, NaN and -inf, for k = 0, 1, n', () => {
    const r = rng(11);
    for (const [rows, n, k] of [[4, 1, 1], [2, 100, 0], [3, 100, 7], [8, 1000, 64], [2, 50, 50]] as const) {
      const scores = new Float32Array(rows * n);
      for (let i = 0; i < scores.length; i++) {
        const u = r();
        scores[i] = u < 0.05 ? NaN : u < 0.1 ? -Infinity : u < 0.3 ? 1.5 : Math.fround(r() * 4 - 2);
      }
      const out = new Int32Array(rows * k);
      native().topK({ rows, n, k, scores, out });
      expect(Array.from(out)).toEqual(Array.from(topKRef(scores, rows, n, k)));
    }
  });

  it('accepts typed arrays on SharedArrayBuffers (what worker threads share)', () => {
    const scores = new Float32Array(new SharedArrayBuffer(16));
    scores.set([1, 5, 3, 4]);
    const out = new Int32Array(new SharedArrayBuffer(8));
    native().topK({ rows: 1, n: 4, k: 2, scores, out });
    expect(Array.from(out)).toEqual([1, 3]);
  });
});
