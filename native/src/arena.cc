// Host arena registry: mmap'd regions, pinned through CUDA when a GPU is usable, else mlock, else pageable.
#include "arena.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

#include "cuda/cuda_api.h"

namespace kvoff {

const char* pin_method_name(PinMethod m) {
  switch (m) {
    case PinMethod::Mlock: return "mlock";
    case PinMethod::CudaHostRegister: return "cudaHostRegister";
    default: return "pageable";
  }
}

Arena::~Arena() {
  if (!ptr) return;
  if (method == PinMethod::CudaHostRegister) cuda_host_unregister(ptr);
  if (method == PinMethod::Mlock) munlock(ptr, bytes);
  munmap(ptr, bytes);
}

namespace {
std::mutex g_mu;
std::unordered_map<uint32_t, std::shared_ptr<Arena>> g_arenas;
uint32_t g_next = 1;
size_t g_live_bytes = 0;

bool test_forces_lock_failure() {
  const char* v = std::getenv("KVOFF_TEST_PIN_FAIL");
  return v && v[0] == '1';
}
}  // namespace

ArenaCreateResult arena_create(size_t bytes, bool pin) {
  const size_t page = 4096;
  const size_t mapped = bytes == 0 ? page : (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  if (mapped >= (size_t(2) << 20)) madvise(p, mapped, MADV_HUGEPAGE);  // fewer TLB misses on big KV scans
  auto arena = std::make_shared<Arena>();
  arena->ptr = static_cast<uint8_t*>(p);
  arena->bytes = mapped;
  std::string warning;
  if (pin) {
    std::string why;
    if (test_forces_lock_failure()) {
      why = "KVOFF_TEST_PIN_FAIL=1 is set";
    } else if (cuda_usable() && cuda_host_register(p, mapped, &why)) {
      arena->method = PinMethod::CudaHostRegister;
    } else if (mlock(p, mapped) == 0) {
      arena->method = PinMethod::Mlock;
    } else {
      why += (why.empty() ? "" : "; ") + std::string("mlock failed: ") + std::strerror(errno) +
             " (raise the locked-memory limit with `ulimit -l unlimited` or run with CAP_IPC_LOCK)";
    }
    if (arena->method == PinMethod::Pageable) {
      warning = "kvoff: WARNING: could not page-lock a host arena of " + std::to_string(mapped) +
                " bytes; falling back to pageable memory, which copies about 3x slower over PCIe. Cause: " + why;
    }
  }
  std::lock_guard<std::mutex> lock(g_mu);
  const uint32_t handle = g_next++;
  g_arenas.emplace(handle, arena);
  g_live_bytes += mapped;
  return {handle, arena, warning};
}

std::shared_ptr<Arena> arena_get(uint32_t handle) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_arenas.find(handle);
  return it == g_arenas.end() ? nullptr : it->second;
}

bool arena_free(uint32_t handle) {
  std::shared_ptr<Arena> victim;  // destroyed outside the lock: munmap can be slow
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_arenas.find(handle);
    if (it == g_arenas.end()) return false;
    victim = std::move(it->second);
    g_arenas.erase(it);
    g_live_bytes -= victim->bytes;
  }
  return true;
}

void arena_totals(size_t* count, size_t* bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  *count = g_arenas.size();
  *bytes = g_live_bytes;
}

}  // namespace kvoff
