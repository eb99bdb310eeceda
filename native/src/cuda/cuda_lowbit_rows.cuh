// Shared by the low-bit kernels (cuda_lowbit.cu, cuda_lowbit_attend.cu): packed code rows as f32, warp reductions,
// fp16 loads and the template dispatch of the launch helpers. Device-only; included after cuda_runtime.h.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <type_traits>

#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"

namespace kvoff {
namespace {

// ---- Packed code rows ----

// A load through the read-only path from global memory, or a plain one where SHARED (a staged copy in shared memory,
// which __ldg must not be given).
template <bool SHARED, typename T>
__device__ __forceinline__ T ld_ro(const T* p) {
  if constexpr (SHARED) return *p;
  else return __ldg(p);
}

// A row of ROWB code bytes (a multiple of 4) as 32-bit words, with the widest loads its size allows; rows
// start at multiples of ROWB from a 256-aligned buffer (or a 16-aligned stage), so those loads are aligned.
template <int ROWB, bool SHARED = false>
__device__ __forceinline__ void load_row(const uint8_t* p, uint32_t (&w)[ROWB / 4]) {
  if (ROWB % 16 == 0) {
#pragma unroll
    for (int i = 0; i < ROWB / 16; ++i) {
      const uint4 v = ld_ro<SHARED>(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  } else if (ROWB % 8 == 0) {
#pragma unroll
    for (int i = 0; i < ROWB / 8; ++i) {
      const uint2 v = ld_ro<SHARED>(reinterpret_cast<const uint2*>(p) + i);
      w[2 * i] = v.x, w[2 * i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < ROWB / 4; ++i) w[i] = ld_ro<SHARED>(reinterpret_cast<const uint32_t*>(p) + i);
  }
}

// A small unsigned integer (a code, < 2^23) as f32, exactly: OR it into the mantissa of 2^23 and subtract 2^23.
// Two full-rate ops instead of I2F, which runs at a quarter of the FP32 rate and would bound the dot products.
__device__ __forceinline__ float code_f(uint32_t c) { return __uint_as_float(0x4b000000u | c) - 8388608.0f; }

// The code at bit `sh` of w as f32 times 1 / kCodeHalf<BITS>: for 1 bit, 2 * bit (0 or 2.0f: the bit moved to bit 30,
// two integer ops instead of four), the other factor of each product pre-multiplied by 0.5 (exact), so every product
// w * code is unchanged.
template <int BITS>
constexpr float kCodeHalf = BITS == 1 ? 0.5f : 1.f;
template <int BITS>
__device__ __forceinline__ float code_x(uint32_t w, int sh) {
  if constexpr (BITS == 1) {
    const uint32_t v = sh <= 30 ? (w << (30 - sh)) : (w >> (sh - 30));
    return __uint_as_float(v & 0x40000000u);
  } else {
    return code_f((w >> sh) & ((1u << BITS) - 1));
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float h2f_hw(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// ---- Launch helpers ----

template <typename F>
cudaError_t by_bits(uint32_t bits, F&& f) {
  switch (bits) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    default: return f(std::integral_constant<int, 4>());
  }
}

template <typename F>
cudaError_t by_dim(uint32_t D, F&& f) {
  switch (D) {
    case 32: return f(std::integral_constant<int, 32>());
    case 64: return f(std::integral_constant<int, 64>());
    case 128: return f(std::integral_constant<int, 128>());
    default: return f(std::integral_constant<int, 256>());
  }
}

template <typename F>
cudaError_t by_mg(uint32_t G, F&& f) {
  if (G <= 1) return f(std::integral_constant<int, 1>());
  if (G <= 2) return f(std::integral_constant<int, 2>());
  if (G <= 4) return f(std::integral_constant<int, 4>());
  if (G <= 8) return f(std::integral_constant<int, 8>());
  return f(std::integral_constant<int, 16>());
}

uint8_t* at(const std::shared_ptr<cudadev::DevArena>& a, const DevRef& r) { return static_cast<uint8_t*>(a->ptr) + r.offset; }

}  // namespace
}  // namespace kvoff
