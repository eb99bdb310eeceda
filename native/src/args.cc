// Implementation of option-object argument checking shared by all native entry points.
#include "args.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace kvoff {

void throw_error(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  throw err;
}

static const char* typed_array_name(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "TypedArray";
  }
}

std::string describe_value(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? "true" : "false";
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (std::isnan(d)) return "NaN";
    char buf[64];
    snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
  }
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s.size() > 40) s = s.substr(0, 37) + "...";
    return "\"" + s + "\"";
  }
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    return std::string(typed_array_name(ta.TypedArrayType())) + "(" + std::to_string(ta.ElementLength()) + ")";
  }
  if (v.IsArrayBuffer()) return "an ArrayBuffer";
  if (v.IsArray()) return "an array";
  if (v.IsFunction()) return "a function";
  return "an object";
}

Args::Args(const Napi::CallbackInfo& info, const char* fn) : env_(info.Env()), fn_(fn) {
  if (info.Length() < 1 || !info[0].IsObject() || info[0].IsArray() || info[0].IsTypedArray()) {
    throw_error(env_, kErrArg,
                "Expected an options object for " + fn_ + "() but received " +
                    (info.Length() < 1 ? std::string("nothing") : describe_value(info[0])));
  }
  opts_ = info[0].As<Napi::Object>();
}

void Args::fail(const char* name, const std::string& expected, const std::string& received) const {
  throw_error(env_, kErrArg, "Expected " + expected + " for " + fn_ + "." + name + " but received " + received);
}

void Args::fail_range(const char* name, int64_t value, int64_t min, int64_t max) const {
  throw_error(env_, kErrRange, "Expected " + fn_ + "." + name + " in [" + std::to_string(min) + ", " +
                                   std::to_string(max) + "] but received " + std::to_string(value));
}

bool Args::has(const char* name) const {
  Napi::Value v = opts_.Get(name);
  return !v.IsUndefined() && !v.IsNull();
}

