// CUDA low-bit kernels of the device tier (DESIGN §1 steps 2, 3, 5): KIVI quantize-append from the device KV
// region, GQA-averaged scores over the quantized keys, per-row top-k, and flash-decoding attention over the
// quantized tail. Quantization is bit-exact with src/kernels/kivi.ts (fp32 steps with _rn intrinsics: no FMA
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

// ---- Packed code rows ----

// A row of ROWB code bytes (a multiple of 4) as 32-bit words, with the widest loads its size allows; rows
// start at multiples of ROWB from a 256-aligned buffer, so those loads are aligned.
template <int ROWB>
__device__ __forceinline__ void load_row(const uint8_t* p, uint32_t (&w)[ROWB / 4]) {
  if (ROWB % 16 == 0) {
#pragma unroll
    for (int i = 0; i < ROWB / 16; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  } else if (ROWB % 8 == 0) {
#pragma unroll
    for (int i = 0; i < ROWB / 8; ++i) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + i);
      w[2 * i] = v.x, w[2 * i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < ROWB / 4; ++i) w[i] = __ldg(reinterpret_cast<const uint32_t*>(p) + i);
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

// ---- Attention over the quantized tail ----
//
// Flash-decoding: one block per (chunk of kAttendChunk tokens aligned to absolute positions, KV head), then a
// combine kernel that merges the chunks by log-sum-exp (see the fast path below).

struct AttendParams {
  const uint8_t* lowBit;
  uint64_t sectionBytes, keyCodes, keyZero, keyScale, valueCodes, valueZero, valueScale;
  const float* q;  // [H * G, D]
  float scale;
  const uint8_t* exclude;  // [H, ldExclude] or null
  uint64_t ldExclude;
  float* partO;   // [H, chunks, M, D]
  float* partML;  // [H, chunks, M, 2]
  float* out;     // [rows][H * G, D]
  float* lse;     // [rows, H * G]
  uint64_t first, end, chunk0, chunks;
  uint32_t G, KG, VG;
  uint32_t M, HG;                         // query heads per KV head over all rows (rows * G); query heads per row (H * G)
  uint64_t qRowStride, outRowStride;      // floats between rows of q and of out; lse rows are HG apart
};

template <int MG>
__device__ __forceinline__ void load_mg(const float* p, float (&v)[MG]) {
  if (MG % 4 == 0) {
#pragma unroll
    for (int g = 0; g < MG; g += 4) {
      const float4 x = *reinterpret_cast<const float4*>(p + g);
      v[g] = x.x, v[g + 1] = x.y, v[g + 2] = x.z, v[g + 3] = x.w;
    }
  } else if (MG == 2) {
    const float2 x = *reinterpret_cast<const float2*>(p);
    v[0] = x.x, v[1] = x.y;
  } else {
#pragma unroll
    for (int g = 0; g < MG; ++g) v[g] = p[g];
  }
}

// ---- Attention: several rows of queries per KV head, linear in the codes ----
//
// One block of 8 warps per (chunk of kAttendChunk tokens, KV head); all M = rows * G query heads of the KV head
// share one read of the chunk's codes. Phase A: warp w owns tokens [c0 + 64 w, c0 + 64 w + 64), two per lane, one
// key group at a time: it stages w_c = scale q_c keyScale_c ([D][MG], a broadcast per channel) and the bias
// scale q . keyZero (registers), then score = bias + sum_c w_c code_c with the token's packed row in registers.
// Softmax over the chunk in registers. Phase B: thread (token lane, 8-channel slice) accumulates
// sum_t (p_t vscale_t) code_t,c; the zero term sum_t p_t vzero_t is a per-head scalar (per value group).

constexpr int kAtt2Threads = 256;
constexpr int kAtt2Warps = kAtt2Threads / 32;
constexpr int kAtt2WarpTokens = kAttendChunk / kAtt2Warps;  // 64
static_assert(kAtt2WarpTokens == 64, "phase A assumes 64 tokens per warp, two per lane");

template <int D, int MG>
struct Att2Smem {
  static constexpr int qs = 0;                              // [D][MG] scale * q, zero past M
  static constexpr int wk = qs + D * MG;                    // [warps][D][MG] key weights; later [warps][MG][D] partial outputs
  static constexpr int ps = wk + kAtt2Warps * D * MG;       // [chunk][MG] p (or p * vscale)
  static constexpr int red = ps + kAttendChunk * MG;        // [3][warps][MG] max, sum, zero-term
  static constexpr int floats = red + 3 * kAtt2Warps * MG;
  static constexpr size_t bytes = static_cast<size_t>(floats) * 4;
};

template <int MG>
__device__ __forceinline__ void store_mg(float* p, const float (&v)[MG]) {
  if constexpr (MG % 4 == 0) {
#pragma unroll
    for (int g = 0; g < MG; g += 4) *reinterpret_cast<float4*>(p + g) = make_float4(v[g], v[g + 1], v[g + 2], v[g + 3]);
  } else if constexpr (MG == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int g = 0; g < MG; ++g) p[g] = v[g];
  }
}

__device__ __forceinline__ float h2f_hw(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// Scores of tokens t0 + lane + 32 k (k < TPL, all in key group t0 / KG) for the MG heads, into s[k].
template <int BITS, int D, int MG, int TPL>
__device__ __forceinline__ void att2_score_pass(const AttendParams& p, const uint8_t* sec, const float* qs, float* W, uint64_t t0, uint64_t lo,
                                                uint64_t hi, uint32_t h, uint32_t lane, float (&s)[2][MG], int k0) {
  constexpr int ROWB = D * BITS / 8, CPW = 32 / BITS;
  if (t0 >= hi || t0 + 32 * TPL <= lo) return;  // warp-uniform: nothing here is attended
  const uint64_t g = t0 / p.KG;
  const uint16_t* kz = reinterpret_cast<const uint16_t*>(sec + p.keyZero) + g * D;
  const uint16_t* ks = reinterpret_cast<const uint16_t*>(sec + p.keyScale) + g * D;
  uint32_t row[TPL][ROWB / 4];
#pragma unroll
  for (int k = 0; k < TPL; ++k) load_row<ROWB>(sec + p.keyCodes + (t0 + lane + 32 * k) * ROWB, row[k]);
  float b[MG];
#pragma unroll
  for (int m = 0; m < MG; ++m) b[m] = 0.f;
  for (uint32_t c = lane; c < D; c += 32) {
    const float sc = h2f_hw(__ldg(ks + c)), z = h2f_hw(__ldg(kz + c));
    float qv[MG];
    load_mg<MG>(qs + c * MG, qv);
    float wv[MG];
#pragma unroll
    for (int m = 0; m < MG; ++m) {
      wv[m] = qv[m] * sc * kCodeHalf<BITS>;
      b[m] = fmaf(qv[m], z, b[m]);
    }
    store_mg<MG>(W + c * MG, wv);
  }
#pragma unroll
  for (int m = 0; m < MG; ++m) b[m] = warp_sum(b[m]);
  __syncwarp();
  float acc[TPL][MG];
#pragma unroll
  for (int k = 0; k < TPL; ++k)
#pragma unroll
    for (int m = 0; m < MG; ++m) acc[k][m] = b[m];
#pragma unroll
  for (int wi = 0; wi < ROWB / 4; ++wi) {
#pragma unroll
    for (int e = 0; e < CPW; ++e) {
      float wv[MG];
      load_mg<MG>(W + (wi * CPW + e) * MG, wv);  // one address across the warp: a broadcast
#pragma unroll
      for (int k = 0; k < TPL; ++k) {
        const float code = code_x<BITS>(row[k][wi], e * BITS);
#pragma unroll
        for (int m = 0; m < MG; ++m) acc[k][m] = fmaf(wv[m], code, acc[k][m]);
      }
    }
  }
  __syncwarp();  // W is rewritten by the next pass
#pragma unroll
  for (int k = 0; k < TPL; ++k) {
    const uint64_t t = t0 + lane + 32 * k;
    const bool valid = t >= lo && t < hi && !(p.exclude && p.exclude[h * p.ldExclude + t]);
#pragma unroll
    for (int m = 0; m < MG; ++m) s[k0 + k][m] = valid ? acc[k][m] : -INFINITY;
  }
}

template <int BITS, int D, int MG>
__global__ void __launch_bounds__(kAtt2Threads, 2) kivi_attend2_kernel(AttendParams p) {
  using S = Att2Smem<D, MG>;
  constexpr int ROWB = D * BITS / 8, NW = kAtt2Warps;
  extern __shared__ __align__(16) float sm[];
  float* qs = sm + S::qs;
  float* wk = sm + S::wk;
  float* ps = sm + S::ps;
  float* red = sm + S::red;
  const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const uint32_t h = blockIdx.y, ci = blockIdx.x, M = p.M;
  const uint64_t c0 = (p.chunk0 + ci) * kAttendChunk;
  const uint64_t lo = max(p.first, c0), hi = min(p.end, c0 + kAttendChunk);  // lo < hi
  const uint8_t* sec = p.lowBit + h * p.sectionBytes;
  for (uint32_t i = tid; i < D * MG; i += kAtt2Threads) {
    const uint32_t c = i / MG, m = i % MG;
    qs[i] = m < M ? p.q[(m / p.G) * p.qRowStride + (static_cast<uint64_t>(h) * p.G + m % p.G) * D + c] * p.scale : 0.f;
  }
  __syncthreads();

  // Phase A.
  float s[2][MG];
  {
    float* W = wk + warp * D * MG;
    const uint64_t wt0 = c0 + warp * kAtt2WarpTokens;
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int m = 0; m < MG; ++m) s[k][m] = -INFINITY;
    if (p.KG == 64) {
      att2_score_pass<BITS, D, MG, 2>(p, sec, qs, W, wt0, lo, hi, h, lane, s, 0);
    } else {
      att2_score_pass<BITS, D, MG, 1>(p, sec, qs, W, wt0, lo, hi, h, lane, s, 0);
      att2_score_pass<BITS, D, MG, 1>(p, sec, qs, W, wt0 + 32, lo, hi, h, lane, s, 1);
    }
  }
  // Softmax statistics of the chunk.
  float mx[MG];
#pragma unroll
  for (int m = 0; m < MG; ++m) {
    const float v = warp_max(fmaxf(s[0][m], s[1][m]));
    if (lane == 0) red[warp * MG + m] = v;
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < MG; ++m) {
    float v = red[m];
    for (int w = 1; w < NW; ++w) v = fmaxf(v, red[w * MG + m]);
    mx[m] = v;
  }
  const uint32_t ngv = D / p.VG;
  const bool oneGroup = ngv == 1;  // one value group per token: fold the value scale into p here
  const uint16_t* vzAll = reinterpret_cast<const uint16_t*>(sec + p.valueZero);   // fp16 [capacity, D/VG]
  const uint16_t* vsAll = reinterpret_cast<const uint16_t*>(sec + p.valueScale);  // fp16 [capacity, D/VG]
  {
    float l[MG], zs[MG];
#pragma unroll
    for (int m = 0; m < MG; ++m) l[m] = zs[m] = 0.f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const uint32_t u = warp * kAtt2WarpTokens + lane + 32 * k;
      float e[MG];
      bool any = false;
#pragma unroll
      for (int m = 0; m < MG; ++m) {
        e[m] = s[k][m] == -INFINITY ? 0.f : expf(s[k][m] - mx[m]);
        l[m] += e[m];
        any |= e[m] != 0.f;
      }
      float sv = 1.f, zv = 0.f;  // several value groups: phase B applies the scale (and kCodeHalf) per group
      if (oneGroup) {
        // A token nothing attends contributes nothing: its bytes (maybe NaN, maybe past the range) are not read.
        sv = 0.f;
        if (any) {
          sv = h2f_hw(__ldg(vsAll + c0 + u)) * kCodeHalf<BITS>;
          zv = h2f_hw(__ldg(vzAll + c0 + u));
        }
      }
#pragma unroll
      for (int m = 0; m < MG; ++m) {
        zs[m] = fmaf(e[m], zv, zs[m]);
        e[m] *= sv;
      }
      store_mg<MG>(ps + u * MG, e);
    }
#pragma unroll
    for (int m = 0; m < MG; ++m) {
      const float lw = warp_sum(l[m]), zw = warp_sum(zs[m]);
      if (lane == 0) {
        red[(NW + warp) * MG + m] = lw;
        red[(2 * NW + warp) * MG + m] = zw;
      }
    }
  }
  __syncthreads();  // ps complete; every warp is done with its W

  // Phase B.
  constexpr int NS = D / 8, TL = kAtt2Threads / NS, U = 4;
  const uint32_t slice = tid % NS, tl = tid / NS;
  const uint32_t vj = slice * 8 / p.VG;
  const uint8_t* vcodes = sec + p.valueCodes + slice * BITS;
  const uint16_t* vz = vzAll + vj;
  const uint16_t* vs = vsAll + vj;
  float o[MG][8], za[MG];
#pragma unroll
  for (int m = 0; m < MG; ++m) {
    za[m] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) o[m][e] = 0.f;
  }
  for (uint64_t t0 = lo - (lo - c0) % TL + tl; t0 < hi; t0 += U * TL) {
    uint32_t cb[U], zb[U], sb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t t = t0 + u * TL;
      cb[u] = zb[u] = sb[u] = 0;
      if (t < hi) {
        const uint8_t* cp = vcodes + t * ROWB;
        if (BITS == 1) cb[u] = __ldg(cp);
        else if (BITS == 2) cb[u] = __ldg(reinterpret_cast<const uint16_t*>(cp));
        else cb[u] = __ldg(reinterpret_cast<const uint32_t*>(cp));
        if (!oneGroup) {
          zb[u] = __ldg(vz + t * ngv);
          sb[u] = __ldg(vs + t * ngv);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t t = t0 + u * TL;
      if (t >= hi) break;
      float pv[MG];
      load_mg<MG>(ps + (t - c0) * MG, pv);
      if (!oneGroup) {
        bool any = false;
#pragma unroll
        for (int m = 0; m < MG; ++m) any |= pv[m] != 0.f;
        if (!any) continue;  // excluded: its bytes must not reach the sums, even times 0
        const float z = h2f_hw(static_cast<uint16_t>(zb[u])), sc = h2f_hw(static_cast<uint16_t>(sb[u]));
#pragma unroll
        for (int m = 0; m < MG; ++m) {
          za[m] = fmaf(pv[m], z, za[m]);
          pv[m] *= sc * kCodeHalf<BITS>;
        }
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float code = code_x<BITS>(cb[u], e * BITS);
#pragma unroll
        for (int m = 0; m < MG; ++m) o[m][e] = fmaf(pv[m], code, o[m][e]);
      }
    }
  }
  if (!oneGroup)
#pragma unroll
    for (int m = 0; m < MG; ++m)
#pragma unroll
      for (int e = 0; e < 8; ++e) o[m][e] += za[m];
  // Token lanes of one slice within a warp differ in the lane bits >= log2(NS); then the warps' partials are
  // summed in warp order (deterministic) from shared memory.
#pragma unroll
  for (int off = NS; off < 32; off <<= 1)
#pragma unroll
    for (int m = 0; m < MG; ++m)
#pragma unroll
      for (int e = 0; e < 8; ++e) o[m][e] += __shfl_xor_sync(0xffffffffu, o[m][e], off);
  float* partW = wk + warp * MG * D;  // [MG][D]
  if (lane < static_cast<uint32_t>(NS < 32 ? NS : 32)) {
#pragma unroll
    for (int m = 0; m < MG; ++m) {
      float4* d4 = reinterpret_cast<float4*>(partW + m * D + slice * 8);
      d4[0] = make_float4(o[m][0], o[m][1], o[m][2], o[m][3]);
      d4[1] = make_float4(o[m][4], o[m][5], o[m][6], o[m][7]);
    }
  }
  __syncthreads();
  const uint64_t part = (static_cast<uint64_t>(h) * p.chunks + ci) * M;
  for (uint32_t i = tid; i < M * D; i += kAtt2Threads) {
    const uint32_t m = i / D;
    float v = 0.f;
    for (int w = 0; w < NW; ++w) v += wk[w * MG * D + i];
    if (oneGroup) {
      float z = 0.f;
      for (int w = 0; w < NW; ++w) z += red[(2 * NW + w) * MG + m];
      v += z;
    }
    p.partO[part * D + i] = v;
  }
  if (tid < M) {
    float mxv = red[tid], L = 0.f;
    for (int w = 1; w < NW; ++w) mxv = fmaxf(mxv, red[w * MG + tid]);
    for (int w = 0; w < NW; ++w) L += red[(NW + w) * MG + tid];
    p.partML[(part + tid) * 2] = mxv;
    p.partML[(part + tid) * 2 + 1] = L;
  }
}

