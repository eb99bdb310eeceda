// Native kvColumnScores (SparQ) and pageBounds (Quest) against their TypeScript references, on random and
// adversarial shapes: lengths off the block size, one token, GQA 1/4/8, extreme magnitudes, arena inputs.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { native, type KvDtype } from '../src/native.js';
import { appendRef, blockBytes, type PagedShape } from '../src/kernels/paged-kv.js';
import { kvColumnScoresRef, pageBoundsRef } from '../src/kernels/retrieval.js';
import { boundsToHalf } from '../src/policies/quest-pages.js';
import { KvoffArgumentError, KvoffRangeError } from '../src/errors.js';
import { randn, rng, shuffled, worstRatio } from './helpers.js';

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});

interface Case {
  rows: number;
  headDim: number;
  numKvHeads: number;
  blockSize: number;
  numTokens: number;
  dtype: KvDtype;
  magnitude: number;
  r: number; // columns
}

function build(c: Case, seed: number) {
  const rand = rng(seed);
  const used = Math.max(1, Math.ceil(c.numTokens / c.blockSize));
  const numBlocks = used + 2;
  const shape: PagedShape = { numBlocks, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: c.blockSize, dtype: c.dtype };
  const offset = 512;
  const arena = new HostArena(numBlocks * blockBytes(shape) + offset);
  arenas.push(arena);
  const blockIds = shuffled(numBlocks, rand).slice(0, used);
  const slots = Int32Array.from({ length: c.numTokens }, (_, p) => blockIds[Math.floor(p / c.blockSize)] * c.blockSize + (p % c.blockSize));
  const n = c.numTokens * c.numKvHeads * c.headDim;
  const clamp = (x: Float32Array) => (c.dtype === 'f16' ? x.map((y) => Math.max(-65000, Math.min(65000, y))) : x);
  const k = clamp(randn(n, rand, c.magnitude));
  const v = clamp(randn(n, rand, c.magnitude));
  const region = { handle: arena.handle, offset, ...shape };
  native().kvAppend({ ...region, slots, k, v });
  const image = new Uint16Array((numBlocks * blockBytes(shape)) / 2);
  appendRef(shape, image, slots, k, v);
  const columns = shuffled(c.headDim, rand).slice(0, c.r);
  const q = randn(c.rows * c.headDim, rand, 1);
  return { shape, region, blockIds, image, columns, q };
}

const cases: Case[] = [];
for (const rows of [1, 4, 8])
  for (const numTokens of [1, 15, 16 * 3 + 7])
    cases.push({ rows, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens, dtype: numTokens % 2 ? 'f16' : 'bf16', magnitude: 1, r: 16 });
cases.push({ rows: 4, headDim: 24, numKvHeads: 3, blockSize: 5, numTokens: 23, dtype: 'f16', magnitude: 1, r: 1 });
cases.push({ rows: 8, headDim: 128, numKvHeads: 1, blockSize: 16, numTokens: 40, dtype: 'bf16', magnitude: 1, r: 128 });
cases.push({ rows: 4, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 40, dtype: 'f16', magnitude: 2e4, r: 8 });
cases.push({ rows: 4, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 33, dtype: 'bf16', magnitude: 1e16, r: 32 });
cases.push({ rows: 1, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 33, dtype: 'f16', magnitude: 1e-6, r: 16 });

describe('kvColumnScores', () => {
  it.each(cases.map((c, i) => [i, c] as const))('matches the reference (case %i)', (i, c) => {
    const b = build(c, 100 + i);
    for (let h = 0; h < c.numKvHeads; h++) {
      const out = new Float32Array(c.rows * c.numTokens);
      native().kvColumnScores({ ...b.region, blockIds: b.blockIds, numTokens: c.numTokens, kvHead: h, rows: c.rows, q: b.q, columns: b.columns, out });
      const ref = kvColumnScoresRef(b.shape, b.image, { blockIds: b.blockIds, numTokens: c.numTokens, kvHead: h, rows: c.rows, q: b.q, columns: b.columns });
      // fp32 accumulation of r products against fp64: relative to the size of the terms.
      const atol = 1e-5 * c.magnitude * Math.sqrt(c.r);
      expect(worstRatio(out, ref, atol, 1e-5)).toBeLessThanOrEqual(1);
    }
  });

  it('with every channel equals the full dot product; zero tokens write nothing', () => {
    const c: Case = { rows: 4, headDim: 32, numKvHeads: 2, blockSize: 16, numTokens: 20, dtype: 'bf16', magnitude: 1, r: 32 };
    const b = build(c, 7);
    const all = Int32Array.from({ length: 32 }, (_, i) => i);
    const cols = new Float32Array(4 * 20);
    native().kvColumnScores({ ...b.region, blockIds: b.blockIds, numTokens: 20, kvHead: 1, rows: 4, q: b.q, columns: all, out: cols });
    const full = new Float32Array(4 * 20);
    native().kvScores({ ...b.region, blockIds: b.blockIds, numTokens: 20, kvHead: 1, rows: 4, q: b.q, scale: 1, out: full });
    expect(worstRatio(cols, full, 1e-5, 1e-5)).toBeLessThanOrEqual(1);
    const none = new Float32Array(0);
    native().kvColumnScores({ ...b.region, blockIds: b.blockIds, numTokens: 0, kvHead: 0, rows: 4, q: b.q, columns: all, out: none });
  });

  it('refuses repeated or out-of-range channels', () => {
    const c: Case = { rows: 1, headDim: 16, numKvHeads: 1, blockSize: 4, numTokens: 4, dtype: 'bf16', magnitude: 1, r: 4 };
    const b = build(c, 9);
    const base = { ...b.region, blockIds: b.blockIds, numTokens: 4, kvHead: 0, rows: 1, q: b.q, out: new Float32Array(4) };
    expect(() => native().kvColumnScores({ ...base, columns: Int32Array.of(1, 1) })).toThrow(KvoffArgumentError);
    expect(() => native().kvColumnScores({ ...base, columns: Int32Array.of(16) })).toThrow(KvoffRangeError);
  });
});

