// KIVI low-bit quantization primitives, bit-exact with src/kernels/kivi.ts (fp32 arithmetic, no FMA).
#pragma once
#include <cmath>
#include <cstdint>

#include "half.h"

namespace kvoff {

// zero = min, scale = (max - min) / (2^b - 1); at 1 bit SpeCache's fix:
// zero = (3 min + max) / 4, scale = (max - min) / 2, so the two levels sit at the quartiles.
static inline void kivi_params(float mn, float mx, int bits, float* zero, float* scale) {
  if (bits == 1) {
    *zero = (3.0f * mn + mx) * 0.25f;
    *scale = (mx - mn) * 0.5f;
  } else {
    *zero = mn;
    *scale = (mx - mn) / static_cast<float>((1 << bits) - 1);
  }
}

// Zero and scale are stored as fp16 (as KIVI does: half the metadata bytes of f32). fp16's largest finite value
// bounds them: beyond +-65504 they are clamped (a group that wide is not representable anyway); NaN is stored as
// the canonical quiet NaN 0x7e00 so that the native and TypeScript encodings agree bit for bit.
constexpr float kKiviMetaMax = 65504.0f;

static inline uint16_t kivi_meta_f16(float v) {
  if (v != v) return 0x7e00u;
  return f32_to_f16(v > kKiviMetaMax ? kKiviMetaMax : (v < -kKiviMetaMax ? -kKiviMetaMax : v));
}

// The stored parameters of a group with range [mn, mx]: kivi_params in f32, then each rounded to fp16 (nearest
// even, clamped). zf/sf are the rounded values in f32: codes are computed from them, so that dequantization
// (zf + sf * code) lands on the level the code was chosen for. A scale below fp16's smallest subnormal becomes
// 0 and every code of the group 0 (the group then dequantizes to its zero).
static inline void kivi_params_f16(float mn, float mx, int bits, uint16_t* zero, uint16_t* scale, float* zf, float* sf) {
  float z, s;
  kivi_params(mn, mx, bits, &z, &s);
  *zero = kivi_meta_f16(z);
  *scale = kivi_meta_f16(s);
  *zf = f16_to_f32(*zero);
  *sf = f16_to_f32(*scale);
}

static inline int kivi_code(float x, float zero, float scale, int bits) {
  const int levels = (1 << bits) - 1;
  if (!(scale > 0.0f)) return 0;
  const float v = std::floor((x - zero) / scale + 0.5f);
  if (!(v >= 0.0f)) return 0;  // also NaN
  return v > static_cast<float>(levels) ? levels : static_cast<int>(v);
}

static inline float kivi_dequant(int code, float zero, float scale) { return zero + scale * static_cast<float>(code); }

// Packed rows: element i of a row occupies bits [(i*b) % 8, +b) of byte (i*b) / 8, little-endian.
static inline void kivi_put(uint8_t* row, int i, int bits, int code) {
  const int bit = i * bits;
  row[bit >> 3] = static_cast<uint8_t>(row[bit >> 3] | (code << (bit & 7)));
}
static inline int kivi_get(const uint8_t* row, int i, int bits) {
  const int bit = i * bits;
  return (row[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

}  // namespace kvoff
