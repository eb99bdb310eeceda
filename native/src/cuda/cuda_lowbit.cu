// CUDA low-bit kernels of the device tier (DESIGN §1 steps 2, 3): KIVI quantize-append from the device KV
// region, GQA-averaged scores over the quantized keys and per-row top-k (the tail's attention is in
// cuda_lowbit_attend.cu). Quantization is bit-exact with src/kernels/kivi.ts (fp32 steps with _rn intrinsics: no FMA
// contraction); the rest accumulates in fp32.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_lowbit.h"
#include "cuda/cuda_lowbit_rows.cuh"
#include "half.h"

namespace cg = cooperative_groups;

namespace kvoff {
namespace {

// ---- Scalar helpers, __host__ __device__ so the quantizer's per-thread bodies can be run on a CPU ----

#ifdef __CUDA_ARCH__
#define LB_ADD(a, b) __fadd_rn(a, b)
#define LB_SUB(a, b) __fsub_rn(a, b)
#define LB_MUL(a, b) __fmul_rn(a, b)
#define LB_DIV(a, b) __fdiv_rn(a, b)
#else
#define LB_ADD(a, b) ((a) + (b))
#define LB_SUB(a, b) ((a) - (b))
#define LB_MUL(a, b) ((a) * (b))
#define LB_DIV(a, b) ((a) / (b))
#endif

// Bit casts and fp16 conversions from half.h (shared with the CPU kernels): the quantizer must match kivi.h bit for bit.
__host__ __device__ __forceinline__ float u2f(uint32_t u) { return bits_f32(u); }
__host__ __device__ __forceinline__ float h2f(uint32_t h) { return f16_to_f32(static_cast<uint16_t>(h)); }
__host__ __device__ __forceinline__ uint16_t f2h(float f) { return f32_to_f16(f); }

__host__ __device__ __forceinline__ float kv2f(uint32_t bits16, bool bf16) { return bf16 ? u2f(bits16 << 16) : h2f(bits16); }

// kiviMetaF16: clamp to +-65504, NaN as 0x7e00.
__host__ __device__ __forceinline__ uint16_t meta_f16(float v) {
  if (v != v) return 0x7e00u;
  return f2h(v > 65504.0f ? 65504.0f : (v < -65504.0f ? -65504.0f : v));
}

// kiviParamsF16 of a group with range [mn, mx].
template <int BITS>
__host__ __device__ __forceinline__ void params_f16(float mn, float mx, uint16_t* zb, uint16_t* sb, float* zf, float* sf) {
  float z, s;
  if (BITS == 1) {
    z = LB_MUL(LB_ADD(LB_MUL(3.0f, mn), mx), 0.25f);
    s = LB_MUL(LB_SUB(mx, mn), 0.5f);
  } else {
    z = mn;
    s = LB_DIV(LB_SUB(mx, mn), static_cast<float>((1 << BITS) - 1));
  }
  *zb = meta_f16(z);
  *sb = meta_f16(s);
  *zf = h2f(*zb);
  *sf = h2f(*sb);
}

// kiviCode: floor((x - zero) / scale + 0.5) clamped to [0, levels]; 0 for a non-positive or NaN scale.
template <int BITS>
__host__ __device__ __forceinline__ uint32_t kivi_code(float x, float zf, float sf) {
  constexpr int levels = (1 << BITS) - 1;
  if (!(sf > 0.0f)) return 0;
  const float v = floorf(LB_ADD(LB_DIV(LB_SUB(x, zf), sf), 0.5f));
  if (!(v >= 0.0f)) return 0;
  return v > static_cast<float>(levels) ? static_cast<uint32_t>(levels) : static_cast<uint32_t>(v);
}

// The reference's min/max fold: start from element 0, replace on strict < / > (so NaNs after the first element
// are skipped, a NaN first element sticks, and among equal values such as -0 and +0 the first one stays).
__host__ __device__ __forceinline__ void fold_minmax(float x, bool firstElem, float* mn, float* mx) {
  if (firstElem) {
    *mn = x;
    *mx = x;
    return;
  }
  if (x < *mn) *mn = x;
  if (x > *mx) *mx = x;
}

// ---- Quantize ----

constexpr int kQuantThreads = 256;

struct QuantParams {
  const uint8_t* kv;  // [H, kvCap, 2, D] 16-bit
  uint8_t* lowBit;    // the layer's copy: H sections
  uint64_t sectionBytes, keyCodes, keyZero, keyScale, valueCodes, valueZero, valueScale;
  uint64_t kvCap, kvFirstRow, first, tokens, group0, groups;
  uint32_t H, D, KG, VG, rowBytes;
  bool bf16;
};

// PER = 8/BITS consecutive 16-bit elements (the channels of one code byte) starting at p, as f32.
template <int PER>
__host__ __device__ __forceinline__ void load_elems(const uint8_t* p, bool bf16, float (&x)[PER]) {
  uint32_t w[PER / 2];
  if (PER == 8) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if (PER == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  }
#pragma unroll
  for (int i = 0; i < PER / 2; ++i) {
    x[2 * i] = kv2f(w[i] & 0xffffu, bf16);
    x[2 * i + 1] = kv2f(w[i] >> 16, bf16);
  }
}

// One thread per (head, key group, code byte j): the PER channels of byte j, min/max over the group's tokens in
// token order, then one code byte per token. Lanes take consecutive bytes, so a warp reads consecutive K bytes.
template <int BITS>
__host__ __device__ __forceinline__ void quant_keys_thread(const QuantParams& p, uint64_t tid) {
  constexpr int PER = 8 / BITS;
  const uint64_t total = static_cast<uint64_t>(p.H) * p.groups * p.rowBytes;
  if (tid >= total) return;
  const uint32_t j = static_cast<uint32_t>(tid % p.rowBytes);
  const uint64_t rest = tid / p.rowBytes;
  const uint64_t grp = p.group0 + rest % p.groups;
  const uint32_t h = static_cast<uint32_t>(rest / p.groups);
  const uint32_t c0 = j * PER;
  // kv row of the group's first token; rows of one head are [2, D] 16-bit: K then V.
  const uint64_t row0 = static_cast<uint64_t>(h) * p.kvCap + p.kvFirstRow + (grp * p.KG - p.first);
  const uint64_t rowStride = static_cast<uint64_t>(p.D) * 4;
  const uint8_t* src = p.kv + row0 * rowStride + c0 * 2;
  float mn[PER], mx[PER], x[PER];
  // Unrolled so that 16 rows' loads are in flight at once: a decode step quantizes one group per head, few
  // threads, and a loop of dependent round trips would dominate.
#pragma unroll 16
  for (uint32_t t = 0; t < p.KG; ++t) {
    load_elems<PER>(src + t * rowStride, p.bf16, x);
#pragma unroll
    for (int e = 0; e < PER; ++e) fold_minmax(x[e], t == 0, &mn[e], &mx[e]);
  }
  uint8_t* sec = p.lowBit + h * p.sectionBytes;
  uint16_t* zero = reinterpret_cast<uint16_t*>(sec + p.keyZero) + grp * p.D + c0;    // fp16 [maxGroups, D]
  uint16_t* scale = reinterpret_cast<uint16_t*>(sec + p.keyScale) + grp * p.D + c0;  // fp16 [maxGroups, D]
  float zf[PER], sf[PER];
#pragma unroll
  for (int e = 0; e < PER; ++e) {
    uint16_t zb, sb;
    params_f16<BITS>(mn[e], mx[e], &zb, &sb, &zf[e], &sf[e]);
    zero[e] = zb;
    scale[e] = sb;
  }
  uint8_t* codes = sec + p.keyCodes + grp * p.KG * p.rowBytes + j;  // u8 [maxGroups, KG, rowBytes]
#pragma unroll 16
  for (uint32_t t = 0; t < p.KG; ++t) {
    load_elems<PER>(src + t * rowStride, p.bf16, x);  // second read: from L1/L2
    uint32_t byte = 0;
#pragma unroll
    for (int e = 0; e < PER; ++e) byte |= kivi_code<BITS>(x[e], zf[e], sf[e]) << (e * BITS);
    codes[static_cast<uint64_t>(t) * p.rowBytes] = static_cast<uint8_t>(byte);
  }
}

// One thread per (head, token, value group): min/max over the group's VG channels in channel order, then the
// group's codes, 8 channels (BITS bytes) per 16-byte load.
template <int BITS>
__host__ __device__ __forceinline__ void quant_values_thread(const QuantParams& p, uint64_t tid) {
  const uint32_t ng = p.D / p.VG;
  const uint64_t total = static_cast<uint64_t>(p.H) * p.tokens * ng;
  if (tid >= total) return;
  const uint32_t j = static_cast<uint32_t>(tid % ng);
  const uint64_t rest = tid / ng;
  const uint64_t ti = rest % p.tokens;
  const uint32_t h = static_cast<uint32_t>(rest / p.tokens);
  const uint64_t t = p.first + ti;
  const uint64_t row = static_cast<uint64_t>(h) * p.kvCap + p.kvFirstRow + ti;
  const uint8_t* src = p.kv + row * p.D * 4 + (static_cast<uint64_t>(p.D) + j * p.VG) * 2;  // V half, group j
  float mn = 0.f, mx = 0.f, x[8];
  for (uint32_t c = 0; c < p.VG; c += 8) {
    load_elems<8>(src + c * 2, p.bf16, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) fold_minmax(x[e], c == 0 && e == 0, &mn, &mx);
  }
  uint8_t* sec = p.lowBit + h * p.sectionBytes;
  uint16_t zb, sb;
  float zf, sf;
  params_f16<BITS>(mn, mx, &zb, &sb, &zf, &sf);
  reinterpret_cast<uint16_t*>(sec + p.valueZero)[t * ng + j] = zb;   // fp16 [capacity, D/VG]
  reinterpret_cast<uint16_t*>(sec + p.valueScale)[t * ng + j] = sb;  // fp16 [capacity, D/VG]
  uint8_t* codes = sec + p.valueCodes + t * p.rowBytes + j * p.VG * BITS / 8;  // u8 [capacity, rowBytes]
  for (uint32_t c = 0; c < p.VG; c += 8) {
    load_elems<8>(src + c * 2, p.bf16, x);
    uint32_t packed = 0;  // 8 codes: BITS bytes, channel e at bit e*BITS (little-endian)
#pragma unroll
    for (int e = 0; e < 8; ++e) packed |= kivi_code<BITS>(x[e], zf, sf) << (e * BITS);
    uint8_t* dst = codes + c * BITS / 8;
    if (BITS == 1) *dst = static_cast<uint8_t>(packed);
    else if (BITS == 2) *reinterpret_cast<uint16_t*>(dst) = static_cast<uint16_t>(packed);
    else *reinterpret_cast<uint32_t*>(dst) = packed;
  }
}

// Grid-stride: the launch caps its grid, and each thread body returns at once past the end.
template <int BITS>
__global__ void __launch_bounds__(kQuantThreads) quant_keys_kernel(QuantParams p, uint64_t total) {
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += static_cast<uint64_t>(gridDim.x) * blockDim.x)
    quant_keys_thread<BITS>(p, t);
}

template <int BITS>
__global__ void __launch_bounds__(kQuantThreads) quant_values_kernel(QuantParams p, uint64_t total) {
  for (uint64_t t = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += static_cast<uint64_t>(gridDim.x) * blockDim.x)
    quant_values_thread<BITS>(p, t);
}

unsigned quant_blocks(uint64_t total) { return static_cast<unsigned>(std::min<uint64_t>((total + kQuantThreads - 1) / kQuantThreads, 1u << 20)); }

// ---- Scores ----

struct ScoreParams {
  const uint8_t* lowBit;
  uint64_t sectionBytes, keyCodes, keyZero, keyScale;
  const float* q;  // [H * G, D]
  float* out;      // [H, ldOut]
  uint64_t ldOut;
  uint32_t G, KG, numTokens;  // numTokens = numGroups * KG
};

// ---- Top-k ----
//
// Each element gets a 52-bit select key C = (order-preserving 32-bit key of the float) << 20 | (2^20 - 1 - index):
// larger C ranks first, all C differ (ties go to the lower index) and NaN's key is 0 (last). A radix select
// finds the k-th largest C, 11/11/10 bits of the float key then 10/10 of the index, stopping at the first digit
// where the count above the threshold is exactly k (usually after the float bits). A cluster of 8 blocks shares
// a row: each histograms its eighth, the 8 histograms are summed through distributed shared memory, and every
// block picks the same digit. Winners (C >= threshold, exactly k) are gathered in block 0 and bitonic-sorted.

constexpr int kTopKThreads = 512;
constexpr int kTopKMaxCluster = 8;  // blocks sharing a row: 8 for a few long rows, fewer when there are many rows
constexpr int kTopKBins = 2048;
constexpr int kTopKLevels = 5;

struct TopKParams {
  const float* scores;  // [rows, ld]
  int32_t* out;         // [rows, k]
  uint8_t* mask;        // [rows, ld] or null
  uint64_t ld, first;
  uint32_t n, k;
  bool hasCounts;                       // row r ranks counts[r] positions (<= n) instead of n
  uint32_t counts[kTopKMaxRowCounts];
};

__device__ __forceinline__ uint64_t topk_key(float f, uint32_t i) {
  uint32_t u = __float_as_uint(f);
  uint32_t key = 0;  // NaN
  if ((u & 0x7fffffffu) <= 0x7f800000u) {
    if (u == 0x80000000u) u = 0;  // -0 ties with +0, as in topKRef
    key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  return (static_cast<uint64_t>(key) << 20) | (0xfffffu - i);
}

// f(i, value) for i in [lo, hi) of row `base`, float4 loads for the aligned middle.
template <typename F>
__device__ __forceinline__ void topk_for_each(const float* base, uint32_t lo, uint32_t hi, F&& f) {
  if (lo >= hi) return;
  const uint32_t T = kTopKThreads, tid = threadIdx.x;
  const uint32_t mis = static_cast<uint32_t>((reinterpret_cast<uintptr_t>(base + lo) >> 2) & 3);
  const uint32_t head = min((4 - mis) & 3, hi - lo);
  if (tid < head) f(lo + tid, __ldg(base + lo + tid));
  const uint32_t v0 = lo + head, nv = (hi - v0) / 4;
  const float4* vb = reinterpret_cast<const float4*>(base + v0);
  uint32_t v = tid;
  for (; v + 3 * T < nv; v += 4 * T) {
    float4 a[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) a[u] = __ldg(vb + v + u * T);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const uint32_t i = v0 + 4 * (v + u * T);
      f(i, a[u].x);
      f(i + 1, a[u].y);
      f(i + 2, a[u].z);
      f(i + 3, a[u].w);
    }
  }
  for (; v < nv; v += T) {
    const float4 a = __ldg(vb + v);
    const uint32_t i = v0 + 4 * v;
    f(i, a.x);
    f(i + 1, a.y);
    f(i + 2, a.z);
    f(i + 3, a.w);
  }
  const uint32_t tail = v0 + 4 * nv;
  if (tail + tid < hi) f(tail + tid, __ldg(base + tail + tid));
}

// Exclusive prefix sum of one value per thread over the block (in thread order); `red` holds 32 slots.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* red) {
  const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t up = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= static_cast<uint32_t>(o)) inc += up;
  }
  if (lane == 31) red[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    uint32_t x = lane < kTopKThreads / 32 ? red[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t up = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= static_cast<uint32_t>(o)) x += up;
    }
    if (lane < kTopKThreads / 32) red[lane] = x;  // inclusive totals of warps 0..lane
  }
  __syncthreads();
  const uint32_t before = warp > 0 ? red[warp - 1] : 0;
  __syncthreads();  // red is reused by the next call
  return before + inc - v;
}

