// Exact attention of one GQA query group over a range of KIVI-quantized tokens (the low-bit tail),
// returning (o, lse) like kvAttend so that it merges by log-sum-exp with the full-precision parts.
#include <cstdint>
#include <string>

#include "args.h"
#include "ops.h"
#include "simd/kernels.h"
#include "simd/kivi_attend.h"

namespace kvoff {
namespace {

// The kernel for the active SIMD level (KVOFF_SIMD / setSimd pick the table; this follows it), falling
// back to a narrower one where the shape does not fit the vector width.
using KiviAttendFn = void (*)(const KiviAttnTask&);
KiviAttendFn pick_kernel(size_t D) {
  const KernelTable* t = &active_kernels();
  if (t->width == SimdWidth::Avx512 && D % 16 == 0) return kivi_attend_avx512;
  if (t->width != SimdWidth::Scalar && D % 8 == 0) return kivi_attend_avx2;
  return kivi_attend_scalar;
}

// o [G, D], lse [G] over tokens [0, numGroups * keyGroupSize) minus `exclude`.
// Keys:   codes [numGroups, keyGroupSize, D*b/8], zero/scale fp16 [numGroups, D]   (per channel)
// Values: codes [numTokens, D*b/8],               zero/scale fp16 [numTokens, D/vg] (per token)
Napi::Value KiviAttend(const Napi::CallbackInfo& info) {
  Args a(info, "kiviAttend");
  const int bits = static_cast<int>(a.integer("bits", 1, 4));
  if (bits == 3) a.fail("bits", "1, 2 or 4", "3");
  const int headDim = static_cast<int>(a.integer("headDim", 1, 4096));
  if ((headDim * bits) % 8 != 0)
    a.fail("headDim", "a multiple of " + std::to_string(8 / bits) + " at " + std::to_string(bits) + " bits", std::to_string(headDim));
  const size_t D = static_cast<size_t>(headDim), rowBytes = D * bits / 8;
  const size_t KG = static_cast<size_t>(a.integer("keyGroupSize", 1, 4096));
  const size_t VG = static_cast<size_t>(a.integer("valueGroupSize", 1, 4096));
  if (D % VG != 0) a.fail("valueGroupSize", "a divisor of headDim " + std::to_string(D), std::to_string(VG));
  const size_t ng = static_cast<size_t>(a.integer("numGroups", 0, 1 << 30));
  const size_t N = ng * KG;  // <= 2^42: no overflow
  if (N > static_cast<size_t>(INT32_MAX)) a.fail("numGroups", "at most " + std::to_string(INT32_MAX / KG) + " key groups of " + std::to_string(KG) + " tokens", std::to_string(ng));
  const size_t G = static_cast<size_t>(a.integer("queryHeads", 1, 256));
  auto q = a.f32("q", G * D);  // [G, D]
  const float attnScale = static_cast<float>(a.number("scale"));
  auto kCodes = a.u8("keyCodes", mul_checked(a, "keyCodes", N, rowBytes));  // [numGroups, KG, D*b/8]
  auto kZero = a.u16("keyZero", mul_checked(a, "keyZero", ng, D));          // fp16 [numGroups, D]
  auto kScale = a.u16("keyScale", ng * D);                                   // fp16 [numGroups, D]
  const size_t vgs = D / VG;
  auto vCodes = a.u8("valueCodes", N * rowBytes);  // [N, D*b/8]
  auto vZero = a.u16("valueZero", N * vgs);        // fp16 [N, D/VG]
  auto vScale = a.u16("valueScale", N * vgs);      // fp16 [N, D/VG]
  Span<int32_t> exclude;
  if (a.has("exclude")) {
    exclude = a.i32("exclude", SIZE_MAX);
    for (size_t i = 0; i < exclude.size; ++i) {
      if (exclude.data[i] < 0 || static_cast<size_t>(exclude.data[i]) >= N) a.fail_range("exclude", exclude.data[i], 0, static_cast<int64_t>(N) - 1);
      if (i > 0 && exclude.data[i] <= exclude.data[i - 1])
        a.fail("exclude", "strictly increasing positions", std::to_string(exclude.data[i - 1]) + " then " + std::to_string(exclude.data[i]));
    }
  }
  auto out = a.f32("out", G * D);  // [G, D]
  auto lse = a.f32("lse", G);      // [G]

  KiviAttnTask task{bits, D, rowBytes, KG, VG, ng, G, attnScale, q.data, kCodes.data, kZero.data, kScale.data,
                    vCodes.data, vZero.data, vScale.data, exclude.data, exclude.size, out.data, lse.data};
  pick_kernel(D)(task);
  return a.env().Undefined();
}

}  // namespace

void register_kivi_attend_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("kiviAttend", Napi::Function::New(env, KiviAttend, "kiviAttend"));
}

}  // namespace kvoff
