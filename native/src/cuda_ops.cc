// JS entry points for device measurements (cudaMemInfo, cudaBandwidth). Always built: without nvcc the
// stub answers ok=false with its reason, so arguments are checked the same way in both builds.
#include <napi.h>

#include "args.h"
#include "cuda/cuda_api.h"
#include "ops.h"

namespace kvoff {
namespace {

constexpr int64_t kMaxDevice = 1023;

Napi::Value CudaMemInfoFn(const Napi::CallbackInfo& info) {
  // No options object is fine here: device 0 is what kvoff uses unless told otherwise.
  int device = 0;
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    Args a(info, "cudaMemInfo");
    device = static_cast<int>(a.integer_or("device", 0, kMaxDevice, 0));
  }
  CudaMemInfo m = cuda_mem_info(device);
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", Napi::Boolean::New(env, m.ok));
  o.Set("device", Napi::Number::New(env, device));
  o.Set("freeBytes", Napi::Number::New(env, static_cast<double>(m.freeBytes)));
  o.Set("totalBytes", Napi::Number::New(env, static_cast<double>(m.totalBytes)));
  o.Set("reason", Napi::String::New(env, m.reason));
  return o;
}

class BandwidthWorker : public Napi::AsyncWorker {
 public:
  BandwidthWorker(Napi::Env env, int device, size_t bytes, int iterations)
      : Napi::AsyncWorker(env, "kvoff.cudaBandwidth"),
        device_(device), bytes_(bytes), iterations_(iterations), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  // A failed CUDA call is a finding (ok=false, reason), not an exception: the doctor reports it.
  void Execute() override { result_ = cuda_bandwidth(device_, bytes_, iterations_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("ok", Napi::Boolean::New(env, result_.ok));
    o.Set("device", Napi::Number::New(env, device_));
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(bytes_)));
    o.Set("iterations", Napi::Number::New(env, iterations_));
    o.Set("h2dGbPerS", Napi::Number::New(env, result_.h2dGbPerS));
    o.Set("d2hGbPerS", Napi::Number::New(env, result_.d2hGbPerS));
    o.Set("reason", Napi::String::New(env, result_.reason));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  int device_;
  size_t bytes_;
  int iterations_;
  CudaBandwidth result_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value CudaBandwidthFn(const Napi::CallbackInfo& info) {
  Args a(info, "cudaBandwidth");
  // 4 KiB .. 64 GiB: below a page the timing is all latency; above, no host would pin it for a test.
  const int64_t bytes = a.integer("bytes", 4096, int64_t(1) << 36);
  const int iterations = static_cast<int>(a.integer_or("iterations", 1, 1000, 5));
  const int device = static_cast<int>(a.integer_or("device", 0, kMaxDevice, 0));
  auto* w = new BandwidthWorker(a.env(), device, static_cast<size_t>(bytes), iterations);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

void register_cuda_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaMemInfo", Napi::Function::New(env, CudaMemInfoFn, "cudaMemInfo"));
  exports.Set("cudaBandwidth", Napi::Function::New(env, CudaBandwidthFn, "cudaBandwidth"));
}

}  // namespace kvoff
