// Native attention over the KIVI low-bit tail against the TypeScript reference at every SIMD level this CPU
// has: random and adversarial shapes, extreme values, exclusion lists, LSE-merge of disjoint parts, bad inputs.
// Both sides dequantize the same codes and fp16 zero/scale, so they differ only by f32 rounding and the
// vector exp: outputs agree to 1e-5 relative (of the largest |o|), lse to 1e-5 (of max(1, |lse|)).
import { afterAll, describe, expect, it } from 'vitest';
import { native, type KiviAttendOptions } from '../src/native.js';
import { KvoffArgumentError, KvoffRangeError } from '../src/errors.js';
import { kiviAttendRef } from '../src/kernels/kivi-attention.js';
import type { KiviBits } from '../src/kernels/kivi.js';
import { randn, rng, maxAbs, worstRatio } from './helpers.js';
import { simdLevels } from './simd-levels.js';

afterAll(() => native().setSimd({ level: 'auto' }));

interface Case {
  bits: KiviBits;
  headDim: number;
  keyGroupSize: number;
  valueGroupSize: number;
  numGroups: number;
  queryHeads: number;
  magnitude: number; // key scale: larger means a peakier softmax
  extreme?: boolean; // outlier channels, values at the fp16 limits, constant and clamped groups
}

/**
 * Random keys/values quantized by the native quantizers (bit-exact with the reference ones). With `extreme`:
 * key channel 0 at +-30000 (an LLM-style outlier channel, the query small there so scores stay O(10)), one key
 * beyond fp16 (its channel's zero/scale clamp to -65504/65504), a constant key channel in group 0 (scale 0),
 * a value row at +-65504, a constant value row and one below fp16's smallest subnormal.
 */
function build(c: Case, seed: number) {
  const r = rng(seed);
  const D = c.headDim;
  const n = c.numGroups * c.keyGroupSize;
  const rowBytes = (D * c.bits) / 8;
  const k = randn(n * D, r, c.magnitude); // [n, D]
  const v = randn(n * D, r, 0.7); // [n, D]
  const q = randn(c.queryHeads * D, r); // [G, D]
  if (c.extreme && n > 0) {
    for (let t = 0; t < n; t++) k[t * D] = (r() < 0.5 ? -1 : 1) * 30000;
    for (let g = 0; g < c.queryHeads; g++) q[g * D] *= 1e-3;
    k[1] = -1e30;
    for (let t = 0; t < Math.min(n, c.keyGroupSize); t++) k[t * D + 2] = 0.3;
    const row = (t: number, f: (i: number) => number) => { if (t < n) for (let i = 0; i < D; i++) v[t * D + i] = f(i); };
    row(1, (i) => (i % 2 ? 65504 : -65504));
    row(2, () => -1.5);
    row(3, () => 1e-30);
  }
  const keys = { codes: new Uint8Array(n * rowBytes), zero: new Uint16Array(c.numGroups * D), scale: new Uint16Array(c.numGroups * D) };
  native().kiviQuantizeKeys({ bits: c.bits, headDim: D, groupSize: c.keyGroupSize, numGroups: c.numGroups, src: k, ...keys });
  const vg = D / c.valueGroupSize;
  const values = { codes: new Uint8Array(n * rowBytes), zero: new Uint16Array(n * vg), scale: new Uint16Array(n * vg) };
  native().kiviQuantizeValues({ bits: c.bits, headDim: D, groupSize: c.valueGroupSize, numTokens: n, src: v, ...values });
  return { r, n, keys, values, q, scale: 1 / Math.sqrt(D) };
}

function options(c: Case, b: ReturnType<typeof build>, exclude?: Int32Array): KiviAttendOptions {
  return {
    bits: c.bits, headDim: c.headDim, keyGroupSize: c.keyGroupSize, valueGroupSize: c.valueGroupSize, numGroups: c.numGroups,
    queryHeads: c.queryHeads, q: b.q, scale: b.scale,
    keyCodes: b.keys.codes, keyZero: b.keys.zero, keyScale: b.keys.scale,
    valueCodes: b.values.codes, valueZero: b.values.zero, valueScale: b.values.scale,
    ...(exclude ? { exclude } : {}),
    out: new Float32Array(c.queryHeads * c.headDim), lse: new Float32Array(c.queryHeads),
  };
}