// Blocks per row: KVOFF_TOPK_CLUSTER (1, 2, 4 or 8) when set (experiments), else the largest power of two up to 8
// with rows * size <= the SM count. H100, 64 rows of 24576 (a batch of 8 at the 8B shape), alone: 1 block a row
// 36.6 us, 2 27.9, 4 44.9, 8 142.8 (bench/cuda-batch.ts); 8 rows of 131072 keep the 8 they were tuned with.
uint32_t topk_cluster_size(uint32_t rows) {
  static const uint32_t forced = [] {
    const char* e = std::getenv("KVOFF_TOPK_CLUSTER");
    const int v = e ? std::atoi(e) : 0;
    return (v == 1 || v == 2 || v == 4 || v == 8) ? static_cast<uint32_t>(v) : 0u;
  }();
  if (forced) return forced;
  const uint32_t budget = static_cast<uint32_t>(cudadev::sm_count());
  uint32_t c = kTopKMaxCluster;
  while (c > 1 && rows * c > budget) c /= 2;
  return c;
}

__global__ void __launch_bounds__(kTopKThreads) topk_kernel(TopKParams p) {
  __shared__ uint32_t hist[kTopKBins];
  __shared__ unsigned long long wins[kTopKMaxK];  // block 0: the winners' select keys
  __shared__ uint32_t winCount;
  __shared__ uint32_t red[32];
  __shared__ uint32_t pick[3];  // digit, count above it, exact
  cg::cluster_group cluster = cg::this_cluster();
  const uint32_t rank = cluster.block_rank(), tid = threadIdx.x, C = cluster.num_blocks();
  const uint64_t row = blockIdx.y;
  const float* base = p.scores + row * p.ld + p.first;
  const uint32_t n = p.hasCounts ? p.counts[row] : p.n;
  // This block's eighth of the n positions (a multiple of 4 long, so most of it is float4 loads).
  const uint32_t part = ((n + C - 1) / C + 3) & ~3u;
  const uint32_t lo = min(n, rank * part), hi = min(n, lo + part);
  for (uint32_t b = tid; b < kTopKBins; b += kTopKThreads) hist[b] = 0;
  if (tid == 0) winCount = 0;
  __syncthreads();

  const int shifts[kTopKLevels] = {41, 30, 20, 10, 0};
  const int widths[kTopKLevels] = {11, 11, 10, 10, 10};
  uint64_t prefix = 0;  // digits chosen so far
  uint32_t above = 0;   // elements known to rank above the current prefix
  uint64_t threshold = 0;
  for (int level = 0; level < kTopKLevels; ++level) {
    const int s = shifts[level], w = widths[level];
    const uint32_t dmask = (1u << w) - 1;
    // Histogram of this level's digit among elements matching the prefix; runs of equal digits (common: scores
    // share their exponent) are counted in a register and added once, which keeps shared atomics uncontended.
    uint32_t cur = 0, cnt = 0;
    topk_for_each(base, lo, hi, [&](uint32_t i, float f) {
      const uint64_t C = topk_key(f, i);
      if ((C >> (s + w)) != prefix) return;
      const uint32_t d = static_cast<uint32_t>(C >> s) & dmask;
      if (d == cur) {
        ++cnt;
      } else {
        if (cnt) atomicAdd(&hist[cur], cnt);
        cur = d;
        cnt = 1;
      }
    });
    if (cnt) atomicAdd(&hist[cur], cnt);
    cluster.sync();  // every block's histogram is complete and visible
    // Thread tid owns bins 2047 - 4 tid .. 2044 - 4 tid (descending), summed over the cluster's blocks in rank order.
    uint32_t hv[kTopKBins / kTopKThreads], mine = 0;
#pragma unroll
    for (int e = 0; e < kTopKBins / kTopKThreads; ++e) {
      const uint32_t b = kTopKBins - 1 - (tid * (kTopKBins / kTopKThreads) + e);
      uint32_t sum = 0;
      for (uint32_t r = 0; r < C; ++r) sum += cluster.map_shared_rank(hist, r)[b];
      hv[e] = b <= dmask ? sum : 0;
      mine += hv[e];
    }
    uint32_t run = above + block_exclusive_scan(mine, red);
#pragma unroll
    for (int e = 0; e < kTopKBins / kTopKThreads; ++e) {
      const uint32_t b = kTopKBins - 1 - (tid * (kTopKBins / kTopKThreads) + e);
      if (run < p.k && p.k <= run + hv[e]) {  // exactly one bin holds the k-th element
        pick[0] = b;
        pick[1] = run;
        pick[2] = run + hv[e] == p.k;
      }
      run += hv[e];
    }
    cluster.sync();  // every block has read every histogram; pick is visible to this block
    prefix = (prefix << w) | pick[0];
    above = pick[1];
    const bool exact = pick[2] != 0;
    for (uint32_t b = tid; b < kTopKBins; b += kTopKThreads) hist[b] = 0;
    __syncthreads();  // pick and hist settled before the next level writes them
    if (exact || level == kTopKLevels - 1) {
      threshold = prefix << s;
      break;
    }
  }

  // Winners: C >= threshold, exactly k of them, appended to block 0's list.
  uint32_t* count0 = cluster.map_shared_rank(&winCount, 0);
  unsigned long long* wins0 = cluster.map_shared_rank(wins, 0);
  topk_for_each(base, lo, hi, [&](uint32_t i, float f) {
    const uint64_t C = topk_key(f, i);
    if (C < threshold) return;
    const uint32_t slot = atomicAdd(count0, 1u);
    if (slot < p.k) wins0[slot] = C;
  });
  if (p.mask) {
    // This block's eighth of [0, ld): 1 at the winners, 0 elsewhere.
    const uint64_t mpart = (p.ld + C - 1) / C;
    const uint64_t mlo = min(p.ld, rank * mpart), mhi = min(p.ld, mlo + mpart);
    uint8_t* m = p.mask + row * p.ld;
    for (uint64_t i = mlo + tid; i < mhi; i += kTopKThreads) {
      bool win = false;
      if (i >= p.first && i < p.first + n) {
        const uint32_t r = static_cast<uint32_t>(i - p.first);
        win = topk_key(__ldg(base + r), r) >= threshold;
      }
      m[i] = win ? 1 : 0;
    }
  }
  cluster.sync();  // all winners are in block 0; no block touches another's shared memory after this
  if (rank != 0) return;

  uint32_t P = 1;
  while (P < p.k) P <<= 1;
  for (uint32_t i = p.k + tid; i < P; i += kTopKThreads) wins[i] = 0;  // below every real key
  __syncthreads();
  // Bitonic sort, descending.
  for (uint32_t size = 2; size <= P; size <<= 1) {
    for (uint32_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (uint32_t i = tid; i < P / 2; i += kTopKThreads) {
        const uint32_t a = 2 * i - (i & (stride - 1)), b = a + stride;
        const unsigned long long x = wins[a], y = wins[b];
        const bool desc = (a & size) == 0;
        if (desc ? x < y : x > y) {
          wins[a] = y;
          wins[b] = x;
        }
      }
      __syncthreads();
    }
  }
  int32_t* out = p.out + row * p.k;
  for (uint32_t i = tid; i < p.k; i += kTopKThreads)
    out[i] = static_cast<int32_t>(p.first + (0xfffffu - static_cast<uint32_t>(wins[i] & 0xfffffu)));
}

