// Native paged append and attention against the TypeScript references, on every SIMD path.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { native, type KvDtype } from '../src/native.js';
import { appendRef, attendRef, blockBytes, type PagedShape } from '../src/kernels/paged-kv.js';
import { randn, rng, shuffled, maxAbs, worstRatio } from './helpers.js';
import { simdLevels } from './simd-levels.js';

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});
afterAll(() => native().setSimd({ level: 'auto' }));

interface Case {
  groupSize: number;
  headDim: number;
  numKvHeads: number;
  blockSize: number;
  numTokens: number;
  dtype: KvDtype;
  magnitude: number;
  excludeFraction: number;
  positiveV?: boolean; // V in [0.5, 0.5 + |randn|): every term of the value sums adds the same way
}

function build(c: Case, seed: number) {
  const r = rng(seed);
  const numBlocksUsed = Math.max(1, Math.ceil(c.numTokens / c.blockSize));
  const numBlocks = numBlocksUsed + 3; // spare blocks so physical ids are not contiguous
  const shape: PagedShape = { numBlocks, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSize: c.blockSize, dtype: c.dtype };
  const bytes = numBlocks * blockBytes(shape);
  const offset = 256; // a non-zero region offset inside the arena
  const arena = new HostArena(bytes + offset + 64);
  arenas.push(arena);
  const blockIds = shuffled(numBlocks, r).slice(0, numBlocksUsed);
  const slots = Int32Array.from({ length: c.numTokens }, (_, p) => blockIds[Math.floor(p / c.blockSize)] * c.blockSize + (p % c.blockSize));
  const n = c.numTokens * c.numKvHeads * c.headDim;
  const k = randn(n, r, c.magnitude);
  const v = randn(n, r, c.magnitude);
  if (c.positiveV) for (let i = 0; i < n; i++) v[i] = 0.5 + Math.abs(v[i]);
  if (c.dtype === 'f16') {
    // keep fp16 inputs finite: clamp to just under its max (65504)
    for (const x of [k, v]) for (let i = 0; i < n; i++) x[i] = Math.max(-65000, Math.min(65000, x[i]));
  }
  const region = { handle: arena.handle, offset, ...shape };
  native().kvAppend({ ...region, slots, k, v });
  const image = new Uint16Array(numBlocks * blockBytes(shape) / 2);
  appendRef(shape, image, slots, k, v);
  const exclude = Int32Array.from(
    Array.from({ length: c.numTokens }, (_, p) => p).filter(() => r() < c.excludeFraction),
  );
  return { r, shape, region, arena, blockIds, image, exclude, offset };
}

const cases: Case[] = [];
for (const groupSize of [1, 4, 8])
  for (const headDim of [64, 128])
    for (const numTokens of [1, 15, 16 * 3 + 7])
      cases.push({ groupSize, headDim, numKvHeads: 2, blockSize: 16, numTokens, dtype: numTokens % 2 ? 'f16' : 'bf16', magnitude: 1, excludeFraction: 0 });