function run(c: Case, b: ReturnType<typeof build>, exclude?: Int32Array) {
  const o = options(c, b, exclude);
  native().kiviAttend(o);
  return { o: o.out as Float32Array, lse: o.lse as Float32Array };
}

function reference(c: Case, b: ReturnType<typeof build>, exclude?: Int32Array) {
  return kiviAttendRef({ ...c, q: b.q, scale: b.scale, keys: b.keys, values: b.values, exclude });
}

function expectClose(got: { o: Float32Array; lse: Float32Array }, ref: { o: Float32Array; lse: Float32Array }, tol = 1e-5) {
  expect(worstRatio(got.o, ref.o, tol * Math.max(maxAbs(ref.o), 1e-30), tol)).toBeLessThanOrEqual(1);
  expect(worstRatio(got.lse, ref.lse, tol * Math.max(1, maxAbs(ref.lse.filter(Number.isFinite))), tol)).toBeLessThanOrEqual(1);
}

/** Exclusion lists that stress the kernels' bookkeeping, by name. */
function exclusions(c: Case, b: ReturnType<typeof build>): Array<[string, Int32Array]> {
  const all = Array.from({ length: b.n }, (_, p) => p);
  const KG = c.keyGroupSize;
  return [
    // random positions plus one whole key group (skipped without reading its codes)
    ['random + a whole group', Int32Array.from(all.filter((p) => b.r() < 0.3 || Math.floor(p / KG) === 1))],
    // the first and last token of every key group and of every 32-token chunk
    ['group and chunk edges', Int32Array.from(all.filter((p) => p % KG === 0 || p % KG === KG - 1 || p % 32 === 0 || p % 32 === 31))],
    ['all but the last token', Int32Array.from(all.slice(0, -1))],
    ['everything', Int32Array.from(all)],
  ];
}

const cases: Case[] = [];
// The grid: every bit width, head dim and GQA ratio, with key/value groups rotating through uniform and split slices.
const groupings = [[32, 32], [64, 64], [32, 16], [96, 8]] as const;
for (const bits of [1, 2, 4] as KiviBits[])
  for (const headDim of [32, 64, 128])
    for (const queryHeads of [1, 4, 8]) {
      const [keyGroupSize, vg] = groupings[cases.length % groupings.length]!;
      cases.push({ bits, headDim, keyGroupSize, valueGroupSize: Math.min(vg, headDim), numGroups: 3, queryHeads, magnitude: 1 });
    }
// Key groups that are not a multiple of the vector width or the 32-token chunk, one key group alone.
for (const keyGroupSize of [1, 5, 17, 40, 100])
  for (const numGroups of [1, 3]) cases.push({ bits: 2, headDim: 64, keyGroupSize, valueGroupSize: 32, numGroups, queryHeads: 4, magnitude: 1 });
// GQA ratios that leave a remainder of heads, and more than the 8 kept in registers at once.
for (const queryHeads of [3, 12]) cases.push({ bits: 4, headDim: 64, keyGroupSize: 32, valueGroupSize: 64, numGroups: 2, queryHeads, magnitude: 1 });
// head dims that are not a multiple of 16 (AVX-512 hands them to AVX2) or of 8 (to scalar).
for (const bits of [1, 2, 4] as KiviBits[]) cases.push({ bits, headDim: 24, keyGroupSize: 32, valueGroupSize: 8, numGroups: 2, queryHeads: 4, magnitude: 1 });
for (const bits of [2, 4] as KiviBits[]) cases.push({ bits, headDim: 12, keyGroupSize: 32, valueGroupSize: 4, numGroups: 2, queryHeads: 4, magnitude: 1 });
// value groups narrower than a vector: per-channel zero/scale
for (const valueGroupSize of [1, 4, 8]) cases.push({ bits: 4, headDim: 64, keyGroupSize: 32, valueGroupSize, numGroups: 2, queryHeads: 4, magnitude: 1 });
// extreme values, and large keys: a peaked softmax that exercises the running-max rescale
for (const bits of [1, 2, 4] as KiviBits[])
  for (const headDim of [64, 128]) cases.push({ bits, headDim, keyGroupSize: 32, valueGroupSize: 32, numGroups: 4, queryHeads: 4, magnitude: 1, extreme: true });