describe('pageBounds', () => {
  function metaOf(keys: Float32Array, n: number, D: number, pageSize: number): Uint16Array {
    const P = Math.ceil(n / pageSize);
    const meta = new Float32Array(P * 2 * D); // [P, 2, D]
    for (let p = 0; p < P; p++)
      for (let i = 0; i < D; i++) {
        let lo = Infinity, hi = -Infinity;
        for (let t = p * pageSize; t < Math.min(n, (p + 1) * pageSize); t++) {
          lo = Math.min(lo, keys[t * D + i]);
          hi = Math.max(hi, keys[t * D + i]);
        }
        meta[p * 2 * D + i] = lo;
        meta[(p * 2 + 1) * D + i] = hi;
      }
    return boundsToHalf(meta, D); // fp16, min rounded down and max up: still a range of every key
  }

  it.each([
    [1, 32, 1, 16, 1],
    [4, 64, 37, 16, 1],
    [8, 128, 100, 7, 1],
    [4, 24, 5, 16, 1e4],
    [1, 16, 50, 1, 1e-20],
    [2, 32, 40, 16, 1e6], // beyond fp16's range: the stored ends become infinite, the bound still holds
  ])('matches the reference and bounds every key of the page (G=%i, D=%i, n=%i, page %i, magnitude %s)', (G, D, n, pageSize, mag) => {
    const r = rng(G * 1000 + n);
    const keys = randn(n * D, r, mag);
    const q = randn(G * D, r, 1);
    const P = Math.ceil(n / pageSize);
    const meta = metaOf(keys, n, D, pageSize);
    const out = new Float32Array(P);
    native().pageBounds({ queryHeads: G, headDim: D, numPages: P, q, meta, out });
    const ref = pageBoundsRef(q, meta, G, D, P);
    expect(worstRatio(out, ref, 1e-5 * mag * Math.sqrt(D), 1e-5)).toBeLessThanOrEqual(1);
    for (let t = 0; t < n; t++) {
      const p = Math.floor(t / pageSize);
      for (let g = 0; g < G; g++) {
        let dot = 0;
        for (let i = 0; i < D; i++) dot += q[g * D + i] * keys[t * D + i];
        expect(out[p]).toBeGreaterThanOrEqual(dot - 1e-4 * mag * Math.sqrt(D));
      }
    }
  });

  it('reads its metadata from an arena (the device tier) and refuses a short buffer', () => {
    const D = 8, P = 3, G = 2;
    const meta = boundsToHalf(new Float32Array(P * 2 * D).map((_, i) => (i % (2 * D) < D ? -1 : 1) * ((i % 5) + 1)), D);
    const arena = new HostArena(meta.byteLength + 64);
    arenas.push(arena);
    arena.write(64, meta);
    const q = Float32Array.from({ length: G * D }, (_, i) => (i % 3) - 1);
    const a = new Float32Array(P);
    const b = new Float32Array(P);
    native().pageBounds({ queryHeads: G, headDim: D, numPages: P, q, meta: { handle: arena.handle, offset: 64 }, out: a });
    native().pageBounds({ queryHeads: G, headDim: D, numPages: P, q, meta, out: b });
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(() => native().pageBounds({ queryHeads: G, headDim: D, numPages: P, q, meta: meta.subarray(1), out: a })).toThrow(KvoffArgumentError);
  });
});
