// Attention over device-resident KV rows ([numKvHeads, capacity, 2, headDim] 16-bit per layer): KV writes into
// that region and into the pinned host paged KV, split-K ("flash-decoding") decode with a combine pass, LSE
// merge, and tiled causal prefill. All f32 math; every launch is asynchronous on a kvoff stream.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "cuda/cuda_api.h"
#include "cuda/cuda_attention.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_kernels.cuh"
#include "cuda/cuda_prefill_tc.h"

namespace kvoff {
namespace {

// ---- kernels ----

constexpr float kLog2e = 1.4426950408889634f;  // scores are kept in the log2 domain so exp2 (one MUFU op) replaces exp
constexpr float kLn2 = 0.6931471805599453f;

// Bit casts and the f32 <-> 16-bit conversions come from half.h (shared with the CPU kernels).

// 16-bit storage to f32 (exact for both formats).
template <bool BF16>
__host__ __device__ __forceinline__ float half_f32(uint16_t h) {
  if (BF16) return bits_f32(static_cast<uint32_t>(h) << 16);
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h));
#else
  return f16_to_f32(h);
#endif
}

// Two packed 16-bit values (element 0 in the low half) to f32.
template <bool BF16>
__host__ __device__ __forceinline__ void half2_f32(uint32_t w, float& lo, float& hi) {
  if (BF16) {
    lo = bits_f32(w << 16);
    hi = bits_f32(w & 0xffff0000u);
    return;
  }
#ifdef __CUDA_ARCH__
  __half2 h;
  memcpy(&h, &w, 4);
  const float2 f = __half22float2(h);
  lo = f.x;
  hi = f.y;
#else
  lo = f16_to_f32(static_cast<uint16_t>(w & 0xffffu));
  hi = f16_to_f32(static_cast<uint16_t>(w >> 16));
#endif
}

template <bool BF16>
__host__ __device__ __forceinline__ uint16_t f32_half(float f) {
  return BF16 ? f32_to_bf16(f) : f32_to_f16(f);
}

__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }

// ---- KV write (device region or pinned host paged region) ----

constexpr int kWriteThreads = 256;

struct KvWriteParams {
  const float* k;  // [tokens, numKvHeads, headDim] f32, token t at t * srcRowStride
  const float* v;
  uint64_t srcRowStride;
  uint16_t* dst;  // device region, or the device view of the host paged region
  uint32_t tokens, numKvHeads, headDim;
  bool host;  // paged host layout (blocks) instead of the device layout (capacity rows per head)
  uint64_t capacity, slot;               // device layout: token t of head h -> row h * capacity + slot + t
  uint32_t blockSize, start, firstBlock;  // host layout: position start + t, blocks[] = block table from firstBlock on
  bool batched;                           // token t is sequence t's: device slot slots[t] of region t; host block blocks[t], row slots[t]
  int32_t blocks[kStoreBlocksPerLaunch];
  int32_t slots[kBatchMaxSeqs];
};

// Row (in units of 2 * headDim elements) that token t of head h lands in.
__host__ __device__ __forceinline__ uint64_t write_row(const KvWriteParams& p, uint32_t t, uint32_t h) {
  if (p.batched) {
    if (!p.host) return (static_cast<uint64_t>(t) * p.numKvHeads + h) * p.capacity + p.slots[t];
    return (static_cast<uint64_t>(p.blocks[t]) * p.numKvHeads + h) * p.blockSize + p.slots[t];
  }
  if (!p.host) return static_cast<uint64_t>(h) * p.capacity + p.slot + t;
  const uint32_t pos = p.start + t;
  const uint64_t block = static_cast<uint64_t>(p.blocks[pos / p.blockSize - p.firstBlock]);
  return (block * p.numKvHeads + h) * p.blockSize + pos % p.blockSize;
}

// One thread converts W consecutive elements of one K or V row and stores them as one W * 2-byte word, so a
// warp writes 32 * W * 2 contiguous bytes: full PCIe write transactions for the host store. Rows are numbered
// (token, head); within a row the K half comes first, as in the destination.
template <int W, bool BF16>
__global__ void __launch_bounds__(kWriteThreads) kv_write_kernel(const KvWriteParams p) {
  using Word = typename std::conditional<W == 8, uint4, typename std::conditional<W == 4, uint2, typename std::conditional<W == 2, uint32_t, uint16_t>::type>::type>::type;
  const uint32_t D = p.headDim;
  const uint32_t perRow = 2 * D / W;  // words per (token, head) row
  const uint64_t total = static_cast<uint64_t>(p.tokens) * p.numKvHeads * perRow;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = i / perRow;
    const uint32_t e = static_cast<uint32_t>(i - r * perRow) * W;  // element in [0, 2D); W divides D, so a word is all K or all V
    const uint32_t t = static_cast<uint32_t>(r / p.numKvHeads), h = static_cast<uint32_t>(r % p.numKvHeads);
    const float* src = (e < D ? p.k : p.v) + t * p.srcRowStride + static_cast<uint64_t>(h) * D + (e < D ? e : e - D);
    uint16_t bits[W];
#pragma unroll
    for (int j = 0; j < W; ++j) bits[j] = f32_half<BF16>(src[j]);
    Word w;
    memcpy(&w, bits, sizeof(Word));
    *reinterpret_cast<Word*>(p.dst + write_row(p, t, h) * 2 * D + e) = w;
  }
}