for (const bits of [1, 2, 4] as KiviBits[]) cases.push({ bits, headDim: 128, keyGroupSize: 32, valueGroupSize: 64, numGroups: 5, queryHeads: 8, magnitude: 8 });

describe.each(simdLevels())('kiviAttend on %s: exact attention over the KIVI low-bit tail', (level) => {
  for (const [i, c] of cases.entries()) {
    const name = `${c.bits} bit, G ${c.queryHeads}, headDim ${c.headDim}, key group ${c.keyGroupSize} x ${c.numGroups}, ` +
      `value group ${c.valueGroupSize}, ${c.extreme ? 'extreme values' : `|k| ${c.magnitude}`}`;
    it(`matches the reference: ${name}`, () => {
      native().setSimd({ level });
      const b = build(c, 1000 + i);
      expectClose(run(c, b), reference(c, b));
      for (const [what, exclude] of exclusions(c, b)) {
        const got = run(c, b, exclude);
        try {
          expectClose(got, reference(c, b, exclude));
        } catch (err) {
          throw new Error(`excluding ${what}: ${(err as Error).message}`);
        }
      }
      const all = run(c, b, Int32Array.from({ length: b.n }, (_, p) => p));
      expect(Array.from(all.lse).every((x) => x === -Infinity)).toBe(true);
      expect(maxAbs(all.o)).toBe(0);
    });
  }
});

