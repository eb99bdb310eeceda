// InfiniGen's parts in isolation: the Jacobi eigen routine, the skew (exact for full q . k), the partial-key scores
// (native against the TypeScript reference) and their top-k, and RoPE's inverse.
import { describe, expect, it } from 'vitest';
import { toHalf } from '../src/kernels/half.js';
import { partialKeyScoresRef } from '../src/kernels/partial-key-scores.js';
import { positionRange, ropeInvFreq, ropeTables } from '../src/model/rope.js';
import { native } from '../src/native.js';
import { addGram, rotate, selectPositions, skewRow, unrotate } from '../src/policies/infinigen-skew.js';
import { partialColumns } from '../src/policies/infinigen-attention.js';
import { symmetricEigen } from '../src/policies/jacobi-eigen.js';
import { randn, rng } from './helpers.js';
import { ropeRef } from './reference-forward.js';

/** [n, n] product of row-major matrices. */
function matmul(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let k = 0; k < n; k++) for (let j = 0; j < n; j++) out[i * n + j] += a[i * n + k] * b[k * n + j];
  return out;
}

function transpose(a: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[j * n + i] = a[i * n + j];
  return out;
}

/** A random Gram matrix X^T X of `rows` rows of D, with uneven channel scales as real queries have. */
function randomGram(D: number, rows: number, seed: number): { gram: Float64Array; x: Float32Array } {
  const x = randn(rows * D, rng(seed));
  for (let t = 0; t < rows; t++) for (let i = 0; i < D; i++) x[t * D + i] *= 1 + 4 * Math.exp(-i / 3);
  const gram = new Float64Array(D * D);
  addGram(gram, x, Int32Array.from({ length: rows }, (_, t) => t * D), D);
  return { gram, x };
}

describe('symmetricEigen (Jacobi)', () => {
  it('decomposes a hand-made 3x3 matrix: known eigenpairs, sorted descending', () => {
    // [[2, 1, 0], [1, 2, 0], [0, 0, 5]]: eigenvalues 5, 3, 1 with vectors e3, (e1 + e2)/sqrt2, (e1 - e2)/sqrt2.
    const a = Float64Array.from([2, 1, 0, 1, 2, 0, 0, 0, 5]);
    const { values, vectors } = symmetricEigen(a, 3);
    expect(Array.from(values).map((v) => +v.toFixed(12))).toEqual([5, 3, 1]);
    const col = (j: number) => [0, 1, 2].map((i) => vectors[i * 3 + j]);
    const s = Math.SQRT1_2;
    const close = (v: number[], want: number[]) => {
      const sign = Math.sign(v.find((x) => Math.abs(x) > 1e-9)!) * Math.sign(want.find((x) => Math.abs(x) > 1e-9)!);
      v.forEach((x, i) => expect(x * sign).toBeCloseTo(want[i], 12));
    };
    close(col(0), [0, 0, 1]);
    close(col(1), [s, s, 0]);
    close(col(2), [s, -s, 0]);
    expect(Array.from(a)).toEqual([2, 1, 0, 1, 2, 0, 0, 0, 5]); // input untouched
  });

  it('gives orthonormal eigenvectors A with A^T M A diagonal and sorted, on a 32x32 Gram matrix', () => {
    const D = 32;
    const { gram } = randomGram(D, 200, 3);
    const { values, vectors } = symmetricEigen(gram, D);
    const ata = matmul(transpose(vectors, D), vectors, D);
    const diag = matmul(matmul(transpose(vectors, D), gram, D), vectors, D);
    let scale = 0;
    for (let i = 0; i < D; i++) scale = Math.max(scale, Math.abs(gram[i * D + i]));
    for (let i = 0; i < D; i++) {
      for (let j = 0; j < D; j++) {
        expect(Math.abs(ata[i * D + j] - (i === j ? 1 : 0))).toBeLessThan(1e-12);
        if (i !== j) expect(Math.abs(diag[i * D + j])).toBeLessThan(1e-10 * scale);
        else expect(diag[i * D + i]).toBeCloseTo(values[i], 6);
      }
      if (i > 0) expect(values[i]).toBeLessThanOrEqual(values[i - 1]);
      expect(values[i]).toBeGreaterThan(0);
    }
  });
});

describe('the skew', () => {
  it('preserves q . k exactly over all D columns, for random q and k', () => {
    const D = 32;
    const { gram } = randomGram(D, 100, 5);
    const basis = Float32Array.from(symmetricEigen(gram, D).vectors);
    for (let trial = 0; trial < 20; trial++) {
      const q = randn(D, rng(100 + trial));
      const k = randn(D, rng(200 + trial));
      const qs = new Float32Array(D);
      const ks = new Float32Array(D);
      skewRow(q, 0, basis, D, D, qs);
      skewRow(k, 0, basis, D, D, ks);
      let want = 0, got = 0, mag = 0;
      for (let i = 0; i < D; i++) {
        want += q[i] * k[i];
        got += qs[i] * ks[i];
        mag += Math.abs(q[i] * k[i]);
      }
      expect(Math.abs(got - want)).toBeLessThan(1e-5 * mag);
    }
  });

  it('r = ceil(partialRatio * D), at least 1, at most D', () => {
    expect(partialColumns(0.25, 32)).toBe(8);
    expect(partialColumns(0.3, 128)).toBe(39);
    expect(partialColumns(0.3, 30)).toBe(9);
    expect(partialColumns(1e-6, 32)).toBe(1);
    expect(partialColumns(1, 32)).toBe(32);
  });
});

