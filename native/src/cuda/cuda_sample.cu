// Sampling on the device with sampling.ts's exact semantics: the vocab sorted by logit (descending, ties by id, a
// stable CUB radix sort), top-k, weights exp((l - max) / T), the top-p prefix, then the first sorted token whose
// running weight reaches u * (kept mass). Weights and sums are f64, as in TypeScript, so the two pick the same token
// unless u lands within rounding of a boundary. One N-API call enqueues the whole draw on a stream.
#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <cstdint>

#include "cuda/cuda_api.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_model.h"

namespace kvoff {
namespace {

using namespace cudadev;

constexpr int kSampleThreads = 1024;

// Scratch: sorted logits [n] f32, ids in [n] int32 (0..n-1), sorted ids [n] int32, then CUB's temporary storage.
struct ScratchLayout {
  uint64_t keysOut, idsIn, idsOut, temp, tempBytes, total;
};

uint64_t align256(uint64_t x) { return (x + 255) / 256 * 256; }

ScratchLayout scratch_layout(uint32_t n) {
  size_t tempBytes = 0;
  cub::DeviceRadixSort::SortPairsDescending(nullptr, tempBytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
                                            static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n));
  ScratchLayout s{};
  const uint64_t row = align256(static_cast<uint64_t>(n) * 4);
  s.keysOut = 0;
  s.idsIn = row;
  s.idsOut = 2 * row;
  s.temp = 3 * row;
  s.tempBytes = tempBytes;
  s.total = s.temp + align256(tempBytes);
  return s;
}

__global__ void iota_kernel(int32_t* ids, uint32_t n) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) ids[i] = static_cast<int32_t>(i);
}

// One CTA over the sorted logits [0, kept): thread t owns the contiguous chunk [t * chunk, (t + 1) * chunk), so
// running sums are a block scan of the chunk sums plus a walk inside one chunk.
__global__ void __launch_bounds__(kSampleThreads) sample_sorted_kernel(const float* sorted, const int32_t* ids, uint32_t kept, double invT,
                                                                       double topP, double u, int32_t* out) {
  using Scan = cub::BlockScan<double, kSampleThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ uint32_t keep, pick;
  const double m = sorted[0];
  const uint32_t chunk = (kept + kSampleThreads - 1) / kSampleThreads;
  const uint32_t b = min(kept, threadIdx.x * chunk), e = min(kept, b + chunk);
  auto weight = [&](uint32_t j) { return exp((static_cast<double>(sorted[j]) - m) * invT); };
  double local = 0.0;
  for (uint32_t j = b; j < e; ++j) local += weight(j);
  double before = 0.0, total = 0.0;
  Scan(scan).ExclusiveSum(local, before, total);
  if (threadIdx.x == 0) {
    keep = kept;
    pick = UINT32_MAX;
  }
  __syncthreads();
  // The first j (0-based) whose running weight reaches its share: cum_j >= goal; atomicMin keeps the earliest.
  auto first_reaching = [&](double goal, uint32_t* into, uint32_t limit) {
    if (b >= e || b >= limit || before + local < goal) return;
    double cum = before;
    for (uint32_t j = b; j < e && j < limit; ++j) {
      cum += weight(j);
      if (cum >= goal) {
        atomicMin(into, j);
        return;
      }
    }
  };
  if (topP < 1.0) first_reaching(topP * total, &keep, kept);  // keep becomes that j; the prefix is [0, j]
  __syncthreads();
  const uint32_t keepCount = keep == kept ? kept : keep + 1;
  // The kept mass: the running weight at keepCount - 1, taken from the thread whose chunk holds it.
  __shared__ double mass;
  if (threadIdx.x == 0) mass = total;
  __syncthreads();
  if (keepCount < kept && b < e && keepCount - 1 >= b && keepCount - 1 < e) {
    double cum = before;
    for (uint32_t j = b; j < keepCount; ++j) cum += weight(j);
    mass = cum;
  }
  __syncthreads();
  first_reaching(u * mass, &pick, keepCount);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = ids[pick < keepCount ? pick : keepCount - 1];
}

}  // namespace

uint64_t cuda_sample_scratch_bytes(uint32_t n) { return scratch_layout(n).total; }

CudaStatus cuda_sample(const SampleCall& c) {
  Bound b;
  CudaStatus st = bind({c.x, c.out, c.scratch}, c.stream, &b);
  if (!st.ok()) return st;
  const ScratchLayout s = scratch_layout(c.n);
  const float* x = reinterpret_cast<const float*>(b.ptr[0]);
  uint8_t* scratch = b.ptr[2];
  float* keysOut = reinterpret_cast<float*>(scratch + s.keysOut);
  int32_t* idsIn = reinterpret_cast<int32_t*>(scratch + s.idsIn);
  int32_t* idsOut = reinterpret_cast<int32_t*>(scratch + s.idsOut);
  cudaStream_t stream = b.stream->s;
  iota_kernel<<<(c.n + 255) / 256, 256, 0, stream>>>(idsIn, c.n);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return launched(b, err, "cudaSample iota");
  size_t tempBytes = s.tempBytes;
  err = cub::DeviceRadixSort::SortPairsDescending(scratch + s.temp, tempBytes, x, keysOut, idsIn, idsOut, static_cast<int>(c.n), 0, 32, stream);
  if (err != cudaSuccess) return launched(b, err, "cudaSample sort");
  const uint32_t kept = c.topK > 0 && c.topK < c.n ? c.topK : c.n;
  sample_sorted_kernel<<<1, kSampleThreads, 0, stream>>>(keysOut, idsOut, kept, 1.0 / c.temperature, c.topP, c.u,
                                                          reinterpret_cast<int32_t*>(b.ptr[1]));
  return launched(b, cudaGetLastError(), "cudaSample");
}

}  // namespace kvoff