// ---- Split-K decode ----

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kCombineWarps = 8;
constexpr int kCombineMaxChunks = 2048;  // >= attend_chunk_bound for any head count (kAttendTargetCtas)
static_assert(kCombineMaxChunks >= kAttendTargetCtas, "combine keeps one weight per chunk in shared memory");

// Query heads per CTA: 1, 4 or 8 (a group of 2 or 3 runs masked in a 4-wide CTA); groups over 8 take several
// CTAs per chunk, each reading the chunk's KV again.
inline int decode_gt(int G) { return G == 1 ? 1 : G <= 4 ? 4 : 8; }

struct DecodeParams {
  const uint16_t* kv;  // [H, capacity, 2, D]
  const float* q;      // [H * G, D]
  float* out;          // [H * G, D]
  float* lse;          // [H * G]
  float* pacc;         // split mode: [H, chunks, G, D] unnormalised partial outputs
  float* pm;           // [H, chunks, G] running maxima (log2 domain)
  float* pl;           // [H, chunks, G] sums of 2^(s - m)
  uint64_t capacity;
  int H, G, D;
  int chunkRows, chunks;  // chunks: per head in this call, the stride of the partials
  int direct;             // one chunk per head: write out and lse here, no combine pass
  float qscale;           // scale * log2(e)
  int seqHeads;           // KV heads per sequence: head h's queries are sequence h / seqHeads's
  uint64_t qSeqStride;    // floats between sequences' queries
  int counts[kAttendMaxHeads];
};

// Element j of a lane's 8-element slice of a head_dim vector: 8 consecutive dims (one 16-byte load) on the
// vector path, dims part + 32 j on the scalar path (any head_dim up to 256, any alignment).
template <bool VEC>
__host__ __device__ __forceinline__ int slice_dim(int part, int j) {
  return VEC ? part * 8 + j : part + 32 * j;
}

// One KV row's slice for a lane: 8 K values and 8 V values, raw.
struct RowSlice {
  uint4 k, v;
};

template <bool VEC>
__device__ __forceinline__ RowSlice load_slice(const uint16_t* row, int part, int D) {
  RowSlice s;
  if (VEC) {
    // Read once per step: streaming loads keep the KV stream from evicting q and the partials from L2.
    s.k = load_stream(reinterpret_cast<const uint4*>(row) + part);
    s.v = load_stream(reinterpret_cast<const uint4*>(row + D) + part);
  } else {
    uint16_t kk[8], vv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int d = slice_dim<false>(part, j);
      kk[j] = d < D ? load_stream(row + d) : 0;
      vv[j] = d < D ? load_stream(row + D + d) : 0;
    }
    memcpy(&s.k, kk, 16);
    memcpy(&s.v, vv, 16);
  }
  return s;
}

template <bool BF16>
__device__ __forceinline__ void unpack8(const uint4& w, float f[8]) {
  half2_f32<BF16>(w.x, f[0], f[1]);
  half2_f32<BF16>(w.y, f[2], f[3]);
  half2_f32<BF16>(w.z, f[4], f[5]);
  half2_f32<BF16>(w.w, f[6], f[7]);
}

// Online-softmax state merge: (m, l, acc) absorbs (m2, l2, acc2). -inf maxima (no rows seen) weigh 0.
__device__ __forceinline__ float merge_scale(float m, float mn) { return exp2f(m - (mn == -INFINITY ? 0.f : mn)); }

// CTA (chunk, KV head h, query slice z) attends rows [chunk * chunkRows, ...) of head h for query heads
// z * GT .. z * GT + GT - 1 of the group. Lanes are split into groups of LPR, one KV row per group: each lane
// holds an 8-element slice of q (all GT query heads), of K and of V, so every K/V byte loaded serves all
// GT query heads (GQA reads the KV once). A warp covers RPS = 32 / LPR rows per step and U steps per loop
// iteration, issuing all 2U 16-byte loads per lane before it uses any (4 KB in flight per warp at head_dim
// 128). Each lane group keeps its own running max and sum; groups, then warps, are merged at the end.
template <int LPR, int GT, bool VEC, bool BF16>
__global__ void __launch_bounds__(kDecodeThreads) attend_decode_kernel(const DecodeParams p) {
  constexpr int RPS = 32 / LPR;
  constexpr int U = GT >= 8 ? 2 : 4;  // fewer rows per iteration when 8 query heads' state fills the registers
  constexpr int SD = VEC ? 8 * LPR : kAttendMaxHeadDim;  // head_dim bound of the shared merge buffer
  __shared__ float sm_m[kDecodeWarps][GT], sm_l[kDecodeWarps][GT];
  __shared__ float sm_acc[kDecodeWarps][GT][SD];

  const int chunk = blockIdx.x, h = blockIdx.y, g0 = blockIdx.z * GT;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int sub = lane / LPR, part = lane % LPR;
  const int D = p.D, G = p.G;
  const int64_t n = p.counts[h];
  const int64_t row0 = static_cast<int64_t>(chunk) * p.chunkRows;
  // Whole CTAs leave together (no barrier below is missed). In direct mode chunk 0 always runs: it writes
  // zeros and -inf for a head with no rows.
  if (row0 >= n && !(p.direct && chunk == 0)) return;
  const int64_t row1 = min(n, row0 + p.chunkRows);
  const int gn = min(GT, G - g0);  // live query heads; the rest carry q = 0 and are never written
  const float* qh = p.q + static_cast<uint64_t>(h / p.seqHeads) * p.qSeqStride + static_cast<int64_t>(h % p.seqHeads) * G * D;

  float qv[GT][8];
#pragma unroll
  for (int g = 0; g < GT; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int d = slice_dim<VEC>(part, j);
      qv[g][j] = g < gn && d < D ? load_ro(qh + static_cast<int64_t>(g0 + g) * D + d) * p.qscale : 0.f;
    }
  float m[GT], l[GT], acc[GT][8];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  }

  const uint16_t* head = p.kv + static_cast<uint64_t>(h) * p.capacity * 2 * D;
  // Warp w takes iterations w, w + 4, ...: the four warps of a CTA stream adjacent 4 KB pieces together.
  for (int64_t base = row0 + static_cast<int64_t>(warp) * RPS * U; base < row1; base += static_cast<int64_t>(kDecodeWarps) * RPS * U) {
    RowSlice rs[U];
    bool live[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t r = base + u * RPS + sub;
      live[u] = r < row1;
      if (live[u]) rs[u] = load_slice<VEC>(head + r * 2 * D, part, D);
      else rs[u].k = rs[u].v = make_uint4(0, 0, 0, 0);
    }
    float s[U][GT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      unpack8<BF16>(rs[u].k, kf);
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) dot = fmaf(qv[g][j], kf[j], dot);
        s[u][g] = dot;
      }
    }
    // Sum the slices of each row across its LPR lanes; every lane of the group ends with the full score.