describe('kiviAttend', () => {
  it('every token excluded (or no token at all) gives o = 0 and lse = -inf', () => {
    const c: Case = { bits: 2, headDim: 64, keyGroupSize: 32, valueGroupSize: 32, numGroups: 2, queryHeads: 4, magnitude: 1 };
    const b = build(c, 7);
    const all = run(c, b, Int32Array.from({ length: b.n }, (_, p) => p));
    expect(Array.from(all.lse)).toEqual([-Infinity, -Infinity, -Infinity, -Infinity]);
    expect(Array.from(all.o).every((x) => x === 0)).toBe(true);
    expect(reference(c, b, Int32Array.from({ length: b.n }, (_, p) => p)).lse[0]).toBe(-Infinity);
    const e: Case = { ...c, numGroups: 0 };
    const o = options(e, b);
    for (const level of simdLevels()) {
      native().setSimd({ level });
      native().kiviAttend({ ...o, keyCodes: new Uint8Array(0), keyZero: new Uint16Array(0), keyScale: new Uint16Array(0), valueCodes: new Uint8Array(0), valueZero: new Uint16Array(0), valueScale: new Uint16Array(0) });
      expect(Array.from(o.lse as Float32Array)).toEqual([-Infinity, -Infinity, -Infinity, -Infinity]);
    }
    native().setSimd({ level: 'auto' });
  });

  for (const bits of [1, 2, 4] as KiviBits[])
    it(`LSE-merging the excluded set with its complement equals attention over all (${bits} bit)`, () => {
      const c: Case = { bits, headDim: 128, keyGroupSize: 32, valueGroupSize: 32, numGroups: 6, queryHeads: 8, magnitude: 2 };
      const b = build(c, 99 + bits);
      const inSet = Array.from({ length: b.n }, (_, p) => p).filter(() => b.r() < 0.4);
      const set = new Set(inSet);
      const complement = Int32Array.from(Array.from({ length: b.n }, (_, p) => p).filter((p) => !set.has(p)));
      const partA = run(c, b, Int32Array.from(inSet)); // attends the complement
      const partB = run(c, b, complement); // attends the set
      const out = new Float32Array(c.queryHeads * c.headDim);
      const lseOut = new Float32Array(c.queryHeads);
      native().lseMerge({ rows: c.queryHeads, headDim: c.headDim, oA: partA.o, lseA: partA.lse, oB: partB.o, lseB: partB.lse, out, lseOut });
      expectClose({ o: out, lse: lseOut }, run(c, b));
      expectClose({ o: out, lse: lseOut }, reference(c, b));
    });

  it('rejects bad inputs with typed errors that name the field', () => {
    const c: Case = { bits: 2, headDim: 64, keyGroupSize: 32, valueGroupSize: 32, numGroups: 2, queryHeads: 4, magnitude: 1 };
    const b = build(c, 5);
    const ok = options(c, b);
    const n = native();
    expect(() => n.kiviAttend(ok)).not.toThrow();
    expect(() => (n.kiviAttend as (o?: unknown) => void)()).toThrow(/Expected an options object for kiviAttend\(\) but received nothing/);
    expect(() => n.kiviAttend({ ...ok, bits: 3 as 2 })).toThrow('Expected 1, 2 or 4 for kiviAttend.bits but received 3');
    expect(() => n.kiviAttend({ ...ok, bits: 8 as 2 })).toThrow(KvoffRangeError);
    expect(() => n.kiviAttend({ ...ok, bits: 1, headDim: 60 })).toThrow('Expected a multiple of 8 at 1 bits for kiviAttend.headDim but received 60');
    expect(() => n.kiviAttend({ ...ok, valueGroupSize: 48 })).toThrow(/divisor of headDim 64 for kiviAttend.valueGroupSize/);
    expect(() => n.kiviAttend({ ...ok, keyGroupSize: 0 })).toThrow('Expected kiviAttend.keyGroupSize in [1, 4096] but received 0');
    expect(() => n.kiviAttend({ ...ok, numGroups: 1.5 })).toThrow(/an integer for kiviAttend.numGroups/);
    expect(() => n.kiviAttend({ ...ok, queryHeads: 0 })).toThrow(KvoffRangeError);
    expect(() => n.kiviAttend({ ...ok, scale: Number.NaN })).toThrow('Expected a finite number for kiviAttend.scale but received NaN');
    expect(() => n.kiviAttend({ ...ok, q: new Float32Array(255) })).toThrow('Expected Float32Array(256) for kiviAttend.q but received Float32Array(255)');
    expect(() => n.kiviAttend({ ...ok, keyCodes: new Uint8Array(1023) })).toThrow('Expected Uint8Array(1024) for kiviAttend.keyCodes but received Uint8Array(1023)');
    expect(() => n.kiviAttend({ ...ok, keyZero: new Uint16Array(64) })).toThrow(/Uint16Array\(128\) for kiviAttend.keyZero/);
    // f32 zero/scale (the layout before fp16) are refused by type, not misread
    expect(() => n.kiviAttend({ ...ok, keyScale: new Float32Array(128) as unknown as Uint16Array })).toThrow('Expected Uint16Array(128) for kiviAttend.keyScale but received Float32Array(128)');
    expect(() => n.kiviAttend({ ...ok, valueCodes: new Uint8Array(16) })).toThrow(/Uint8Array\(1024\) for kiviAttend.valueCodes/);
    expect(() => n.kiviAttend({ ...ok, valueZero: new Uint16Array(64) })).toThrow(/Uint16Array\(128\) for kiviAttend.valueZero/);
    expect(() => n.kiviAttend({ ...ok, valueScale: new Uint16Array(129) })).toThrow(/Uint16Array\(128\) for kiviAttend.valueScale/);
    expect(() => n.kiviAttend({ ...ok, out: new Float32Array(64) })).toThrow(/Float32Array\(256\) for kiviAttend.out/);
    expect(() => n.kiviAttend({ ...ok, lse: new Float32Array(3) })).toThrow('Expected Float32Array(4) for kiviAttend.lse but received Float32Array(3)');
    expect(() => n.kiviAttend({ ...ok, exclude: Int32Array.of(3, 2) })).toThrow(/strictly increasing positions for kiviAttend.exclude but received 3 then 2/);
    expect(() => n.kiviAttend({ ...ok, exclude: Int32Array.of(5, 5) })).toThrow(KvoffArgumentError);
    expect(() => n.kiviAttend({ ...ok, exclude: Int32Array.of(64) })).toThrow('Expected kiviAttend.exclude in [0, 63] but received 64');
    expect(() => n.kiviAttend({ ...ok, exclude: Int32Array.of(-1) })).toThrow(KvoffRangeError);
    expect(() => n.kiviAttend({ ...ok, exclude: [1, 2] as unknown as Int32Array })).toThrow(/Int32Array for kiviAttend.exclude but received an array/);
    const e = (() => { try { n.kiviAttend({ ...ok, lse: new Float32Array(3) }); } catch (err) { return err; } })();
    expect(e).toBeInstanceOf(KvoffArgumentError);
    expect(e).toMatchObject({ code: 'KVOFF_E_ARG', field: 'kiviAttend.lse', expected: 'Float32Array(4)', received: 'Float32Array(3)' });
  });
});
