// Cephes-style polynomial exp for SIMD lanes (relative error ~1e-7), written once for any vector type
// through the V traits of the including TU. exp(x) = 2^n * p(r), x = n ln2 + r, |r| <= ln2/2.
#pragma once
#define KVOFF_EXP_CONSTS                                   \
  constexpr float kLog2e = 1.44269504088896341f;           \
  constexpr float kLn2Hi = 0.693359375f;                   \
  constexpr float kLn2Lo = -2.12194440e-4f;                \
  constexpr float kP0 = 1.9875691500e-4f;                  \
  constexpr float kP1 = 1.3981999507e-3f;                  \
  constexpr float kP2 = 8.3334519073e-3f;                  \
  constexpr float kP3 = 4.1665795894e-2f;                  \
  constexpr float kP4 = 1.6666665459e-1f;                  \
  constexpr float kP5 = 5.0000001201e-1f;                  \
  constexpr float kMaxX = 88.3762626647949f;               \
  constexpr float kMinX = -87.3365447505531f;
