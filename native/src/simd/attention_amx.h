// AMX attention for bf16 KV at large GQA groups (see eligible): the q.K scores and the p.V sums run on the tile unit (TDPBF16PS),
// the softmax and the data layout on AVX-512. Included into the AVX-512 TU, inside its namespace, after
// attention_impl.h. Only called once the dispatcher has the OS's permission for the tile state.
#pragma once
#if KVOFF_HAVE_AMX
#include <immintrin.h>

#include <cstdint>

#ifdef KVOFF_AMX_EMULATE
#include "simd/amx_emulate.h"
#endif

#define KVOFF_AMX_FN __attribute__((target("amx-tile,amx-bf16,avx512bf16")))

// Tile registers by role (plain numbers: the intrinsics paste them into the instruction text).
// Scores, token-major: S [16 tokens, G] += K [16 tokens, 32 channels] x Q [16 channel pairs, G x 2].
// Value sums: O [G, 16 columns] += P [G, 32 tokens] x V [16 token pairs, 16 columns x 2]; two column groups
// at a time (O/V and O2/V2) so that one group's sums overlap the other's loads and stores.
#define KVOFF_T_S 0
#define KVOFF_T_K 1   // also V2 in the value sums: same shape
#define KVOFF_T_Q 2
#define KVOFF_T_O2 3
#define KVOFF_T_O 4
#define KVOFF_T_PHI 5
#define KVOFF_T_PLO 6
#define KVOFF_T_V 7

namespace amx {

struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t startRow;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes a row
  uint8_t rows[16];
};

// Where the tiles won: one thread on H100 hosts, 128 MiB of shuffled bf16 blocks, the C++ harness
// (bench/native/attention-harness.cc), ratios to memcpy, AMX / AVX-512 in the same run, three device runs.
// GQA 8 at head_dim 64: 0.78-0.82 / 0.59, 1.11-1.18 / 0.65-0.75, 0.74-0.82 / 0.67-0.69; GQA 16 at 128:
// 0.75-0.77 / 0.46, 0.46-0.47 / 0.37, 0.73 / 0.41-0.45; GQA 12 at 128: 0.75-0.79 / 0.54-0.55. GQA 8 at 128
// traded places (0.84-0.85 / 0.74, then 0.55-0.57 / 0.75-0.76) and GQA 4, 6 and 7 lost or tied (GQA 4 at
// 128: 0.85-0.87 / 0.94-0.96, 0.60-0.66 / 1.12-1.15), so those stay on AVX-512. GQA 13-15 are in by
// interpolation: AVX-512's work grows with G, the tiles' scores do not.
inline bool eligible(const kvoff::AttnTask& t) {
  if (t.dtype != kvoff::KvDtype::BF16 || t.headDim % 32 != 0 || t.groupSize > 16) return false;
  return t.groupSize >= 12 || (t.groupSize >= 8 && t.headDim <= 64);
}

// x as the sum of `terms` bf16 parts, for the first n (<= 32) of 32 values (the rest 0): each part but the
// last is the remainder truncated to bf16 (8 significand bits, and never rounded up past the largest
// finite value), the last is the remainder rounded. Three parts carry all 24 bits of an fp32 (bar
// remainders below bf16's normal range), so the tile products q_i.K and p_i.V are those of fp32.
KVOFF_AMX_FN static inline void split_bf16(const float* x, int n, int terms, uint16_t* out, size_t partStride) {
  const __mmask16 m0 = n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
  const __mmask16 m1 = n >= 32 ? static_cast<__mmask16>(0xFFFF) : n <= 16 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << (n - 16)) - 1u);
  __m512 a = _mm512_maskz_loadu_ps(m0, x), b = _mm512_maskz_loadu_ps(m1, x + 16);
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int k = 0; k < terms - 1; ++k) {
    const __m512 ah = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), top));
    const __m512 bh = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(b), top));
    _mm512_storeu_si512(out + k * partStride, (__m512i)_mm512_cvtne2ps_pbh(bh, ah));
    a = _mm512_sub_ps(a, ah);
    b = _mm512_sub_ps(b, bh);
  }
  _mm512_storeu_si512(out + (terms - 1) * partStride, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

// Channel of column n (0..31) of a 32-channel block in the value tiles' order: unpacklo/hi of two V rows
// put channels 8L..8L+3 / 8L+4..8L+7 of each 128-bit lane L side by side.
inline int tile_column_channel(int n) {
  const int hiHalf = n >> 4, c = n & 15;
  return 8 * (c >> 2) + 4 * hiHalf + (c & 3);
}

// q [G, D] as the scores' B tiles, one set a part: qt [terms, D/32 blocks, 16 channel pairs, G heads, 2].
KVOFF_AMX_FN static inline void q_tiles(const float* q, int G, int D, int terms, uint16_t* split, uint16_t* qt) {
  const size_t gd = static_cast<size_t>(G) * D;
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < D; c += 32) split_bf16(q + g * D + c, 32, terms, split + g * D + c, gd);
  for (int k = 0; k < terms; ++k) {
    const uint32_t* in = reinterpret_cast<const uint32_t*>(split + k * gd);  // [G, D/2] channel pairs
    uint32_t* out = reinterpret_cast<uint32_t*>(qt + k * gd);
    for (int b = 0; b < D / 32; ++b)
      for (int r = 0; r < 16; ++r)
        for (int g = 0; g < G; ++g) out[(b * 16 + r) * G + g] = in[g * (D / 2) + b * 16 + r];
  }
}

