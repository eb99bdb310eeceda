// bf16-weight GEMM, y [m, n] (+)= x [m, k] . W^T with W [n, k] bf16 row-major, x and y f32. Three paths by m:
//   m = 1, no accumulate: launch_gemv_bf16 (cuda_gemv.cu), which streams W near HBM speed;
//   m <= 16: a multi-row GEMV reading W once per 8 rows of x, f32 FMAs in exactly the m = 1 kernel's order,
//            so every row of y is bitwise what the m = 1 call gives (a speculative row pair decodes alike);
//   m > 16:  a WMMA tensor-core tiled GEMM (bf16 x bf16 -> f32), x rounded to bf16 as its tile is staged.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <mutex>

#include "cuda/cuda_kernels.cuh"

namespace kvoff {
namespace {

__device__ __forceinline__ float warp_sum(float v) {  // the same butterfly as cuda_gemv.cu: same sums, same bits
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- Multi-row GEMV (m <= 8 per launch) ----

// A warp owns R rows of W (row0..) and all M rows of x. Lane l reads 16-byte chunks l, l+32, ... of each
// W row, exactly as gemv_lane does, and each (W row, x row) sum takes its chunks in that same order with
// dot8, so per row the f32 result equals the m = 1 kernel's. W loads for U passes are issued before any
// FMA (bytes in flight); x comes through the read-only cache, reused across the R rows.
template <int M, int R, int U>
__global__ void __launch_bounds__(kGemvThreads) gemm_rows_vec(const uint16_t* __restrict__ w, const float* __restrict__ x,
                                                              float* __restrict__ y, int n, int k, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t row0 = ((static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5) * R;
  if (row0 >= n) return;  // whole warps leave together
  const int chunks = k >> 3;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = row0 + r < n ? row0 + r : n - 1;  // clamped rows are read, never written
    wr[r] = reinterpret_cast<const uint4*>(w + row * static_cast<int64_t>(k));
  }
  const float4* xr[M];  // [M] rows of x, each k floats (k % 8 == 0 keeps them 16-byte aligned)
#pragma unroll
  for (int i = 0; i < M; ++i) xr[i] = reinterpret_cast<const float4*>(x + static_cast<int64_t>(i) * k);
  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = 0.f;
  int c = lane;
  for (; c + 32 * (U - 1) < chunks; c += 32 * U) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) wv[u][r] = load_stream(wr[r] + c + 32 * u);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int i = 0; i < M; ++i) {
        const float4 xa = load_ro(xr[i] + 2 * (c + 32 * u)), xb = load_ro(xr[i] + 2 * (c + 32 * u) + 1);
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][i] = dot8(wv[u][r], xa, xb, acc[r][i]);
      }
  }
  for (; c < chunks; c += 32) {
    uint4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wv[r] = load_stream(wr[r] + c);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const float4 xa = load_ro(xr[i] + 2 * c), xb = load_ro(xr[i] + 2 * c + 1);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][i] = dot8(wv[r], xa, xb, acc[r][i]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const float s = warp_sum(acc[r][i]);
      if (lane == 0 && row0 + r < n) {
        float* out = y + static_cast<int64_t>(i) * n + row0 + r;
        *out = accumulate ? *out + s : s;
      }
    }
}

// Any alignment and k: one warp per W row, lanes stride over single elements (gemv_lane_any's order).
template <int M>
__global__ void __launch_bounds__(kGemvThreads) gemm_rows_any(const uint16_t* __restrict__ w, const float* __restrict__ x,
                                                              float* __restrict__ y, int n, int k, bool accumulate) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row >= n) return;
  const uint16_t* wr = w + row * static_cast<int64_t>(k);
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.f;
  for (int kk = lane; kk < k; kk += 32) {
    const float wv = bf16_lo(load_ro(wr + kk));
#pragma unroll
    for (int i = 0; i < M; ++i) acc[i] = fmaf(wv, load_ro(x + static_cast<int64_t>(i) * k + kk), acc[i]);
  }
#pragma unroll
  for (int i = 0; i < M; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0) {
      float* out = y + static_cast<int64_t>(i) * n + row;
      *out = accumulate ? *out + s : s;
    }
  }
}

template <int M, int R, int U>
cudaError_t launch_rows_vec(const uint16_t* w, const float* x, float* y, int n, int k, bool acc, cudaStream_t s) {
  const int64_t warps = (static_cast<int64_t>(n) + R - 1) / R;
  const int64_t blocks = (warps * 32 + kGemvThreads - 1) / kGemvThreads;
  gemm_rows_vec<M, R, U><<<static_cast<unsigned>(blocks), kGemvThreads, 0, s>>>(w, x, y, n, k, acc);
  return cudaGetLastError();
}

template <int M>
cudaError_t launch_rows_any(const uint16_t* w, const float* x, float* y, int n, int k, bool acc, cudaStream_t s) {
  const int64_t blocks = (static_cast<int64_t>(n) * 32 + kGemvThreads - 1) / kGemvThreads;
  gemm_rows_any<M><<<static_cast<unsigned>(blocks), kGemvThreads, 0, s>>>(w, x, y, n, k, acc);
  return cudaGetLastError();
}

