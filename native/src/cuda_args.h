// Option parsing shared by the CUDA entry points: device references {devHandle, devOffset}, stream and
// event handles, and the GPU check. Plain fields are checked first, so bad arguments are named even on
// a machine without a GPU; handles are looked up only after the GPU check.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

#include "args.h"
#include "cuda/cuda_device.h"

namespace kvoff {

constexpr const char* kErrDevice = "KVOFF_E_DEVICE";

class CudaArgs : public Args {
 public:
  CudaArgs(const Napi::CallbackInfo& info, const char* fn);
  const std::string& fn() const { return fn_; }
  // A {devHandle, devOffset} field: types and ranges only; dev_range resolves it after require_gpu.
  DevRef dev_ref(const char* name) const;
  // An optional stream handle; 0 (the default) is kvoff's own default stream.
  uint32_t stream_handle(const char* name) const;
  uint32_t event_handle(const char* name) const;
  void require_gpu() const;
  void require_stream(const char* name, uint32_t handle) const;
  void require_event(const char* name, uint32_t handle) const;
  // Throws unless [r.offset, r.offset + bytes) lies in a live device arena and r.offset % align == 0.
  void dev_range(const char* name, const DevRef& r, uint64_t bytes, uint64_t align) const;
  void check(const CudaStatus& s) const;

 private:
  int64_t nested_integer(Napi::Object o, const char* field, const char* key, int64_t min, int64_t max) const;
  Napi::Object opts_;
  std::string fn_;
};

// For entry points that take no options object.
void require_gpu(Napi::Env env, const std::string& fn);
void throw_cuda_status(Napi::Env env, const CudaStatus& s);

}  // namespace kvoff
