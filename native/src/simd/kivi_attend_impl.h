// Vectorised attention over the KIVI low-bit tail, templated on an ISA's vector operations (Ops) and the
// bit width. Included once per ISA translation unit inside that TU's own namespace (no shared inline symbols),
// after with_gn.h.
//
// Per chunk of up to 32 tokens (inside one key group), the key codes are unpacked and dequantized once into an
// f32 block that every query head scores against; L tokens' scores come out of one transpose-reduce as a vector,
// so the running max and exp run on whole vectors. Keys are dequantized (z + s·code) before the dot product
// rather than folded into the query (q·z + (q∘s)·code): the fold cancels catastrophically when |z| is large
// next to the score (a channel clamped at -65504, say), and dequantizing once per token is shared by all heads.
// Values are dequantized one L-channel slice at a time and accumulated with FMA into the output slices of up to
// 8 heads held in registers.
#pragma once
#include <math.h>

#include <cstring>

#include "simd/kernels.h"
#include "simd/kivi_attend.h"

// acc[g0 + i] += sum over live j of p[g0 + i][j] * (vz_j + vs_j * code_j), for GN heads and every channel.
// Uniform: vz/vs are [n, D/VG] and each L-channel slice lies in one value group; else they are [n, D], per channel.
// The value is dequantized before it is weighted (not p·vz + (p·vs)·code summed apart): with a large zero the
// two sums would cancel and lose the value's low bits.
template <class Ops, int B, int GN, bool Uniform>
void kivi_accumulate(float* acc, size_t g0, size_t D, const uint8_t* vrows, size_t rowBytes, size_t n, const bool* live,
                     const float* p, size_t Cp, const float* vz, const float* vs, size_t VG) {
  using V = typename Ops::V;
  constexpr size_t L = Ops::kLanes;
  const size_t vw = Uniform ? D / VG : D;
  for (size_t c = 0; c < D; c += L) {
    V o[GN];
    for (int i = 0; i < GN; ++i) o[i] = Ops::load(acc + (g0 + i) * D + c);
    const size_t k = Uniform ? c / VG : c;  // this slice's value group, or its first channel when expanded
    for (size_t j = 0; j < n; ++j) {
      if (!live[j]) continue;
      const V code = Ops::template unpack<B>(vrows + j * rowBytes, c);
      const V z = Uniform ? Ops::set1(vz[j * vw + k]) : Ops::load(vz + j * vw + k);
      const V sc = Uniform ? Ops::set1(vs[j * vw + k]) : Ops::load(vs + j * vw + k);
      const V v = Ops::fma(code, sc, z);
      for (int i = 0; i < GN; ++i) o[i] = Ops::fma(Ops::set1(p[(g0 + i) * Cp + j]), v, o[i]);
    }
    for (int i = 0; i < GN; ++i) Ops::store(acc + (g0 + i) * D + c, o[i]);
  }
}

