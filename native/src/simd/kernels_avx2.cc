// AVX2 + FMA + F16C kernels (8 fp32 lanes). Compiled with -mavx2 -mfma -mf16c; only called when the CPU has them.
#include <immintrin.h>

#include <cmath>

#include "simd/exp_poly.h"
#include "simd/kernels.h"
#include "simd/prefetch_cursor.h"

namespace kvoff_avx2 {
#include "simd/with_gn.h"
#include "simd/live_rows.h"
static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}
#include "simd/exp_vec.h"  // exp8 / exp16, shared with the KIVI kernels
struct Ops {
  static constexpr int kLanes = 8;
  static constexpr bool kPermBf16 = false;  // no permuted-bf16 entry points (see the AVX-512 Ops)
  // scores take q blocked, [D/8, G, 8] (attention_impl.h's block_q): every head's load is one pointer plus a
  // constant, where G row pointers spilled out of x86's 16 registers at GQA 8.
  static constexpr bool kBlockedQ = true;
  // 32-token chunks from GQA 4 (attend_head_impl): Zen 3 VM, harness, 5 alternating rounds, G4 D64 f16 28.4 -> 25.4
  // ns a token, D128 47.5 -> 43.4, bf16 alike (bench/results/dev-zen3-avx2-g4-chunks-ab.txt).
  static constexpr int kLongChunksFromG = 4;
  static constexpr bool kSplitSoftmax = true;  // softmax_chunk in passes over the heads (attention_impl.h)
  template <bool BF16>
  static inline __m256 cvt(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
  }
  // s[g*C + j] = scale * q_g . K_j for GN query heads starting at g0; each K row is converted once.
  // q is blocked (kBlockedQ): [D/8, G, 8], so q_g's channels c..c+7 are at q + c*G + g*8.
  template <bool BF16, int GN>
  static void scores_n(const float* q, int G, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& cursor) {
    kvoff::PrefetchCursor pf = cursor;  // a register copy, handed back at the end (prefetch_cursor.h)
    for (int j = 0; j < n; ++j) {
      if (!live[j]) continue;
      const uint16_t* k = reinterpret_cast<const uint16_t*>(rows + j * rowBytes);
      __m256 acc[GN];
      for (int i = 0; i < GN; ++i) acc[i] = _mm256_setzero_ps();
      for (int c = 0; c < D; c += 8) {
        if ((c & 31) == 0) pf.step();
        const __m256 kv = cvt<BF16>(k + c);
        const float* qc = q + c * G + g0 * 8;
        for (int i = 0; i < GN; ++i) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(qc + i * 8), kv, acc[i]);
      }
      for (int i = 0; i < GN; ++i) s[(g0 + i) * C + j] = hsum(acc[i]) * scale;
    }
    cursor = pf;
  }
  // Lane i of the result = horizontal sum of v[i]: 8 sums from 6 hadds, 2 lane permutes and an add,
  // where 8 separate reductions take 5 operations each.
  static inline __m256 reduce8(const __m256* v) {
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
  // The 8 scores r = reduce8(acc) of TP = 8/GN tokens x GN heads, head-major (lane i*TP + u: head i, token u),
  // to s [GN heads, C] at token j: a head's TP tokens are adjacent, so one store of TP floats a head. Dead tokens
  // are stored too; mask_dead overwrites them after the scores. (A conditional scalar store per score, with the
  // lane shuffles that fed it, took as long as the reduction: Zen 3, G4 D64, perf.)
  template <int TP>
  static inline void store_scores(__m256 r, float* s, int C) {
    const __m128 lo = _mm256_castps256_ps128(r), hi = _mm256_extractf128_ps(r, 1);
    if constexpr (TP == 8) {
      _mm256_storeu_ps(s, r);
    } else if constexpr (TP == 4) {
      _mm_storeu_ps(s, lo);
      _mm_storeu_ps(s + C, hi);
    } else if constexpr (TP == 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(s), lo);
      _mm_storeh_pi(reinterpret_cast<__m64*>(s + C), lo);
      _mm_storel_pi(reinterpret_cast<__m64*>(s + 2 * C), hi);
      _mm_storeh_pi(reinterpret_cast<__m64*>(s + 3 * C), hi);
    } else {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, r);
      for (int i = 0; i < 8; ++i) s[i * C] = tmp[i];
    }
  }
  // Scores of TP = 8/GN tokens x GN heads per step, reduced together (GN = 1, 2, 4 or 8).
  template <bool BF16, int GN>
  static void scores_tr(const float* q, int G, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& cursor) {
    kvoff::PrefetchCursor pf = cursor;  // a register copy, handed back at the end (prefetch_cursor.h)
    constexpr int TP = 8 / GN;
    int j = 0;
    for (; j + TP <= n; j += TP) {
      __m256 acc[8];  // [GN heads][TP tokens]
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
      for (int c = 0; c < D; c += 8) {
        if ((c & 31) == 0)  // a line of each stream a token and 32 channels: with the value sums' steps, all of them
          for (int u = 0; u < TP; ++u) pf.step();
        const float* qc = q + c * G + g0 * 8;
        for (int u = 0; u < TP; ++u) {
          const __m256 kv = cvt<BF16>(reinterpret_cast<const uint16_t*>(rows + (j + u) * rowBytes) + c);
          for (int i = 0; i < GN; ++i) acc[i * TP + u] = _mm256_fmadd_ps(_mm256_loadu_ps(qc + i * 8), kv, acc[i * TP + u]);
        }
      }
      store_scores<TP>(_mm256_mul_ps(reduce8(acc), _mm256_set1_ps(scale)), s + g0 * C + j, C);
    }
    cursor = pf;
    if (j < n) scores_n<BF16, GN>(q, G, g0, D, rows + j * rowBytes, rowBytes, n - j, live + j, scale, s + j, C, cursor);
  }
  // GQA 4: 3 tokens x 4 heads a step, 12 accumulators. With 8 (2 tokens, scores_tr), each step's chains of D/8
  // FMAs took as long to finish as the FMA pipes took to issue them, so a step waited out the last one's latency
  // before the next could fill the pipes; 12 chains leave slack. Zen 3 VM, harness, alternating rounds, min ns a token
  // in L2: f16 G4 D64 22.7 -> 22.0, D128 37.8 -> 35.4, bf16 D128 40.6 -> 39.2 (GQA 8 as two such passes: slower).
  template <bool BF16>
  static void scores_3x4(const float* q, int G, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& cursor) {
    kvoff::PrefetchCursor pf = cursor;  // a register copy, handed back at the end (prefetch_cursor.h)
    int j = 0;
    const __m256 sc = _mm256_set1_ps(scale);
    for (; j + 3 <= n; j += 3) {
      __m256 acc[12];  // [4 heads][3 tokens]
      for (int i = 0; i < 12; ++i) acc[i] = _mm256_setzero_ps();
      for (int c = 0; c < D; c += 8) {
        if ((c & 31) == 0)
          for (int u = 0; u < 3; ++u) pf.step();
        const float* qc = q + c * G + g0 * 8;
        for (int u = 0; u < 3; ++u) {
          const __m256 kv = cvt<BF16>(reinterpret_cast<const uint16_t*>(rows + (j + u) * rowBytes) + c);
          for (int i = 0; i < 4; ++i) acc[i * 3 + u] = _mm256_fmadd_ps(_mm256_loadu_ps(qc + i * 8), kv, acc[i * 3 + u]);
        }
      }
      for (int i = 0; i < 4; ++i) {
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[i * 3], acc[i * 3 + 1]), _mm256_hadd_ps(acc[i * 3 + 2], acc[i * 3 + 2]));
        const __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        const __m128 r3 = _mm_mul_ps(r, _mm256_castps256_ps128(sc));  // head i's 3 scores (lane 3: a copy of lane 2)
        _mm_storel_pi(reinterpret_cast<__m64*>(s + (g0 + i) * C + j), r3);
        _mm_store_ss(s + (g0 + i) * C + j + 2, _mm_movehl_ps(r3, r3));
      }
    }
    cursor = pf;
    if (j < n) scores_n<BF16, 4>(q, G, g0, D, rows + j * rowBytes, rowBytes, n - j, live + j, scale, s + j, C, cursor);
  }
  // The value sums' inputs: token t's V row and head i's probability. Gathered: the live tokens of a run
  // (gather_live). InPlace: every token of the run live, read where they lie, so no gather (GQA 1 only: one
  // probability row; Zen 3 VM, harness in L2, min ns a token, f16 G1 D64 13.2 -> 12.3, D128 21.5 -> 20.3; GQA 4 level or
  // slower, its four rows' addresses cost what the gather did).
  template <int GN>
  struct Gathered {
    const uint16_t* const* vrow;
    const float* pt;  // [t, GN]
    const uint16_t* v(int t) const { return vrow[t]; }
    const float* p(int t, int i) const { return pt + t * GN + i; }
  };
  struct InPlace {
    const uint8_t* vrows;  // token 0's V row; token t's at + t*rowBytes
    size_t rowBytes;
    const float* prob;  // [tokens] the head's probabilities
    const uint16_t* v(int t) const { return reinterpret_cast<const uint16_t*>(vrows + t * rowBytes); }
    const float* p(int t, int) const { return prob + t; }
  };
  // Channels [c0, c0 + 8*SP) of GN heads over nl tokens of src (Gathered or InPlace): SP slices x GN
  // heads of output in registers for the run, summed from zero and added to acc once (one rounding into the long
  // sum a run of tokens, as the AVX-512 kernel). SP = 8/GN: 8 accumulators at GQA 1, 2 and 4 (6 at 3). With one
  // slice a pass, GQA 1 and 4 kept 1 and 4, each waiting out the FMA latency every token (4 cycles, 2 FMA pipes: 8
  // chains to fill them).
  template <bool BF16, int GN, int SP, class Src>
  static inline void value_slices(float* acc, int g0, int D, int c0, int nl, const Src& src, kvoff::PrefetchCursor& cursor) {
    kvoff::PrefetchCursor pf = cursor;  // a register copy, handed back at the end (prefetch_cursor.h)
    __m256 o[SP * GN];  // [SP slices][GN heads]
    for (int k = 0; k < SP * GN; ++k) o[k] = _mm256_setzero_ps();
    for (int t = 0; t < nl; ++t) {
      for (int sl = 0; sl < SP; ++sl)
        if (((c0 + 8 * sl) & 31) == 0) pf.step();  // a line of each stream a token and 32 channels
      if constexpr (SP == 1) {  // GQA 8: GN broadcasts would not fit beside 8 accumulators in 16 registers
        const __m256 v = cvt<BF16>(src.v(t) + c0);
        for (int i = 0; i < GN; ++i) o[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(src.p(t, i)), v, o[i]);
      } else {
        __m256 pb[GN];
        for (int i = 0; i < GN; ++i) pb[i] = _mm256_broadcast_ss(src.p(t, i));
        for (int sl = 0; sl < SP; ++sl) {
          const __m256 v = cvt<BF16>(src.v(t) + c0 + 8 * sl);
          for (int i = 0; i < GN; ++i) o[sl * GN + i] = _mm256_fmadd_ps(pb[i], v, o[sl * GN + i]);
        }
      }
    }
    for (int sl = 0; sl < SP; ++sl)
      for (int i = 0; i < GN; ++i) {
        float* a = acc + (g0 + i) * D + c0 + 8 * sl;
        _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), o[sl * GN + i]));
      }
    cursor = pf;
  }
  // acc[g] += sum_j p[g][j] V_j for GN heads, in runs of kMaxLive tokens whose live V rows and probabilities are
  // gathered first (gather_live), then in passes of SP slices (value_slices); channels past the last whole pass
  // (head_dim 32 at GQA 1, say) go a slice at a time.
  template <bool BF16, int GN>
  static void accumulate_n(float* acc, int g0, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, const float* p, int C, kvoff::PrefetchCursor& pf) {
    constexpr int SP = GN >= 8 ? 1 : 8 / GN;
    if constexpr (GN == 1) {
      bool allLive = true;
      for (int j = 0; j < n; ++j) allLive &= live[j];
      if (allLive) {
        const InPlace src{rows + 2 * static_cast<size_t>(D), rowBytes, p + g0 * C};  // V follows K's 2*D bytes
        int c = 0;
        for (; c + 8 * SP <= D; c += 8 * SP) value_slices<BF16, GN, SP>(acc, g0, D, c, n, src, pf);
        for (; c < D; c += 8) value_slices<BF16, GN, 1>(acc, g0, D, c, n, src, pf);
        return;
      }
    }
    for (int j0 = 0; j0 < n; j0 += kMaxLive) {
      alignas(32) float pt[kMaxLive * GN];
      const uint16_t* vrow[kMaxLive];
      const int nl = gather_live<GN>(rows, rowBytes, D, j0, n - j0 < kMaxLive ? n - j0 : kMaxLive, live, p, g0, C, vrow, pt);
      int c = 0;
      if constexpr (SP > 1)
        for (; c + 8 * SP <= D; c += 8 * SP) value_slices<BF16, GN, SP>(acc, g0, D, c, nl, Gathered<GN>{vrow, pt}, pf);
      for (; c < D; c += 8) value_slices<BF16, GN, 1>(acc, g0, D, c, nl, Gathered<GN>{vrow, pt}, pf);
    }
  }
  template <bool BF16>
  static void scores(const float* q, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, float scale, float* s, int C, kvoff::PrefetchCursor& pf) {
    for (int g0 = 0; g0 < G; g0 += 8)
      with_gn(G - g0 >= 8 ? 8 : G - g0, [&](auto gn) {
        constexpr int gnv = decltype(gn)::value;
        if constexpr (gnv == 4) scores_3x4<BF16>(q, G, g0, D, rows, rowBytes, n, live, scale, s, C, pf);
        else if constexpr (8 % gnv == 0) scores_tr<BF16, gnv>(q, G, g0, D, rows, rowBytes, n, live, scale, s, C, pf);
        else scores_n<BF16, gnv>(q, G, g0, D, rows, rowBytes, n, live, scale, s, C, pf);
      });
  }
  template <bool BF16>
  static void accumulate(float* acc, int G, int D, const uint8_t* rows, size_t rowBytes, int n, const bool* live, const float* p, int C, kvoff::PrefetchCursor& pf) {
    for (int g0 = 0; g0 < G; g0 += 8)
      with_gn(G - g0 >= 8 ? 8 : G - g0, [&](auto gn) { accumulate_n<BF16, decltype(gn)::value>(acc, g0, D, rows, rowBytes, n, live, p, C, pf); });
  }
  static void load_f16(float* d, const uint16_t* s, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; ++i) d[i] = kvoff::f16_to_f32(s[i]);
  }
  static void load_bf16(float* d, const uint16_t* s, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
      _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; ++i) d[i] = kvoff::bf16_to_f32(s[i]);
  }
  static float dot(const float* a, const float* b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float* y, float a, const float* x, int n) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] += a * x[i];
  }
  static void scal(float* y, float a, int n) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] *= a;
  }
  static float max_n(const float* x, int n) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    float r = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
    for (; i < n; ++i) r = x[i] > r ? x[i] : r;
    return r;
  }
  // exp(x[i..n) - shift) written back, through a -inf padded vector; returns that vector (0 in the padding).
  static __m256 exp_tail(float* x, int i, int n, float shift) {
    alignas(32) float tmp[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    for (int j = i; j < n; ++j) tmp[j - i] = x[j] - shift;
    const __m256 e = exp8(_mm256_load_ps(tmp));
    _mm256_store_ps(tmp, e);
    for (int j = i; j < n; ++j) x[j] = tmp[j - i];
    return e;
  }
  // x[i] = exp(x[i] - shift); returns the sum of the new x.
  static float exp_shift_sum(float* x, int n, float shift) {
    const __m256 sh = _mm256_set1_ps(shift);
    __m256 sum = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
      _mm256_storeu_ps(x + i, e);
      sum = _mm256_add_ps(sum, e);
    }
    if (i < n) sum = _mm256_add_ps(sum, exp_tail(x, i, n, shift));
    return hsum(sum);
  }
  // softmax_chunk_split's passes (attention_impl.h): x[i] = exp(x[i] - shift), and the sum of x.
  static void exp_shift(float* x, int n, float shift) {
    const __m256 sh = _mm256_set1_ps(shift);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh)));
    if (i < n) exp_tail(x, i, n, shift);
  }
  static float sum_n(const float* x, int n) {
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      a = _mm256_add_ps(a, _mm256_loadu_ps(x + i));
      b = _mm256_add_ps(b, _mm256_loadu_ps(x + i + 8));
    }
    for (; i + 8 <= n; i += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(x + i));
    float r = hsum(_mm256_add_ps(a, b));
    for (; i < n; ++i) r += x[i];
    return r;
  }
};
#include "simd/attention_impl.h"

#include "simd/fma_burst.h"
// 12 chains: 2 FMA pipes x 4 cycles of latency need 8 (Zen 3, Intel cores since Skylake); 12 + x + y fit in 16 registers.
double fma_burst(long rounds, float* sink) {
  return fma_burst_chains<__m256, 12, 8>(rounds, sink, [](float v) { return _mm256_set1_ps(v); },
      [](__m256 a, __m256 x, __m256 y) { return _mm256_fmadd_ps(a, x, y); }, [](__m256 a, __m256 b) { return _mm256_add_ps(a, b); },
      [](__m256 a) { return hsum(a); });
}
}  // namespace kvoff_avx2

namespace kvoff {
const KernelTable& kernels_avx2() {
  static const KernelTable table{"avx2", &kvoff_avx2::attend_head_impl<kvoff_avx2::Ops>, SimdWidth::Avx2, &kvoff_avx2::fma_burst};
  return table;
}
}  // namespace kvoff
