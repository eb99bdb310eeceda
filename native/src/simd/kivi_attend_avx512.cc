// AVX-512 kernel of attention over the KIVI low-bit tail (16 fp32 lanes). Compiled with the AVX-512 flags;
// only called when the active kernel level is AVX-512 and headDim is a multiple of 16.
#include <immintrin.h>
#include <math.h>

#include <cstring>
#include <type_traits>

// Every header the included templates need comes first, outside this TU's namespace.
#include "simd/exp_poly.h"
#include "simd/kernels.h"
#include "simd/kivi_attend.h"

namespace kvoff_kivi_avx512 {
#include "simd/exp_vec.h"
#include "simd/with_gn.h"

struct Ops {
  using V = __m512;
  static constexpr size_t kLanes = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V exp(V x) { return exp16(x); }
  static V cvt_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static float f16(uint16_t h) { return _cvtsh_ss(h); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static float hmax(V v) { return _mm512_reduce_max_ps(v); }
  // Codes of channels [c, c + 16) of a packed row as floats: their 2B bytes loaded once, each lane
  // given the 32-bit word holding its field (only at 4 bits do they span two words) and shifted to it.
  template <int B>
  static V unpack(const uint8_t* row, size_t c) {
    const uint8_t* p = row + c * B / 8;
    __m512i v;
    if (B == 4) {
      uint64_t w = 0;
      std::memcpy(&w, p, 8);
      const __m512i words = _mm512_castsi128_si512(_mm_cvtsi64_si128(static_cast<long long>(w)));
      v = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), words);
      v = _mm512_srlv_epi32(v, _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28));
    } else {
      uint32_t w = 0;
      std::memcpy(&w, p, 2 * B);
      const __m512i sh = B == 2 ? _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
                                : _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      v = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(w)), sh);
    }
    return _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32((1 << B) - 1)));
  }
  // Lane t = the sum of a[t]'s lanes, for 16 vectors at once: pairwise adds within 128-bit lanes (unpack
  // ps, then pd), then a 4x4 transpose of 128-bit lanes; 45 shuffles/adds for 16 sums.
  static V reduce(const V* a) {
    V s1[8];
    for (int i = 0; i < 8; ++i) s1[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    V s2[4];  // 128-bit lane k of s2[i]: [a[4i], a[4i+1], a[4i+2], a[4i+3]] each summed over its lane k
    for (int i = 0; i < 4; ++i) {
      const __m512d x = _mm512_castps_pd(s1[2 * i]), y = _mm512_castps_pd(s1[2 * i + 1]);
      s2[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    const V u0 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[0], s2[1], 0x44), _mm512_shuffle_f32x4(s2[0], s2[1], 0xEE));
    const V u1 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2], s2[3], 0x44), _mm512_shuffle_f32x4(s2[2], s2[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88), _mm512_shuffle_f32x4(u0, u1, 0xDD));
  }
};

#include "simd/kivi_attend_impl.h"
}  // namespace kvoff_kivi_avx512

namespace kvoff {
void kivi_attend_avx512(const KiviAttnTask& t) { kvoff_kivi_avx512::kivi_attend_dispatch<kvoff_kivi_avx512::Ops>(t); }
}  // namespace kvoff
