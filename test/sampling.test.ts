// Sampling: greedy at temperature 0, seeded and reproducible otherwise, top-k and top-p cut the candidates.
import { describe, expect, it } from 'vitest';
import { argmax, sample, seededRandom, validateSampling } from '../src/engine/sampling.js';
import { KvoffArgumentError } from '../src/errors.js';

const logits = Float32Array.from([1.0, 3.0, 2.5, -1.0, 2.9, 0.0]);

function counts(o: Parameters<typeof validateSampling>[0], n = 4000): number[] {
  const s = validateSampling(o);
  const r = seededRandom(s.seed);
  const c = new Array(logits.length).fill(0);
  for (let i = 0; i < n; i++) c[sample(logits, s, r)]++;
  return c;
}

describe('sampling', () => {
  it('temperature 0 is argmax, ties to the lower id', () => {
    expect(sample(logits, validateSampling({}), seededRandom(1))).toBe(1);
    expect(argmax(Float32Array.from([2, 5, 5]))).toBe(1);
  });

  it('the same seed gives the same tokens; another seed differs', () => {
    expect(counts({ temperature: 1, seed: 7 })).toEqual(counts({ temperature: 1, seed: 7 }));
    expect(counts({ temperature: 1, seed: 7 })).not.toEqual(counts({ temperature: 1, seed: 8 }));
  });

  it('follows the softmax at temperature 1', () => {
    const c = counts({ temperature: 1, seed: 3 }, 20000);
    const z = Array.from(logits, Math.exp);
    const sum = z.reduce((a, b) => a + b, 0);
    for (let i = 0; i < logits.length; i++) expect(Math.abs(c[i] / 20000 - z[i] / sum)).toBeLessThan(0.015);
  });

  it('top-k keeps only the k best; top-p the smallest set reaching p', () => {
    const k2 = counts({ temperature: 1, topK: 2, seed: 5 });
    expect(k2.map((x, i) => (x > 0 ? i : -1)).filter((i) => i >= 0)).toEqual([1, 4]);
    // probabilities at T=1: id1 .31, id4 .28, id2 .19, ... -> p = 0.5 keeps ids 1 and 4
    const p = counts({ temperature: 1, topP: 0.5, seed: 5 });
    expect(p.map((x, i) => (x > 0 ? i : -1)).filter((i) => i >= 0)).toEqual([1, 4]);
  });

  it('refuses bad options by name', () => {
    expect(() => validateSampling({ temperature: -1 })).toThrow(KvoffArgumentError);
    expect(() => validateSampling({ topP: 0 })).toThrow(/topP/);
    expect(() => validateSampling({ topK: 1.5 })).toThrow(/topK/);
  });
});
