// LowBitTier: byte accounting (fp16 zero/scale), score/attendTail against the TS references, LSE merge over exclusions,
// errors, dispose, accuracy.
import { afterEach, describe, expect, it } from 'vitest';
import { HostDeviceTier } from '../src/device/device-tier.js';
import { LOW_BIT_TAG, LowBitTier, type LowBitShape } from '../src/device/low-bit-tier.js';
import { KvoffArgumentError, KvoffCapacityError, KvoffDisposedError, KvoffRangeError } from '../src/errors.js';
import { kiviAttendRef } from '../src/kernels/kivi-attention.js';
import { quantizeKeysRef, quantizeValuesRef, scoreKeysRef } from '../src/kernels/kivi.js';
import { native } from '../src/native.js';
import { maxAbs, randn, rng, worstRatio } from './helpers.js';

const tiers: HostDeviceTier[] = [];
afterEach(() => {
  for (const t of tiers.splice(0)) t.dispose();
});

function newTier(capacity = 8 << 20, alignment?: number): HostDeviceTier {
  const t = new HostDeviceTier(alignment === undefined ? { capacity } : { capacity, alignment });
  tiers.push(t);
  return t;
}

/** Head h of x [n, H, D] as a dense [n, D]. */
function headOf(x: Float32Array, n: number, H: number, D: number, h: number): Float32Array {
  const out = new Float32Array(n * D); // [n, D]
  for (let t = 0; t < n; t++) out.set(x.subarray((t * H + h) * D, (t * H + h + 1) * D), t * D);
  return out;
}

interface Filled {
  lb: LowBitTier;
  k: Float32Array; // [T, H, D]
  v: Float32Array; // [T, H, D]
  T: number; // tokens in complete key groups
}

/** Fills layer `layer` with T tokens the way the engine would: values in uneven chunks, keys one whole group at a time. */
function fill(lb: LowBitTier, layer: number, T: number, seed: number, kScale = 1): Filled {
  const r = rng(seed);
  const H = lb.numKvHeads;
  const D = lb.headDim;
  const KG = lb.keyGroupSize;
  const k = randn(T * H * D, r, kScale); // [T, H, D]
  const v = randn(T * H * D, r, 0.7); // [T, H, D]
  const chunks = [1, 5, 17, 40]; // uneven sizes: prefill-like chunks and single decode tokens
  for (let start = 0, i = 0; start < T; i++) {
    const end = Math.min(T, start + chunks[i % chunks.length]!);
    lb.appendValues(layer, v.subarray(start * H * D, end * H * D), start);
    start = end;
  }
  for (let g = 0; g < T / KG; g++) lb.appendKeyGroup(layer, k.subarray(g * KG * H * D, (g + 1) * KG * H * D), g);
  return { lb, k, v, T };
}

/** Reference quantization of one head, as kivi.ts does it. */
function refQuant(lb: LowBitTier, f: Filled, h: number) {
  const D = lb.headDim;
  const groups = f.T / lb.keyGroupSize;
  const keys = quantizeKeysRef(headOf(f.k, f.T, lb.numKvHeads, D, h), groups, lb.keyGroupSize, D, lb.bits);
  const values = quantizeValuesRef(headOf(f.v, f.T, lb.numKvHeads, D, h), f.T, lb.valueGroupSize, D, lb.bits);
  return { keys, values, groups };
}

function expectClose(got: { o: Float32Array; lse: Float32Array }, ref: { o: Float32Array; lse: Float32Array }, tol = 1e-5): void {
  expect(worstRatio(got.o, ref.o, tol * Math.max(maxAbs(ref.o), 1e-30), tol)).toBeLessThanOrEqual(1);
  expect(worstRatio(got.lse, ref.lse, tol * Math.max(1, maxAbs(ref.lse)), tol)).toBeLessThanOrEqual(1);
}

