// KernelTable::fma_burst for one ISA: K independent register-only multiply-add chains of vector V (Lanes floats),
// `rounds` steps each. Included inside each ISA's namespace with its intrinsics passed as callables (inlined).
#pragma once

// a -> a*x + y with x = 0.999, y = 0.001 settles at 1: no subnormals or infinities however long it runs, and the
// chains' sum (*sink) ends near K x Lanes, which a test checks.
template <class V, int K, int Lanes, class Set1, class Fma, class Add, class Sum>
inline double fma_burst_chains(long rounds, float* sink, Set1 set1, Fma fma, Add add, Sum sum) {
  V a[K];
  for (int i = 0; i < K; ++i) a[i] = set1(1.f + 0.001f * i);
  const V x = set1(0.999f), y = set1(0.001f);
  for (long r = 0; r < rounds; ++r)
#pragma GCC unroll 16
    for (int i = 0; i < K; ++i) a[i] = fma(a[i], x, y);
  for (int i = 1; i < K; ++i) a[0] = add(a[0], a[i]);
  *sink = sum(a[0]);
  return static_cast<double>(rounds) * K * Lanes;
}
