// Zero-copy hot-set gather kernel: (token, head) units read straight from pinned, mapped host KV memory
// over PCIe into device-arena rows, one launch per call (DESIGN §1 step 4).
#include "cuda/cuda_kernels.cuh"

namespace kvoff {
namespace {

template <typename V>
__global__ void __launch_bounds__(kGatherThreads) kv_gather_kernel(GatherParams p) {
  gather_thread<V>(p, blockIdx.x, threadIdx.x, blockDim.x);
}

template <typename V>
cudaError_t launch(const GatherParams& p, cudaStream_t stream) {
  const uint64_t total = static_cast<uint64_t>(p.units) * (p.unitBytes / sizeof(V));
  if (total == 0) return cudaSuccess;
  const uint64_t perBlock = static_cast<uint64_t>(kGatherThreads) * kGatherIlp;
  const unsigned blocks = static_cast<unsigned>((total + perBlock - 1) / perBlock);
  kv_gather_kernel<V><<<blocks, kGatherThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

__global__ void build_gather_table(GatherTableParams p) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.seqs * p.numKvHeads * p.n) return;
  const uint32_t hv = i / p.n, j = i - hv * p.n;  // hv: (sequence, head) of the destination
  const uint32_t s = hv / p.numKvHeads, h = hv - s * p.numKvHeads;
  const int64_t maxPos = static_cast<int64_t>(p.tableLen) * p.blockSize - 1;
  int64_t pos = p.positions[static_cast<uint64_t>(hv) * p.ldPositions + j];
  pos = pos < 0 ? 0 : (pos > maxPos ? maxPos : pos);
  int64_t block = p.blockTable[static_cast<uint64_t>(s) * p.tableLen + pos / p.blockSize];
  block = block < 0 ? 0 : (block >= p.numBlocks ? p.numBlocks - 1 : block);
  const uint64_t src = (static_cast<uint64_t>(block) * p.numKvHeads + h) * p.blockSize + pos % p.blockSize;
  p.table[i] = make_uint2(static_cast<uint32_t>(src), hv * p.dstCapacity + p.dstSlot + j);
}

}  // namespace

cudaError_t launch_build_gather_table(const GatherTableParams& p, cudaStream_t stream) {
  const uint32_t units = p.seqs * p.numKvHeads * p.n;
  if (units == 0) return cudaSuccess;
  build_gather_table<<<(units + 255) / 256, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_kv_gather(const GatherParams& p, int vecBytes, cudaStream_t stream) {
  switch (vecBytes) {
    case 16: return launch<uint4>(p, stream);
    case 8: return launch<uint2>(p, stream);
    case 4: return launch<unsigned int>(p, stream);
    default: return launch<unsigned short>(p, stream);
  }
}

}  // namespace kvoff
