// Native KIVI quantize / dequantize / score against the TypeScript reference (bit-exact codes and fp16
// zero/scale), and the quantization error against the source bounded by the step plus fp16 rounding.
import { describe, expect, it } from 'vitest';
import { native } from '../src/native.js';
import { f16ToF32 } from '../src/kernels/half.js';
import {
  dequantizeKeysRef, dequantizeValuesRef, kiviMetaF16, kiviParams, kiviParamsF16, quantizeKeysRef, quantizeValuesRef, scoreKeysRef,
  type KiviBits,
} from '../src/kernels/kivi.js';
import { randn, rng, worstRatio, maxAbs } from './helpers.js';

const bitsList: KiviBits[] = [1, 2, 4];

function keysNative(src: Float32Array, numGroups: number, groupSize: number, headDim: number, bits: KiviBits) {
  const codes = new Uint8Array((numGroups * groupSize * headDim * bits) / 8);
  const zero = new Uint16Array(numGroups * headDim); // fp16 bits
  const scale = new Uint16Array(numGroups * headDim);
  native().kiviQuantizeKeys({ bits, headDim, groupSize, numGroups, src, codes, zero, scale });
  return { codes, zero, scale };
}

/**
 * Largest |dequant - x| allowed for an element of a group stored with fp16 zero/scale bits (zero, scale):
 * half a step (1.5 steps at 1 bit, whose two levels sit at the quartiles) plus what rounding the parameters
 * to fp16 can move the levels: 2^-11 relative on the zero and on each of the 2^b - 1 steps, and half of fp16's
 * smallest subnormal step (2^-25) where a parameter is subnormal. Only for |x| <= 65504, where no clamping applies.
 */
function errorBound(zero: number, scale: number, bits: KiviBits): number {
  const z = f16ToF32(zero), s = f16ToF32(scale);
  const levels = (1 << bits) - 1;
  return (bits === 1 ? 1.5 : 0.5) * s + (Math.abs(z) + levels * s) * 2 ** -11 + (levels + 1) * 2 ** -25;
}

