// Scalar fallback kernels: plain loops, no ISA extensions.
#include <cmath>

#include "simd/kernels.h"
#include "simd/prefetch_cursor.h"

namespace kvoff_scalar {
struct Ops {
  static constexpr int kLanes = 0;  // no fast path: the generic row loop is the scalar kernel
  static constexpr bool kPermBf16 = false;
  static constexpr bool kSplitSoftmax = false;
  static constexpr bool kBlockedQ = false;
  static constexpr int kLongChunksFromG = 8;
  template <bool BF16>
  static void scores(const float*, int, int, const uint8_t*, size_t, int, const bool*, float, float*, int, kvoff::PrefetchCursor&) {}
  template <bool BF16>
  static void accumulate(float*, int, int, const uint8_t*, size_t, int, const bool*, const float*, int, kvoff::PrefetchCursor&) {}
  static void load_f16(float* d, const uint16_t* s, int n) { for (int i = 0; i < n; ++i) d[i] = kvoff::f16_to_f32(s[i]); }
  static void load_bf16(float* d, const uint16_t* s, int n) { for (int i = 0; i < n; ++i) d[i] = kvoff::bf16_to_f32(s[i]); }
  static float dot(const float* a, const float* b, int n) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int i = 0;
    for (; i + 4 <= n; i += 4) { s0 += a[i] * b[i]; s1 += a[i + 1] * b[i + 1]; s2 += a[i + 2] * b[i + 2]; s3 += a[i + 3] * b[i + 3]; }
    for (; i < n; ++i) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
  }
  static void axpy(float* y, float a, const float* x, int n) { for (int i = 0; i < n; ++i) y[i] += a * x[i]; }
  static void scal(float* y, float a, int n) { for (int i = 0; i < n; ++i) y[i] *= a; }
  static float max_n(const float* x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }
  // x[i] = exp(x[i] - shift); returns the sum of the new x.
  static float exp_shift_sum(float* x, int n, float shift) {
    float sum = 0.f;
    for (int i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - shift));
    return sum;
  }
};
#include "simd/attention_impl.h"

// The scalar level's multiply-adds, written as its kernel writes them (a multiply, then an add: no FMA in this
// translation unit's flags); the compiler may pack the 12 chains into SSE, as it may the kernel's loops.
#include "simd/fma_burst.h"
double fma_burst(long rounds, float* sink) {
  return fma_burst_chains<float, 12, 1>(rounds, sink, [](float v) { return v; }, [](float a, float x, float y) { return a * x + y; },
      [](float a, float b) { return a + b; }, [](float a) { return a; });
}
}  // namespace kvoff_scalar

namespace kvoff {
const KernelTable& kernels_scalar() {
  static const KernelTable table{"scalar", &kvoff_scalar::attend_head_impl<kvoff_scalar::Ops>, SimdWidth::Scalar, &kvoff_scalar::fma_burst};
  return table;
}
}  // namespace kvoff
