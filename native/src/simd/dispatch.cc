// Runtime choice of the kernel table from CPUID, overridable with KVOFF_SIMD or set_simd().
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "simd/kernels.h"

namespace kvoff {

bool cpu_has(const char* f) {
  __builtin_cpu_init();
  if (!std::strcmp(f, "avx2")) return __builtin_cpu_supports("avx2");
  if (!std::strcmp(f, "fma")) return __builtin_cpu_supports("fma");
  if (!std::strcmp(f, "f16c")) {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    return (c >> 29) & 1u;
  }
  if (!std::strcmp(f, "avx512f")) return __builtin_cpu_supports("avx512f");
  if (!std::strcmp(f, "avx512bw")) return __builtin_cpu_supports("avx512bw");
  if (!std::strcmp(f, "avx512vl")) return __builtin_cpu_supports("avx512vl");
  if (!std::strcmp(f, "avx512dq")) return __builtin_cpu_supports("avx512dq");
  if (!std::strcmp(f, "avx512bf16")) {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(1));
    return (a >> 5) & 1u;
  }
  if (!std::strcmp(f, "amx-tile") || !std::strcmp(f, "amx-bf16")) {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    return !std::strcmp(f, "amx-tile") ? ((d >> 24) & 1u) : ((d >> 22) & 1u);
  }
  return false;
}

float* kernel_scratch(size_t floats) {
  struct Buf {
    float* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf buf;
  if (buf.n < floats) {
    std::free(buf.p);
    buf.p = static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64));
    if (!buf.p) { buf.n = 0; throw std::bad_alloc(); }
    buf.n = floats;
  }
  return buf.p;
}

// Linux keeps the 8 KiB tile state off until a process asks for it (ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); the grant covers every thread. Refused on older kernels or when a sigaltstack is
// too small for the larger signal frame; then AMX is simply not offered.
static bool amx_permitted() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
#else
  return false;
#endif
}

static bool supports(const std::string& level) {
  if (level == "scalar") return true;
  if (level == "amx")
    return supports("avx512") && cpu_has("avx512bf16") && cpu_has("amx-tile") && cpu_has("amx-bf16") && kernels_amx() && amx_permitted();
  if (level == "avx2") return cpu_has("avx2") && cpu_has("fma") && cpu_has("f16c");
  if (level == "avx512")
    return cpu_has("avx512f") && cpu_has("avx512bw") && cpu_has("avx512vl") && cpu_has("avx512dq") && cpu_has("f16c") && cpu_has("fma");
  return false;
}

bool simd_supported(const std::string& level) { return supports(level); }

static const KernelTable* best() {
  if (supports("amx")) return kernels_amx();
  if (supports("avx512")) return &kernels_avx512();
  if (supports("avx2")) return &kernels_avx2();
  return &kernels_scalar();
}

static const KernelTable* by_name(const std::string& level) {
  if (level == "auto") return best();
  if (!supports(level)) return nullptr;
  if (level == "amx") return kernels_amx();
  if (level == "avx512") return &kernels_avx512();
  if (level == "avx2") return &kernels_avx2();
  return &kernels_scalar();
}

static std::atomic<const KernelTable*> g_active{nullptr};

const KernelTable& active_kernels() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (t) return *t;
  const char* env = std::getenv("KVOFF_SIMD");
  t = env ? by_name(env) : nullptr;
  if (!t) t = best();
  g_active.store(t, std::memory_order_release);
  return *t;
}

bool set_simd(const std::string& level) {
  const KernelTable* t = by_name(level);
  if (!t) return false;
  g_active.store(t, std::memory_order_release);
  return true;
}

}  // namespace kvoff