describe('KIVI low-bit tier', () => {
  it('SpeCache 1-bit parameters put the two levels at the quartiles', () => {
    expect(kiviParams(0, 4, 1)).toEqual({ zero: 1, scale: 2 });
    expect(kiviParams(-1, 2, 2)).toEqual({ zero: -1, scale: 1 });
    expect(kiviParams(0, 15, 4)).toEqual({ zero: 0, scale: 1 });
  });

  it('zero and scale are stored as fp16: rounded to nearest even, clamped to +-65504, NaN canonical', () => {
    expect(kiviParamsF16(0, 4, 1)).toEqual({ zero: 0x3c00, scale: 0x4000, zf: 1, sf: 2 }); // exact in fp16
    const p = kiviParamsF16(0.1, 0.4, 2); // neither 0.1 nor 0.1 = (0.4 - 0.1) / 3 is exact in fp16
    expect(p.zf).toBe(0.0999755859375);
    expect(p.sf).toBe(0.0999755859375);
    expect(kiviMetaF16(65519)).toBe(0x7bff); // rounds down to 65504
    expect(kiviMetaF16(1e6)).toBe(0x7bff); // clamped, not infinity
    expect(kiviMetaF16(-Infinity)).toBe(0xfbff);
    expect(kiviMetaF16(2 ** -26)).toBe(0); // below half of the smallest subnormal: a zero scale
    expect(kiviMetaF16(2 ** -24)).toBe(1); // the smallest subnormal
    expect(kiviMetaF16(Number.NaN)).toBe(0x7e00);
    expect(kiviParamsF16(-1e30, 1e30, 4)).toMatchObject({ zf: -65504, sf: 65504 });
  });

  for (const bits of bitsList)
    for (const groupSize of [32, 64])
      for (const headDim of [32, 64, 128])
        it(`keys per channel: ${bits} bit, group ${groupSize}, headDim ${headDim}`, () => {
          const r = rng(bits * 1000 + groupSize + headDim);
          const numGroups = 3;
          const src = randn(numGroups * groupSize * headDim, r, 2);
          src[5] = 60000; // an fp16-limit outlier in one channel
          src[7] = -1e30; // far outside fp16: its channel's zero and scale clamp to +-65504
          src[headDim + 9] = 1e-7; // a tiny outlier next to ordinary values: fp16 rounding of the zero matters
          const ref = quantizeKeysRef(src, numGroups, groupSize, headDim, bits);
          const got = keysNative(src, numGroups, groupSize, headDim, bits);
          expect(got.codes).toEqual(ref.codes);
          expect(got.zero).toEqual(ref.zero);
          expect(got.scale).toEqual(ref.scale);
          const out = new Float32Array(src.length);
          native().kiviDequantizeKeys({ bits, headDim, groupSize, numGroups, ...got, out });
          const deq = dequantizeKeysRef(ref, numGroups, groupSize, headDim, bits);
          expect(out).toEqual(deq);
          // The error of every representable element is bounded by its (group, channel)'s step and fp16 rounding;
          // the one beyond fp16 lands on the clamped end.
          expect(deq[7]).toBe(-65504);
          for (let g = 0; g < numGroups; g++)
            for (let t = 0; t < groupSize; t++)
              for (let c = 0; c < headDim; c++) {
                const i = (g * groupSize + t) * headDim + c;
                if (Math.abs(src[i]) > 65504) continue;
                const bound = errorBound(ref.zero[g * headDim + c], ref.scale[g * headDim + c], bits);
                expect(Math.abs(deq[i] - src[i])).toBeLessThanOrEqual(bound * (1 + 1e-5));
              }
        });

  for (const bits of bitsList)
    for (const [groupSize, headDim] of [[32, 32], [32, 64], [64, 64], [32, 128], [64, 128]] as const)
      it(`values per token: ${bits} bit, group ${groupSize}, headDim ${headDim}`, () => {
        const r = rng(bits * 77 + groupSize * 3 + headDim);
        const numTokens = 37; // not a multiple of anything
        const src = randn(numTokens * headDim, r, 0.5);
        src[3] = 65504;
        const ref = quantizeValuesRef(src, numTokens, groupSize, headDim, bits);
        const codes = new Uint8Array((numTokens * headDim * bits) / 8);
        const zero = new Uint16Array((numTokens * headDim) / groupSize); // fp16 bits
        const scale = new Uint16Array(zero.length);
        native().kiviQuantizeValues({ bits, headDim, groupSize, numTokens, src, codes, zero, scale });
        expect(codes).toEqual(ref.codes);
        expect(zero).toEqual(ref.zero);
        expect(scale).toEqual(ref.scale);
        const out = new Float32Array(src.length);
        native().kiviDequantizeValues({ bits, headDim, groupSize, numTokens, codes, zero, scale, out });
        expect(out).toEqual(dequantizeValuesRef(ref, numTokens, groupSize, headDim, bits));
        for (let i = 0; i < src.length; i++) {
          const j = Math.floor(i / groupSize); // [numTokens, headDim / groupSize] index of i's group
          expect(Math.abs(out[i] - src[i])).toBeLessThanOrEqual(errorBound(zero[j], scale[j], bits) * (1 + 1e-5));
        }
      });

  it('constant groups (max = min) quantize to code 0 and dequantize to the fp16 of the constant', () => {
    for (const [v, expected] of [[3.25, 3.25], [0.1, 0.0999755859375], [1e5, 65504]] as const) {
      const src = new Float32Array(32 * 64).fill(v);
      const q = keysNative(src, 1, 32, 64, 2);
      expect(Array.from(q.codes).every((c) => c === 0)).toBe(true);
      const out = new Float32Array(src.length);
      native().kiviDequantizeKeys({ bits: 2, headDim: 64, groupSize: 32, numGroups: 1, ...q, out });
      expect(Array.from(out).every((x) => x === expected)).toBe(true);
    }
  });

  it('a range too narrow for an fp16 scale gives scale 0, codes 0 and the group at its zero', () => {
    // [64 tokens, 32]: 2^-10 and its f32 neighbour 2^-10 + 2^-33; (max - min) / levels is far below 2^-25
    const src = Float32Array.from({ length: 64 * 32 }, (_, i) => 2 ** -10 + (i % 2) * 2 ** -33);
    for (const bits of bitsList) {
      const codes = new Uint8Array((64 * 32 * bits) / 8);
      const zero = new Uint16Array(64), scale = new Uint16Array(64);
      native().kiviQuantizeValues({ bits, headDim: 32, groupSize: 32, numTokens: 64, src, codes, zero, scale });
      expect(Array.from(scale).every((s) => s === 0)).toBe(true);
      expect(Array.from(codes).every((c) => c === 0)).toBe(true);
      const out = new Float32Array(src.length);
      native().kiviDequantizeValues({ bits, headDim: 32, groupSize: 32, numTokens: 64, codes, zero, scale, out });
      expect(Array.from(out).every((x) => x === 2 ** -10)).toBe(true); // the zero, exact in fp16: error <= the range
      const ref = quantizeValuesRef(src, 64, 32, 32, bits);
      expect(zero).toEqual(ref.zero);
      expect(codes).toEqual(ref.codes);
    }
  });

  for (const bits of bitsList)
    for (const queryHeads of [1, 4, 8])
      it(`GQA-averaged scores over quantized keys: ${bits} bit, ${queryHeads} query heads`, () => {
        const r = rng(bits * 31 + queryHeads);
        const headDim = 64, groupSize = 32, numGroups = 4;
        const src = randn(numGroups * groupSize * headDim, r);
        const keys = keysNative(src, numGroups, groupSize, headDim, bits);
        const q = randn(queryHeads * headDim, r);
        const out = new Float32Array(numGroups * groupSize);
        native().kiviScoreKeys({ bits, headDim, groupSize, numGroups, queryHeads, q, ...keys, out });
        const ref = scoreKeysRef(q, queryHeads, keys, numGroups, groupSize, headDim, bits);
        expect(worstRatio(out, ref, 1e-5 * maxAbs(ref), 1e-5)).toBeLessThanOrEqual(1);
      });
});
