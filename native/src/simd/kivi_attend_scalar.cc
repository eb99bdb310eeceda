// Scalar kernel of attention over the KIVI low-bit tail: plain loops and table unpacking, any headDim.
// The fallback when the CPU (or KVOFF_SIMD) allows no vector level, or the shape does not suit one.
#include <cmath>
#include <cstring>

#include "half.h"
#include "kivi_unpack.h"
#include "simd/kernels.h"
#include "simd/kivi_attend.h"

namespace kvoff {
namespace {

// out = z + s * code elementwise, rounded as kivi_dequant rounds it. restrict: the rows share one scratch
// buffer, and without it the compiler will not vectorise the loop.
void dequant_row(float* __restrict out, const float* __restrict z, const float* __restrict s, const float* __restrict code, size_t n) {
  for (size_t c = 0; c < n; ++c) out[c] = z[c] + s[c] * code[c];
}

}  // namespace

void kivi_attend_scalar(const KiviAttnTask& jb) {
  const int bits = jb.bits;
  const size_t D = jb.D, rowBytes = jb.rowBytes, KG = jb.KG, VG = jb.VG, ng = jb.ng, G = jb.G, vgs = D / VG, nex = jb.nex;
  const float attnScale = jb.attnScale;
  // Chunks of at most C tokens, never crossing a key group: one max/rescale per chunk.
  const size_t C = KG < 64 ? KG : 64;
  float* acc = kernel_scratch(G * D + G * C + 4 * D + 2 * G);  // [G, D] unnormalised output
  float* s = acc + G * D;   // [G, C] scores, then probabilities
  float* cf = s + G * C;    // [D] one row's codes
  float* vf = cf + D;       // [D] one dequantized key or value row
  float* kz = vf + D;       // [D] the key group's zero in f32
  float* ks = kz + D;       // [D] the key group's scale in f32
  float* m = ks + D;        // [G] running max
  float* l = m + G;         // [G] running sum of exp
  for (size_t i = 0; i < G * D; ++i) acc[i] = 0.f;
  for (size_t g = 0; g < G; ++g) { m[g] = -INFINITY; l[g] = 0.f; }
  bool live[64];
  size_t ex = 0;
  for (size_t kg = 0; kg < ng; ++kg) {
    const size_t t0 = kg * KG;
    // Skip wholly excluded groups without touching their scales.
    size_t exEnd = ex;
    while (exEnd < nex && static_cast<size_t>(jb.exclude[exEnd]) < t0 + KG) ++exEnd;
    if (exEnd - ex == KG) { ex = exEnd; continue; }
    for (size_t c = 0; c < D; ++c) {
      kz[c] = f16_to_f32(jb.kZero[kg * D + c]);
      ks[c] = f16_to_f32(jb.kScale[kg * D + c]);
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
        // Dequantize the key row once for all heads, as kivi_dequant does; folding z and s into q instead
        // (q·z + (q∘s)·code) cancels catastrophically when |z| is large next to the score.
        kivi_unpack_row(jb.kCodes + (p0 + j) * rowBytes, rowBytes, bits, cf);
        dequant_row(vf, kz, ks, cf, D);
        for (size_t g = 0; g < G; ++g) s[g * C + j] = kivi_dot8(jb.q + g * D, vf, D) * attnScale;
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
        for (size_t jg = 0; jg < vgs; ++jg) {
          const float zz = f16_to_f32(jb.vZero[t * vgs + jg]), ss = f16_to_f32(jb.vScale[t * vgs + jg]);
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

}  // namespace kvoff
