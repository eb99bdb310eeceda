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

// Bit `bit` of register `reg` (0..3: eax, ebx, ecx, edx) of CPUID leaf/subleaf: for the features that
// __builtin_cpu_supports does not name on every compiler in use.
static bool cpuid_bit(unsigned leaf, unsigned sub, int reg, int bit) {
  unsigned r[4];
  __asm__("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
  return (r[reg] >> bit) & 1u;
}

bool cpu_has(const char* f) {
  __builtin_cpu_init();
  if (!std::strcmp(f, "avx2")) return __builtin_cpu_supports("avx2");
  if (!std::strcmp(f, "fma")) return __builtin_cpu_supports("fma");
  if (!std::strcmp(f, "f16c")) return cpuid_bit(1, 0, 2, 29);
  if (!std::strcmp(f, "avx512f")) return __builtin_cpu_supports("avx512f");
  if (!std::strcmp(f, "avx512bw")) return __builtin_cpu_supports("avx512bw");
  if (!std::strcmp(f, "avx512vl")) return __builtin_cpu_supports("avx512vl");
  if (!std::strcmp(f, "avx512dq")) return __builtin_cpu_supports("avx512dq");
  if (!std::strcmp(f, "avx512bf16")) return cpuid_bit(7, 1, 0, 5);
  if (!std::strcmp(f, "amx-tile")) return cpuid_bit(7, 0, 3, 24);
  if (!std::strcmp(f, "amx-bf16")) return cpuid_bit(7, 0, 3, 22);
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
[[maybe_unused]] static bool amx_permitted() {  // unused in an emulated check build
#if defined(__linux__) && defined(__x86_64__)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
#else
  return false;
#endif
}

bool simd_supported(const std::string& level) {
  if (level == "scalar") return true;
  if (level == "amx")
#ifdef KVOFF_AMX_EMULATE  // a check build (CXXFLAGS=-DKVOFF_AMX_EMULATE) whose tiles are scalar stand-ins (amx_emulate.h)
    return simd_supported("avx512") && cpu_has("avx512bf16") && kernels_amx();
#else
    return simd_supported("avx512") && cpu_has("avx512bf16") && cpu_has("amx-tile") && cpu_has("amx-bf16") && kernels_amx() && amx_permitted();
#endif
  if (level == "avx2") return cpu_has("avx2") && cpu_has("fma") && cpu_has("f16c");
  if (level == "avx512")
    return cpu_has("avx512f") && cpu_has("avx512bw") && cpu_has("avx512vl") && cpu_has("avx512dq") && cpu_has("f16c") && cpu_has("fma");
  return false;
}

// The table of a level, whether or not this CPU can run it (null: amx not built).
static const KernelTable* table_of(const std::string& level) {
  if (level == "amx") return kernels_amx();
  if (level == "avx512") return &kernels_avx512();
  if (level == "avx2") return &kernels_avx2();
  return &kernels_scalar();
}

// The widest level this CPU runs.
static const KernelTable* best() {
  for (int i = kNumSimdLevels - 1; i > 0; --i)
    if (simd_supported(kSimdLevels[i])) return table_of(kSimdLevels[i]);
  return &kernels_scalar();
}

static const KernelTable* by_name(const std::string& level) {
  if (level == "auto") return best();
  return simd_supported(level) ? table_of(level) : nullptr;
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
