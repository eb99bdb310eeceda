// Device memory and PCIe link measurements for `kvoff doctor` and tuning: free/total bytes, and bulk
// H2D/D2H GB/s between cudaHostAlloc'd memory and the device, timed with events on one stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <string>

#include "cuda/cuda_api.h"

namespace kvoff {
namespace {

// Why a device index cannot be measured, or empty when it can.
std::string device_problem(int device) {
  CudaInfo info = cuda_info();
  if (info.deviceCount == 0) return info.reason;
  if (device < 0 || device >= info.deviceCount)
    return "device " + std::to_string(device) + " does not exist (" + std::to_string(info.deviceCount) + " GPU(s))";
  return "";
}

std::string failed(const char* what, cudaError_t err) {
  cudaGetLastError();  // clear the (non-sticky) error so later calls on this thread start clean
  return std::string(what) + " failed: " + cudaGetErrorString(err);
}

// Restores the calling thread's current device, so a measurement on device N leaves no trace.
struct DeviceGuard {
  int prev = 0;
  bool saved = false;
  DeviceGuard() { saved = cudaGetDevice(&prev) == cudaSuccess; }
  ~DeviceGuard() {
    if (saved) cudaSetDevice(prev);
  }
};

// Everything the bandwidth run allocates, released on every exit path.
struct BandwidthResources {
  void* host = nullptr;
  void* dev = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  ~BandwidthResources() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (stream) cudaStreamDestroy(stream);
    if (dev) cudaFree(dev);
    if (host) cudaFreeHost(host);
  }
};

// Best (smallest) milliseconds of `iterations` copies of one direction, or a negative value on error.
float best_copy_ms(BandwidthResources& r, size_t bytes, int iterations, cudaMemcpyKind kind, std::string* why) {
  void* dst = kind == cudaMemcpyHostToDevice ? r.dev : r.host;
  const void* src = kind == cudaMemcpyHostToDevice ? r.host : r.dev;
  float best = FLT_MAX;
  // One untimed copy first: the first transfer pays for lazy mapping of the pinned pages.
  for (int i = -1; i < iterations; i++) {
    cudaError_t err = cudaEventRecord(r.start, r.stream);
    if (err == cudaSuccess) err = cudaMemcpyAsync(dst, src, bytes, kind, r.stream);
    if (err == cudaSuccess) err = cudaEventRecord(r.stop, r.stream);
    if (err == cudaSuccess) err = cudaEventSynchronize(r.stop);
    float ms = 0;
    if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, r.start, r.stop);
    if (err != cudaSuccess) {
      *why = failed(kind == cudaMemcpyHostToDevice ? "host-to-device cudaMemcpyAsync" : "device-to-host cudaMemcpyAsync", err);
      return -1;
    }
    if (i >= 0) best = std::min(best, ms);
  }
  return best;
}

}  // namespace

CudaMemInfo cuda_mem_info(int device) {
  CudaMemInfo m;
  m.reason = device_problem(device);
  if (!m.reason.empty()) return m;
  DeviceGuard guard;
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) { m.reason = failed("cudaSetDevice", err); return m; }
  size_t freeBytes = 0, totalBytes = 0;
  err = cudaMemGetInfo(&freeBytes, &totalBytes);
  if (err != cudaSuccess) { m.reason = failed("cudaMemGetInfo", err); return m; }
  m.ok = true;
  m.freeBytes = freeBytes;
  m.totalBytes = totalBytes;
  return m;
}

CudaBandwidth cuda_bandwidth(int device, size_t bytes, int iterations) {
  CudaBandwidth b;
  b.reason = device_problem(device);
  if (!b.reason.empty()) return b;
  DeviceGuard guard;
  BandwidthResources r;  // declared after the guard: freed while `device` is still current
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) { b.reason = failed("cudaSetDevice", err); return b; }
  if ((err = cudaHostAlloc(&r.host, bytes, cudaHostAllocDefault)) != cudaSuccess) {
    r.host = nullptr;
    b.reason = failed(("cudaHostAlloc of " + std::to_string(bytes) + " pinned bytes").c_str(), err);
    return b;
  }
  if ((err = cudaMalloc(&r.dev, bytes)) != cudaSuccess) {
    r.dev = nullptr;
    b.reason = failed(("cudaMalloc of " + std::to_string(bytes) + " device bytes").c_str(), err);
    return b;
  }
  // A non-blocking stream so that work other threads put on the legacy default stream cannot serialize with it.
  if ((err = cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking)) != cudaSuccess) { b.reason = failed("cudaStreamCreateWithFlags", err); return b; }
  if ((err = cudaEventCreate(&r.start)) != cudaSuccess || (err = cudaEventCreate(&r.stop)) != cudaSuccess) {
    b.reason = failed("cudaEventCreate", err);
    return b;
  }
  // Touch both buffers so no copy is timed against never-written pages.
  std::fill_n(static_cast<unsigned char*>(r.host), bytes, static_cast<unsigned char>(1));
  // On the measuring stream: a non-blocking stream does not wait for work on the legacy default stream.
  if ((err = cudaMemsetAsync(r.dev, 0, bytes, r.stream)) != cudaSuccess) { b.reason = failed("cudaMemsetAsync", err); return b; }
  const float h2d = best_copy_ms(r, bytes, iterations, cudaMemcpyHostToDevice, &b.reason);
  if (h2d < 0) return b;
  const float d2h = best_copy_ms(r, bytes, iterations, cudaMemcpyDeviceToHost, &b.reason);
  if (d2h < 0) return b;
  b.ok = true;
  b.h2dGbPerS = static_cast<double>(bytes) / (static_cast<double>(h2d) * 1e6);
  b.d2hGbPerS = static_cast<double>(bytes) / (static_cast<double>(d2h) * 1e6);
  return b;
}

}  // namespace kvoff
