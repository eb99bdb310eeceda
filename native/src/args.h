// Argument checking for native entry points: every entry takes one options object, and every
// bad field throws a JS Error whose code and message follow "Expected X for fn.field but received Z".
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "arena.h"
#include "half.h"

namespace kvoff {

// Error codes shared with src/errors.ts.
constexpr const char* kErrArg = "KVOFF_E_ARG";
constexpr const char* kErrRange = "KVOFF_E_RANGE";
constexpr const char* kErrDisposed = "KVOFF_E_DISPOSED";
constexpr const char* kErrCapacity = "KVOFF_E_CAPACITY";

[[noreturn]] void throw_error(Napi::Env env, const char* code, const std::string& message);
std::string describe_value(const Napi::Value& v);

enum class ElemType { F32, I32, U8, U16 };

// A span of elements: either inside a JS typed array or inside a host arena.
// `keep` holds an arena alive for as long as the span is used.
template <typename T>
struct Span {
  T* data = nullptr;
  size_t size = 0;
  std::shared_ptr<Arena> keep;
};

class Args {
 public:
  Args(const Napi::CallbackInfo& info, const char* fn);
  Napi::Env env() const { return env_; }
  bool has(const char* name) const;
  int64_t integer(const char* name, int64_t min, int64_t max) const;
  int64_t integer_or(const char* name, int64_t min, int64_t max, int64_t fallback) const;
  double number(const char* name) const;
  bool boolean_or(const char* name, bool fallback) const;
  KvDtype dtype(const char* name) const;
  std::shared_ptr<Arena> arena(const char* name) const;
  // A typed array of the given element type (or an arena reference {handle, offset}) of exactly
  // `count` elements; count = SIZE_MAX accepts any length.
  Span<float> f32(const char* name, size_t count) const;
  Span<int32_t> i32(const char* name, size_t count) const;
  Span<uint8_t> u8(const char* name, size_t count) const;
  Span<uint16_t> u16(const char* name, size_t count) const;
  [[noreturn]] void fail(const char* name, const std::string& expected, const std::string& received) const;
  [[noreturn]] void fail_range(const char* name, int64_t value, int64_t min, int64_t max) const;

 private:
  void* buffer(const char* name, ElemType type, size_t count, size_t* size, std::shared_ptr<Arena>* keep) const;
  Napi::Env env_;
  Napi::Object opts_;
  std::string fn_;
};

// Checked size arithmetic: a*b that throws on overflow.
size_t mul_checked(const Args& a, const char* what, size_t x, size_t y);

}  // namespace kvoff
