// Tensor-core causal prefill: the online-softmax loop of cuda_attention.cu's f32 kernel with Q·Kᵀ and P·V on
// mma.sync m16n8k16 (16-bit inputs in the KV's own format, f32 accumulation). K and V are exact in 16 bits (that is
// how they are stored); Q and P are not, so each is split into a 16-bit head and a 16-bit residual and multiplied
// twice. That keeps about 16 mantissa bits in every product (22 for f16), close to the f32 kernel, at twice the
// MMA count, which the tensor cores have to spare: the loop is bound by shared-memory traffic and exp2, not MMAs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "cuda/cuda_kernels.cuh"
#include "cuda/cuda_prefill_tc.h"

namespace kvoff {
namespace {

constexpr float kLn2 = 0.6931471805599453f;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBM = kWarps * 16;  // query rows per CTA: one m16 row block per warp

template <int D>
struct TcShape {
  static constexpr int BN = D <= 128 ? 64 : 32;  // KV rows per tile; the S fragment is BN / 2 floats per thread
  static constexpr int S = D + 8;                // shared row stride in 16-bit elements: rows 4 banks apart
  static constexpr size_t smem = static_cast<size_t>(2 * kBM + 2 * BN) * S * sizeof(uint16_t);
};

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (BF16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// x = head + residual, both 16-bit (round to nearest), as raw bits.
template <bool BF16>
__device__ __forceinline__ void split16(float x, uint16_t& head, uint16_t& rest) {
  if constexpr (BF16) {
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    head = __bfloat16_as_ushort(h);
    rest = __bfloat16_as_ushort(__float2bfloat16_rn(x - __bfloat162float(h)));
  } else {
    const __half h = __float2half_rn(x);
    head = __half_as_ushort(h);
    rest = __half_as_ushort(__float2half_rn(x - __half2float(h)));
  }
}

// Two f32 values (element 0 in the low half) as packed 16-bit heads and residuals.
template <bool BF16>
__device__ __forceinline__ void split16x2(float x0, float x1, uint32_t& head, uint32_t& rest) {
  uint16_t h0, r0, h1, r1;
  split16<BF16>(x0, h0, r0);
  split16<BF16>(x1, h1, r1);
  head = static_cast<uint32_t>(h0) | static_cast<uint32_t>(h1) << 16;
  rest = static_cast<uint32_t>(r0) | static_cast<uint32_t>(r1) << 16;
}

// CTA (64 query rows, KV head h); rows i = t * G + g as in the f32 kernel, so the G heads of a token share every
// K/V tile. Warp w owns rows 16w..16w+15; in mma terms lane (g = lane / 4, c = lane % 4) holds rows g and g + 8,
// score columns 2c, 2c + 1 of each 8-column block, and the same for its output columns.
template <int D, bool BF16>
__global__ void __launch_bounds__(kThreads) attend_prefill_tc_kernel(const PrefillArgs p) {
  using Shape = TcShape<D>;
  constexpr int BN = Shape::BN, S = Shape::S, KC = D / 16, NT = BN / 8, DT = D / 8;
  extern __shared__ uint4 smem_tc[];
  uint16_t* Qh = reinterpret_cast<uint16_t*>(smem_tc);  // [64, S] head of Q * qscale * 2^-qexp
  uint16_t* Ql = Qh + kBM * S;                          // [64, S] its residual
  uint16_t* Ks = Ql + kBM * S;                          // [BN, S]
  uint16_t* Vs = Ks + BN * S;                           // [BN, S]
  __shared__ float qmax;

  const int h = blockIdx.y;
  const int tile = gridDim.x - 1 - blockIdx.x;  // the longest (latest) tiles start first
  const int G = p.G;
  const int64_t rowsTotal = static_cast<int64_t>(p.T) * G;
  const int64_t i0 = static_cast<int64_t>(tile) * kBM;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, gc = lane & 3;

  // f16 has no room for large queries: scale them by 2^-qexp so they stay below 2^14, and scores back by 2^qexp.
  float unscale = 1.f;
  if constexpr (!BF16) {
    if (threadIdx.x == 0) qmax = 0.f;
    __syncthreads();
    float mx = 0.f;
    for (int idx = threadIdx.x; idx < kBM * D; idx += kThreads) {
      const int r = idx / D, c = idx - r * D;
      const int64_t i = i0 + r;
      if (i >= rowsTotal) break;
      const int64_t t = i / G, g = i - t * G;
      mx = fmaxf(mx, fabsf(p.q[t * static_cast<int64_t>(p.qRowStride) + (static_cast<int64_t>(h) * G + g) * D + c] * p.qscale));
    }
    atomicMax(reinterpret_cast<int*>(&qmax), __float_as_int(mx));  // non-negative floats order as ints
    __syncthreads();
    int e = 0;
    if (qmax > 16384.f && qmax <= 3.0e38f) {
      frexpf(qmax, &e);
      e -= 14;
    }
    unscale = ldexpf(1.f, e);
  }
  const float qs = p.qscale / unscale;
  for (int idx = threadIdx.x; idx < kBM * D; idx += kThreads) {
    const int r = idx / D, c = idx - r * D;
    const int64_t i = i0 + r;
    float val = 0.f;
    if (i < rowsTotal) {
      const int64_t t = i / G, g = i - t * G;
      val = p.q[t * static_cast<int64_t>(p.qRowStride) + (static_cast<int64_t>(h) * G + g) * D + c] * qs;
    }
    split16<BF16>(val, Qh[r * S + c], Ql[r * S + c]);
  }

  const int64_t rA = i0 + warp * 16 + gr, rB = rA + 8;
  const int64_t limA = rA < rowsTotal ? p.start + rA / G : -1;  // last KV row the row attends; -1 for padding
  const int64_t limB = rB < rowsTotal ? p.start + rB / G : -1;
  // The last KV row any row of this warp attends (rows grow with i, so its last live row's); -1 for a padding warp.
  const int64_t wFirst = i0 + warp * 16;
  const int64_t warpLim = wFirst >= rowsTotal ? -1 : p.start + min(wFirst + 15, rowsTotal - 1) / G;
  const int64_t tLast = min(static_cast<int64_t>(p.T) - 1, (i0 + kBM - 1) / G);
  const int64_t kvEnd = p.start + tLast + 1;  // rows [0, kvEnd) are attended by some row of the tile
  const uint16_t* head = p.kv + static_cast<uint64_t>(h) * p.capacity * 2 * D;

  float mA = -INFINITY, mB = -INFINITY, lA = 0.f, lB = 0.f;
  float o[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;

  for (int64_t j0 = 0; j0 < kvEnd; j0 += BN) {
    __syncthreads();  // the previous tile is no longer read (and Q is stored, the first time)
    constexpr int VPR = D / 8;  // 16-byte vectors per K (or V) row
    for (int idx = threadIdx.x; idx < BN * 2 * VPR; idx += kThreads) {
      const int r = idx / (2 * VPR), c = idx - r * 2 * VPR;  // c < VPR: K, else V
      const int64_t row = j0 + r;
      uint4 w = make_uint4(0, 0, 0, 0);  // rows past kvEnd are zeros, never stale memory: 0 * NaN would poison sums
      if (row < kvEnd) w = load_ro(reinterpret_cast<const uint4*>(head + row * 2 * D) + c);
      uint16_t* dst = c < VPR ? Ks + r * S + c * 8 : Vs + r * S + (c - VPR) * 8;
      *reinterpret_cast<uint4*>(dst) = w;
    }
    __syncthreads();
    if (j0 > warpLim) continue;  // every row of this warp is causally masked out of the tile

    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
      const uint16_t* qh = Qh + (warp * 16 + gr) * S + kc * 16 + gc * 2;
      const uint16_t* ql = Ql + (warp * 16 + gr) * S + kc * 16 + gc * 2;
      const uint32_t ah[4] = {ld32(qh), ld32(qh + 8 * S), ld32(qh + 8), ld32(qh + 8 * S + 8)};
      const uint32_t al[4] = {ld32(ql), ld32(ql + 8 * S), ld32(ql + 8), ld32(ql + 8 * S + 8)};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint16_t* kr = Ks + (nt * 8 + gr) * S + kc * 16 + gc * 2;  // B[k][n] = K[n][k]: two adjacent k per word
        const uint32_t b0 = ld32(kr), b1 = ld32(kr + 8);
        mma16816<BF16>(s[nt], ah, b0, b1);
        mma16816<BF16>(s[nt], al, b0, b1);
      }
    }

    float mxA = -INFINITY, mxB = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t col = j0 + nt * 8 + gc * 2 + e;
        s[nt][e] = col > limA ? -INFINITY : s[nt][e] * unscale;  // causal, and padding rows (lim -1)
        s[nt][2 + e] = col > limB ? -INFINITY : s[nt][2 + e] * unscale;
        mxA = fmaxf(mxA, s[nt][e]);
        mxB = fmaxf(mxB, s[nt][2 + e]);
      }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {  // the four lanes of a row differ in lane bits 0-1
      mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, off));
      mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, off));
    }
    const float nA = fmaxf(mA, mxA), nB = fmaxf(mB, mxB);
    const float sA = nA == -INFINITY ? 0.f : nA, sB = nB == -INFINITY ? 0.f : nB;
    const float alphaA = exp2f(mA - sA), alphaB = exp2f(mB - sB);
    float rsA = 0.f, rsB = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - sA);
      s[nt][1] = exp2f(s[nt][1] - sA);
      s[nt][2] = exp2f(s[nt][2] - sB);
      s[nt][3] = exp2f(s[nt][3] - sB);
      rsA += s[nt][0] + s[nt][1];
      rsB += s[nt][2] + s[nt][3];
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      rsA += __shfl_xor_sync(0xffffffffu, rsA, off);
      rsB += __shfl_xor_sync(0xffffffffu, rsB, off);
    }
    lA = lA * alphaA + rsA;
    lB = lB * alphaB + rsB;
    mA = nA;
    mB = nB;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      o[dt][0] *= alphaA;
      o[dt][1] *= alphaA;
      o[dt][2] *= alphaB;
      o[dt][3] *= alphaB;
    }

    // O += P V. The S fragment of columns 16kk..16kk+15 is exactly the A fragment of P for those KV rows.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t ph[4], pl[4];
      split16x2<BF16>(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
      split16x2<BF16>(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
      split16x2<BF16>(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
      split16x2<BF16>(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        const uint16_t* vc = Vs + (kk * 16 + gc * 2) * S + dt * 8 + gr;  // B[k][n] = V[k][n]: k runs down a column
        const uint32_t b0 = static_cast<uint32_t>(vc[0]) | static_cast<uint32_t>(vc[S]) << 16;
        const uint32_t b1 = static_cast<uint32_t>(vc[8 * S]) | static_cast<uint32_t>(vc[9 * S]) << 16;
        mma16816<BF16>(o[dt], ph, b0, b1);
        mma16816<BF16>(o[dt], pl, b0, b1);
      }
    }
  }

  const int64_t rows[2] = {rA, rB};
  const float ls[2] = {lA, lB}, ms[2] = {mA, mB};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t iq = rows[half];
    if (iq >= rowsTotal) continue;
    const int64_t t = iq / G, g = iq - t * G;
    const int64_t orow = t * p.H * G + static_cast<int64_t>(h) * G + g;  // [T, H * G] row of out and lse
    const float inv = 1.f / ls[half];  // l >= 1: row 0 is attended by every query and its max term is 2^0
    float* dst = p.out + orow * D + gc * 2;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      dst[dt * 8] = o[dt][2 * half] * inv;
      dst[dt * 8 + 1] = o[dt][2 * half + 1] * inv;
    }
    if (gc == 0) p.lse[orow] = (ms[half] + log2f(ls[half])) * kLn2;
  }
}

