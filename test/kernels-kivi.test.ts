// Native KIVI quantize / dequantize / score against the TypeScript reference (bit-exact codes).
import { describe, expect, it } from 'vitest';
import { native } from '../src/native.js';
import {
  dequantizeKeysRef, dequantizeValuesRef, kiviParams, quantizeKeysRef, quantizeValuesRef, scoreKeysRef, type KiviBits,
} from '../src/kernels/kivi.js';
import { randn, rng, worstRatio, maxAbs } from './helpers.js';

const bitsList: KiviBits[] = [1, 2, 4];

function keysNative(src: Float32Array, numGroups: number, groupSize: number, headDim: number, bits: KiviBits) {
  const codes = new Uint8Array((numGroups * groupSize * headDim * bits) / 8);
  const zero = new Float32Array(numGroups * headDim);
  const scale = new Float32Array(numGroups * headDim);
  native().kiviQuantizeKeys({ bits, headDim, groupSize, numGroups, src, codes, zero, scale });
  return { codes, zero, scale };
}

describe('KIVI low-bit tier', () => {
  it('SpeCache 1-bit parameters put the two levels at the quartiles', () => {
    expect(kiviParams(0, 4, 1)).toEqual({ zero: 1, scale: 2 });
    expect(kiviParams(-1, 2, 2)).toEqual({ zero: -1, scale: 1 });
    expect(kiviParams(0, 15, 4)).toEqual({ zero: 0, scale: 1 });
  });

  for (const bits of bitsList)
    for (const groupSize of [32, 64])
      for (const headDim of [32, 64, 128])
        it(`keys per channel: ${bits} bit, group ${groupSize}, headDim ${headDim}`, () => {
          const r = rng(bits * 1000 + groupSize + headDim);
          const numGroups = 3;
          const src = randn(numGroups * groupSize * headDim, r, 2);
          src[5] = 60000; // an fp16-limit outlier in one channel
          src[7] = -1e30; // far outside fp16: quantization runs on fp32 inputs
          const ref = quantizeKeysRef(src, numGroups, groupSize, headDim, bits);
          const got = keysNative(src, numGroups, groupSize, headDim, bits);
          expect(got.codes).toEqual(ref.codes);
          expect(got.zero).toEqual(ref.zero);
          expect(got.scale).toEqual(ref.scale);
          const out = new Float32Array(src.length);
          native().kiviDequantizeKeys({ bits, headDim, groupSize, numGroups, ...got, out });
          const deq = dequantizeKeysRef(ref, numGroups, groupSize, headDim, bits);
          expect(out).toEqual(deq);
          // The error of every element is bounded by the step of its (group, channel).
          for (let g = 0; g < numGroups; g++)
            for (let t = 0; t < groupSize; t++)
              for (let c = 0; c < headDim; c++) {
                const i = (g * groupSize + t) * headDim + c;
                const step = ref.scale[g * headDim + c];
                const bound = bits === 1 ? step * 0.5 + (step * 1.0) : step * 0.5;
                expect(Math.abs(deq[i] - src[i])).toBeLessThanOrEqual(bound * (1 + 1e-5) + 1e-30);
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
        const zero = new Float32Array((numTokens * headDim) / groupSize);
        const scale = new Float32Array(zero.length);
        native().kiviQuantizeValues({ bits, headDim, groupSize, numTokens, src, codes, zero, scale });
        expect(codes).toEqual(ref.codes);
        expect(zero).toEqual(ref.zero);
        expect(scale).toEqual(ref.scale);
        const out = new Float32Array(src.length);
        native().kiviDequantizeValues({ bits, headDim, groupSize, numTokens, codes, zero, scale, out });
        expect(out).toEqual(dequantizeValuesRef(ref, numTokens, groupSize, headDim, bits));
      });

  it('constant groups (max = min) quantize to code 0 and dequantize exactly', () => {
    const src = new Float32Array(32 * 64).fill(3.25);
    const q = keysNative(src, 1, 32, 64, 2);
    const out = new Float32Array(src.length);
    native().kiviDequantizeKeys({ bits: 2, headDim: 64, groupSize: 32, numGroups: 1, ...q, out });
    expect(Array.from(out).every((x) => x === 3.25)).toBe(true);
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