// ---- Scores, fast path: a warp per 64 tokens, two per lane, the group's weights staged per warp ----

constexpr int kScore2Threads = 256;
constexpr int kScore2Tokens = 2 * kScore2Threads;  // per block

template <int BITS, int D, int TPL>
__device__ __forceinline__ void score2_pass(const ScoreParams& p, const uint8_t* sec, const float* q, float* W, uint64_t t0, uint32_t lane, float* out) {
  constexpr int ROWB = D * BITS / 8, CPW = 32 / BITS;
  if (t0 >= p.numTokens) return;  // whole groups: t0 < numTokens means every token of the pass exists
  const uint64_t g = t0 / p.KG;
  const uint16_t* kz = reinterpret_cast<const uint16_t*>(sec + p.keyZero) + g * D;
  const uint16_t* ks = reinterpret_cast<const uint16_t*>(sec + p.keyScale) + g * D;
  uint32_t row[TPL][ROWB / 4];
#pragma unroll
  for (int k = 0; k < TPL; ++k) load_row<ROWB>(sec + p.keyCodes + (t0 + lane + 32 * k) * ROWB, row[k]);
  float b = 0.f;
  for (uint32_t c = lane; c < D; c += 32) {
    float s = 0.f;
    for (uint32_t j = 0; j < p.G; ++j) s += q[j * D + c];
    const float qm = s / static_cast<float>(p.G);
    W[c] = qm * h2f_hw(__ldg(ks + c)) * kCodeHalf<BITS>;
    b += qm * h2f_hw(__ldg(kz + c));
  }
  b = warp_sum(b);
  __syncwarp();
  float acc[TPL];
#pragma unroll
  for (int k = 0; k < TPL; ++k) acc[k] = b;
  const float4* w4 = reinterpret_cast<const float4*>(W);
#pragma unroll
  for (int wi = 0; wi < ROWB / 4; ++wi) {
#pragma unroll
    for (int e = 0; e < CPW; e += 4) {
      const float4 ww = w4[(wi * CPW + e) / 4];  // a broadcast
#pragma unroll
      for (int k = 0; k < TPL; ++k) {
        acc[k] = fmaf(ww.x, code_x<BITS>(row[k][wi], e * BITS), acc[k]);
        acc[k] = fmaf(ww.y, code_x<BITS>(row[k][wi], (e + 1) * BITS), acc[k]);
        acc[k] = fmaf(ww.z, code_x<BITS>(row[k][wi], (e + 2) * BITS), acc[k]);
        acc[k] = fmaf(ww.w, code_x<BITS>(row[k][wi], (e + 3) * BITS), acc[k]);
      }
    }
  }
  __syncwarp();
#pragma unroll
  for (int k = 0; k < TPL; ++k) out[t0 + lane + 32 * k] = acc[k];
}

