// Scalar fp16 / bf16 <-> fp32 conversions, bit-exact with src/kernels/half.ts (round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>

// The same functions serve the CUDA kernels (nvcc compiles them for host and device), so every 16-bit value a kernel
// stores has the bits the CPU kernels and the TypeScript references give.
#if defined(__CUDACC__)
#define KVOFF_HALF_FN static __host__ __device__ __forceinline__
#else
#define KVOFF_HALF_FN static inline
#endif

namespace kvoff {

KVOFF_HALF_FN uint32_t f32_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
KVOFF_HALF_FN float bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

KVOFF_HALF_FN float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

KVOFF_HALF_FN uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

KVOFF_HALF_FN float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    // subnormal: value = mant * 2^-24, exact in f32
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

KVOFF_HALF_FN uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  const int32_t exp = static_cast<int32_t>(absu >> 23) - 127;
  if (exp < -14) {
    // subnormal or zero in f16: round(abs / 2^-24) to nearest even
    if (exp < -25) return sign;  // below half of the smallest subnormal
    const uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
    const int shift = -exp - 1;  // 14..24: value = mant * 2^(exp-23); f16 units of 2^-24
    const uint32_t shifted = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    uint32_t r = shifted + ((rem > half || (rem == half && (shifted & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t mant = absu & 0x7fffffu;
  uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1;  // carry may bump the exponent: still correct
  return static_cast<uint16_t>(sign | h);
}

enum class KvDtype : int { F16 = 0, BF16 = 1 };

KVOFF_HALF_FN float half_to_f32(uint16_t h, KvDtype dt) { return dt == KvDtype::F16 ? f16_to_f32(h) : bf16_to_f32(h); }
KVOFF_HALF_FN uint16_t f32_to_half(float f, KvDtype dt) { return dt == KvDtype::F16 ? f32_to_f16(f) : f32_to_bf16(f); }

}  // namespace kvoff
