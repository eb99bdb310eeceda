// Stand-in for cuda_probe.cu when the addon is built without nvcc.
#include "cuda/cuda_api.h"

namespace kvoff {

CudaInfo cuda_info() {
  CudaInfo info;
  info.reason = "kvoff was built without CUDA (nvcc was not found at install time; set CUDA_HOME and run `npm rebuild`)";
  return info;
}
bool cuda_usable() { return false; }
bool cuda_host_register(void*, size_t, std::string* why) {
  if (why) *why = "built without CUDA";
  return false;
}
void cuda_host_unregister(void*) {}

CudaMemInfo cuda_mem_info(int) {
  CudaMemInfo m;
  m.reason = cuda_info().reason;
  return m;
}

CudaBandwidth cuda_bandwidth(int, size_t, int) {
  CudaBandwidth b;
  b.reason = cuda_info().reason;
  return b;
}

}  // namespace kvoff