template <int BITS, int D>
__global__ void __launch_bounds__(kScore2Threads) kivi_scores2_kernel(ScoreParams p) {
  __shared__ __align__(16) float Wsm[kScore2Threads / 32][D];
  const uint32_t h = blockIdx.y, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint64_t t0 = static_cast<uint64_t>(blockIdx.x) * kScore2Tokens + warp * 64;
  const uint8_t* sec = p.lowBit + h * p.sectionBytes;
  const float* q = p.q + static_cast<uint64_t>(h) * p.G * D;
  float* out = p.out + h * p.ldOut;
  if (p.KG == 64) {
    score2_pass<BITS, D, 2>(p, sec, q, Wsm[warp], t0, lane, out);
  } else {
    score2_pass<BITS, D, 1>(p, sec, q, Wsm[warp], t0, lane, out);
    score2_pass<BITS, D, 1>(p, sec, q, Wsm[warp], t0 + 32, lane, out);
  }
}

}  // namespace

using namespace cudadev;

CudaStatus cuda_kivi_quantize(const KiviQuantizeCall& c) {
  if (!cuda_usable()) return unavailable();
  auto kv = find_arena(c.kv.handle);
  if (!kv) return gone("device arena", c.kv.handle);
  auto lb = find_arena(c.lowBit.handle);
  if (!lb) return gone("device arena", c.lowBit.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  QuantParams p;
  p.kv = at(kv, c.kv);
  p.lowBit = at(lb, c.lowBit);
  p.sectionBytes = c.layout.sectionBytes;
  p.keyCodes = c.layout.keyCodes, p.keyZero = c.layout.keyZero, p.keyScale = c.layout.keyScale;
  p.valueCodes = c.layout.valueCodes, p.valueZero = c.layout.valueZero, p.valueScale = c.layout.valueScale;
  p.kvCap = c.kvCapacity, p.kvFirstRow = c.kvFirstRow, p.first = c.first, p.tokens = c.tokens;
  p.group0 = c.group0, p.groups = c.groups;
  p.H = c.shape.numKvHeads, p.D = c.shape.headDim, p.KG = c.shape.keyGroupSize, p.VG = c.shape.valueGroupSize;
  p.rowBytes = static_cast<uint32_t>(c.layout.rowBytes);
  p.bf16 = c.bf16;
  cudaError_t err = cudaSuccess;
  if (!c.shape.keysOnly && c.tokens > 0) {
    const uint64_t total = static_cast<uint64_t>(p.H) * p.tokens * (p.D / p.VG);
    err = by_bits(c.shape.bits, [&](auto b) {
      quant_values_kernel<decltype(b)::value><<<quant_blocks(total), kQuantThreads, 0, st->s>>>(p, total);
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return failed("the cudaKiviQuantize values kernel launch", err);
  }
  if (c.groups > 0) {
    const uint64_t total = static_cast<uint64_t>(p.H) * p.groups * p.rowBytes;
    err = by_bits(c.shape.bits, [&](auto b) {
      quant_keys_kernel<decltype(b)::value><<<quant_blocks(total), kQuantThreads, 0, st->s>>>(p, total);
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return failed("the cudaKiviQuantize keys kernel launch", err);
  }
  hold(*st, {kv, lb});
  return {};
}

CudaStatus cuda_kivi_scores(const KiviScoresCall& c) {
  if (!cuda_usable()) return unavailable();
  auto lb = find_arena(c.lowBit.handle);
  if (!lb) return gone("device arena", c.lowBit.handle);
  auto q = find_arena(c.q.handle);
  if (!q) return gone("device arena", c.q.handle);
  auto out = find_arena(c.out.handle);
  if (!out) return gone("device arena", c.out.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  ScoreParams p;
  p.lowBit = at(lb, c.lowBit);
  p.sectionBytes = c.layout.sectionBytes, p.keyCodes = c.layout.keyCodes, p.keyZero = c.layout.keyZero, p.keyScale = c.layout.keyScale;
  p.q = reinterpret_cast<const float*>(at(q, c.q));
  p.out = reinterpret_cast<float*>(at(out, c.out));
  p.ldOut = c.ldOut;
  p.G = c.groupSize, p.KG = c.shape.keyGroupSize;
  p.numTokens = static_cast<uint32_t>(c.numGroups * c.shape.keyGroupSize);
  if (p.numTokens > 0) {
    const dim3 grid((p.numTokens + kScore2Tokens - 1) / kScore2Tokens, c.shape.numKvHeads);
    const cudaError_t err = by_bits(c.shape.bits, [&](auto b) {
      return by_dim(c.shape.headDim, [&](auto d) {
        kivi_scores2_kernel<decltype(b)::value, decltype(d)::value><<<grid, kScore2Threads, 0, st->s>>>(p);
        return cudaGetLastError();
      });
    });
    if (err != cudaSuccess) return failed("the cudaKiviScores kernel launch", err);
  }
  hold(*st, {lb, q, out});
  return {};
}

CudaStatus cuda_topk(const TopKCall& c) {
  if (!cuda_usable()) return unavailable();
  auto s = find_arena(c.scores.handle);
  if (!s) return gone("device arena", c.scores.handle);
  auto o = find_arena(c.out.handle);
  if (!o) return gone("device arena", c.out.handle);
  std::shared_ptr<DevArena> m;
  if (c.hasMask && !(m = find_arena(c.mask.handle))) return gone("device arena", c.mask.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  TopKParams p;
  p.scores = reinterpret_cast<const float*>(at(s, c.scores));
  p.out = reinterpret_cast<int32_t*>(at(o, c.out));
  p.mask = c.hasMask ? at(m, c.mask) : nullptr;
  p.ld = c.ld, p.first = c.first, p.n = c.n, p.k = c.k;
  p.hasCounts = c.counts != nullptr;
  if (p.hasCounts) std::memcpy(p.counts, c.counts, c.rows * sizeof(uint32_t));
  // Rows times cluster size near the SM count: a few long rows (a sequence's heads) take clusters of 8, a batch's
  // many rows fewer blocks each, whose cluster barriers and shared-memory exchange then cost less.
  const uint32_t cluster = topk_cluster_size(c.rows);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(cluster, c.rows);
  cfg.blockDim = dim3(kTopKThreads);
  cfg.stream = st->s;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = cluster;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  cudaError_t err = cudaLaunchKernelEx(&cfg, topk_kernel, p);
  if (err == cudaSuccess) err = cudaGetLastError();
  if (err != cudaSuccess) return failed("the cudaTopK kernel launch", err);
  if (m) hold(*st, {s, o, m});
  else hold(*st, {s, o});
  return {};
}

}  // namespace kvoff