// One block per (query head, row): o = sum_i e^(m_i - M) o_i / sum_i e^(m_i - M) l_i, lse = M + log L over the
// chunks (chunks with l_i = 0 attended nothing and are skipped). The chunk weights go to shared memory once.
constexpr int kCombineThreads = 128;
constexpr int kCombineTile = 1024;
__global__ void __launch_bounds__(kCombineThreads) kivi_attend_combine2_kernel(AttendParams p, uint32_t D) {
  __shared__ float wts[kCombineTile];
  __shared__ float red[kCombineThreads / 32];
  const uint32_t hg = blockIdx.x, r = blockIdx.y, h = hg / p.G, m = r * p.G + hg % p.G, tid = threadIdx.x;
  const uint32_t lane = tid % 32, warp = tid / 32;
  const uint64_t stride = static_cast<uint64_t>(p.M);
  const float* ml = p.partML + (static_cast<uint64_t>(h) * p.chunks * stride + m) * 2;  // chunk i at + i * M * 2
  const float* po = p.partO + (static_cast<uint64_t>(h) * p.chunks * stride + m) * D;   // chunk i at + i * M * D
  float* out = p.out + r * p.outRowStride + static_cast<uint64_t>(hg) * D;
  float* lse = p.lse + static_cast<uint64_t>(r) * p.HG + hg;
  float M = -INFINITY;
  for (uint64_t i = tid; i < p.chunks; i += kCombineThreads)
    if (ml[i * stride * 2 + 1] > 0.f) M = fmaxf(M, ml[i * stride * 2]);
  M = warp_max(M);
  if (lane == 0) red[warp] = M;
  __syncthreads();
  M = red[0];
  for (int w = 1; w < kCombineThreads / 32; ++w) M = fmaxf(M, red[w]);
  __syncthreads();
  if (M == -INFINITY) {
    for (uint32_t c = tid; c < D; c += kCombineThreads) out[c] = 0.f;
    if (tid == 0) *lse = -INFINITY;
    return;
  }
  float L = 0.f;
  for (uint64_t i = tid; i < p.chunks; i += kCombineThreads) {
    const float l = ml[i * stride * 2 + 1];
    if (l > 0.f) L += l * expf(ml[i * stride * 2] - M);
  }
  L = warp_sum(L);
  if (lane == 0) red[warp] = L;
  __syncthreads();
  L = 0.f;
  for (int w = 0; w < kCombineThreads / 32; ++w) L += red[w];
  float o[2] = {0.f, 0.f};  // channels tid and tid + 128 (D <= 256)
  for (uint64_t i0 = 0; i0 < p.chunks; i0 += kCombineTile) {
    const uint32_t n = static_cast<uint32_t>(min(static_cast<uint64_t>(kCombineTile), p.chunks - i0));
    __syncthreads();
    for (uint32_t i = tid; i < n; i += kCombineThreads) {
      const float l = ml[(i0 + i) * stride * 2 + 1];
      wts[i] = l > 0.f ? expf(ml[(i0 + i) * stride * 2] - M) : 0.f;
    }
    __syncthreads();
    for (uint32_t i = 0; i < n; ++i) {
      const float w = wts[i];
      if (ml[(i0 + i) * stride * 2 + 1] > 0.f)
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const uint32_t c = tid + k * kCombineThreads;
          if (c < D) o[k] = fmaf(po[(i0 + i) * stride * D + c], w, o[k]);
        }
    }
  }
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const uint32_t c = tid + k * kCombineThreads;
    if (c < D) out[c] = o[k] / L;
  }
  if (tid == 0) *lse = M + logf(L);
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

