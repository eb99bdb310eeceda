// CPU run of the CUDA kernels' per-thread bodies (cuda_kernels.cuh is __host__ __device__): every (block, thread) of a
// launch executed in a loop, so the gather's and the GEMV's index arithmetic is checked on machines without a GPU.
// Built and run by test/cuda-kernel-sim.test.ts when nvcc is present; prints one line per case and "ALL OK".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <random>
#include <algorithm>
#include "cuda/cuda_kernels.cuh"
using namespace kvoff;

static std::mt19937 rng(1);

// Copies `units` random units into permuted destination rows through gather_thread, and compares with memcpy.
template <typename V>
bool sim_gather(uint32_t rowBytes, uint32_t unitRows, uint32_t units, uint32_t srcRows, uint32_t dstRows, int srcMis, int dstMis) {
  std::vector<uint8_t> src(srcRows * rowBytes + 64), dst(dstRows * rowBytes + 64, 0xAB), want;
  for (auto& b : src) b = rng();
  std::vector<uint2> table(units);
  std::vector<uint32_t> perm(dstRows / unitRows);
  for (uint32_t i = 0; i < perm.size(); i++) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  for (uint32_t u = 0; u < units; u++) { table[u].x = (rng() % (srcRows / unitRows)) * unitRows; table[u].y = perm[u] * unitRows; }
  want = dst;
  uint8_t* S = src.data() + srcMis; uint8_t* D = dst.data() + dstMis;
  for (uint32_t u = 0; u < units; u++) memcpy(want.data() + dstMis + (size_t)table[u].y * rowBytes, S + (size_t)table[u].x * rowBytes, unitRows * rowBytes);
  GatherParams p{S, D, table.data(), units, unitRows * rowBytes, rowBytes};
  int vec = gather_vec_bytes((uintptr_t)S, (uintptr_t)D, rowBytes);
  if (vec != (int)sizeof(V)) { printf("vec mismatch %d vs %zu\n", vec, sizeof(V)); return false; }
  uint64_t total = (uint64_t)units * (p.unitBytes / sizeof(V));
  uint32_t blocks = (total + kGatherThreads * kGatherIlp - 1) / (kGatherThreads * kGatherIlp);
  for (uint32_t b = 0; b < blocks; b++) for (uint32_t t = 0; t < kGatherThreads; t++) gather_thread<V>(p, b, t, kGatherThreads);
  bool ok = dst == want;
  printf("gather V=%zu rowBytes=%u unitRows=%u units=%u blocks=%u: %s\n", sizeof(V), rowBytes, unitRows, units, blocks, ok ? "ok" : "MISMATCH");
  return ok;
}

// One warp at a time: 32 lanes of gemv_lane, then the same xor butterfly as __shfl_xor_sync; also gemv_lane_any.
template <int R, int U>
bool sim_gemv(int rows, int cols) {
  std::vector<uint16_t> w((size_t)rows * cols + 16);
  std::vector<float> xbuf(cols + 8);
  uint16_t* W = (uint16_t*)(((uintptr_t)w.data() + 15) & ~(uintptr_t)15);
  float* X = (float*)(((uintptr_t)xbuf.data() + 15) & ~(uintptr_t)15);
  std::normal_distribution<float> nd;
  for (size_t i = 0; i < (size_t)rows * cols; i++) { float f = nd(rng); uint32_t u; memcpy(&u, &f, 4); W[i] = u >> 16; }
  for (int i = 0; i < cols; i++) X[i] = nd(rng);
  double worst = 0;
  for (int64_t warp = 0; warp * R < rows; warp++) {
    float lanes[32][R];
    for (int l = 0; l < 32; l++) gemv_lane<R, U>(W, X, rows, cols, warp * R, l, lanes[l]);
    for (int r = 0; r < R; r++) {
      int64_t row = warp * R + r; if (row >= rows) continue;
      // butterfly like __shfl_xor_sync
      float v[32]; for (int l = 0; l < 32; l++) v[l] = lanes[l][r];
      for (int o = 16; o > 0; o >>= 1) { float n[32]; for (int l = 0; l < 32; l++) n[l] = v[l] + v[l ^ o]; memcpy(v, n, sizeof v); }
      double ref = 0, mag = 0;
      for (int k = 0; k < cols; k++) { uint32_t u = (uint32_t)W[row * cols + k] << 16; float f; memcpy(&f, &u, 4); ref += (double)f * X[k]; mag += fabs((double)f * X[k]); }
      worst = std::max(worst, fabs(v[0] - ref) / (mag + 1e-30));
      float any[32]; for (int l = 0; l < 32; l++) any[l] = gemv_lane_any(W, X, cols, row, l);
      double s = 0; for (int l = 0; l < 32; l++) s += any[l];
      worst = std::max(worst, fabs(s - ref) / (mag + 1e-30));
    }
  }
  bool ok = worst < 1e-5;
  printf("gemv R=%d U=%d rows=%d cols=%d: worst rel %.3g %s\n", R, U, rows, cols, worst, ok ? "ok" : "BAD");
  return ok;
}

int main() {
  bool ok = true;
  ok &= sim_gather<uint4>(256, 1, 1, 64, 64, 0, 0);
  ok &= sim_gather<uint4>(256, 1, 700, 4096, 1024, 0, 0);
  ok &= sim_gather<uint4>(512, 2, 333, 4096, 1024, 0, 0);
  ok &= sim_gather<uint4>(512, 4, 129, 4096, 1024, 0, 0);
  ok &= sim_gather<uint2>(24, 1, 50, 200, 100, 8, 0);
  ok &= sim_gather<unsigned int>(256, 2, 77, 1000, 400, 4, 0);
  ok &= sim_gather<unsigned short>(320, 1, 99, 1000, 200, 2, 6);
  ok &= sim_gemv<1, 4>(5, 8);
  ok &= sim_gemv<1, 4>(3, 1000);
  ok &= sim_gemv<1, 4>(7, 4096);
  ok &= sim_gemv<2, 4>(9, 1032);
  ok &= sim_gemv<4, 2>(13, 264);
  ok &= sim_gemv<4, 2>(3, 14336);
  printf(ok ? "ALL OK\n" : "FAILURES\n");
  return ok ? 0 : 1;
}
