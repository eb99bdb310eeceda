// Module entry: arena handles, build/CPU/GPU info, SIMD level control, and the kernel entry points.
#include <napi.h>

#include <cstdio>
#include <algorithm>
#include <cstring>

#include "args.h"
#include "cuda/cuda_api.h"
#include "ops.h"
#include "simd/kernels.h"

namespace kvoff {
namespace {

Napi::Value ArenaCreate(const Napi::CallbackInfo& info) {
  Args a(info, "arenaCreate");
  const int64_t bytes = a.integer("bytes", 0, int64_t(1) << 46);
  const bool pin = a.boolean_or("pin", true);
  ArenaCreateResult r;
  try {
    r = arena_create(static_cast<size_t>(bytes), pin);
  } catch (const std::bad_alloc&) {
    throw_error(a.env(), kErrCapacity, "Expected to map " + std::to_string(bytes) + " bytes of host memory but the OS refused (out of memory)");
  }
  Napi::Object o = Napi::Object::New(a.env());
  o.Set("handle", Napi::Number::New(a.env(), r.handle));
  o.Set("bytes", Napi::Number::New(a.env(), static_cast<double>(r.arena->bytes)));
  o.Set("pinned", Napi::Boolean::New(a.env(), r.arena->method != PinMethod::Pageable));
  o.Set("method", Napi::String::New(a.env(), pin_method_name(r.arena->method)));
  if (!r.warning.empty()) o.Set("warning", Napi::String::New(a.env(), r.warning));
  return o;
}

Napi::Value ArenaFree(const Napi::CallbackInfo& info) {
  Args a(info, "arenaFree");
  const int64_t h = a.integer("handle", 1, 0xffffffffLL);
  if (!arena_free(static_cast<uint32_t>(h)))
    throw_error(a.env(), kErrDisposed, "Expected a live arena for arenaFree.handle but received handle " + std::to_string(h) + ", which is freed or was never created");
  return a.env().Undefined();
}

// Copies between JS and an arena (tests, bookkeeping); kernels never copy.
Napi::Value ArenaWrite(const Napi::CallbackInfo& info) {
  Args a(info, "arenaWrite");
  auto arena = a.arena("handle");
  const int64_t off = a.integer("offset", 0, static_cast<int64_t>(arena->bytes));
  auto data = a.u8("data", SIZE_MAX);
  if (data.size > arena->bytes - static_cast<size_t>(off)) a.fail_range("offset", off, 0, static_cast<int64_t>(arena->bytes - data.size));
  std::memcpy(arena->ptr + off, data.data, data.size);
  return a.env().Undefined();
}

Napi::Value ArenaRead(const Napi::CallbackInfo& info) {
  Args a(info, "arenaRead");
  auto arena = a.arena("handle");
  const int64_t off = a.integer("offset", 0, static_cast<int64_t>(arena->bytes));
  const int64_t n = a.integer("bytes", 0, static_cast<int64_t>(arena->bytes) - off);
  Napi::Uint8Array out = Napi::Uint8Array::New(a.env(), static_cast<size_t>(n));
  std::memcpy(out.Data(), arena->ptr + off, static_cast<size_t>(n));
  return out;
}

// Copies bytes inside one arena or between two (copy-on-write of KV blocks); ranges may overlap.
Napi::Value ArenaCopy(const Napi::CallbackInfo& info) {
  Args a(info, "arenaCopy");
  auto src = a.arena("srcHandle");
  auto dst = a.arena("dstHandle");
  const int64_t n = a.integer("bytes", 0, static_cast<int64_t>(std::min(src->bytes, dst->bytes)));
  const int64_t so = a.integer("srcOffset", 0, static_cast<int64_t>(src->bytes) - n);
  const int64_t d0 = a.integer("dstOffset", 0, static_cast<int64_t>(dst->bytes) - n);
  std::memmove(dst->ptr + d0, src->ptr + so, static_cast<size_t>(n));
  return a.env().Undefined();
}

Napi::Value ArenaTotals(const Napi::CallbackInfo& info) {
  size_t count = 0, bytes = 0;
  arena_totals(&count, &bytes);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("count", Napi::Number::New(info.Env(), static_cast<double>(count)));
  o.Set("bytes", Napi::Number::New(info.Env(), static_cast<double>(bytes)));
  return o;
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("simd", Napi::String::New(env, active_kernels().name));
  Napi::Object feats = Napi::Object::New(env);
  for (const char* f : {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512bf16", "amx-tile", "amx-bf16"})
    feats.Set(f, Napi::Boolean::New(env, cpu_has(f)));
  o.Set("cpuFeatures", feats);
  Napi::Array levels = Napi::Array::New(env);
  for (const char* l : kSimdLevels)
    if (simd_supported(l)) levels.Set(levels.Length(), Napi::String::New(env, l));
  o.Set("simdLevels", levels);
  CudaInfo c = cuda_info();
  Napi::Object cu = Napi::Object::New(env);
  cu.Set("built", Napi::Boolean::New(env, c.built));
  cu.Set("deviceCount", Napi::Number::New(env, c.deviceCount));
  cu.Set("driverVersion", Napi::Number::New(env, c.driverVersion));
  cu.Set("runtimeVersion", Napi::Number::New(env, c.runtimeVersion));
  cu.Set("deviceName", Napi::String::New(env, c.deviceName));
  cu.Set("reason", Napi::String::New(env, c.reason));
  o.Set("cuda", cu);
  return o;
}

Napi::Value SetSimd(const Napi::CallbackInfo& info) {
  Args a(info, "setSimd");
  Napi::Value v = info[0].As<Napi::Object>().Get("level");
  std::string level = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  bool known = level == "auto";
  std::string expected = "\"auto\"";
  for (int i = 0; i < kNumSimdLevels; ++i) {
    known = known || level == kSimdLevels[i];
    expected += std::string(i + 1 < kNumSimdLevels ? ", \"" : " or \"") + kSimdLevels[i] + "\"";
  }
  if (!known) a.fail("level", expected, describe_value(v));
  if (!set_simd(level)) throw_error(a.env(), kErrArg, "Expected a SIMD level this CPU supports for setSimd.level but received \"" + level + "\"");
  return Napi::String::New(a.env(), active_kernels().name);
}

}  // namespace

void register_arena_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("arenaCreate", Napi::Function::New(env, ArenaCreate, "arenaCreate"));
  exports.Set("arenaFree", Napi::Function::New(env, ArenaFree, "arenaFree"));
  exports.Set("arenaWrite", Napi::Function::New(env, ArenaWrite, "arenaWrite"));
  exports.Set("arenaRead", Napi::Function::New(env, ArenaRead, "arenaRead"));
  exports.Set("arenaCopy", Napi::Function::New(env, ArenaCopy, "arenaCopy"));
  exports.Set("arenaTotals", Napi::Function::New(env, ArenaTotals, "arenaTotals"));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  register_arena_ops(env, exports);
  register_kv_ops(env, exports);
  register_kv_gather_ops(env, exports);
  register_kivi_ops(env, exports);
  register_kivi_attend_ops(env, exports);
  register_merge_topk_ops(env, exports);
  register_host_memcpy_ops(env, exports);
  register_fma_rate_ops(env, exports);
  register_cuda_ops(env, exports);
  register_retrieval_ops(env, exports);
  register_kv_scores_ops(env, exports);
  register_cuda_device_ops(env, exports);
  register_cuda_kernel_ops(env, exports);
  register_cuda_model_ops(env, exports);
  register_cuda_attention_ops(env, exports);
  register_cuda_lowbit_ops(env, exports);
  register_partial_key_scores_ops(env, exports);
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo, "buildInfo"));
  exports.Set("setSimd", Napi::Function::New(env, SetSimd, "setSimd"));
  return exports;
}

}  // namespace kvoff

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return kvoff::Init(env, exports); }
NODE_API_MODULE(NODE_GYP_MODULE_NAME, InitModule)
