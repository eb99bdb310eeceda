// Quest's page rules on hand-made keys: page bounds folded as tokens arrive, the upper bound they give, and which
// pages a query picks (GQA: the max over the group's query heads).
import { describe, expect, it } from 'vitest';
import { f16ToF32 } from '../src/kernels/half.js';
import { pageBoundsRef } from '../src/kernels/retrieval.js';
import { native } from '../src/native.js';
import { QUEST_DEFAULTS, questPolicy } from '../src/policies/quest.js';
import { boundsToHalf, choosePages, foldPageBounds, questSlots } from '../src/policies/quest-pages.js';
import { randn, rng } from './helpers.js';

/** Keys [n, H, D] -> per-page [P, 2, D] min/max of head h, all at once. */
function boundsAtOnce(k: Float32Array, n: number, H: number, D: number, h: number, pageSize: number): Float32Array {
  const P = Math.ceil(n / pageSize);
  const out = new Float32Array(P * 2 * D);
  for (let p = 0; p < P; p++)
    for (let i = 0; i < D; i++) {
      const xs = [];
      for (let t = p * pageSize; t < Math.min(n, (p + 1) * pageSize); t++) xs.push(k[(t * H + h) * D + i]);
      out[p * 2 * D + i] = Math.min(...xs);
      out[p * 2 * D + D + i] = Math.max(...xs);
    }
  return out;
}

describe('foldPageBounds', () => {
  it('folding chunks that split pages gives the same bounds as all tokens at once', () => {
    const H = 2, D = 3, pageSize = 4, n = 11;
    const k = randn(n * H * D, rng(3), 1);
    for (const h of [0, 1]) {
      const meta = new Float32Array(Math.ceil(n / pageSize) * 2 * D);
      const open = new Float32Array(2 * D);
      for (const [start, end] of [[0, 1], [1, 6], [6, 7], [7, 11]]) {
        const { firstPage, rows } = foldPageBounds(k.subarray(start * H * D, end * H * D), H, D, h, start, pageSize, open);
        expect(firstPage).toBe(Math.floor(start / pageSize));
        meta.set(rows, firstPage * 2 * D);
      }
      expect(Array.from(meta)).toEqual(Array.from(boundsAtOnce(k, n, H, D, h, pageSize)));
    }
  });

  it('a hand-made page: min and max per channel', () => {
    const open = new Float32Array(4);
    const k = Float32Array.of(1, -2, 3, 5, -1, 0); // 3 tokens, 1 head, D = 2
    const { firstPage, rows } = foldPageBounds(k, 1, 2, 0, 0, 4, open);
    expect(firstPage).toBe(0);
    expect(Array.from(rows)).toEqual([-1, -2, 3, 5]); // [min0, min1, max0, max1]
  });
});

