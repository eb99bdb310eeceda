// JS entry points of the device tier's memory: device arenas, async copies, streams, events and totals.
// Always built; without nvcc the calls reach cuda_stub.cc, so arguments are checked the same way in both builds.
#include <napi.h>

#include <cstring>

#include "args.h"
#include "cuda_args.h"
#include "cuda/cuda_device.h"
#include "ops.h"

namespace kvoff {
namespace {

constexpr int64_t kMaxBytes = int64_t(1) << 46;

Napi::Value CudaArenaCreate(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaArenaCreate");
  const int64_t bytes = a.integer("bytes", 1, kMaxBytes);
  a.require_gpu();
  uint32_t handle = 0;
  a.check(cuda_arena_create(static_cast<uint64_t>(bytes), &handle));
  Napi::Object o = Napi::Object::New(a.env());
  o.Set("handle", Napi::Number::New(a.env(), handle));
  o.Set("bytes", Napi::Number::New(a.env(), static_cast<double>(bytes)));
  return o;
}

Napi::Value CudaArenaFree(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaArenaFree");
  const int64_t h = a.integer("handle", 1, 0xffffffffLL);
  a.require_gpu();
  const CudaStatus s = cuda_arena_free(static_cast<uint32_t>(h));
  if (s.fail == CudaFail::Disposed)
    throw_error(a.env(), kErrDisposed, "Expected a live device arena for cudaArenaFree.handle but received handle " + std::to_string(h) +
                                           ", which is freed, was never created, or is a host arena's handle");
  a.check(s);
  return a.env().Undefined();
}

// Synchronous copies between JS and a device arena, for tests and setup; they do not wait for
// kvoff's streams, so await cudaStreamSynchronize on those first.
Napi::Value CudaArenaWrite(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaArenaWrite");
  DevRef r;
  r.handle = static_cast<uint32_t>(a.integer("handle", 1, 0xffffffffLL));
  r.offset = static_cast<uint64_t>(a.integer("offset", 0, 9007199254740991LL));
  auto data = a.u8("data", SIZE_MAX);
  a.require_gpu();
  uint64_t size = 0;
  if (!cuda_arena_size(r.handle, &size))
    throw_error(a.env(), kErrDisposed, "Expected a live device arena for cudaArenaWrite.handle but received handle " + std::to_string(r.handle) +
                                           ", which is freed, was never created, or is a host arena's handle");
  if (data.size > size) a.fail("data", "at most " + std::to_string(size) + " bytes (the device arena's size)", describe_value(info[0].As<Napi::Object>().Get("data")));
  if (r.offset > size - data.size) a.fail_range("offset", static_cast<int64_t>(r.offset), 0, static_cast<int64_t>(size - data.size));
  a.check(cuda_arena_write(r.handle, r.offset, data.data, data.size));
  return a.env().Undefined();
}

Napi::Value CudaArenaRead(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaArenaRead");
  DevRef r;
  r.handle = static_cast<uint32_t>(a.integer("handle", 1, 0xffffffffLL));
  r.offset = static_cast<uint64_t>(a.integer("offset", 0, 9007199254740991LL));
  const int64_t n = a.integer("bytes", 0, int64_t(1) << 32);
  a.require_gpu();
  uint64_t size = 0;
  if (!cuda_arena_size(r.handle, &size))
    throw_error(a.env(), kErrDisposed, "Expected a live device arena for cudaArenaRead.handle but received handle " + std::to_string(r.handle) +
                                           ", which is freed, was never created, or is a host arena's handle");
  if (r.offset > size) a.fail_range("offset", static_cast<int64_t>(r.offset), 0, static_cast<int64_t>(size));
  if (static_cast<uint64_t>(n) > size - r.offset) a.fail_range("bytes", n, 0, static_cast<int64_t>(size - r.offset));
  Napi::Uint8Array out = Napi::Uint8Array::New(a.env(), static_cast<size_t>(n));
  a.check(cuda_arena_read(r.handle, r.offset, out.Data(), static_cast<uint64_t>(n)));
  return out;
}

// H2D or D2H between a host arena range and a device arena range, asynchronous on a stream.
Napi::Value HostCopy(const Napi::CallbackInfo& info, const char* fn, bool toDevice) {
  CudaArgs a(info, fn);
  auto host = a.arena("hostHandle");
  const int64_t bytes = a.integer("bytes", 0, static_cast<int64_t>(host->bytes));
  const int64_t hostOffset = a.integer("hostOffset", 0, static_cast<int64_t>(host->bytes) - bytes);
  DevRef dev;
  dev.handle = static_cast<uint32_t>(a.integer("devHandle", 1, 0xffffffffLL));
  dev.offset = static_cast<uint64_t>(a.integer("devOffset", 0, 9007199254740991LL));
  const uint32_t stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", stream);
  uint64_t size = 0;
  if (!cuda_arena_size(dev.handle, &size))
    throw_error(a.env(), kErrDisposed, std::string("Expected a live device arena for ") + fn + ".devHandle but received handle " +
                                           std::to_string(dev.handle) + ", which is freed, was never created, or is a host arena's handle");
  if (static_cast<uint64_t>(bytes) > size) a.fail_range("bytes", bytes, 0, static_cast<int64_t>(size));
  if (dev.offset > size - static_cast<uint64_t>(bytes)) a.fail_range("devOffset", static_cast<int64_t>(dev.offset), 0, static_cast<int64_t>(size) - bytes);
  a.check(toDevice ? cuda_copy_h2d(host, static_cast<uint64_t>(hostOffset), dev, static_cast<uint64_t>(bytes), stream)
                   : cuda_copy_d2h(host, static_cast<uint64_t>(hostOffset), dev, static_cast<uint64_t>(bytes), stream));
  return a.env().Undefined();
}

Napi::Value CudaCopyH2D(const Napi::CallbackInfo& info) { return HostCopy(info, "cudaCopyH2D", true); }
Napi::Value CudaCopyD2H(const Napi::CallbackInfo& info) { return HostCopy(info, "cudaCopyD2H", false); }

Napi::Value CudaCopyD2D(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaCopyD2D");
  const DevRef src = a.dev_ref("src");
  const DevRef dst = a.dev_ref("dst");
  const int64_t bytes = a.integer("bytes", 0, kMaxBytes);
  const uint32_t stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", stream);
  a.dev_range("src", src, static_cast<uint64_t>(bytes), 1);
  a.dev_range("dst", dst, static_cast<uint64_t>(bytes), 1);
  // cudaMemcpyAsync's result is undefined for overlapping ranges.
  if (src.handle == dst.handle && bytes > 0 && src.offset < dst.offset + bytes && dst.offset < src.offset + bytes)
    a.fail("dst", "a range that does not overlap src", "an overlapping range (offsets " + std::to_string(src.offset) + " and " + std::to_string(dst.offset) + ")");
  a.check(cuda_copy_d2d(src, dst, static_cast<uint64_t>(bytes), stream));
  return a.env().Undefined();
}

Napi::Value CudaStreamCreate(const Napi::CallbackInfo& info) {
  // Optional options: {highPriority?: boolean}.
  bool high = false;
  if (info.Length() > 0 && !info[0].IsUndefined()) high = CudaArgs(info, "cudaStreamCreate").boolean_or("highPriority", false);
  require_gpu(info.Env(), "cudaStreamCreate");
  uint32_t h = 0;
  throw_cuda_status(info.Env(), cuda_stream_create(&h, high));
  return Napi::Number::New(info.Env(), h);
}

Napi::Value CudaStreamDestroy(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaStreamDestroy");
  const uint32_t stream = static_cast<uint32_t>(a.integer("stream", 1, 0xffffffffLL));
  a.require_gpu();
  a.require_stream("stream", stream);
  a.check(cuda_stream_destroy(stream));
  return a.env().Undefined();
}

// ---- cudaStreamSynchronize: a Promise settled from a stream callback, so no thread blocks ----

struct SyncState {
  Napi::Promise::Deferred deferred;
  uint32_t stream;
  uint64_t ticket = 0;
  int status = 0;
};

void SettleSync(Napi::Env env, Napi::Function, std::nullptr_t*, SyncState* s) {
  if (env == nullptr) {  // the environment is going away: nothing to settle
    delete s;
    return;
  }
  if (s->status == 0) {
    cuda_stream_release(s->stream, s->ticket);
    s->deferred.Resolve(env.Undefined());
  } else {
    // What the failed work kept alive stays allocated: the device may still reference it.
    Napi::Error err = Napi::Error::New(env, "cudaStreamSynchronize: work on stream " + std::to_string(s->stream) +
                                                " failed: " + cuda_status_string(s->status));
    err.Set("code", Napi::String::New(env, kErrDevice));
    s->deferred.Reject(err.Value());
  }
  delete s;
}

using SyncTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, SyncState, SettleSync>;

struct SyncWait {
  SyncTsfn tsfn;
  SyncState* state;
};

// Runs on a CUDA driver thread: no CUDA and no JS here, only a hand-off to the JS thread.
void OnStreamDone(void* user, int status) {
  auto* w = static_cast<SyncWait*>(user);
  SyncTsfn tsfn = w->tsfn;
  SyncState* s = w->state;
  delete w;
  s->status = status;
  tsfn.NonBlockingCall(s);
  tsfn.Release();
}

Napi::Value CudaStreamSynchronize(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaStreamSynchronize");
  const uint32_t stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", stream);
  auto* state = new SyncState{Napi::Promise::Deferred::New(a.env()), stream};
  Napi::Promise p = state->deferred.Promise();
  // One thread-safe function per call: it keeps the event loop alive exactly while the wait is pending.
  auto* w = new SyncWait{SyncTsfn::New(a.env(), "kvoff.cudaStreamSynchronize", 0, 1), state};
  const CudaStatus s = cuda_stream_notify(stream, OnStreamDone, w, &state->ticket);
  if (!s.ok()) {
    w->tsfn.Release();
    delete w;
    delete state;
    a.check(s);
  }
  return p;
}

Napi::Value CudaEventRecord(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaEventRecord");
  const uint32_t stream = a.stream_handle("stream");
  const bool timing = a.boolean_or("timing", false);
  a.require_gpu();
  a.require_stream("stream", stream);
  uint32_t h = 0;
  a.check(cuda_event_record(stream, timing, &h));
  return Napi::Number::New(a.env(), h);
}

Napi::Value CudaStreamWaitEvent(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaStreamWaitEvent");
  const uint32_t stream = a.stream_handle("stream");
  const uint32_t event = a.event_handle("event");
  a.require_gpu();
  a.require_stream("stream", stream);
  a.require_event("event", event);
  a.check(cuda_stream_wait_event(stream, event));
  return a.env().Undefined();
}

Napi::Value CudaEventElapsedMs(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaEventElapsedMs");
  const uint32_t start = a.event_handle("start");
  const uint32_t end = a.event_handle("end");
  a.require_gpu();
  a.require_event("start", start);
  a.require_event("end", end);
  float ms = 0;
  a.check(cuda_event_elapsed(start, end, &ms));
  return Napi::Number::New(a.env(), ms);
}

Napi::Value CudaEventFree(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaEventFree");
  const uint32_t event = a.event_handle("event");
  a.require_gpu();
  a.require_event("event", event);
  a.check(cuda_event_free(event));
  return a.env().Undefined();
}

Napi::Value CudaGraphBegin(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaGraphBegin");
  const uint32_t stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", stream);
  a.check(cuda_graph_begin(stream));
  return a.env().Undefined();
}

Napi::Value CudaGraphEnd(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaGraphEnd");
  const uint32_t stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", stream);
  uint32_t h = 0;
  a.check(cuda_graph_end(stream, &h));
  return Napi::Number::New(a.env(), h);
}

Napi::Value CudaGraphLaunch(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaGraphLaunch");
  const uint32_t graph = static_cast<uint32_t>(a.integer("graph", 1, 0xffffffffLL));
  const uint32_t stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", stream);
  a.check(cuda_graph_launch(graph, stream));
  return a.env().Undefined();
}

Napi::Value CudaGraphFree(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaGraphFree");
  const uint32_t graph = static_cast<uint32_t>(a.integer("graph", 1, 0xffffffffLL));
  a.require_gpu();
  a.check(cuda_graph_free(graph));
  return a.env().Undefined();
}

// Needs no GPU: all zeros without one, so leak checks run everywhere.
Napi::Value CudaArenaTotals(const Napi::CallbackInfo& info) {
  const CudaTotals t = cuda_totals();
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", Napi::Number::New(env, static_cast<double>(t.arenas)));
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(t.arenaBytes)));
  o.Set("streams", Napi::Number::New(env, static_cast<double>(t.streams)));
  o.Set("events", Napi::Number::New(env, static_cast<double>(t.events)));
  o.Set("stagingBytes", Napi::Number::New(env, static_cast<double>(t.stagingBytes)));
  return o;
}

}  // namespace