int64_t Args::integer(const char* name, int64_t min, int64_t max) const {
  Napi::Value v = opts_.Get(name);
  if (!v.IsNumber()) fail(name, "an integer", describe_value(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0) fail(name, "an integer", describe_value(v));
  int64_t i = static_cast<int64_t>(d);
  if (i < min || i > max) fail_range(name, i, min, max);
  return i;
}

int64_t Args::integer_or(const char* name, int64_t min, int64_t max, int64_t fallback) const {
  return has(name) ? integer(name, min, max) : fallback;
}

double Args::number(const char* name) const {
  Napi::Value v = opts_.Get(name);
  if (!v.IsNumber()) fail(name, "a finite number", describe_value(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) fail(name, "a finite number", describe_value(v));
  return d;
}

bool Args::boolean_or(const char* name, bool fallback) const {
  if (!has(name)) return fallback;
  Napi::Value v = opts_.Get(name);
  if (!v.IsBoolean()) fail(name, "a boolean", describe_value(v));
  return v.As<Napi::Boolean>().Value();
}

KvDtype Args::dtype(const char* name) const {
  Napi::Value v = opts_.Get(name);
  if (v.IsString()) {
    char s[8] = {};  // on the stack: "bf16" fits, anything longer is not a dtype
    size_t n = 0;
    if (napi_get_value_string_utf8(env_, v, s, sizeof s, &n) == napi_ok && n < sizeof s - 1) {
      if (std::strcmp(s, "f16") == 0) return KvDtype::F16;
      if (std::strcmp(s, "bf16") == 0) return KvDtype::BF16;
    }
  }
  fail(name, "\"f16\" or \"bf16\"", describe_value(v));
}

std::shared_ptr<Arena> Args::arena(const char* name) const {
  const int64_t h = integer(name, 1, 0xffffffffLL);
  auto a = arena_get(static_cast<uint32_t>(h));
  if (!a) throw_error(env_, kErrDisposed, "Expected a live arena for " + fn_ + "." + name + " but received handle " +
                                              std::to_string(h) + ", which is freed or was never created");
  return a;
}

static size_t elem_size(ElemType t) { return t == ElemType::F32 || t == ElemType::I32 ? 4 : t == ElemType::U16 ? 2 : 1; }
static napi_typedarray_type elem_napi(ElemType t) {
  switch (t) {
    case ElemType::F32: return napi_float32_array;
    case ElemType::I32: return napi_int32_array;
    case ElemType::U16: return napi_uint16_array;
    default: return napi_uint8_array;
  }
}

void* Args::buffer(const char* name, ElemType type, size_t count, size_t* size, std::shared_ptr<Arena>* keep) const {
  Napi::Value v = opts_.Get(name);
  // What was expected, for a message only (built lazily: this runs for every typed array of every call).
  auto want = [&]() {
    const std::string tname = typed_array_name(elem_napi(type));
    return count == SIZE_MAX ? tname : tname + "(" + std::to_string(count) + ")";
  };
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != elem_napi(type)) fail(name, want(), describe_value(v));
    size_t n = ta.ElementLength();
    if (count != SIZE_MAX && n != count) fail(name, want(), describe_value(v));
    // napi_get_typedarray_info, not ArrayBuffer().Data(): the latter fails for SharedArrayBuffer views.
    void* data = nullptr;
    if (napi_get_typedarray_info(env_, v, nullptr, nullptr, &data, nullptr, nullptr) != napi_ok)
      fail(name, want(), "a typed array whose memory could not be read");
    *size = n;
    return data;
  }
  // Arena reference: {handle, offset} with the element count implied by the shape.
  if (v.IsObject() && !v.IsArray() && count != SIZE_MAX) {
    Napi::Object ref = v.As<Napi::Object>();
    Napi::Value hv = ref.Get("handle"), ov = ref.Get("offset");
    if (!hv.IsNumber() || !ov.IsNumber()) fail(name, want() + " or an arena reference {handle, offset}", describe_value(v));
    double hd = hv.As<Napi::Number>().DoubleValue(), od = ov.As<Napi::Number>().DoubleValue();
    if (hd != std::floor(hd) || od != std::floor(od) || hd < 1 || od < 0 || od > 9007199254740991.0)
      fail(name, "an arena reference with integer handle >= 1 and offset >= 0", "handle " + describe_value(hv) + ", offset " + describe_value(ov));
    auto a = arena_get(static_cast<uint32_t>(hd));
    if (!a) throw_error(env_, kErrDisposed, "Expected a live arena for " + fn_ + "." + name + " but received handle " + describe_value(hv) + ", which is freed");
    const size_t off = static_cast<size_t>(od);
    const size_t es = elem_size(type);
    if (off % es != 0) fail(name, "an offset aligned to " + std::to_string(es) + " bytes", std::to_string(off));
    if (count > (a->bytes - std::min(off, a->bytes)) / es)
      throw_error(env_, kErrRange, "Expected " + fn_ + "." + name + " to fit in its arena (" + std::to_string(a->bytes) +
                                       " bytes) but offset " + std::to_string(off) + " + " + std::to_string(count * es) + " bytes runs past the end");
    *size = count;
    *keep = a;
    return a->ptr + off;
  }
  fail(name, want(), describe_value(v));
}

#define KVOFF_SPAN(method, T, ET)                                  \
  Span<T> Args::method(const char* name, size_t count) const {     \
    Span<T> s;                                                     \
    s.data = static_cast<T*>(buffer(name, ET, count, &s.size, &s.keep)); \
    return s;                                                      \
  }
KVOFF_SPAN(f32, float, ElemType::F32)
KVOFF_SPAN(i32, int32_t, ElemType::I32)
KVOFF_SPAN(u8, uint8_t, ElemType::U8)
KVOFF_SPAN(u16, uint16_t, ElemType::U16)
#undef KVOFF_SPAN

size_t mul_checked(const Args& a, const char* what, size_t x, size_t y) {
  if (x != 0 && y > std::numeric_limits<size_t>::max() / x) a.fail(what, "a size that fits in memory", std::to_string(x) + " x " + std::to_string(y));
  return x * y;
}

}  // namespace kvoff