cases.push({ groupSize: 4, headDim: 32, numKvHeads: 3, blockSize: 32, numTokens: 100, dtype: 'bf16', magnitude: 1, excludeFraction: 0.3 });
cases.push({ groupSize: 8, headDim: 128, numKvHeads: 1, blockSize: 16, numTokens: 1, dtype: 'f16', magnitude: 1, excludeFraction: 1 });
cases.push({ groupSize: 4, headDim: 24, numKvHeads: 2, blockSize: 5, numTokens: 23, dtype: 'f16', magnitude: 1, excludeFraction: 0.5 });
// Group sizes whose register blocking leaves spare lanes (3, 6) or takes two passes (12).
cases.push({ groupSize: 3, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 37, dtype: 'bf16', magnitude: 1, excludeFraction: 0.2 });
cases.push({ groupSize: 6, headDim: 128, numKvHeads: 1, blockSize: 16, numTokens: 50, dtype: 'f16', magnitude: 1, excludeFraction: 0 });
cases.push({ groupSize: 12, headDim: 64, numKvHeads: 1, blockSize: 32, numTokens: 70, dtype: 'bf16', magnitude: 1, excludeFraction: 0.1 });
// Below GQA 8 the AVX2 value sums take 8/G slices of 8 channels a pass; head dims past the last whole pass go a
// slice at a time (G1 D96: one pass of 64 and 4 slices; G2 D40: one pass of 32 and 1; G3 D56: 3 passes of 16 and 1).
cases.push({ groupSize: 1, headDim: 96, numKvHeads: 2, blockSize: 16, numTokens: 41, dtype: 'f16', magnitude: 1, excludeFraction: 0.2 });
cases.push({ groupSize: 2, headDim: 40, numKvHeads: 2, blockSize: 16, numTokens: 35, dtype: 'bf16', magnitude: 1, excludeFraction: 0 });
cases.push({ groupSize: 3, headDim: 56, numKvHeads: 1, blockSize: 32, numTokens: 70, dtype: 'f16', magnitude: 1, excludeFraction: 0.1 });
// The score loops store whole groups of tokens, excluded ones too, and mask them after (mask_dead): exclusions at
// GQA 2 and 4, whose AVX2 scores store 4 and 2 tokens a head at once.
cases.push({ groupSize: 2, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 53, dtype: 'f16', magnitude: 1, excludeFraction: 0.35 });
cases.push({ groupSize: 4, headDim: 128, numKvHeads: 1, blockSize: 32, numTokens: 77, dtype: 'bf16', magnitude: 1, excludeFraction: 0.25 });
// AVX2 scores GQA 4 three tokens a step, then a tail of one or two: blocks of 12 (chunks of whole steps) and 6;
// GQA 1 with every token live reads its value rows in place (no gather), here over blocks of 24.
cases.push({ groupSize: 4, headDim: 64, numKvHeads: 2, blockSize: 12, numTokens: 61, dtype: 'f16', magnitude: 1, excludeFraction: 0.15 });
cases.push({ groupSize: 4, headDim: 128, numKvHeads: 1, blockSize: 6, numTokens: 29, dtype: 'bf16', magnitude: 1, excludeFraction: 0 });
cases.push({ groupSize: 1, headDim: 128, numKvHeads: 2, blockSize: 24, numTokens: 50, dtype: 'bf16', magnitude: 1, excludeFraction: 0 });
// GQA 8 and up runs 32-token chunks where a block holds them: blocks of 32 and 64, lengths off the chunk,
// exclusions that leave chunks partly live (the vector score store's mask), two passes of 8 heads (16), and
// one length long enough for the prefetch streams to run ahead across many blocks.
cases.push({ groupSize: 8, headDim: 64, numKvHeads: 2, blockSize: 64, numTokens: 165, dtype: 'bf16', magnitude: 1, excludeFraction: 0.3 });
cases.push({ groupSize: 8, headDim: 128, numKvHeads: 1, blockSize: 32, numTokens: 97, dtype: 'f16', magnitude: 1, excludeFraction: 0.5 });
cases.push({ groupSize: 16, headDim: 64, numKvHeads: 1, blockSize: 32, numTokens: 70, dtype: 'f16', magnitude: 1, excludeFraction: 0.1 });
cases.push({ groupSize: 8, headDim: 64, numKvHeads: 2, blockSize: 32, numTokens: 611, dtype: 'bf16', magnitude: 1, excludeFraction: 0.05 });
// The AMX path where the CPU has it (bf16, head_dim a multiple of 32, GQA 8 at head_dim <= 64 or GQA 12-16):
// 16-token tile runs with AVX-512 tails (blocks of 8 are all tail, blocks of 16 all tiles), one 32-channel
// block, GQA 12 and 16 at head_dim 128. fp16 at the same shapes stays on AVX-512 there (a tiles path for it was
// tried and lost).
for (const dtype of ['bf16', 'f16'] as const) {
  cases.push({ groupSize: 16, headDim: 128, numKvHeads: 1, blockSize: 64, numTokens: 300, dtype, magnitude: 1, excludeFraction: 0.2 });
  cases.push({ groupSize: 8, headDim: 32, numKvHeads: 2, blockSize: 16, numTokens: 45, dtype, magnitude: 1, excludeFraction: 0.1 });
  cases.push({ groupSize: 8, headDim: 64, numKvHeads: 1, blockSize: 8, numTokens: 50, dtype, magnitude: 1, excludeFraction: 0 });
  cases.push({ groupSize: 12, headDim: 128, numKvHeads: 2, blockSize: 32, numTokens: 129, dtype, magnitude: 1, excludeFraction: 0.5 });
}
// ...and at both ends of bf16's range: q's three bf16 parts and the probabilities' two must stay exact there;
// fp16's ends at GQA 8 (near its max 65504, and among its subnormals).
cases.push({ groupSize: 8, headDim: 64, numKvHeads: 1, blockSize: 32, numTokens: 70, dtype: 'bf16', magnitude: 1e16, excludeFraction: 0 });
cases.push({ groupSize: 16, headDim: 64, numKvHeads: 1, blockSize: 32, numTokens: 40, dtype: 'bf16', magnitude: 1e-30, excludeFraction: 0 });
cases.push({ groupSize: 8, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 40, dtype: 'f16', magnitude: 2e4, excludeFraction: 0 });
cases.push({ groupSize: 8, headDim: 64, numKvHeads: 1, blockSize: 16, numTokens: 33, dtype: 'f16', magnitude: 1e-6, excludeFraction: 0 });
// Values near the top of each format's range: fp16 near its max 65504, bf16 far beyond fp16's.
cases.push({ groupSize: 4, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 40, dtype: 'f16', magnitude: 2e4, excludeFraction: 0 });
cases.push({ groupSize: 8, headDim: 128, numKvHeads: 2, blockSize: 16, numTokens: 40, dtype: 'bf16', magnitude: 1e16, excludeFraction: 0 });
// ...and near the bottom: subnormal fp16, tiny bf16.
cases.push({ groupSize: 1, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 33, dtype: 'f16', magnitude: 1e-6, excludeFraction: 0 });
cases.push({ groupSize: 4, headDim: 64, numKvHeads: 2, blockSize: 16, numTokens: 33, dtype: 'bf16', magnitude: 1e-30, excludeFraction: 0 });

