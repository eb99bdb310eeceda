// The live tokens of a run of at most kMaxLive, gathered for the value sums: their V rows and, token-major, the
// probabilities of GN query heads. Included inside an ISA's namespace (the AVX2 kernels, and the AVX-512 patch in
// bench/native); no intrinsics here.
#pragma once
constexpr int kMaxLive = 32;
// From tokens [j0, j0 + m) (m <= kMaxLive): vrow[t] = token's V row (D values after its K row), pt [t, GN] = p of
// heads g0.. for it. Returns how many are live. Token-major so that a broadcast is one pointer plus a constant
// where p [G, C] needed an index computation a broadcast.
template <int GN>
inline int gather_live(const uint8_t* rows, size_t rowBytes, int D, int j0, int m, const bool* live, const float* p, int g0, int C, const uint16_t** vrow, float* pt) {
  int nl = 0;
  for (int j = j0; j < j0 + m; ++j) {
    if (!live[j]) continue;
    vrow[nl] = reinterpret_cast<const uint16_t*>(rows + j * rowBytes) + D;
    for (int i = 0; i < GN; ++i) pt[nl * GN + i] = p[(g0 + i) * C + j];
    ++nl;
  }
  return nl;
}
