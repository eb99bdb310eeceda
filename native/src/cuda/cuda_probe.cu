// CUDA runtime probe and host pinning (cudart linked statically, so the addon loads without a driver).
#include <cuda_runtime.h>

#include <mutex>

#include "cuda/cuda_api.h"

namespace kvoff {

CudaInfo cuda_info() {
  static std::once_flag once;
  static CudaInfo info;
  std::call_once(once, [] {
    info.built = true;
    cudaRuntimeGetVersion(&info.runtimeVersion);
    if (cudaDriverGetVersion(&info.driverVersion) != cudaSuccess) info.driverVersion = 0;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      info.deviceCount = 0;
      info.reason = info.driverVersion == 0
                        ? std::string("CUDA runtime built in, but no NVIDIA driver found (") + cudaGetErrorString(err) + ")"
                        : std::string("driver found, but no usable GPU: ") + cudaGetErrorString(err);
      cudaGetLastError();
      return;
    }
    info.deviceCount = n;
    if (n == 0) { info.reason = "driver found, but it reports 0 GPUs"; return; }
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) info.deviceName = prop.name;
  });
  return info;
}

bool cuda_usable() {
  static const bool usable = cuda_info().deviceCount > 0;  // probed once: every kernel call asks
  return usable;
}

bool cuda_host_register(void* p, size_t bytes, std::string* why) {
  cudaError_t err = cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
  if (err == cudaSuccess) return true;
  if (why) *why = std::string("cudaHostRegister failed: ") + cudaGetErrorString(err);
  cudaGetLastError();
  return false;
}

void cuda_host_unregister(void* p) { cudaHostUnregister(p); }

}  // namespace kvoff