#pragma unroll
    for (int o = LPR / 2; o > 0; o >>= 1)
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int g = 0; g < GT; ++g) s[u][g] += shfl_xor(s[u][g], o);
    float vf[U][8];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      unpack8<BF16>(rs[u].v, vf[u]);
      if (!live[u])
#pragma unroll
        for (int g = 0; g < GT; ++g) s[u][g] = -INFINITY;
    }
    // One rescale per U rows rather than per row.
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      float mx = s[0][g];
#pragma unroll
      for (int u = 1; u < U; ++u) mx = fmaxf(mx, s[u][g]);
      const float mn = fmaxf(m[g], mx);
      const float ms = mn == -INFINITY ? 0.f : mn;
      const float alpha = exp2f(m[g] - ms);
      float pr[U], sum = 0.f;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        pr[u] = exp2f(s[u][g] - ms);
        sum += pr[u];
      }
      l[g] = l[g] * alpha + sum;
      m[g] = mn;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float a = acc[g][j] * alpha;
#pragma unroll
        for (int u = 0; u < U; ++u) a = fmaf(pr[u], vf[u][j], a);
        acc[g][j] = a;
      }
    }
  }

  // Merge the RPS lane groups of the warp (lanes with the same part, different sub).
#pragma unroll
  for (int o = LPR; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      const float m2 = shfl_xor(m[g], o), l2 = shfl_xor(l[g], o);
      const float mn = fmaxf(m[g], m2);
      const float a1 = merge_scale(m[g], mn), a2 = merge_scale(m2, mn);
      l[g] = l[g] * a1 + l2 * a2;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[g][j] = acc[g][j] * a1 + shfl_xor(acc[g][j], o) * a2;
      m[g] = mn;
    }
  }
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < GT; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int d = slice_dim<VEC>(part, j);
        if (d < D) sm_acc[warp][g][d] = acc[g][j];
      }
      if (part == 0) {
        sm_m[warp][g] = m[g];
        sm_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();
  // Merge the warps; thread t finishes (query head, dim) pairs t, t + 128, ...
  for (int idx = threadIdx.x; idx < gn * D; idx += kDecodeThreads) {
    const int g = idx / D, d = idx - g * D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float a = merge_scale(sm_m[w][g], M);
      L = fmaf(sm_l[w][g], a, L);
      A = fmaf(sm_acc[w][g][d], a, A);
    }
    const int64_t row = static_cast<int64_t>(h) * G + g0 + g;  // query row in q / out / lse
    if (p.direct) {
      p.out[row * D + d] = L > 0.f ? A / L : 0.f;
      if (d == 0) p.lse[row] = L > 0.f ? (M + log2f(L)) * kLn2 : -INFINITY;
    } else {
      const int64_t pi = (static_cast<int64_t>(h) * p.chunks + chunk) * G + g0 + g;  // partial index
      p.pacc[pi * D + d] = A;
      if (d == 0) {
        p.pm[pi] = M;
        p.pl[pi] = L;
      }
    }
  }
}

struct CombineParams {
  const float* pacc;  // [H, chunks, G, D]
  const float* pm;    // [H, chunks, G]
  const float* pl;
  float* out;  // [H * G, D]
  float* lse;  // [H * G]
  int H, G, D, chunks, chunkRows;
  int counts[kAttendMaxHeads];
};

// Block-wide reduction over kCombineWarps * 32 threads; every thread gets the result. `red` is reused only
// after the barrier that ends the previous use.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float w = shfl_xor(v, o);
    v = MAX ? fmaxf(v, w) : v + w;
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < kCombineWarps; ++w) r = MAX ? fmaxf(r, red[w]) : r + red[w];
  __syncthreads();
  return r;
}