// Two-input permute with a table index: out[i] = i < 16 ? a[idx[i]] : b[idx[i] - 16].
static inline __m512 perm2(__m512 a, const int32_t* idx, __m512 b) { return _mm512_permutex2var_ps(a, _mm512_loadu_si512(idx), b); }

// The [16 tokens, 8 heads] scores of GQA 8 (8 vectors of 2 tokens) as 8 vectors of 16 tokens, one a head:
// three rounds of two-input permutes, 24 in all, in place of 8 gathers: the AMX path's AVX-512 work at G8 D64
// went from 12.3 to 9.7-10.1 ns a token (EPYC dev VM, tile instructions stubbed out, K and V in L2).
static inline void transpose_16x8(const float* sbuf, __m512* out) {
  // Round 1: tokens 4j..4j+3 x heads 4k..4k+3 from inputs 2j and 2j + 1 ([token][head] order).
  alignas(64) static const int32_t r1[2][16] = {{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
                                                {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}};
  // Round 2: tokens 8p..8p+7 x heads 4k+2m, 4k+2m+1 from the round-1 vectors of tokens 8p.. and 8p+4..
  alignas(64) static const int32_t r2[2][16] = {{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},
                                                {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31}};
  // Round 3: tokens 0..15 of one head from the round-2 vectors of tokens 0..7 and 8..15.
  alignas(64) static const int32_t r3[2][16] = {{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},
                                                {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}};
  __m512 x[8], y[8];
  for (int j = 0; j < 4; ++j)
    for (int k = 0; k < 2; ++k) x[j * 2 + k] = perm2(_mm512_loadu_ps(sbuf + 32 * j), r1[k], _mm512_loadu_ps(sbuf + 32 * j + 16));
  for (int p = 0; p < 2; ++p)  // y[p*4 + k*2 + m]: tokens 8p.., heads 4k+2m, +1
    for (int k = 0; k < 2; ++k)
      for (int m = 0; m < 2; ++m) y[p * 4 + k * 2 + m] = perm2(x[(2 * p) * 2 + k], r2[m], x[(2 * p + 1) * 2 + k]);
  for (int k = 0; k < 2; ++k)
    for (int m = 0; m < 2; ++m)
      for (int e = 0; e < 2; ++e) out[4 * k + 2 * m + e] = perm2(y[k * 2 + m], r3[e], y[4 + k * 2 + m]);
}

// s [G, C] (head-major) from the score tiles' sbuf [16 tokens, G] for tokens [h, h + 16), scaled, with
// -inf for tokens not live.
static inline void scores_to_heads(const float* sbuf, int G, const bool* live, float scale, float* s, int C) {
  __mmask16 keep = 0;
  for (int u = 0; u < 16; ++u)
    if (live[u]) keep |= static_cast<__mmask16>(1u << u);
  if (G == 8) {
    __m512 h[8];
    transpose_16x8(sbuf, h);
    for (int g = 0; g < 8; ++g) _mm512_storeu_ps(s + g * C, _mm512_mask_blend_ps(keep, _mm512_set1_ps(-INFINITY), _mm512_mul_ps(h[g], _mm512_set1_ps(scale))));
    return;
  }
  const __m512i rowIdx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(G));
  const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
  for (int g = 0; g < G; ++g) {
    const __m512 v = _mm512_i32gather_ps(_mm512_add_epi32(rowIdx, _mm512_set1_epi32(g)), sbuf, 4);
    _mm512_storeu_ps(s + g * C, _mm512_mask_blend_ps(keep, ninf, _mm512_mul_ps(v, sc)));
  }
}

