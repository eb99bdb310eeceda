// KVMerger's rules on hand-made keys: merging sets of consecutive similar keys, the pivot, the Gaussian weights,
// the budget met by H2O eviction, and the decode-time merge-or-drop.
import { describe, expect, it } from 'vitest';
import { kvmergerPolicy } from '../src/policies/kvmerger.js';
import {
  decodeVictim, evictToBudget, gaussianWeights, mergeInto, mergePrompt, mergingSets, pivotOf,
} from '../src/policies/kvmerger-sets.js';

const rows = (xs: number[][]) => Float32Array.from(xs.flat());
const angle = (deg: number) => [Math.cos((deg * Math.PI) / 180), Math.sin((deg * Math.PI) / 180)];

describe('mergingSets', () => {
  it('runs of consecutive keys similar to the run\'s first key; singletons stay alone', () => {
    // cos 10 deg = 0.985, cos 30 deg = 0.866: with threshold 0.9, tokens 0-2 and 4-5 merge.
    const keys = rows([angle(0), angle(5), angle(10), angle(90), angle(180), angle(185), angle(270)]);
    expect(mergingSets(keys, 2, 7, 0.9)).toEqual([[0, 3], [4, 6]]);
  });

  it('anchors on the first key: a slow drift breaks the run once it strays from its start', () => {
    // Each step turns 15 deg (adjacent cos 0.966), but 30 deg from the start is below 0.9.
    const keys = rows([angle(0), angle(15), angle(30), angle(45), angle(60)]);
    expect(mergingSets(keys, 2, 5, 0.9)).toEqual([[0, 2], [2, 4]]);
  });

  it('never reaches into the protected recent tokens', () => {
    const keys = rows([angle(0), angle(1), angle(2), angle(3)]);
    expect(mergingSets(keys, 2, 2, 0.9)).toEqual([[0, 2]]);
    expect(mergingSets(keys, 2, 0, 0.9)).toEqual([]);
  });
});

describe('pivot and Gaussian weights', () => {
  it('the pivot is the most attended member (ties to the earlier)', () => {
    expect(pivotOf([0.1, 0.5, 0.2, 0.5], 0, 4)).toBe(1);
    expect(pivotOf([0.1, 0.5, 0.2, 0.9], 0, 3)).toBe(1);
  });

  it('g = exp(-d^2 / 2 sigma^2), sigma^2 the mean squared distance of the others to the pivot, normalized', () => {
    // Pivot at 0; members at distance 1 and 2 along one axis: sigma^2 = (1 + 4) / 2 = 2.5.
    const keys = rows([[0, 0], [1, 0], [0, 2]]);
    const w = gaussianWeights(keys, 2, 0, 3, 0);
    const g = [1, Math.exp(-1 / 5), Math.exp(-4 / 5)];
    const z = g[0] + g[1] + g[2];
    g.forEach((x, i) => expect(w[i]).toBeCloseTo(x / z, 12));
    // Identical keys weigh alike.
    expect(Array.from(gaussianWeights(rows([[1, 1], [1, 1]]), 2, 0, 2, 1))).toEqual([0.5, 0.5]);
  });

  it('a prompt merges into its pivots: keys and values with the same weights, attention summed', () => {
    const keys = rows([angle(0), angle(5), angle(90), angle(95), angle(200)]);
    const values = rows([[1, 0], [3, 0], [0, 1], [0, 5], [7, 7]]);
    const attn = [0.1, 0.4, 0.3, 0.05, 0.15];
    const states = mergePrompt(keys, values, 2, attn, 4, 0.9); // token 4 is recent: never merged
    expect(states.map((s) => s.position)).toEqual([1, 2, 4]);
    expect(states.map((s) => s.score)).toEqual([0.1 + 0.4, 0.3 + 0.05, 0.15]);
    // A set of two: the other member weighs exp(-1/2) against the pivot's 1.
    const wp = 1 / (1 + Math.exp(-0.5));
    expect(states[0].v[0]).toBeCloseTo(wp * 3 + (1 - wp) * 1, 6);
    expect(states[0].k[0]).toBeCloseTo(wp * angle(5)[0] + (1 - wp) * angle(0)[0], 6);
    expect(states[0].mass).toBeCloseTo(1 + Math.exp(-0.5), 6);
    expect(Array.from(states[2].v)).toEqual([7, 7]);
  });
});

describe('the budget and decode', () => {
  const st = (position: number, score: number) => ({ position, score, k: new Float32Array(1), v: new Float32Array(1), mass: 1 });

  it('over budget, the least attended states older than the recent window go (ties: older first)', () => {
    const states = [st(0, 0.9), st(3, 0.1), st(5, 0.1), st(8, 0.5), st(9, 0.0), st(10, 0.0)];
    expect(evictToBudget(states, 4, 9).map((s) => s.position)).toEqual([0, 8, 9, 10]);
    expect(evictToBudget(states, 6, 9)).toBe(states);
  });

  it('when full, the least attended older state merges into its most similar unprotected neighbour, or goes', () => {
    const positions = Int32Array.of(0, 4, 6, 9, 12);
    const scores = Float32Array.of(2, 0.3, 0.1, 0.5, 0);
    const sims: Record<string, number> = { '2,1': 0.95, '2,3': 0.97 };
    const cos = (a: number, b: number) => sims[`${a},${b}`] ?? 0;
    expect(decodeVictim(positions, scores, 12, 0.9, cos)).toEqual({ victim: 2, into: 3 });
    expect(decodeVictim(positions, scores, 12, 0.96, (a, b) => (b === 1 ? 0.99 : 0.5))).toEqual({ victim: 2, into: 1 });
    expect(decodeVictim(positions, scores, 12, 0.99, cos)).toEqual({ victim: 2, into: -1 });
    // A neighbour inside the recent window is not a target.
    expect(decodeVictim(positions, scores, 9, 0.9, cos)).toEqual({ victim: 2, into: 1 });
  });

  it('a decode merge is a set of two around the survivor, scaled by the mass each carries', () => {
    const m = mergeInto({ k: Float32Array.of(0), v: Float32Array.of(0), mass: 2 }, { k: Float32Array.of(1), v: Float32Array.of(4), mass: 1 });
    const w = Math.exp(-0.5);
    expect(m.k[0]).toBeCloseTo(w / (2 + w), 6);
    expect(m.v[0]).toBeCloseTo((4 * w) / (2 + w), 6);
    expect(m.mass).toBeCloseTo(2 + w, 6);
  });
});

describe('kvmerger knobs and fit', () => {
  const s = { numLayers: 4, numKvHeads: 2, groupSize: 4, headDim: 32, dtype: 'bf16' as const, capacityTokens: 1000 };

  it('capacity from the bytes (all tokens at most), half of it recent as in H2O; the smallest is recent + 1', () => {
    expect(kvmergerPolicy.fit!(s, Infinity, {})).toMatchObject({ capacity: 1000, recent: 500, threshold: 0.9, window: 32 });
    const k = kvmergerPolicy.fit!(s, 300_000, {})!;
    expect(k.capacity).toBe(Math.floor(300_000 / (4 * 2 * 2 * 32 * 2)));
    expect(kvmergerPolicy.candidates({ recent: 8 })).toEqual([{ threshold: 0.9, window: 32, recent: 8, capacity: 9 }]);
    expect(kvmergerPolicy.knobs.safeParse({ capacity: 4, recent: 4 }).error?.issues[0].message).toBe('at least recent + 1 = 5');
    expect(kvmergerPolicy.knobs.safeParse({ threshold: 2 }).success).toBe(false);
  });
});