describe('partial-key scores and their top-k', () => {
  it.each(['bf16', 'f16'] as const)('native partialKeyScores matches the reference (%s)', (dtype) => {
    const dim = 7, n = 53, rows = 3;
    const keys = Uint16Array.from(randn(n * dim, rng(11)), (x) => toHalf(x, dtype));
    const q = randn(rows * dim, rng(12));
    const out = new Float32Array(rows * n);
    native().partialKeyScores({ dtype, dim, n, rows, keys, q, out });
    const ref = partialKeyScoresRef(dtype, dim, keys, q);
    for (let i = 0; i < out.length; i++) expect(Math.abs(out[i] - ref[i])).toBeLessThan(1e-5 * (1 + Math.abs(ref[i])));
  });

  it('picks the key aligned with the queries dominant direction from r = 1 skewed column', () => {
    const D = 8;
    const rand = rng(21);
    // Queries mostly along u, a direction that mixes channels: the skew's first column finds it.
    const u = Float32Array.from([0.5, -0.5, 0.5, 0.5, 0, 0, 0, 0]);
    const T = 64;
    const qs = new Float32Array(T * D);
    for (let t = 0; t < T; t++) {
      const a = 3 + rand();
      for (let i = 0; i < D; i++) qs[t * D + i] = a * u[i] + 0.1 * (rand() - 0.5);
    }
    const gram = new Float64Array(D * D);
    addGram(gram, qs, Int32Array.from({ length: T }, (_, t) => t * D), D);
    const basis = Float32Array.from(symmetricEigen(gram, D).vectors);
    // Keys: random smaller ones, at position 6 one along u, and at 9 a longer decoy orthogonal to u.
    const n = 20;
    const keys = randn(n * D, rng(22), 0.5);
    for (let i = 0; i < D; i++) keys[6 * D + i] = 2 * u[i];
    for (let i = 0; i < D; i++) keys[9 * D + i] = i === 5 ? 4 : 0;
    const r = 1;
    const partial = new Uint16Array(n * r); // [n, r]
    const row = new Float32Array(r);
    for (let t = 0; t < n; t++) {
      skewRow(keys, t * D, basis, D, r, row);
      partial[t] = toHalf(row[0], 'bf16');
    }
    const q = new Float32Array(r);
    skewRow(qs, 0, basis, D, r, q);
    const scores = new Float32Array(n);
    native().partialKeyScores({ dtype: 'bf16', dim: r, n, rows: 1, keys: partial, q, out: scores });
    expect(Array.from(selectPositions(scores, n, { topK: 1, sinks: 0, window: 0 }))).toEqual([6]);
    // With sinks and a window the top-k still goes to position 6, besides them.
    expect(Array.from(selectPositions(scores, n, { topK: 1, sinks: 2, window: 3 }))).toEqual([0, 1, 6, 17, 18, 19]);
  });

  it('selects everything when topK, sinks and window cover the context', () => {
    const scores = randn(10, rng(3));
    expect(Array.from(selectPositions(scores, 10, { topK: 100, sinks: 4, window: 64 }))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });
});

describe('RoPE and its inverse', () => {
  it('rotate matches the reference RoPE and unrotate inverts it', () => {
    const D = 32, heads = 3, T = 5;
    const invFreq = ropeInvFreq({ headDim: D, ropeTheta: 10000, ropeScaling: null });
    const positions = Int32Array.from([0, 7, 100, 1023, 8000]);
    const { cos, sin } = ropeTables(invFreq, positions);
    const x = randn(T * heads * D, rng(31));
    const rotated = x.slice();
    rotate(rotated, cos, sin, heads, D);
    const ref = Float64Array.from(x);
    ropeRef(ref, T, heads, D, cos, sin);
    for (let i = 0; i < x.length; i++) expect(Math.abs(rotated[i] - ref[i])).toBeLessThan(1e-5);
    unrotate(rotated, cos, sin, heads, D);
    for (let i = 0; i < x.length; i++) expect(Math.abs(rotated[i] - x[i])).toBeLessThan(1e-5 * (1 + Math.abs(x[i])));
    // Position 0 is the identity both ways.
    const { cos: c0, sin: s0 } = ropeTables(invFreq, positionRange(0, 1));
    const one = x.slice(0, heads * D);
    unrotate(one, c0, s0, heads, D);
    expect(Array.from(one)).toEqual(Array.from(x.slice(0, heads * D)));
  });
});
