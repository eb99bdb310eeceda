// Reference fp16 / bf16 <-> fp32 conversions, bit-exact with native/src/half.h (round to nearest even).

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBf16(x: number): number {
  f32[0] = x;
  let u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x0040) & 0xffff; // quiet NaN
  u = (u + 0x7fff + ((u >>> 16) & 1)) >>> 0;
  return u >>> 16;
}

export function bf16ToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0];
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function f32ToF16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  const sign = (u >>> 16) & 0x8000;
  const abs = u & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00;
  if (abs >= 0x477ff000) return sign | 0x7c00;
  const exp = (abs >>> 23) - 127;
  if (exp < -14) {
    if (exp < -25) return sign;
    const mant = (abs & 0x7fffff) | 0x800000;
    const shift = -exp - 1;
    const shifted = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    const r = shifted + (rem > half || (rem === half && shifted & 1) ? 1 : 0);
    return sign | r;
  }
  let h = ((exp + 15) << 10) | ((abs & 0x7fffff) >>> 13);
  const rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h += 1;
  return sign | h;
}

export type HalfDtype = 'f16' | 'bf16';

export function toHalf(x: number, dtype: HalfDtype): number {
  return dtype === 'f16' ? f32ToF16(x) : f32ToBf16(x);
}

export function fromHalf(h: number, dtype: HalfDtype): number {
  return dtype === 'f16' ? f16ToF32(h) : bf16ToF32(h);
}

/** Rounds every element through the storage dtype: what the KV cache will hold. */
export function roundThrough(src: Float32Array, dtype: HalfDtype): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = fromHalf(toHalf(src[i], dtype), dtype);
  return out;
}