template <class Ops, int B>
void kivi_attend_impl(const kvoff::KiviAttnTask& t) {
  using V = typename Ops::V;
  constexpr size_t L = Ops::kLanes;
  constexpr size_t kChunk = 32;  // tokens per chunk: their unpacked keys ([32, D] f32) stay in L1 up to D 256
  const size_t D = t.D, G = t.G, KG = t.KG, VG = t.VG, vgs = D / VG, rowBytes = t.rowBytes, nex = t.nex;
  const size_t C = KG < kChunk ? KG : kChunk;  // chunks never cross a key group: one zero/scale per chunk
  const size_t Cp = (C + L - 1) / L * L;       // chunk rows rounded up to whole vectors of tokens
  const bool uniform = VG % L == 0;            // each L-channel slice lies in one value group: broadcast its zero/scale
  const size_t vw = uniform ? vgs : D;         // value zero/scale floats per token (expanded per channel otherwise)
  auto up = [](size_t n) { return (n + 15) / 16 * 16; };  // every buffer starts 64-byte aligned
  float* acc = kvoff::kernel_scratch(2 * up(G * D) + up(Cp * D) + up(G * Cp) + 2 * up(C * vw) + 2 * up(D) + 2 * up(G));
  float* qs = acc + up(G * D);  // [G, D] q * attnScale
  float* kf = qs + up(G * D);   // [Cp, D] the chunk's dequantized keys; rows past the chunk are zero
  float* s = kf + up(Cp * D);   // [G, Cp] scores, then probabilities
  float* vz = s + up(G * Cp);   // [C, vw] value zero of each token of the chunk
  float* vs = vz + up(C * vw);  // [C, vw] value scale
  float* kz = vs + up(C * vw);  // [D] the key group's zero
  float* ks = kz + up(D);       // [D] the key group's scale
  float* m = ks + up(D);        // [G] running max
  float* l = m + up(G);         // [G] running sum of exp
  for (size_t i = 0; i < G * D; ++i) {
    acc[i] = 0.f;
    qs[i] = t.q[i] * t.attnScale;
  }
  for (size_t g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  bool live[kChunk];
  size_t ex = 0;
  for (size_t kg = 0; kg < t.ng; ++kg) {
    const size_t t0 = kg * KG;
    // Skip wholly excluded groups without touching their codes or scales.
    size_t exEnd = ex;
    while (exEnd < nex && static_cast<size_t>(t.exclude[exEnd]) < t0 + KG) ++exEnd;
    if (exEnd - ex == KG) {
      ex = exEnd;
      continue;
    }
    for (size_t c = 0; c < D; c += L) {
      Ops::store(kz + c, Ops::cvt_f16(t.kZero + kg * D + c));
      Ops::store(ks + c, Ops::cvt_f16(t.kScale + kg * D + c));
    }
    for (size_t p0 = t0; p0 < t0 + KG; p0 += C) {
      const size_t n = t0 + KG - p0 < C ? t0 + KG - p0 : C;
      size_t nlive = 0;
      for (size_t j = 0; j < n; ++j) {
        const bool skip = ex < nex && static_cast<size_t>(t.exclude[ex]) == p0 + j;
        ex += skip;
        live[j] = !skip;
        nlive += !skip;
      }
      if (nlive == 0) continue;
      // Dequantize the chunk's key rows once for all heads (excluded rows too: their scores are overwritten).
      const uint8_t* krows = t.kCodes + p0 * rowBytes;
      for (size_t j = 0; j < n; ++j)
        for (size_t c = 0; c < D; c += L)
          Ops::store(kf + j * D + c, Ops::fma(Ops::template unpack<B>(krows + j * rowBytes, c), Ops::load(ks + c), Ops::load(kz + c)));
      const size_t nb = (n + L - 1) / L;  // vectors of tokens
      if (n % L) std::memset(kf + n * D, 0, (nb * L - n) * D * sizeof(float));
      for (size_t g = 0; g < G; ++g) {
        const float* qg = qs + g * D;
        for (size_t b = 0; b < nb; ++b) {
          const float* kb = kf + b * L * D;  // [L, D]
          V a[L];
          for (size_t i = 0; i < L; ++i) a[i] = Ops::zero();
          for (size_t c = 0; c < D; c += L) {
            const V qv = Ops::load(qg + c);
            for (size_t i = 0; i < L; ++i) a[i] = Ops::fma(qv, Ops::load(kb + i * D + c), a[i]);
          }
          Ops::store(s + g * Cp + b * L, Ops::reduce(a));
        }
      }
      // Excluded tokens and the padding past n carry no weight.
      for (size_t j = 0; j < nb * L; ++j)
        if (j >= n || !live[j])
          for (size_t g = 0; g < G; ++g) s[g * Cp + j] = -INFINITY;
      for (size_t g = 0; g < G; ++g) {
        float* sg = s + g * Cp;
        V mv = Ops::set1(-INFINITY);
        for (size_t b = 0; b < nb; ++b) mv = Ops::max(mv, Ops::load(sg + b * L));
        const float cm = Ops::hmax(mv);
        if (cm == -INFINITY) {  // nothing with weight here (scores overflowed to -inf)
          std::memset(sg, 0, nb * L * sizeof(float));
          continue;
        }
        const float mx = cm > m[g] ? cm : m[g];
        if (mx > m[g]) {
          const float alpha = m[g] == -INFINITY ? 0.f : expf(m[g] - mx);
          const V av = Ops::set1(alpha);
          for (size_t c = 0; c < D; c += L) Ops::store(acc + g * D + c, Ops::mul(av, Ops::load(acc + g * D + c)));
          l[g] *= alpha;
          m[g] = mx;
        }
        const V mxv = Ops::set1(mx);
        V sum = Ops::zero();
        for (size_t b = 0; b < nb; ++b) {
          const V p = Ops::exp(Ops::sub(Ops::load(sg + b * L), mxv));
          Ops::store(sg + b * L, p);
          sum = Ops::add(sum, p);
        }
        l[g] += Ops::hsum(sum);
      }
      // The chunk's value zero/scale in f32, once for all heads and slices.
      const uint16_t* zsrc = t.vZero + p0 * vgs;
      const uint16_t* ssrc = t.vScale + p0 * vgs;
      for (size_t j = 0; j < n; ++j) {
        if (!live[j]) continue;
        if (uniform) {
          for (size_t k = 0; k < vgs; ++k) {
            vz[j * vw + k] = Ops::f16(zsrc[j * vgs + k]);
            vs[j * vw + k] = Ops::f16(ssrc[j * vgs + k]);
          }
        } else {
          for (size_t c = 0; c < D; ++c) {
            vz[j * vw + c] = Ops::f16(zsrc[j * vgs + c / VG]);
            vs[j * vw + c] = Ops::f16(ssrc[j * vgs + c / VG]);
          }
        }
      }
      const uint8_t* vrows = t.vCodes + p0 * rowBytes;
      for (size_t g0 = 0; g0 < G; g0 += 8)
        with_gn(G - g0 >= 8 ? 8 : static_cast<int>(G - g0), [&](auto gn) {
          constexpr int GN = decltype(gn)::value;
          if (uniform) kivi_accumulate<Ops, B, GN, true>(acc, g0, D, vrows, rowBytes, n, live, s, Cp, vz, vs, VG);
          else kivi_accumulate<Ops, B, GN, false>(acc, g0, D, vrows, rowBytes, n, live, s, Cp, vz, vs, VG);
        });
    }
  }
  for (size_t g = 0; g < G; ++g) {
    float* o = t.out + g * D;
    if (l[g] == 0.f || m[g] == -INFINITY) {
      for (size_t c = 0; c < D; ++c) o[c] = 0.f;
      t.lse[g] = -INFINITY;
      continue;
    }
    const V inv = Ops::set1(1.f / l[g]);
    for (size_t c = 0; c < D; c += L) Ops::store(o + c, Ops::mul(inv, Ops::load(acc + g * D + c)));
    t.lse[g] = m[g] + logf(l[g]);
  }
}

// The entry for one ISA: the bit width becomes a template argument so the unpack shifts are constants.
template <class Ops>
void kivi_attend_dispatch(const kvoff::KiviAttnTask& t) {
  if (t.bits == 4) kivi_attend_impl<Ops, 4>(t);
  else if (t.bits == 2) kivi_attend_impl<Ops, 2>(t);
  else kivi_attend_impl<Ops, 1>(t);
}