// CTA (query row h * G + g, 32-dim slice): weights 2^(m_c - M) of the head's chunks, then the weighted sum of
// the partial outputs, the 8 warps taking every 8th chunk so the partials are read with many loads in flight.
__global__ void __launch_bounds__(kCombineWarps * 32) attend_combine_kernel(const CombineParams p) {
  __shared__ float w[kCombineMaxChunks];
  __shared__ float red[kCombineWarps];
  __shared__ float part[kCombineWarps][32];
  const int row = blockIdx.x, h = row / p.G, g = row - h * p.G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d = blockIdx.y * 32 + lane;
  const int nc = (p.counts[h] + p.chunkRows - 1) / p.chunkRows;
  if (nc == 0) {  // nothing attended: zeros and -inf, like kvAttend
    if (warp == 0 && d < p.D) p.out[static_cast<int64_t>(row) * p.D + d] = 0.f;
    if (blockIdx.y == 0 && threadIdx.x == 0) p.lse[row] = -INFINITY;
    return;
  }
  const int64_t base = static_cast<int64_t>(h) * p.chunks * p.G + g;  // partial index of chunk c: base + c * G
  float mx = -INFINITY;
  for (int c = threadIdx.x; c < nc; c += blockDim.x) mx = fmaxf(mx, p.pm[base + static_cast<int64_t>(c) * p.G]);
  const float M = block_reduce<true>(mx, red);
  const float ms = M == -INFINITY ? 0.f : M;
  float ls = 0.f;
  for (int c = threadIdx.x; c < nc; c += blockDim.x) {
    const int64_t pi = base + static_cast<int64_t>(c) * p.G;
    const float wc = exp2f(p.pm[pi] - ms);
    w[c] = wc;
    ls = fmaf(wc, p.pl[pi], ls);
  }
  const float L = block_reduce<false>(ls, red);  // its barriers also publish w[]
  float a = 0.f;
  if (d < p.D)
    for (int c = warp; c < nc; c += kCombineWarps) a = fmaf(w[c], p.pacc[(base + static_cast<int64_t>(c) * p.G) * p.D + d], a);
  part[warp][lane] = a;
  __syncthreads();
  if (warp == 0 && d < p.D) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kCombineWarps; ++k) s += part[k][lane];
    p.out[static_cast<int64_t>(row) * p.D + d] = L > 0.f ? s / L : 0.f;
  }
  if (blockIdx.y == 0 && threadIdx.x == 0) p.lse[row] = L > 0.f ? (M + log2f(L)) * kLn2 : -INFINITY;
}

// ---- LSE merge ----

constexpr int kMergeWarps = 8;

struct MergeParams {
  const float *oA, *lseA, *oB, *lseB;
  float *out, *lseOut;
  uint32_t rows, D;
};

// One warp per row: every lane reads the row's two lse values before lane 0 writes lseOut (which may be lseA or
// lseB), and each output element is read and written by one lane (out may be oA or oB). The arithmetic is
// merge_topk_ops.cc's lseMerge.
__global__ void __launch_bounds__(kMergeWarps * 32) lse_merge_kernel(const MergeParams p) {
  const uint32_t row = blockIdx.x * kMergeWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= p.rows) return;  // whole warps
  const float la = p.lseA[row], lb = p.lseB[row];
  const float m = la > lb ? la : lb;
  const uint64_t off = static_cast<uint64_t>(row) * p.D;
  float lo;
  if (m == -INFINITY) {
    for (uint32_t i = lane; i < p.D; i += 32) p.out[off + i] = 0.f;
    lo = -INFINITY;
  } else {
    const float wa = la == -INFINITY ? 0.f : expf(la - m);
    const float wb = lb == -INFINITY ? 0.f : expf(lb - m);
    const float sum = wa + wb, inv = 1.f / sum;
    for (uint32_t i = lane; i < p.D; i += 32) p.out[off + i] = (wa * p.oA[off + i] + wb * p.oB[off + i]) * inv;
    lo = m + logf(sum);
  }
  __syncwarp();
  if (lane == 0) p.lseOut[row] = lo;
}

// ---- Tiled causal prefill ----

constexpr int kPrefillBM = 64;  // query rows (token, query head of the group) per CTA
constexpr int kPrefillBN = 32;  // KV rows per tile
constexpr int kPrefillThreads = 256;

struct PrefillParams : PrefillArgs {
  int QS;  // shared-memory row stride in floats: D rounded up to 4, plus 4 (16-byte rows, conflict-free float4 reads)
};

inline int prefill_row_stride(int D) { return (D + 3) / 4 * 4 + 4; }
inline size_t prefill_smem_bytes(int D) {
  return (static_cast<size_t>(kPrefillBM + 2 * kPrefillBN) * prefill_row_stride(D) + kPrefillBM * (kPrefillBN + 1)) * sizeof(float);
}

__device__ __forceinline__ float* prefill_smem() {
  extern __shared__ float4 prefill_smem4[];
  return reinterpret_cast<float*>(prefill_smem4);
}

