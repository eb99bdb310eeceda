// Reference KIVI quantization (keys per channel over token groups, values per token over channel
// groups) at 1, 2 and 4 bits with fp16 zero/scale, and GQA-averaged scores over quantized keys. fp32 steps
// via Math.fround, so codes and fp16 parameters are bit-exact with native/src/kivi.h.
import { f16ToF32, f32ToF16 } from './half.js';

const fr = Math.fround;

export type KiviBits = 1 | 2 | 4;

export function kiviParams(mn: number, mx: number, bits: KiviBits): { zero: number; scale: number } {
  if (bits === 1) return { zero: fr(fr(fr(3 * mn) + mx) * 0.25), scale: fr(fr(mx - mn) * 0.5) };
  return { zero: mn, scale: fr(fr(mx - mn) / ((1 << bits) - 1)) };
}

/** fp16's largest finite value: stored zero/scale are clamped to +-this. */
export const KIVI_META_MAX = 65504;

/** One zero or scale as stored: clamped to +-65504, rounded to nearest-even fp16; NaN as 0x7e00. Returns the fp16 bits. */
export function kiviMetaF16(v: number): number {
  if (Number.isNaN(v)) return 0x7e00;
  return f32ToF16(v > KIVI_META_MAX ? KIVI_META_MAX : v < -KIVI_META_MAX ? -KIVI_META_MAX : v);
}

/**
 * The stored parameters of a group with range [mn, mx]: kiviParams in f32, each rounded to fp16 (kiviMetaF16).
 * zero/scale are fp16 bits; zf/sf their f32 values, from which the codes are computed so that dequantization
 * lands on the level each code was chosen for.
 */
export function kiviParamsF16(mn: number, mx: number, bits: KiviBits): { zero: number; scale: number; zf: number; sf: number } {
  const p = kiviParams(mn, mx, bits);
  const zero = kiviMetaF16(p.zero);
  const scale = kiviMetaF16(p.scale);
  return { zero, scale, zf: f16ToF32(zero), sf: f16ToF32(scale) };
}

export function kiviCode(x: number, zero: number, scale: number, bits: KiviBits): number {
  const levels = (1 << bits) - 1;
  if (!(scale > 0)) return 0;
  const v = Math.floor(fr(fr(fr(x - zero) / scale) + 0.5));
  if (!(v >= 0)) return 0;
  return v > levels ? levels : v;
}

export function kiviDequant(code: number, zero: number, scale: number): number {
  return fr(zero + fr(scale * code));
}

function put(row: Uint8Array, at: number, i: number, bits: number, code: number): void {
  const bit = i * bits;
  row[at + (bit >> 3)] |= code << (bit & 7);
}

function get(row: Uint8Array, at: number, i: number, bits: number): number {
  const bit = i * bits;
  return (row[at + (bit >> 3)] >> (bit & 7)) & ((1 << bits) - 1);
}

export interface QuantKeys {
  codes: Uint8Array; // [numGroups, groupSize, headDim * bits / 8]
  zero: Uint16Array; // fp16 bits [numGroups, headDim]
  scale: Uint16Array; // fp16 bits [numGroups, headDim]
}

