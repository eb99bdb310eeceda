// The small CUDA runtime surface the rest of the addon uses; stubbed when built without nvcc.
#pragma once
#include <cstddef>
#include <string>

namespace kvoff {

struct CudaInfo {
  bool built = false;       // compiled with nvcc
  int deviceCount = 0;      // 0 when no driver or no GPU
  int driverVersion = 0;    // e.g. 13000; 0 when no driver
  int runtimeVersion = 0;   // cudart linked in; 0 when not built
  std::string deviceName;   // device 0
  std::string reason;       // why deviceCount is 0
};

CudaInfo cuda_info();
bool cuda_usable();
// Page-locks [p, p+bytes) for DMA; on failure returns false and says why.
bool cuda_host_register(void* p, size_t bytes, std::string* why);
void cuda_host_unregister(void* p);

// Free and total bytes of one device; ok is false (and reason says why) without a usable GPU.
struct CudaMemInfo {
  bool ok = false;
  size_t freeBytes = 0;
  size_t totalBytes = 0;
  std::string reason;
};
CudaMemInfo cuda_mem_info(int device);

// Bulk copy speed between pinned host memory (cudaHostAlloc) and one device: best of `iterations`
// cudaMemcpyAsync of `bytes` each way on one stream, timed with events. Blocks; call off the JS thread.
struct CudaBandwidth {
  bool ok = false;
  double h2dGbPerS = 0;  // bytes copied per second / 1e9
  double d2hGbPerS = 0;
  std::string reason;
};
CudaBandwidth cuda_bandwidth(int device, size_t bytes, int iterations);

}  // namespace kvoff
