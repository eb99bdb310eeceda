// Native attention over the KIVI low-bit tail against the TypeScript reference, exclusion lists,
// LSE-merge of disjoint parts, and bad inputs.
import { describe, expect, it } from 'vitest';
import { native, type KiviAttendOptions } from '../src/native.js';
import { KvoffArgumentError, KvoffRangeError } from '../src/errors.js';
import { kiviAttendRef } from '../src/kernels/kivi-attention.js';
import type { KiviBits } from '../src/kernels/kivi.js';
import { randn, rng, maxAbs, worstRatio } from './helpers.js';

interface Case {
  bits: KiviBits;
  headDim: number;
  keyGroupSize: number;
  valueGroupSize: number;
  numGroups: number;
  queryHeads: number;
  magnitude: number; // key scale: larger means a peakier softmax
}

/** Random keys/values quantized by the native quantizers (bit-exact with the reference ones). */
function build(c: Case, seed: number) {
  const r = rng(seed);
  const D = c.headDim;
  const n = c.numGroups * c.keyGroupSize;
  const rowBytes = (D * c.bits) / 8;
  const k = randn(n * D, r, c.magnitude);
  const v = randn(n * D, r, 0.7);
  const keys = { codes: new Uint8Array(n * rowBytes), zero: new Float32Array(c.numGroups * D), scale: new Float32Array(c.numGroups * D) };
  native().kiviQuantizeKeys({ bits: c.bits, headDim: D, groupSize: c.keyGroupSize, numGroups: c.numGroups, src: k, ...keys });
  const vg = D / c.valueGroupSize;
  const values = { codes: new Uint8Array(n * rowBytes), zero: new Float32Array(n * vg), scale: new Float32Array(n * vg) };
  native().kiviQuantizeValues({ bits: c.bits, headDim: D, groupSize: c.valueGroupSize, numTokens: n, src: v, ...values });
  const q = randn(c.queryHeads * D, r);
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

function expectClose(got: { o: Float32Array; lse: Float32Array }, ref: { o: Float32Array; lse: Float32Array }) {
  expect(worstRatio(got.o, ref.o, 1e-5 * Math.max(maxAbs(ref.o), 1e-30), 1e-5)).toBeLessThanOrEqual(1);
  expect(worstRatio(got.lse, ref.lse, 1e-5 * Math.max(1, maxAbs(ref.lse)), 1e-5)).toBeLessThanOrEqual(1);
}

const cases: Case[] = [];
for (const bits of [1, 2, 4] as KiviBits[])
  for (const queryHeads of [1, 4, 8])
    for (const headDim of [64, 128])
      for (const [keyGroupSize, valueGroupSize] of [[32, 32], [64, 64], [32, 64]] as const)
        cases.push({ bits, headDim, keyGroupSize, valueGroupSize, numGroups: 3, queryHeads, magnitude: 1 });
for (const bits of [1, 2, 4] as KiviBits[]) {
  cases.push({ bits, headDim: 32, keyGroupSize: 32, valueGroupSize: 32, numGroups: 2, queryHeads: 4, magnitude: 1 });
  // 96 tokens per key group: a full 64-token chunk then a partial one inside each group
  cases.push({ bits, headDim: 64, keyGroupSize: 96, valueGroupSize: 32, numGroups: 2, queryHeads: 2, magnitude: 1 });
  // large keys: a peaked softmax that exercises the running-max rescale
  cases.push({ bits, headDim: 128, keyGroupSize: 32, valueGroupSize: 64, numGroups: 5, queryHeads: 8, magnitude: 8 });
}

describe('kiviAttend: exact attention over the KIVI low-bit tail', () => {
  for (const [i, c] of cases.entries()) {
    const name = `${c.bits} bit, G ${c.queryHeads}, headDim ${c.headDim}, key group ${c.keyGroupSize}, value group ${c.valueGroupSize}, |k| ${c.magnitude}`;
    it(`matches the reference: ${name}`, () => {
      const b = build(c, 1000 + i);
      expectClose(run(c, b), reference(c, b));
      // With an exclusion list: random positions plus one whole key group.
      const ex = Array.from({ length: b.n }, (_, p) => p).filter((p) => b.r() < 0.3 || Math.floor(p / c.keyGroupSize) === 1);
      const exclude = Int32Array.from(ex);
      expectClose(run(c, b, exclude), reference(c, b, exclude));
    });
  }

  it('every token excluded (or no token at all) gives o = 0 and lse = -inf', () => {
    const c: Case = { bits: 2, headDim: 64, keyGroupSize: 32, valueGroupSize: 32, numGroups: 2, queryHeads: 4, magnitude: 1 };
    const b = build(c, 7);
    const all = run(c, b, Int32Array.from({ length: b.n }, (_, p) => p));
    expect(Array.from(all.lse)).toEqual([-Infinity, -Infinity, -Infinity, -Infinity]);
    expect(Array.from(all.o).every((x) => x === 0)).toBe(true);
    expect(reference(c, b, Int32Array.from({ length: b.n }, (_, p) => p)).lse[0]).toBe(-Infinity);
    const e: Case = { ...c, numGroups: 0 };
    const o = options(e, b);
    native().kiviAttend({ ...o, keyCodes: new Uint8Array(0), keyZero: new Float32Array(0), keyScale: new Float32Array(0), valueCodes: new Uint8Array(0), valueZero: new Float32Array(0), valueScale: new Float32Array(0) });
    expect(Array.from(o.lse as Float32Array)).toEqual([-Infinity, -Infinity, -Infinity, -Infinity]);
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
    expect(() => n.kiviAttend({ ...ok, keyZero: new Float32Array(64) })).toThrow(/Float32Array\(128\) for kiviAttend.keyZero/);
    expect(() => n.kiviAttend({ ...ok, keyScale: new Float64Array(128) as unknown as Float32Array })).toThrow(/Float32Array\(128\) for kiviAttend.keyScale but received Float64Array\(128\)/);
    expect(() => n.kiviAttend({ ...ok, valueCodes: new Uint8Array(16) })).toThrow(/Uint8Array\(1024\) for kiviAttend.valueCodes/);
    expect(() => n.kiviAttend({ ...ok, valueZero: new Float32Array(64) })).toThrow(/Float32Array\(128\) for kiviAttend.valueZero/);
    expect(() => n.kiviAttend({ ...ok, valueScale: new Float32Array(129) })).toThrow(/Float32Array\(128\) for kiviAttend.valueScale/);
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