template <int BITS, int D, int MG>
cudaError_t launch_attend2_chunks(const AttendParams& p, uint32_t H, cudaStream_t stream) {
  using S = Att2Smem<D, MG>;
  auto kernel = kivi_attend2_kernel<BITS, D, MG>;
  static const cudaError_t attr =
      S::bytes > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(S::bytes)) : cudaSuccess;
  if (attr != cudaSuccess) return attr;
  kernel<<<dim3(static_cast<unsigned>(p.chunks), H), kAtt2Threads, S::bytes, stream>>>(p);
  return cudaGetLastError();
}

uint8_t* at(const std::shared_ptr<cudadev::DevArena>& a, const DevRef& r) { return static_cast<uint8_t*>(a->ptr) + r.offset; }

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

CudaStatus cuda_kivi_attend(const KiviAttendCall& c) {
  if (!cuda_usable()) return unavailable();
  auto lb = find_arena(c.lowBit.handle);
  if (!lb) return gone("device arena", c.lowBit.handle);
  auto q = find_arena(c.q.handle);
  if (!q) return gone("device arena", c.q.handle);
  std::shared_ptr<DevArena> ex;
  if (c.hasExclude && !(ex = find_arena(c.exclude.handle))) return gone("device arena", c.exclude.handle);
  auto out = find_arena(c.out.handle);
  if (!out) return gone("device arena", c.out.handle);
  auto lse = find_arena(c.lse.handle);
  if (!lse) return gone("device arena", c.lse.handle);
  auto sc = find_arena(c.scratch.handle);
  if (!sc) return gone("device arena", c.scratch.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  const uint32_t H = c.shape.numKvHeads, D = c.shape.headDim, G = c.groupSize, R = c.rows;
  AttendParams p;
  p.lowBit = at(lb, c.lowBit);
  p.sectionBytes = c.layout.sectionBytes;
  p.keyCodes = c.layout.keyCodes, p.keyZero = c.layout.keyZero, p.keyScale = c.layout.keyScale;
  p.valueCodes = c.layout.valueCodes, p.valueZero = c.layout.valueZero, p.valueScale = c.layout.valueScale;
  p.q = reinterpret_cast<const float*>(at(q, c.q));
  p.scale = c.scale;
  p.exclude = c.hasExclude ? at(ex, c.exclude) : nullptr;
  p.ldExclude = c.ldExclude;
  p.chunks = kivi_attend_chunks(c.first, c.end);
  p.chunk0 = c.first / kAttendChunk;
  p.partO = reinterpret_cast<float*>(at(sc, c.scratch));
  p.partML = p.partO + static_cast<uint64_t>(H) * p.chunks * R * G * D;
  p.out = reinterpret_cast<float*>(at(out, c.out));
  p.lse = reinterpret_cast<float*>(at(lse, c.lse));
  p.first = c.first, p.end = c.end;
  p.G = G, p.KG = c.shape.keyGroupSize, p.VG = c.shape.valueGroupSize;
  p.M = R * G, p.HG = H * G;
  p.qRowStride = c.qRowStride, p.outRowStride = c.outRowStride;
  cudaError_t err = cudaSuccess;
  if (p.chunks > 0) {
    err = by_bits(c.shape.bits, [&](auto b) {
      return by_dim(D, [&](auto d) {
        return by_mg(R * G, [&](auto mg) { return launch_attend2_chunks<decltype(b)::value, decltype(d)::value, decltype(mg)::value>(p, H, st->s); });
      });
    });
    if (err != cudaSuccess) return failed("the cudaKiviAttend chunk kernel launch", err);
  }
  kivi_attend_combine2_kernel<<<dim3(H * G, R), kCombineThreads, 0, st->s>>>(p, D);
  err = cudaGetLastError();
  if (err != cudaSuccess) return failed("the cudaKiviAttend combine kernel launch", err);
  if (ex) hold(*st, {lb, q, ex, out, lse, sc});
  else hold(*st, {lb, q, out, lse, sc});
  return {};
}

}  // namespace kvoff