describe('page bound and choice', () => {
  // 5 pages of 4 tokens, D = 2. Page 2 holds the key aligned with q; page 3 has a large key in the other channel.
  const D = 2, pageSize = 4, n = 18; // the last page (4) is partial
  const keys = new Float32Array(n * D);
  for (let t = 0; t < n; t++) keys.set([0.1 * (t % 3), -0.1 * (t % 2)], t * D);
  keys.set([3, 0], 9 * D); // page 2
  keys.set([0, 5], 13 * D); // page 3
  const meta = boundsToHalf(boundsAtOnce(keys, n, 1, D, 0, pageSize), D); // as stored: fp16, min down, max up

  it('the bound covers every key of its page and ranks the needle page first', () => {
    const q = Float32Array.of(1, -0.5);
    const bounds = Float32Array.from(pageBoundsRef(q, meta, 1, D, 5));
    for (let t = 0; t < n; t++) expect(bounds[Math.floor(t / pageSize)]).toBeGreaterThanOrEqual(q[0] * keys[t * D] + q[1] * keys[t * D + 1] - 1e-6);
    expect(Array.from(choosePages(bounds, n, { pageSize, pages: 1, recentPages: 1, sinks: 2 }))).toEqual([0, 1, 8, 9, 10, 11, 16, 17]);
  });

  it('GQA: a page that matters to one query head of the group is kept (max over the group)', () => {
    const q = Float32Array.of(1, 0, 0, 1); // head 0 wants channel 0 (page 2), head 1 channel 1 (page 3)
    const out = new Float32Array(5);
    native().pageBounds({ queryHeads: 2, headDim: D, numPages: 5, q, meta, out });
    const picked = choosePages(out, n, { pageSize, pages: 2, recentPages: 1, sinks: 0 });
    expect(Array.from(picked)).toEqual([8, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
  });

  it('with as many pages as there are, every token is attended; never more than the slots', () => {
    const c = { pageSize, pages: 100, recentPages: 1, sinks: 4 };
    expect(Array.from(choosePages(new Float32Array(5), n, c))).toEqual(Array.from({ length: n }, (_, t) => t));
    expect(questSlots({ pageSize: 16, pages: 2, recentPages: 1, sinks: 4 }, 1000)).toBe(52);
    expect(questSlots(c, n)).toBe(n);
    // Ties go to the older page.
    expect(Array.from(choosePages(new Float32Array(5), n, { pageSize, pages: 1, recentPages: 2, sinks: 0 }))).toEqual([0, 1, 2, 3, 12, 13, 14, 15, 16, 17]);
  });
});

describe('quest knobs and fit', () => {
  const s = { numLayers: 4, numKvHeads: 2, groupSize: 4, headDim: 32, dtype: 'bf16' as const, capacityTokens: 1000 };

  it('fits the token budget to the bytes, all pages at most; candidates end at one page', () => {
    expect(questPolicy.fit!(s, Infinity, {})).toBeNull();
    const small = questPolicy.fit!(s, 200_000, {})!;
    expect(small.pages).toBeGreaterThan(0);
    const bytes = (k: Record<string, number>) => questPolicy.seqParts(s, k).reduce((a, p) => a + Math.ceil(p.bytes / 256) * 256, 0);
    expect(bytes(small)).toBeLessThanOrEqual(200_000);
    expect(bytes({ ...small, pages: small.pages + 1 })).toBeGreaterThan(200_000);
    expect(questPolicy.fit!(s, 1e9, {})!.pages).toBe(Math.ceil(1000 / 16));
    expect(questPolicy.fit!(s, 1000, {})).toBeNull();
    const c = questPolicy.candidates({});
    expect(c[0]).toEqual(QUEST_DEFAULTS);
    expect(c[c.length - 1].pages).toBe(1);
  });

  it('refuses unknown and bad knobs', () => {
    expect(questPolicy.knobs.safeParse({ topK: 3 }).error?.issues[0].code).toBe('unrecognized_keys');
    expect(questPolicy.knobs.safeParse({ pageSize: 0 }).success).toBe(false);
    expect(questPolicy.knobs.safeParse({ pages: 1.5 }).success).toBe(false);
  });
});

describe('page metadata in fp16', () => {
  it('rounds each min down and each max up, to the nearest fp16 on that side, so the range still holds its keys', () => {
    const D = 3;
    const rows = Float32Array.of(0.1, -0.1, 1e-9, 0.1, -0.1, 1e-9, 1e6, -1e6, 0, 1e6, -1e6, 0); // [pages 2, 2, D]
    const half = boundsToHalf(rows, D);
    for (let i = 0; i < rows.length; i++) {
      const isMax = Math.floor(i / D) % 2 === 1;
      const v = f16ToF32(half[i]);
      if (isMax) expect(v, `max ${i}`).toBeGreaterThanOrEqual(rows[i]);
      else expect(v, `min ${i}`).toBeLessThanOrEqual(rows[i]);
      // Tight: one fp16 step toward the value would cross it (exact values stay as they are).
      if (v !== rows[i] && Math.abs(rows[i]) <= 65504) expect(Math.abs(v - rows[i])).toBeLessThan(Math.abs(v) * 2 ** -9 + 2 ** -24);
    }
    expect(f16ToF32(half[6])).toBe(65504); // a min of 1e6 rounds down to the largest fp16
    expect(f16ToF32(half[9])).toBe(Infinity); // a max beyond the range becomes +inf
    expect(f16ToF32(half[10])).toBe(-65504);
  });
});

