// JS entry points of the model-side CUDA kernels (cuda_model.h): cudaUpload, cudaDownload, cudaFillRandom,
// cudaEmbed, cudaRmsNorm, cudaRope, cudaGemm, cudaSwiGlu, cudaAdd, cudaAddBias, cudaArgmax, cudaSample. Every field is checked
// before the GPU is looked for, so bad input is named on any machine; handles and ranges are checked after.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>

#include "args.h"
#include "cuda_args.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_model.h"
#include "ops.h"

namespace kvoff {
namespace {

constexpr int64_t kMaxDim = 0x7fffffffLL;         // kernels index one dimension with 32-bit ints
constexpr uint64_t kMaxBytes = uint64_t(1) << 46;  // as cudaArenaCreate: no operand can be larger

// A device reference whose handle is in the device range: a host arena's handle (all below
// kDevHandleBase) is refused here, before the GPU check, instead of failing the lookup later.
DevRef dev(const CudaArgs& a, const char* name) {
  const DevRef r = a.dev_ref(name);
  if (r.handle <= kDevHandleBase) {
    const std::string field = std::string(name) + ".devHandle";
    a.fail(field.c_str(), "a device arena handle (from cudaArenaCreate)", std::to_string(r.handle) + ", which is a host arena's handle");
  }
  return r;
}

// dims[0] * dims[1] * ... * elemBytes, refused (naming `name`) past kMaxBytes; dims are each <= 2^31.
uint64_t bytes_of(const CudaArgs& a, const char* name, std::initializer_list<uint64_t> dims, uint64_t elemBytes) {
  uint64_t total = elemBytes;
  std::string shape;
  for (uint64_t d : dims) {
    shape += (shape.empty() ? "" : " x ") + std::to_string(d);
    if (d != 0 && total > kMaxBytes / d) a.fail(name, "a buffer of at most 2^46 bytes", "a shape of " + shape + "...");
    total *= d;
  }
  if (total > kMaxBytes) a.fail(name, "a buffer of at most 2^46 bytes", std::to_string(total) + " bytes");
  return total;
}

bool overlaps(const DevRef& a, uint64_t aBytes, const DevRef& b, uint64_t bBytes) {
  return a.handle == b.handle && a.offset < b.offset + bBytes && b.offset < a.offset + aBytes;
}

// `out` may be exactly `in` (an elementwise kernel reads each element before writing it) but not shifted against it.
void same_or_apart(const CudaArgs& a, const char* outName, const DevRef& out, uint64_t outBytes, const char* inName, const DevRef& in, uint64_t inBytes) {
  if (out.handle == in.handle && out.offset == in.offset) return;
  if (overlaps(out, outBytes, in, inBytes))
    a.fail(outName, std::string("a range equal to ") + inName + " or apart from it", "a partly overlapping range at offset " + std::to_string(out.offset));
}

void apart(const CudaArgs& a, const char* outName, const DevRef& out, uint64_t outBytes, const char* inName, const DevRef& in, uint64_t inBytes) {
  if (overlaps(out, outBytes, in, inBytes))
    a.fail(outName, std::string("a range that does not overlap ") + inName, "an overlapping range at offset " + std::to_string(out.offset));
}

void gpu_and_stream(const CudaArgs& a, uint32_t stream) {
  a.require_gpu();
  a.require_stream("stream", stream);
}

// ---- cudaUpload ----

Napi::Value CudaUpload(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaUpload");
  const DevRef dst = dev(a, "dst");
  Napi::Value v = info[0].As<Napi::Object>().Get("data");
  void* data = nullptr;
  size_t bytes = 0;
  if (v.IsTypedArray()) {
    napi_typedarray_type type;
    size_t length = 0;
    if (napi_get_typedarray_info(a.env(), v, &type, &length, &data, nullptr, nullptr) != napi_ok)
      a.fail("data", "an ArrayBufferView", "a typed array whose memory could not be read");
    bytes = v.As<Napi::TypedArray>().ByteLength();
  } else if (v.IsDataView()) {
    if (napi_get_dataview_info(a.env(), v, &bytes, &data, nullptr, nullptr) != napi_ok)
      a.fail("data", "an ArrayBufferView", "a DataView whose memory could not be read");
  } else {
    a.fail("data", "an ArrayBufferView (a typed array or DataView)", describe_value(v));
  }
  const uint32_t stream = a.stream_handle("stream");
  gpu_and_stream(a, stream);
  a.dev_range("dst", dst, bytes, 1);
  a.check(cuda_upload(dst, data, bytes, stream));
  return a.env().Undefined();
}

// ---- cudaDownload: settled from a stream callback, as cudaStreamSynchronize is ----

struct DownloadState {
  Napi::Promise::Deferred deferred;
  Napi::Reference<Napi::Uint8Array> out;  // allocated on the calling thread: the settle step cannot fail
  uint32_t stream;
  uint64_t bytes;
  uint64_t slot = 0;
  uint64_t ticket = 0;
  int status = 0;
};

void SettleDownload(Napi::Env env, Napi::Function, std::nullptr_t*, DownloadState* s) {
  if (env == nullptr) {  // the environment is going away: nothing to settle, and the slot is left as it is
    s->out.SuppressDestruct();
    delete s;
    return;
  }
  if (s->status == 0) {
    Napi::Uint8Array out = s->out.Value();
    cuda_download_finish(s->slot, out.Data(), s->bytes, true);
    cuda_stream_release(s->stream, s->ticket);
    s->deferred.Resolve(out);
  } else {
    cuda_download_finish(s->slot, nullptr, 0, false);  // the failed work may still write the slot: never reused
    Napi::Error err = Napi::Error::New(env, "cudaDownload: work on stream " + std::to_string(s->stream) +
                                                " failed: " + cuda_status_string(s->status));
    err.Set("code", Napi::String::New(env, kErrDevice));
    s->deferred.Reject(err.Value());
  }
  delete s;
}

using DownloadTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, DownloadState, SettleDownload>;

struct DownloadWait {
  DownloadTsfn tsfn;
  DownloadState* state;
};

// Runs on a CUDA driver thread: no CUDA and no JS here, only a hand-off to the JS thread.
void OnDownloadDone(void* user, int status) {
  auto* w = static_cast<DownloadWait*>(user);
  DownloadTsfn tsfn = w->tsfn;
  DownloadState* s = w->state;
  delete w;
  s->status = status;
  tsfn.NonBlockingCall(s);
  tsfn.Release();
}

Napi::Value CudaDownload(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaDownload");
  const DevRef src = dev(a, "src");
  // One Uint8Array of at most 2 GiB (Node's limit is higher, but not on every version); larger reads go in pieces.
  const int64_t bytes = a.integer("bytes", 0, int64_t(1) << 31);
  const uint32_t stream = a.stream_handle("stream");
  gpu_and_stream(a, stream);
  a.dev_range("src", src, static_cast<uint64_t>(bytes), 1);
  auto* state = new DownloadState{Napi::Promise::Deferred::New(a.env()),
                                  Napi::Persistent(Napi::Uint8Array::New(a.env(), static_cast<size_t>(bytes))), stream, static_cast<uint64_t>(bytes)};
  Napi::Promise p = state->deferred.Promise();
  auto* w = new DownloadWait{DownloadTsfn::New(a.env(), "kvoff.cudaDownload", 0, 1), state};
  const CudaStatus s = cuda_download_begin(src, static_cast<uint64_t>(bytes), stream, OnDownloadDone, w, &state->slot, &state->ticket);
  if (!s.ok()) {
    w->tsfn.Release();
    delete w;
    delete state;
    a.check(s);
  }
  return p;
}

// ---- cudaFillRandom ----

Napi::Value CudaFillRandom(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaFillRandom");
  const DevRef dst = dev(a, "dst");
  const int64_t count = a.integer("count", 1, int64_t(1) << 44);
  Napi::Value dv = info[0].As<Napi::Object>().Get("dtype");
  const std::string dname = dv.IsString() ? dv.As<Napi::String>().Utf8Value() : "";
  FillDtype dtype;
  uint64_t elem;
  if (dname == "f32") dtype = FillDtype::F32, elem = 4;
  else if (dname == "bf16") dtype = FillDtype::BF16, elem = 2;
  else if (dname == "f16") dtype = FillDtype::F16, elem = 2;
  else a.fail("dtype", "\"f32\", \"bf16\" or \"f16\"", describe_value(dv));
  const uint32_t seed = static_cast<uint32_t>(a.integer("seed", 0, 0xffffffffLL));
  const double scale = a.number("scale");
  if (std::fabs(scale) > 3.4028234663852886e38) a.fail("scale", "a number that fits in f32", describe_value(info[0].As<Napi::Object>().Get("scale")));
  const uint64_t bytes = bytes_of(a, "count", {static_cast<uint64_t>(count)}, elem);
  const uint32_t stream = a.stream_handle("stream");
  gpu_and_stream(a, stream);
  a.dev_range("dst", dst, bytes, elem);
  a.check(cuda_fill_random(dst, static_cast<uint64_t>(count), dtype, seed, static_cast<float>(scale), stream));
  return a.env().Undefined();
}

// ---- cudaEmbed ----

Napi::Value CudaEmbed(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaEmbed");
  const DevRef table = dev(a, "table");  // [vocab, hidden] bf16
  const int64_t vocab = a.integer("vocab", 1, kMaxDim);
  const int64_t hidden = a.integer("hidden", 1, kMaxDim);
  const Span<int32_t> ids = a.i32("ids", SIZE_MAX);  // [rows]
  if (ids.size == 0) a.fail("ids", "a non-empty Int32Array", "Int32Array(0)");
  if (ids.size > static_cast<size_t>(kMaxDim)) a.fail("ids", "at most 2^31 - 1 ids", std::to_string(ids.size));
  for (size_t i = 0; i < ids.size; ++i)
    if (ids.data[i] < 0 || ids.data[i] >= vocab) a.fail_range("ids", ids.data[i], 0, vocab - 1);
  const DevRef out = dev(a, "out");  // [rows, hidden] f32
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t tableBytes = bytes_of(a, "table", {static_cast<uint64_t>(vocab), static_cast<uint64_t>(hidden)}, 2);
  const uint64_t outBytes = bytes_of(a, "out", {ids.size, static_cast<uint64_t>(hidden)}, 4);
  gpu_and_stream(a, stream);
  a.dev_range("table", table, tableBytes, 2);
  a.dev_range("out", out, outBytes, 4);
  apart(a, "out", out, outBytes, "table", table, tableBytes);
  a.check(cuda_embed(table, static_cast<uint32_t>(hidden), ids.data, static_cast<uint32_t>(ids.size), out, stream));
  return a.env().Undefined();
}

Napi::Value CudaEmbedDevice(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaEmbedDevice");
  const DevRef table = dev(a, "table");  // [vocab, hidden] bf16
  const int64_t vocab = a.integer("vocab", 1, kMaxDim);
  const int64_t hidden = a.integer("hidden", 1, kMaxDim);
  const DevRef ids = dev(a, "ids");  // int32 [rows], clamped into [0, vocab) by the kernel
  const int64_t rows = a.integer("rows", 1, 1 << 20);
  const DevRef out = dev(a, "out");  // [rows, hidden] f32
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t tableBytes = bytes_of(a, "table", {static_cast<uint64_t>(vocab), static_cast<uint64_t>(hidden)}, 2);
  const uint64_t outBytes = bytes_of(a, "out", {static_cast<uint64_t>(rows), static_cast<uint64_t>(hidden)}, 4);
  gpu_and_stream(a, stream);
  a.dev_range("table", table, tableBytes, 2);
  a.dev_range("ids", ids, static_cast<uint64_t>(rows) * 4, 4);
  a.dev_range("out", out, outBytes, 4);
  apart(a, "out", out, outBytes, "table", table, tableBytes);
  apart(a, "out", out, outBytes, "ids", ids, static_cast<uint64_t>(rows) * 4);
  a.check(cuda_embed_device(table, static_cast<uint32_t>(hidden), static_cast<uint32_t>(vocab), ids, static_cast<uint32_t>(rows), out, stream));
  return a.env().Undefined();
}

// ---- cudaRmsNorm ----

Napi::Value CudaRmsNorm(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaRmsNorm");
  const DevRef x = dev(a, "x");            // [rows, n] f32
  const DevRef weight = dev(a, "weight");  // [n] bf16
  const DevRef out = dev(a, "out");        // [rows, n] f32, may equal x
  const int64_t rows = a.integer("rows", 1, kMaxDim);
  const int64_t n = a.integer("n", 1, kMaxDim);
  const double eps = a.number("eps");
  if (eps < 0 || eps > 3.4028234663852886e38) a.fail("eps", "a finite number >= 0", describe_value(info[0].As<Napi::Object>().Get("eps")));
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t xBytes = bytes_of(a, "x", {static_cast<uint64_t>(rows), static_cast<uint64_t>(n)}, 4);
  const uint64_t wBytes = static_cast<uint64_t>(n) * 2;
  gpu_and_stream(a, stream);
  a.dev_range("x", x, xBytes, 4);
  a.dev_range("weight", weight, wBytes, 2);
  a.dev_range("out", out, xBytes, 4);
  same_or_apart(a, "out", out, xBytes, "x", x, xBytes);
  apart(a, "out", out, xBytes, "weight", weight, wBytes);
  a.check(cuda_rms_norm(x, weight, out, static_cast<uint32_t>(rows), static_cast<uint32_t>(n), static_cast<float>(eps), stream));
  return a.env().Undefined();
}

// ---- cudaRope ----

Napi::Value CudaRope(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaRope");
  const DevRef x = dev(a, "x");  // [rows, rowStride] f32, heads * headDim of each row rotated in place
  const int64_t rows = a.integer("rows", 1, kMaxDim);
  const int64_t heads = a.integer("heads", 1, kMaxDim);
  const int64_t headDim = a.integer("headDim", 2, kMaxDim);
  if (headDim % 2 != 0) a.fail("headDim", "an even number (RoPE rotates two halves)", std::to_string(headDim));
  const uint64_t width = bytes_of(a, "heads", {static_cast<uint64_t>(heads), static_cast<uint64_t>(headDim)}, 1);  // floats per row used
  const int64_t rowStride = a.integer_or("rowStride", static_cast<int64_t>(width), int64_t(1) << 40, static_cast<int64_t>(width));
  const DevRef cos = dev(a, "cos");  // [rows, headDim] f32
  const DevRef sin = dev(a, "sin");  // [rows, headDim] f32
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t xBytes = bytes_of(a, "x", {static_cast<uint64_t>(rows - 1), static_cast<uint64_t>(rowStride)}, 4) + width * 4;
  if (xBytes > kMaxBytes) a.fail("x", "a buffer of at most 2^46 bytes", std::to_string(xBytes) + " bytes");
  const uint64_t tBytes = bytes_of(a, "cos", {static_cast<uint64_t>(rows), static_cast<uint64_t>(headDim)}, 4);
  gpu_and_stream(a, stream);
  a.dev_range("x", x, xBytes, 4);
  a.dev_range("cos", cos, tBytes, 4);
  a.dev_range("sin", sin, tBytes, 4);
  apart(a, "x", x, xBytes, "cos", cos, tBytes);
  apart(a, "x", x, xBytes, "sin", sin, tBytes);
  a.check(cuda_rope(x, static_cast<uint32_t>(rows), static_cast<uint32_t>(heads), static_cast<uint32_t>(headDim), static_cast<uint64_t>(rowStride),
                    cos, sin, stream));
  return a.env().Undefined();
}

// ---- cudaGemm ----

Napi::Value CudaGemm(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaGemm");
  const DevRef w = dev(a, "w");  // [n, k] bf16 row-major
  const DevRef x = dev(a, "x");  // [m, k] f32
  const DevRef y = dev(a, "y");  // [m, n] f32
  const int64_t m = a.integer("m", 1, kMaxDim);
  const int64_t n = a.integer("n", 1, kMaxDim);
  const int64_t k = a.integer("k", 1, kMaxDim);
  const bool accumulate = a.boolean_or("accumulate", false);
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t wBytes = bytes_of(a, "w", {static_cast<uint64_t>(n), static_cast<uint64_t>(k)}, 2);
  const uint64_t xBytes = bytes_of(a, "x", {static_cast<uint64_t>(m), static_cast<uint64_t>(k)}, 4);
  const uint64_t yBytes = bytes_of(a, "y", {static_cast<uint64_t>(m), static_cast<uint64_t>(n)}, 4);
  gpu_and_stream(a, stream);
  a.dev_range("w", w, wBytes, 2);
  a.dev_range("x", x, xBytes, 4);
  a.dev_range("y", y, yBytes, 4);
  if (overlaps(y, yBytes, w, wBytes) || overlaps(y, yBytes, x, xBytes))
    a.fail("y", "a range that overlaps neither w nor x", "an overlapping range at offset " + std::to_string(y.offset));
  GemmCall call;
  call.w = w;
  call.x = x;
  call.y = y;
  call.m = static_cast<uint32_t>(m);
  call.n = static_cast<uint32_t>(n);
  call.k = static_cast<uint32_t>(k);
  call.accumulate = accumulate;
  call.stream = stream;
  a.check(cuda_gemm_bf16(call));
  return a.env().Undefined();
}

// ---- cudaSwiGlu ----

Napi::Value CudaSwiGlu(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaSwiGlu");
  const DevRef gateUp = dev(a, "gateUp");  // [m, 2 * inter] f32
  const DevRef out = dev(a, "out");        // [m, inter] f32
  const int64_t m = a.integer("m", 1, kMaxDim);
  const int64_t inter = a.integer("inter", 1, kMaxDim / 2);
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t inBytes = bytes_of(a, "gateUp", {static_cast<uint64_t>(m), static_cast<uint64_t>(inter), 2}, 4);
  const uint64_t outBytes = inBytes / 2;
  gpu_and_stream(a, stream);
  a.dev_range("gateUp", gateUp, inBytes, 4);
  a.dev_range("out", out, outBytes, 4);
  // Row r of out would land on row r / 2 of gateUp, which another thread may not have read yet.
  apart(a, "out", out, outBytes, "gateUp", gateUp, inBytes);
  a.check(cuda_swiglu(gateUp, out, static_cast<uint32_t>(m), static_cast<uint32_t>(inter), stream));
  return a.env().Undefined();
}

// ---- cudaAdd ----

Napi::Value CudaAdd(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaAdd");
  const DevRef x = dev(a, "a");      // [n] f32
  const DevRef y = dev(a, "b");      // [n] f32
  const DevRef out = dev(a, "out");  // [n] f32, may equal a or b
  const int64_t n = a.integer("n", 1, int64_t(1) << 44);
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t bytes = bytes_of(a, "n", {static_cast<uint64_t>(n)}, 4);
  gpu_and_stream(a, stream);
  a.dev_range("a", x, bytes, 4);
  a.dev_range("b", y, bytes, 4);
  a.dev_range("out", out, bytes, 4);
  same_or_apart(a, "out", out, bytes, "a", x, bytes);
  same_or_apart(a, "out", out, bytes, "b", y, bytes);
  a.check(cuda_add(x, y, out, static_cast<uint64_t>(n), stream));
  return a.env().Undefined();
}

// ---- cudaAddBias ----

Napi::Value CudaAddBias(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaAddBias");
  const DevRef x = dev(a, "x");        // [rows, rowStride] f32, the first n of each row biased in place
  const DevRef bias = dev(a, "bias");  // [n] f32
  const int64_t rows = a.integer("rows", 1, kMaxDim);
  const int64_t n = a.integer("n", 1, kMaxDim);
  const int64_t rowStride = a.integer_or("rowStride", n, int64_t(1) << 40, n);
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t xBytes = bytes_of(a, "x", {static_cast<uint64_t>(rows - 1), static_cast<uint64_t>(rowStride)}, 4) + static_cast<uint64_t>(n) * 4;
  if (xBytes > kMaxBytes) a.fail("x", "a buffer of at most 2^46 bytes", std::to_string(xBytes) + " bytes");
  const uint64_t biasBytes = static_cast<uint64_t>(n) * 4;
  gpu_and_stream(a, stream);
  a.dev_range("x", x, xBytes, 4);
  a.dev_range("bias", bias, biasBytes, 4);
  apart(a, "x", x, xBytes, "bias", bias, biasBytes);
  a.check(cuda_add_bias(x, bias, static_cast<uint32_t>(rows), static_cast<uint32_t>(n), static_cast<uint64_t>(rowStride), stream));
  return a.env().Undefined();
}

// ---- cudaArgmax ----

Napi::Value CudaArgmax(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaArgmax");
  const DevRef x = dev(a, "x");      // [m, n] f32
  const DevRef out = dev(a, "out");  // [m] int32
  const int64_t m = a.integer("m", 1, kMaxDim);
  const int64_t n = a.integer("n", 1, kMaxDim);
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t xBytes = bytes_of(a, "x", {static_cast<uint64_t>(m), static_cast<uint64_t>(n)}, 4);
  const uint64_t outBytes = static_cast<uint64_t>(m) * 4;
  gpu_and_stream(a, stream);
  a.dev_range("x", x, xBytes, 4);
  a.dev_range("out", out, outBytes, 4);
  apart(a, "out", out, outBytes, "x", x, xBytes);
  a.check(cuda_argmax(x, static_cast<uint32_t>(m), static_cast<uint32_t>(n), out, stream));
  return a.env().Undefined();
}

// ---- cudaSample ----

Napi::Value CudaSampleScratchBytes(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaSampleScratchBytes");
  const int64_t n = a.integer("n", 1, kMaxDim);
  return Napi::Number::New(a.env(), static_cast<double>(cuda_sample_scratch_bytes(static_cast<uint32_t>(n))));
}

Napi::Value CudaSample(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaSample");
  SampleCall c;
  c.x = dev(a, "x");      // [n] f32
  c.out = dev(a, "out");  // [1] int32
  c.scratch = dev(a, "scratch");
  c.n = static_cast<uint32_t>(a.integer("n", 1, kMaxDim));
  c.temperature = a.number("temperature");
  if (!(c.temperature > 0) || !std::isfinite(c.temperature)) a.fail("temperature", "a finite number > 0 (greedy is cudaArgmax)", describe_value(info[0].As<Napi::Object>().Get("temperature")));
  c.topK = static_cast<uint32_t>(a.integer_or("topK", 0, kMaxDim, 0));
  c.topP = a.has("topP") ? a.number("topP") : 1.0;
  if (!(c.topP > 0 && c.topP <= 1)) a.fail("topP", "a number in (0, 1]", describe_value(info[0].As<Napi::Object>().Get("topP")));
  c.u = a.number("u");
  if (!(c.u >= 0 && c.u < 1)) a.fail("u", "a number in [0, 1)", describe_value(info[0].As<Napi::Object>().Get("u")));
  c.stream = a.stream_handle("stream");
  const uint64_t xBytes = static_cast<uint64_t>(c.n) * 4, scratchBytes = cuda_sample_scratch_bytes(c.n);
  gpu_and_stream(a, c.stream);
  a.dev_range("x", c.x, xBytes, 4);
  a.dev_range("out", c.out, 4, 4);
  a.dev_range("scratch", c.scratch, scratchBytes, 16);
  apart(a, "out", c.out, 4, "x", c.x, xBytes);
  apart(a, "scratch", c.scratch, scratchBytes, "x", c.x, xBytes);
  apart(a, "scratch", c.scratch, scratchBytes, "out", c.out, 4);
  a.check(cuda_sample(c));
  return a.env().Undefined();
}

}  // namespace

void register_cuda_model_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaUpload", Napi::Function::New(env, CudaUpload, "cudaUpload"));
  exports.Set("cudaDownload", Napi::Function::New(env, CudaDownload, "cudaDownload"));
  exports.Set("cudaFillRandom", Napi::Function::New(env, CudaFillRandom, "cudaFillRandom"));
  exports.Set("cudaEmbed", Napi::Function::New(env, CudaEmbed, "cudaEmbed"));
  exports.Set("cudaEmbedDevice", Napi::Function::New(env, CudaEmbedDevice, "cudaEmbedDevice"));
  exports.Set("cudaRmsNorm", Napi::Function::New(env, CudaRmsNorm, "cudaRmsNorm"));
  exports.Set("cudaRope", Napi::Function::New(env, CudaRope, "cudaRope"));
  exports.Set("cudaGemm", Napi::Function::New(env, CudaGemm, "cudaGemm"));
  exports.Set("cudaSwiGlu", Napi::Function::New(env, CudaSwiGlu, "cudaSwiGlu"));
  exports.Set("cudaAdd", Napi::Function::New(env, CudaAdd, "cudaAdd"));
  exports.Set("cudaAddBias", Napi::Function::New(env, CudaAddBias, "cudaAddBias"));
  exports.Set("cudaArgmax", Napi::Function::New(env, CudaArgmax, "cudaArgmax"));
  exports.Set("cudaSampleScratchBytes", Napi::Function::New(env, CudaSampleScratchBytes, "cudaSampleScratchBytes"));
  exports.Set("cudaSample", Napi::Function::New(env, CudaSample, "cudaSample"));
}

}  // namespace kvoff
