// Chunked online-softmax attention over paged fp16/bf16 KV, templated on an ISA's row operations.
// Included once per ISA translation unit inside that TU's own namespace (no shared inline symbols).
#pragma once
#include <cmath>
#include <cstring>

#include "simd/kernels.h"
#include "simd/prefetch_cursor.h"

#ifndef KVOFF_PREFETCH_AHEAD
#define KVOFF_PREFETCH_AHEAD 128
#endif

// The permuted bf16 order of the AVX-512 kernels, for n floats (a multiple of 32): each 32-block as its
// 16 even entries, then its 16 odd ones.
inline void permute_blocks(float* dst, const float* src, size_t n) {
  for (size_t b = 0; b < n; b += 32)
    for (int i = 0; i < 16; ++i) {
      dst[b + i] = src[b + 2 * i];
      dst[b + 16 + i] = src[b + 2 * i + 1];
    }
}
// q [G, D] as [D/L blocks, G, L] (D a multiple of L): the L channels from c of every head side by side, for Ops
// with kBlockedQ.
inline void block_q(float* dst, const float* q, int G, int D, int L) {
  for (int c = 0; c < D; c += L)
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < L; ++l) dst[c * G + g * L + l] = q[g * D + c + l];
}
// Channel of entry i (0..31) of a block in that order.
inline int bf16_perm_channel(int i) { return i < 16 ? 2 * i : 2 * (i - 16) + 1; }
// n floats (a multiple of 32) from a per-32-block order back to channel order: entry i of each block goes
// to channel channelOf(i). Shared by the permuted-bf16 order and the AMX value tiles' column order.
inline void unpermute_blocks(float* x, size_t n, int (*channelOf)(int)) {
  float tmp[32];
  for (size_t b = 0; b < n; b += 32) {
    for (int i = 0; i < 32; ++i) tmp[channelOf(i)] = x[b + i];
    for (int i = 0; i < 32; ++i) x[b + i] = tmp[i];
  }
}

// The chunk starting at token p: at most C tokens, never crossing a block boundary. Returns its first
// K row ([n, 2 (K,V), D] rows follow at 2*D*2 bytes each) and sets *n.
inline const uint8_t* chunk_rows(const kvoff::AttnTask& t, int p, int C, int* n) {
  const int bs = t.blockSize;
  // Block sizes are powers of two in practice: a shift and a mask instead of a division, three calls a chunk (Zen 3
  // VM, harness in L2, min ns a token: f16 G4 D64 21.6 -> 20.9, G8 D64 41.8 -> 40.6).
  const bool pow2 = (bs & (bs - 1)) == 0;
  const int blk = pow2 ? p >> __builtin_ctz(static_cast<unsigned>(bs)) : p / bs;
  const int off = pow2 ? p & (bs - 1) : p - blk * bs;
  *n = bs - off;
  if (*n > C) *n = C;
  if (*n > t.numTokens - p) *n = t.numTokens - p;
  const size_t rowBytes = static_cast<size_t>(4) * t.headDim;
  return t.region + static_cast<size_t>(t.blockIds[blk]) * t.blockBytes + (static_cast<size_t>(t.kvHead) * bs + off) * rowBytes;
}

// The prefetch streams for the chunk that ends before token `next`: the chunk `ahead` tokens on (to L2)
// and, with l1Stream, the next chunk (to L1).
inline kvoff::PrefetchCursor chunk_prefetch(const kvoff::AttnTask& t, int next, int C, int ahead, bool l1Stream = true) {
  const size_t rowBytes = static_cast<size_t>(4) * t.headDim;
  const int p1 = next + ahead;
  int n1 = 0, n2 = 0;
  const uint8_t* far = p1 < t.numTokens ? chunk_rows(t, p1, C, &n1) : nullptr;
  const uint8_t* soon = l1Stream && next < t.numTokens ? chunk_rows(t, next, C, &n2) : nullptr;
  kvoff::PrefetchCursor pf;
  pf.reset(far, static_cast<size_t>(n1) * rowBytes, soon, static_cast<size_t>(n2) * rowBytes);
  return pf;
}