// V rows of the chunk as the value tiles: vt [D/16 column groups, 16 token pairs, 16 columns, 2], zero for
// tokens past n or not live (their probabilities are 0, and V there need not be finite).
KVOFF_AMX_FN static inline void v_tiles(const uint8_t* rows, size_t rowBytes, int D, int n, const bool* live, uint16_t* vt, kvoff::PrefetchCursor& pf) {
  for (int k = 0; k < 16; ++k) {
    const int j0 = 2 * k, j1 = 2 * k + 1;
    const bool u0 = j0 < n && live[j0], u1 = j1 < n && live[j1];
    const uint16_t* v0 = reinterpret_cast<const uint16_t*>(rows + static_cast<size_t>(u0 ? j0 : 0) * rowBytes) + D;
    const uint16_t* v1 = reinterpret_cast<const uint16_t*>(rows + static_cast<size_t>(u1 ? j1 : 0) * rowBytes) + D;
    for (int b = 0; b < D / 32; ++b) {
      const __m512i a = u0 ? _mm512_loadu_si512(v0 + b * 32) : _mm512_setzero_si512();
      const __m512i c = u1 ? _mm512_loadu_si512(v1 + b * 32) : _mm512_setzero_si512();
      _mm512_store_si512(vt + ((2 * b) * 16 + k) * 32, _mm512_unpacklo_epi16(a, c));
      _mm512_store_si512(vt + ((2 * b + 1) * 16 + k) * 32, _mm512_unpackhi_epi16(a, c));
    }
    if ((k & 3) == 3) pf.l2_floor(4 + k / 4);
  }
}

KVOFF_AMX_FN static inline void configure(int G) {
  TileConfig cfg{};
  cfg.palette = 1;
  auto set = [&cfg](int tile, int rows, int colsb) {
    cfg.rows[tile] = static_cast<uint8_t>(rows);
    cfg.colsb[tile] = static_cast<uint16_t>(colsb);
  };
  set(KVOFF_T_S, 16, G * 4);
  set(KVOFF_T_K, 16, 64);
  set(KVOFF_T_Q, 16, G * 4);
  set(KVOFF_T_O2, G, 64);
  set(KVOFF_T_O, G, 64);
  set(KVOFF_T_PHI, G, 64);
  set(KVOFF_T_PLO, G, 64);
  set(KVOFF_T_V, 16, 64);
  _tile_loadconfig(&cfg);
}

// Scores of 16 whole tokens from row0 into sbuf [16, G]: S = sum over 32-channel blocks and q's parts of K.q_k.
template <int QT>
KVOFF_AMX_FN static inline void tile_scores(const uint8_t* row0, size_t rowBytes, int G, int D, const uint16_t* qt, float* sbuf) {
  _tile_zero(KVOFF_T_S);
  const size_t qStride = static_cast<size_t>(G) * 4, qBlock = 16 * static_cast<size_t>(G) * 2, qPart = static_cast<size_t>(G) * D;
  for (int b = 0; b < D / 32; ++b) {
    _tile_loadd(KVOFF_T_K, row0 + b * 64, rowBytes);
    for (int k = 0; k < QT; ++k) {
      _tile_loadd(KVOFF_T_Q, qt + k * qPart + b * qBlock, qStride);
      _tile_dpbf16ps(KVOFF_T_S, KVOFF_T_K, KVOFF_T_Q);
    }
  }
  _tile_stored(KVOFF_T_S, sbuf, G * 4);
}

// csum [G, D] (tile column order) = P [G, 32] x the chunk's value tiles vt, P's two parts already in the P
// tiles. Two column groups at a time (O/V and O2/V2), so that one group's sums overlap the other's loads
// and stores. The caller adds csum to the running sum: one rounding into it a chunk, as the AVX-512 kernel.
KVOFF_AMX_FN static inline void tile_values(float* csum, int D, const uint16_t* vt) {
  const int stride = D * 4;
  for (int cg = 0; cg < D / 16; cg += 2) {
    _tile_zero(KVOFF_T_O);
    _tile_zero(KVOFF_T_O2);
    _tile_loadd(KVOFF_T_V, vt + cg * 16 * 32, 64);
    _tile_loadd(KVOFF_T_K, vt + (cg + 1) * 16 * 32, 64);
    _tile_dpbf16ps(KVOFF_T_O, KVOFF_T_PHI, KVOFF_T_V);
    _tile_dpbf16ps(KVOFF_T_O2, KVOFF_T_PHI, KVOFF_T_K);
    _tile_dpbf16ps(KVOFF_T_O, KVOFF_T_PLO, KVOFF_T_V);
    _tile_dpbf16ps(KVOFF_T_O2, KVOFF_T_PLO, KVOFF_T_K);
    _tile_stored(KVOFF_T_O, csum + cg * 16, stride);
    _tile_stored(KVOFF_T_O2, csum + (cg + 1) * 16, stride);
  }
}

