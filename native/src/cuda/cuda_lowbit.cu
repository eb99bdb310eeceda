// CUDA low-bit kernels of the device tier (DESIGN §1 steps 2, 3, 5): KIVI quantize-append from the device KV
// region, GQA-averaged scores over the quantized keys, per-row top-k, and flash-decoding attention over the
// quantized tail. Quantization is bit-exact with src/kernels/kivi.ts (fp32 steps with _rn intrinsics: no FMA
// contraction); the rest accumulates in fp32.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_lowbit.h"

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

__host__ __device__ __forceinline__ uint32_t f2u(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  union { float f; uint32_t u; } c{f};
  return c.u;
#endif
}
__host__ __device__ __forceinline__ float u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  union { uint32_t u; float f; } c{u};
  return c.f;
#endif
}

// fp16 bits -> f32, exact (native/src/half.h f16_to_f32).
__host__ __device__ __forceinline__ float h2f(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return u2f(sign);
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    return sign ? -v : v;
  }
  if (exp == 31) return u2f(sign | 0x7f800000u | (mant << 13));
  return u2f(sign | ((exp + 112u) << 23) | (mant << 13));
}

// f32 -> fp16 bits, round to nearest even (native/src/half.h f32_to_f16, line for line).
__host__ __device__ __forceinline__ uint16_t f2h(float f) {
  const uint32_t u = f2u(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  const int32_t exp = static_cast<int32_t>(absu >> 23) - 127;
  if (exp < -14) {
    if (exp < -25) return sign;
    const uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
    const int shift = -exp - 1;
    const uint32_t shifted = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    const uint32_t r = shifted + ((rem > half || (rem == half && (shifted & 1u))) ? 1u : 0u);
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t mant = absu & 0x7fffffu;
  uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1;
  return static_cast<uint16_t>(sign | h);
}

// One 16-bit KV element (the low or high half of a little-endian word) -> f32, exact for both dtypes.
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

constexpr int kScoreThreads = 256;  // one token per thread: a block scores 256 tokens = 4 or 8 key groups

struct ScoreParams {
  const uint8_t* lowBit;
  uint64_t sectionBytes, keyCodes, keyZero, keyScale;
  const float* q;  // [H * G, D]
  float* out;      // [H, ldOut]
  uint64_t ldOut;
  uint32_t G, KG, numTokens;  // numTokens = numGroups * KG
};

// score_t = qm . (z + s * code_t) = sum_c qm_c z_c + sum_c (qm_c s_c) code_t,c with qm the mean query: per group
// the two D-vectors go to shared memory once, then each thread reads its token's packed row once.
template <int BITS, int D>
__global__ void __launch_bounds__(kScoreThreads) kivi_scores_kernel(ScoreParams p) {
  constexpr int ROWB = D * BITS / 8, CPW = 32 / BITS, MASK = (1 << BITS) - 1;
  constexpr int MAXG = kScoreThreads / 32;  // key groups per tile at KG = 32
  __shared__ float qm[D];
  __shared__ __align__(16) float w[MAXG][D];  // qm * scale, per group of the tile
  __shared__ float zq[MAXG][D];               // qm * zero
  __shared__ float bias[MAXG];
  const uint32_t h = blockIdx.y, tid = threadIdx.x;
  const uint64_t t0 = static_cast<uint64_t>(blockIdx.x) * kScoreThreads;
  const float* q = p.q + static_cast<uint64_t>(h) * p.G * D;
  for (uint32_t c = tid; c < D; c += kScoreThreads) {
    float s = 0.f;
    for (uint32_t g = 0; g < p.G; ++g) s += q[g * D + c];
    qm[c] = s / static_cast<float>(p.G);
  }
  const uint8_t* sec = p.lowBit + h * p.sectionBytes;
  const uint16_t* zero = reinterpret_cast<const uint16_t*>(sec + p.keyZero);    // fp16 [maxGroups, D]
  const uint16_t* scale = reinterpret_cast<const uint16_t*>(sec + p.keyScale);  // fp16 [maxGroups, D]
  const uint64_t grp0 = t0 / p.KG;
  const uint32_t ng = static_cast<uint32_t>(min(static_cast<uint64_t>(kScoreThreads / p.KG), (p.numTokens - t0 + p.KG - 1) / p.KG));
  __syncthreads();
  for (uint32_t i = tid; i < ng * D; i += kScoreThreads) {
    const uint32_t gi = i / D, c = i % D;
    const uint64_t at = (grp0 + gi) * D + c;
    w[gi][c] = qm[c] * h2f(__ldg(scale + at));
    zq[gi][c] = qm[c] * h2f(__ldg(zero + at));
  }
  __syncthreads();
  const uint32_t warp = tid / 32, lane = tid % 32;
  if (warp < ng) {
    float s = 0.f;
    for (uint32_t c = lane; c < D; c += 32) s += zq[warp][c];
    s = warp_sum(s);
    if (lane == 0) bias[warp] = s;
  }
  __syncthreads();
  const uint64_t t = t0 + tid;
  if (t >= p.numTokens) return;
  const uint32_t gi = tid / p.KG;
  uint32_t row[ROWB / 4];
  load_row<ROWB>(sec + p.keyCodes + t * ROWB, row);
  float acc = bias[gi];
  const float4* wv = reinterpret_cast<const float4*>(w[gi]);
#pragma unroll
  for (int wi = 0; wi < ROWB / 4; ++wi) {
#pragma unroll
    for (int e = 0; e < CPW; e += 4) {
      const float4 ww = wv[(wi * CPW + e) / 4];  // every lane of a warp reads the same group: a broadcast
      const uint32_t b = row[wi] >> (e * BITS);
      acc = fmaf(ww.x, code_f(b & MASK), acc);
      acc = fmaf(ww.y, code_f((b >> BITS) & MASK), acc);
      acc = fmaf(ww.z, code_f((b >> (2 * BITS)) & MASK), acc);
      acc = fmaf(ww.w, code_f((b >> (3 * BITS)) & MASK), acc);
    }
  }
  p.out[h * p.ldOut + t] = acc;
}

// ---- Top-k ----
//
// Each element gets a 52-bit select key C = (order-preserving 32-bit key of the float) << 20 | (2^20 - 1 - index):
// larger C ranks first, all C differ (ties go to the lower index) and NaN's key is 0 (last). A radix select
// finds the k-th largest C, 11/11/10 bits of the float key then 10/10 of the index, stopping at the first digit
// where the count above the threshold is exactly k (usually after the float bits). A cluster of 8 blocks shares
// a row: each histograms its eighth, the 8 histograms are summed through distributed shared memory, and every
// block picks the same digit. Winners (C >= threshold, exactly k) are gathered in block 0 and bitonic-sorted.

constexpr int kTopKThreads = 512;
constexpr int kTopKCluster = 8;
constexpr int kTopKBins = 2048;
constexpr int kTopKLevels = 5;

struct TopKParams {
  const float* scores;  // [rows, ld]
  int32_t* out;         // [rows, k]
  uint8_t* mask;        // [rows, ld] or null
  uint64_t ld, first;
  uint32_t n, k;
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

__global__ void __cluster_dims__(kTopKCluster, 1, 1) __launch_bounds__(kTopKThreads) topk_kernel(TopKParams p) {
  __shared__ uint32_t hist[kTopKBins];
  __shared__ unsigned long long wins[kTopKMaxK];  // block 0: the winners' select keys
  __shared__ uint32_t winCount;
  __shared__ uint32_t red[32];
  __shared__ uint32_t pick[3];  // digit, count above it, exact
  cg::cluster_group cluster = cg::this_cluster();
  const uint32_t rank = cluster.block_rank(), tid = threadIdx.x;
  const uint64_t row = blockIdx.y;
  const float* base = p.scores + row * p.ld + p.first;
  // This block's eighth of the n positions (a multiple of 4 long, so most of it is float4 loads).
  const uint32_t part = ((p.n + kTopKCluster - 1) / kTopKCluster + 3) & ~3u;
  const uint32_t lo = min(p.n, rank * part), hi = min(p.n, lo + part);
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
      for (uint32_t r = 0; r < kTopKCluster; ++r) sum += cluster.map_shared_rank(hist, r)[b];
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
    const uint64_t mpart = (p.ld + kTopKCluster - 1) / kTopKCluster;
    const uint64_t mlo = min(p.ld, rank * mpart), mhi = min(p.ld, mlo + mpart);
    uint8_t* m = p.mask + row * p.ld;
    for (uint64_t i = mlo + tid; i < mhi; i += kTopKThreads) {
      bool win = false;
      if (i >= p.first && i < p.first + p.n) {
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
// Flash-decoding: one block per (chunk of kAttendChunk tokens aligned to absolute positions, KV head). Phase A:
// one thread per token, 128 tokens (2-4 key groups) at a time, scores for all G query heads from one read of the
// packed key row, against per-group vectors (scale * q * keyScale and scale * q . keyZero) in shared memory. The
// chunk's max and sum give p = exp(s - m). Phase B: each thread owns 8 channels and a stride of the chunk's
// tokens, dequantizes each value once and accumulates it for all G heads. The combine kernel merges chunks by
// log-sum-exp.

constexpr int kAttThreads = 128;
constexpr int kAttTile = 128;  // phase A tokens per pass: one per thread
constexpr int kAttTileGroups = kAttTile / 32;

struct AttendParams {
  const uint8_t* lowBit;
  uint64_t sectionBytes, keyCodes, keyZero, keyScale, valueCodes, valueZero, valueScale;
  const float* q;  // [H * G, D]
  float scale;
  const uint8_t* exclude;  // [H, ldExclude] or null
  uint64_t ldExclude;
  float* partO;   // [H, chunks, G, D]
  float* partML;  // [H, chunks, G, 2]
  float* out;     // [H * G, D]
  float* lse;     // [H * G]
  uint64_t first, end, chunk0, chunks;
  uint32_t G, KG, VG;
};

// Dynamic shared memory of the chunk kernel, in floats.
template <int D, int MG>
struct AttSmem {
  static constexpr int qs = 0;                            // [D][MG] scale * q, zero past G
  static constexpr int wk = qs + D * MG;                  // [tileGroups][D][MG] scale * q * keyScale
  static constexpr int bk = wk + kAttTileGroups * D * MG;  // [tileGroups][MG] scale * q . keyZero
  static constexpr int ps = bk + kAttTileGroups * MG;     // [chunk][MG] scores, then probabilities
  static constexpr int oacc = ps + kAttendChunk * MG;     // [MG][D] the chunk's output
  static constexpr int red = oacc + MG * D;               // [warps][MG]
  static constexpr int stat = red + (kAttThreads / 32) * MG;  // [2][MG] max, sum
  static constexpr int floats = stat + 2 * MG;
  static constexpr size_t bytes = static_cast<size_t>(floats) * 4;
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

template <int BITS, int D, int MG>
__global__ void __launch_bounds__(kAttThreads) kivi_attend_chunk_kernel(AttendParams p) {
  using S = AttSmem<D, MG>;
  constexpr int ROWB = D * BITS / 8, CPW = 32 / BITS, MASK = (1 << BITS) - 1;
  constexpr int NW = kAttThreads / 32;
  extern __shared__ __align__(16) float sm[];
  float* qs = sm + S::qs;
  float* wk = sm + S::wk;
  float* bk = sm + S::bk;
  float* ps = sm + S::ps;
  float* oacc = sm + S::oacc;
  float* red = sm + S::red;
  float* stat = sm + S::stat;
  const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const uint32_t h = blockIdx.y, ci = blockIdx.x;
  const uint64_t c0 = (p.chunk0 + ci) * kAttendChunk;
  const uint64_t lo = max(p.first, c0), hi = min(p.end, c0 + kAttendChunk);  // lo < hi: the range meets every chunk
  const uint8_t* sec = p.lowBit + h * p.sectionBytes;
  const uint16_t* kz = reinterpret_cast<const uint16_t*>(sec + p.keyZero);   // fp16 [maxGroups, D]
  const uint16_t* ksc = reinterpret_cast<const uint16_t*>(sec + p.keyScale);  // fp16 [maxGroups, D]

  for (uint32_t i = tid; i < D * MG; i += kAttThreads) {
    const uint32_t c = i / MG, g = i % MG;
    qs[i] = g < p.G ? p.q[(static_cast<uint64_t>(h) * p.G + g) * D + c] * p.scale : 0.f;
  }

  // Phase A: scores of the chunk's tokens, 128 at a time; -inf outside [lo, hi) and at excluded tokens.
  for (uint32_t tile = 0; tile < kAttendChunk / kAttTile; ++tile) {
    const uint64_t tt0 = c0 + tile * kAttTile;  // a multiple of 128, hence of KG
    const bool live = tt0 < hi && tt0 + kAttTile > lo;  // block-uniform
    __syncthreads();  // qs written; the previous tile is done with wk and bk
    if (live) {
      // Only groups that start before hi: those exist (hi <= end <= maxGroups * KG).
      const uint32_t ng = static_cast<uint32_t>(min(static_cast<uint64_t>(kAttTile / p.KG), (hi - tt0 + p.KG - 1) / p.KG));
      const uint64_t grp0 = tt0 / p.KG;
      for (uint32_t i = tid; i < ng * D; i += kAttThreads) {
        const uint32_t gi = i / D, c = i % D;
        const float s = h2f(__ldg(ksc + (grp0 + gi) * D + c));
#pragma unroll
        for (int g = 0; g < MG; ++g) wk[(gi * D + c) * MG + g] = qs[c * MG + g] * s;
      }
      for (uint32_t pr = warp; pr < ng * MG; pr += NW) {  // one warp per (group, head): lanes split the channels
        const uint32_t gi = pr / MG, g = pr % MG;
        const uint16_t* z = kz + (grp0 + gi) * D;
        float b = 0.f;
        for (uint32_t c = lane; c < D; c += 32) b = fmaf(qs[c * MG + g], h2f(__ldg(z + c)), b);
        b = warp_sum(b);
        if (lane == 0) bk[gi * MG + g] = b;
      }
    }
    __syncthreads();
    const uint64_t t = tt0 + tid;
    float acc[MG];
#pragma unroll
    for (int g = 0; g < MG; ++g) acc[g] = -INFINITY;
    const bool valid = live && t >= lo && t < hi && !(p.exclude && p.exclude[h * p.ldExclude + t]);
    if (valid) {
      const uint32_t gi = tid / p.KG;
      load_mg<MG>(bk + gi * MG, acc);
      uint32_t row[ROWB / 4];
      load_row<ROWB>(sec + p.keyCodes + t * ROWB, row);
      const float* wg = wk + gi * D * MG;
#pragma unroll
      for (int wi = 0; wi < ROWB / 4; ++wi) {
#pragma unroll
        for (int e = 0; e < CPW; ++e) {
          const float code = code_f((row[wi] >> (e * BITS)) & MASK);
          float wv[MG];
          load_mg<MG>(wg + (wi * CPW + e) * MG, wv);  // same address across the warp: a broadcast
#pragma unroll
          for (int g = 0; g < MG; ++g) acc[g] = fmaf(wv[g], code, acc[g]);
        }
      }
    }
#pragma unroll
    for (int g = 0; g < MG; ++g) ps[(tile * kAttTile + tid) * MG + g] = acc[g];
  }
  __syncthreads();

  // The chunk's max and sum per head; p = exp(s - m) replaces the scores (0 where nothing is attended).
  float m[MG];
#pragma unroll
  for (int g = 0; g < MG; ++g) {
    float v = -INFINITY;
    for (uint32_t u = tid; u < kAttendChunk; u += kAttThreads) v = fmaxf(v, ps[u * MG + g]);
    v = warp_max(v);
    if (lane == 0) red[warp * MG + g] = v;
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < MG; ++g) {
    float v = red[g];
    for (int w = 1; w < NW; ++w) v = fmaxf(v, red[w * MG + g]);
    m[g] = v;
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < MG; ++g) {
    float l = 0.f;
    for (uint32_t u = tid; u < kAttendChunk; u += kAttThreads) {
      const float s = ps[u * MG + g];
      const float e = (s == -INFINITY) ? 0.f : expf(s - m[g]);
      ps[u * MG + g] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) red[warp * MG + g] = l;
  }
  __syncthreads();
  if (tid == 0) {
#pragma unroll
    for (int g = 0; g < MG; ++g) {
      float l = 0.f;
      for (int w = 0; w < NW; ++w) l += red[w * MG + g];
      stat[g] = m[g];
      stat[MG + g] = l;
    }
  }

  // Phase B: thread (tl, slice) owns channels [8 slice, 8 slice + 8) and tokens lo + tl, lo + tl + TL, ...
  constexpr int NS = D / 8, TL = kAttThreads / NS;
  const uint32_t slice = tid % NS, tl = tid / NS;
  const uint32_t ngv = D / p.VG, vj = slice * 8 / p.VG;
  const uint8_t* vcodes = sec + p.valueCodes + slice * BITS;  // 8 channels of BITS bits: BITS bytes
  const uint16_t* vz = reinterpret_cast<const uint16_t*>(sec + p.valueZero) + vj;   // fp16 [capacity, D/VG]
  const uint16_t* vs = reinterpret_cast<const uint16_t*>(sec + p.valueScale) + vj;  // fp16 [capacity, D/VG]
  float o[MG][8];
#pragma unroll
  for (int g = 0; g < MG; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) o[g][e] = 0.f;
  __syncthreads();  // ps holds probabilities
  // Four tokens per pass, all their loads issued before any math, so each thread keeps several reads in flight.
  constexpr int U = 4;
  for (uint64_t t0 = lo + tl; t0 < hi; t0 += U * TL) {
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
        zb[u] = __ldg(vz + t * ngv);
        sb[u] = __ldg(vs + t * ngv);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint64_t t = t0 + u * TL;
      if (t >= hi) break;
      float pv[MG];
      load_mg<MG>(ps + (t - c0) * MG, pv);
      bool any = false;
#pragma unroll
      for (int g = 0; g < MG; ++g) any |= pv[g] != 0.f;
      if (!any) continue;  // excluded: its bytes (which may dequantize to NaN) must not reach the sums, even times 0
      const float z = h2f(zb[u]), sc = h2f(sb[u]);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float v = fmaf(sc, code_f((cb[u] >> (e * BITS)) & MASK), z);
#pragma unroll
        for (int g = 0; g < MG; ++g) o[g][e] = fmaf(pv[g], v, o[g][e]);
      }
    }
  }
  // Sum over the token lanes: within a warp, lanes of one slice differ in the bits >= log2(NS) (after which lanes
  // [0, min(NS, 32)) hold the warp's sums, slice = lane % NS); then warp by warp in a fixed order (deterministic).
#pragma unroll
  for (int off = NS; off < 32; off <<= 1)
#pragma unroll
    for (int g = 0; g < MG; ++g)
#pragma unroll
      for (int e = 0; e < 8; ++e) o[g][e] += __shfl_xor_sync(0xffffffffu, o[g][e], off);
  for (int w = 0; w < NW; ++w) {
    if (warp == static_cast<uint32_t>(w) && lane < static_cast<uint32_t>(NS < 32 ? NS : 32)) {
#pragma unroll
      for (int g = 0; g < MG; ++g)
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          float* dst = oacc + g * D + slice * 8 + e;
          *dst = (w == 0 ? 0.f : *dst) + o[g][e];
        }
    }
    __syncthreads();
  }
  const uint64_t part = (static_cast<uint64_t>(h) * p.chunks + ci) * p.G;
  for (uint32_t i = tid; i < p.G * D; i += kAttThreads) p.partO[part * D + i] = oacc[i];
  if (tid < p.G) {
    p.partML[(part + tid) * 2] = stat[tid];
    p.partML[(part + tid) * 2 + 1] = stat[MG + tid];
  }
}

// One block per query head: o = sum_i e^(m_i - M) o_i / sum_i e^(m_i - M) l_i, lse = M + log L over the chunks.
__global__ void __launch_bounds__(128) kivi_attend_combine_kernel(AttendParams p, uint32_t D) {
  const uint32_t hg = blockIdx.x, h = hg / p.G, g = hg % p.G;
  const float* ml = p.partML + (static_cast<uint64_t>(h) * p.chunks * p.G + g) * 2;  // chunk i at + i * G * 2
  const float* po = p.partO + (static_cast<uint64_t>(h) * p.chunks * p.G + g) * D;   // chunk i at + i * G * D
  float M = -INFINITY;
  for (uint64_t i = 0; i < p.chunks; ++i)
    if (ml[i * p.G * 2 + 1] > 0.f) M = fmaxf(M, ml[i * p.G * 2]);
  if (M == -INFINITY) {
    for (uint32_t c = threadIdx.x; c < D; c += blockDim.x) p.out[static_cast<uint64_t>(hg) * D + c] = 0.f;
    if (threadIdx.x == 0) p.lse[hg] = -INFINITY;
    return;
  }
  float L = 0.f;
  for (uint64_t i = 0; i < p.chunks; ++i) {
    const float l = ml[i * p.G * 2 + 1];
    if (l > 0.f) L += l * expf(ml[i * p.G * 2] - M);
  }
  for (uint32_t c = threadIdx.x; c < D; c += blockDim.x) {
    float o = 0.f;
    for (uint64_t i = 0; i < p.chunks; ++i) {
      const float l = ml[i * p.G * 2 + 1];
      if (l > 0.f) o = fmaf(po[i * p.G * D + c], expf(ml[i * p.G * 2] - M), o);
    }
    p.out[static_cast<uint64_t>(hg) * D + c] = o / L;
  }
  if (threadIdx.x == 0) p.lse[hg] = M + logf(L);
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
  return f(std::integral_constant<int, 8>());
}

template <int BITS, int D, int MG>
cudaError_t launch_attend_chunks(const AttendParams& p, uint32_t H, cudaStream_t stream) {
  using S = AttSmem<D, MG>;
  auto kernel = kivi_attend_chunk_kernel<BITS, D, MG>;
  // Above 48 KiB of dynamic shared memory a kernel must opt in; once per instantiation is enough.
  static const cudaError_t attr =
      S::bytes > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(S::bytes)) : cudaSuccess;
  if (attr != cudaSuccess) return attr;
  kernel<<<dim3(static_cast<unsigned>(p.chunks), H), kAttThreads, S::bytes, stream>>>(p);
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
    const dim3 grid((p.numTokens + kScoreThreads - 1) / kScoreThreads, c.shape.numKvHeads);
    const cudaError_t err = by_bits(c.shape.bits, [&](auto b) {
      return by_dim(c.shape.headDim, [&](auto d) {
        kivi_scores_kernel<decltype(b)::value, decltype(d)::value><<<grid, kScoreThreads, 0, st->s>>>(p);
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
  topk_kernel<<<dim3(kTopKCluster, c.rows), kTopKThreads, 0, st->s>>>(p);
  const cudaError_t err = cudaGetLastError();
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
  const uint32_t H = c.shape.numKvHeads, D = c.shape.headDim, G = c.groupSize;
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
  p.partML = p.partO + static_cast<uint64_t>(H) * p.chunks * G * D;
  p.out = reinterpret_cast<float*>(at(out, c.out));
  p.lse = reinterpret_cast<float*>(at(lse, c.lse));
  p.first = c.first, p.end = c.end;
  p.G = G, p.KG = c.shape.keyGroupSize, p.VG = c.shape.valueGroupSize;
  cudaError_t err = cudaSuccess;
  if (p.chunks > 0) {
    err = by_bits(c.shape.bits, [&](auto b) {
      return by_dim(D, [&](auto d) {
        return by_mg(G, [&](auto mg) { return launch_attend_chunks<decltype(b)::value, decltype(d)::value, decltype(mg)::value>(p, H, st->s); });
      });
    });
    if (err != cudaSuccess) return failed("the cudaKiviAttend chunk kernel launch", err);
  }
  kivi_attend_combine_kernel<<<H * G, 128, 0, st->s>>>(p, D);
  err = cudaGetLastError();
  if (err != cudaSuccess) return failed("the cudaKiviAttend combine kernel launch", err);
  if (ex) hold(*st, {lb, q, ex, out, lse, sc});
  else hold(*st, {lb, q, out, lse, sc});
  return {};
}

}  // namespace kvoff