// More W rows per warp cut x traffic through L1 (2 * M / R 16-byte x loads per W load) but leave fewer warps.
template <int M>
cudaError_t launch_rows(const uint16_t* w, const float* x, float* y, int n, int k, bool acc, bool vec, cudaStream_t s) {
  if (!vec) return launch_rows_any<M>(w, x, y, n, k, acc, s);
  if constexpr (M == 1) return launch_rows_vec<1, 1, 4>(w, x, y, n, k, acc, s);
  else if constexpr (M <= 4) return launch_rows_vec<M, 2, 4>(w, x, y, n, k, acc, s);
  else return launch_rows_vec<M, 4, 2>(w, x, y, n, k, acc, s);
}

cudaError_t launch_rows_m(int m, const uint16_t* w, const float* x, float* y, int n, int k, bool acc, bool vec, cudaStream_t s) {
  switch (m) {
    case 1: return launch_rows<1>(w, x, y, n, k, acc, vec, s);
    case 2: return launch_rows<2>(w, x, y, n, k, acc, vec, s);
    case 3: return launch_rows<3>(w, x, y, n, k, acc, vec, s);
    case 4: return launch_rows<4>(w, x, y, n, k, acc, vec, s);
    case 5: return launch_rows<5>(w, x, y, n, k, acc, vec, s);
    case 6: return launch_rows<6>(w, x, y, n, k, acc, vec, s);
    case 7: return launch_rows<7>(w, x, y, n, k, acc, vec, s);
    default: return launch_rows<8>(w, x, y, n, k, acc, vec, s);
  }
}

// ---- Tensor-core tiled GEMM (m > 16) ----

constexpr int kBM = 128, kBN = 128, kBK = 32;  // block tile: 128 rows of x by 128 rows of W, 32 of k per stage
constexpr int kLds = kBK + 8;                   // smem row pitch in bf16: 80 bytes, a multiple of 16 (WMMA) that staggers banks
constexpr int kGemmThreads = 256;               // 8 warps as 2 (m) x 4 (n), each 64 x 32 of y
constexpr int kTileElems = (kBM + kBN) * kLds;  // one stage: x tile then W tile
constexpr int kGroup = 8;                       // m-tiles per group of the block order

using bf16 = __nv_bfloat16;

// The next k-tile held in registers while the current one feeds the tensor cores.
struct Staged {
  float4 x[4];  // [4] x tile pieces: row (tid + 256 i) / 8, float4 column (tid + 256 i) % 8
  uint4 w[2];   // [2] W tile pieces: row (tid + 256 i) / 4, 8-bf16 column (tid + 256 i) % 4
};

// VEC: k % 8 == 0 and both bases 16-byte aligned, so every in-range piece is a whole aligned vector.
// Out-of-range rows and k columns load as zeros: they add 0 * 0 to the sums.
template <bool VEC>
__device__ __forceinline__ void load_tile(Staged& st, const uint16_t* __restrict__ w, const float* __restrict__ x, int m, int n, int k,
                                          int64_t m0, int64_t n0, int64_t k0) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int s = tid + kGemmThreads * i, r = s >> 3;
    const int64_t gm = m0 + r, c = k0 + (s & 7) * 4;
    const float* p = x + gm * k + c;
    if (VEC) {
      st.x[i] = gm < m && c < k ? load_ro(reinterpret_cast<const float4*>(p)) : make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      const bool row = gm < m;
      st.x[i].x = row && c < k ? load_ro(p) : 0.f;
      st.x[i].y = row && c + 1 < k ? load_ro(p + 1) : 0.f;
      st.x[i].z = row && c + 2 < k ? load_ro(p + 2) : 0.f;
      st.x[i].w = row && c + 3 < k ? load_ro(p + 3) : 0.f;
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int s = tid + kGemmThreads * i, r = s >> 2;
    const int64_t gn = n0 + r, c = k0 + (s & 3) * 8;
    const uint16_t* p = w + gn * k + c;
    if (VEC) {
      // Not a streaming load: other m-tiles read this W tile again, ideally from L2.
      st.w[i] = gn < n && c < k ? load_ro(reinterpret_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
    } else {
      uint32_t h[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) h[e] = gn < n && c + e < k ? load_ro(p + e) : 0u;
      st.w[i] = make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
    }
  }
}

// x is rounded to bf16 (round to nearest even) here: the one place the tensor path loses precision.
__device__ __forceinline__ void store_tile(const Staged& st, bf16* stage) {
  const int tid = threadIdx.x;
  bf16* xs = stage;                // [kBM, kLds]
  bf16* ws = stage + kBM * kLds;   // [kBN, kLds]
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int s = tid + kGemmThreads * i, r = s >> 3, c = (s & 7) * 4;
    __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(xs + r * kLds + c);  // 8-byte aligned: r * 80 + c * 2
    d[0] = __floats2bfloat162_rn(st.x[i].x, st.x[i].y);
    d[1] = __floats2bfloat162_rn(st.x[i].z, st.x[i].w);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int s = tid + kGemmThreads * i, r = s >> 2, c = (s & 3) * 8;
    *reinterpret_cast<uint4*>(ws + r * kLds + c) = st.w[i];  // 16-byte aligned: r * 80 + c * 2
  }
}