function attend(lb: LowBitTier, layer: number, h: number, q: Float32Array, scale: number, exclude?: Int32Array) {
  const G = q.length / lb.headDim;
  const o = new Float32Array(G * lb.headDim); // [G, D]
  const lse = new Float32Array(G); // [G]
  lb.attendTail(layer, h, q, scale, exclude, o, lse);
  return { o, lse };
}

const base: LowBitShape = { numLayers: 2, numKvHeads: 3, headDim: 64, bits: 2, keyGroupSize: 32, valueGroupSize: 32, capacityTokens: 200 };

describe('LowBitTier', () => {
  it('bytesFor equals the bytes the tier reports in use for its tag', () => {
    const shapes: LowBitShape[] = [
      base,
      { ...base, bits: 4, keyGroupSize: 64, valueGroupSize: 16, capacityTokens: 1000 },
      { ...base, bits: 1, headDim: 128, numLayers: 1, numKvHeads: 1, capacityTokens: 31 }, // no complete key group fits
    ];
    for (const alignment of [256, 4096]) {
      for (const s of shapes) {
        const tier = newTier(8 << 20, alignment);
        const lb = new LowBitTier({ ...s, tier });
        expect(tier.usageByTag()[LOW_BIT_TAG]).toBe(LowBitTier.bytesFor({ ...s, tier }));
        expect(tier.bytesInUse).toBe(LowBitTier.bytesFor({ ...s, alignment }));
        lb.dispose();
      }
    }
  });

  it('zero and scale take 2 bytes each: a 1-bit copy at head_dim 32 is 14 B per token-head, 10.9% of fp16 K+V', () => {
    // keys: 4 B codes + 32 channels x (zero + scale) x 2 B / 64 tokens; values: 4 B codes + (zero + scale) x 2 B
    const demo: LowBitShape = { numLayers: 1, numKvHeads: 1, headDim: 32, bits: 1, keyGroupSize: 64, valueGroupSize: 32, capacityTokens: 1 << 16 };
    const bytes = LowBitTier.bytesFor({ ...demo, alignment: 256 });
    expect(bytes).toBe(14 * (1 << 16));
    expect(bytes / ((1 << 16) * 2 * 32 * 2)).toBeCloseTo(0.109375, 6); // fp16 K and V: 128 B per token-head
  });

  for (const bits of [1, 2, 4] as const) {
    for (const [keyGroupSize, valueGroupSize] of [[32, 32], [64, 16]] as const) {
      const shape: LowBitShape = { ...base, bits, keyGroupSize, valueGroupSize, capacityTokens: 4 * keyGroupSize + 7 };
      const name = `${bits} bit, key group ${keyGroupSize}, value group ${valueGroupSize}`;

      it(`score and attendTail match the TS references: ${name}`, () => {
        const lb = new LowBitTier({ ...shape, tier: newTier() });
        const T = 3 * keyGroupSize;
        const f = fill(lb, 1, T, 11 + bits);
        expect(lb.quantizedTokens(1)).toBe(T);
        expect(lb.quantizedTokens(0)).toBe(0);
        const D = shape.headDim;
        const G = 4;
        const q = randn(G * D, rng(99), 1); // [G, D]
        const scale = 1 / Math.sqrt(D);
        for (let h = 0; h < shape.numKvHeads; h++) {
          const { keys, values, groups } = refQuant(lb, f, h);
          const out = new Float32Array(T); // [T]
          lb.score(1, h, q, out);
          const refScores = scoreKeysRef(q, G, keys, groups, keyGroupSize, D, bits);
          expect(worstRatio(out, refScores, 1e-5 * maxAbs(refScores), 1e-5)).toBeLessThanOrEqual(1);
          const ref = kiviAttendRef({ bits, headDim: D, keyGroupSize, valueGroupSize, numGroups: groups, queryHeads: G, q, scale, keys, values });
          expectClose(attend(lb, 1, h, q, scale), ref);
        }
      });

      it(`attendTail over the complement LSE-merged with attendTail over the excluded set equals attendTail over all: ${name}`, () => {
        const lb = new LowBitTier({ ...shape, tier: newTier() });
        const T = 4 * keyGroupSize;
        fill(lb, 0, T, 5 + bits, 3); // larger keys: a peakier softmax
        const D = shape.headDim;
        const G = 2;
        const q = randn(G * D, rng(7), 1);
        const scale = 1 / Math.sqrt(D);
        const r = rng(123);
        const picked: number[] = [];
        const rest: number[] = [];
        for (let t = 0; t < T; t++) (r() < 0.2 ? picked : rest).push(t);
        const hot = Int32Array.from(picked); // attended "elsewhere"
        for (let h = 0; h < shape.numKvHeads; h++) {
          const tail = attend(lb, 0, h, q, scale, hot);
          const part = attend(lb, 0, h, q, scale, Int32Array.from(rest)); // the excluded set alone
          const o = new Float32Array(G * D);
          const lse = new Float32Array(G);
          native().lseMerge({ rows: G, headDim: D, oA: tail.o, lseA: tail.lse, oB: part.o, lseB: part.lse, out: o, lseOut: lse });
          expectClose({ o, lse }, attend(lb, 0, h, q, scale));
        }
      });
    }
  }

  it('attendTail with nothing quantized or everything excluded returns zeros and -inf', () => {
    const lb = new LowBitTier({ ...base, tier: newTier() });
    const q = randn(2 * base.headDim, rng(1));
    const empty = attend(lb, 0, 0, q, 0.125);
    expect(Array.from(empty.lse)).toEqual([-Infinity, -Infinity]);
    expect(maxAbs(empty.o)).toBe(0);
    fill(lb, 0, 32, 2);
    const all = attend(lb, 0, 1, q, 0.125, Int32Array.from({ length: 32 }, (_, i) => i));
    expect(Array.from(all.lse)).toEqual([-Infinity, -Infinity]);
  });

  it('rejects bad options, layers, heads, positions and shapes with typed errors', () => {
    const tier = newTier();
    expect(() => new LowBitTier({ ...base, tier, bits: 3 as 2 })).toThrow(KvoffArgumentError);
    expect(() => new LowBitTier({ ...base, tier, keyGroupSize: 48 as 32 })).toThrow(KvoffArgumentError);
    expect(() => new LowBitTier({ ...base, tier, valueGroupSize: 24 })).toThrow(KvoffArgumentError);
    expect(() => new LowBitTier({ ...base, tier, capacityTokens: 0 })).toThrow(KvoffArgumentError);
    expect(tier.bytesInUse).toBe(0);

    const lb = new LowBitTier({ ...base, tier });
    const { numKvHeads: H, headDim: D } = base;
    const kg = new Float32Array(32 * H * D); // [keyGroupSize, H, D]
    const q = new Float32Array(D);
    expect(() => lb.appendValues(2, new Float32Array(H * D), 0)).toThrow(KvoffRangeError);
    expect(() => lb.appendValues(-1, new Float32Array(H * D), 0)).toThrow(KvoffRangeError);
    expect(() => lb.appendValues(0, new Float32Array(H * D), 1)).toThrow(KvoffRangeError); // a gap
    expect(() => lb.appendValues(0, new Float32Array(H * D + 1), 0)).toThrow(KvoffArgumentError);
    expect(() => lb.appendKeyGroup(0, kg, 1)).toThrow(KvoffRangeError); // a gap
    expect(() => lb.appendKeyGroup(0, kg.subarray(1), 0)).toThrow(KvoffArgumentError);
    expect(() => lb.score(0, 3, q, new Float32Array(0))).toThrow(KvoffRangeError);
    expect(() => lb.score(0, 0, new Float32Array(D + 1), new Float32Array(0))).toThrow(KvoffArgumentError);

    lb.appendKeyGroup(0, kg, 0);
    expect(() => lb.score(0, 0, q, new Float32Array(31))).toThrow(KvoffArgumentError);
    // Keys of group 0 without their values: attending would read stale bytes.
    expect(() => lb.attendTail(0, 0, q, 1, undefined, new Float32Array(D), new Float32Array(1))).toThrow(KvoffRangeError);
    lb.appendValues(0, new Float32Array(32 * H * D), 0);
    expect(() => lb.attendTail(0, 0, q, 1, undefined, new Float32Array(D - 1), new Float32Array(1))).toThrow(KvoffArgumentError);
    expect(() => lb.attendTail(0, 0, q, 1, undefined, new Float32Array(D), new Float32Array(2))).toThrow(KvoffArgumentError);
    expect(() => lb.attendTail(0, 0, q, 1, Int32Array.of(3, 2), new Float32Array(D), new Float32Array(1))).toThrow(KvoffArgumentError);
    expect(() => lb.attendTail(0, 0, q, 1, Int32Array.of(32), new Float32Array(D), new Float32Array(1))).toThrow(KvoffRangeError);
  });

  it('refuses to go past capacity', () => {
    const lb = new LowBitTier({ ...base, tier: newTier() }); // 200 tokens: 6 key groups of 32
    const { numKvHeads: H, headDim: D } = base;
    expect(lb.maxGroups).toBe(6);
    expect(() => lb.appendValues(0, new Float32Array(201 * H * D), 0)).toThrow(KvoffCapacityError);
    lb.appendValues(0, new Float32Array(200 * H * D), 0);
    expect(() => lb.appendValues(0, new Float32Array(H * D), 200)).toThrow(KvoffCapacityError);
    const kg = new Float32Array(32 * H * D);
    for (let g = 0; g < 6; g++) lb.appendKeyGroup(0, kg, g);
    expect(() => lb.appendKeyGroup(0, kg, 6)).toThrow(KvoffCapacityError);
    expect(lb.quantizedTokens(0)).toBe(192);
  });

  it('a constructor that does not fit throws a capacity error and leaves the tier as it was', () => {
    const bytes = LowBitTier.bytesFor({ ...base, alignment: 256 });
    const tier = newTier(bytes - 256);
    expect(() => new LowBitTier({ ...base, tier })).toThrow(KvoffCapacityError);
    expect(tier.bytesInUse).toBe(0);
  });

  it('dispose returns the bytes to the tier, is idempotent, and later use throws', () => {
    const tier = newTier();
    const other = tier.allocate(1000, 'other');
    const before = tier.bytesInUse;
    const lb = new LowBitTier({ ...base, tier });
    expect(tier.bytesInUse).toBeGreaterThan(before);
    fill(lb, 0, 64, 3);
    lb.dispose();
    lb.dispose();
    expect(tier.bytesInUse).toBe(before);
    expect(tier.usageByTag()[LOW_BIT_TAG]).toBeUndefined();
    expect(() => lb.quantizedTokens(0)).toThrow(KvoffDisposedError);
    expect(() => lb.score(0, 0, new Float32Array(64), new Float32Array(64))).toThrow(KvoffDisposedError);
    tier.free(other.offset);
  });

  // Thresholds are set from measurement, not hope. On unit Gaussian K/V the output is an average of
  // ~200 near-uniformly weighted random rows, so ||o|| is about ||v|| / 14 while quantization noise of
  // the keys (which reweights the rows) shrinks far less: measured over 20 seeds at group 32, 4-bit
  // gives relative error 0.11 (keys alone 0.08, values alone 0.08) and 2-bit cosine 0.86 (min 0.81).
  // So a 0.1 relative-error / 0.9 cosine bar does not hold on this data; the bars below do, with margin.
  // With fp16 zero/scale (2^-11 relative rounding, far below a 2- or 4-bit step) the 8-seed means printed below
  // measured 4-bit rel err 0.108 / cosine 0.994 and 2-bit cosine 0.891: the bars are unchanged.
  it('accuracy on Gaussian K/V (D 64, 256 tokens): 4-bit close to fp32 attention, 2-bit still correlated', () => {
    const D = 64;
    const T = 256;
    const G = 4;
    const scale = 1 / Math.sqrt(D);
    const seeds = [2024, 2025, 2026, 2027, 2028, 2029, 2030, 2031];
    const results: Record<number, { rel: number; cos: number }> = {};
    for (const bits of [4, 2] as const) {
      let rel = 0;
      let cos = 0;
      for (const seed of seeds) {
        const lb = new LowBitTier({ numLayers: 1, numKvHeads: 1, headDim: D, bits, keyGroupSize: 32, valueGroupSize: 32, capacityTokens: T, tier: newTier(1 << 20) });
        const f = fill(lb, 0, T, seed);
        const q = randn(G * D, rng(seed + 1), 1); // [G, D]
        const got = attend(lb, 0, 0, q, scale);
        const exact = exactAttention(q, f.k, f.v, T, D, scale);
        rel += relError(got.o, exact) / seeds.length;
        cos += cosine(got.o, exact) / seeds.length;
        lb.dispose();
      }
      results[bits] = { rel, cos };
    }
    console.log(`low-bit tail vs fp32 attention, D ${D}, ${T} tokens, G ${G}, groups 32/32, mean of ${seeds.length} seeds: ` +
      Object.entries(results).map(([b, r]) => `${b}-bit rel err ${r.rel.toFixed(4)}, cosine ${r.cos.toFixed(4)}`).join('; '));
    expect(results[4]!.rel).toBeLessThan(0.15);
    expect(results[4]!.cos).toBeGreaterThan(0.98);
    expect(results[2]!.cos).toBeGreaterThan(0.8);
    expect(results[2]!.rel).toBeGreaterThan(results[4]!.rel); // fewer bits, more error
  });
});