// live[j] for the chunk's n tokens from p0, false for the excluded ones; *ex walks the sorted exclusion list
// across chunks. Returns how many are live.
inline int mark_live(const kvoff::AttnTask& t, int p0, int n, int* ex, bool* live) {
  int nlive = 0;
  for (int j = 0; j < n; ++j) {
    const bool skip = *ex < t.numExclude && t.exclude[*ex] == p0 + j;
    if (skip) ++*ex;
    live[j] = !skip;
    nlive += !skip;
  }
  return nlive;
}

// The excluded tokens' scores s [G, C] become -inf. After the scores, so that the score loops may store whole
// vectors of tokens without a live test per token (whatever they left in a dead token's place is overwritten).
inline void mask_dead(const bool* live, int n, int G, float* s, int C) {
  for (int j = 0; j < n; ++j)
    if (!live[j])
      for (int g = 0; g < G; ++g) s[g * C + j] = -INFINITY;
}

// Head g's running max grows to mn: its acc slice [D] and running sum l scale by exp(old max - mn).
template <class Ops>
inline void rescale_head(int g, float mn, float* m, float* l, float* acc, int D) {
  const float alpha = m[g] == -INFINITY ? 0.f : std::exp(m[g] - mn);
  Ops::scal(acc + g * D, alpha, D);
  l[g] *= alpha;
  m[g] = mn;
}
// softmax_chunk for Ops with kSplitSoftmax, in three passes over the heads: maxima and rescales, exps, sums. Each
// head's exps then do not wait on the head before's sum and its reduction. Zen 3 VM (AVX2), harness in L2, min ns a
// token: f16 G4 D64 21.1 -> 20.9, G8 D64 41.3 -> 40.9, bf16 G4 D64 23.0 -> 22.6, G8 42.3 -> 41.7; G1 12.3 -> 12.5,
// so GQA 1 keeps one pass.
template <class Ops>
inline void softmax_chunk_split(float* s, int C, int n, int G, float* m, float* l, float* acc, int D) {
  for (int g = 0; g < G; ++g) {
    const float cm = Ops::max_n(s + g * C, n);
    if (cm > m[g]) rescale_head<Ops>(g, cm, m, l, acc, D);
  }
  for (int g = 0; g < G; ++g) Ops::exp_shift(s + g * C, n, m[g]);
  for (int g = 0; g < G; ++g) l[g] += Ops::sum_n(s + g * C, n);
}
// The online softmax step of one chunk: s [G, C] (n valid scores a head) becomes exp(s - m) with m the
// running max [G], and where a head's max grows its acc slice [D] and running sum l are rescaled.
template <class Ops>
inline void softmax_chunk(float* s, int C, int n, int G, float* m, float* l, float* acc, int D) {
  if constexpr (Ops::kSplitSoftmax) {
    if (G > 1) return softmax_chunk_split<Ops>(s, C, n, G, m, l, acc, D);
  }
  for (int g = 0; g < G; ++g) {
    float* sg = s + g * C;
    const float cm = Ops::max_n(sg, n);
    const float mn = cm > m[g] ? cm : m[g];
    if (mn > m[g]) rescale_head<Ops>(g, mn, m, l, acc, D);
    // One vector pass: these used to be scalar loops with serial max and sum chains, a tenth of the
    // kernel's time at GQA 8 (about 30 of 225 cycles a token-head in L2 on the EPYC dev VM).
    l[g] += Ops::exp_shift_sum(sg, n, mn);
  }
}

// out [G, D] = acc / l and lse = m + log l per head; zeros and -inf for a head that attended nothing.
inline void finish_heads(const kvoff::AttnTask& t, const float* acc, const float* m, const float* l) {
  const int G = t.groupSize, D = t.headDim;
  for (int g = 0; g < G; ++g) {
    float* o = t.out + g * D;
    if (l[g] == 0.f || m[g] == -INFINITY) {
      for (int i = 0; i < D; ++i) o[i] = 0.f;
      t.lse[g] = -INFINITY;
      continue;
    }
    const float inv = 1.f / l[g];
    for (int i = 0; i < D; ++i) o[i] = acc[g * D + i] * inv;
    t.lse[g] = m[g] + std::log(l[g]);
  }
}