// CTA (query tile, KV head h): 64 query rows i = t * G + g (the G query heads of 64 / G tokens share every K/V
// tile), Q scaled in shared memory, K/V tiles of 32 rows streamed through shared memory as f32, online softmax;
// the T x n score matrix never exists. 256 threads as 16 x 16: thread (ty, tx) owns query rows ty + 16 i
// (i < 4), score columns tx + 16 j (j < 2) of a tile, and output dims tx + 16 e (e < DPT). A row's 16 column
// owners are one half-warp, so its max and sum are shuffles.
template <int DPT, bool BF16>
__global__ void __launch_bounds__(kPrefillThreads) attend_prefill_kernel(const PrefillParams p) {
  float* Qs = prefill_smem();                 // [64, QS]
  float* Ks = Qs + kPrefillBM * p.QS;         // [32, QS]
  float* Vs = Ks + kPrefillBN * p.QS;         // [32, QS]
  float* Ps = Vs + kPrefillBN * p.QS;         // [64, 33] probabilities of the current tile
  const int h = blockIdx.y;
  const int tile = gridDim.x - 1 - blockIdx.x;  // the longest (latest) tiles start first
  const int D = p.D, G = p.G, QS = p.QS;
  const int64_t rowsTotal = static_cast<int64_t>(p.T) * G;
  const int64_t i0 = static_cast<int64_t>(tile) * kPrefillBM;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;

  for (int idx = threadIdx.x; idx < kPrefillBM * QS; idx += kPrefillThreads) {
    const int r = idx / QS, c = idx - r * QS;
    const int64_t i = i0 + r;
    float val = 0.f;
    if (i < rowsTotal && c < D) {
      const int64_t t = i / G, g = i - t * G;
      val = p.q[t * static_cast<int64_t>(p.qRowStride) + (static_cast<int64_t>(h) * G + g) * D + c] * p.qscale;
    }
    Qs[idx] = val;
  }
  int64_t lim[4];  // last KV row each owned query row attends; -1 for padding rows
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t iq = i0 + ty + 16 * i;
    lim[i] = iq < rowsTotal ? p.start + iq / G : -1;
  }
  float m[4], l[4], o[4][DPT];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int e = 0; e < DPT; ++e) o[i][e] = 0.f;
  }
  const int64_t tLast = min(static_cast<int64_t>(p.T) - 1, (i0 + kPrefillBM - 1) / G);
  const int64_t kvEnd = p.start + tLast + 1;  // rows [0, kvEnd) are attended by some row of the tile
  const uint16_t* head = p.kv + static_cast<uint64_t>(h) * p.capacity * 2 * D;
  const int D4 = (D + 3) / 4 * 4;

  for (int64_t j0 = 0; j0 < kvEnd; j0 += kPrefillBN) {
    __syncthreads();  // the previous tile's K, V and P are no longer read (and Q is stored, the first time)
    for (int idx = threadIdx.x; idx < kPrefillBN * QS; idx += kPrefillThreads) {
      const int r = idx / QS, c = idx - r * QS;
      const int64_t row = j0 + r;
      float kf = 0.f, vf = 0.f;  // rows past kvEnd are zeros, never stale memory: 0 * NaN would poison the sums
      if (row < kvEnd && c < D) {
        const uint16_t* kr = head + row * 2 * D;
        kf = half_f32<BF16>(load_ro(kr + c));
        vf = half_f32<BF16>(load_ro(kr + D + c));
      }
      Ks[idx] = kf;
      Vs[idx] = vf;
    }
    __syncthreads();
    float s[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i) s[i][0] = s[i][1] = 0.f;
    for (int d = 0; d < D4; d += 4) {
      float4 qa[4], kb[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) qa[i] = *reinterpret_cast<const float4*>(Qs + (ty + 16 * i) * QS + d);
#pragma unroll
      for (int j = 0; j < 2; ++j) kb[j] = *reinterpret_cast<const float4*>(Ks + (tx + 16 * j) * QS + d);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float a = s[i][j];
          a = fmaf(qa[i].x, kb[j].x, a);
          a = fmaf(qa[i].y, kb[j].y, a);
          a = fmaf(qa[i].z, kb[j].z, a);
          a = fmaf(qa[i].w, kb[j].w, a);
          s[i][j] = a;
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j)
        if (j0 + tx + 16 * j > lim[i]) s[i][j] = -INFINITY;  // causal (and padding rows, lim -1)
      float mx = fmaxf(s[i][0], s[i][1]);
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, shfl_xor(mx, off));
      const float mn = fmaxf(m[i], mx);
      const float ms = mn == -INFINITY ? 0.f : mn;
      const float alpha = exp2f(m[i] - ms);
      const float p0 = exp2f(s[i][0] - ms), p1 = exp2f(s[i][1] - ms);
      float rs = p0 + p1;
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) rs += shfl_xor(rs, off);
      l[i] = l[i] * alpha + rs;
      m[i] = mn;
      Ps[(ty + 16 * i) * (kPrefillBN + 1) + tx] = p0;
      Ps[(ty + 16 * i) * (kPrefillBN + 1) + tx + 16] = p1;
#pragma unroll
      for (int e = 0; e < DPT; ++e) o[i][e] *= alpha;
    }
    __syncthreads();
    const int cmax = static_cast<int>(min(static_cast<int64_t>(kPrefillBN), kvEnd - j0));
    for (int c = 0; c < cmax; ++c) {
      float pc[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) pc[i] = Ps[(ty + 16 * i) * (kPrefillBN + 1) + c];
#pragma unroll
      for (int e = 0; e < DPT; ++e) {
        const int d = tx + 16 * e;
        const float v = d < D ? Vs[c * QS + d] : 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) o[i][e] = fmaf(pc[i], v, o[i][e]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t iq = i0 + ty + 16 * i;
    if (iq >= rowsTotal) continue;
    const int64_t t = iq / G, g = iq - t * G;
    const int64_t orow = t * p.H * G + static_cast<int64_t>(h) * G + g;  // [T, H * G] row of out and lse
    const float inv = 1.f / l[i];  // l >= 1: row 0 is attended by every query and its max term is 2^0
#pragma unroll
    for (int e = 0; e < DPT; ++e) {
      const int d = tx + 16 * e;
      if (d < D) p.out[orow * D + d] = o[i][e] * inv;
    }
    if (tx == 0) p.lse[orow] = (m[i] + log2f(l[i])) * kLn2;
  }
}

