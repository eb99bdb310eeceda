// SparQ's rules on hand-made cases: the top-r query channels (GQA: |q| summed over the group), the approximate
// softmax and its temperature, the top-k positions with the mass alpha, and the mean-value interpolation.
import { describe, expect, it } from 'vitest';
import { sparqDefaultR, sparqPolicy } from '../src/policies/sparq.js';
import { approximateSoftmax, foldMean, interpolate, topComponents, topPositions } from '../src/policies/sparq-select.js';

/** Exact softmax attention of one query over keys [n, D] and values [n, Dv]: output and lse. */
function exact(q: number[], keys: number[][], values: number[][], scale: number) {
  const s = keys.map((k) => k.reduce((a, x, i) => a + x * q[i], 0) * scale);
  const m = Math.max(...s);
  const e = s.map((x) => Math.exp(x - m));
  const z = e.reduce((a, b) => a + b, 0);
  const o = values[0].map((_, i) => e.reduce((a, w, t) => a + w * values[t][i], 0) / z);
  return { o, lse: m + Math.log(z), p: e.map((x) => x / z) };
}

describe('topComponents', () => {
  it('picks the largest |q| channels, ties to the lower channel', () => {
    expect(Array.from(topComponents(Float32Array.of(0.1, -3, 2, 0.5, -2), 1, 5, 3))).toEqual([1, 2, 4]);
  });

  it('GQA: ranks channels by |q| summed over the query heads of the group', () => {
    // head 0 likes channel 0, head 1 likes channel 3; together channel 3 (4 + 1) beats channel 0 (3 + 0).
    const q = Float32Array.of(3, 0, 1, 1, /* head 1 */ 0, 2, -1, -4);
    expect(Array.from(topComponents(q, 2, 4, 2))).toEqual([3, 0]);
    expect(Array.from(topComponents(q, 2, 4, 10))).toEqual([3, 0, 1, 2]);
  });
});

describe('approximateSoftmax and topPositions', () => {
  const q = [2, 0.1, -1];
  const keys = [[1, 0, 0], [0, 1, 0], [0, 0, -1], [1, 1, 1], [-1, 0, 0]];
  const raw = (cols: number[]) => Float32Array.from(keys, (k) => cols.reduce((a, c) => a + q[c] * k[c], 0));

  it('with every channel it is the exact softmax', () => {
    const approx = approximateSoftmax(raw([0, 1, 2]), Float32Array.from(q), 1, 3, Int32Array.of(0, 1, 2), 0.5);
    const { p } = exact(q, keys, keys, 0.5);
    for (let t = 0; t < keys.length; t++) expect(approx[t]).toBeCloseTo(p[t], 6);
  });

  it('with r channels the temperature is scale / sqrt(share of |q|)', () => {
    const cols = Int32Array.of(0, 2); // |q| share 3 / 3.1
    const approx = approximateSoftmax(raw([0, 2]), Float32Array.from(q), 1, 3, cols, 0.5);
    const temp = 0.5 / Math.sqrt(3 / 3.1);
    const e = Array.from(raw([0, 2]), (x) => Math.exp(x * temp));
    const z = e.reduce((a, b) => a + b, 0);
    for (let t = 0; t < keys.length; t++) expect(approx[t]).toBeCloseTo(e[t] / z, 6);
  });

  it('top-k by approximate mass summed over the group; alpha per head is the mass covered', () => {
    const approx = Float32Array.of(0.1, 0.5, 0.1, 0.3, /* head 1 */ 0.6, 0.1, 0.2, 0.1);
    const { positions, alpha } = topPositions(approx, 2, 2);
    expect(Array.from(positions)).toEqual([0, 1]); // sums 0.7, 0.6, 0.3, 0.4
    expect(alpha[0]).toBeCloseTo(0.6, 6);
    expect(alpha[1]).toBeCloseTo(0.7, 6);
    const all = topPositions(approx, 2, 4);
    expect(Array.from(all.positions)).toEqual([0, 1, 2, 3]);
    expect(Array.from(all.alpha)).toEqual([1, 1]);
  });
});

describe('interpolate', () => {
  it('out = alpha o + (1 - alpha) v_mean and lse - log(alpha): exact when the rest carry the mean value', () => {
    // 1-D values: the top-2 tokens hold 0 and 2, the other three hold 1, so the mean of all five is 1.
    const q = [1, 0];
    const keys = [[3, 0], [2, 0], [0, 1], [-1, 0], [0, -1]];
    const values = [[0], [2], [1], [1], [1]];
    const full = exact(q, keys, values, 1);
    const top = exact(q, keys.slice(0, 2), values.slice(0, 2), 1);
    const alpha = full.p[0] + full.p[1];
    const o = Float32Array.of(top.o[0]);
    const lse = Float32Array.of(top.lse);
    interpolate(o, lse, Float32Array.of(alpha), Float32Array.of(1));
    expect(o[0]).toBeCloseTo(full.o[0], 6);
    expect(lse[0]).toBeCloseTo(full.lse, 5);
  });

  it('alpha 1 leaves the exact part untouched', () => {
    const o = Float32Array.of(0.25, -1);
    const lse = Float32Array.of(3);
    interpolate(o, lse, Float32Array.of(1), Float32Array.of(9, 9));
    expect(Array.from(o)).toEqual([0.25, -1]);
    expect(lse[0]).toBe(3);
  });

  it('the running mean of the values folds chunks exactly', () => {
    const v = Float32Array.of(1, 10, 2, 20, 3, 30, 6, 60); // [4 tokens, 1 head, D = 2]
    const mean = new Float64Array(2);
    let count = foldMean(mean, 0, v, 0, 2, 1);
    count = foldMean(mean, count, v, 2, 2, 3);
    expect(count).toBe(4);
    expect(mean[0]).toBeCloseTo(3, 12);
    expect(mean[1]).toBeCloseTo(30, 12);
  });
});

describe('sparq knobs and fit', () => {
  const s = { numLayers: 4, numKvHeads: 2, groupSize: 4, headDim: 32, dtype: 'bf16' as const, capacityTokens: 1000 };

  it('r defaults to max(16, d/4) within the head; k to 64 uncapped, else what the bytes hold', () => {
    expect([sparqDefaultR(8), sparqDefaultR(32), sparqDefaultR(128)]).toEqual([8, 16, 32]);
    expect(sparqPolicy.fit!(s, Infinity, {})).toEqual({ r: 16, k: 64 });
    const fitted = sparqPolicy.fit!(s, 100_000, {})!;
    expect(fitted.k).toBeGreaterThan(64);
    expect(sparqPolicy.fit!(s, 1e12, {})!.k).toBe(1000);
    expect(() => sparqPolicy.fit!(s, Infinity, { r: 33 })).toThrow(/at most headDim \(32\) for engine options.r but received 33/);
    expect(sparqPolicy.candidates({}).at(-1)).toEqual({ k: 1 });
  });
});