// C tokens a chunk: one max/rescale a chunk instead of a token. attend_head_impl picks C.
template <class Ops, int C>
void attend_head_chunks(const kvoff::AttnTask& t) {
  using kvoff::KvDtype;
  const int D = t.headDim, G = t.groupSize;
  constexpr int kPrefetchAhead = KVOFF_PREFETCH_AHEAD;  // tokens between the chunk in use and the one prefetched
  const size_t need = 2 * static_cast<size_t>(G) * D + static_cast<size_t>(G) * C + 2 * static_cast<size_t>(D) + 2 * G + 64;
  float* acc = kvoff::kernel_scratch(need);  // [G, D] unnormalised output
  float* s = acc + G * D;        // [G, C] scores, then probabilities
  float* kf = s + G * C;         // [D] one K row in fp32
  float* vf = kf + D;            // [D] one V row in fp32
  float* m = vf + D;             // [G] running max
  float* l = m + G;              // [G] running sum of exp
  float* qp = l + G;             // [G, D] q permuted (bf16) or blocked (kBlockedQ), when used (fast path only)
  float* csum = qp;              // [G, D] one chunk's value sums (the other path), added to acc once a chunk
  for (int i = 0; i < G * D; ++i) acc[i] = 0.f;
  for (int g = 0; g < G; ++g) { m[g] = -INFINITY; l[g] = 0.f; }

  const size_t rowBytes = static_cast<size_t>(2) * D * 2;
  const bool bf16 = t.dtype == KvDtype::BF16;
  // Fast path: whole-row SIMD kernels that convert each K/V row once for all G query heads and
  // keep the G output slices in registers. Needs headDim to be a multiple of the lane count.
  const bool fast = Ops::kLanes > 0 && D % Ops::kLanes == 0;
  // bf16 rows of whole 32-channel blocks take the permuted form where the ISA has it: q and acc in that
  // order for the whole call, acc put back at the end. From GQA 8 only: EPYC dev VM, one thread, in L2,
  // G8 D64 / D128 106 -> 103 / 176 -> 168 cycles a token, G4 unchanged, G1 61 -> 69 (its value sums walk
  // each block twice).
  const bool perm = Ops::kPermBf16 && fast && bf16 && D % 32 == 0 && G >= 8;
  const float* q = t.q;
  if (perm) {
    permute_blocks(qp, t.q, static_cast<size_t>(G) * D);
    q = qp;
  }
  if (Ops::kBlockedQ && fast && !perm) {  // the permuted-bf16 scores take q unblocked
    block_q(qp, t.q, G, D, Ops::kLanes);
    q = qp;
  }
  int ex = 0;
  for (int p0 = 0; p0 < t.numTokens;) {
    int n;
    const uint8_t* rows = chunk_rows(t, p0, C, &n);
    // Software prefetch of a chunk ahead: the hardware prefetcher alone leaves half the DRAM
    // bandwidth unused here because compute is interleaved with the stream and blocks are scattered.
    // Into L2, not L1 (locality 2): 128 tokens of K+V ahead is 64 KiB at head_dim 128, more than L1
    // holds, so L1-targeted lines were evicted before use. Measured on the 2-core EPYC dev machine, one
    // thread, bf16 D128 32k (G1/G4/G8 GB/s): L1 at 64 ahead 7.4/6.3/4.2, L2 at 64 10.1/7.8/4.5, L2 at 128
    // 9.7/7.8/4.8, L2 at 256 9.0/7.3/4.4 (memcpy 12.3).
    // And the next chunk, already on its way to L2, on into L1 (+2-6% at G1/G4/G8 on the same machine).
    // Both streams go out a line per step of the Ops loops (PrefetchCursor), with floors at the phase
    // boundaries. C++ harness, one thread, 128 MiB of shuffled blocks, bf16 D128, G1/G4/G8 GB/s: on the EPYC
    // VM, all at the chunk's start 11.4/8.6/5.4; on an H100 Xeon host, the ahead chunk in thirds at the phase
    // boundaries 13.3-14.5/10.7-10.9/6.5-6.6, both streams stepped 15.8-16.1/12.5/9.0 (memcpy 11.6-13.1).
    kvoff::PrefetchCursor pf = chunk_prefetch(t, p0 + n, C, kPrefetchAhead);
    bool live[C];
    const int nlive = mark_live(t, p0, n, &ex, live);
    if (fast) {
      if constexpr (Ops::kPermBf16) {
        if (perm) Ops::scores_bf16p(q, G, D, rows, rowBytes, n, live, t.scale, s, C, pf);
      }
      if (!perm) {
        if (bf16) Ops::template scores<true>(q, G, D, rows, rowBytes, n, live, t.scale, s, C, pf);
        else Ops::template scores<false>(q, G, D, rows, rowBytes, n, live, t.scale, s, C, pf);
      }
    } else {
      for (int j = 0; j < n; ++j) {
        if (!live[j]) continue;
        const uint16_t* k = reinterpret_cast<const uint16_t*>(rows + j * rowBytes);
        if (bf16) Ops::load_bf16(kf, k, D); else Ops::load_f16(kf, k, D);
        for (int g = 0; g < G; ++g) s[g * C + j] = Ops::dot(t.q + g * D, kf, D) * t.scale;
      }
    }
    if (nlive < n) mask_dead(live, n, G, s, C);
    pf.l2_floor(1);
    if (nlive > 0) {
      softmax_chunk<Ops>(s, C, n, G, m, l, acc, D);
      pf.l2_floor(3);
      if (fast) {
        if constexpr (Ops::kPermBf16) {
          if (perm) Ops::accumulate_bf16p(acc, G, D, rows, rowBytes, n, live, s, C, pf);
        }
        if (!perm) {
          if (bf16) Ops::template accumulate<true>(acc, G, D, rows, rowBytes, n, live, s, C, pf);
          else Ops::template accumulate<false>(acc, G, D, rows, rowBytes, n, live, s, C, pf);
        }
      } else {
        // Summed from zero over the chunk and added to acc once, as the SIMD value sums are: one rounding into the
        // long sum a chunk, not a token.
        for (int i = 0; i < G * D; ++i) csum[i] = 0.f;
        for (int j = 0; j < n; ++j) {
          if (!live[j]) continue;
          const uint16_t* v = reinterpret_cast<const uint16_t*>(rows + j * rowBytes) + D;
          if (bf16) Ops::load_bf16(vf, v, D); else Ops::load_f16(vf, v, D);
          for (int g = 0; g < G; ++g) Ops::axpy(csum + g * D, s[g * C + j], vf, D);
        }
        for (int g = 0; g < G; ++g) Ops::axpy(acc + g * D, 1.f, csum + g * D, D);
      }
    }
    pf.flush();  // an all-excluded chunk still sends both streams on their way
    p0 += n;
  }
  if (perm) unpermute_blocks(acc, static_cast<size_t>(G) * D, bf16_perm_channel);
  finish_heads(t, acc, m, l);
}

// 32 tokens a chunk from Ops::kLongChunksFromG query heads a KV head, 16 below. The chunk's fixed costs (the
// softmax of each head, the output slices' loads and stores) are paid per head, and at GQA 8 they are a tenth of
// the time at 16 (EPYC dev VM, one thread, D64 in L2: 123 -> 113 cycles a token). At GQA 1, 32 was slower (G1
// D128 from DRAM -25%): the L1 stream of a bigger next chunk crowds L1.
template <class Ops>
void attend_head_impl(const kvoff::AttnTask& t) {
  if (t.groupSize >= Ops::kLongChunksFromG) attend_head_chunks<Ops, 32>(t);
  else attend_head_chunks<Ops, 16>(t);
}