// ---- launchers ----

template <int W, bool BF16>
cudaError_t launch_write_w(const KvWriteParams& p, cudaStream_t stream) {
  const uint64_t total = static_cast<uint64_t>(p.tokens) * p.numKvHeads * (2 * p.headDim / W);
  if (total == 0) return cudaSuccess;
  const uint64_t want = (total + kWriteThreads - 1) / kWriteThreads;
  const unsigned blocks = static_cast<unsigned>(std::min<uint64_t>(want, static_cast<uint64_t>(cudadev::sm_count()) * 16));  // grid-stride beyond
  kv_write_kernel<W, BF16><<<blocks, kWriteThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// The widest word (8, 4, 2 or 1 elements) that divides head_dim and the destination base's alignment.
template <bool BF16>
cudaError_t launch_write(const KvWriteParams& p, cudaStream_t stream) {
  const uintptr_t base = reinterpret_cast<uintptr_t>(p.dst);
  if (p.headDim % 8 == 0 && base % 16 == 0) return launch_write_w<8, BF16>(p, stream);
  if (p.headDim % 4 == 0 && base % 8 == 0) return launch_write_w<4, BF16>(p, stream);
  if (p.headDim % 2 == 0 && base % 4 == 0) return launch_write_w<2, BF16>(p, stream);
  return launch_write_w<1, BF16>(p, stream);
}

cudaError_t launch_write_any(const KvWriteParams& p, KvDtype dt, cudaStream_t stream) {
  return dt == KvDtype::BF16 ? launch_write<true>(p, stream) : launch_write<false>(p, stream);
}

template <int LPR, int GT, bool VEC, bool BF16>
cudaError_t launch_decode_t(const DecodeParams& p, dim3 grid, cudaStream_t stream) {
  attend_decode_kernel<LPR, GT, VEC, BF16><<<grid, kDecodeThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int GT, bool BF16>
cudaError_t launch_decode_g(const DecodeParams& p, bool vec, dim3 grid, cudaStream_t stream) {
  if (!vec) return launch_decode_t<32, GT, false, BF16>(p, grid, stream);
  switch (p.D) {
    case 32: return launch_decode_t<4, GT, true, BF16>(p, grid, stream);
    case 64: return launch_decode_t<8, GT, true, BF16>(p, grid, stream);
    case 128: return launch_decode_t<16, GT, true, BF16>(p, grid, stream);
    default: return launch_decode_t<32, GT, true, BF16>(p, grid, stream);  // 256
  }
}

template <bool BF16>
cudaError_t launch_decode(const DecodeParams& p, bool vec, dim3 grid, cudaStream_t stream) {
  switch (decode_gt(p.G)) {
    case 1: return launch_decode_g<1, BF16>(p, vec, grid, stream);
    case 4: return launch_decode_g<4, BF16>(p, vec, grid, stream);
    default: return launch_decode_g<8, BF16>(p, vec, grid, stream);
  }
}

template <int DPT, bool BF16>
cudaError_t launch_prefill_t(const PrefillParams& p, dim3 grid, cudaStream_t stream) {
  // Over 48 KB of dynamic shared memory needs an opt-in, once per kernel, for the largest head_dim it serves.
  static std::once_flag once;
  static cudaError_t attr = cudaSuccess;
  std::call_once(once, [] {
    attr = cudaFuncSetAttribute(attend_prefill_kernel<DPT, BF16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(prefill_smem_bytes(DPT * 16)));
  });
  if (attr != cudaSuccess) return attr;
  attend_prefill_kernel<DPT, BF16><<<grid, kPrefillThreads, prefill_smem_bytes(p.D), stream>>>(p);
  return cudaGetLastError();
}

template <bool BF16>
cudaError_t launch_prefill(const PrefillParams& p, dim3 grid, cudaStream_t stream) {
  if (p.D <= 64) return launch_prefill_t<4, BF16>(p, grid, stream);
  if (p.D <= 128) return launch_prefill_t<8, BF16>(p, grid, stream);
  return launch_prefill_t<16, BF16>(p, grid, stream);
}

template <typename T>
T* at(const std::shared_ptr<cudadev::DevArena>& a, const DevRef& r) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(a->ptr) + r.offset);
}

}  // namespace

using namespace cudadev;

