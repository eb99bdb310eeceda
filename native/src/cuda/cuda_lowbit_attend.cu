// CUDA attention over the device tier's quantized tail (DESIGN §1 step 5): flash-decoding chunks over the KIVI
// codes, linear in the codes, then a log-sum-exp combine of the chunks. Accumulates in fp32.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_lowbit.h"
#include "cuda/cuda_lowbit_rows.cuh"

namespace kvoff {
namespace {

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


// ---- Staging a chunk in shared memory ----
//
// The persistent form of the kernel walks several chunks per block and copies the next chunk's codes and
// metadata into shared memory with cp.async while it computes on the current one: without it each block waited
// on its own scattered loads (two blocks an SM), and the kernel ran at 0.05 of the device's bandwidth.

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Where one chunk's data is read, indexed relative to the chunk (token t at t - c0, key group g at g - c0 / KG):
// the layer's section itself, or the block's staged image of the chunk.
struct ChunkView {
  const uint8_t* keyCodes;     // [chunk tokens][ROWB]
  const uint16_t* keyZero;     // fp16 [chunk / KG][D]
  const uint16_t* keyScale;    // fp16 [chunk / KG][D]
  const uint8_t* valueCodes;   // [chunk tokens][ROWB]
  const uint16_t* valueZero;   // fp16 [chunk tokens][D / VG]
  const uint16_t* valueScale;  // fp16 [chunk tokens][D / VG]
};

// Byte offsets of a chunk's image in the stage (after Att2Smem's floats); every piece a multiple of 16 bytes.
struct StageLayout {
  uint32_t keyCodes, keyZero, keyScale, valueCodes, valueZero, valueScale, bytes;
  __host__ __device__ StageLayout(uint32_t rowBytes, uint32_t D, uint32_t KG, uint32_t ngv) {
    const uint32_t codes = kAttendChunk * rowBytes, keyMeta = kAttendChunk / KG * D * 2, valueMeta = kAttendChunk * ngv * 2;
    keyCodes = 0, keyZero = codes, keyScale = keyZero + keyMeta;
    valueCodes = keyScale + keyMeta, valueZero = valueCodes + codes, valueScale = valueZero + valueMeta;
    bytes = valueScale + valueMeta;
  }
};

// Bytes [begin, end) of src, widened to 16-byte bounds, into dst at offset - base. The widening stays inside the
// chunk (chunks start on 16-byte bounds in every array) and inside the buffer (each is padded to 256 bytes); the
// extra bytes belong to tokens the kernel does not attend and never reach a sum.
__device__ __forceinline__ void stage_span(uint8_t* dst, const uint8_t* src, uint64_t base, uint64_t begin, uint64_t end) {
  for (uint64_t i = (begin & ~uint64_t{15}) + threadIdx.x * 16; i < end; i += kAtt2Threads * 16) cp_async16(dst + (i - base), src + i);
}

template <int ROWB>
__device__ __forceinline__ void stage_keys(const AttendParams& p, const uint8_t* sec, uint8_t* stage, const StageLayout& L, uint64_t ci, uint32_t D) {
  const uint64_t c0 = (p.chunk0 + ci) * kAttendChunk, lo = max(p.first, c0), hi = min(p.end, c0 + kAttendChunk);
  const uint64_t g0 = lo / p.KG, g1 = (hi - 1) / p.KG + 1, cg = c0 / p.KG;  // the key groups a score pass reads
  stage_span(stage + L.keyCodes, sec + p.keyCodes, c0 * ROWB, g0 * p.KG * ROWB, g1 * p.KG * ROWB);
  stage_span(stage + L.keyZero, sec + p.keyZero, cg * D * 2, g0 * D * 2, g1 * D * 2);
  stage_span(stage + L.keyScale, sec + p.keyScale, cg * D * 2, g0 * D * 2, g1 * D * 2);
}

template <int ROWB>
__device__ __forceinline__ void stage_values(const AttendParams& p, const uint8_t* sec, uint8_t* stage, const StageLayout& L, uint64_t ci, uint32_t ngv) {
  const uint64_t c0 = (p.chunk0 + ci) * kAttendChunk, lo = max(p.first, c0), hi = min(p.end, c0 + kAttendChunk);
  stage_span(stage + L.valueCodes, sec + p.valueCodes, c0 * ROWB, lo * ROWB, hi * ROWB);
  stage_span(stage + L.valueZero, sec + p.valueZero, c0 * ngv * 2, lo * ngv * 2, hi * ngv * 2);
  stage_span(stage + L.valueScale, sec + p.valueScale, c0 * ngv * 2, lo * ngv * 2, hi * ngv * 2);
}

// Scores of tokens t0 + lane + 32 k (k < TPL, all in key group t0 / KG) for the MG heads, into s[k].
template <int BITS, int D, int MG, int TPL, bool SH>
__device__ __forceinline__ void att2_score_pass(const AttendParams& p, const ChunkView& v, const float* qs, float* W, uint64_t t0, uint64_t c0,
                                                uint64_t lo, uint64_t hi, uint32_t h, uint32_t lane, float (&s)[2][MG], int k0) {
  constexpr int ROWB = D * BITS / 8, CPW = 32 / BITS;
  if (t0 >= hi || t0 + 32 * TPL <= lo) return;  // warp-uniform: nothing here is attended
  const uint64_t g = (t0 - c0) / p.KG;
  const uint16_t* kz = v.keyZero + g * D;
  const uint16_t* ks = v.keyScale + g * D;
  uint32_t row[TPL][ROWB / 4];
  bool valid[TPL];
#pragma unroll
  for (int k = 0; k < TPL; ++k) {
    const uint64_t t = t0 + lane + 32 * k;
    load_row<ROWB, SH>(v.keyCodes + (t - c0) * ROWB, row[k]);
    valid[k] = t >= lo && t < hi && !(p.exclude && p.exclude[h * p.ldExclude + t]);  // loaded early: its latency hides behind the sums
  }
  float b[MG];
#pragma unroll
  for (int m = 0; m < MG; ++m) b[m] = 0.f;
  for (uint32_t c = lane; c < D; c += 32) {
    const float sc = h2f_hw(ld_ro<SH>(ks + c)), z = h2f_hw(ld_ro<SH>(kz + c));
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
  for (int k = 0; k < TPL; ++k)
#pragma unroll
    for (int m = 0; m < MG; ++m) s[k0 + k][m] = valid[k] ? acc[k][m] : -INFINITY;
}

// One chunk (ci) of KV head h into its partial (o, m, l). qs must be in place and synchronised. keysRead() runs
// (in every thread) once the block is done with the chunk's keys and must end in a barrier; valuesRead() once it is
// done with the values.
template <int BITS, int D, int MG, bool SH, typename KeysRead, typename ValuesRead>
__device__ __forceinline__ void attend2_chunk(const AttendParams& p, const ChunkView& v, float* sm, uint32_t h, uint64_t ci, KeysRead keysRead,
                                              ValuesRead valuesRead) {
  using S = Att2Smem<D, MG>;
  constexpr int ROWB = D * BITS / 8, NW = kAtt2Warps;
  const float* qs = sm + S::qs;
  float* wk = sm + S::wk;
  float* ps = sm + S::ps;
  float* red = sm + S::red;
  const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32, M = p.M;
  const uint64_t c0 = (p.chunk0 + ci) * kAttendChunk;
  const uint64_t lo = max(p.first, c0), hi = min(p.end, c0 + kAttendChunk);  // lo < hi

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
      att2_score_pass<BITS, D, MG, 2, SH>(p, v, qs, W, wt0, c0, lo, hi, h, lane, s, 0);
    } else {
      att2_score_pass<BITS, D, MG, 1, SH>(p, v, qs, W, wt0, c0, lo, hi, h, lane, s, 0);
      att2_score_pass<BITS, D, MG, 1, SH>(p, v, qs, W, wt0 + 32, c0, lo, hi, h, lane, s, 1);
    }
  }
  // Softmax statistics of the chunk.
  float mx[MG];
#pragma unroll
  for (int m = 0; m < MG; ++m) {
    const float x = warp_max(fmaxf(s[0][m], s[1][m]));
    if (lane == 0) red[warp * MG + m] = x;
  }
  __syncthreads();
  keysRead();
#pragma unroll
  for (int m = 0; m < MG; ++m) {
    float x = red[m];
    for (int w = 1; w < NW; ++w) x = fmaxf(x, red[w * MG + m]);
    mx[m] = x;
  }
  const uint32_t ngv = D / p.VG;
  const bool oneGroup = ngv == 1;  // one value group per token: fold the value scale into p here
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
          sv = h2f_hw(ld_ro<SH>(v.valueScale + u)) * kCodeHalf<BITS>;
          zv = h2f_hw(ld_ro<SH>(v.valueZero + u));
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
  const uint8_t* vcodes = v.valueCodes + slice * BITS;
  const uint16_t* vz = v.valueZero + vj;
  const uint16_t* vs = v.valueScale + vj;
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
      const uint64_t t = t0 + u * TL, r = t - c0;
      cb[u] = zb[u] = sb[u] = 0;
      if (t < hi) {
        const uint8_t* cp = vcodes + r * ROWB;
        if (BITS == 1) cb[u] = ld_ro<SH>(cp);
        else if (BITS == 2) cb[u] = ld_ro<SH>(reinterpret_cast<const uint16_t*>(cp));
        else cb[u] = ld_ro<SH>(reinterpret_cast<const uint32_t*>(cp));
        if (!oneGroup) {
          zb[u] = ld_ro<SH>(vz + r * ngv);
          sb[u] = ld_ro<SH>(vs + r * ngv);
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
  valuesRead();
  const uint64_t part = (static_cast<uint64_t>(h) * p.chunks + ci) * M;
  for (uint32_t i = tid; i < M * D; i += kAtt2Threads) {
    const uint32_t m = i / D;
    float x = 0.f;
    for (int w = 0; w < NW; ++w) x += wk[w * MG * D + i];
    if (oneGroup) {
      float z = 0.f;
      for (int w = 0; w < NW; ++w) z += red[(2 * NW + w) * MG + m];
      x += z;
    }
    p.partO[part * D + i] = x;
  }
  if (tid < M) {
    float mxv = red[tid], L = 0.f;
    for (int w = 1; w < NW; ++w) mxv = fmaxf(mxv, red[w * MG + tid]);
    for (int w = 0; w < NW; ++w) L += red[(NW + w) * MG + tid];
    p.partML[(part + tid) * 2] = mxv;
    p.partML[(part + tid) * 2 + 1] = L;
  }
}

// Blocks (x, h). Unstaged (SH false): block x does chunk x straight from the section. Staged: block x does chunks
// x, x + gridDim.x, ... of head h, the next chunk's keys copied in while this chunk's values are used and its values
// while the next chunk's keys are, one cp.async group each (the wait_group counts below rely on that order).
template <int BITS, int D, int MG, bool SH>
__global__ void __launch_bounds__(kAtt2Threads, 2) kivi_attend2_kernel(AttendParams p) {
  using S = Att2Smem<D, MG>;
  constexpr int ROWB = D * BITS / 8;
  extern __shared__ __align__(16) float sm[];
  const uint32_t tid = threadIdx.x, h = blockIdx.y, M = p.M;
  const uint8_t* sec = p.lowBit + h * p.sectionBytes;
  for (uint32_t i = tid; i < D * MG; i += kAtt2Threads) {
    const uint32_t c = i / MG, m = i % MG;
    sm[S::qs + i] = m < M ? p.q[(m / p.G) * p.qRowStride + (static_cast<uint64_t>(h) * p.G + m % p.G) * D + c] * p.scale : 0.f;
  }
  const uint32_t ngv = D / p.VG;
  if constexpr (!SH) {
    __syncthreads();
    const uint64_t ci = blockIdx.x, c0 = (p.chunk0 + ci) * kAttendChunk;
    const ChunkView v{sec + p.keyCodes + c0 * ROWB,
                      reinterpret_cast<const uint16_t*>(sec + p.keyZero) + c0 / p.KG * D,
                      reinterpret_cast<const uint16_t*>(sec + p.keyScale) + c0 / p.KG * D,
                      sec + p.valueCodes + c0 * ROWB,
                      reinterpret_cast<const uint16_t*>(sec + p.valueZero) + c0 * ngv,
                      reinterpret_cast<const uint16_t*>(sec + p.valueScale) + c0 * ngv};
    attend2_chunk<BITS, D, MG, false>(p, v, sm, h, ci, [] {}, [] {});
  } else {
    const StageLayout L(ROWB, D, p.KG, ngv);
    uint8_t* stage = reinterpret_cast<uint8_t*>(sm + S::floats);
    const ChunkView v{stage + L.keyCodes,
                      reinterpret_cast<const uint16_t*>(stage + L.keyZero),
                      reinterpret_cast<const uint16_t*>(stage + L.keyScale),
                      stage + L.valueCodes,
                      reinterpret_cast<const uint16_t*>(stage + L.valueZero),
                      reinterpret_cast<const uint16_t*>(stage + L.valueScale)};
    uint64_t ci = blockIdx.x;
    stage_keys<ROWB>(p, sec, stage, L, ci, D);
    cp_async_commit();
    stage_values<ROWB>(p, sec, stage, L, ci, ngv);
    cp_async_commit();
    for (; ci < p.chunks; ci += gridDim.x) {
      const uint64_t next = ci + gridDim.x;
      cp_async_wait<1>();  // this chunk's keys (its values may still be in flight)
      __syncthreads();     // everyone's copies landed; the last chunk's reads of wk and red are done
      attend2_chunk<BITS, D, MG, true>(
          p, v, sm, h, ci,
          [&] {
            if (next < p.chunks) stage_keys<ROWB>(p, sec, stage, L, next, D);
            cp_async_commit();   // an empty group past the last chunk keeps the counts
            cp_async_wait<1>();  // this chunk's values
            __syncthreads();
          },
          [&] {
            if (next < p.chunks) stage_values<ROWB>(p, sec, stage, L, next, ngv);
            cp_async_commit();
          });
    }
    cp_async_wait<0>();
  }
}

// One block per (query head, row): o = sum_i e^(m_i - M) o_i / sum_i e^(m_i - M) l_i, lse = M + log L over the
// chunks (chunks with l_i = 0 attended nothing and are skipped). Warp w sums chunks w, w + 8, ..., a lane per four
// channels, four chunks' loads in flight; the warps' sums are added in warp order (deterministic). One thread walking
// every chunk, a dependent load each, cost about 65 us of a 131k-token call (two rows went from 283 to 218 us).
constexpr int kCombineThreads = 256;
constexpr int kCombineWarps = kCombineThreads / 32;
constexpr int kCombineUnroll = 4;
__global__ void __launch_bounds__(kCombineThreads) kivi_attend_combine2_kernel(AttendParams p, uint32_t D) {
  __shared__ float red[kCombineWarps];
  __shared__ __align__(16) float4 part[kCombineWarps][64];  // each warp's weighted sum, D / 4 float4 (D <= 256)
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
  for (int w = 1; w < kCombineWarps; ++w) M = fmaxf(M, red[w]);
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
  const uint32_t n4 = D / 4;  // float4 a row: 8 .. 64; lane holds c4 = lane and lane + 32
  float4 acc[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)};
  for (uint64_t i0 = warp; i0 < p.chunks; i0 += kCombineWarps * kCombineUnroll) {
    float2 mlv[kCombineUnroll];
    float4 v[kCombineUnroll][2];
#pragma unroll
    for (int u = 0; u < kCombineUnroll; ++u) {  // every load first, then the sums
      const uint64_t i = i0 + static_cast<uint64_t>(u) * kCombineWarps;
      mlv[u] = i < p.chunks ? *reinterpret_cast<const float2*>(ml + i * stride * 2) : make_float2(0.f, 0.f);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const uint32_t c4 = lane + 32 * j;
        v[u][j] = i < p.chunks && c4 < n4 ? reinterpret_cast<const float4*>(po + i * stride * D)[c4] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
#pragma unroll
    for (int u = 0; u < kCombineUnroll; ++u) {
      if (!(mlv[u].y > 0.f)) continue;  // attended nothing (or past the end): its partial is not read into the sum
      const float w = expf(mlv[u].x - M);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        acc[j].x = fmaf(v[u][j].x, w, acc[j].x);
        acc[j].y = fmaf(v[u][j].y, w, acc[j].y);
        acc[j].z = fmaf(v[u][j].z, w, acc[j].z);
        acc[j].w = fmaf(v[u][j].w, w, acc[j].w);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 2; ++j)
    if (lane + 32 * j < n4) part[warp][lane + 32 * j] = acc[j];
  __syncthreads();
  L = 0.f;
  for (int w = 0; w < kCombineWarps; ++w) L += red[w];
  const float* pf = reinterpret_cast<const float*>(part);
  for (uint32_t c = tid; c < D; c += kCombineThreads) {
    float o = 0.f;
    for (int w = 0; w < kCombineWarps; ++w) o += pf[w * 256 + c];
    out[c] = o / L;
  }
  if (tid == 0) *lse = M + logf(L);
}

template <int BITS, int D, int MG, bool SH>
cudaError_t launch_attend2_form(const AttendParams& p, uint32_t H, size_t bytes, uint64_t blocks, cudaStream_t stream) {
  auto kernel = kivi_attend2_kernel<BITS, D, MG, SH>;
  static size_t optedIn = 48 * 1024;  // the dynamic shared memory this instance may use so far
  if (bytes > optedIn) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
    optedIn = bytes;
  }
  kernel<<<dim3(static_cast<unsigned>(blocks), H), kAtt2Threads, bytes, stream>>>(p);
  return cudaGetLastError();
}

constexpr size_t kTwoBlocksAnSm = 112 * 1024, kMostShared = 227 * 1024;  // dynamic shared memory a block may take

// Staged unless KVOFF_ATTEND_STAGED=0, the section is not 16-byte aligned, or the stage would leave less than two
// blocks an SM (KVOFF_ATTEND_STAGED=1 stages whenever the device's shared memory allows; for experiments).
bool stage_it(const AttendParams& p, size_t stagedBytes) {
  const char* env = std::getenv("KVOFF_ATTEND_STAGED");
  if (env && env[0] == '0') return false;
  if (reinterpret_cast<uintptr_t>(p.lowBit) % 16 != 0 || p.sectionBytes % 16 != 0) return false;
  return stagedBytes <= (env && env[0] == '1' ? kMostShared : kTwoBlocksAnSm);
}

// The staged form is built for head_dim <= 128 and up to 8 query heads a KV head: past those its shared memory leaves
// one block an SM at best (and 16 heads spill registers in either form), and the addon stays smaller.
template <int BITS, int D, int MG>
cudaError_t launch_attend2_chunks(const AttendParams& p, uint32_t H, cudaStream_t stream) {
  using S = Att2Smem<D, MG>;
  if constexpr (D <= 128 && MG <= 8) {
    const size_t stagedBytes = S::bytes + StageLayout(D * BITS / 8, D, p.KG, D / p.VG).bytes;
    if (stage_it(p, stagedBytes)) {
      const uint64_t slots = static_cast<uint64_t>(cudadev::sm_count()) * (stagedBytes <= kTwoBlocksAnSm ? 2 : 1);
      return launch_attend2_form<BITS, D, MG, true>(p, H, stagedBytes, std::min<uint64_t>(p.chunks, (slots + H - 1) / H), stream);
    }
  }
  return launch_attend2_form<BITS, D, MG, false>(p, H, S::bytes, p.chunks, stream);
}

}  // namespace

using namespace cudadev;

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