void register_cuda_device_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaArenaCreate", Napi::Function::New(env, CudaArenaCreate, "cudaArenaCreate"));
  exports.Set("cudaArenaFree", Napi::Function::New(env, CudaArenaFree, "cudaArenaFree"));
  exports.Set("cudaArenaWrite", Napi::Function::New(env, CudaArenaWrite, "cudaArenaWrite"));
  exports.Set("cudaArenaRead", Napi::Function::New(env, CudaArenaRead, "cudaArenaRead"));
  exports.Set("cudaArenaTotals", Napi::Function::New(env, CudaArenaTotals, "cudaArenaTotals"));
  exports.Set("cudaCopyH2D", Napi::Function::New(env, CudaCopyH2D, "cudaCopyH2D"));
  exports.Set("cudaCopyD2H", Napi::Function::New(env, CudaCopyD2H, "cudaCopyD2H"));
  exports.Set("cudaCopyD2D", Napi::Function::New(env, CudaCopyD2D, "cudaCopyD2D"));
  exports.Set("cudaStreamCreate", Napi::Function::New(env, CudaStreamCreate, "cudaStreamCreate"));
  exports.Set("cudaStreamDestroy", Napi::Function::New(env, CudaStreamDestroy, "cudaStreamDestroy"));
  exports.Set("cudaStreamSynchronize", Napi::Function::New(env, CudaStreamSynchronize, "cudaStreamSynchronize"));
  exports.Set("cudaEventRecord", Napi::Function::New(env, CudaEventRecord, "cudaEventRecord"));
  exports.Set("cudaGraphBegin", Napi::Function::New(env, CudaGraphBegin, "cudaGraphBegin"));
  exports.Set("cudaGraphEnd", Napi::Function::New(env, CudaGraphEnd, "cudaGraphEnd"));
  exports.Set("cudaGraphLaunch", Napi::Function::New(env, CudaGraphLaunch, "cudaGraphLaunch"));
  exports.Set("cudaGraphFree", Napi::Function::New(env, CudaGraphFree, "cudaGraphFree"));
  exports.Set("cudaStreamWaitEvent", Napi::Function::New(env, CudaStreamWaitEvent, "cudaStreamWaitEvent"));
  exports.Set("cudaEventElapsedMs", Napi::Function::New(env, CudaEventElapsedMs, "cudaEventElapsedMs"));
  exports.Set("cudaEventFree", Napi::Function::New(env, CudaEventFree, "cudaEventFree"));
}

}  // namespace kvoff