template <int D, bool BF16>
cudaError_t launch_d(const PrefillArgs& p, cudaStream_t stream) {
  // Over 48 KB of dynamic shared memory needs an opt-in, once per kernel.
  static std::once_flag once;
  static cudaError_t attr = cudaSuccess;
  std::call_once(once, [] {
    attr = cudaFuncSetAttribute(attend_prefill_tc_kernel<D, BF16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(TcShape<D>::smem));
  });
  if (attr != cudaSuccess) return attr;
  const uint64_t tiles = (static_cast<uint64_t>(p.T) * p.G + kBM - 1) / kBM;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.H));
  attend_prefill_tc_kernel<D, BF16><<<grid, kThreads, TcShape<D>::smem, stream>>>(p);
  return cudaGetLastError();
}

template <bool BF16>
cudaError_t launch_t(const PrefillArgs& p, cudaStream_t stream) {
  switch (p.D) {
    case 32: return launch_d<32, BF16>(p, stream);
    case 64: return launch_d<64, BF16>(p, stream);
    case 128: return launch_d<128, BF16>(p, stream);
    default: return launch_d<256, BF16>(p, stream);
  }
}

}  // namespace

bool prefill_tc_supported(int headDim, const void* kv) {
  const bool dim = headDim == 32 || headDim == 64 || headDim == 128 || headDim == 256;
  return dim && reinterpret_cast<uintptr_t>(kv) % 16 == 0;
}

cudaError_t launch_prefill_tc(const PrefillArgs& p, bool bf16, cudaStream_t stream) {
  return bf16 ? launch_t<true>(p, stream) : launch_t<false>(p, stream);
}

}  // namespace kvoff