/** Exact fp64 softmax attention of q [G, D] over k, v [T, D]; out [G, D]. */
function exactAttention(q: Float32Array, k: Float32Array, v: Float32Array, T: number, D: number, scale: number): Float64Array {
  const G = q.length / D;
  const out = new Float64Array(G * D);
  const s = new Float64Array(T);
  for (let g = 0; g < G; g++) {
    let m = -Infinity;
    for (let t = 0; t < T; t++) {
      let dot = 0;
      for (let c = 0; c < D; c++) dot += q[g * D + c]! * k[t * D + c]!;
      s[t] = dot * scale;
      m = Math.max(m, s[t]!);
    }
    let sum = 0;
    for (let t = 0; t < T; t++) {
      const p = Math.exp(s[t]! - m);
      sum += p;
      for (let c = 0; c < D; c++) out[g * D + c] += p * v[t * D + c]!;
    }
    for (let c = 0; c < D; c++) out[g * D + c] /= sum;
  }
  return out;
}

/** ||a - b|| / ||b||. */
function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! ** 2;
    bb += b[i]! ** 2;
  }
  return ab / Math.sqrt(aa * bb);
}

describe('LowBitTier keysOnly', () => {
  it('holds no value copy: smaller, refuses values', () => {
    const shape = { numLayers: 2, numKvHeads: 2, headDim: 64, bits: 2 as const, keyGroupSize: 32 as const, valueGroupSize: 64, capacityTokens: 256 };
    expect(LowBitTier.bytesFor({ ...shape, keysOnly: true })).toBeLessThan(LowBitTier.bytesFor(shape));
    const tier = new HostDeviceTier({ capacity: LowBitTier.bytesFor({ ...shape, keysOnly: true }) });
    const lb = new LowBitTier({ tier, ...shape, keysOnly: true });
    expect(tier.usageByTag()[LOW_BIT_TAG]).toBe(LowBitTier.bytesFor({ ...shape, keysOnly: true }));
    expect(() => lb.appendValues(0, new Float32Array(2 * 64), 0)).toThrow(/keys only/);
    lb.dispose();
    tier.dispose();
  });
});
