// One-thread timing of the attention kernel tables (avx512, then amx where the CPU and OS allow it), 8 KV heads of
// bf16 (DT=f16: fp16) K/V in shuffled blocks (128 MiB by default: from DRAM), with single-thread memcpy measured first.
// Build and run: bash bench/native/attention-harness.sh [ONLY=8064,16128] [MB=1 for K/V in L2] [BS=16] [DT=f16]
// [TABLES=avx2,avx512] [REPS=9: timed calls a row; more for a profiler] [PICK=min: the fastest call, not the median]
// Each row ends with KV head 0's error: its largest difference from an fp64 reference, relative to the largest
// value. XF=-DKVOFF_AMX_EMULATE runs the amx table on scalar tile stand-ins (amx_emulate.h) on any AVX-512-BF16 CPU:
// a check of the AMX code, not a timing.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <random>
#include <string>
#include <vector>
#include <sys/mman.h>
#include "simd/kernels.h"
int main() {
  const int H = 8, BS = getenv("BS") ? atoi(getenv("BS")) : 32;
  const bool f16 = getenv("DT") && !strcmp(getenv("DT"), "f16");
  const kvoff::KvDtype dt = f16 ? kvoff::KvDtype::F16 : kvoff::KvDtype::BF16;
#ifdef KVOFF_AMX_EMULATE  // XF=-DKVOFF_AMX_EMULATE: the amx table on scalar tile stand-ins, to check it without AMX
  const bool amxOk = true;
#else
  const bool amxOk = kvoff::simd_supported("amx");
#endif
  printf("amx supported: %d\n", amxOk);
  double mc;
  {
    size_t mb = size_t(256) << 20;
    char* a = (char*)mmap(nullptr, mb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char* b = (char*)mmap(nullptr, mb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(a, 1, mb); memset(b, 2, mb);
    std::vector<double> ts;
    for (int r = 0; r < 7; r++) { auto t0 = std::chrono::steady_clock::now(); memcpy(b, a, mb); ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()); }
    std::sort(ts.begin(), ts.end());
    mc = mb / ts[3] / 1e9;
    printf("memcpy %.2f GB/s\n", mc);
    munmap(a, mb); munmap(b, mb);
  }
  const char* only = getenv("ONLY");
  int shapes[][2] = {{8, 64}, {8, 128}, {7, 64}, {7, 128}, {6, 128}, {5, 128}, {4, 64}, {4, 128}, {12, 128}, {16, 64}, {16, 128}, {1, 64}, {1, 128}};
  for (auto& sh : shapes) {
    const int G = sh[0], D = sh[1];
    if (only && !strstr((std::string(",") + only + ",").c_str(), ("," + std::to_string(G * 1000 + D) + ",").c_str())) continue;
    const size_t target = size_t(getenv("MB") ? atoi(getenv("MB")) : 128) << 20;
    const size_t blockBytes = size_t(H) * BS * 2 * D * 2;
    const int nb = int(target / blockBytes), tokens = nb * BS;
    const size_t bytes = nb * blockBytes;
    uint16_t* reg = (uint16_t*)mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(reg, bytes, MADV_HUGEPAGE);
    // 1.0..1.5 as f16, 0.0078..0.125 as bf16: no subnormals either way.
    for (size_t i = 0; i < bytes / 2; i++) reg[i] = 0x3c00 + (i * 7919 % 512);
    std::vector<int32_t> ids(nb);
    for (int i = 0; i < nb; i++) ids[i] = i;
    std::shuffle(ids.begin(), ids.end(), std::mt19937(42));
    std::vector<float> q(H * G * D), out(H * G * D), lse(H * G);
    for (size_t i = 0; i < q.size(); i++) q[i] = std::sin(float(i)) * 0.1f;
    // fp64 reference of KV head 0's output [G, D], two passes (max, then sums), to check each table against.
    std::vector<double> ref(G * D, 0.0);
    {
      auto row = [&](int p, int kv) {  // token p's K (kv 0) or V (kv 1) row of head 0
        return reg + (size_t(ids[p / BS]) * blockBytes + (size_t(p % BS) * 2 + kv) * D * 2) / 2;
      };
      std::vector<double> sc(size_t(tokens) * G), sum(G, 0.0), mx(G, -INFINITY);
      for (int p = 0; p < tokens; p++)
        for (int g = 0; g < G; g++) {
          double d = 0;
          for (int c = 0; c < D; c++) d += double(q[g * D + c]) * kvoff::half_to_f32(row(p, 0)[c], dt);
          sc[size_t(p) * G + g] = d * 0.088f;
          mx[g] = std::max(mx[g], sc[size_t(p) * G + g]);
        }
      for (int p = 0; p < tokens; p++)
        for (int g = 0; g < G; g++) {
          const double e = std::exp(sc[size_t(p) * G + g] - mx[g]);
          sum[g] += e;
          for (int c = 0; c < D; c++) ref[g * D + c] += e * kvoff::half_to_f32(row(p, 1)[c], dt);
        }
      for (int g = 0; g < G; g++)
        for (int c = 0; c < D; c++) ref[g * D + c] /= sum[g];
    }
    // TABLES=avx2 (or any of avx2, avx512, amx, comma-separated): the tables to time, each twice, alternating.
    const std::string tables = getenv("TABLES") ? getenv("TABLES") : "avx512,amx";
    std::vector<std::string> order;
    for (int rep = 0; rep < 2; rep++)
      for (size_t a = 0; a <= tables.size();) {
        const size_t b = std::min(tables.find(',', a), tables.size());
        if (b > a) order.push_back(tables.substr(a, b - a));
        a = b + 1;
      }
    for (const std::string& name : order) {
      const char* tab = name.c_str();
      const kvoff::KernelTable* kt = !strcmp(tab, "amx") ? (amxOk ? kvoff::kernels_amx() : nullptr)
                                     : !strcmp(tab, "avx2") ? &kvoff::kernels_avx2() : &kvoff::kernels_avx512();
      if (!kt) continue;
      auto call = [&]() {
        for (int h = 0; h < H; h++) {
          kvoff::AttnTask t{reinterpret_cast<const uint8_t*>(reg), blockBytes, BS, D, dt, ids.data(), tokens, nullptr, 0, h, G, q.data() + h * G * D, 0.088f, out.data() + h * G * D, lse.data() + h * G};
          kt->attend_head(t);
        }
      };
      call();
      std::vector<double> ts;
      const int reps = getenv("REPS") ? std::max(1, atoi(getenv("REPS"))) : 9;  // REPS: more, for a profiler
      for (int r = 0; r < reps; r++) {
        auto t0 = std::chrono::steady_clock::now();
        call();
        ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ts.begin(), ts.end());
      // PICK=min: the fastest call instead of the median (in L2 on a shared VM, the min is the stable statistic).
      const bool pickMin = getenv("PICK") && !strcmp(getenv("PICK"), "min");
      const double s = pickMin ? ts[0] : ts[ts.size() / 2], gbs = bytes / s / 1e9;
      double err = 0, rmax = 0;  // head 0: largest difference from the fp64 reference, relative to its largest value
      for (int i = 0; i < G * D; i++) err = std::max(err, std::fabs(out[i] - ref[i])), rmax = std::max(rmax, std::fabs(ref[i]));
      printf("%-6s %s G%-2d D%-3d bs%d: %6.2f GB/s  ratio %.2f  %.1f ns/token  (o %.5f lse %.5f, error %.1e)\n", tab, f16 ? "f16" : "bf16", G, D, BS, gbs, gbs / mc, s * 1e9 / (double(tokens) * H), out[5], lse[3], err / rmax);
      fflush(stdout);
    }
    munmap(reg, bytes);
  }
}
