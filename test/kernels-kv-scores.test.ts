// Native kvScores against its TypeScript reference: ragged lengths, one token, GQA 1/4/8, extreme values, bad input.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { KvoffArgumentError, KvoffRangeError } from '../src/errors.js';
import { appendRef, blockBytes, type PagedShape } from '../src/kernels/paged-kv.js';
import { kvScoresRef } from '../src/kernels/kv-scores.js';
import { native, type KvDtype } from '../src/native.js';
import { randn, rng, shuffled } from './helpers.js';

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
  kMag: number;
  qMag: number;
}

function build(c: Case, seed: number) {
  const r = rng(seed);
  const used = Math.max(1, Math.ceil(c.numTokens / c.blockSize));
  const numBlocks = used + 2; // spare blocks, so physical ids are scattered
  const shape: PagedShape = { numBlocks, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: c.blockSize, dtype: c.dtype };
  const offset = 512;
  const arena = new HostArena(numBlocks * blockBytes(shape) + offset);
  arenas.push(arena);
  const blockIds = shuffled(numBlocks, r).slice(0, used);
  const slots = Int32Array.from({ length: c.numTokens }, (_, p) => blockIds[Math.floor(p / c.blockSize)] * c.blockSize + (p % c.blockSize));
  const n = c.numTokens * c.numKvHeads * c.headDim;
  const k = randn(n, r, c.kMag);
  const v = randn(n, r, 1);
  if (c.dtype === 'f16') for (let i = 0; i < n; i++) k[i] = Math.max(-65000, Math.min(65000, k[i]));
  const region = { handle: arena.handle, offset, ...shape };
  native().kvAppend({ ...region, slots, k, v });
  const image = new Uint16Array((numBlocks * blockBytes(shape)) / 2);
  appendRef(shape, image, slots, k, v);
  return { r, shape, region, blockIds, image };
}

const cases: Case[] = [];
for (const rows of [1, 4, 8])
  for (const numTokens of [1, 15, 16 * 3 + 7, 64])
    cases.push({ rows, headDim: rows === 4 ? 128 : 32, numKvHeads: 2, blockSize: 16, numTokens, dtype: numTokens % 2 ? 'f16' : 'bf16', kMag: 1, qMag: 1 });
cases.push({ rows: 32 * 4, headDim: 64, numKvHeads: 3, blockSize: 1, numTokens: 77, dtype: 'bf16', kMag: 1, qMag: 1 }); // one-token blocks, window * G rows
cases.push({ rows: 4, headDim: 64, numKvHeads: 1, blockSize: 16, numTokens: 40, dtype: 'bf16', kMag: 1e4, qMag: 1e3 }); // extreme values
cases.push({ rows: 8, headDim: 32, numKvHeads: 2, blockSize: 8, numTokens: 33, dtype: 'f16', kMag: 3e4, qMag: 1e-6 }); // near f16 max, tiny q

describe('kvScores', () => {
  it.each(cases.map((c, i) => [i, c] as const))('case %i matches the reference %j', (i, c) => {
    const { r, shape, region, blockIds, image } = build(c, 100 + i);
    for (const kvHead of [0, c.numKvHeads - 1]) {
      const q = randn(c.rows * c.headDim, r, c.qMag);
      const scale = 1 / Math.sqrt(c.headDim);
      const out = new Float32Array(c.rows * c.numTokens);
      native().kvScores({ ...region, blockIds, numTokens: c.numTokens, kvHead, rows: c.rows, q, scale, out });
      const ref = kvScoresRef(shape, image, { blockIds, numTokens: c.numTokens, kvHead, rows: c.rows, q, scale });
      // fp32 sums of headDim products against fp64: the error scales with sum |q_c k_c| (bound), not with the result.
      const absImage = image.map((h) => h & 0x7fff); // clears the sign bit of f16 and bf16 alike
      const bound = kvScoresRef(shape, absImage, { blockIds, numTokens: c.numTokens, kvHead, rows: c.rows, q: q.map(Math.abs), scale });
      for (let i = 0; i < out.length; i++) {
        expect(Number.isFinite(out[i])).toBe(true);
        expect(Math.abs(out[i] - ref[i])).toBeLessThanOrEqual(c.headDim * 2 ** -23 * bound[i] + 1e-30);
      }
    }
  });

  it('zero tokens writes nothing and is not an error', () => {
    const { region, blockIds } = build({ rows: 4, headDim: 32, numKvHeads: 1, blockSize: 16, numTokens: 3, dtype: 'bf16', kMag: 1, qMag: 1 }, 7);
    const out = new Float32Array(0);
    native().kvScores({ ...region, blockIds, numTokens: 0, kvHead: 0, rows: 4, q: new Float32Array(4 * 32), scale: 1, out });
  });

  it('refuses bad input with the field named', () => {
    const { region, blockIds } = build({ rows: 4, headDim: 32, numKvHeads: 2, blockSize: 16, numTokens: 20, dtype: 'bf16', kMag: 1, qMag: 1 }, 9);
    const base = { ...region, blockIds, numTokens: 20, kvHead: 0, rows: 4, q: new Float32Array(4 * 32), scale: 1, out: new Float32Array(4 * 20) };
    expect(() => native().kvScores({ ...base, kvHead: 2 })).toThrow(KvoffRangeError);
    expect(() => native().kvScores({ ...base, numTokens: 33 })).toThrow(/kvScores.numTokens/);
    expect(() => native().kvScores({ ...base, out: new Float32Array(10) })).toThrow(KvoffArgumentError);
    expect(() => native().kvScores({ ...base, q: new Float32Array(3) })).toThrow(/kvScores.q/);
    expect(() => native().kvScores({ ...base, blockIds: Int32Array.of(0, 99) })).toThrow(/kvScores.blockIds/);
  });
});