describe.each(simdLevels())('paged KV kernels on %s', (level) => {
  it('append writes the same fp16/bf16 bits as the reference, extremes included', () => {
    native().setSimd({ level });
    for (const dtype of ['f16', 'bf16'] as const) {
      const shape: PagedShape = { numBlocks: 2, numKvHeads: 1, headDim: 16, blockSize: 4, dtype };
      const arena = new HostArena(2 * blockBytes(shape));
      arenas.push(arena);
      const special = [0, -0, 1, -1, 65504, 65519, 65520, -65536, 6e-8, 2.98e-8, 2.97e-8, 1e-8, 1e-40, 3.3e38, -3.4e38, Infinity, -Infinity, NaN, 1 / 3, 1e5];
      const k = new Float32Array(5 * 16);
      const v = new Float32Array(5 * 16);
      for (let i = 0; i < k.length; i++) {
        k[i] = special[i % special.length] * (i % 3 === 0 ? 1 : 0.999);
        v[i] = special[(i * 7) % special.length];
      }
      const slots = Int32Array.from([0, 1, 2, 3, 6]);
      native().kvAppend({ handle: arena.handle, offset: 0, ...shape, slots, k, v });
      const image = new Uint16Array(2 * blockBytes(shape) / 2);
      appendRef(shape, image, slots, k, v);
      const got = new Uint16Array(arena.read(0, image.byteLength).buffer);
      expect(Array.from(got)).toEqual(Array.from(image));
    }
  });

  it.each(cases.map((c, i) => [i, c] as const))('attention case %i matches the fp64 reference', (i, c) => {
    native().setSimd({ level });
    const { r, shape, region, blockIds, image, exclude } = build(c, 1000 + i);
    const kvHeads = Int32Array.from({ length: c.numKvHeads }, (_, h) => c.numKvHeads - 1 - h);
    const nh = kvHeads.length;
    const q = randn(nh * c.groupSize * c.headDim, r, c.magnitude === 1 ? 1 : 1 / Math.sqrt(c.magnitude));
    const out = new Float32Array(q.length).fill(NaN);
    const lse = new Float32Array(nh * c.groupSize).fill(NaN);
    const scale = 1 / Math.sqrt(c.headDim);
    native().kvAttend({ ...region, blockIds, numTokens: c.numTokens, kvHeads, groupSize: c.groupSize, q, scale, out, lse, exclude });
    for (let i2 = 0; i2 < nh; i2++) {
      const G = c.groupSize, D = c.headDim;
      const ref = attendRef(shape, image, {
        blockIds, numTokens: c.numTokens, kvHead: kvHeads[i2], groupSize: G, q: q.subarray(i2 * G * D, (i2 + 1) * G * D), scale, exclude,
      });
      const o = out.subarray(i2 * G * D, (i2 + 1) * G * D);
      const l = lse.subarray(i2 * G, (i2 + 1) * G);
      const vmax = Math.max(maxAbs(ref.o), 1e-30 * c.magnitude);
      expect(worstRatio(o, ref.o, 2e-5 * vmax, 2e-5)).toBeLessThanOrEqual(1);
      expect(worstRatio(l, ref.lse, 1e-5, 1e-5)).toBeLessThanOrEqual(1);
    }
  });

  // 65k tokens of positive V, where the rounding of the long value sums leans one way: kernels that added each token
  // into the running sum fail this on every level; summing a chunk from zero and adding it once passes.
  it.each([
    [4, 128, 'bf16'],
    [8, 64, 'f16'],
    [8, 64, 'bf16'], // the AMX path where the CPU has it
  ] as const)('a 65k-token context at GQA %i, D%i, %s stays within 6e-6 of the fp64 reference', (groupSize, headDim, dtype) => {
    native().setSimd({ level });
    const c: Case = { groupSize, headDim, numKvHeads: 1, blockSize: 32, numTokens: 65536, dtype, magnitude: 1, excludeFraction: 0, positiveV: true };
    const { r, shape, region, blockIds, image } = build(c, 77);
    const q = randn(groupSize * headDim, r, 1);
    const out = new Float32Array(q.length);
    const lse = new Float32Array(groupSize);
    const scale = 1 / Math.sqrt(headDim);
    native().kvAttend({ ...region, blockIds, numTokens: c.numTokens, kvHeads: Int32Array.from([0]), groupSize, q, scale, out, lse });
    const ref = attendRef(shape, image, { blockIds, numTokens: c.numTokens, kvHead: 0, groupSize, q, scale });
    expect(worstRatio(out, ref.o, 6e-6 * maxAbs(ref.o), 0)).toBeLessThanOrEqual(1);
    expect(worstRatio(lse, ref.lse, 1e-5, 1e-5)).toBeLessThanOrEqual(1);
  }, 30_000); // the fp64 reference in TypeScript takes ~5 s of a busy 2-core VM at GQA 8 fp16, vitest's default limit

  it('all tokens excluded, or zero tokens, give o = 0 and lse = -inf', () => {
    native().setSimd({ level });
    const c: Case = { groupSize: 4, headDim: 64, numKvHeads: 1, blockSize: 16, numTokens: 20, dtype: 'bf16', magnitude: 1, excludeFraction: 1 };
    const { region, blockIds, exclude } = build(c, 7);
    for (const [numTokens, ex] of [[20, exclude], [0, undefined]] as const) {
      const out = new Float32Array(4 * 64).fill(NaN);
      const lse = new Float32Array(4).fill(NaN);
      native().kvAttend({ ...region, blockIds, numTokens, kvHeads: Int32Array.of(0), groupSize: 4, q: new Float32Array(256).fill(1), scale: 0.125, out, lse, exclude: ex });
      expect(Array.from(out).every((x) => x === 0)).toBe(true);
      expect(Array.from(lse)).toEqual([-Infinity, -Infinity, -Infinity, -Infinity]);
    }
  });
});