CudaStatus cuda_kv_write(const KvWriteCall& c) {
  if (!cuda_usable()) return unavailable();
  auto k = find_arena(c.k.handle);
  if (!k) return gone("device arena", c.k.handle);
  auto v = find_arena(c.v.handle);
  if (!v) return gone("device arena", c.v.handle);
  auto d = find_arena(c.dst.handle);
  if (!d) return gone("device arena", c.dst.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  if (c.tokens == 0) return {};
  KvWriteParams p{};
  p.k = at<const float>(k, c.k);
  p.v = at<const float>(v, c.v);
  p.srcRowStride = c.srcRowStride;
  p.dst = at<uint16_t>(d, c.dst);
  p.tokens = c.tokens;
  p.numKvHeads = c.numKvHeads;
  p.headDim = c.headDim;
  p.host = false;
  p.capacity = c.capacity;
  p.slot = c.slot;
  p.batched = c.slots != nullptr;
  if (p.batched) std::memcpy(p.slots, c.slots, c.tokens * sizeof(int32_t));
  const cudaError_t err = launch_write_any(p, c.dtype, st->s);
  if (err != cudaSuccess) return failed("the cudaKvWrite kernel launch", err);
  hold(*st, {k, v, d});
  return {};
}

CudaStatus cuda_kv_store_host(const KvStoreHostCall& c) {
  if (!cuda_usable()) return unavailable();
  auto k = find_arena(c.k.handle);
  if (!k) return gone("device arena", c.k.handle);
  auto v = find_arena(c.v.handle);
  if (!v) return gone("device arena", c.v.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  if (c.tokens == 0) return {};
  void* view = nullptr;  // the device's address of the mapped host arena
  cudaError_t err = cudaHostGetDevicePointer(&view, c.host->ptr, 0);
  if (err != cudaSuccess) return failed("cudaHostGetDevicePointer of the KV host arena (registered with cudaHostRegister(Mapped)?)", err);
  KvWriteParams p{};
  p.srcRowStride = c.srcRowStride;
  p.dst = reinterpret_cast<uint16_t*>(static_cast<uint8_t*>(view) + c.regionOffset);
  p.numKvHeads = c.numKvHeads;
  p.headDim = c.headDim;
  p.host = true;
  p.blockSize = c.blockSize;
  if (c.blocks) {  // batched: one launch, each token's block and row in it travel in the launch
    p.batched = true;
    p.k = at<const float>(k, c.k);
    p.v = at<const float>(v, c.v);
    p.tokens = c.tokens;
    std::memcpy(p.blocks, c.blocks, c.tokens * sizeof(int32_t));
    std::memcpy(p.slots, c.offsets, c.tokens * sizeof(int32_t));
    err = launch_write_any(p, c.dtype, st->s);
    if (err != cudaSuccess) return failed("the cudaKvStoreHost kernel launch", err);
    hold(*st, {k, v, c.host});
    return {};
  }
  // The block table travels in the launch, kStoreBlocksPerLaunch entries at a time.
  for (uint32_t t0 = 0; t0 < c.tokens;) {
    const uint32_t pos0 = c.start + t0;
    const uint32_t first = pos0 / c.blockSize;
    const uint64_t endPos = static_cast<uint64_t>(first + kStoreBlocksPerLaunch) * c.blockSize;  // first position past the window
    const uint32_t t1 = static_cast<uint32_t>(std::min<uint64_t>(c.tokens, endPos - c.start));
    const uint32_t last = (c.start + t1 - 1) / c.blockSize;
    p.k = at<const float>(k, c.k) + static_cast<uint64_t>(t0) * c.srcRowStride;
    p.v = at<const float>(v, c.v) + static_cast<uint64_t>(t0) * c.srcRowStride;
    p.tokens = t1 - t0;
    p.start = pos0;
    p.firstBlock = first;
    for (uint32_t b = first; b <= last; ++b) p.blocks[b - first] = c.blockIds[b];
    err = launch_write_any(p, c.dtype, st->s);
    if (err != cudaSuccess) return failed("the cudaKvStoreHost kernel launch", err);
    t0 = t1;
  }
  hold(*st, {k, v, c.host});
  return {};
}

CudaStatus cuda_attend_decode(const AttendDecodeCall& c) {
  if (!cuda_usable()) return unavailable();
  auto kv = find_arena(c.kv.handle);
  if (!kv) return gone("device arena", c.kv.handle);
  auto q = find_arena(c.q.handle);
  if (!q) return gone("device arena", c.q.handle);
  auto out = find_arena(c.out.handle);
  if (!out) return gone("device arena", c.out.handle);
  auto lse = find_arena(c.lse.handle);
  if (!lse) return gone("device arena", c.lse.handle);
  auto scratch = find_arena(c.scratch.handle);
  if (!scratch) return gone("device arena", c.scratch.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  const int H = static_cast<int>(c.numKvHeads), G = static_cast<int>(c.groupSize), D = static_cast<int>(c.headDim);
  int64_t maxCount = 0;
  for (int h = 0; h < H; ++h) maxCount = std::max<int64_t>(maxCount, c.counts[h]);
  const int64_t chunks = std::max<int64_t>(1, attend_chunks(H, maxCount));
  DecodeParams p{};
  p.kv = at<const uint16_t>(kv, c.kv);
  p.q = at<const float>(q, c.q);
  p.out = at<float>(out, c.out);
  p.lse = at<float>(lse, c.lse);
  p.capacity = c.capacity;
  p.H = H;
  p.G = G;
  p.D = D;
  p.chunkRows = static_cast<int>(attend_chunk_rows(H, maxCount));
  p.chunks = static_cast<int>(chunks);
  p.direct = chunks == 1;
  p.qscale = c.scale * kLog2e;
  p.seqHeads = c.seqHeads > 0 ? static_cast<int>(c.seqHeads) : H;
  p.qSeqStride = c.seqHeads > 0 ? c.qSeqStride : 0;
  for (int h = 0; h < H; ++h) p.counts[h] = c.counts[h];
  if (!p.direct) {
    float* s = at<float>(scratch, c.scratch);
    const int64_t parts = static_cast<int64_t>(H) * chunks * G;
    p.pacc = s;
    p.pm = s + parts * D;
    p.pl = p.pm + parts;
  }
  // 16-byte K/V slices need 16-byte aligned rows: the region's base (rows are 4 * headDim bytes apart).
  const bool vec = (D == 32 || D == 64 || D == 128 || D == 256) && reinterpret_cast<uintptr_t>(p.kv) % 16 == 0;
  const int gt = decode_gt(G);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(H), static_cast<unsigned>((G + gt - 1) / gt));
  cudaError_t err = c.dtype == KvDtype::BF16 ? launch_decode<true>(p, vec, grid, st->s) : launch_decode<false>(p, vec, grid, st->s);
  if (err != cudaSuccess) return failed("the cudaAttendDecode kernel launch", err);
  if (!p.direct) {
    CombineParams cp{};
    cp.pacc = p.pacc;
    cp.pm = p.pm;
    cp.pl = p.pl;
    cp.out = p.out;
    cp.lse = p.lse;
    cp.H = H;
    cp.G = G;
    cp.D = D;
    cp.chunks = p.chunks;
    cp.chunkRows = p.chunkRows;
    std::memcpy(cp.counts, p.counts, sizeof cp.counts);
    const dim3 cgrid(static_cast<unsigned>(H * G), static_cast<unsigned>((D + 31) / 32));
    attend_combine_kernel<<<cgrid, kCombineWarps * 32, 0, st->s>>>(cp);
    err = cudaGetLastError();
    if (err != cudaSuccess) return failed("the cudaAttendDecode combine launch", err);
  }
  hold(*st, {kv, q, out, lse, scratch});
  return {};
}

CudaStatus cuda_lse_merge(const LseMergeCall& c) {
  if (!cuda_usable()) return unavailable();
  const DevRef refs[6] = {c.oA, c.lseA, c.oB, c.lseB, c.out, c.lseOut};
  std::shared_ptr<DevArena> arenas[6];
  for (int i = 0; i < 6; ++i)
    if (!(arenas[i] = find_arena(refs[i].handle))) return gone("device arena", refs[i].handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  if (c.rows == 0) return {};
  MergeParams p{};
  p.oA = at<const float>(arenas[0], c.oA);
  p.lseA = at<const float>(arenas[1], c.lseA);
  p.oB = at<const float>(arenas[2], c.oB);
  p.lseB = at<const float>(arenas[3], c.lseB);
  p.out = at<float>(arenas[4], c.out);
  p.lseOut = at<float>(arenas[5], c.lseOut);
  p.rows = c.rows;
  p.D = c.headDim;
  lse_merge_kernel<<<(c.rows + kMergeWarps - 1) / kMergeWarps, kMergeWarps * 32, 0, st->s>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return failed("the cudaLseMerge kernel launch", err);
  hold(*st, {arenas[0], arenas[1], arenas[2], arenas[3], arenas[4], arenas[5]});
  return {};
}

CudaStatus cuda_attend_prefill(const AttendPrefillCall& c) {
  if (!cuda_usable()) return unavailable();
  auto q = find_arena(c.q.handle);
  if (!q) return gone("device arena", c.q.handle);
  auto kv = find_arena(c.kv.handle);
  if (!kv) return gone("device arena", c.kv.handle);
  auto out = find_arena(c.out.handle);
  if (!out) return gone("device arena", c.out.handle);
  auto lse = find_arena(c.lse.handle);
  if (!lse) return gone("device arena", c.lse.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  if (c.T == 0) return {};
  PrefillArgs a{};
  a.q = at<const float>(q, c.q);
  a.qRowStride = c.qRowStride;
  a.kv = at<const uint16_t>(kv, c.kv);
  a.capacity = c.capacity;
  a.out = at<float>(out, c.out);
  a.lse = at<float>(lse, c.lse);
  a.T = static_cast<int>(c.T);
  a.start = static_cast<int>(c.start);
  a.H = static_cast<int>(c.numKvHeads);
  a.G = static_cast<int>(c.groupSize);
  a.D = static_cast<int>(c.headDim);
  a.qscale = c.scale * kLog2e;
  if (c.tensorCores && prefill_tc_supported(a.D, a.kv)) {
    const cudaError_t err = launch_prefill_tc(a, c.dtype == KvDtype::BF16, st->s);
    if (err != cudaSuccess) return failed("the cudaAttendPrefill (tensor-core) kernel launch", err);
    hold(*st, {q, kv, out, lse});
    return {};
  }
  PrefillParams p{};
  static_cast<PrefillArgs&>(p) = a;
  p.QS = prefill_row_stride(p.D);
  const uint64_t tiles = (static_cast<uint64_t>(c.T) * c.groupSize + kPrefillBM - 1) / kPrefillBM;
  const dim3 grid(static_cast<unsigned>(tiles), c.numKvHeads);
  const cudaError_t err = c.dtype == KvDtype::BF16 ? launch_prefill<true>(p, grid, st->s) : launch_prefill<false>(p, grid, st->s);
  if (err != cudaSuccess) return failed("the cudaAttendPrefill kernel launch", err);
  hold(*st, {q, kv, out, lse});
  return {};
}

}  // namespace kvoff