// One KV head's attention for a GQA group of up to 16 over bf16 blocks, 32-token chunks as attend_head_chunks.
// Whole 16-token runs of a chunk take their scores from the tiles; a shorter tail takes Ops' AVX-512 scores.
// q is split into three bf16 parts (all of its fp32 bits: with two, scores of magnitude 30 were off by
// 2e-4 of the output), the probabilities into two (they are in [0, 1], and a third part changed nothing
// measurable in the emulated check).
template <class Ops>
KVOFF_AMX_FN void attend_head(const kvoff::AttnTask& t) {
  constexpr int QT = 3, PT = 2;
  constexpr int C = 32;
  const int D = t.headDim, G = t.groupSize;
  const size_t rowBytes = static_cast<size_t>(4) * D;
  // In floats, every part a multiple of 16, so each starts 64-byte aligned.
  const size_t gd = static_cast<size_t>(G) * D;
  float* acc = kvoff::kernel_scratch(2 * gd + 2 * G * C + 32 + QT * gd + PT * G * 16 + 16 * static_cast<size_t>(D));
  float* csum = acc + gd;                                  // [G, D] one chunk's value sums
  float* s = csum + gd;                                    // [G, C] scores, then probabilities
  float* sbuf = s + G * C;                                 // [C, G] scores as the tiles give them
  float* m = sbuf + G * C;                                 // [16] running max
  float* l = m + 16;                                       // [16] running sum of exp
  uint16_t* qt = reinterpret_cast<uint16_t*>(l + 16);      // [QT, D/32, 16, G, 2] q's parts as B tiles
  uint16_t* split = qt + QT * gd;                          // [QT, G, D] q's parts in q's layout
  uint16_t* pt = split + QT * gd;                          // [PT, G, 32] the probabilities' parts
  uint16_t* vt = pt + PT * G * 32;                         // [D/16, 16, 32] V as B tiles
  for (size_t i = 0; i < gd; ++i) acc[i] = 0.f;            // acc: [G, D] in the value tiles' column order
  for (int g = 0; g < G; ++g) { m[g] = -INFINITY; l[g] = 0.f; }
  q_tiles(t.q, G, D, QT, split, qt);
  configure(G);
  int ex = 0;
  for (int p0 = 0; p0 < t.numTokens;) {
    int n;
    const uint8_t* rows = chunk_rows(t, p0, C, &n);
    // Only the L2 stream, in eighths of the chunk ahead at the phase boundaries and through the V layout (the
    // tile loop has too few steps to send it a line a step). One H100 host run, harness as in eligible(),
    // ratio to memcpy with / without the L1 stream (both in eighths): G8 D128 0.82-0.83 / 0.84-0.85, G16 D128
    // 0.58-0.59 / 0.75-0.77; with one line a step as AVX-512 does: 0.65-0.66 / 0.51-0.52 (G8 D128 / G16).
    kvoff::PrefetchCursor pf = chunk_prefetch(t, p0 + n, C, KVOFF_PREFETCH_AHEAD, false);
    bool live[C];
    const int nlive = mark_live(t, p0, n, &ex, live);
    const int whole = n & ~15;
    for (int h = 0; h < whole; h += 16) {
      tile_scores<QT>(rows + h * rowBytes, rowBytes, G, D, qt, sbuf + h * G);
      pf.l2_floor(1);
    }
    for (int h = 0; h < whole; h += 16) scores_to_heads(sbuf + h * G, G, live + h, t.scale, s + h, C);
    if (whole < n) Ops::template scores<true>(t.q, G, D, rows + whole * rowBytes, rowBytes, n - whole, live + whole, t.scale, s + whole, C, pf);
    if (nlive < n) mask_dead(live, n, G, s, C);
    pf.l2_floor(2);
    if (nlive > 0) {
      softmax_chunk<Ops>(s, C, n, G, m, l, acc, D);
      pf.l2_floor(3);
      for (int g = 0; g < G; ++g) split_bf16(s + g * C, n, PT, pt + g * 32, static_cast<size_t>(G) * 32);
      v_tiles(rows, rowBytes, D, n, live, vt, pf);
      _tile_loadd(KVOFF_T_PHI, pt, 64);
      _tile_loadd(KVOFF_T_PLO, pt + G * 32, 64);
      tile_values(csum, D, vt);
      Ops::axpy(acc, 1.f, csum, static_cast<int>(gd));
    }
    pf.flush();
    p0 += n;
  }
  _tile_release();
  unpermute_blocks(acc, gd, tile_column_channel);
  finish_heads(t, acc, m, l);
}

}  // namespace amx

#undef KVOFF_T_S
#undef KVOFF_T_K
#undef KVOFF_T_Q
#undef KVOFF_T_O2
#undef KVOFF_T_O
#undef KVOFF_T_PHI
#undef KVOFF_T_PLO
#undef KVOFF_T_V
#endif  // KVOFF_HAVE_AMX