/** src: [numGroups, groupSize, headDim]. */
export function quantizeKeysRef(src: Float32Array, numGroups: number, groupSize: number, headDim: number, bits: KiviBits): QuantKeys {
  const rowBytes = (headDim * bits) / 8;
  const codes = new Uint8Array(numGroups * groupSize * rowBytes);
  const zero = new Uint16Array(numGroups * headDim);
  const scale = new Uint16Array(numGroups * headDim);
  for (let g = 0; g < numGroups; g++) {
    for (let c = 0; c < headDim; c++) {
      let mn = Infinity;
      let mx = -Infinity;
      for (let t = 0; t < groupSize; t++) {
        const v = src[(g * groupSize + t) * headDim + c];
        if (t === 0) { mn = v; mx = v; continue; }
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      const p = kiviParamsF16(mn, mx, bits);
      zero[g * headDim + c] = p.zero;
      scale[g * headDim + c] = p.scale;
      for (let t = 0; t < groupSize; t++) {
        const code = kiviCode(src[(g * groupSize + t) * headDim + c], p.zf, p.sf, bits);
        put(codes, (g * groupSize + t) * rowBytes, c, bits, code);
      }
    }
  }
  return { codes, zero, scale };
}

export function dequantizeKeysRef(q: QuantKeys, numGroups: number, groupSize: number, headDim: number, bits: KiviBits): Float32Array {
  const rowBytes = (headDim * bits) / 8;
  const out = new Float32Array(numGroups * groupSize * headDim);
  for (let g = 0; g < numGroups; g++)
    for (let t = 0; t < groupSize; t++)
      for (let c = 0; c < headDim; c++)
        out[(g * groupSize + t) * headDim + c] = kiviDequant(get(q.codes, (g * groupSize + t) * rowBytes, c, bits), f16ToF32(q.zero[g * headDim + c]), f16ToF32(q.scale[g * headDim + c]));
  return out;
}

export interface QuantValues {
  codes: Uint8Array; // [numTokens, headDim * bits / 8]
  zero: Uint16Array; // fp16 bits [numTokens, headDim / groupSize]
  scale: Uint16Array; // fp16 bits [numTokens, headDim / groupSize]
}

/** src: [numTokens, headDim]; groups of groupSize channels per token. */
export function quantizeValuesRef(src: Float32Array, numTokens: number, groupSize: number, headDim: number, bits: KiviBits): QuantValues {
  const rowBytes = (headDim * bits) / 8;
  const ng = headDim / groupSize;
  const codes = new Uint8Array(numTokens * rowBytes);
  const zero = new Uint16Array(numTokens * ng);
  const scale = new Uint16Array(numTokens * ng);
  for (let t = 0; t < numTokens; t++) {
    for (let j = 0; j < ng; j++) {
      let mn = src[t * headDim + j * groupSize];
      let mx = mn;
      for (let c = 1; c < groupSize; c++) {
        const v = src[t * headDim + j * groupSize + c];
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      const p = kiviParamsF16(mn, mx, bits);
      zero[t * ng + j] = p.zero;
      scale[t * ng + j] = p.scale;
      for (let c = 0; c < groupSize; c++) put(codes, t * rowBytes, j * groupSize + c, bits, kiviCode(src[t * headDim + j * groupSize + c], p.zf, p.sf, bits));
    }
  }
  return { codes, zero, scale };
}

export function dequantizeValuesRef(q: QuantValues, numTokens: number, groupSize: number, headDim: number, bits: KiviBits): Float32Array {
  const rowBytes = (headDim * bits) / 8;
  const ng = headDim / groupSize;
  const out = new Float32Array(numTokens * headDim);
  for (let t = 0; t < numTokens; t++)
    for (let c = 0; c < headDim; c++)
      out[t * headDim + c] = kiviDequant(get(q.codes, t * rowBytes, c, bits), f16ToF32(q.zero[t * ng + Math.floor(c / groupSize)]), f16ToF32(q.scale[t * ng + Math.floor(c / groupSize)]));
  return out;
}

/** Mean over the query heads of q_g · dequant(K)_t, in fp64: q [queryHeads, headDim] -> [numGroups * groupSize]. */
export function scoreKeysRef(q: Float32Array, queryHeads: number, keys: QuantKeys, numGroups: number, groupSize: number, headDim: number, bits: KiviBits): Float32Array {
  const k = dequantizeKeysRef(keys, numGroups, groupSize, headDim, bits);
  const out = new Float32Array(numGroups * groupSize);
  for (let t = 0; t < numGroups * groupSize; t++) {
    let s = 0;
    for (let g = 0; g < queryHeads; g++) for (let c = 0; c < headDim; c++) s += q[g * headDim + c] * k[t * headDim + c];
    out[t] = s / queryHeads;
  }
  return out;
}
