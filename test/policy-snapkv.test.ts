// snapkv's rule on hand-made attention: pooled window votes pick the prefix tokens, the window is kept, decode
// slides over the window and the generated tokens. Also the window attention itself (causal softmax, GQA mean).
import { describe, expect, it } from 'vitest';
import { QueryWindow, observedAttention } from '../src/policies/observation.js';
import { pool1d, snapkvEvict, snapkvKeep } from '../src/policies/snapkv.js';

describe('snapkv rule', () => {
  it('pools with a centred kernel, max (-inf padding) or avg (zero padding, divided by the kernel)', () => {
    const x = Float32Array.of(0, 0, 9, 0, 0, 0, 3);
    expect([...pool1d(x, 3, false)]).toEqual([0, 9, 9, 9, 0, 3, 3]);
    expect([...pool1d(x, 3, true)].map((v) => +v.toFixed(4))).toEqual([0, 3, 3, 3, 0, 1, 1]);
    expect([...pool1d(x, 1, false)]).toEqual([...x]);
  });

  it('keeps the window and the top capacity - window prefix tokens by pooled votes', () => {
    // n = 12, window 3 (positions 9..11), capacity 6: 3 prefix picks among 0..8.
    const attn = Float32Array.of(0.1, 0, 0, 0, 0.8, 0, 0, 0, 0.05, 1, 1, 1);
    // Unpooled: 4 (0.8), 0 (0.1), 8 (0.05).
    expect([...snapkvKeep(attn, 6, 3, 1, false)]).toEqual([0, 4, 8, 9, 10, 11]);
    // Max-pooled with kernel 3: 3, 4, 5 all score 0.8: the neighbours of the peak win over 0 and 8.
    expect([...snapkvKeep(attn, 6, 3, 3, false)]).toEqual([3, 4, 5, 9, 10, 11]);
    expect([...snapkvKeep(attn, 12, 3, 7, false)]).toEqual([...Array(12).keys()]);
  });

  it('at decode, evicts the oldest of the window and generated tokens; selected prompt tokens stay', () => {
    const c = { positions: Int32Array.of(3, 4, 5, 10, 9, 11, 12), scores: new Float32Array(7) };
    expect(snapkvEvict(c, 6, 9)).toEqual([4]); // position 9
    expect(snapkvEvict(c, 7, 9)).toEqual([]);
  });

  it('window attention: causal softmax per query row, mean over the group, summed over the window', () => {
    // n = 3 tokens, window of 2 queries at positions 1 and 2, G = 2 query heads.
    const n = 3;
    const ninf = -1e30;
    const scores = Float32Array.of(
      0, 0, 5, /* t0 g0: sees [0, 1] only: 0.5, 0.5 */ 0, Math.log(3), 5, /* t0 g1: 0.25, 0.75 */
      0, 0, 0, /* t1 g0: 1/3 each */ ninf, ninf, 0, /* t1 g1: all on token 2 */
    );
    const out = observedAttention(scores, 2, 2, n, 1);
    const want = [(0.5 + 0.25) / 2 + (1 / 3) / 2, (0.5 + 0.75) / 2 + (1 / 3) / 2, (1 / 3 + 1) / 2];
    out.forEach((v, i) => expect(v).toBeCloseTo(want[i], 6));
    expect(out.reduce((a, b) => a + b, 0)).toBeCloseTo(2, 6); // one unit of mass per window query
  });

  it('the query window keeps the last W prefill queries across chunks of any size', () => {
    const w = new QueryWindow(1, 1, 1, 4); // 1 layer, 1 head, headDim 1, window 4
    const chunk = (start: number, T: number) => Float32Array.from({ length: T }, (_, i) => start + i); // q = its position
    w.push(0, 0, chunk(0, 3));
    expect(w.get(0)).toMatchObject({ start: 0, count: 3 });
    w.push(0, 3, chunk(3, 2));
    expect([...w.get(0).q]).toEqual([1, 2, 3, 4]);
    w.push(0, 5, chunk(5, 1));
    expect(w.get(0)).toMatchObject({ start: 2, count: 4 });
    expect([...w.get(0).q]).toEqual([2, 3, 4, 5]);
    w.push(0, 6, chunk(6, 9));
    expect([...w.get(0).q]).toEqual([11, 12, 13, 14]);
    expect(w.get(0).start).toBe(11);
  });
});
