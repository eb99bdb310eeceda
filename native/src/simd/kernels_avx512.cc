// AVX-512 (F, BW, VL, DQ) kernels (16 fp32 lanes); only called when the CPU has AVX-512F and BW.
#include <immintrin.h>

#include <cmath>

#include "simd/exp_poly.h"
#include "simd/kernels.h"
#include "simd/prefetch_cursor.h"

namespace kvoff_avx512 {
#include "simd/with_gn.h"
#include "simd/exp_vec.h"  // exp8 / exp16, shared with the KIVI kernels
struct Ops {
  static constexpr int kLanes = 16;
  // How a row's 16-bit values become fp32 lanes (the CV template argument below).
  static constexpr int kF16 = 0, kBF16 = 1;
  // bf16 in permuted order: each 32-channel block as its 16 even channels, then its 16 odd ones. One
  // 64-byte load of the block gives both: evens shifted into the high half of each 32-bit lane, odds
  // masked there. That is one vector op per 16 values instead of a widening shuffle plus a shift. q
  // and the output accumulator are kept in the same order (permute_blocks), so dot products and
  // sums are unchanged.
  static constexpr int kBF16Perm = 2;
  static constexpr bool kPermBf16 = true;
  static constexpr bool kSplitSoftmax = false;
  static constexpr bool kBlockedQ = false;  // blocked q was slower on host A: bench/native/avx512-blocked-q-experiment.patch
  static constexpr int kLongChunksFromG = 8;  // 32-token chunks from GQA 8; at GQA 4 host A was mixed (README)
  // Channels [c, c + 16) of the row at base, in CV's order (c a multiple of 16).
  template <int CV>
  static inline __m512 cvt(const uint16_t* base, int c) {
    if constexpr (CV == kBF16Perm) {
      const __m512i x = _mm512_loadu_si512(base + (c & ~31));
      if (c & 16) return _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
      return _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    }
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + c));
    if constexpr (CV == kBF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
  }
  // s[g*C + j] = scale * q_g . K_j for GN query heads starting at g0; each K row is converted once.
  template <int CV, int GN>
  static void scores_n(const float* q, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& pf) {
    for (int j = 0; j < n; ++j) {
      if (!live[j]) continue;
      const uint16_t* k = reinterpret_cast<const uint16_t*>(rows + j * rowBytes);
      __m512 acc[GN];
      for (int i = 0; i < GN; ++i) acc[i] = _mm512_setzero_ps();
      for (int c = 0; c < D; c += 16) {
        pf.step();
        const __m512 kv = cvt<CV>(k, c);
        for (int i = 0; i < GN; ++i) acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + (g0 + i) * D + c), kv, acc[i]);
      }
      for (int i = 0; i < GN; ++i) s[(g0 + i) * C + j] = _mm512_reduce_add_ps(acc[i]) * scale;
    }
  }
  // Sums each of 16 vectors: lane i of the result = horizontal sum of v[i]. 45 shuffles/adds for
  // 16 sums instead of ~8 per sum with separate reductions.
  static inline __m512 reduce16(const __m512* v) {
    __m512 s1[8];
    for (int i = 0; i < 8; ++i)
      s1[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    __m512 s2[4];  // 128-bit lane L of s2[i] = [sum_L v[4i], sum_L v[4i+1], sum_L v[4i+2], sum_L v[4i+3]]
    for (int i = 0; i < 4; ++i) {
      const __m512d c = _mm512_castps_pd(s1[2 * i]), d = _mm512_castps_pd(s1[2 * i + 1]);
      s2[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    const __m512 f01 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[0], s2[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(s2[0], s2[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 f23 = _mm512_add_ps(_mm512_shuffle_f32x4(s2[2], s2[3], _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(s2[2], s2[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(f01, f23, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(f01, f23, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // Writes r (lane u*GN + i: token u, head i) to s[i*C + u], -inf for tokens not live. Vector ops in
  // place of 16 scalar loads, tests and stores: those cost about 10 cycles a token at GQA 8, D64 (EPYC
  // dev VM, in L2). A permute puts each head's TP tokens side by side, then each goes out as one store.
  template <int TP, int GN>
  static inline void store_scores(__m512 r, const bool* live, float* s, int C) {
    __mmask16 keep = 0;
    for (int u = 0; u < TP; ++u)
      if (live[u]) keep |= static_cast<__mmask16>(((1u << GN) - 1u) << (u * GN));
    r = _mm512_mask_blend_ps(keep, _mm512_set1_ps(-INFINITY), r);
    alignas(64) int32_t idx[16];
    for (int k = 0; k < 16; ++k) idx[k] = (k % TP) * GN + k / TP;  // out lane i*TP + u <- in lane u*GN + i
    const __m512 h = _mm512_permutexvar_ps(_mm512_load_si512(idx), r);
    if constexpr (TP == 2) {  // 128-bit quarter q: heads 2q and 2q + 1, two tokens each
      const __m128 x0 = _mm512_castps512_ps128(h), x1 = _mm512_extractf32x4_ps(h, 1);
      const __m128 x2 = _mm512_extractf32x4_ps(h, 2), x3 = _mm512_extractf32x4_ps(h, 3);
      _mm_storel_pi(reinterpret_cast<__m64*>(s), x0);
      _mm_storeh_pi(reinterpret_cast<__m64*>(s + C), x0);
      _mm_storel_pi(reinterpret_cast<__m64*>(s + 2 * C), x1);
      _mm_storeh_pi(reinterpret_cast<__m64*>(s + 3 * C), x1);
      _mm_storel_pi(reinterpret_cast<__m64*>(s + 4 * C), x2);
      _mm_storeh_pi(reinterpret_cast<__m64*>(s + 5 * C), x2);
      _mm_storel_pi(reinterpret_cast<__m64*>(s + 6 * C), x3);
      _mm_storeh_pi(reinterpret_cast<__m64*>(s + 7 * C), x3);
    } else if constexpr (TP == 4) {
      _mm_storeu_ps(s, _mm512_castps512_ps128(h));
      _mm_storeu_ps(s + C, _mm512_extractf32x4_ps(h, 1));
      _mm_storeu_ps(s + 2 * C, _mm512_extractf32x4_ps(h, 2));
      _mm_storeu_ps(s + 3 * C, _mm512_extractf32x4_ps(h, 3));
    } else if constexpr (TP == 8) {
      _mm256_storeu_ps(s, _mm512_castps512_ps256(h));
      _mm256_storeu_ps(s + C, _mm512_extractf32x8_ps(h, 1));
    } else {
      _mm512_storeu_ps(s, h);
    }
  }
  // Scores of TP = 16/GN tokens x GN heads per step: each q slice is loaded once for TP tokens and
  // the 16 (token, head) dot products are reduced together.
  template <int CV, int GN>
  static void scores_tr(const float* q, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& pf) {
    constexpr int TP = 16 / GN;  // GN = 3, 5, 6, 7 leave spare lanes of the reduction unused
    int j = 0;
    for (; j + TP <= n; j += TP) {
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
      for (int c = 0; c < D; c += 16) {
        __m512 qv[GN];
        for (int i = 0; i < GN; ++i) qv[i] = _mm512_loadu_ps(q + (g0 + i) * D + c);
        pf.step();
        for (int u = 0; u < TP; ++u) {
          const __m512 kv = cvt<CV>(reinterpret_cast<const uint16_t*>(rows + (j + u) * rowBytes), c);
          for (int i = 0; i < GN; ++i) acc[u * GN + i] = _mm512_fmadd_ps(qv[i], kv, acc[u * GN + i]);
        }
      }
      const __m512 r = _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale));  // lane u*GN + i: token j+u, head g0+i
      if constexpr (TP * GN == 16) {
        store_scores<TP, GN>(r, live + j, s + g0 * C + j, C);
      } else {
        alignas(64) float tmp[16];
        _mm512_store_ps(tmp, r);
        for (int u = 0; u < TP; ++u)
          for (int i = 0; i < GN; ++i) s[(g0 + i) * C + j + u] = live[j + u] ? tmp[u * GN + i] : -INFINITY;
      }
    }
    if (j < n) scores_n<CV, GN>(q, g0, D, rows + j * rowBytes, rowBytes, n - j, live + j, scale, s + j, C, pf);
  }
  // acc[g] += sum_j p[g][j] V_j for GN heads; the output slice stays in registers across the chunk. The chunk's
  // sum starts from zero and is added to acc once: one rounding into the long sum a chunk, not a token. (Harness,
  // 65k tokens of positive V, error against fp64: 6e-4 with acc as the running sum, 2e-5 to 6e-5 this way.)
  template <int CV, int GN>
  static void accumulate_n(float* acc, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, const float* p, int C, kvoff::PrefetchCursor& pf) {
    for (int c = 0; c < D; c += 16) {
      __m512 o[GN];
      for (int i = 0; i < GN; ++i) o[i] = _mm512_setzero_ps();
      for (int j = 0; j < n; ++j) {
        if (!live[j]) continue;
        pf.step();
        const __m512 v = cvt<CV>(reinterpret_cast<const uint16_t*>(rows + j * rowBytes) + D, c);
        for (int i = 0; i < GN; ++i) o[i] = _mm512_fmadd_ps(_mm512_set1_ps(p[(g0 + i) * C + j]), v, o[i]);
      }
      for (int i = 0; i < GN; ++i) _mm512_storeu_ps(acc + (g0 + i) * D + c, _mm512_add_ps(_mm512_loadu_ps(acc + (g0 + i) * D + c), o[i]));
    }
  }
  // V accumulation with SP = 16/GN output slices x GN heads held in registers for a whole chunk,
  // so each probability is broadcast once per pass instead of once per slice; added to acc as accumulate_n.
  template <int CV, int GN>
  static void accumulate_tr(float* acc, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, const float* p, int C, kvoff::PrefetchCursor& pf) {
    constexpr int SP = 16 / GN;
    if (D % (SP * 16) != 0) return accumulate_n<CV, GN>(acc, g0, D, rows, rowBytes, n, live, p, C, pf);
    for (int c0 = 0; c0 < D; c0 += SP * 16) {
      __m512 o[16];  // [SP slices][GN heads]
      for (int sl = 0; sl < SP; ++sl)
        for (int i = 0; i < GN; ++i) o[sl * GN + i] = _mm512_setzero_ps();
      for (int j = 0; j < n; ++j) {
        if (!live[j]) continue;
        __m512 pb[GN];
        for (int i = 0; i < GN; ++i) pb[i] = _mm512_set1_ps(p[(g0 + i) * C + j]);
        const uint16_t* v = reinterpret_cast<const uint16_t*>(rows + j * rowBytes) + D;
        pf.step();
        for (int sl = 0; sl < SP; ++sl) {
          const __m512 vv = cvt<CV>(v, c0 + sl * 16);
          for (int i = 0; i < GN; ++i) o[sl * GN + i] = _mm512_fmadd_ps(pb[i], vv, o[sl * GN + i]);
        }
      }
      for (int sl = 0; sl < SP; ++sl)
        for (int i = 0; i < GN; ++i) {
          float* a = acc + (g0 + i) * D + c0 + sl * 16;
          _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), o[sl * GN + i]));
        }
    }
  }
  template <int CV>
  static void scores_cv(const float* q, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& pf) {
    for (int g0 = 0; g0 < G; g0 += 8)
      with_gn(G - g0 >= 8 ? 8 : G - g0, [&](auto gn) { scores_tr<CV, decltype(gn)::value>(q, g0, D, rows, rowBytes, n, live, scale, s, C, pf); });
  }
  template <int CV>
  static void accumulate_cv(float* acc, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, const float* p, int C, kvoff::PrefetchCursor& pf) {
    for (int g0 = 0; g0 < G; g0 += 8)
      with_gn(G - g0 >= 8 ? 8 : G - g0, [&](auto gn) { accumulate_tr<CV, decltype(gn)::value>(acc, g0, D, rows, rowBytes, n, live, p, C, pf); });
  }
  template <bool BF16>
  static void scores(const float* q, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& pf) {
    scores_cv<BF16 ? kBF16 : kF16>(q, G, D, rows, rowBytes, n, live, scale, s, C, pf);
  }
  template <bool BF16>
  static void accumulate(float* acc, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, const float* p, int C, kvoff::PrefetchCursor& pf) {
    accumulate_cv<BF16 ? kBF16 : kF16>(acc, G, D, rows, rowBytes, n, live, p, C, pf);
  }
  // bf16 rows with q and acc in permuted order (kBF16Perm); headDim a multiple of 32.
  static void scores_bf16p(const float* q, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& pf) {
    scores_cv<kBF16Perm>(q, G, D, rows, rowBytes, n, live, scale, s, C, pf);
  }
  static void accumulate_bf16p(float* acc, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, const float* p, int C, kvoff::PrefetchCursor& pf) {
    accumulate_cv<kBF16Perm>(acc, G, D, rows, rowBytes, n, live, p, C, pf);
  }
  static void load_f16(float* d, const uint16_t* s, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i))));
    for (; i < n; ++i) d[i] = kvoff::f16_to_f32(s[i]);
  }
  static void load_bf16(float* d, const uint16_t* s, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
      _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
    for (; i < n; ++i) d[i] = kvoff::bf16_to_f32(s[i]);
  }
  static float dot(const float* a, const float* b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
      s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
      s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
      const __mmask16 mk = static_cast<__mmask16>((1u << (n - i)) - 1u);
      s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + i), _mm512_maskz_loadu_ps(mk, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  }
  static void axpy(float* y, float a, const float* x, int n) {
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
      const __mmask16 mk = static_cast<__mmask16>((1u << (n - i)) - 1u);
      _mm512_mask_storeu_ps(y + i, mk, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(mk, x + i), _mm512_maskz_loadu_ps(mk, y + i)));
    }
  }
  static void scal(float* y, float a, int n) {
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(va, _mm512_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] *= a;
  }
  static float max_n(const float* x, int n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    if (i < n) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, static_cast<__mmask16>((1u << (n - i)) - 1u), x + i));
    return _mm512_reduce_max_ps(m);
  }
  // x[i] = exp(x[i] - shift); returns the sum of the new x. Lanes past n are -inf, whose exp is 0.
  static float exp_shift_sum(float* x, int n, float shift) {
    const __m512 sh = _mm512_set1_ps(shift);
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      const __mmask16 mk = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mk, x + i), sh));
      _mm512_mask_storeu_ps(x + i, mk, e);
      sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
  }
};
#include "simd/attention_impl.h"

