// Implementation of the CUDA entry points' option parsing and of the no-GPU / CUDA-failure errors.
#include "cuda_args.h"

#include <cmath>

#include "cuda/cuda_api.h"

namespace kvoff {

constexpr int64_t kMaxSafe = 9007199254740991LL;

CudaArgs::CudaArgs(const Napi::CallbackInfo& info, const char* fn) : Args(info, fn), opts_(info[0].As<Napi::Object>()), fn_(fn) {}

int64_t CudaArgs::nested_integer(Napi::Object o, const char* field, const char* key, int64_t min, int64_t max) const {
  Napi::Value v = o.Get(key);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  // The field's full name is built only for a message: this runs twice for every device reference of every call.
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > static_cast<double>(kMaxSafe)) fail((std::string(field) + "." + key).c_str(), "an integer", describe_value(v));
  const int64_t i = static_cast<int64_t>(d);
  if (i < min || i > max) fail_range((std::string(field) + "." + key).c_str(), i, min, max);
  return i;
}

DevRef CudaArgs::dev_ref(const char* name) const {
  Napi::Value v = opts_.Get(name);
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray() || v.IsFunction())
    fail(name, "a device reference {devHandle, devOffset}", describe_value(v));
  Napi::Object o = v.As<Napi::Object>();
  DevRef r;
  r.handle = static_cast<uint32_t>(nested_integer(o, name, "devHandle", 1, 0xffffffffLL));
  r.offset = static_cast<uint64_t>(nested_integer(o, name, "devOffset", 0, kMaxSafe));
  return r;
}

uint32_t CudaArgs::stream_handle(const char* name) const { return static_cast<uint32_t>(integer_or(name, 0, 0xffffffffLL, 0)); }

uint32_t CudaArgs::event_handle(const char* name) const { return static_cast<uint32_t>(integer(name, 1, 0xffffffffLL)); }

void require_gpu(Napi::Env env, const std::string& fn) {
  if (cuda_usable()) return;
  const CudaInfo info = cuda_info();
  throw_error(env, kErrDevice, "Expected a usable CUDA GPU for " + fn + " but received none: " +
                                   (info.built ? "no usable GPU (" : "CUDA not built (") + info.reason + ")");
}

void CudaArgs::require_gpu() const { kvoff::require_gpu(env(), fn_); }

void CudaArgs::require_stream(const char* name, uint32_t handle) const {
  if (!cuda_stream_live(handle))
    throw_error(env(), kErrDisposed, "Expected a live stream for " + fn_ + "." + name + " but received handle " + std::to_string(handle) +
                                         ", which is destroyed or was never created");
}

void CudaArgs::require_event(const char* name, uint32_t handle) const {
  if (!cuda_event_live(handle))
    throw_error(env(), kErrDisposed, "Expected a live event for " + fn_ + "." + name + " but received handle " + std::to_string(handle) +
                                         ", which is freed or was never created");
}

void CudaArgs::dev_range(const char* name, const DevRef& r, uint64_t bytes, uint64_t align) const {
  uint64_t size = 0;
  if (!cuda_arena_size(r.handle, &size))
    throw_error(env(), kErrDisposed, "Expected a live device arena for " + fn_ + "." + name + ".devHandle but received handle " +
                                         std::to_string(r.handle) + ", which is freed, was never created, or is a host arena's handle");
  if (align > 1 && r.offset % align != 0) {
    const std::string field = std::string(name) + ".devOffset";
    fail(field.c_str(), "an offset aligned to " + std::to_string(align) + " bytes", std::to_string(r.offset));
  }
  if (r.offset > size || bytes > size - r.offset)
    throw_error(env(), kErrRange, "Expected " + fn_ + "." + name + " to fit in its device arena (" + std::to_string(size) + " bytes) but offset " +
                                      std::to_string(r.offset) + " + " + std::to_string(bytes) + " bytes runs past the end");
}

void throw_cuda_status(Napi::Env env, const CudaStatus& s) {
  if (s.ok()) return;
  switch (s.fail) {
    case CudaFail::Capacity: throw_error(env, kErrCapacity, s.message);
    case CudaFail::Disposed: throw_error(env, kErrDisposed, s.message);
    default: throw_error(env, kErrDevice, s.message);
  }
}

void CudaArgs::check(const CudaStatus& s) const {
  if (s.ok()) return;
  CudaStatus named = s;
  if (s.fail == CudaFail::Runtime) named.message = fn_ + ": " + s.message;
  throw_cuda_status(env(), named);
}

}  // namespace kvoff
