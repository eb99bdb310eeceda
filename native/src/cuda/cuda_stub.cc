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

}  // namespace kvoff