template <bool VEC>
__global__ void __launch_bounds__(kGemmThreads) gemm_wmma(const uint16_t* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                                          int m, int n, int k, bool accumulate) {
  using namespace nvcuda;
  // Grouped order: consecutive blocks walk kGroup m-tiles for one n-tile, then the next n-tile, so the blocks resident
  // together share a few W tiles and a few x tiles in L2 instead of each streaming a different W tile from HBM.
  const int tilesM = (m + kBM - 1) / kBM, tilesN = (n + kBN - 1) / kBN;
  const int64_t pid = blockIdx.x, perGroup = static_cast<int64_t>(kGroup) * tilesN;
  const int64_t firstM = pid / perGroup * kGroup;
  const int64_t groupM = tilesM - firstM < kGroup ? tilesM - firstM : kGroup;
  const int64_t tileM = firstM + pid % perGroup % groupM, tileN = pid % perGroup / groupM;
  // Two stages of [x tile; W tile] (40 KB); after the main loop the first 8 KB serve as per-warp epilogue scratch.
  __shared__ __align__(128) bf16 smem[2 * kTileElems];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3;  // this warp's 64 x 32 piece of the block's y tile
  const int64_t m0 = tileM * kBM, n0 = tileN * kBN;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  const int tiles = (k + kBK - 1) / kBK;
  Staged st;
  load_tile<VEC>(st, w, x, m, n, k, m0, n0, 0);
  store_tile(st, smem);
  __syncthreads();
  for (int t = 0; t < tiles; ++t) {
    const bf16* cur = smem + (t & 1) * kTileElems;
    // The next tile's global loads are in flight while this one is multiplied.
    if (t + 1 < tiles) load_tile<VEC>(st, w, x, m, n, k, m0, n0, static_cast<int64_t>(t + 1) * kBK);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[2];  // W [n, k] row-major is W^T [k, n] col-major
#pragma unroll
      for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(a[i], cur + (wm * 64 + i * 16) * kLds + kk, kLds);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], cur + kBM * kLds + (wn * 32 + j * 16) * kLds + kk, kLds);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    // The other stage was last read in iteration t - 1, which every warp has left (barrier below).
    if (t + 1 < tiles) store_tile(st, smem + ((t + 1) & 1) * kTileElems);
    __syncthreads();
  }

  // Epilogue: each 16 x 16 fragment goes through this warp's scratch so edges can be masked and y added to.
  float* scratch = reinterpret_cast<float*>(smem) + warp * 256;  // [16, 16], 1 KB apart: 256-bit aligned
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t gm = m0 + wm * 64 + i * 16 + (e >> 4), gn = n0 + wn * 32 + j * 16 + (e & 15);
        if (gm < m && gn < n) {
          float* out = y + gm * n + gn;
          *out = accumulate ? *out + scratch[e] : scratch[e];
        }
      }
      __syncwarp();
    }
}

}  // namespace

cudaError_t launch_gemm_bf16(const uint16_t* w, const float* x, float* y, int m, int n, int k, bool accumulate, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return cudaSuccess;
  const bool vec = k % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (m == 1 && !accumulate) return launch_gemv_bf16(w, x, y, n, k, stream);
  if (m <= 16) {
    // Passes of up to 8 rows: W is read once per pass (twice for m = 9..16), still far below a tiled GEMM's cost at this m.
    for (int r = 0; r < m; r += 8) {
      const cudaError_t err = launch_rows_m(m - r < 8 ? m - r : 8, w, x + static_cast<int64_t>(r) * k, y + static_cast<int64_t>(r) * n, n, k,
                                            accumulate, vec, stream);
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  }
  // One block per (m-tile, n-tile) in a 1-D grid of at most 2^31 - 1 blocks: very tall x goes in slabs.
  const int64_t tilesN = (n + kBN - 1) / kBN;
  const int64_t slabTiles = (int64_t(0x7fffffff) / tilesN / kGroup) * kGroup;  // >= 64 groups: tilesN <= 2^24
  const int64_t kSlab = slabTiles * kBM;
  for (int64_t r = 0; r < m; r += kSlab) {
    const int rows = static_cast<int>(m - r < kSlab ? m - r : kSlab);
    const dim3 grid(static_cast<unsigned>((rows + kBM - 1) / kBM * tilesN));
    const float* xs = x + r * k;
    float* ys = y + r * n;
    if (vec) gemm_wmma<true><<<grid, kGemmThreads, 0, stream>>>(w, xs, ys, rows, n, k, accumulate);
    else gemm_wmma<false><<<grid, kGemmThreads, 0, stream>>>(w, xs, ys, rows, n, k, accumulate);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace kvoff