// AMX needs GCC 11 / clang 12 for the tile intrinsics; the functions that use them carry their own target
// attribute, so this TU's flags stay those of every AVX-512 CPU.
#if defined(__linux__) && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define KVOFF_HAVE_AMX 1
#include "simd/attention_amx.h"
// The AMX path where it wins (amx::eligible: bf16, GQA 8 at head_dim <= 64, GQA 12-16), AVX-512 otherwise.
static void attend_head_amx(const kvoff::AttnTask& t) {
  if (amx::eligible(t)) amx::attend_head<Ops>(t);
  else attend_head_impl<Ops>(t);
}
#endif

#include "simd/fma_burst.h"
// 16 chains: 2 FMA ports x 4 cycles of latency need 8; AVX-512 has 32 registers to spare.
double fma_burst(long rounds, float* sink) {
  return fma_burst_chains<__m512, 16, 16>(rounds, sink, [](float v) { return _mm512_set1_ps(v); },
      [](__m512 a, __m512 x, __m512 y) { return _mm512_fmadd_ps(a, x, y); }, [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); },
      [](__m512 a) { return _mm512_reduce_add_ps(a); });
}
}  // namespace kvoff_avx512

namespace kvoff {
const KernelTable& kernels_avx512() {
  static const KernelTable table{"avx512", &kvoff_avx512::attend_head_impl<kvoff_avx512::Ops>, SimdWidth::Avx512, &kvoff_avx512::fma_burst};
  return table;
}
const KernelTable* kernels_amx() {
#if KVOFF_HAVE_AMX
  static const KernelTable table{"amx", &kvoff_avx512::attend_head_amx, SimdWidth::Avx512, &kvoff_avx512::fma_burst};  // AVX-512's rate: the tiles are not FMA pipes
  return &table;
#else
  return nullptr;
#endif
}
}  // namespace kvoff
