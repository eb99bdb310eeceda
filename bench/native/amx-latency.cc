// Timing of the AMX tile unit's TDPBF16PS on this CPU: one dependent chain against 2 and 4 independent
// accumulator tiles, with and without an A tile reloaded from L1 before each product, and a tile store read back
// by AVX-512 loads. Sizes the AMX attention paths' chains. Build and run: bash bench/native/amx-latency.sh
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>

#define FN __attribute__((target("amx-tile,amx-bf16,avx512f"), noinline))

struct alignas(64) Cfg {
  uint8_t palette = 1, startRow = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
alignas(64) static uint16_t bufA[16 * 32], bufB[16 * 32];
alignas(64) static float bufC[4][16 * 16];

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// ns a step of a chain of dependent integer adds (one core cycle each): this core's clock as it runs.
static double ns_per_cycle() {
  uint64_t x = 1;
  const long n = 400000000;
  const double t0 = now();
  for (long i = 0; i < n; ++i) asm volatile("add $1, %0" : "+r"(x));
  return (now() - t0) * 1e9 / n;
}

constexpr long kIters = 2000000;
FN static void chain1() { for (long i = 0; i < kIters; ++i) { _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(0, 4, 5); } }
FN static void chain2() { for (long i = 0; i < kIters; ++i) { _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(1, 4, 5); _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(1, 4, 5); } }
FN static void chain4() { for (long i = 0; i < kIters; ++i) { _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(1, 4, 5); _tile_dpbf16ps(2, 4, 5); _tile_dpbf16ps(3, 4, 5); } }
// A reloaded from L1 into the same register before each product (a write after the last product's read).
FN static void reload1(long n) { for (long i = 0; i < n; ++i) { _tile_loadd(4, bufA, 64); _tile_dpbf16ps(0, 4, 5); _tile_loadd(4, bufA, 64); _tile_dpbf16ps(0, 4, 5); } }
FN static void reload4same(long n) { for (long i = 0; i < n; ++i) { _tile_loadd(4, bufA, 64); _tile_dpbf16ps(0, 4, 5); _tile_loadd(4, bufA, 64); _tile_dpbf16ps(1, 4, 5); _tile_loadd(4, bufA, 64); _tile_dpbf16ps(2, 4, 5); _tile_loadd(4, bufA, 64); _tile_dpbf16ps(3, 4, 5); } }
FN static void reload4rot(long n) { for (long i = 0; i < n; ++i) { _tile_loadd(4, bufA, 64); _tile_dpbf16ps(0, 4, 5); _tile_loadd(6, bufA, 64); _tile_dpbf16ps(1, 6, 5); _tile_loadd(7, bufA, 64); _tile_dpbf16ps(2, 7, 5); _tile_loadd(4, bufA, 64); _tile_dpbf16ps(3, 4, 5); } }
// Product, store, AVX-512 read of the stored tile feeding the next load of A: the round trip a score tile makes.
FN static float roundtrip(long n) {
  __m512 s = _mm512_setzero_ps();
  for (long i = 0; i < n; ++i) {
    _tile_dpbf16ps(0, 4, 5);
    _tile_stored(0, bufC[0], 64);
    s = _mm512_add_ps(s, _mm512_load_ps(bufC[0] + 16 * (i & 15)));
    _mm512_store_ps(reinterpret_cast<float*>(bufA), _mm512_mul_ps(s, _mm512_setzero_ps()));
    _tile_loadd(4, bufA, 64);
  }
  return _mm512_reduce_add_ps(s);
}

FN static void run() {
  Cfg c;
  for (int t = 0; t < 8; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
  _tile_loadconfig(&c);
  for (int i = 0; i < 16 * 32; ++i) bufA[i] = bufB[i] = 0x3c00;  // bf16 0.0078
  _tile_loadd(4, bufA, 64);
  _tile_loadd(5, bufB, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const double cyc = ns_per_cycle();
  printf("core clock %.2f GHz (dependent adds)\n", 1 / cyc);
  auto report = [&](const char* name, double secs, long products) {
    const double ns = secs * 1e9 / products;
    printf("%-44s %6.2f ns  %6.1f cycles a product\n", name, ns, ns / cyc);
  };
  for (int rep = 0; rep < 2; ++rep) {
    double t0 = now(); chain1(); report("1 accumulator (dependent chain)", now() - t0, 4 * kIters);
    t0 = now(); chain2(); report("2 accumulators", now() - t0, 4 * kIters);
    t0 = now(); chain4(); report("4 accumulators", now() - t0, 4 * kIters);
    t0 = now(); reload1(kIters); report("1 accumulator, A reloaded each product", now() - t0, 2 * kIters);
    t0 = now(); reload4same(kIters / 2); report("4 accumulators, A reloaded into one reg", now() - t0, 2 * kIters);
    t0 = now(); reload4rot(kIters / 2); report("4 accumulators, A reloaded into 3 regs", now() - t0, 2 * kIters);
    t0 = now(); const float r = roundtrip(kIters / 4); report("product -> store -> vector load -> tile load", now() - t0, kIters / 4);
    if (r != 0.f) printf("(sum %g)\n", r);
  }
  _tile_release();
}

int main() {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) {
    printf("no AMX permission (CPU or kernel without AMX)\n");
    return 0;
  }
  run();
}
