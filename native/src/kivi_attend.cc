// Exact attention of one GQA query group over a range of KIVI-quantized tokens (the low-bit tail),
// returning (o, lse) like kvAttend so that it merges by log-sum-exp with the full-precision parts.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "kivi.h"
#include "kivi_unpack.h"
#include "ops.h"

namespace kvoff {
namespace {

// One call's validated inputs; pointers into the caller's typed arrays or arenas.
struct Job {
  int bits;
  size_t D, rowBytes, KG, VG, ng, G;
  float attnScale;
  const float *q, *kZero, *kScale, *vZero, *vScale;
  const uint8_t *kCodes, *vCodes;
  const int32_t* exclude;
  size_t nex;
  float *out, *lse;
  float* scratch;  // [2 G D + G + G C + 2 D + 2 G], C = min(KG, 64)
};

// The kernel proper, over validated inputs. Built for the SSE2 baseline: GCC's target_clones
// (avx2/avx512f) of it measured 1.5-2x slower here, so ISA variants would belong in simd/.
void attend_core(const Job& jb) {
  const int bits = jb.bits;
  const size_t D = jb.D, rowBytes = jb.rowBytes, KG = jb.KG, VG = jb.VG, ng = jb.ng, G = jb.G, vgs = D / VG, nex = jb.nex;
  const float attnScale = jb.attnScale;
  // Chunks of at most C tokens, never crossing a key group: one max/rescale per chunk.
  const size_t C = KG < 64 ? KG : 64;
  float* acc = jb.scratch;  // [G, D] unnormalised output
  float* w = acc + G * D;   // [G, D] q ∘ keyScale of the current key group
  float* bias = w + G * D;  // [G] q · keyZero of the current key group
  float* s = bias + G;      // [G, C] scores, then probabilities
  float* cf = s + G * C;    // [D] one row's codes
  float* vf = cf + D;       // [D] one dequantized value row
  float* m = vf + D;        // [G] running max
  float* l = m + G;         // [G] running sum of exp
  for (size_t g = 0; g < G; ++g) { m[g] = -INFINITY; l[g] = 0.f; }
  bool live[64];
  size_t ex = 0;
  for (size_t kg = 0; kg < ng; ++kg) {
    const size_t t0 = kg * KG;
    // Skip wholly excluded groups without touching their scales.
    size_t exEnd = ex;
    while (exEnd < nex && static_cast<size_t>(jb.exclude[exEnd]) < t0 + KG) ++exEnd;
    if (exEnd - ex == KG) { ex = exEnd; continue; }
    // q·(z + s∘code) = q·z + (q∘s)·code: the group's zero and scale fold into the query once.
    const float* z = jb.kZero + kg * D;
    const float* sc = jb.kScale + kg * D;
    for (size_t g = 0; g < G; ++g) {
      const float* qg = jb.q + g * D;
      bias[g] = kivi_dot8(qg, z, D);
      for (size_t c = 0; c < D; ++c) w[g * D + c] = qg[c] * sc[c];
    }
    for (size_t p0 = t0; p0 < t0 + KG; p0 += C) {
      const size_t n = t0 + KG - p0 < C ? t0 + KG - p0 : C;
      size_t nlive = 0;
      for (size_t j = 0; j < n; ++j) {
        const bool skip = ex < nex && static_cast<size_t>(jb.exclude[ex]) == p0 + j;
        ex += skip;
        live[j] = !skip;
        nlive += !skip;
        if (skip) {
          for (size_t g = 0; g < G; ++g) s[g * C + j] = -INFINITY;
          continue;
        }
        kivi_unpack_row(jb.kCodes + (p0 + j) * rowBytes, rowBytes, bits, cf);
        for (size_t g = 0; g < G; ++g) s[g * C + j] = (bias[g] + kivi_dot8(w + g * D, cf, D)) * attnScale;
      }
      if (nlive == 0) continue;
      for (size_t g = 0; g < G; ++g) {
        float* sg = s + g * C;
        float cm = -INFINITY;
        for (size_t j = 0; j < n; ++j) cm = sg[j] > cm ? sg[j] : cm;
        if (cm == -INFINITY) {  // nothing with weight here (scores underflowed to -inf)
          for (size_t j = 0; j < n; ++j) sg[j] = 0.f;
          continue;
        }
        const float mn = cm > m[g] ? cm : m[g];
        if (mn > m[g]) {
          const float alpha = m[g] == -INFINITY ? 0.f : std::exp(m[g] - mn);
          for (size_t c = 0; c < D; ++c) acc[g * D + c] *= alpha;
          l[g] *= alpha;
          m[g] = mn;
        }
        float sum = 0.f;
        for (size_t j = 0; j < n; ++j) {
          sg[j] = std::exp(sg[j] - mn);
          sum += sg[j];
        }
        l[g] += sum;
      }
      for (size_t j = 0; j < n; ++j) {
        if (!live[j]) continue;
        const size_t t = p0 + j;
        // Dequantize the value row once for all G heads: (z + s·code), as kivi_dequant rounds it.
        kivi_unpack_row(jb.vCodes + t * rowBytes, rowBytes, bits, cf);
        const float* vz = jb.vZero + t * vgs;
        const float* vs = jb.vScale + t * vgs;
        for (size_t jg = 0; jg < vgs; ++jg) {
          const float zz = vz[jg], ss = vs[jg];
          for (size_t c = jg * VG; c < (jg + 1) * VG; ++c) vf[c] = zz + ss * cf[c];
        }
        for (size_t g = 0; g < G; ++g) {
          const float p = s[g * C + j];
          if (p == 0.f) continue;
          float* ag = acc + g * D;
          for (size_t c = 0; c < D; ++c) ag[c] += p * vf[c];
        }
      }
    }
  }
  for (size_t g = 0; g < G; ++g) {
    float* o = jb.out + g * D;
    if (l[g] == 0.f || m[g] == -INFINITY) {
      for (size_t c = 0; c < D; ++c) o[c] = 0.f;
      jb.lse[g] = -INFINITY;
      continue;
    }
    const float inv = 1.f / l[g];
    for (size_t c = 0; c < D; ++c) o[c] = acc[g * D + c] * inv;
    jb.lse[g] = m[g] + std::log(l[g]);
  }
}

// o [G, D], lse [G] over tokens [0, numGroups * keyGroupSize) minus `exclude`.
// Keys:   codes [numGroups, keyGroupSize, D*b/8], zero/scale [numGroups, D]   (per channel)
// Values: codes [numTokens, D*b/8],               zero/scale [numTokens, D/vg] (per token)
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
  auto kZero = a.f32("keyZero", mul_checked(a, "keyZero", ng, D));          // [numGroups, D]
  auto kScale = a.f32("keyScale", ng * D);                                   // [numGroups, D]
  const size_t vgs = D / VG;
  auto vCodes = a.u8("valueCodes", N * rowBytes);  // [N, D*b/8]
  auto vZero = a.f32("valueZero", N * vgs);        // [N, D/VG]
  auto vScale = a.f32("valueScale", N * vgs);      // [N, D/VG]
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

  const size_t C = KG < 64 ? KG : 64;
  std::vector<float> scratch(2 * G * D + G + G * C + 2 * D + 2 * G);
  Job job{bits, D, rowBytes, KG, VG, ng, G, attnScale, q.data, kZero.data, kScale.data, vZero.data, vScale.data,
          kCodes.data, vCodes.data, exclude.data, exclude.size, out.data, lse.data, scratch.data()};
  attend_core(job);
  return a.env().Undefined();
}

}  // namespace

void register_kivi_attend_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("kiviAttend", Napi::Function::New(env, KiviAttend, "kiviAttend"));
}

}  // namespace kvoff
