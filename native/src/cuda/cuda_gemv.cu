// bf16 GEMV for decode, y = W x with W [rows, cols] bf16 row-major, x and y f32, f32 accumulation. Memory
// bound: the goal is to stream W at close to HBM speed (vector loads, R rows per warp, U chunks in flight).
#include "cuda/cuda_internal.h"
#include "cuda/cuda_kernels.cuh"

namespace kvoff {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int R, int U>
__global__ void __launch_bounds__(kGemvThreads) gemv_bf16_vec(const uint16_t* __restrict__ w, const float* __restrict__ x,
                                                              float* __restrict__ y, int rows, int cols) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t row0 = warp * R;
  if (row0 >= rows) return;  // whole warps leave together: the shuffles below see all 32 lanes
  float acc[R];
  gemv_lane<R, U>(w, x, rows, cols, row0, lane, acc);
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (row0 + r < rows) y[row0 + r] = acc[r];
}

__global__ void __launch_bounds__(kGemvThreads) gemv_bf16_any(const uint16_t* __restrict__ w, const float* __restrict__ x,
                                                              float* __restrict__ y, int rows, int cols) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row >= rows) return;
  const float acc = warp_sum(gemv_lane_any(w, x, cols, row, lane));
  if (lane == 0) y[row] = acc;
}

template <int R, int U>
cudaError_t launch_vec(const uint16_t* w, const float* x, float* y, int rows, int cols, cudaStream_t stream) {
  const int64_t warps = (static_cast<int64_t>(rows) + R - 1) / R;
  const int64_t blocks = (warps * 32 + kGemvThreads - 1) / kGemvThreads;
  gemv_bf16_vec<R, U><<<static_cast<unsigned>(blocks), kGemvThreads, 0, stream>>>(w, x, y, rows, cols);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_gemv_bf16(const uint16_t* w, const float* x, float* y, int rows, int cols, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  const bool vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (!vec) {
    const int64_t blocks = (static_cast<int64_t>(rows) * 32 + kGemvThreads - 1) / kGemvThreads;
    gemv_bf16_any<<<static_cast<unsigned>(blocks), kGemvThreads, 0, stream>>>(w, x, y, rows, cols);
    return cudaGetLastError();
  }
  // More rows per warp reuse each x chunk across rows and cut warp count; but with few rows, one row
  // per warp keeps every SM busy. Aim for about 32 resident warps per SM.
  const int64_t target = static_cast<int64_t>(cudadev::sm_count()) * 32;
  if (rows >= 4 * target) return launch_vec<4, 2>(w, x, y, rows, cols, stream);
  if (rows >= 2 * target) return launch_vec<2, 4>(w, x, y, rows, cols, stream);
  return launch_vec<1, 4>(w, x, y, rows, cols, stream);
}

}  // namespace kvoff
