// AVX2 + FMA + F16C kernel of attention over the KIVI low-bit tail (8 fp32 lanes). Compiled with the AVX2
// flags; only called when the active kernel level is AVX2 or AVX-512 and headDim is a multiple of 8.
#include <immintrin.h>
#include <math.h>

#include <cstring>
#include <type_traits>

// Every header the included templates need comes first, outside this TU's namespace.
#include "simd/exp_poly.h"
#include "simd/kernels.h"
#include "simd/kivi_attend.h"

namespace kvoff_kivi_avx2 {
#include "simd/exp_vec.h"
#include "simd/with_gn.h"

struct Ops {
  using V = __m256;
  static constexpr size_t kLanes = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V exp(V x) { return exp8(x); }
  static V cvt_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static float f16(uint16_t h) { return _cvtsh_ss(h); }
  static float hsum(V v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
  }
  static float hmax(V v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_shuffle_ps(x, x, 1)));
  }
  // Codes of channels [c, c + 8) of a packed row as floats: their B bytes broadcast, each lane shifted to its field.
  template <int B>
  static V unpack(const uint8_t* row, size_t c) {
    uint32_t w = 0;
    std::memcpy(&w, row + c * B / 8, B);
    const __m256i sh = B == 4 ? _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)
                     : B == 2 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
                              : _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), sh), _mm256_set1_epi32((1 << B) - 1));
    return _mm256_cvtepi32_ps(v);
  }
  // Lane t = the sum of a[t]'s lanes: 8 dot products finished with 6 hadds instead of 8 separate reductions.
  static V reduce(const V* a) {
    const V h0 = _mm256_hadd_ps(a[0], a[1]), h1 = _mm256_hadd_ps(a[2], a[3]);
    const V h2 = _mm256_hadd_ps(a[4], a[5]), h3 = _mm256_hadd_ps(a[6], a[7]);
    const V i0 = _mm256_hadd_ps(h0, h1);  // 128-bit half k: [a0, a1, a2, a3] summed over half k of each
    const V i1 = _mm256_hadd_ps(h2, h3);  // the same for a4..a7
    return _mm256_add_ps(_mm256_permute2f128_ps(i0, i1, 0x21), _mm256_blend_ps(i0, i1, 0xF0));
  }
};

#include "simd/kivi_attend_impl.h"
}  // namespace kvoff_kivi_avx2

namespace kvoff {
void kivi_attend_avx2(const KiviAttnTask& t) { kvoff_kivi_avx2::kivi_attend_dispatch<kvoff_kivi_avx2::Ops>(t); }
}  // namespace kvoff
